"""``raytranscribe.Client``: the Python face of raytranscribe, and the one the command line calls.

A notebook or a script does what a command does, and gets typed results back::

    with raytranscribe.Client("postgresql://user@db/raytranscribe") as rt:
        rt.submit(["s3://audio/calls/"], output="s3://audio/transcripts/")
        rt.status().stats.counts

Results are frozen dataclasses (the store's views where one exists: :class:`TaskView`,
:class:`StoreStats`, :class:`StatusChange`); errors are the :class:`RayTranscribeError` tree.
Ray, boto3 and the orchestrator are imported by the methods that use them, not by this module;
SQLAlchemy by the first method that needs the :class:`Store` (``status``, ``tasks`` and ``show``
read through psycopg2 alone, ``store.reader``, unless the Store is open already).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raytranscribe.config import Settings
from raytranscribe.errors import InvalidInput, TaskNotFound
from raytranscribe.names import DEFAULT_FORMATS
from raytranscribe.store.reads import EXPORT_PAGE
from raytranscribe.store.states import TaskStatus
from raytranscribe.store.url import resolve_database_url
from raytranscribe.store.views import OrchestratorView, StatusChange, StoreStats, TaskView

if TYPE_CHECKING:
    from raytranscribe.engines.base import TranscribeOptions
    from raytranscribe.export import ExportFormat, ExportResult
    from raytranscribe.orchestrator import Observer, RunSummary
    from raytranscribe.storage import S3Storage
    from raytranscribe.store import Store
    from raytranscribe.store.manifest import ManifestDefaults
    from raytranscribe.store.newtask import NewTask
    from raytranscribe.store.reader import Reader

__all__ = ["BackfillResult", "Client", "Status", "SubmitResult"]

log = logging.getLogger("raytranscribe.client")

LISTED_BATCH = 5000  # listed objects asked about at once ("already submitted?")
DEAD_COUNT_BATCH = 50_000  # backfill's ids asked about at once (their status after the run)

Notes = Callable[[str], None]  # where listing notes go (a skipped key, a prefix's count): a line each


def _log_note(line: str) -> None:
    log.info("%s", line)


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitResult:
    """What a submit did: the new task ids, the tasks that already existed, the keys left out."""

    inserted: tuple[int, ...]  # new task ids, in submission order
    duplicates: int  # tasks not inserted: the same task (input, engine, model, options) already existed
    duplicate_inputs: tuple[str, ...]  # their input URIs (the first ``keep_duplicates`` of them)
    skipped: int = 0  # listed keys left out under ``skip_invalid``
    read: int = 0  # tasks the source gave

    def to_dict(self) -> dict[str, Any]:
        return {"inserted": list(self.inserted), "duplicates": list(self.duplicate_inputs), "skipped": self.skipped}


@dataclass(frozen=True)
class Status:
    """The queue at a glance (``raytranscribe status``): counts and reasons, and the running orchestrators."""

    stats: StoreStats
    orchestrators: tuple[OrchestratorView, ...]
    suspects: int = 0  # completed tasks whose transcript is suspect (`tasks --suspect` lists them)

    def to_dict(self) -> dict[str, Any]:
        return {**self.stats.to_dict(), "suspects": self.suspects,
                "orchestrators": [o.to_dict() for o in self.orchestrators]}  # fmt: skip


@dataclass(frozen=True)
class BackfillResult:
    """A backfill: what it submitted, its run, and where its own tasks ended."""

    submitted: SubmitResult
    run: RunSummary
    counts: dict[TaskStatus, int]  # this backfill's tasks (not the rest of the queue) by status

    @property
    def dead(self) -> int:
        return self.counts[TaskStatus.DEAD]

    @property
    def waiting(self) -> int:
        """Tasks a stopped backfill handed back for the next run."""
        return self.counts[TaskStatus.PENDING] + self.counts[TaskStatus.FAILED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "submitted": len(self.submitted.inserted),
            "duplicates": self.submitted.duplicates,
            "skipped": self.submitted.skipped,
            "run": run_summary_dict(self.run),
            "counts": {s.value: n for s, n in self.counts.items()},
        }


def run_summary_dict(s: RunSummary) -> dict[str, Any]:
    """A run's summary as JSON: counts, audio and wall seconds, RTFx, and whether a signal stopped it."""
    return {
        "completed": s.completed, "retried": s.retried, "dead": s.dead, "released": s.released, "fenced": s.fenced,
        "audio_s": s.audio_s, "wall_s": s.wall_s, "rtfx": s.rtfx, "stopped": s.stopped,
    }  # fmt: skip


