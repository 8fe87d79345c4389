"""``raytranscribe``: the command line, the project's only face.

Every command builds its :class:`Settings` from ``RAYTRANSCRIBE_*`` variables and the root options,
talks to the store, and prints a rich table (or JSON with ``--json``). Exit codes: 0 ok; 1 not
found, nothing changed (``retry``/``cancel`` of ids none of which allowed it), other error; 2 invalid
input or configuration (bad URI, manifest, option, setting, database URL, a database that refuses
the role or its options, a schema that needs ``raytranscribe db upgrade``); 3 database unreachable
after the store's retries.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from raytranscribe.config import Settings
from raytranscribe.engines.base import ENGINES, FORMATS, TranscribeOptions
from raytranscribe.errors import (
    ConfigError,
    InvalidInput,
    RayTranscribeError,
    StoreError,
    StoreMisconfigured,
    StoreUnavailable,
    TaskNotFound,
)
from raytranscribe.store import NewTask, StatusChange, Store, StreamedSubmit, TaskStatus, TaskView
from raytranscribe.store.manifest import ManifestDefaults, iter_manifest, parse_formats
from raytranscribe.store.states import CANCELLABLE, REQUEUEABLE
from raytranscribe.store.url import resolve_database_url

log = logging.getLogger("raytranscribe.cli")

app = typer.Typer(
    name="raytranscribe",
    help="Durable batch transcription on Ray GPU clusters, with PostgreSQL as the source of truth.",
    no_args_is_help=True,
    # --install-completion / --show-completion: bash, zsh, fish and PowerShell complete commands
    # and options (completion imports this module, as --help does, and nothing heavier).
    add_completion=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR, EXIT_INVALID, EXIT_UNAVAILABLE = 1, 2, 3
EXIT_STOPPED = 130  # stopped by a signal before the work was done (the shell's code for an interrupt)
DUPLICATES_SHOWN = 10  # submit's text output names this many duplicates, then counts
DEAD_COUNT_BATCH = 50_000  # backfill's ids asked about at once (their status after the run)

# The settings of the running invocation, set by the root callback (root options applied).
_SETTINGS: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("raytranscribe_settings", default=None)


# --- plumbing ----------------------------------------------------------------------------------


def _print_version(value: bool) -> None:
    if value:
        from raytranscribe import __version__

        typer.echo(f"raytranscribe {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
    database_url: Optional[str] = typer.Option(
        None, "--database-url", show_default=False,
        help="PostgreSQL URL (overrides RAYTRANSCRIBE_DATABASE_URL, which overrides RAYTRANSCRIBE_DATABASE_URL_FILE).",
    ),
    log_level: Optional[str] = typer.Option(None, "--log-level", help="DEBUG, INFO, WARNING ...", show_default=False),
) -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        _fail(_settings_problem(exc), EXIT_INVALID)
    update: dict[str, Any] = {}
    if database_url:
        update["database_url"] = database_url
    level = (log_level or settings.log_level).upper()
    if level not in LOG_LEVELS:
        where = "--log-level" if log_level else "RAYTRANSCRIBE_LOG_LEVEL"
        _fail(f"invalid {where} {level!r}: choose from {', '.join(LOG_LEVELS)}", EXIT_INVALID)
    if level != settings.log_level:
        update["log_level"] = level
    settings = settings.model_copy(update=update) if update else settings
    try:  # the URL file is read here, once: a missing or unreadable one is the user's input
        settings = resolve_database_url(settings)
    except ConfigError as exc:
        _fail(str(exc), EXIT_INVALID)
    ctx.obj = settings
    _SETTINGS.set(settings)
    _configure_logging(settings.log_level)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _settings_problem(exc: ValidationError) -> str:
    """One line for bad RAYTRANSCRIBE_* variables: which variable, what is wrong (never its value: it
    may be a secret)."""
    problems = [
        f"RAYTRANSCRIBE_{'__'.join(str(part) for part in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
    ]
    return "invalid setting " + "; ".join(problems)


def _configure_logging(level: str) -> None:
    try:
        from raytranscribe.logs import configure
    except ImportError:  # pragma: no cover - logs.py ships with the package
        logging.basicConfig(level=level)
        return
    configure(level)


def _settings() -> Settings:
    """This invocation's settings; outside a command (a job calling in), the environment's."""
    settings = _SETTINGS.get()
    return settings if settings is not None else resolve_database_url(Settings())


def _store() -> Store:
    """The Store for this invocation, built from the settings (embedded Postgres when no URL is set)."""
    return Store.from_settings(_settings())


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _handles_errors(fn: F) -> F:
    """Turn our errors into one clear line on stderr and a meaningful exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (InvalidInput, ConfigError, StoreMisconfigured) as exc:  # fixed by the user, not by waiting
            _fail(str(exc), EXIT_INVALID)
        except TaskNotFound as exc:
            _fail(str(exc), EXIT_ERROR)
        except StoreUnavailable as exc:
            _fail(str(exc), EXIT_UNAVAILABLE)
        except (StoreError, RayTranscribeError) as exc:
            _fail(str(exc), EXIT_ERROR)

    return wrapper  # type: ignore[return-value]


