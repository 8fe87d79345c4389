"""The task store: every SQL statement and every state transition of a task.

Each public operation is one transaction. Transient database errors (lost connection, admin
shutdown, serialization failure, deadlock) re-run the whole transaction up to
``settings.store.op_retries`` times with exponential backoff, then raise :class:`StoreUnavailable`.
Re-running is safe: writes about a task are fenced by ``(status = 'in_progress', attempt)``, so a
repeated ``record`` changes nothing, and a repeated ``claim`` simply claims other rows
(rows claimed by a commit whose answer was lost come back through :meth:`Store.reap`).

Claim order and lease expiry are read from ``task_queue`` and ``task_leases``, which triggers on
``tasks`` keep exact (migration 0005); counts per status, audio seconds, failure reasons and the
ids of dead and cancelled tasks come from tables the same triggers keep (migration 0006), so no
read here grows with the table's history. Statements here only read them, but for one:
:meth:`Store.vacuum_queue` deletes the ``task_failure_counts`` rows whose count has fallen to zero
(reasons no failed or dead task has any more).

Statuses (the database enforces the transitions with a trigger, see migrations 0002 and 0004)::

    pending -> in_progress -> completed
                           -> failed (retry_at) -> in_progress ...
                           -> dead (permanent error, or retries exhausted)
    pending/in_progress/failed -> cancelled;  failed/dead/cancelled -> pending (requeue)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import itertools
import json
import logging
import math
import queue
import random
import re
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy import text
from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPICursor
from sqlalchemy.pool import PoolProxiedConnection

from raytranscribe.config import Settings
from raytranscribe.contracts import Outcome
from raytranscribe.engines.base import DEFAULT_ENGINE, DEFAULT_MODEL, ENGINES, FORMATS, TranscribeOptions
from raytranscribe.errors import (
    ConfigError,
    Failure,
    IllegalTransition,
    InvalidInput,
    LeaseExpired,
    SchemaOutOfDate,
    Stage,
    StoreError,
    StoreMisconfigured,
    StoreUnavailable,
)
from raytranscribe.retry import RetryPolicy, decide
from raytranscribe.store.models import AttemptOutcome, TaskStatus
from raytranscribe.store.url import redact_url, sqlalchemy_url
from raytranscribe.uris import parse_s3_uri

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock key serialising concurrent `db upgrade`s ("rtsc" in ASCII).
MIGRATION_LOCK_KEY = 0x72747363
# SQLSTATE raised by the transition trigger (migrations 0002 and 0004).
ILLEGAL_TRANSITION_SQLSTATE = "RT001"
# Errors worth re-running a transaction for: the transaction surely rolled back, the data is fine.
TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "57P01",  # admin_shutdown (pg_terminate_backend, fast shutdown)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up / shutting down)
        "53300",  # too_many_connections
    }
)
# Errors no retry changes: the operator must fix the URL, the role, its grants or the server's rules.
# Class 28: invalid_authorization_specification (28000: role unknown or not allowed to log in,
# no pg_hba.conf entry; 28P01: invalid_password); 3D000: invalid_catalog_name (no such database);
# 42501: insufficient_privilege (no CONNECT on the database, no grant on a table).
MISCONFIGURED_SQLSTATES = frozenset({"3D000", "42501"})
MISCONFIGURED_SQLSTATE_CLASSES = ("28",)
# psycopg2 gives failures to connect no SQLSTATE: libpq's own words tell them apart from an outage.
MISCONFIGURED_MESSAGES = re.compile(
    r"password authentication failed|authentication failed for user|no password supplied"
    r"|role \".*\" does not exist|is not permitted to log in|database \".*\" does not exist"
    r"|no pg_hba\.conf entry|pg_hba\.conf rejects|permission denied for database"
    r"|invalid sslmode value|server does not support SSL|SSL was required|certificate verify failed"
    r"|invalid dsn|invalid connection option|invalid URI query parameter|invalid port number|invalid integer value",
    re.IGNORECASE,
)
# Statements that name what an older (or no) schema lacks: undefined_table, undefined_column,
# undefined_object (a type), undefined_function.
SCHEMA_MISSING_SQLSTATES = frozenset({"42P01", "42703", "42704", "42883"})
TEXT_PREVIEW_CHARS = 500
# Session settings of the hot-path (autocommit) connections; see Store.__init__.
HOT_PATH_OPTIONS = "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off"
SUBMIT_BATCH = 10_000  # tasks per COPY into the staging table: what the client holds, twice (one read ahead)
# Statuses of a task that is not finished: it runs or may run again, so it may still write its outputs.
UNFINISHED = (TaskStatus.PENDING, TaskStatus.IN_PROGRESS, TaskStatus.FAILED)
REQUEUEABLE = (TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED)
CANCELLABLE = UNFINISHED  # cancelling stops what is not finished; a finished task has nothing to stop

LEASE_EXPIRED = Failure.from_exception(LeaseExpired("lease expired"))

T = TypeVar("T")


# --- input validation --------------------------------------------------------------------------

# The tasks table's integer columns (priority, max_retries) are PostgreSQL int4.
INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
# pg_advisory_xact_lock key serialising submits, so two of them cannot both pass the output check ("rtsb").
SUBMIT_LOCK_KEY = 0x72747362


def check_task_numbers(priority: object, max_retries: object, backoff_factor: object) -> None:
    """Refuse numbers a task row cannot hold, naming the field (NewTask, and the CLI's flags before any work)."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidInput(f"priority must be an integer, got {priority!r}")
    if not INT4_MIN <= priority <= INT4_MAX:
        raise InvalidInput(f"priority must be an integer from {INT4_MIN} to {INT4_MAX}, got {priority}")
    if max_retries is not None and (
        isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0
    ):
        raise InvalidInput(f"max_retries must be an integer >= 0, got {max_retries!r}")
    if max_retries is not None and max_retries > INT4_MAX:
        raise InvalidInput(f"max_retries must be an integer from 0 to {INT4_MAX}, got {max_retries}")
    if backoff_factor is not None and not _finite_at_least_one(backoff_factor):
        raise InvalidInput(f"backoff_factor must be a finite number >= 1, got {backoff_factor!r}")


def _finite_at_least_one(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return 1 <= float(value) < math.inf  # also refuses NaN
    except OverflowError:  # an int beyond any float8
        return False


def _canonical_formats(formats: Sequence[str]) -> tuple[str, ...]:
    # One order (FORMATS') and no repeats, so "txt,json", "json,txt" and "json,json,txt" are one task.
    # Not alphabetical: the default tuple, and so the dedupe key of every task already stored, stays as it was.
    return _canonical_tuple(formats) if isinstance(formats, tuple) else _canonical_tuple.__wrapped__(formats)


@functools.lru_cache(maxsize=256)  # every task of a submission asks, mostly about one tuple
def _canonical_tuple(formats: Sequence[str]) -> tuple[str, ...]:
    known = {f: i for i, f in enumerate(FORMATS)}
    return tuple(sorted(set(formats), key=lambda f: (known.get(f, len(known)), f)))


# A third-party engine: any importable class taking an EngineSpec (see raytranscribe.engines.load_engine).
PLUGIN_ENGINE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class OrchestratorView:
    owner: str
    state: dict[str, Any]
    started_at: datetime
    heartbeat_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            **self.state,
        }


@dataclass(frozen=True)
class NewTask:
    """A task to submit. ``output_uri`` is the output *stem*: files are ``f"{output_uri}.{fmt}"``."""

    input_uri: str
    output_uri: str
    engine: str = DEFAULT_ENGINE
    model: str = DEFAULT_MODEL
    options: TranscribeOptions = field(default_factory=TranscribeOptions)
    priority: int = 0
    max_retries: int | None = None  # None: the store's RetryPolicy default, written into the row
    backoff_factor: float | None = None

    def __post_init__(self) -> None:
        parse_s3_uri(self.input_uri, what="input URI")
        parse_s3_uri(self.output_uri, what="output URI")
        if self.engine not in ENGINES and not PLUGIN_ENGINE.fullmatch(self.engine):
            raise InvalidInput(
                f"unknown engine {self.engine!r}; choose from {list(ENGINES)} or name a plugin as 'package.module:Class'"
            )
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidInput(f"model must be a non-empty name, got {self.model!r}")
        if not isinstance(self.options, TranscribeOptions):
            raise InvalidInput(f"options must be TranscribeOptions, got {type(self.options).__name__}")
        check_task_numbers(self.priority, self.max_retries, self.backoff_factor)
        formats = _canonical_formats(self.options.formats)
        if formats != self.options.formats:
            object.__setattr__(self, "options", replace(self.options, formats=formats))

    @functools.cached_property  # submit reads it several times per task; 100k tasks, 100k hashes
    def dedupe_key(self) -> str:
        """Same input, engine, model and options: the same task (the output stem does not count)."""
        # json.dumps([input, engine, model, options], sort_keys=True, separators=(",", ":"),
        # ensure_ascii=False), with the options' part made once per distinct options.
        string = _KEY_ENCODER.encode
        options = _options_canonical(self.options)
        canonical = f"[{string(self.input_uri)},{string(self.engine)},{string(self.model)},{options}]"
        return hashlib.sha256(canonical.encode()).hexdigest()


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusChange:
    """What a requeue or cancel did: the tasks it changed, and why each other named id was left alone."""

    changed: tuple[int, ...]  # ids whose status changed, ascending
    refused: tuple[tuple[int, TaskStatus], ...] = ()  # named tasks whose status does not allow it
    missing: tuple[int, ...] = ()  # named ids of no task

    @property
    def count(self) -> int:
        return len(self.changed)


@dataclass(frozen=True)
class SubmitReport:
    inserted: tuple[int, ...]  # new task ids, in submission order
    duplicates: tuple[str, ...]  # input URIs whose task already existed (or repeated in the batch)


@dataclass(frozen=True)
class StreamedSubmit:
    """What :meth:`Store.submit_stream` did, in memory that does not grow with the duplicates."""

    read: int  # tasks the source gave
    inserted: array[int]  # array("q"): new task ids, in submission order (8 bytes each)
    duplicates: int  # tasks not inserted: their dedupe key existed, or an earlier task of the source had it
    duplicate_inputs: tuple[str, ...]  # input URIs of the first ``keep_duplicates`` of those, in order


@dataclass(frozen=True)
class ClaimedTask:
    id: int
    attempt: int
    input_uri: str
    output_uri: str
    engine: str
    model: str
    options: TranscribeOptions
    priority: int
    retries: int
    max_retries: int
    backoff_factor: float
    lease_expires_at: datetime
    crashes: int = 0  # worker crashes it was charged for
    releases: int = 0  # times it was handed back uncharged by a dead actor or node, or a drain


@dataclass(frozen=True)
class RecordResult:
    task_id: int
    attempt: int
    applied: bool  # False: fenced out (stale attempt, or task no longer in_progress); nothing changed
    status: TaskStatus | None  # the new status when applied, else None
    retry_at: datetime | None  # when the retry is due (status failed)
    reason: str | None  # failure_reason written, or why the write was fenced out


@dataclass(frozen=True)
class AttemptView:
    attempt: int
    worker: str
    actor: str | None
    node: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None  # None while running
    stage: str | None
    error_class: str | None
    error_message: str | None
    http_status: int | None
    decision: str | None
    timings: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class TaskView:
    id: int
    input_uri: str
    output_uri: str
    engine: str
    model: str
    options: TranscribeOptions
    priority: int
    status: TaskStatus
    attempt: int
    retries: int
    max_retries: int
    backoff_factor: float
    retry_at: datetime | None
    crashes: int
    releases: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    failure_reason: str | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    audio_duration_s: float | None
    language: str | None
    output_uris: tuple[str, ...]
    text_preview: str | None
    attempts: tuple[AttemptView, ...] = ()  # filled by get(); list_tasks() leaves it empty

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class StoreStats:
    counts: dict[TaskStatus, int]  # every status, zero included
    oldest_pending_age_s: float | None
    retries_scheduled: int  # failed tasks waiting for retry_at
    top_failure_reasons: tuple[tuple[str, int], ...]  # among failed and dead tasks, most frequent first
    audio_seconds_completed: float

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": {s.value: n for s, n in self.counts.items()},
            "total": self.total,
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "retries_scheduled": self.retries_scheduled,
            "top_failure_reasons": [{"reason": r, "count": n} for r, n in self.top_failure_reasons],
            "audio_seconds_completed": self.audio_seconds_completed,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, TaskStatus):
        return value.value
    return value