@dataclass(frozen=True)
class WhisperOptions:
    """Whisper's options as a submit names them; None: the default (``TranscribeOptions``'s)."""

    task: str | None = None
    word_timestamps: bool | None = None
    initial_prompt: str | None = None
    beam_size: int | None = None
    temperature: float | None = None
    vad: bool | None = None

    def changes(self) -> dict[str, Any]:
        """The options given, by their public names (``vad``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def options(self) -> TranscribeOptions:
        """The defaults with these options, checked where every option is (InvalidInput naming the
        field): before any listing or database work."""
        from raytranscribe.engines.base import TranscribeOptions, options_with

        try:
            return options_with(TranscribeOptions(), self.changes())
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc


# --- the client --------------------------------------------------------------------------------


class Client:
    """Submit, watch, fix and run transcription tasks from Python.

    ``database_url`` wins over ``RAYTRANSCRIBE_DATABASE_URL`` (and ``..._FILE``); with neither, the
    embedded PostgreSQL under ``RAYTRANSCRIBE_DATA_DIR`` is used, as the command line does. Pass
    ``settings`` to use settings built elsewhere instead of the environment's. The connection opens
    on first use; close it with :meth:`close` or a ``with`` block.
    """

    def __init__(self, database_url: str | None = None, *, settings: Settings | None = None) -> None:
        settings = settings if settings is not None else Settings()
        if database_url:
            settings = settings.model_copy(update={"database_url": database_url})
        # The one place the URL is resolved (RAYTRANSCRIBE_DATABASE_URL_FILE read, noted as a secret).
        self.settings: Settings = resolve_database_url(settings)
        self._store: Store | None = None
        self._reader: Reader | None = None

    @property
    def store(self) -> Store:
        """The :class:`Store` underneath (made on first use)."""
        if self._store is None:
            from raytranscribe.store import Store

            self._store = Store.from_settings(self.settings)
        return self._store

    def _reads(self) -> Store | Reader:
        """What ``status``, ``tasks`` and ``show`` read through: the Store when it is open, else a
        psycopg2-only Reader on the same URL (a command answers without importing SQLAlchemy), else,
        for a URL the Reader does not take plainly (hosts and ports in its query, say), the Store."""
        if self._store is not None:
            return self._store
        if self._reader is None:
            from raytranscribe.store.reader import Reader
            from raytranscribe.store.url import psycopg2_args, resolved_url

            args = psycopg2_args(resolved_url(self.settings))
            if args is None:
                return self.store
            self._reader = Reader(args, self.settings.store)
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self._store!r})" if self._store is not None else "Client(not connected)"

    # --- schema --------------------------------------------------------------------------------

    def upgrade(self) -> str | None:
        """Create the schema or bring it to the latest revision (safe to repeat); returns the revision."""
        self.store.upgrade()
        return self.store.current_revision()

    # --- submitting ----------------------------------------------------------------------------

    def _defaults(
        self, engine: str | None, model: str | None, language: str | None, formats: str | Sequence[str],
        priority: int, max_retries: int | None, backoff_factor: float | None, whisper: WhisperOptions,
    ) -> ManifestDefaults:  # fmt: skip
        from raytranscribe.store.manifest import ManifestDefaults, parse_formats  # a submit's: not for `status`

        return ManifestDefaults(
            options=whisper.options(),
            engine=engine or self.settings.engine.engine,
            model=model or self.settings.engine.model,
            language=language,
            formats=parse_formats(formats if isinstance(formats, str) else tuple(formats)),
            priority=priority,
            max_retries=max_retries,
            backoff_factor=backoff_factor,
        )

    def submit(
        self,
        uris: Sequence[str],
        output: str,
        *,
        engine: str | None = None,
        model: str | None = None,
        language: str | None = None,
        formats: str | Sequence[str] = DEFAULT_FORMATS,
        priority: int = 0,
        max_retries: int | None = None,
        backoff_factor: float | None = None,
        task: str | None = None,
        word_timestamps: bool | None = None,
        initial_prompt: str | None = None,
        beam_size: int | None = None,
        temperature: float | None = None,
        vad: bool | None = None,
        skip_invalid: bool = False,
        keep_duplicates: int | None = None,
        notes: Notes = _log_note,
    ) -> SubmitResult:
        """Queue one task per input: object URIs as given, a prefix (``s3://b/calls/``) expanded to every
        audio object under it, skipping inputs already submitted. Outputs go under ``output`` keeping the
        inputs' folder layout below the prefix. All or nothing: a bad URI, a listed key that cannot be
        transcribed safely (unless ``skip_invalid``: then it is left out and named in ``notes``) or a
        missing S3 model writes nothing. ``engine``/``model`` default to the settings'; ``keep_duplicates``
        caps the duplicate inputs named in the result (None: all). Whisper's options (``task`` transcribe
        or translate, ``word_timestamps``, ``initial_prompt``, ``beam_size``, ``temperature``, ``vad``)
        left None keep their defaults (:class:`TranscribeOptions`); a bad one is refused, naming it."""
        if not uris:
            raise InvalidInput("give at least one input URI")
        whisper = WhisperOptions(task, word_timestamps, initial_prompt, beam_size, temperature, vad)
        defaults = self._defaults(engine, model, language, formats, priority, max_retries, backoff_factor, whisper)
        return self._submit(
            lambda skipped: _uri_tasks(self, list(uris), output, defaults, skip_invalid=skip_invalid, skipped=skipped,
                                       notes=notes),
            keep_duplicates,
        )  # fmt: skip

    def submit_manifest(
        self,
        path: str | os.PathLike[str],
        *,
        engine: str | None = None,
        model: str | None = None,
        language: str | None = None,
        formats: str | Sequence[str] = DEFAULT_FORMATS,
        priority: int = 0,
        max_retries: int | None = None,
        backoff_factor: float | None = None,
        task: str | None = None,
        word_timestamps: bool | None = None,
        initial_prompt: str | None = None,
        beam_size: int | None = None,
        temperature: float | None = None,
        vad: bool | None = None,
        keep_duplicates: int | None = None,
    ) -> SubmitResult:
        """Queue the tasks of a JSON-lines manifest (one task a line; the keyword arguments fill the fields a
        line leaves out). A bad line anywhere refuses the whole manifest, naming its line."""
        whisper = WhisperOptions(task, word_timestamps, initial_prompt, beam_size, temperature, vad)
        defaults = self._defaults(engine, model, language, formats, priority, max_retries, backoff_factor, whisper)
        return self._submit(lambda skipped: _manifest_tasks(Path(path), defaults), keep_duplicates)

    def _submit(self, tasks: Callable[[list[int]], Iterator[NewTask]], keep_duplicates: int | None) -> SubmitResult:
        # Store.submit_stream may read the source again after a transient database error: each reading
        # counts its own skipped keys.
        skipped = [0]

        def source() -> Iterator[NewTask]:
            skipped[0] = 0
            return _s3_models_checked(self, tasks(skipped))

        progress = _SubmitProgress(self.settings.progress_interval_s)
        report = self.store.submit_stream(source, keep_duplicates=keep_duplicates, progress=progress)
        return SubmitResult(
            inserted=tuple(report.inserted), duplicates=report.duplicates,
            duplicate_inputs=tuple(report.duplicate_inputs), skipped=skipped[0], read=report.read,
        )  # fmt: skip

    def _storage(self) -> S3Storage:
        from raytranscribe.storage import S3Storage

        return S3Storage(self.settings.s3)

    # --- reading -------------------------------------------------------------------------------

    def status(self) -> Status:
        """Counts per status, oldest pending age, retries scheduled, top failure reasons, suspect
        transcripts, orchestrators."""
        reads = self._reads()
        return Status(stats=reads.stats(), orchestrators=tuple(reads.orchestrators()), suspects=reads.suspects())

    def tasks(
        self, status: TaskStatus | str | None = None, *, limit: int = 100, suspect: bool = False
    ) -> list[TaskView]:
        """Tasks, oldest first (``status``: only those in it; ``suspect``: only completed tasks whose
        transcript is suspect). Attempts are left out: :meth:`show` has them."""
        return self._reads().list_tasks(status=_status(status), limit=limit, suspect=suspect)

    def show(self, task_id: int) -> TaskView:
        """One task with its attempt history; :class:`TaskNotFound` if there is none."""
        task = self._reads().get(task_id)
        if task is None:
            raise TaskNotFound(f"task {task_id} not found")
        return task

    def export(
        self,
        dest: str,
        *,
        format: ExportFormat | str | None = None,  # noqa: A002 (the word a user reaches for)
        status: TaskStatus | str | Sequence[TaskStatus | str] = TaskStatus.COMPLETED,
        suspect: bool | None = None,
        page_size: int = EXPORT_PAGE,
    ) -> ExportResult:
        """Write an index of the results to ``dest`` (a local path or ``s3://bucket/key``): one row per
        task of ``status`` (default completed; several may be given), by id, with its input, outputs,
        language, audio seconds, engine, model, options, quality and verdict. ``suspect`` True keeps only
        the transcripts judged suspect (False: only those judged sound). ``format`` is ``parquet`` or
        ``jsonl``; by default the extension's (``.parquet``, ``.pq``, ``.jsonl``, ``.ndjson``; none:
        Parquet, which needs ``raytranscribe[export]``). The tasks are read in pages of ``page_size``
        and written as they come, so memory stays bounded; the file reaches ``dest`` only once complete."""
        from raytranscribe import export as exporting

        target = exporting.destination(dest, format)  # everything the user gave is checked before any read
        statuses = [status] if isinstance(status, (str, TaskStatus)) else list(status)
        wanted = [s for s in (_status(x) for x in statuses) if s is not None]
        if not wanted:
            raise InvalidInput("give at least one status to export")
        pages = self.store.result_pages(wanted, suspect=suspect, page_size=page_size)
        return exporting.write(target, pages, storage=self._storage)

    # --- operator actions ----------------------------------------------------------------------

    def retry(
        self, ids: Iterable[int] = (), *, status: TaskStatus | str | None = None, suspect: bool = False,
        model: str | None = None,
    ) -> StatusChange:  # fmt: skip
        """Requeue failed, dead or cancelled tasks (by id, or every task in ``status``): retries reset,
        history kept. The result names the ids it changed, and why each other one was left alone.

        ``suspect``: re-transcribe every completed task whose transcript is suspect instead, with
        ``model`` when given (a bigger one), into the same outputs; each is judged again when it completes."""
        ids = list(ids)
        if suspect:
            if ids or status is not None:
                raise InvalidInput("--suspect requeues every suspect task: give no task ids or --status with it")
            return self.store.requeue_suspects(model=model)
        if model is not None:
            raise InvalidInput("--model goes with --suspect (it re-transcribes suspect tasks with that model)")
        wanted = _status(status)
        if not ids and wanted is None:
            raise InvalidInput("give task ids or a status")
        return self.store.requeue(ids, status=wanted)

    def cancel(self, ids: Iterable[int]) -> StatusChange:
        """Cancel pending, in-progress or failed tasks."""
        return self.store.cancel(list(ids))

    # --- running -------------------------------------------------------------------------------

    def run_settings(
        self, *, address: str | None = None, actors: int | None = None, gpus_per_actor: float | None = None,
        prefetch: int | None = None, local_gpus: float | None = None, notes: Notes = _log_note,
    ) -> Settings:  # fmt: skip
        """The settings a run uses: these overrides over the client's, and no GPU reserved per actor on a
        local Ray without one (its actors would never start)."""
        worker = {k: v for k, v in {"max_actors": actors, "num_gpus": gpus_per_actor, "prefetch": prefetch}.items()
                  if v is not None}  # fmt: skip
        settings = self.settings.with_(worker=worker) if worker else self.settings
        settings = settings.model_copy(update={"ray_address": address}) if address else settings
        if settings.ray_address or os.environ.get("RAY_ADDRESS") or gpus_per_actor is not None or local_gpus:
            return settings  # a cluster: its GPUs are what the actors are for
        if not _has_gpu() and settings.worker.num_gpus > 0:
            notes("no GPU found: worker actors run on the CPU (reserve 0 GPUs)")
            return settings.with_(worker={"num_gpus": 0})
        return settings

    def run(
        self,
        *,
        until_drained: bool = True,
        engine: str | None = None,
        model: str | None = None,
        address: str | None = None,
        actors: int | None = None,
        gpus_per_actor: float | None = None,
        prefetch: int | None = None,
        grace: float = 0.0,
        local_cpus: int | None = None,
        local_gpus: float | None = None,
        observer: Observer | None = None,
        notes: Notes = _log_note,
    ) -> RunSummary:
        """Run an orchestrator here (joining ``address``, ``RAY_ADDRESS``, or a local Ray): claim tasks,
        dispatch them to worker actors, record every outcome; until nothing is left (``until_drained``)
        or a signal stops it. ``engine`` with ``model`` serves only that pair. ``observer`` hears every
        outcome and heartbeat (default: a progress line in the log every ``progress_interval_s``)."""
        from raytranscribe.orchestrator import RunOptions

        if (engine is None) != (model is None):
            raise InvalidInput("engine and model go together (a pool serves one engine and model)")
        settings = self.run_settings(address=address, actors=actors, gpus_per_actor=gpus_per_actor,
                                     prefetch=prefetch, local_gpus=local_gpus, notes=notes)  # fmt: skip
        options = RunOptions(until_drained=until_drained, pairs=((engine, model),) if engine and model else None,
                             grace_s=grace)  # fmt: skip
        return self._run(settings, options, observer, local_cpus=local_cpus, local_gpus=local_gpus)

    def _run(self, settings: Settings, options: Any, observer: Observer | None, *, local_cpus: int | None = None,
             local_gpus: float | None = None) -> RunSummary:  # fmt: skip
        from raytranscribe import service
        from raytranscribe.progress import ProgressLines

        observer = observer if observer is not None else ProgressLines(settings.progress_interval_s)
        local = service.LocalRay(num_cpus=local_cpus, num_gpus=local_gpus)
        return service.run(settings, options, store=self.store, observer=observer, local=local)

    def backfill(
        self,
        prefix: str,
        output: str,
        *,
        engine: str | None = None,
        model: str | None = None,
        language: str | None = None,
        formats: str | Sequence[str] = DEFAULT_FORMATS,
        max_retries: int | None = None,
        task: str | None = None,
        word_timestamps: bool | None = None,
        initial_prompt: str | None = None,
        beam_size: int | None = None,
        temperature: float | None = None,
        vad: bool | None = None,
        address: str | None = None,
        actors: int | None = None,
        gpus_per_actor: float | None = None,
        skip_invalid: bool = False,
        grace: float = 0.0,
        observer: Observer | None = None,
        on_submitted: Callable[[SubmitResult], None] | None = None,
        notes: Notes = _log_note,
    ) -> BackfillResult:
        """Bring the schema up to date, submit everything under ``prefix``, run until drained; the result
        counts this backfill's own tasks by status (an old dead task elsewhere in the queue is not one).
        Whisper's options are :meth:`submit`'s."""
        from raytranscribe.orchestrator import RunOptions

        # Checked before the schema is touched or anything listed.
        whisper = WhisperOptions(task, word_timestamps, initial_prompt, beam_size, temperature, vad)
        whisper.options()
        settings = self.run_settings(address=address, actors=actors, gpus_per_actor=gpus_per_actor, notes=notes)
        self.store.upgrade()
        submitted = self.submit([prefix], output, engine=engine or settings.engine.engine,
                                model=model or settings.engine.model, language=language, formats=formats,
                                max_retries=max_retries, skip_invalid=skip_invalid, keep_duplicates=0,
                                notes=notes, **whisper.changes())  # fmt: skip
        if on_submitted is not None:
            on_submitted(submitted)
        summary = self._run(settings, RunOptions(until_drained=True, grace_s=grace), observer)
        counts = {status: 0 for status in TaskStatus}
        for i in range(0, len(submitted.inserted), DEAD_COUNT_BATCH):
            for status, n in self.store.count_by_status(submitted.inserted[i : i + DEAD_COUNT_BATCH]).items():
                counts[status] += n
        return BackfillResult(submitted=submitted, run=summary, counts=counts)


# --- helpers -----------------------------------------------------------------------------------


def _status(value: TaskStatus | str | None) -> TaskStatus | None:
    if value is None or isinstance(value, TaskStatus):
        return value
    try:
        return TaskStatus(value)
    except ValueError:
        raise InvalidInput(f"unknown status {value!r}; choose from {', '.join(s.value for s in TaskStatus)}") from None


def _has_gpu() -> bool:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except Exception:  # no CTranslate2 or no CUDA runtime: no GPU for us
        return False


class _SubmitProgress:
    """Logs how many tasks a submit has read, at most once per ``interval_s`` (a big manifest or listing)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.started = time.monotonic()
        self._next = self.started + interval_s

    def __call__(self, read: int) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval_s
            log.info("submit: %d task(s) read, %.0f a second", read, read / (now - self.started))