def _console() -> Console:
    # A fresh console per command so output goes to the current stdout (CliRunner swaps it).
    return Console(file=sys.stdout, width=160)


def _echo_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, default=str))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _when(dt: datetime | None) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


# --- db ----------------------------------------------------------------------------------------


@db_app.command("upgrade")
@_handles_errors
def db_upgrade() -> None:
    """Create the schema, or bring an older one to the latest revision (safe to run twice, or at once)."""
    with _store() as store:
        store.upgrade()
        typer.echo(f"database schema at revision {store.current_revision()}")


# --- submit ------------------------------------------------------------------------------------


LISTED_BATCH = 5000  # listed objects asked about at once ("already submitted?")


@dataclass
class _Skipped:
    """Listed keys left out under --skip-invalid, counted for the summary (one submit's reading)."""

    count: int = 0


def _uri_tasks(
    uris: Sequence[str], output: str, defaults: ManifestDefaults, store: Store, *, skip_invalid: bool, skipped: _Skipped
) -> Iterator[NewTask]:
    """One task per input, as it is listed: object URIs as given; a prefix (``s3://b/calls/``) expands
    to every audio object under it, page by page, skipping inputs already submitted. Outputs keep the
    inputs' folder layout below the prefix (uris.output_stem is the one place for it).

    A listed key with a ``.``, ``..`` or empty segment, or one the output layout cannot hold, refuses
    the whole submission, naming it: its transfers would reach another object, and skipping it quietly
    would lose an input. With ``skip_invalid`` it is left out instead, printed with its reason, and
    counted in ``skipped``."""
    from raytranscribe.storage import S3Storage
    from raytranscribe.uris import abbrev, key_problem, output_stem, parse_s3_uri

    # Every URI is checked before anything is listed.
    out_prefix = parse_s3_uri(output, allow_prefix=True, what="--output")
    parsed_uris = [parse_s3_uri(uri, allow_prefix=True, what="input URI") for uri in uris]
    options = TranscribeOptions(language=defaults.language, formats=defaults.formats)

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
        storage = storage or S3Storage(_settings().s3)
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
                skipped.count += 1
                typer.echo(f"skipped {abbrev(str(obj))}: {problem}", err=True)
            done = store.submitted_inputs([u for u, _ in fresh])
            already += len(done)
            for input_uri, stem in fresh:
                if input_uri not in done:
                    yield task(input_uri, stem)
        note = f", {left_out} skipped (invalid key)" if skip_invalid else ""
        typer.echo(f"{uri}: {listed} audio object(s), {already} already submitted{note}", err=True)