# --- the store ---------------------------------------------------------------------------------

_TASK_COLUMNS = (
    "id, input_uri, output_uri, engine, model, options, priority, status, attempt, retries, max_retries, "
    "backoff_factor, retry_at, crashes, releases, lease_owner, lease_expires_at, failure_reason, last_error, created_at, "
    "updated_at, started_at, completed_at, audio_duration_s, language, output_uris, text_preview"
)

# Claim and the all-completions record run as PREPAREd statements (see _Prepared): no parse or
# plan per call, which is most of a small batch's cost on the server.
_CLAIM_BODY = """
WITH q AS (
    -- task_queue in claim order: one ordered scan of ix_task_queue_claim_order, no sort. Locking
    -- the queue rows (SKIP LOCKED) spreads concurrent claimers over different tasks; every other
    -- writer of a queued task locks its queue row before the task (_LOCK_QUEUED_SQL), so this lock
    -- order (queue row, then task) never deadlocks with the store's own statements.
    SELECT task_id FROM task_queue
    WHERE ready_at <= now() {pairs}
    ORDER BY priority DESC, created_at, task_id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), u AS (
    -- No indexed column changes: a HOT update. The status is re-checked on the current row
    -- version; the side-table trigger then drops the queue rows and adds the leases.
    UPDATE tasks t
    SET status = 'in_progress', attempt = t.attempt + 1, lease_owner = $2,
        lease_expires_at = now() + make_interval(secs => $3),
        started_at = now(), retry_at = NULL, updated_at = now()  -- set here: the stamp trigger stays idle
    WHERE t.id = ANY(ARRAY(SELECT task_id FROM q))
      AND t.status IN ('pending', 'failed') AND (t.status = 'pending' OR t.retry_at <= now())
    RETURNING t.id, t.attempt, t.input_uri, t.output_uri, t.engine, t.model, t.options, t.priority,
              t.retries, t.max_retries, t.backoff_factor, t.lease_expires_at, t.created_at, t.crashes, t.releases
), a AS (
    INSERT INTO task_attempts (task_id, attempt, worker, started_at)
    SELECT id, attempt, $2, now() FROM u
)
-- options as text: one parse per distinct options document (_options), not one per row.
SELECT id, attempt, input_uri, output_uri, engine, model, CAST(options AS text) AS options, priority, retries,
       max_retries, backoff_factor, lease_expires_at, crashes, releases
FROM u ORDER BY priority DESC, created_at, id
"""

_PAIRS_FILTER = "AND (engine, model) IN (SELECT * FROM unnest($4, $5))"

# Every outcome of the batch is a completion: no retry decision needs the row, so the fenced UPDATE
# (status = 'in_progress' AND attempt = v.attempt, re-checked on the locked row) is the whole
# transaction: one statement, no lock-then-write round trip. Rows come sorted by id (lock order).
_COMPLETE_BODY = """
WITH u AS (
    UPDATE tasks t SET
        status = 'completed', lease_owner = NULL, lease_expires_at = NULL, retry_at = NULL, completed_at = now(),
        updated_at = now(),
        audio_duration_s = COALESCE(v.audio_duration_s, t.audio_duration_s),
        language = COALESCE(v.language, t.language),
        output_uris = COALESCE(CAST(v.output_uris AS jsonb), t.output_uris),
        text_preview = COALESCE(v.text_preview, t.text_preview)
    FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9)
         AS v(id, attempt, audio_duration_s, language, output_uris, text_preview, actor, node, timings)
    WHERE t.id = v.id AND t.status = 'in_progress' AND t.attempt = v.attempt
    -- The attempt row's fields ride along, so closing it needs no second pass over the arrays.
    RETURNING t.id, t.attempt, v.actor, v.node, v.timings
), a AS (
    UPDATE task_attempts a SET
        finished_at = now(), outcome = 'completed', stage = NULL, error_class = NULL, error_message = NULL,
        http_status = NULL, actor = COALESCE(u.actor, a.actor), node = COALESCE(u.node, a.node), decision = NULL,
        timings = CAST(u.timings AS jsonb)
    FROM u WHERE a.task_id = u.id AND a.attempt = u.attempt
)
SELECT id FROM u
"""

# --- submit: a source streamed in batches, each copied into a staging table, checked and inserted ---
#
# One transaction per submit. Each batch is checked on its own by the client (repeats, two new tasks
# on one stem), its first occurrences copied into a temporary table (dropped at commit), their stems
# checked against the unfinished tasks (the batches before it included: their rows are this
# transaction's), then inserted. The client holds a batch or two at a time.

# A batch is small against the history it is checked against, and the statistics of a table that
# grew by millions in this transaction are stale: index probes, not a scan of tasks per batch
# (hash or merge joins), and no JIT compiling each batch's statements.
_SUBMIT_PLANNER_SQL = (
    "SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true), "
    "set_config('jit', 'off', true)"
)
_BATCH_TABLE_SQL = """
CREATE TEMPORARY TABLE submit_batch (
    ord bigint NOT NULL, input_uri text NOT NULL, output_uri text NOT NULL, engine text NOT NULL,
    model text NOT NULL, options text NOT NULL, priority int NOT NULL, max_retries int NOT NULL,
    backoff_factor float8 NOT NULL, dedupe_key text NOT NULL
) ON COMMIT DROP
"""
_BATCH_COPY = "COPY submit_batch FROM STDIN"
_NEXT_BATCH_SQL = "TRUNCATE submit_batch"
# A batch's tasks whose dedupe key a row has (written before, or by this submit's earlier batches)
# are duplicates: out of the staging table, they are neither checked nor inserted.
_DROP_DUPLICATES_SQL = "DELETE FROM submit_batch f USING tasks t WHERE t.dedupe_key = f.dedupe_key"
# A new task on the stem of an unfinished task (another task: the same one was dropped above) would
# overwrite its outputs; an index probe (ix_tasks_output_uri) per stem.
_UNFINISHED_STEMS_SQL = """
SELECT f.input_uri AS new_input, f.output_uri, t.id, t.input_uri, t.status::text AS status
FROM submit_batch f JOIN tasks t ON t.output_uri = f.output_uri
WHERE t.status = ANY(CAST(:s AS task_status[]))
ORDER BY f.ord, t.id LIMIT 1
"""
# Ids come from the sequence in the order rows are inserted, which is the batch's order. No ON
# CONFLICT: the batch holds each key once and none a row has (dropped above, this transaction's own
# rows included), and SUBMIT_LOCK_KEY keeps other submits out until commit (speculative insertion
# cost a tenth of the insert); a row written around the store would fail the submit, writing nothing.
_SUBMIT_SQL = """
INSERT INTO tasks (input_uri, output_uri, engine, model, options, priority, max_retries, backoff_factor, dedupe_key)
SELECT input_uri, output_uri, engine, model, CAST(options AS jsonb), priority, max_retries, backoff_factor, dedupe_key
FROM submit_batch ORDER BY ord
RETURNING id, dedupe_key
"""

# COPY's text format: backslash, tab, newline and carriage return escaped, the rest as is.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")