def _uri_tasks(
    client: Client, uris: list[str], output: str, defaults: ManifestDefaults, *, skip_invalid: bool,
    skipped: list[int], notes: Notes,
) -> Iterator[NewTask]:  # fmt: skip
    """One task per input, as it is listed: object URIs as given; a prefix expands to every audio object
    under it, page by page, skipping inputs already submitted. Outputs keep the inputs' folder layout
    below the prefix (uris.output_stem is the one place for it).

    A listed key with a ``.``, ``..`` or empty segment, or one the output layout cannot hold, refuses
    the whole submission, naming it: its transfers would reach another object, and skipping it quietly
    would lose an input. With ``skip_invalid`` it is left out instead, named in ``notes``, and counted
    in ``skipped[0]``."""
    from raytranscribe.store.newtask import NewTask
    from raytranscribe.uris import abbrev, key_problem, output_stem, parse_s3_uri

    # Every URI is checked before anything is listed.
    out_prefix = parse_s3_uri(output, allow_prefix=True, what="--output")
    parsed_uris = [parse_s3_uri(uri, allow_prefix=True, what="input URI") for uri in uris]
    options = dataclasses.replace(defaults.options, language=defaults.language, formats=defaults.formats)

    def task(uri: str, stem: str) -> NewTask:
        return NewTask(
            input_uri=uri, output_uri=stem, engine=defaults.engine, model=defaults.model, options=options,
            priority=defaults.priority, max_retries=defaults.max_retries, backoff_factor=defaults.backoff_factor,
        )  # fmt: skip

    storage: S3Storage | None = None
    for uri, parsed in zip(uris, parsed_uris):
        if not parsed.is_prefix:
            yield task(str(parsed), str(output_stem(parsed, out_prefix)))
            continue
        storage = storage or client._storage()
        listed = already = left_out = 0
        objects = storage.list_audio(parsed)
        while chunk := list(itertools.islice(objects, LISTED_BATCH)):
            fresh: list[tuple[str, str]] = []
            for obj in chunk:
                listed += 1
                problem = key_problem(obj.key)
                if problem is None:
                    try:
                        fresh.append((str(obj), str(output_stem(obj, out_prefix, base_prefix=parsed))))
                        continue
                    except InvalidInput as exc:
                        if not skip_invalid:
                            raise
                        problem = str(exc)
                if not skip_invalid:
                    raise InvalidInput(
                        f"{uri} lists {abbrev(str(obj))}: {problem}; nothing was submitted "
                        "(rename or move that object, give --skip-invalid, or submit the others by URI)"
                    )
                left_out += 1
                skipped[0] += 1
                notes(f"skipped {abbrev(str(obj))}: {problem}")
            done = client.store.submitted_inputs([u for u, _ in fresh])
            already += len(done)
            for input_uri, stem in fresh:
                if input_uri not in done:
                    yield task(input_uri, stem)
        note = f", {left_out} skipped (invalid key)" if skip_invalid else ""
        notes(f"{uri}: {listed} audio object(s), {already} already submitted{note}")