def _manifest_tasks(path: Path, defaults: ManifestDefaults) -> Iterator[NewTask]:
    try:
        with path.open(encoding="utf-8") as fh:
            yield from iter_manifest(fh, defaults)
    except OSError as exc:
        raise InvalidInput(f"cannot read manifest {str(path)!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"manifest {str(path)!r} is not UTF-8 text: {exc.reason}") from exc


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


@app.command()
@_handles_errors
def submit(
    uris: Optional[list[str]] = typer.Argument(None, help="Input objects: s3://bucket/key ...", show_default=False),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", help="Output prefix: s3://bucket/prefix (outputs: PREFIX/<name>.<fmt>).",
        show_default=False,
    ),  # fmt: skip
    manifest: Optional[Path] = typer.Option(
        None, "--manifest", "-m", help="JSON-lines file, one task a line.", show_default=False
    ),
    engine: Optional[str] = typer.Option(
        None, "--engine", help=f"One of {', '.join(ENGINES)} (default: RAYTRANSCRIBE_ENGINE__ENGINE).", show_default=False
    ),
    model: Optional[str] = typer.Option(
        None, "--model", show_default=False,
        help="Model name, local path, Hugging Face id, or s3://bucket/prefix/ (a CTranslate2 folder or one .pt; "
        "checked at submit) (default: RAYTRANSCRIBE_ENGINE__MODEL).",
    ),
    language: Optional[str] = typer.Option(None, "--language", help="Language code; default: detect.", show_default=False),
    formats: str = typer.Option(",".join(FORMATS), "--formats", help="Comma-separated output formats."),
    priority: int = typer.Option(0, "--priority", help="Higher runs first."),
    max_retries: Optional[int] = typer.Option(
        None, "--max-retries", help="Retries before a task is dead (default from settings).", show_default=False
    ),
    backoff_factor: Optional[float] = typer.Option(
        None, "--backoff-factor", help="Growth of the retry delay (default from settings).", show_default=False
    ),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="Leave out listed keys that cannot be transcribed safely, naming each, "
        "instead of refusing the whole prefix.",
    ),  # fmt: skip
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Queue transcription tasks: object URIs with --output, or a --manifest. All or nothing."""
    if bool(uris) == (manifest is not None):
        raise InvalidInput("give input URIs with --output, or --manifest FILE (not both, not neither)")
    defaults = ManifestDefaults(
        engine=engine or _settings().engine.engine,
        model=model or _settings().engine.model,
        language=language,
        formats=parse_formats(formats),
        priority=priority,
        max_retries=max_retries,
        backoff_factor=backoff_factor,
    )
    with _store() as store:
        report, skipped = _submit(store, uris, output, manifest, defaults, skip_invalid=skip_invalid,
                                  keep_duplicates=None if as_json else DUPLICATES_SHOWN)  # fmt: skip
    if as_json:
        doc: dict[str, Any] = {"inserted": list(report.inserted), "duplicates": list(report.duplicate_inputs)}
        _echo_json({**doc, "skipped": skipped} if skip_invalid else doc)
        return
    typer.echo(_submitted_line(report, skipped))
    # A re-run of a big submission is all duplicates: name a few, count the rest.
    for uri in report.duplicate_inputs[:DUPLICATES_SHOWN]:
        typer.echo(f"  duplicate: {uri}")
    if report.duplicates > DUPLICATES_SHOWN:
        typer.echo(f"  ... and {report.duplicates - DUPLICATES_SHOWN} more (--json lists them all)")


def _submitted_line(report: StreamedSubmit, skipped: int) -> str:
    line = f"submitted {len(report.inserted)} task(s); {report.duplicates} duplicate(s) skipped"
    return line + (f"; {skipped} invalid key(s) skipped" if skipped else "")


def _submit(
    store: Store,
    uris: Sequence[str] | None,
    output: str | None,
    manifest: Path | None,
    defaults: ManifestDefaults,
    *,
    skip_invalid: bool = False,
    keep_duplicates: int | None = DUPLICATES_SHOWN,
) -> tuple[StreamedSubmit, int]:
    """Stream the tasks into the store (one transaction, see Store.submit_stream); the report, and how
    many listed keys --skip-invalid left out."""
    # What the last reading of the source skipped (a transient database error reads it again).
    skipped = _Skipped()
    if manifest is not None:
        if output is not None:
            raise InvalidInput("--output applies to input URIs; a manifest names each output_uri itself")
        if skip_invalid:
            raise InvalidInput("--skip-invalid applies to listed prefixes; a manifest line that is invalid refuses it")

        def source() -> Iterator[NewTask]:
            return _s3_models_checked(_manifest_tasks(manifest, defaults))
    else:
        if output is None:
            raise InvalidInput("--output PREFIX is required with input URIs")

        def source() -> Iterator[NewTask]:
            nonlocal skipped
            skipped = _Skipped()
            return _s3_models_checked(
                _uri_tasks(uris or [], output, defaults, store, skip_invalid=skip_invalid, skipped=skipped)
            )

    progress = _SubmitProgress(_settings().progress_interval_s)
    report = store.submit_stream(source, keep_duplicates=keep_duplicates, progress=progress)
    return report, skipped.count


def _s3_models_checked(tasks: Iterable[NewTask]) -> Iterator[NewTask]:
    """Refuse a model URI whose prefix holds no loadable model (ModelNotFound names the missing file,
    exit 2) before anything is written, and spell each one as the folder it is (``.../tiny-en`` and
    ``.../tiny-en/`` are one model, one pool)."""
    import dataclasses

    from raytranscribe.contracts import ModelLayout
    from raytranscribe.storage import S3Storage
    from raytranscribe.uris import SCHEME

    storage: S3Storage | None = None
    canonical: dict[tuple[str, str], str] = {}
    for task in tasks:
        if task.model.startswith(SCHEME):
            pair = (task.engine, task.model)
            if pair not in canonical:
                storage = storage or S3Storage(_settings().s3)
                canonical[pair] = storage.model_files(task.model, layout=ModelLayout.for_engine(task.engine)).uri
            if canonical[pair] != task.model:
                task = dataclasses.replace(task, model=canonical[pair])
        yield task


# --- reading -----------------------------------------------------------------------------------


@app.command()
@_handles_errors
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Counts per status, oldest pending age, retries scheduled, top failure reasons."""
    with _store() as store:
        stats = store.stats()
        orchestrators = store.orchestrators()
    if as_json:
        _echo_json({**stats.to_dict(), "orchestrators": [o.to_dict() for o in orchestrators]})
        return
    console = _console()
    table = Table(title="tasks")
    table.add_column("status")
    table.add_column("count", justify="right")
    for s, n in stats.counts.items():
        table.add_row(s.value, str(n))
    table.add_row("total", str(stats.total), style="bold")
    console.print(table)
    console.print(f"oldest pending: {_age(stats.oldest_pending_age_s)}")
    console.print(f"retries scheduled: {stats.retries_scheduled}")
    console.print(f"audio completed: {stats.audio_seconds_completed / 3600:.2f} h ({stats.audio_seconds_completed:.1f} s)")
    if stats.top_failure_reasons:
        reasons = Table(title="top failure reasons")
        reasons.add_column("count", justify="right")
        reasons.add_column("reason", overflow="fold")
        for reason, n in stats.top_failure_reasons:
            reasons.add_row(str(n), reason)
        console.print(reasons)
    _print_orchestrators(console, orchestrators)


