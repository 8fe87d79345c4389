"""``raytranscribe``: the command line, a thin layer over :class:`raytranscribe.Client`.

Every command builds its :class:`Settings` from ``RAYTRANSCRIBE_*`` variables and the root options,
calls the Client, and prints a table (or JSON with ``--json``). Exit codes: 0 ok; 1 not
found, nothing changed (``retry``/``cancel`` of ids none of which allowed it), other error; 2 invalid
input or configuration (bad URI, manifest, option, setting, database URL, a database that refuses
the role or its options, a schema that needs ``raytranscribe db upgrade``); 3 database unreachable
after the store's retries; 130 stopped by a signal before a backfill was done.

This module imports only typer and the standard library at load: ``--help`` and completion answer at
once, and each command imports what it uses when it runs (the Client and its store, pydantic settings,
Ray, and rich for the progress of ``run`` and ``backfill``).
"""

from __future__ import annotations

import contextvars
import enum
import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer

from raytranscribe.errors import (
    ConfigError,
    InvalidInput,
    RayTranscribeError,
    StoreError,
    StoreMisconfigured,
    StoreUnavailable,
    TaskNotFound,
)
from raytranscribe.names import DEFAULT_FORMATS, ENGINES, FORMATS

if TYPE_CHECKING:
    from raytranscribe.client import Client
    from raytranscribe.config import Settings
    from raytranscribe.orchestrator import RunSummary
    from raytranscribe.store import OrchestratorView, StatusChange, TaskStatus, TaskView

log = logging.getLogger("raytranscribe.cli")

