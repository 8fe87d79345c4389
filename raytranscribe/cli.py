"""``raytranscribe``: the command line, the project's only face.

Every command builds its :class:`Settings` from ``RAYTRANSCRIBE_*`` variables and the root options,
talks to the store, and prints a rich table (or JSON with ``--json``). Exit codes: 0 ok, 1 not
found / other error, 2 invalid input (bad URI, manifest, option), 3 database unavailable.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from raytranscribe.config import Settings
from raytranscribe.engines.base import ENGINES, FORMATS, TranscribeOptions
from raytranscribe.errors import InvalidInput, RayTranscribeError, StoreError, StoreUnavailable, TaskNotFound
from raytranscribe.store import NewTask, Store, TaskStatus, TaskView
from raytranscribe.store.manifest import ManifestDefaults, parse_formats, parse_manifest

log = logging.getLogger("raytranscribe.cli")

app = typer.Typer(
    name="raytranscribe",
    help="Durable batch transcription on Ray GPU clusters, with PostgreSQL as the source of truth.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR, EXIT_INVALID, EXIT_UNAVAILABLE = 1, 2, 3

# The settings of the running invocation, set by the root callback (root options applied).
_SETTINGS: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("raytranscribe_settings", default=None)


# --- plumbing ----------------------------------------------------------------------------------


@app.callback()
def main(
    ctx: typer.Context,
    database_url: Optional[str] = typer.Option(
        None, "--database-url", help="PostgreSQL URL (overrides RAYTRANSCRIBE_DATABASE_URL).", show_default=False
    ),
    log_level: Optional[str] = typer.Option(None, "--log-level", help="DEBUG, INFO, WARNING ...", show_default=False),
) -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        _fail(f"invalid settings: {exc}", EXIT_INVALID)
    update: dict[str, Any] = {}
    if database_url:
        update["database_url"] = database_url
    if log_level:
        update["log_level"] = log_level.upper()
    settings = settings.model_copy(update=update) if update else settings
    ctx.obj = settings
    _SETTINGS.set(settings)
    _configure_logging(settings.log_level)


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
    return settings if settings is not None else Settings()


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
        except InvalidInput as exc:
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
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


# --- db ----------------------------------------------------------------------------------------


@db_app.command("upgrade")
@_handles_errors
def db_upgrade() -> None:
    """Create the schema, or bring an older one to the latest revision (safe to run twice, or at once)."""
    with _store() as store:
        store.upgrade()
        typer.echo(f"database schema at revision {store.current_revision()}")


# --- submit ------------------------------------------------------------------------------------


def _expand_inputs(uris: Sequence[str]) -> list[str]:
    """Object URIs pass through unchanged. A prefix (ending in ``/``) would need an S3 listing,
    which this command does not do yet: refuse it clearly instead of guessing."""
    out: list[str] = []
    for uri in uris:
        if uri.endswith("/"):
            raise InvalidInput(
                f"{uri!r} is a prefix: expanding a prefix into its objects needs an S3 listing, which "
                "`submit` cannot do yet; pass object URIs (s3://bucket/key) or a --manifest"
            )
        out.append(uri)
    return out


def _output_stem(prefix: str, input_uri: str) -> str:
    """``s3://out/run1`` + ``s3://in/a/talk.mp3`` -> ``s3://out/run1/talk`` (outputs: ``talk.json`` ...)."""
    name = input_uri.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{prefix.rstrip('/')}/{stem}"


def _validate_uri(allow_prefix: bool = False) -> Callable[[str], object]:
    """The full S3 URI parser of storage.py (it imports boto3, so only the CLI side calls it)."""
    try:
        from raytranscribe.storage import parse_s3_uri
    except ImportError:  # pragma: no cover - storage ships with the package
        return lambda uri: None
    return lambda uri: parse_s3_uri(uri, allow_prefix=allow_prefix)