def _print_orchestrators(console: Console, orchestrators) -> None:
    if not orchestrators:
        console.print("orchestrators: none running")
        return
    for o in orchestrators:
        trips = o.state.get("breaker_trips") or {}
        breakers = ", ".join(
            f"{k} {v}" + (f" (tripped {trips[k]}x)" if trips.get(k) else "")
            for k, v in sorted((o.state.get("breakers") or {}).items())
        )
        starts = ", ".join(f"{pool} {n}" for pool, n in sorted((o.state.get("actor_starts") or {}).items()))
        console.print(
            f"orchestrator {o.owner}: {o.state.get('in_flight', 0)} in flight, breakers: {breakers or '-'}, "
            f"actors started: {starts or '-'}, last heartbeat {_when(o.heartbeat_at)}"
        )
        actors = Table(title="actors")
        for col in ("name", "pool", "state", "node", "gpus", "device", "in flight", "done", "batch", "audio held"):
            actors.add_column(col)
        for a in o.state.get("actors", []):
            actors.add_row(
                a["name"], a["pool"], f"{a['state']}: {a['loading']}" if a.get("loading") else a["state"],
                (a.get("node_id") or "-")[:12], ",".join(a.get("gpu_ids") or []) or "-", _device(a),
                str(a["in_flight"]), str(a["tasks_done"]), _batching(a), f"{a.get('buffered_audio_s', 0.0):.0f} s",
            )  # fmt: skip
        console.print(actors)