app = typer.Typer(
    name="raytranscribe",
    help="Durable batch transcription on Ray GPU clusters, with PostgreSQL as the source of truth.",
    no_args_is_help=True,
    # --install-completion / --show-completion: bash, zsh, fish and PowerShell complete commands
    # and options (completion imports this module, as --help does, and nothing heavier).
    add_completion=True,
    pretty_exceptions_enable=False,
    # Plain help text: typer's rich help imports rich and markdown-it first, which took longer than
    # the rest of --help together.
    rich_markup_mode=None,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(db_app, name="db")

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR, EXIT_INVALID, EXIT_UNAVAILABLE = 1, 2, 3
EXIT_STOPPED = 130  # stopped by a signal before the work was done (the shell's code for an interrupt)
DUPLICATES_SHOWN = 10  # submit's text output names this many duplicates, then counts



class StatusChoice(str, enum.Enum):
    """``--status`` values: the store's TaskStatus, spelled here so that --help imports no store code
    (tests/test_cli.py checks them)."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


# The settings of the running invocation, set by the root callback (root options applied).
_SETTINGS: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("raytranscribe_settings", default=None)

JSON_HELP = "Print JSON."
ENGINE_HELP = f"One of {', '.join(ENGINES)}, or a plugin 'package.module:Class' (default: RAYTRANSCRIBE_ENGINE__ENGINE)."
MODEL_HELP = (
    "Model name, local path, Hugging Face id, or s3://bucket/prefix/ (a CTranslate2 folder or one .pt; "
    "checked at submit) (default: RAYTRANSCRIBE_ENGINE__MODEL)."
)
FORMATS_HELP = f"Comma-separated output formats ({', '.join(FORMATS)}), or all."
# Whisper's options: a flag left out keeps the default (engines.base.TranscribeOptions), so a
# default has one home; each is checked there, and a bad one is refused naming it.
TASK_HELP = (
    "transcribe (in the language spoken) or translate (into English; needs a multilingual model, "
    "not an English-only *.en one) (default: transcribe)."
)
WORD_TIMESTAMPS_HELP = "Time every word (JSON output: a words list per segment) (default: off)."
INITIAL_PROMPT_HELP = (
    "Text the model reads before each 30 s window of the file: names and spellings to expect, a style to follow "
    "(at most 2000 characters; default: none)."
)
BEAM_SIZE_HELP = "Beams of the beam search, an integer >= 1 (1: greedy) (default: 5)."
TEMPERATURE_HELP = (
    "Decoding temperature from 0 to 1, where Whisper's fallback (hotter after a failed decode) starts (default: 0)."
)
VAD_HELP = "Voice-activity detection: decode only the speech Silero VAD finds; --no-vad decodes all the audio (default: on)."
SKIP_INVALID_HELP = (
    "Leave out listed keys that cannot be transcribed safely, naming each, instead of refusing the whole prefix."
)

# The options submit and backfill share, declared once.
EngineOption = Annotated[Optional[str], typer.Option("--engine", help=ENGINE_HELP, show_default=False)]
ModelOption = Annotated[Optional[str], typer.Option("--model", help=MODEL_HELP, show_default=False)]
LanguageOption = Annotated[
    Optional[str], typer.Option("--language", help="Language code; default: detect.", show_default=False)
]
FormatsOption = Annotated[str, typer.Option("--formats", help=FORMATS_HELP)]
TaskOption = Annotated[Optional[str], typer.Option("--task", help=TASK_HELP, show_default=False)]
WordTimestampsOption = Annotated[
    Optional[bool],
    typer.Option("--word-timestamps/--no-word-timestamps", help=WORD_TIMESTAMPS_HELP, show_default=False),
]
InitialPromptOption = Annotated[
    Optional[str], typer.Option("--initial-prompt", help=INITIAL_PROMPT_HELP, show_default=False)
]
BeamSizeOption = Annotated[Optional[int], typer.Option("--beam-size", help=BEAM_SIZE_HELP, show_default=False)]
TemperatureOption = Annotated[Optional[float], typer.Option("--temperature", help=TEMPERATURE_HELP, show_default=False)]
VadOption = Annotated[Optional[bool], typer.Option("--vad/--no-vad", help=VAD_HELP, show_default=False)]
MaxRetriesOption = Annotated[
    Optional[int],
    typer.Option("--max-retries", help="Retries before a task is dead (default from settings).", show_default=False),
]


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
    log_level: Optional[str] = typer.Option(
        None, "--log-level", help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default: RAYTRANSCRIBE_LOG_LEVEL).",
        show_default=False,
    ),  # fmt: skip
) -> None:
    from pydantic import ValidationError

    Settings = _settings_type()
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
        settings = _resolved(settings)
    except ConfigError as exc:
        _fail(str(exc), EXIT_INVALID)
    ctx.obj = settings
    _SETTINGS.set(settings)
    _configure_logging(settings.log_level)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _settings_problem(exc: Any) -> str:
    """One line for bad RAYTRANSCRIBE_* variables (a pydantic ValidationError): which variable, what is
    wrong (never its value: it may be a secret)."""
    problems = [
        f"RAYTRANSCRIBE_{'__'.join(str(part) for part in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
    ]
    return "invalid setting " + "; ".join(problems)


def _configure_logging(level: str) -> None:
    from raytranscribe.logs import configure

    configure(level)


def _settings() -> Settings:
    """This invocation's settings; outside a command (a job calling in), the environment's."""
    settings = _SETTINGS.get()
    if settings is None:
        settings = _resolved(_settings_type()())
    return settings


def _settings_type() -> type[Settings]:
    """:class:`Settings`, its models built without pydantic's plugin discovery, which reads the
    metadata of every installed package (a tenth of ``status``'s start) for plugins that settings
    validated once per command have no use for. Typer builds its parameters' adapters the same way."""
    if "raytranscribe.config" not in sys.modules:
        import importlib
        import os

        previous = os.environ.get("PYDANTIC_DISABLE_PLUGINS")
        os.environ["PYDANTIC_DISABLE_PLUGINS"] = "1"
        try:
            importlib.import_module("raytranscribe.config")  # its models are built as it loads
        finally:
            if previous is None:
                del os.environ["PYDANTIC_DISABLE_PLUGINS"]
            else:
                os.environ["PYDANTIC_DISABLE_PLUGINS"] = previous
    from raytranscribe.config import Settings

    return Settings


def _resolved(settings: Settings) -> Settings:
    """The database URL the driver uses (the file read, noted as a secret): the command line's one call."""
    from raytranscribe.store.url import resolve_database_url

    return resolve_database_url(settings)


def _client() -> Client:
    """The Client for this invocation, built from the settings (embedded Postgres when no URL is set)."""
    from raytranscribe.client import Client

    return Client(settings=_settings())


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _note(line: str) -> None:
    """A listing's or a run's note for the operator: a line on stderr."""
    typer.echo(line, err=True)


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


def _echo_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, default=str))


def _age(seconds: float | None) -> str:
    from raytranscribe.progress import duration_text

    return "-" if seconds is None else duration_text(seconds)


def _when(dt: datetime | None) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


# --- db ----------------------------------------------------------------------------------------