def _tasks_from_uris(uris: Sequence[str], output: str, defaults: ManifestDefaults) -> list[NewTask]:
    _validate_uri(allow_prefix=True)(output)
    check = _validate_uri()
    options = TranscribeOptions(language=defaults.language, formats=defaults.formats)
    tasks: list[NewTask] = []
    written_by: dict[str, str] = {}
    for uri in _expand_inputs(uris):
        check(uri)
        stem = _output_stem(output, uri)
        if stem in written_by and written_by[stem] != uri:
            raise InvalidInput(
                f"inputs {written_by[stem]!r} and {uri!r} would both write {stem}.*; "
                "submit them with different --output prefixes or a manifest"
            )
        written_by[stem] = uri
        tasks.append(
            NewTask(
                input_uri=uri,
                output_uri=stem,
                engine=defaults.engine,
                model=defaults.model,
                options=options,
                priority=defaults.priority,
                max_retries=defaults.max_retries,
                backoff_factor=defaults.backoff_factor,
            )
        )
    return tasks


def _read_manifest(path: Path, defaults: ManifestDefaults) -> list[NewTask]:
    try:
        with path.open(encoding="utf-8") as fh:
            return parse_manifest(fh, defaults, validate_uri=_validate_uri())
    except OSError as exc:
        raise InvalidInput(f"cannot read manifest {str(path)!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"manifest {str(path)!r} is not UTF-8 text: {exc.reason}") from exc


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
    engine: str = typer.Option("faster-whisper", "--engine", help=f"One of {', '.join(ENGINES)}."),
    model: str = typer.Option("tiny.en", "--model", help="Model name or path."),
    language: Optional[str] = typer.Option(None, "--language", help="Language code; default: detect.", show_default=False),
    formats: str = typer.Option(",".join(FORMATS), "--formats", help="Comma-separated output formats."),
    priority: int = typer.Option(0, "--priority", help="Higher runs first."),
    max_retries: Optional[int] = typer.Option(
        None, "--max-retries", help="Retries before a task is dead (default from settings).", show_default=False
    ),
    backoff_factor: Optional[float] = typer.Option(
        None, "--backoff-factor", help="Growth of the retry delay (default from settings).", show_default=False
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Queue transcription tasks: object URIs with --output, or a --manifest. All or nothing."""
    if bool(uris) == (manifest is not None):
        raise InvalidInput("give input URIs with --output, or --manifest FILE (not both, not neither)")
    defaults = ManifestDefaults(
        engine=engine,
        model=model,
        language=language,
        formats=parse_formats(formats),
        priority=priority,
        max_retries=max_retries,
        backoff_factor=backoff_factor,
    )
    if manifest is not None:
        if output is not None:
            raise InvalidInput("--output applies to input URIs; a manifest names each output_uri itself")
        tasks = _read_manifest(manifest, defaults)
    else:
        if output is None:
            raise InvalidInput("--output PREFIX is required with input URIs")
        tasks = _tasks_from_uris(uris or [], output, defaults)
    with _store() as store:
        report = store.submit(tasks)
    if as_json:
        _echo_json({"inserted": list(report.inserted), "duplicates": list(report.duplicates)})
        return
    typer.echo(f"submitted {len(report.inserted)} task(s); {len(report.duplicates)} duplicate(s) skipped")
    for uri in report.duplicates:
        typer.echo(f"  duplicate: {uri}")


# --- reading -----------------------------------------------------------------------------------


@app.command()
@_handles_errors
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Counts per status, oldest pending age, retries scheduled, top failure reasons."""
    with _store() as store:
        stats = store.stats()
    if as_json:
        _echo_json(stats.to_dict())
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
        n = store.requeue(task_ids or (), status=status_filter)
    typer.echo(f"requeued {n} task(s)")


@app.command()
@_handles_errors
def cancel(task_ids: list[int] = typer.Argument(..., help="Task ids to cancel.")) -> None:
    """Cancel pending, in-progress or failed tasks."""
    with _store() as store:
        n = store.cancel(task_ids)
    typer.echo(f"cancelled {n} of {len(task_ids)} task(s)")


if __name__ == "__main__":  # pragma: no cover
    app()