def _device(actor: dict) -> str:
    """``cuda float16 (NVIDIA A10G)``: where the actor computes, in what, and on which GPU."""
    text = " ".join(x for x in (actor.get("device"), actor.get("compute_type")) if x) or "-"
    return f"{text} ({actor['gpu_name']})" if actor.get("gpu_name") else text


def _batching(actor: dict) -> str:
    """``8, 6.2 a call``: slots per batch now, and how full its batches have run (windows per call)."""
    size, calls = actor.get("batch_size", 1), actor.get("batches", 0)
    if size <= 1:
        return "1 (sequential)"
    return f"{size}, {actor.get('windows_decoded', 0) / calls:.1f} a call" if calls else str(size)


@app.command()
@_handles_errors
def tasks(
    status_filter: Optional[TaskStatus] = typer.Option(None, "--status", help="Only tasks in this status."),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many (oldest first)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List tasks."""
    with _store() as store:
        rows = store.list_tasks(status=status_filter, limit=limit)
    if as_json:
        _echo_json([t.to_dict() for t in rows])
        return
    table = Table(title=f"tasks ({status_filter.value if status_filter else 'all'})")
    for col in ("id", "status", "attempt", "retries", "engine/model", "input", "updated", "failure reason"):
        table.add_column(col, overflow="fold")
    for t in rows:
        table.add_row(
            str(t.id), t.status.value, str(t.attempt), f"{t.retries}/{t.max_retries}", f"{t.engine}/{t.model}",
            t.input_uri, _when(t.updated_at), t.failure_reason or "",
        )  # fmt: skip
    _console().print(table)


def _show_task(t: TaskView) -> None:
    console = _console()
    info = Table(title=f"task {t.id}", show_header=False)
    info.add_column("field", style="bold")
    info.add_column("value", overflow="fold")
    for name, value in (
        ("status", t.status.value),
        ("input", t.input_uri),
        ("output", t.output_uri),
        ("engine / model", f"{t.engine} / {t.model}"),
        ("options", json.dumps(t.options.to_dict())),
        ("priority", str(t.priority)),
        ("attempt", str(t.attempt)),
        ("retries", f"{t.retries} of {t.max_retries} (backoff x{t.backoff_factor:g})"),
        ("crashes / releases", f"{t.crashes} worker crash(es) charged / {t.releases} handed back uncharged"),
        ("retry at", _when(t.retry_at)),
        ("lease", f"{t.lease_owner} until {_when(t.lease_expires_at)}" if t.lease_owner else "-"),
        ("failure reason", t.failure_reason or "-"),
        ("last error", t.last_error or "-"),
        ("created / updated", f"{_when(t.created_at)} / {_when(t.updated_at)}"),
        ("started / finished", f"{_when(t.started_at)} / {_when(t.completed_at)}"),
        ("audio", f"{t.audio_duration_s:.1f} s" if t.audio_duration_s is not None else "-"),
        ("language", t.language or "-"),
        ("outputs", "\n".join(t.output_uris) or "-"),
        ("text", t.text_preview or "-"),
    ):
        info.add_row(name, value)
    console.print(info)
    attempts = Table(title="attempts")
    for col in ("#", "worker", "actor", "node", "started", "finished", "outcome", "stage", "error", "decision"):
        attempts.add_column(col, overflow="fold")
    for a in t.attempts:
        error = f"{a.error_class}: {a.error_message}" if a.error_class else ""
        if a.http_status:
            error += f" (HTTP {a.http_status})"
        attempts.add_row(
            str(a.attempt), a.worker, a.actor or "", a.node or "", _when(a.started_at), _when(a.finished_at),
            a.outcome or "running", a.stage or "", error, a.decision or "",
        )  # fmt: skip
    console.print(attempts)


@app.command()
@_handles_errors
def show(
    task_id: int = typer.Argument(..., help="Task id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One task with its attempt history."""
    with _store() as store:
        task = store.get(task_id)
    if task is None:
        raise TaskNotFound(f"task {task_id} not found")
    if as_json:
        _echo_json(task.to_dict())
    else:
        _show_task(task)


# --- operator actions --------------------------------------------------------------------------


@app.command()
@_handles_errors
def retry(
    task_ids: Optional[list[int]] = typer.Argument(None, help="Task ids to requeue.", show_default=False),
    status_filter: Optional[TaskStatus] = typer.Option(
        None, "--status", help="Requeue every task in this status (failed, dead or cancelled).", show_default=False
    ),
) -> None:
    """Requeue failed, dead or cancelled tasks (retry count reset, history kept)."""
    if not task_ids and status_filter is None:
        raise InvalidInput("give task ids or --status")
    with _store() as store:
        report = store.requeue(task_ids or (), status=status_filter)
    typer.echo(f"requeued {report.count} task(s)")
    _left_alone(report, "requeued", (status_filter,) if status_filter is not None else REQUEUEABLE)
    if task_ids and not report.changed:
        raise typer.Exit(EXIT_ERROR)


@app.command()
@_handles_errors
def cancel(task_ids: list[int] = typer.Argument(..., help="Task ids to cancel.")) -> None:
    """Cancel pending, in-progress or failed tasks."""
    with _store() as store:
        report = store.cancel(task_ids)
    typer.echo(f"cancelled {report.count} of {len(set(task_ids))} task(s)")
    _left_alone(report, "cancelled", CANCELLABLE)
    if not report.changed:
        raise typer.Exit(EXIT_ERROR)


IDS_SHOWN = 20  # ids named per line of a retry/cancel report, then a count


def _ids(ids: Sequence[int]) -> str:
    shown = ", ".join(map(str, ids[:IDS_SHOWN]))
    return shown + (f" and {len(ids) - IDS_SHOWN} more" if len(ids) > IDS_SHOWN else "")


def _left_alone(report: StatusChange, verb: str, allowed: Sequence[TaskStatus]) -> None:
    """On stderr: the named tasks a retry/cancel did not change, by status, and the ids of no task."""
    by_status: dict[TaskStatus, list[int]] = {}
    for task_id, task_status in report.refused:
        by_status.setdefault(task_status, []).append(task_id)
    rule = ", ".join(s.value for s in allowed)
    for task_status, ids in by_status.items():
        typer.echo(f"not {verb}: {_ids(ids)}: {task_status.value} (only {rule} tasks can be {verb})", err=True)
    if report.missing:
        typer.echo(f"not {verb}: {_ids(report.missing)}: no such task", err=True)


# --- running -----------------------------------------------------------------------------------


def _run_settings(
    address: str | None, actors: int | None, gpus_per_actor: float | None, prefetch: int | None
) -> Settings:
    settings = _settings()
    worker = {
        k: v for k, v in {"max_actors": actors, "num_gpus": gpus_per_actor, "prefetch": prefetch}.items() if v is not None
    }
    settings = settings.with_(worker=worker) if worker else settings
    return settings.model_copy(update={"ray_address": address}) if address else settings


def _pairs(engine: str | None, model: str | None) -> tuple[tuple[str, str], ...] | None:
    if (engine is None) != (model is None):
        raise InvalidInput("--engine and --model go together (a pool serves one engine and model)")
    return ((engine, model),) if engine and model else None


def _run(settings: Settings, options, *, local_cpus: int | None, local_gpus: float | None, store: Store | None = None):
    from raytranscribe import service
    from raytranscribe.progress import ProgressLines, RichProgress, summary_table
    from raytranscribe.service import LocalRay

    console = Console(stderr=True)
    local = LocalRay(num_cpus=local_cpus, num_gpus=local_gpus)
    if console.is_terminal:
        with RichProgress(console) as progress:
            summary = service.run(settings, options, store=store, observer=progress, local=local)
    else:  # a job's log or a pipe: a bar draws nothing there, a line every progress_interval_s does
        observer = ProgressLines(settings.progress_interval_s)
        summary = service.run(settings, options, store=store, observer=observer, local=local)
    console.print(summary_table(summary))
    return summary


def _gpu_default(settings: Settings, gpus_per_actor: float | None, local_gpus: float | None) -> Settings:
    """On a local Ray with no GPU, actors that reserve one would never start: reserve none instead."""
    if settings.ray_address or os.environ.get("RAY_ADDRESS") or gpus_per_actor is not None or local_gpus:
        return settings  # a cluster: its GPUs are what the actors are for
    try:
        import ctranslate2

        has_gpu = ctranslate2.get_cuda_device_count() > 0
    except Exception:  # no CTranslate2 or no CUDA runtime: no GPU for us
        has_gpu = False
    if not has_gpu and settings.worker.num_gpus > 0:
        typer.echo("no GPU found: worker actors run on the CPU (reserve 0 GPUs)", err=True)
        return settings.with_(worker={"num_gpus": 0})
    return settings


@app.command()
@_handles_errors
def run(
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address; default: RAY_ADDRESS or a local Ray.", show_default=False),
    actors: Optional[int] = typer.Option(None, "--actors", min=1, help="Most worker actors per (engine, model) pool; it grows to this while work waits.", show_default=False),
    gpus_per_actor: Optional[float] = typer.Option(None, "--gpus-per-actor", min=0, help="GPUs each actor reserves.", show_default=False),
    prefetch: Optional[int] = typer.Option(None, "--prefetch", min=1, help="Tasks queued on each actor.", show_default=False),
    engine: Optional[str] = typer.Option(None, "--engine", help="Serve only this engine (with --model).", show_default=False),
    model: Optional[str] = typer.Option(None, "--model", help="Serve only this model (with --engine).", show_default=False),
    until_drained: bool = typer.Option(False, "--until-drained", help="Exit 0 once nothing is pending, running or waiting for retry."),
    grace: float = typer.Option(0.0, "--grace", min=0, help="On SIGTERM/SIGINT: seconds in-flight tasks may finish before the rest is handed back uncharged (under `ray job stop`, raise RAY_JOB_STOP_WAIT_TIME_S above it)."),
    local_cpus: Optional[int] = typer.Option(None, "--local-cpus", help="CPUs of a local Ray (default: all).", show_default=False),
    local_gpus: Optional[float] = typer.Option(None, "--local-gpus", help="GPUs of a local Ray (logical GPUs allowed).", show_default=False),
) -> None:
    """Run the orchestrator: claim tasks, dispatch them to GPU actors, record every outcome."""
    from raytranscribe.orchestrator import RunOptions

    settings = _gpu_default(_run_settings(address, actors, gpus_per_actor, prefetch), gpus_per_actor, local_gpus)
    options = RunOptions(until_drained=until_drained, pairs=_pairs(engine, model), grace_s=grace)
    _run(settings, options, local_cpus=local_cpus, local_gpus=local_gpus)


@app.command()
@_handles_errors
def backfill(
    prefix: str = typer.Argument(..., help="Input prefix s3://bucket/prefix/ (or object URIs)."),
    output: str = typer.Option(..., "--output", "-o", help="Output prefix s3://bucket/prefix/."),
    engine: Optional[str] = typer.Option(
        None, "--engine", help=f"One of {', '.join(ENGINES)} (default: RAYTRANSCRIBE_ENGINE__ENGINE).", show_default=False
    ),
    model: Optional[str] = typer.Option(
        None, "--model", show_default=False,
        help="Model name, local path, Hugging Face id, or s3://bucket/prefix/ (a CTranslate2 folder or one .pt; "
        "checked at submit) (default: RAYTRANSCRIBE_ENGINE__MODEL).",
    ),
    language: Optional[str] = typer.Option(None, "--language", show_default=False),
    formats: str = typer.Option(",".join(FORMATS), "--formats"),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", show_default=False),
    address: Optional[str] = typer.Option(None, "--address", show_default=False),
    actors: Optional[int] = typer.Option(None, "--actors", min=1, show_default=False),
    gpus_per_actor: Optional[float] = typer.Option(None, "--gpus-per-actor", min=0, show_default=False),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="Leave out listed keys that cannot be transcribed safely, naming each, "
        "instead of refusing the whole prefix.",
    ),  # fmt: skip
    grace: float = typer.Option(0.0, "--grace", min=0, help="On SIGTERM/SIGINT (`ray job stop`): seconds in-flight tasks may finish before the rest is handed back uncharged (raise RAY_JOB_STOP_WAIT_TIME_S above it)."),
) -> None:
    """Submit everything under a prefix, run until drained, exit 1 if any task ended dead."""
    from raytranscribe.orchestrator import RunOptions

    settings = _gpu_default(_run_settings(address, actors, gpus_per_actor, None), gpus_per_actor, None)
    defaults = ManifestDefaults(
        engine=engine or settings.engine.engine,
        model=model or settings.engine.model,
        language=language,
        formats=parse_formats(formats),
        max_retries=max_retries,
    )
    with Store.from_settings(settings) as store:
        store.upgrade()
        report, skipped = _submit(store, [prefix], output, None, defaults, skip_invalid=skip_invalid)
        typer.echo(_submitted_line(report, skipped), err=True)
        summary = _run(settings, RunOptions(until_drained=True, grace_s=grace), local_cpus=None, local_gpus=None,
                       store=store)  # fmt: skip
        # This backfill's tasks only: an old dead task elsewhere in the queue must not fail this job.
        counts = {status: 0 for status in TaskStatus}
        for i in range(0, len(report.inserted), DEAD_COUNT_BATCH):
            for status, n in store.count_by_status(report.inserted[i : i + DEAD_COUNT_BATCH]).items():
                counts[status] += n
    if summary.stopped:
        left = counts[TaskStatus.PENDING] + counts[TaskStatus.FAILED]
        typer.echo(f"stopped before the backfill finished: {left} task(s) wait for the next run "
                   "(handed back uncharged)", err=True)  # fmt: skip
        raise typer.Exit(EXIT_STOPPED)
    dead = counts[TaskStatus.DEAD]
    if dead:
        typer.echo(f"{dead} task(s) of this backfill are dead: see `raytranscribe tasks --status dead`", err=True)
        raise typer.Exit(EXIT_ERROR)