@db_app.command("upgrade")
@_handles_errors
def db_upgrade(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Create the schema, or bring an older one to the latest revision (safe to run twice, or at once)."""
    with _client() as client:
        revision = client.upgrade()
    if as_json:
        _echo_json({"revision": revision})
    else:
        typer.echo(f"database schema at revision {revision}")


# --- submit ------------------------------------------------------------------------------------


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
    engine: EngineOption = None,
    model: ModelOption = None,
    language: LanguageOption = None,
    formats: FormatsOption = ",".join(DEFAULT_FORMATS),
    task: TaskOption = None,
    word_timestamps: WordTimestampsOption = None,
    initial_prompt: InitialPromptOption = None,
    beam_size: BeamSizeOption = None,
    temperature: TemperatureOption = None,
    vad: VadOption = None,
    priority: int = typer.Option(0, "--priority", help="Higher runs first."),
    max_retries: MaxRetriesOption = None,
    backoff_factor: Optional[float] = typer.Option(
        None, "--backoff-factor", help="Growth of the retry delay (default from settings).", show_default=False
    ),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help=SKIP_INVALID_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Queue transcription tasks: object URIs with --output, or a --manifest (its lines' fields win over
    these flags). All or nothing."""
    if bool(uris) == (manifest is not None):
        raise InvalidInput("give input URIs with --output, or --manifest FILE (not both, not neither)")
    common: dict[str, Any] = {
        "engine": engine, "model": model, "language": language, "formats": formats, "priority": priority,
        "max_retries": max_retries, "backoff_factor": backoff_factor,
        "keep_duplicates": None if as_json else DUPLICATES_SHOWN,
        "task": task, "word_timestamps": word_timestamps, "initial_prompt": initial_prompt, "beam_size": beam_size,
        "temperature": temperature, "vad": vad,
    }  # fmt: skip
    with _client() as client:
        if manifest is not None:
            if output is not None:
                raise InvalidInput("--output applies to input URIs; a manifest names each output_uri itself")
            if skip_invalid:
                raise InvalidInput("--skip-invalid applies to listed prefixes; a manifest line that is invalid refuses it")
            report = client.submit_manifest(manifest, **common)
        else:
            if output is None:
                raise InvalidInput("--output PREFIX is required with input URIs")
            report = client.submit(uris or [], output, skip_invalid=skip_invalid, notes=_note, **common)
    if as_json:
        doc: dict[str, Any] = {"inserted": list(report.inserted), "duplicates": list(report.duplicate_inputs)}
        _echo_json({**doc, "skipped": report.skipped} if skip_invalid else doc)
        return
    typer.echo(_submitted_line(len(report.inserted), report.duplicates, report.skipped))
    # A re-run of a big submission is all duplicates: name a few, count the rest.
    for uri in report.duplicate_inputs[:DUPLICATES_SHOWN]:
        typer.echo(f"  duplicate: {uri}")
    if report.duplicates > DUPLICATES_SHOWN:
        typer.echo(f"  ... and {report.duplicates - DUPLICATES_SHOWN} more (--json lists them all)")


def _submitted_line(inserted: int, duplicates: int, skipped: int) -> str:
    line = f"submitted {inserted} task(s); {duplicates} duplicate(s) skipped"
    return line + (f"; {skipped} invalid key(s) skipped" if skipped else "")


# --- reading -----------------------------------------------------------------------------------


@app.command()
@_handles_errors
def status(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Counts per status, oldest pending age, retries scheduled, top failure reasons."""
    with _client() as client:
        now = client.status()
    if as_json:
        _echo_json(now.to_dict())
        return
    from raytranscribe.texttable import Table

    stats = now.stats
    table = Table("tasks")
    table.column("status")
    table.column("count", right=True)
    for s, n in stats.counts.items():
        table.row(s.value, str(n))
    table.row("total", str(stats.total))
    typer.echo(table)
    typer.echo(f"oldest pending: {_age(stats.oldest_pending_age_s)}")
    typer.echo(f"retries scheduled: {stats.retries_scheduled}")
    typer.echo(f"audio completed: {stats.audio_seconds_completed / 3600:.2f} h ({stats.audio_seconds_completed:.1f} s)")
    typer.echo(f"suspect transcripts: {now.suspects}" + (" (tasks --suspect lists them)" if now.suspects else ""))
    if stats.top_failure_reasons:
        reasons = Table("top failure reasons")
        reasons.column("count", right=True)
        reasons.column("reason")
        for reason, n in stats.top_failure_reasons:
            reasons.row(str(n), reason)
        typer.echo(reasons)
    _print_orchestrators(now.orchestrators)


def _print_orchestrators(orchestrators: Sequence[OrchestratorView]) -> None:
    from raytranscribe.texttable import Table

    if not orchestrators:
        typer.echo("orchestrators: none running")
        return
    for o in orchestrators:
        trips = o.state.get("breaker_trips") or {}
        breakers = ", ".join(
            f"{k} {v}" + (f" (tripped {trips[k]}x)" if trips.get(k) else "")
            for k, v in sorted((o.state.get("breakers") or {}).items())
        )
        starts = ", ".join(f"{pool} {n}" for pool, n in sorted((o.state.get("actor_starts") or {}).items()))
        typer.echo(
            f"orchestrator {o.owner}: {o.state.get('in_flight', 0)} in flight, breakers: {breakers or '-'}, "
            f"actors started: {starts or '-'}, last heartbeat {_when(o.heartbeat_at)}"
        )
        actors = Table("actors")
        for col in ("name", "pool", "state", "node", "gpus", "device", "in flight", "done", "batch", "audio held"):
            actors.column(col)
        for a in o.state.get("actors", []):
            actors.row(
                a["name"], a["pool"], f"{a['state']}: {a['loading']}" if a.get("loading") else a["state"],
                (a.get("node_id") or "-")[:12], ",".join(a.get("gpu_ids") or []) or "-", _device(a),
                str(a["in_flight"]), str(a["tasks_done"]), _batching(a), f"{a.get('buffered_audio_s', 0.0):.0f} s",
            )  # fmt: skip
        typer.echo(actors)


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
    status_filter: Optional[StatusChoice] = typer.Option(None, "--status", help="Only tasks in this status.", show_default=False),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many (oldest first)."),
    suspect: bool = typer.Option(
        False, "--suspect", help="Only completed tasks whose transcript is suspect (and why)."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List tasks."""
    with _client() as client:
        rows = client.tasks(status_filter.value if status_filter else None, limit=limit, suspect=suspect)
    if as_json:
        _echo_json([t.to_dict() for t in rows])
        return
    from raytranscribe.texttable import Table

    title = "suspect" if suspect else status_filter.value if status_filter else "all"
    table = Table(f"tasks ({title})")
    last = "suspect because" if suspect else "failure reason"
    for col in ("id", "status", "attempt", "retries", "engine/model", "input", "updated", last):
        table.column(col, right=col == "id")
    for t in rows:
        why = ", ".join((t.quality or {}).get("reasons", [])) if suspect else t.failure_reason or ""
        table.row(
            str(t.id), t.status.value, str(t.attempt), f"{t.retries}/{t.max_retries}", f"{t.engine}/{t.model}",
            t.input_uri, _when(t.updated_at), why,
        )  # fmt: skip
    typer.echo(table)


def _show_task(t: TaskView) -> None:
    from raytranscribe.texttable import Table

    info = Table(f"task {t.id}", show_header=False)
    info.column("field", fold=False)
    info.column("value")
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
        ("quality", _quality_text(t.quality)),
    ):
        info.row(name, value)
    typer.echo(info)
    attempts = Table("attempts")
    for col in ("#", "worker", "actor", "node", "started", "finished", "outcome", "stage", "error", "decision"):
        attempts.column(col, right=col == "#")
    for a in t.attempts:
        error = f"{a.error_class}: {a.error_message}" if a.error_class else ""
        if a.http_status:
            error += f" (HTTP {a.http_status})"
        attempts.row(
            str(a.attempt), a.worker, a.actor or "", a.node or "", _when(a.started_at), _when(a.finished_at),
            a.outcome or "running", a.stage or "", error, a.decision or "",
        )  # fmt: skip
    typer.echo(attempts)


def _quality_text(quality: dict | None) -> str:
    """``suspect: low-confidence; mean log-prob -1.42, ...``: the verdict, then the measures."""
    if not quality:
        return "-"
    verdict = "suspect: " + ", ".join(quality.get("reasons", [])) if quality.get("suspect") else "ok"
    measures = ", ".join(f"{k} {v}" for k, v in quality.items() if k not in ("suspect", "reasons") and v is not None)
    return f"{verdict}; {measures}"


@app.command()
@_handles_errors
def show(
    task_id: int = typer.Argument(..., help="Task id."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """One task with its attempt history."""
    with _client() as client:
        task = client.show(task_id)
    if as_json:
        _echo_json(task.to_dict())
    else:
        _show_task(task)


@app.command()
@_handles_errors
def export(
    dest: str = typer.Argument(
        ..., metavar="DEST", show_default=False,
        help="Where to write: a local file path, or s3://bucket/key (uploaded once the file is complete).",
    ),  # fmt: skip
    fmt: Optional[str] = typer.Option(
        None, "--format", metavar="parquet|jsonl", help="parquet or jsonl (default: DEST's extension: .parquet/.pq, .jsonl/.ndjson; none: parquet).",
        show_default=False,
    ),  # fmt: skip
    status_filter: Optional[list[StatusChoice]] = typer.Option(
        None, "--status", help="Export the tasks in this status; repeat for several (default: completed).",
        show_default=False,
    ),  # fmt: skip
    suspect: bool = typer.Option(False, "--suspect", help="Only the transcripts judged suspect."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: rows written, dest, format and bytes."),
) -> None:
    """Write an index of the results, one row per task (input, outputs, language, audio seconds, engine,
    model, options, quality, suspect), as Parquet or JSON lines; nothing is left at DEST on failure."""
    statuses = [s.value for s in status_filter] if status_filter else ["completed"]
    with _client() as client:
        result = client.export(dest, format=fmt, status=statuses, suspect=True if suspect else None)
    if as_json:
        _echo_json(result.to_dict())
    else:
        typer.echo(f"exported {result.rows} task(s) to {result.dest} ({result.format}, {result.bytes} bytes)")


# --- operator actions --------------------------------------------------------------------------


@app.command()
@_handles_errors
def retry(
    task_ids: Optional[list[int]] = typer.Argument(None, help="Task ids to requeue.", show_default=False),
    status_filter: Optional[StatusChoice] = typer.Option(
        None, "--status", help="Requeue every task in this status (failed, dead or cancelled).", show_default=False
    ),
    suspect: bool = typer.Option(
        False, "--suspect",
        help="Re-transcribe every completed task whose transcript is suspect (same outputs, history kept).",
    ),  # fmt: skip
    model: Optional[str] = typer.Option(
        None, "--model", help="With --suspect: the model to re-transcribe them with (a bigger one).", show_default=False
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: the ids requeued, refused (with their status) and missing."),
) -> None:
    """Requeue failed, dead or cancelled tasks (retry count reset, history kept), or the suspect ones."""
    from raytranscribe.store import TaskStatus
    from raytranscribe.store.states import REQUEUEABLE

    if not task_ids and status_filter is None and not suspect:
        raise InvalidInput("give task ids, --status or --suspect")
    with _client() as client:
        report = client.retry(
            task_ids or (), status=status_filter.value if status_filter else None, suspect=suspect, model=model
        )
    if as_json:
        _echo_json(_change_doc(report, "requeued"))
    elif suspect:
        typer.echo(f"requeued {report.count} suspect task(s)" + (f" with model {model}" if model else ""))
    else:
        typer.echo(f"requeued {report.count} task(s)")
        _left_alone(report, "requeued", (TaskStatus(status_filter.value),) if status_filter else REQUEUEABLE)
    if task_ids and not report.changed:
        raise typer.Exit(EXIT_ERROR)


@app.command()
@_handles_errors
def cancel(
    task_ids: list[int] = typer.Argument(..., help="Task ids to cancel."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: the ids cancelled, refused (with their status) and missing."),
) -> None:
    """Cancel pending, in-progress or failed tasks."""
    from raytranscribe.store.states import CANCELLABLE

    with _client() as client:
        report = client.cancel(task_ids)
    if as_json:
        _echo_json(_change_doc(report, "cancelled"))
    else:
        typer.echo(f"cancelled {report.count} of {len(set(task_ids))} task(s)")
        _left_alone(report, "cancelled", CANCELLABLE)
    if not report.changed:
        raise typer.Exit(EXIT_ERROR)


IDS_SHOWN = 20  # ids named per line of a retry/cancel report, then a count


def _change_doc(report: StatusChange, verb: str) -> dict[str, Any]:
    return {
        verb: list(report.changed),
        "refused": [{"id": task_id, "status": s.value} for task_id, s in report.refused],
        "missing": list(report.missing),
    }


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


R = TypeVar("R")


def _progress(
    run: Callable[[Any], R], settings: Settings, *, as_json: bool, summary_of: Callable[[R], RunSummary] = lambda r: r
) -> R:
    """Run with a progress bar on a terminal, else a progress line in the log every progress_interval_s;
    then the summary: a table on stderr, or JSON on stdout."""
    from rich.console import Console

    from raytranscribe.progress import ProgressLines, RichProgress, summary_table

    console = Console(stderr=True)
    if console.is_terminal:
        with RichProgress(console) as progress:
            result = run(progress)
    else:  # a job's log or a pipe: a bar draws nothing there, a line every progress_interval_s does
        result = run(ProgressLines(settings.progress_interval_s))
    if not as_json:
        console.print(summary_table(summary_of(result)))
    return result


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
    as_json: bool = typer.Option(False, "--json", help="Print the run's summary as JSON (completed, retried, dead, released, fenced, audio_s, wall_s, rtfx, stopped)."),
) -> None:
    """Run the orchestrator: claim tasks, dispatch them to GPU actors, record every outcome."""
    if (engine is None) != (model is None):
        raise InvalidInput("--engine and --model go together (a pool serves one engine and model)")
    with _client() as client:
        summary = _progress(
            lambda observer: client.run(
                until_drained=until_drained, engine=engine, model=model, address=address, actors=actors,
                gpus_per_actor=gpus_per_actor, prefetch=prefetch, grace=grace, local_cpus=local_cpus,
                local_gpus=local_gpus, observer=observer, notes=_note,
            ),
            client.settings, as_json=as_json,
        )  # fmt: skip
    if as_json:
        from raytranscribe.client import run_summary_dict

        _echo_json(run_summary_dict(summary))


@app.command()
@_handles_errors
def backfill(
    prefix: str = typer.Argument(..., help="Input prefix s3://bucket/prefix/ (or object URIs)."),
    output: str = typer.Option(..., "--output", "-o", help="Output prefix s3://bucket/prefix/."),
    engine: EngineOption = None,
    model: ModelOption = None,
    language: LanguageOption = None,
    formats: FormatsOption = ",".join(DEFAULT_FORMATS),
    task: TaskOption = None,
    word_timestamps: WordTimestampsOption = None,
    initial_prompt: InitialPromptOption = None,
    beam_size: BeamSizeOption = None,
    temperature: TemperatureOption = None,
    vad: VadOption = None,
    max_retries: MaxRetriesOption = None,
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address; default: RAY_ADDRESS or a local Ray.", show_default=False),
    actors: Optional[int] = typer.Option(None, "--actors", min=1, help="Most worker actors per (engine, model) pool; it grows to this while work waits.", show_default=False),
    gpus_per_actor: Optional[float] = typer.Option(None, "--gpus-per-actor", min=0, help="GPUs each actor reserves.", show_default=False),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help=SKIP_INVALID_HELP),
    grace: float = typer.Option(0.0, "--grace", min=0, help="On SIGTERM/SIGINT (`ray job stop`): seconds in-flight tasks may finish before the rest is handed back uncharged (raise RAY_JOB_STOP_WAIT_TIME_S above it)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: tasks submitted, duplicates, skipped keys, the run's summary, and this backfill's tasks by status."),
) -> None:
    """Submit everything under a prefix, run until drained, exit 1 if any task ended dead."""
    with _client() as client:
        result = _progress(
            lambda observer: client.backfill(
                prefix, output, engine=engine, model=model, language=language, formats=formats,
                task=task, word_timestamps=word_timestamps, initial_prompt=initial_prompt, beam_size=beam_size,
                temperature=temperature, vad=vad, max_retries=max_retries, address=address, actors=actors, gpus_per_actor=gpus_per_actor,
                skip_invalid=skip_invalid, grace=grace, observer=observer, notes=_note,
                on_submitted=lambda s: _note(_submitted_line(len(s.inserted), s.duplicates, s.skipped)),
            ),
            client.settings, as_json=as_json, summary_of=lambda r: r.run,
        )  # fmt: skip
    if as_json:
        _echo_json(result.to_dict())
    if result.run.stopped:
        _note(f"stopped before the backfill finished: {result.waiting} task(s) wait for the next run "
              "(handed back uncharged)")  # fmt: skip
        raise typer.Exit(EXIT_STOPPED)
    if result.dead:
        _note(f"{result.dead} task(s) of this backfill are dead: see `raytranscribe tasks --status dead`")
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
    from rich.console import Console

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