def _copy_text(value: str) -> str:
    return value.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(value) else value


@functools.lru_cache(maxsize=256)
def _copy_shared(engine: str, model: str, options: TranscribeOptions) -> str:
    """The engine, model and options columns of a staging row: the same for most rows of a submit."""
    return f"{_copy_text(engine)}\t{_copy_text(model)}\t{_copy_text(_options_json(options))}"


@functools.lru_cache(maxsize=256)
def _options_json(options: TranscribeOptions) -> str:
    """The options column's JSON, once per distinct options (a manifest's lines mostly share one)."""
    return json.dumps(options.to_dict())


_KEY_ENCODER = json.JSONEncoder(ensure_ascii=False)


@functools.lru_cache(maxsize=256)
def _options_canonical(options: TranscribeOptions) -> str:
    """The options as the dedupe key spells them (sorted keys, no spaces)."""
    return json.dumps(options.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _refusal_of_shared_stem(first_input: str, input_uri: str, stem: str) -> InvalidInput:
    """Two distinct new tasks (dedupe keys differ) with one output stem would overwrite each other."""
    if first_input == input_uri:
        return InvalidInput(
            f"input {input_uri!r} is given twice with different settings (engine, model or options), "
            f"both writing {stem}.*; give each its own output"
        )
    return InvalidInput(f"inputs {first_input!r} and {input_uri!r} would both write {stem}.*; give each its own output")


class _Batch(NamedTuple):
    rows: str  # COPY text of the first occurrence of each dedupe key
    keys: list[str]  # every task's dedupe key, in order
    inputs: list[str]  # input URIs, in order


_READ_AHEAD_DONE = object()


def _read_ahead(items: Iterator[T]) -> Iterator[T]:
    """``items``, each produced while the caller works on the one before, in a thread of their own:
    a submit's database round trips (psycopg2 releases the GIL while it waits) overlap the reading
    and parsing of the next batch. What producing raises is raised here; closing this stops it."""
    handoff: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(entry: tuple[object, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_READ_AHEAD_DONE, None))
        except BaseException as exc:  # handed to the caller's thread, raised there
            put((_READ_AHEAD_DONE, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=produce, name="submit-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            item, error = handoff.get()
            if error is not None:
                raise error
            if item is _READ_AHEAD_DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        reader.join()


_FENCED_SQL = """
SELECT id, status::text AS status, attempt FROM tasks WHERE id = ANY(CAST(:ids AS bigint[]))
"""

_LOCK_FOR_RECORD_SQL = """
SELECT id, status::text AS status, attempt, retries, max_retries, backoff_factor, crashes, releases
FROM tasks WHERE id = ANY(CAST(:ids AS bigint[])) ORDER BY id FOR UPDATE
"""

_LOCK_EXPIRED_SQL = """
SELECT t.id, t.status::text AS status, t.attempt, t.retries, t.max_retries, t.backoff_factor, t.crashes,
       t.releases
FROM task_leases l JOIN tasks t ON t.id = l.task_id
WHERE l.expires_at < now() AND t.status = 'in_progress' AND t.lease_expires_at < now()
ORDER BY l.expires_at, t.id LIMIT :limit FOR UPDATE OF t SKIP LOCKED
"""

# Tasks and their attempt rows in one statement (one round trip); fencing was checked on the locked rows.
_APPLY_SQL = """
WITH v AS (
    SELECT * FROM unnest(
        CAST(:ids AS bigint[]), CAST(:attempts AS int[]), CAST(:statuses AS text[]), CAST(:retries AS int[]),
        CAST(:delays AS float8[]), CAST(:reasons AS text[]), CAST(:errors AS text[]), CAST(:durations AS float8[]),
        CAST(:languages AS text[]), CAST(:outputs AS text[]), CAST(:previews AS text[]), CAST(:outcomes AS text[]),
        CAST(:stages AS text[]), CAST(:classes AS text[]), CAST(:messages AS text[]), CAST(:https AS int[]),
        CAST(:actors AS text[]), CAST(:nodes AS text[]), CAST(:decisions AS text[]), CAST(:timings AS text[]),
        CAST(:crashes AS int[]), CAST(:releases AS int[]))
    AS v(id, attempt, status, retries, delay_s, failure_reason, last_error, audio_duration_s, language, output_uris,
         text_preview, outcome, stage, error_class, error_message, http_status, actor, node, decision, timings,
         crashes, releases)
), u AS (
    UPDATE tasks t SET
        status = CAST(v.status AS task_status),
        updated_at = now(),
        retries = v.retries,
        crashes = v.crashes,
        releases = v.releases,
        retry_at = CASE WHEN v.status = 'failed' THEN now() + make_interval(secs => v.delay_s) END,
        lease_owner = NULL,
        lease_expires_at = NULL,
        failure_reason = COALESCE(v.failure_reason, t.failure_reason),
        last_error = COALESCE(v.last_error, t.last_error),
        completed_at = CASE WHEN v.status IN ('completed', 'dead') THEN now() END,
        audio_duration_s = COALESCE(v.audio_duration_s, t.audio_duration_s),
        language = COALESCE(v.language, t.language),
        output_uris = COALESCE(CAST(v.output_uris AS jsonb), t.output_uris),
        text_preview = COALESCE(v.text_preview, t.text_preview)
    FROM v WHERE t.id = v.id
    RETURNING t.id, t.retry_at
), a AS (
    UPDATE task_attempts a SET
        finished_at = now(), outcome = v.outcome, stage = v.stage, error_class = v.error_class,
        error_message = v.error_message, http_status = v.http_status, actor = COALESCE(v.actor, a.actor),
        node = COALESCE(v.node, a.node), decision = v.decision, timings = CAST(v.timings AS jsonb)
    FROM v WHERE a.task_id = v.id AND a.attempt = v.attempt
)
SELECT id, retry_at FROM u
"""

_RENEW_SQL = """
UPDATE tasks t SET lease_expires_at = now() + make_interval(secs => CAST(:lease_s AS double precision)),
    updated_at = now()
FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[])) AS v(id, attempt)
WHERE t.id = v.id AND t.attempt = v.attempt AND t.status = 'in_progress' AND t.lease_owner = :owner
RETURNING t.id, t.attempt
"""

_RELEASE_SQL = """
WITH u AS (
    UPDATE tasks t SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL
    FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[])) AS v(id, attempt)
    WHERE t.id = v.id AND t.attempt = v.attempt AND t.status = 'in_progress' AND t.lease_owner = :owner
    RETURNING t.id, t.attempt
), a AS (
    UPDATE task_attempts a SET finished_at = now(), outcome = 'released', stage = :stage,
        decision = 'released by a stopping orchestrator; not charged as a retry'
    FROM u WHERE a.task_id = u.id AND a.attempt = u.attempt
)
SELECT count(*) FROM u
"""

# Writers of queued tasks (cancel, requeue) lock the tasks' queue rows first, in id order: claim
# holds a queue row while it updates the task, and the side-table trigger of a writer holding the
# task would then wait for that queue row. Same order everywhere, no deadlock. {where} names the
# tasks (alias t).
_LOCK_QUEUED_SQL = """
SELECT q.task_id FROM task_queue q JOIN tasks t ON t.id = q.task_id WHERE {where}
ORDER BY q.task_id FOR UPDATE OF q
"""

_CANCEL_SQL = """
WITH old AS (
    SELECT id, attempt, status FROM tasks
    WHERE id = ANY(CAST(:ids AS bigint[])) AND status = ANY(CAST(:cancellable AS task_status[]))
    ORDER BY id FOR UPDATE
), u AS (
    UPDATE tasks t SET status = 'cancelled', lease_owner = NULL, lease_expires_at = NULL, retry_at = NULL,
        completed_at = now()
    FROM old WHERE t.id = old.id
    RETURNING t.id
), a AS (
    UPDATE task_attempts a SET finished_at = now(), outcome = 'cancelled', decision = 'cancelled by the user'
    FROM old WHERE a.task_id = old.id AND a.attempt = old.attempt AND old.status = 'in_progress'
        AND a.finished_at IS NULL
)
SELECT id FROM u ORDER BY id
"""

# The named tasks a requeue or cancel left alone, and the status that did not allow it.
_STATUS_OF_SQL = """
SELECT id, status::text AS status FROM tasks WHERE id = ANY(CAST(:ids AS bigint[]))
"""

# Reads that do not grow with the table (migration 0006): the counts are sums over a few hundred
# shard rows kept by the triggers, the oldest pending task is the first entry of a partial index of
# task_queue, and the reasons are counted per reason, not per task.
_COUNTS_SQL = """
SELECT CAST(status AS text) AS status, CAST(sum(tasks) AS bigint) AS n, sum(audio_s) AS audio_s
FROM task_counts GROUP BY status
"""

_OLDEST_PENDING_SQL = """
SELECT EXTRACT(EPOCH FROM now() - min(created_at)) FROM task_queue WHERE status = 'pending'
"""

_TOP_REASONS_SQL = """
SELECT failure_reason, CAST(sum(tasks) AS bigint) AS n FROM task_failure_counts
GROUP BY failure_reason HAVING sum(tasks) > 0 ORDER BY n DESC, failure_reason LIMIT :k
"""

# Where list_tasks finds the ids of a status without scanning tasks: the side row of each task not
# completed. Completed tasks are most of a long-lived table, so an id-ordered walk of it finds them.
_STATUS_IDS_SQL = {
    TaskStatus.PENDING: "SELECT task_id FROM task_queue WHERE status = 'pending' ORDER BY task_id LIMIT :limit",
    TaskStatus.FAILED: "SELECT task_id FROM task_queue WHERE status = 'failed' ORDER BY task_id LIMIT :limit",
    TaskStatus.IN_PROGRESS: "SELECT task_id FROM task_leases ORDER BY task_id LIMIT :limit",
    TaskStatus.DEAD: "SELECT task_id FROM task_stopped WHERE status = 'dead' ORDER BY task_id LIMIT :limit",
    TaskStatus.CANCELLED: "SELECT task_id FROM task_stopped WHERE status = 'cancelled' ORDER BY task_id LIMIT :limit",
}


def _pg_array_element(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "NULL"  # a NaN or infinite measurement is no measurement
    if isinstance(value, str):
        # Inside double quotes a backslash escapes the next character; nothing else is special.
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value) if isinstance(value, float) else str(int(value))


def _pg_array(values: Sequence[Any]) -> str:
    """One PostgreSQL array literal (``{1,2,NULL}``, ``{"a\\"b",NULL}``) for a list of ints, floats,
    strings or None.

    psycopg2 sends a Python list as ``ARRAY[v1, v2, ...]``, which the server parses and coerces
    element by element: for the nine arrays of a completion batch that cost more server time than
    the UPDATE. One quoted literal is one call of the array type's input function instead.
    """
    if all(v is None for v in values):  # common: no actor, no timings, ...
        return "{" + ",".join(["NULL"] * len(values)) + "}"
    if all(type(v) is int for v in values):  # ids, attempts
        return "{" + ",".join(map(str, values)) + "}"
    return "{" + ",".join(map(_pg_array_element, values)) + "}"


@dataclass(frozen=True)
class _Prepared:
    """A statement PREPAREd once per pooled connection, then EXECUTEd: no parse or plan per call.

    psycopg2 has no protocol-level prepared statements, so this is SQL-level PREPARE/EXECUTE. The
    names prepared on a connection live in the pool's ``info`` dict for that connection, which is
    cleared when the connection is replaced (after a disconnect), exactly when the server forgot
    them too. Only for autocommit operations: a failed EXECUTE there aborts nothing else.

    It runs on the pooled DBAPI connection's own cursor (:meth:`Store._run` with ``raw=True``), not
    through SQLAlchemy's statement layer: on the claim/complete hot path that layer cost more client
    time per call than the server spent on a batch of ten (bench/queue_throughput.py).
    """

    name: str
    types: tuple[str, ...]  # SQL types of $1..$n
    body: str
    # Explicit casts: psycopg2 sends values as literals (an all-NULL list is ARRAY[NULL] of text).
    call: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "call", f"EXECUTE {self.name} ({', '.join(f'CAST(%s AS {t})' for t in self.types)})")

    def execute(self, raw: PoolProxiedConnection, *args: Any) -> list[tuple]:
        """EXECUTE on ``raw`` (a pooled DBAPI connection), preparing first where needed; all rows."""
        info = raw.info
        prepared: set[str] = info.setdefault("raytranscribe_prepared", set())
        cursor = info.get("raytranscribe_cursor")
        if cursor is None or cursor.closed:
            cursor = info["raytranscribe_cursor"] = raw.cursor()  # one per connection, reused
        if self.name not in prepared:
            self._prepare(cursor)
            prepared.add(self.name)
        try:
            cursor.execute(self.call, args)
        except Exception as exc:
            if getattr(exc, "pgcode", None) != "26000":  # invalid_sql_statement_name
                raise
            # Someone ran DEALLOCATE/DISCARD on this session: prepare again, once.
            self._prepare(cursor)
            cursor.execute(self.call, args)
        return cursor.fetchall()

    def _prepare(self, cursor: DBAPICursor) -> None:
        try:
            cursor.execute(f"PREPARE {self.name} ({', '.join(self.types)}) AS {self.body}")
        except Exception as exc:
            if getattr(exc, "pgcode", None) != "42P05":  # duplicate_prepared_statement: already there
                raise


_CLAIM = _Prepared("raytranscribe_claim", ("int", "text", "float8"), _CLAIM_BODY.format(pairs=""))
_CLAIM_PAIRS = _Prepared(
    "raytranscribe_claim_pairs", ("int", "text", "float8", "text[]", "text[]"), _CLAIM_BODY.format(pairs=_PAIRS_FILTER)
)
_COMPLETE = _Prepared(
    "raytranscribe_complete",
    ("bigint[]", "int[]", "float8[]", "text[]", "text[]", "text[]", "text[]", "text[]", "text[]"),
    _COMPLETE_BODY,
)


@functools.lru_cache(maxsize=256)
def _options(raw: str) -> TranscribeOptions:
    """Options of claimed tasks; a batch mostly shares one document, and the result is frozen."""
    return TranscribeOptions.from_dict(json.loads(raw))


@dataclass(frozen=True)
class _Row:
    """The locked state of a task that ``_apply`` decides on."""

    id: int
    status: TaskStatus
    attempt: int
    retries: int
    max_retries: int
    backoff_factor: float
    crashes: int
    releases: int

    @classmethod
    def of(cls, r: sa.Row[Any]) -> _Row:
        """From a row of _LOCK_FOR_RECORD_SQL or _LOCK_EXPIRED_SQL (the status comes as text)."""
        return cls(
            r.id, TaskStatus(r.status), r.attempt, r.retries, r.max_retries, r.backoff_factor, r.crashes, r.releases
        )


class _Encoded(NamedTuple):
    """An outcome's result and timings as the record statements take them: one encoding for
    _COMPLETE and _APPLY_SQL alike."""

    audio_duration_s: float | None
    language: str | None
    output_uris: str | None  # a JSON array of URIs
    text_preview: str | None  # cut to TEXT_PREVIEW_CHARS; None for none
    timings: str | None  # a JSON array of [stage, seconds]


def _encode(o: Outcome) -> _Encoded:
    """What ``o`` writes besides its status; a failure writes no result (the result columns stay NULL,
    so the task keeps what an earlier attempt recorded)."""
    timings = json.dumps([[s, float(t)] for s, t in o.timings]) if o.timings else None
    r = o.result if o.failure is None else None
    if r is None:
        return _Encoded(None, None, None, None, timings)
    preview = r.text_preview[:TEXT_PREVIEW_CHARS] if r.text_preview else None
    return _Encoded(float(r.audio_duration_s), r.language, json.dumps(list(r.outputs)), preview, timings)


class Store:
    """PostgreSQL-backed task queue and history. Thread-safe: share one per process."""

    def __init__(self, url: str, *, settings: Settings | None = None, application_name: str = "raytranscribe"):
        """``application_name`` names this store's connections in ``pg_stat_activity``."""
        self.settings = settings if settings is not None else Settings()
        self.policy = RetryPolicy.from_settings(self.settings.retry)
        url = sqlalchemy_url(url)  # postgresql://, postgres:// too: ConfigError for anything else
        self.url = url
        # Transient database errors met, each try's (the orchestrator exports them as
        # raytranscribe_store_transient_errors).
        self.transient_errors = 0
        self._claimed_since_vacuum = 0
        self._lock = threading.Lock()  # guards _claimed_since_vacuum and _held
        self._hot = threading.local()
        self._held: dict[threading.Thread, PoolProxiedConnection] = {}  # each thread's hot-path connection
        st = self.settings.store
        try:
            # No pool_pre_ping: it costs a round trip per operation. A pooled connection killed while
            # idle fails its first statement instead, and _run re-runs the operation on a fresh pool.
            pool = {
                "pool_size": st.pool_size,
                "max_overflow": st.pool_size,
                "connect_args": {"connect_timeout": st.connect_timeout_s, "application_name": application_name},
            }
            self._engine = sa.create_engine(url, **pool)
            # Single-statement operations (claim, completions) run on their own autocommit pool:
            # the statement is its own transaction, with no BEGIN/COMMIT round trips. A pool of its
            # own, because switching a pooled connection's mode per checkout breaks on a dead one.
            # Its statements are planned once per connection (the best plan of claim and complete
            # does not depend on their arguments; a custom plan per call cost a third of a batch of
            # ten's server time), and without sequential scans, so a plan made while the queue
            # was empty stays an index scan when it holds millions.
            hot = {**pool, "connect_args": {**pool["connect_args"], "options": HOT_PATH_OPTIONS}}
            self._autocommit = sa.create_engine(url, isolation_level="AUTOCOMMIT", **hot)
            self._dbapi_error = self._autocommit.dialect.loaded_dbapi.Error
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise ConfigError(f"bad database URL {redact_url(url)!r}: {exc}") from exc

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        from raytranscribe.isolation import resolve_database_url  # RAYTRANSCRIBE_DATABASE_URL_FILE

        settings = resolve_database_url(settings)
        url = settings.database_url
        if url is None:
            from raytranscribe.local import embedded_postgres_url

            url = embedded_postgres_url(Path(settings.data_dir))
        return cls(url, settings=settings)

    def close(self) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for raw in held:  # hot-path connections still held by threads: back to the pool, then closed
            try:
                raw.close()
            except Exception:  # a connection that died on its own is closed already
                log.debug("closing a held connection failed", exc_info=True)
        self._engine.dispose()
        self._autocommit.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self._engine.url.render_as_string(hide_password=True)!r})"

    # --- transactions and transient errors -----------------------------------------------------

    def _run(self, op: str, fn: Callable[[Any], T], *, single: bool = False, raw: bool = False) -> T:
        """Run ``fn`` in one transaction; re-run it on transient errors, then give up clearly.

        ``single``: ``fn`` issues exactly one statement, which is then its own transaction
        (autocommit): no BEGIN and COMMIT round trips around it. ``raw``: the same, but ``fn`` gets
        the pooled DBAPI connection itself (see :class:`_Prepared`).
        """
        retries = self.settings.store.op_retries
        base = self.settings.store.op_retry_base_s
        last: BaseException | None = None
        for n in range(retries + 1):
            try:
                if raw:
                    return self._run_raw(fn)
                if single:
                    with self._autocommit.connect() as conn:
                        return fn(conn)
                with self._engine.begin() as conn:
                    return fn(conn)
            except sa.exc.DBAPIError as exc:
                code = getattr(exc.orig, "pgcode", None)
                if code == ILLEGAL_TRANSITION_SQLSTATE:
                    raise IllegalTransition(f"{op}: {_pg_message(exc)}") from exc
                refused = _refusal(op, exc)
                if refused is not None:  # before the transient check: a refused connection is "invalidated" too
                    raise refused from exc
                if not _is_transient(exc):
                    raise StoreError(f"{op} failed: {_pg_message(exc)}") from exc
                last = exc
                if exc.connection_invalidated or isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
                    # The server may have restarted: drop every pooled connection, not only this one.
                    self._drop_hot_connection()
                    self._engine.dispose()
                    self._autocommit.dispose()
            except sa.exc.TimeoutError as exc:  # no pooled connection came free in time
                last = exc
            self.transient_errors += 1
            if n < retries:
                delay = base * (2**n) * (0.5 + random.random() / 2)
                log.warning(
                    "store %s: transient database error (try %d of %d), retrying in %.2fs: %s",
                    op, n + 1, retries + 1, delay, _pg_message(last),
                    extra={"stage": Stage.STORE.value},
                )  # fmt: skip
                time.sleep(delay)
        raise StoreUnavailable(
            f"store {op}: database unavailable after {retries + 1} tries: {_pg_message(last)}"
        ) from last

    def _run_raw(self, fn: Callable[[PoolProxiedConnection], T]) -> T:
        """``fn`` on this thread's hot-path connection; its errors come out as SQLAlchemy's."""
        try:
            raw = self._hot_connection()
        except self._dbapi_error as exc:  # could not connect at all
            raise sa.exc.DBAPIError.instance(
                None, None, exc, self._dbapi_error, connection_invalidated=True, dialect=self._autocommit.dialect
            ) from exc
        try:
            return fn(raw)
        except self._dbapi_error as exc:
            gone = self._autocommit.dialect.is_disconnect(exc, raw.dbapi_connection, None)
            if gone:
                self._drop_hot_connection(exc)  # the next call opens a new one
            raise sa.exc.DBAPIError.instance(
                None, None, exc, self._dbapi_error, connection_invalidated=gone, dialect=self._autocommit.dialect
            ) from exc

    def _hot_connection(self) -> PoolProxiedConnection:
        """The autocommit pool connection this thread keeps for the hot path, checked out once.

        Checking a connection out of the pool and back in for every claim and every completion
        cost more client time than building the batch; a thread holds one instead (the
        orchestrator's loop is one thread), and gives it back when it is found dead, when its
        thread has ended (swept at the next checkout), or at close().
        """
        raw = getattr(self._hot, "raw", None)
        if raw is None:
            with self._lock:
                ended = [t for t in self._held if not t.is_alive()]
                gone = [self._held.pop(t) for t in ended]
            for old in gone:  # connections of threads that have ended go back to the pool
                old.close()
            raw = self._autocommit.raw_connection()
            self._hot.raw = raw
            with self._lock:
                self._held[threading.current_thread()] = raw
        return raw

    def _drop_hot_connection(self, exc: BaseException | None = None) -> None:
        raw = getattr(self._hot, "raw", None)
        if raw is None:
            return
        self._hot.raw = None
        with self._lock:
            self._held.pop(threading.current_thread(), None)
        try:
            raw.invalidate(exc)
        finally:
            raw.close()

    # --- schema --------------------------------------------------------------------------------

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` (default head). Idempotent and safe to run concurrently."""
        from alembic import command
        from alembic.config import Config

        def tx(conn: sa.Connection) -> None:
            # Held to the end of this transaction: a second upgrader waits, then finds nothing to do.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

        self._run("upgrade", tx)
        log.info("database schema at %s", self.current_revision())

    def current_revision(self) -> str | None:
        def tx(conn: sa.Connection) -> str | None:
            if not conn.execute(text("SELECT to_regclass('alembic_version') IS NOT NULL")).scalar():
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

        return self._run("current_revision", tx)

    def check_ready(self) -> None:
        """Fail fast before a run starts anything: the database answers (else, after the usual
        retries, :class:`StoreUnavailable`), lets us in (else :class:`StoreMisconfigured`, at once)
        and holds this version's schema (else :class:`SchemaOutOfDate`)."""
        from alembic.script import ScriptDirectory

        current = self.current_revision()
        scripts = ScriptDirectory(str(MIGRATIONS_DIR))
        head = scripts.get_current_head()
        if current == head:
            return
        if current is None:
            raise SchemaOutOfDate("the database has no raytranscribe schema: run `raytranscribe db upgrade`")
        if current in {script.revision for script in scripts.walk_revisions()}:
            raise SchemaOutOfDate(
                f"the database schema is at revision {current}, this raytranscribe needs {head}: "
                "run `raytranscribe db upgrade`"
            )
        # A newer raytranscribe migrated it; its changes are meant to keep older versions working.
        log.warning("database schema revision %s is newer than this raytranscribe knows (%s)", current, head)

    # --- submit --------------------------------------------------------------------------------

    def submit(self, tasks: Sequence[NewTask]) -> SubmitReport:
        """Insert all tasks in one transaction; a task whose dedupe_key exists is reported, not inserted.

        All or nothing: :class:`InvalidInput`, and nothing inserted, when two new tasks would write
        the same output stem, or a new one the stem of an unfinished task (pending, in progress or
        failed), whose outputs may still be written. A finished task's stem may be written again.
        """
        tasks = list(tasks)
        done = self.submit_stream(lambda: tasks)
        return SubmitReport(tuple(done.inserted), done.duplicate_inputs)

    def submit_stream(
        self,
        source: Callable[[], Iterable[NewTask]],
        *,
        keep_duplicates: int | None = None,
        progress: Callable[[int], None] | None = None,
        batch: int = SUBMIT_BATCH,
    ) -> StreamedSubmit:
        """:meth:`submit` for sources of any length, in bounded memory, in one transaction.

        ``source()`` is read ``batch`` tasks at a time, one batch ahead in a thread of its own while
        the database works on the one before; each is checked, copied into a staging table, checked
        against the tasks there are (those of the batches before it included) and inserted.
        Whatever ``source()`` raises while it is read (a bad manifest line), and every refusal of
        :meth:`submit`, rolls the whole of it back, earlier batches included: nothing is written.
        A transient database error re-runs the transaction, calling ``source()`` again.

        A task whose dedupe key an earlier task of the source had is a duplicate, as in :meth:`submit`.
        ``keep_duplicates``: how many duplicates' input URIs to return (None: all of them);
        ``progress(read)`` is called after each batch is inserted.
        """
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        policy = self.policy
        unfinished = [s.value for s in UNFINISHED]

        def batches() -> Iterator[_Batch]:
            """Each batch: the COPY text of its first occurrences, and every task's dedupe key and input
            (the report needs no more). Two new tasks of the batch on one stem are refused here."""
            read = 0
            tasks = iter(source())
            while chunk := list(itertools.islice(tasks, batch)):
                rows = []
                first: set[str] = set()
                by_stem: dict[str, NewTask] = {}
                for t in chunk:
                    read += 1
                    key = t.dedupe_key
                    if key in first:  # a repeat inside the batch: a duplicate, nothing to stage
                        continue
                    first.add(key)
                    claimant = by_stem.setdefault(t.output_uri, t)
                    if claimant is not t:
                        raise _refusal_of_shared_stem(claimant.input_uri, t.input_uri, t.output_uri)
                    mr = policy.max_retries if t.max_retries is None else t.max_retries
                    bf = float(policy.backoff_factor if t.backoff_factor is None else t.backoff_factor)
                    rows.append(
                        f"{read}\t{_copy_text(t.input_uri)}\t{_copy_text(t.output_uri)}\t"
                        f"{_copy_shared(t.engine, t.model, t.options)}\t{t.priority}\t{mr}\t{bf!r}\t{key}\n"
                    )
                yield _Batch("".join(rows), [t.dedupe_key for t in chunk], [t.input_uri for t in chunk])

        def tx(conn: sa.Connection) -> StreamedSubmit:
            # Held to commit: a concurrent submit of the same stems waits, then sees these rows.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SUBMIT_LOCK_KEY})
            conn.execute(text(_SUBMIT_PLANNER_SQL))
            conn.execute(text(_BATCH_TABLE_SQL))
            raw = conn.connection.dbapi_connection
            assert raw is not None  # a checked-out connection has one
            read = duplicates = 0
            inserted = array("q")
            kept: list[str] = []
            reader, copy = _read_ahead(batches()), raw.cursor()
            with contextlib.closing(reader) as ahead, contextlib.closing(copy):
                for b in ahead:
                    if read:
                        conn.execute(text(_NEXT_BATCH_SQL))
                    data = io.StringIO(b.rows)
                    self._raw_call(raw, lambda: copy.copy_expert(_BATCH_COPY, data))
                    conn.execute(text(_DROP_DUPLICATES_SQL))
                    row = conn.execute(text(_UNFINISHED_STEMS_SQL), {"s": unfinished}).first()
                    if row is not None:
                        if row.id in inserted:  # an earlier batch's task: two new tasks on one stem
                            raise _refusal_of_shared_stem(row.input_uri, row.new_input, row.output_uri)
                        who = "the same input" if row.input_uri == row.new_input else repr(row.input_uri)
                        raise InvalidInput(
                            f"input {row.new_input!r} would write {row.output_uri}.*, which task {row.id} ({who}, "
                            f"{row.status}) may still write; wait for it, cancel it, or give this input another output"
                        )
                    ids = {r.dedupe_key: r.id for r in conn.execute(text(_SUBMIT_SQL))}
                    for key, input_uri in zip(b.keys, b.inputs):
                        task_id = ids.pop(key, None)  # pop: a repeat inside the batch is a duplicate too
                        if task_id is not None:
                            inserted.append(task_id)
                            continue
                        duplicates += 1
                        if keep_duplicates is None or len(kept) < keep_duplicates:
                            kept.append(input_uri)
                    read += len(b.keys)
                    if progress is not None:
                        progress(read)
            return StreamedSubmit(read, inserted, duplicates, tuple(kept))

        done = self._run("submit", tx)
        log.info("submitted %d task(s), %d duplicate(s)", len(done.inserted), done.duplicates)
        return done

    def _raw_call(self, raw: DBAPIConnection, fn: Callable[[], T]) -> T:
        """``fn()``, a call on this transaction's DBAPI connection; its errors come out as SQLAlchemy's,
        so :meth:`_run` sorts them as it does any statement's."""
        try:
            return fn()
        except self._dbapi_error as exc:
            gone = self._engine.dialect.is_disconnect(exc, raw, None)
            raise sa.exc.DBAPIError.instance(
                None, None, exc, self._dbapi_error, connection_invalidated=gone, dialect=self._engine.dialect
            ) from exc

    def submitted_inputs(self, input_uris: Sequence[str]) -> set[str]:
        """Which of these inputs already have a task, whatever its engine, model or status."""
        uris = list(dict.fromkeys(input_uris))
        if not uris:
            return set()
        sql = text("SELECT DISTINCT input_uri FROM tasks WHERE input_uri = ANY(CAST(:u AS text[]))")
        return self._run("submitted_inputs", lambda conn: {r[0] for r in conn.execute(sql, {"u": uris})})

    # --- claim, renew, release -----------------------------------------------------------------

    def claim(
        self, n: int, owner: str, *, lease_s: float, pairs: Sequence[tuple[str, str]] | None = None
    ) -> list[ClaimedTask]:
        """Claim up to ``n`` runnable tasks (highest priority, then oldest) in one statement.

        Runnable: pending, or failed with ``retry_at <= now()``. ``pairs`` restricts to these
        (engine, model) pools. Each claim bumps ``attempt`` (the fencing token) and opens an attempt row.
        """
        if n <= 0 or (pairs is not None and not pairs):
            return []
        if lease_s <= 0:
            raise InvalidInput(f"lease_s must be > 0, got {lease_s}")
        if pairs is None:
            stmt, args = _CLAIM, (n, owner, float(lease_s))
        else:
            stmt, args = _CLAIM_PAIRS, (n, owner, float(lease_s), [e for e, _ in pairs], [m for _, m in pairs])

        def tx(raw: PoolProxiedConnection) -> list[ClaimedTask]:
            return [
                ClaimedTask(
                    id=r[0],
                    attempt=r[1],
                    input_uri=r[2],
                    output_uri=r[3],
                    engine=r[4],
                    model=r[5],
                    options=_options(r[6]),
                    priority=r[7],
                    retries=r[8],
                    max_retries=r[9],
                    backoff_factor=r[10],
                    lease_expires_at=r[11],
                    crashes=r[12],
                    releases=r[13],
                )
                for r in stmt.execute(raw, *args)
            ]

        claimed = self._run("claim", tx, raw=True)
        if claimed and self.settings.store.queue_vacuum_every:
            with self._lock:
                self._claimed_since_vacuum += len(claimed)
                due = self._claimed_since_vacuum >= self.settings.store.queue_vacuum_every
                if due:
                    self._claimed_since_vacuum = 0
            if due:
                self.vacuum_queue()
        if log.isEnabledFor(logging.DEBUG):
            for c in claimed:
                log.debug(
                    "claimed by %s", owner, extra={"task_id": c.id, "attempt": c.attempt, "stage": Stage.FETCH.value}
                )
        return claimed

    def vacuum_queue(self) -> bool:
        """Vacuum task_queue, task_leases and the counts now; False when it could not (busy, or not their owner).

        Every claim deletes queue rows, and each claim's ordered index scan steps over the dead
        entries left by earlier ones until a vacuum removes them: at thousands of tasks a second
        that is thousands of entries per claim within autovacuum's one-minute rounds. ``claim``
        calls this every ``store.queue_vacuum_every`` claimed tasks. SKIP_LOCKED: never wait for
        an autovacuum already at it; INDEX_CLEANUP ON: the dead index entries are the point, even
        when they are few next to a long queue.
        """

        def vacuum(raw: PoolProxiedConnection) -> bool:
            notices = raw.dbapi_connection.notices
            seen = len(notices)
            with raw.cursor() as cursor:
                # Reasons no failed or dead task has any more would pile up with the history (0006).
                cursor.execute("DELETE FROM task_failure_counts WHERE tasks = 0")
                cursor.execute(
                    "VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) task_queue, task_leases, task_counts, task_failure_counts"
                )
            # A table it could not lock, or may not vacuum, is skipped with a WARNING, not an error.
            return not any("skipping" in n for n in notices[seen:])

        try:
            done = self._run("vacuum_queue", vacuum, raw=True)
        except StoreError as exc:  # maintenance only: the queue works without it
            log.warning("queue vacuum failed: %s", exc, extra={"stage": Stage.STORE.value})
            return False
        if not done:
            log.debug("queue vacuum skipped a table (busy, or not its owner)", extra={"stage": Stage.STORE.value})
        return done

    def renew(self, leases: Sequence[tuple[int, int]], owner: str, *, lease_s: float) -> set[tuple[int, int]]:
        """Extend many leases in one statement; returns the ``(id, attempt)`` leases that were lost."""
        wanted = {(int(i), int(a)) for i, a in leases}
        if not wanted:
            return set()
        params = {
            "ids": [i for i, _ in wanted],
            "attempts": [a for _, a in wanted],
            "owner": owner,
            "lease_s": float(lease_s),
        }
        renewed = self._run(
            "renew", lambda conn: {(r.id, r.attempt) for r in conn.execute(text(_RENEW_SQL), params)}
        )
        lost = wanted - renewed
        for task_id, attempt in sorted(lost):
            log.warning(
                "lease lost (task fenced, cancelled or reaped)",
                extra={"task_id": task_id, "attempt": attempt, "stage": Stage.LEASE.value},
            )
        return lost

    def release(self, leases: Sequence[tuple[int, int]], owner: str) -> int:
        """Hand in-flight tasks back (in_progress -> pending) without charging a retry."""
        pairs = list({(int(i), int(a)) for i, a in leases})
        if not pairs:
            return 0
        params = {
            "ids": [i for i, _ in pairs],
            "attempts": [a for _, a in pairs],
            "owner": owner,
            "stage": Stage.SHUTDOWN.value,
        }
        count = self._run("release", lambda conn: conn.execute(text(_RELEASE_SQL), params).scalar_one())
        log.info("released %d of %d task(s) held by %s", count, len(pairs), owner)
        return count

    # --- outcomes ------------------------------------------------------------------------------

    def record(self, outcomes: Sequence[Outcome]) -> list[RecordResult]:
        """Record many outcomes in one transaction with a constant number of round trips.

        Fenced: an outcome changes its task only while the task is in_progress at the same attempt.
        Results come back in the order of ``outcomes``.
        """
        outcomes = list(outcomes)
        if not outcomes:
            return []
        ids = sorted({o.task_id for o in outcomes})
        if len(ids) == len(outcomes) and all(o.failure is None and o.release is None for o in outcomes):
            return self._record_completions(outcomes)

        def tx(conn: sa.Connection) -> list[RecordResult]:
            # Lock in id order so two recorders never deadlock on each other.
            rows = {r.id: _Row.of(r) for r in conn.execute(text(_LOCK_FOR_RECORD_SQL), {"ids": ids})}
            return self._apply(conn, outcomes, rows)

        return self._run("record", tx)

    def _record_completions(self, outcomes: list[Outcome]) -> list[RecordResult]:
        """Completions of distinct tasks: one fenced statement (no retry decision needs the rows)."""
        ordered = sorted(outcomes, key=lambda o: o.task_id)  # lock order, as in record()
        columns: tuple[list[Any], ...] = tuple([] for _ in range(9))
        ids, attempts, durations, languages, outputs, previews, actors, nodes, timings = columns
        for o in ordered:  # one pass: this runs for every batch on the hot path
            e = _encode(o)
            ids.append(o.task_id)
            attempts.append(o.attempt)
            durations.append(e.audio_duration_s)
            languages.append(e.language)
            outputs.append(e.output_uris)
            previews.append(e.text_preview)
            actors.append(o.actor)
            nodes.append(o.node_id)
            timings.append(e.timings)
        args = tuple(map(_pg_array, columns))

        applied = self._run("record", lambda raw: {r[0] for r in _COMPLETE.execute(raw, *args)}, raw=True)
        fenced: dict[int, tuple[TaskStatus, int]] = {}
        missed = [o.task_id for o in outcomes if o.task_id not in applied]
        if missed:
            # Rare (stale worker, reaped or cancelled task): read why, for the result and the log.
            fenced = self._run(
                "record",
                lambda conn: {
                    r.id: (TaskStatus(r.status), r.attempt) for r in conn.execute(text(_FENCED_SQL), {"ids": missed})
                },
                single=True,
            )
        results = []
        debug = log.isEnabledFor(logging.DEBUG)
        for o in outcomes:
            if o.task_id in applied:
                results.append(RecordResult(o.task_id, o.attempt, True, TaskStatus.COMPLETED, None, None))
                if debug:
                    log.debug(
                        "task completed", extra={"task_id": o.task_id, "attempt": o.attempt, "stage": Stage.STORE.value}
                    )
                continue
            row = fenced.get(o.task_id)
            why = "no such task" if row is None else f"fenced: task is {row[0]} at attempt {row[1]}"
            if row is not None:
                log.info(
                    "outcome ignored (%s)",
                    why,
                    extra={"task_id": o.task_id, "attempt": o.attempt, "stage": Stage.STORE.value},
                )
            results.append(RecordResult(o.task_id, o.attempt, False, None, None, why))
        return results

    def reap(self, *, limit: int = 1000) -> list[RecordResult]:
        """Expired leases go down the failure path (stage ``lease``): a retry is charged, so a file
        that kills every worker ends dead instead of looping."""

        def tx(conn: sa.Connection) -> list[RecordResult]:
            rows = {r.id: _Row.of(r) for r in conn.execute(text(_LOCK_EXPIRED_SQL), {"limit": limit})}
            outcomes = [Outcome(r.id, r.attempt, failure=LEASE_EXPIRED) for r in rows.values()]
            return self._apply(conn, outcomes, rows)

        return self._run("reap", tx)

    def _apply(self, conn: sa.Connection, outcomes: list[Outcome], rows: dict[int, _Row]) -> list[RecordResult]:
        """Decide each outcome against its locked row, then write tasks and attempts in one statement."""
        results: list[RecordResult | None] = []
        tasks: dict[str, list] = {k: [] for k in (
            "ids", "statuses", "retries", "delays", "reasons", "errors", "durations", "languages", "outputs",
            "previews", "crashes", "releases")}  # fmt: skip
        attempts: dict[str, list] = {k: [] for k in (
            "attempts", "outcomes", "stages", "classes", "messages", "https", "actors", "nodes", "decisions",
            "timings")}  # fmt: skip
        applied: list[tuple[int, Outcome, TaskStatus, str | None]] = []  # (result index, outcome, status, reason)
        taken: set[int] = set()
        for o in outcomes:
            row = rows.get(o.task_id)
            if row is None:
                results.append(RecordResult(o.task_id, o.attempt, False, None, None, "no such task"))
                continue
            if row.status is not TaskStatus.IN_PROGRESS or row.attempt != o.attempt or o.task_id in taken:
                why = (
                    f"fenced: task is {row.status} at attempt {row.attempt}"
                    if o.task_id not in taken
                    else "fenced: another outcome for this task in the same batch was recorded first"
                )
                log.info(
                    "outcome ignored (%s)",
                    why,
                    extra={"task_id": o.task_id, "attempt": o.attempt, "stage": Stage.STORE.value},
                )
                results.append(RecordResult(o.task_id, o.attempt, False, None, None, why))
                continue
            taken.add(o.task_id)
            f = o.failure
            crashes, releases = row.crashes, row.releases
            if o.release is not None:
                # Handed back through no fault of its own: pending again at once, retries unchanged.
                status, new_retries, delay, reason, error = TaskStatus.PENDING, row.retries, None, None, None
                outcome_word, decision_text = AttemptOutcome.RELEASED, f"released: {o.release.cause}"
                releases += 1
            elif f is None:
                status, new_retries, delay, reason, error = TaskStatus.COMPLETED, row.retries, None, None, None
                outcome_word, decision_text = AttemptOutcome.COMPLETED, None
            else:
                policy = self.policy.for_task(row.max_retries, row.backoff_factor)
                if f.stage is Stage.WORKER_DEATH:  # the pool charges only a crash's suspects
                    crashes += 1
                decision = decide(f, row.retries, policy, crashes=crashes if f.stage is Stage.WORKER_DEATH else 0)
                error = f"{f.error_class}: {f.message}" + (f" (HTTP {f.http_status})" if f.http_status else "")
                if decision.dead:
                    status, new_retries, delay = TaskStatus.DEAD, row.retries, None
                    reason = f"{f.reason} ({decision.reason})"  # the policy's words: permanent, or retries exhausted
                    outcome_word = AttemptOutcome.DEAD
                else:
                    status, new_retries, delay = TaskStatus.FAILED, row.retries + 1, decision.delay_s
                    reason = f.reason
                    outcome_word = AttemptOutcome.FAILED
                decision_text = decision.reason
            e = _encode(o)
            tasks["durations"].append(e.audio_duration_s)
            tasks["languages"].append(e.language)
            tasks["outputs"].append(e.output_uris)
            tasks["previews"].append(e.text_preview)
            tasks["ids"].append(o.task_id)
            tasks["statuses"].append(status.value)
            tasks["retries"].append(new_retries)
            tasks["delays"].append(delay)
            tasks["reasons"].append(reason)
            tasks["errors"].append(error)
            tasks["crashes"].append(crashes)
            tasks["releases"].append(releases)
            attempts["attempts"].append(o.attempt)
            attempts["outcomes"].append(outcome_word.value)
            attempts["stages"].append(f.stage.value if f else o.release.stage.value if o.release else None)
            attempts["classes"].append(f.error_class if f else None)
            attempts["messages"].append(f.message if f else o.release.cause if o.release else None)
            attempts["https"].append(f.http_status if f else None)
            attempts["actors"].append(o.actor)
            attempts["nodes"].append(o.node_id)
            attempts["decisions"].append(decision_text)
            attempts["timings"].append(e.timings)
            applied.append((len(results), o, status, reason))
            results.append(None)  # filled below, once retry_at is known
        if applied:
            retry_at = {r.id: r.retry_at for r in conn.execute(text(_APPLY_SQL), {**tasks, **attempts})}
            for index, o, status, reason in applied:
                results[index] = RecordResult(o.task_id, o.attempt, True, status, retry_at.get(o.task_id), reason)
                extra = {
                    "task_id": o.task_id,
                    "attempt": o.attempt,
                    "stage": (o.failure or o.release).stage.value if (o.failure or o.release) else Stage.STORE.value,
                }
                if status is TaskStatus.DEAD:
                    log.warning("task dead: %s", reason, extra=extra)
                elif status is TaskStatus.PENDING:
                    log.info("task released, not charged: %s", o.release.cause if o.release else "", extra=extra)
                elif status is TaskStatus.FAILED:
                    log.info("task failed, retry at %s: %s", retry_at.get(o.task_id), reason, extra=extra)
                else:
                    log.debug("task completed", extra=extra)
        return [r for r in results if r is not None]

    # --- operator actions ----------------------------------------------------------------------

    def requeue(self, ids: Sequence[int] = (), *, status: TaskStatus | None = None) -> StatusChange:
        """failed/dead/cancelled -> pending, retries reset to 0; the attempt history stays.

        With ids, the report says which were in another status (or are no task)."""
        ids, out_of_range = _task_ids(ids)
        if status is not None:
            status = TaskStatus(status)
            if status not in REQUEUEABLE:
                raise InvalidInput(
                    f"cannot requeue {status.value} tasks: only {[s.value for s in REQUEUEABLE]} can be requeued"
                )
        if not ids and not out_of_range and status is None:
            raise InvalidInput("requeue needs task ids or a status")
        if out_of_range and not ids:
            return StatusChange((), (), out_of_range)
        where = ["t.status = ANY(CAST(:requeueable AS task_status[]))"]
        params: dict[str, Any] = {"requeueable": [s.value for s in REQUEUEABLE]}
        if ids:
            where.append("t.id = ANY(CAST(:ids AS bigint[]))")
            params["ids"] = ids
        if status is not None:
            where.append("t.status = CAST(:status AS task_status)")
            params["status"] = status.value
        cond = " AND ".join(where)
        sql = text(
            "UPDATE tasks t SET status = 'pending', retries = 0, retry_at = NULL, completed_at = NULL, "
            "lease_owner = NULL, lease_expires_at = NULL WHERE " + cond + " RETURNING t.id"
        )

        def write(conn: sa.Connection) -> StatusChange:
            changed = sorted(conn.execute(sql, params).scalars())
            return _left_alone(conn, ids, changed, out_of_range)

        report = self._write_queued("requeue", cond, params, write)
        log.info("requeued %d task(s)", report.count)
        return report

    def cancel(self, ids: Sequence[int]) -> StatusChange:
        """Cancel pending, in-progress or failed tasks; a worker still running one is fenced out.

        The report says which named tasks were in another status (or are no task)."""
        ids, out_of_range = _task_ids(ids)
        if not ids:
            return StatusChange((), (), out_of_range)
        params = {"ids": ids, "cancellable": [s.value for s in CANCELLABLE]}

        def write(conn: sa.Connection) -> StatusChange:
            changed = list(conn.execute(text(_CANCEL_SQL), params).scalars())
            return _left_alone(conn, ids, changed, out_of_range)

        report = self._write_queued("cancel", "t.id = ANY(CAST(:ids AS bigint[]))", params, write)
        log.info("cancelled %d of %d task(s)", report.count, len(ids) + len(out_of_range))
        return report

    def _write_queued(self, op: str, where: str, params: dict[str, Any], write: Callable[[sa.Connection], T]) -> T:
        """One transaction: lock the queue rows of the tasks ``where`` names (alias t), then ``write``.

        The lock order claims take (queue row, then task; see _LOCK_QUEUED_SQL), for every writer
        that may change a queued task.
        """
        lock = text(_LOCK_QUEUED_SQL.format(where=where))

        def tx(conn: sa.Connection) -> T:
            conn.execute(lock, params)
            return write(conn)

        return self._run(op, tx)

    # --- reading -------------------------------------------------------------------------------

    def get(self, task_id: int) -> TaskView | None:
        def tx(conn: sa.Connection) -> TaskView | None:
            row = conn.execute(text(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = :id"), {"id": task_id}).first()
            if row is None:
                return None
            attempts = conn.execute(
                text(
                    "SELECT attempt, worker, actor, node, started_at, finished_at, outcome, stage, error_class, "
                    "error_message, http_status, decision, timings FROM task_attempts WHERE task_id = :id "
                    "ORDER BY attempt"
                ),
                {"id": task_id},
            )
            views = tuple(
                AttemptView(
                    *a[:12], timings=tuple((str(s), float(t)) for s, t in (a.timings or []))
                )
                for a in attempts
            )
            return _task_view(row, views)

        return self._run("get", tx)

    def list_tasks(self, *, status: TaskStatus | None = None, limit: int = 100) -> list[TaskView]:
        """The first ``limit`` tasks by id, of one status or of all."""
        params: dict[str, Any] = {"limit": limit}
        if status is None:
            where = ""
        else:
            status = TaskStatus(status)
            params["status"] = status.value
            where = "WHERE status = CAST(:status AS task_status)"
            ids = _STATUS_IDS_SQL.get(status)
            if ids is not None:  # the side rows name the tasks; tasks is read by primary key only
                where += f" AND id = ANY(ARRAY({ids}))"
        sql = text(f"SELECT {_TASK_COLUMNS} FROM tasks {where} ORDER BY id LIMIT :limit")
        return self._run("list_tasks", lambda conn: [_task_view(r) for r in conn.execute(sql, params)])

    def stats(self, *, top: int = 5) -> StoreStats:
        """Counts per status, the oldest pending task's age, audio completed, the ``top`` failure reasons.

        A handful of rows whatever the table's size (the counts of migration 0006); ``top=0``, the
        orchestrator's heartbeat, skips the reasons.
        """

        def tx(conn: sa.Connection) -> StoreStats:
            rows = {TaskStatus(r.status): r for r in conn.execute(text(_COUNTS_SQL))}
            age = conn.execute(text(_OLDEST_PENDING_SQL)).scalar()
            reasons = conn.execute(text(_TOP_REASONS_SQL), {"k": top}).all() if top > 0 else []
            counts = {s: int(rows[s].n) if s in rows else 0 for s in TaskStatus}
            completed = rows.get(TaskStatus.COMPLETED)
            return StoreStats(
                counts=counts,
                oldest_pending_age_s=float(age) if age is not None else None,
                retries_scheduled=counts[TaskStatus.FAILED],  # a failed task always has its retry_at
                top_failure_reasons=tuple((r.failure_reason, int(r.n)) for r in reasons),
                audio_seconds_completed=float(completed.audio_s) if completed is not None else 0.0,
            )

        return self._run("stats", tx)

    def claimable_pairs(self) -> list[tuple[str, str]]:
        """Distinct (engine, model) with work now or in flight: the worker pools worth keeping."""
        # Pending or in progress: the counts. Failed and due: the failed rows of task_queue whose
        # ready_at has come (a partial index; waiting retries are not work now). Neither scans tasks.
        sql = text(
            "SELECT engine, model FROM task_counts WHERE status IN ('pending', 'in_progress') "
            "GROUP BY engine, model HAVING sum(tasks) > 0 "
            "UNION SELECT engine, model FROM task_queue WHERE status = 'failed' AND ready_at <= now() "
            "ORDER BY engine, model"
        )
        return self._run("claimable_pairs", lambda conn: [(r.engine, r.model) for r in conn.execute(sql)])

    # --- orchestrator heartbeats ------------------------------------------------------------------

    def publish_orchestrator(self, owner: str, state: dict[str, Any], *, ttl_s: float) -> None:
        """Upsert what a running orchestrator wants ``status`` to show (actors, breakers, in flight)."""
        sql = text(
            "INSERT INTO orchestrators (owner, state, expires_at) "
            "VALUES (:owner, CAST(:state AS jsonb), now() + make_interval(secs => :ttl)) "
            "ON CONFLICT (owner) DO UPDATE SET state = EXCLUDED.state, heartbeat_at = now(), "
            "expires_at = EXCLUDED.expires_at"
        )
        params = {"owner": owner, "state": json.dumps(state, default=str), "ttl": ttl_s}
        self._run("publish_orchestrator", lambda conn: conn.execute(sql, params))

    def retire_orchestrator(self, owner: str) -> None:
        sql = text("DELETE FROM orchestrators WHERE owner = :owner OR expires_at < now() - interval '1 hour'")
        self._run("retire_orchestrator", lambda conn: conn.execute(sql, {"owner": owner}))

    def orchestrators(self) -> list[OrchestratorView]:
        """Orchestrators whose last heartbeat has not expired."""
        sql = text(
            "SELECT owner, state, started_at, heartbeat_at FROM orchestrators WHERE expires_at >= now() ORDER BY started_at"
        )
        return self._run(
            "orchestrators",
            lambda conn: [OrchestratorView(r.owner, r.state, r.started_at, r.heartbeat_at) for r in conn.execute(sql)],
        )

    def outstanding(self, pairs: Sequence[tuple[str, str]] | None = None) -> int:
        """Tasks not yet settled (pending, in progress, or waiting for a retry); 0 means drained.
        ``pairs`` counts only those (engine, model) pools, as ``claim`` does."""
        # The counts per (engine, model, status) of migration 0006: a few rows, however long the queue.
        params: dict[str, Any] = {"s": [s.value for s in UNFINISHED]}
        sql = (
            "SELECT CAST(COALESCE(sum(tasks), 0) AS bigint) FROM task_counts "
            "WHERE status = ANY(CAST(:s AS task_status[]))"
        )
        if pairs is not None:
            sql += " AND (engine, model) IN (SELECT * FROM unnest(CAST(:e AS text[]), CAST(:m AS text[])))"
            params |= {"e": [e for e, _ in pairs], "m": [m for _, m in pairs]}
        return self._run("outstanding", lambda conn: int(conn.execute(text(sql), params).scalar_one()))

    def count_by_status(self, ids: Sequence[int]) -> dict[TaskStatus, int]:
        """How many of these tasks are in each status (every status present, zero included)."""
        sql = text("SELECT status, count(*) AS n FROM tasks WHERE id = ANY(CAST(:ids AS bigint[])) GROUP BY status")
        rows = self._run("count_by_status", lambda conn: conn.execute(sql, {"ids": list(ids)}).all())
        counts = {s: 0 for s in TaskStatus}
        counts.update({TaskStatus(r.status): int(r.n) for r in rows})
        return counts


def _task_view(r: sa.Row[Any], attempts: tuple[AttemptView, ...] = ()) -> TaskView:
    return TaskView(
        id=r.id,
        input_uri=r.input_uri,
        output_uri=r.output_uri,
        engine=r.engine,
        model=r.model,
        options=TranscribeOptions.from_dict(r.options),
        priority=r.priority,
        status=TaskStatus(r.status),
        attempt=r.attempt,
        retries=r.retries,
        max_retries=r.max_retries,
        backoff_factor=r.backoff_factor,
        retry_at=r.retry_at,
        crashes=r.crashes,
        releases=r.releases,
        lease_owner=r.lease_owner,
        lease_expires_at=r.lease_expires_at,
        failure_reason=r.failure_reason,
        last_error=r.last_error,
        created_at=r.created_at,
        updated_at=r.updated_at,
        started_at=r.started_at,
        completed_at=r.completed_at,
        audio_duration_s=r.audio_duration_s,
        language=r.language,
        output_uris=tuple(r.output_uris or ()),
        text_preview=r.text_preview,
        attempts=attempts,
    )


_MAX_TASK_ID = 2**63 - 1  # bigint


def _task_ids(ids: Sequence[int]) -> tuple[list[int], tuple[int, ...]]:
    """Named ids, unique and ascending, split into those a task may have and those no task can
    (out of bigint's range: no row, and the cast would fail the statement)."""
    unique = sorted({int(i) for i in ids})
    return [i for i in unique if 0 < i <= _MAX_TASK_ID], tuple(i for i in unique if not 0 < i <= _MAX_TASK_ID)


def _left_alone(
    conn: sa.Connection, ids: Sequence[int], changed: Sequence[int], out_of_range: tuple[int, ...]
) -> StatusChange:
    """The report of a requeue or cancel: of the named ``ids``, which it did not change, and why."""
    done = set(changed)
    rest = [i for i in ids if i not in done]
    found: dict[int, TaskStatus] = {}
    if rest:
        rows = conn.execute(text(_STATUS_OF_SQL), {"ids": rest})
        found = {int(r.id): TaskStatus(r.status) for r in rows}
    missing = tuple(sorted([i for i in rest if i not in found] + list(out_of_range)))
    return StatusChange(tuple(sorted(done)), tuple((i, found[i]) for i in rest if i in found), missing)


def _refusal(op: str, exc: sa.exc.DBAPIError) -> StoreMisconfigured | None:
    """The permanent error for a database that refuses us (credentials, options, grants, schema), else None."""
    code = getattr(exc.orig, "pgcode", None) or ""
    message = _pg_message(exc)
    if code in SCHEMA_MISSING_SQLSTATES and op != "upgrade":
        return SchemaOutOfDate(
            f"store {op}: the database has no raytranscribe schema, or an older one ({message}): "
            "run `raytranscribe db upgrade`"
        )
    if code in MISCONFIGURED_SQLSTATES or code.startswith(MISCONFIGURED_SQLSTATE_CLASSES) or (
        not code and MISCONFIGURED_MESSAGES.search(message)
    ):
        return StoreMisconfigured(f"store {op}: {message} (check the database URL, role and grants; not retried)")
    return None


def _is_transient(exc: sa.exc.DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    code = getattr(exc.orig, "pgcode", None)
    if code in TRANSIENT_SQLSTATES or (code or "").startswith("08"):  # class 08: connection exception
        return True
    # Lost sockets arrive without a SQLSTATE, as OperationalError/InterfaceError.
    return code is None and isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))


def _pg_message(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    orig = getattr(exc, "orig", None)
    msg = str(orig if orig is not None else exc).strip()
    # libpq pads "FATAL:  role ..." with two spaces; one line, single-spaced, reads better.
    return re.sub(r"\s+", " ", msg.splitlines()[0]) if msg else type(exc).__name__