@app.command()
@_handles_errors
def demo(
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Where the embedded database and the copied outputs live (default: RAYTRANSCRIBE_DATA_DIR).",
        show_default=False,
    ),  # fmt: skip
    timeout: float = typer.Option(600.0, "--timeout", min=10, help="Stop the run after this many seconds."),
    stop_database: bool = typer.Option(
        False, "--stop-database", help="Only stop the embedded PostgreSQL server the demo left running, then exit."
    ),
) -> None:
    """See it all work on this machine: embedded Postgres, local S3, one CPU worker, the bundled tiny.en.

    Transcribes the shipped speech samples, shows a corrupt file ending dead with its reason and a
    failed download retried until it completes, then prints the transcripts, the outputs and `status`.
    """
    from raytranscribe import demo as demo_module

    settings = _settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)
    if stop_database:
        stopped = demo_module.stop_embedded_database(settings.data_dir)
        typer.echo(f"stopped the embedded PostgreSQL server in {settings.data_dir}" if stopped
                   else f"no embedded PostgreSQL server running in {settings.data_dir}")  # fmt: skip
        return
    report = demo_module.run_demo(settings, demo_module.DemoOptions(timeout_s=timeout), console)
    console.rule("raytranscribe status")
    _SETTINGS.set(settings)  # `status` reads the same database (--data-dir included)
    status(as_json=False)
    demo_module.print_verdict(report, console, embedded_database=settings.database_url is None)
    if not report.ok:
        raise typer.Exit(EXIT_ERROR)


if __name__ == "__main__":  # pragma: no cover
    app()