def _manifest_tasks(path: Path, defaults: ManifestDefaults) -> Iterator[NewTask]:
    from raytranscribe.store.manifest import iter_manifest

    try:
        with path.open(encoding="utf-8") as fh:
            yield from iter_manifest(fh, defaults)
    except OSError as exc:
        raise InvalidInput(f"cannot read manifest {str(path)!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"manifest {str(path)!r} is not UTF-8 text: {exc.reason}") from exc


def _s3_models_checked(client: Client, tasks: Iterable[NewTask]) -> Iterator[NewTask]:
    """Refuse a model URI whose prefix holds no loadable model (ModelNotFound names the missing file)
    before anything is written, and spell each one as the folder it is (``.../tiny-en`` and
    ``.../tiny-en/`` are one model, one pool)."""
    from raytranscribe.contracts import ModelLayout
    from raytranscribe.uris import SCHEME

    storage: S3Storage | None = None
    canonical: dict[tuple[str, str], str] = {}
    for task in tasks:
        if task.model.startswith(SCHEME):
            pair = (task.engine, task.model)
            if pair not in canonical:
                storage = storage or client._storage()
                canonical[pair] = storage.model_files(task.model, layout=ModelLayout.for_engine(task.engine)).uri
            if canonical[pair] != task.model:
                task = dataclasses.replace(task, model=canonical[pair])
        yield task
