"""Recording outcomes and reaping expired leases: lock the tasks' rows, plan (pure, ``plan.py``),
write. Every write is fenced by ``(status = 'in_progress', attempt)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import text

from raytranscribe.contracts import Outcome
from raytranscribe.errors import Failure, LeaseExpired, Stage
from raytranscribe.retry import RetryPolicy
from raytranscribe.store.connection import Database, Prepared, pg_array
from raytranscribe.store.plan import NO_SUCH_TASK, Refusal, Row, Write, plan
from raytranscribe.store.sql import load
from raytranscribe.store.states import TaskStatus
from raytranscribe.store.views import RecordResult

log = logging.getLogger(__name__)

SQL = load("lifecycle")
LEASE_EXPIRED = Failure.from_exception(LeaseExpired("lease expired"))
TEXT_PREVIEW_CHARS = 500

# Claim and the all-completions record run as PREPAREd statements (see Prepared): no parse or
# plan per call, which is most of a small batch's cost on the server.
COMPLETE = Prepared(
    "raytranscribe_complete",
    ("bigint[]", "int[]", "float8[]", "text[]", "text[]", "text[]", "text[]", "text[]", "text[]", "text[]", "bool[]"),
    SQL.complete,
)


class Encoded(NamedTuple):
    """An outcome's result and timings as the record statements take them: one encoding for
    complete and apply alike."""

    audio_duration_s: float | None
    language: str | None
    output_uris: str | None  # a JSON array of URIs
    text_preview: str | None  # cut to TEXT_PREVIEW_CHARS; None for none
    timings: str | None  # a JSON array of [stage, seconds]
    quality: str | None  # the transcript's measures and verdict, a JSON object (engines.verdict)
    suspect: bool | None  # the verdict; None: no verdict came with the result


def encode(o: Outcome) -> Encoded:
    """What ``o`` writes besides its status; a failure writes no result (the result columns stay NULL,
    so the task keeps what an earlier attempt recorded)."""
    timings = json.dumps([[s, float(t)] for s, t in o.timings]) if o.timings else None
    r = o.result if o.failure is None else None
    if r is None:
        return Encoded(None, None, None, None, timings, None, None)
    preview = r.text_preview[:TEXT_PREVIEW_CHARS] if r.text_preview else None
    q = r.quality
    quality = json.dumps(q.to_dict(), allow_nan=False) if q is not None else None
    return Encoded(
        float(r.audio_duration_s), r.language, json.dumps(list(r.outputs)), preview, timings, quality,
        q.suspect if q is not None else None,
    )  # fmt: skip


def record(db: Database, policy: RetryPolicy, outcomes: Sequence[Outcome]) -> list[RecordResult]:
    """See :meth:`Store.record`."""
    outcomes = list(outcomes)
    if not outcomes:
        return []
    ids = sorted({o.task_id for o in outcomes})
    if len(ids) == len(outcomes) and all(o.failure is None and o.release is None for o in outcomes):
        return record_completions(db, outcomes)

    def tx(conn: sa.Connection) -> list[RecordResult]:
        rows = {r.id: _row(r) for r in conn.execute(text(SQL.lock_for_record), {"ids": ids})}
        return apply(conn, policy, outcomes, rows)

    return db.run("record", tx)


def reap(db: Database, policy: RetryPolicy, limit: int) -> list[RecordResult]:
    """See :meth:`Store.reap`."""

    def tx(conn: sa.Connection) -> list[RecordResult]:
        rows = {r.id: _row(r) for r in conn.execute(text(SQL.lock_expired), {"limit": limit})}
        outcomes = [Outcome(r.id, r.attempt, failure=LEASE_EXPIRED) for r in rows.values()]
        return apply(conn, policy, outcomes, rows)

    return db.run("reap", tx)


def _row(r: sa.Row[Any]) -> Row:
    """From a row of lock_for_record or lock_expired (the status comes as text)."""
    return Row(r.id, TaskStatus(r.status), r.attempt, r.retries, r.max_retries, r.backoff_factor, r.crashes, r.releases)


def record_completions(db: Database, outcomes: list[Outcome]) -> list[RecordResult]:
    """Completions of distinct tasks: one fenced statement (no retry decision needs the rows)."""
    ordered = sorted(outcomes, key=lambda o: o.task_id)  # lock order, as in record()
    columns: tuple[list[Any], ...] = tuple([] for _ in range(11))
    ids, attempts, durations, languages, outputs, previews, actors, nodes, timings, qualities, suspects = columns
    for o in ordered:  # one pass: this runs for every batch on the hot path
        e = encode(o)
        ids.append(o.task_id)
        attempts.append(o.attempt)
        durations.append(e.audio_duration_s)
        languages.append(e.language)
        outputs.append(e.output_uris)
        previews.append(e.text_preview)
        actors.append(o.actor)
        nodes.append(o.node_id)
        timings.append(e.timings)
        qualities.append(e.quality)
        suspects.append(e.suspect)
    args = tuple(map(pg_array, columns))

    applied = db.run("record", lambda raw: {r[0] for r in COMPLETE.execute(raw, *args)}, raw=True)
    fenced: dict[int, tuple[TaskStatus, int]] = {}
    missed = [o.task_id for o in outcomes if o.task_id not in applied]
    if missed:
        # Rare (stale worker, reaped or cancelled task): read why, for the result and the log.
        fenced = db.run(
            "record",
            lambda conn: {
                r.id: (TaskStatus(r.status), r.attempt) for r in conn.execute(text(SQL.fenced), {"ids": missed})
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
        why = NO_SUCH_TASK if row is None else f"fenced: task is {row[0]} at attempt {row[1]}"
        if row is not None:
            _log_refusal(Refusal(o, why))
        results.append(RecordResult(o.task_id, o.attempt, False, None, None, why))
    return results


def apply(
    conn: sa.Connection, policy: RetryPolicy, outcomes: list[Outcome], rows: dict[int, Row]
) -> list[RecordResult]:
    """Plan each outcome against its locked row, then write tasks and attempts in one statement."""
    planned = plan(outcomes, rows, policy)
    writes = [p for p in planned if isinstance(p, Write)]
    for p in planned:
        if isinstance(p, Refusal) and p.reason != NO_SUCH_TASK:
            _log_refusal(p)
    retry_at = _write(conn, writes) if writes else {}
    results = []
    for p in planned:
        o = p.outcome
        if isinstance(p, Refusal):
            results.append(RecordResult(o.task_id, o.attempt, False, None, None, p.reason))
            continue
        results.append(RecordResult(o.task_id, o.attempt, True, p.status, retry_at.get(o.task_id), p.reason))
        _log_write(p, retry_at.get(o.task_id))
    return results


def _write(conn: sa.Connection, writes: list[Write]) -> dict[int, Any]:
    """The apply statement for ``writes``; each task's retry_at."""
    columns: dict[str, list[Any]] = {k: [] for k in (
        "ids", "statuses", "retries", "delays", "reasons", "errors", "durations", "languages", "outputs",
        "previews", "crashes", "releases", "attempts", "outcomes", "stages", "classes", "messages", "https",
        "actors", "nodes", "decisions", "timings", "qualities", "suspects")}  # fmt: skip
    for w in writes:
        o, f, e = w.outcome, w.outcome.failure, encode(w.outcome)
        row = {
            "ids": o.task_id, "statuses": w.status.value, "retries": w.retries, "delays": w.delay_s,
            "reasons": w.reason, "errors": w.error, "durations": e.audio_duration_s, "languages": e.language,
            "outputs": e.output_uris, "previews": e.text_preview, "crashes": w.crashes, "releases": w.releases,
            "attempts": o.attempt, "outcomes": w.attempt_outcome.value,
            "stages": f.stage.value if f else o.release.stage.value if o.release else None,
            "classes": f.error_class if f else None,
            "messages": f.message if f else o.release.cause if o.release else None,
            "https": f.http_status if f else None, "actors": o.actor, "nodes": o.node_id,
            "decisions": w.decision, "timings": e.timings, "qualities": e.quality, "suspects": e.suspect,
        }  # fmt: skip
        for k, v in row.items():
            columns[k].append(v)
    return {r.id: r.retry_at for r in conn.execute(text(SQL.apply), columns)}


def _log_refusal(r: Refusal) -> None:
    log.info(
        "outcome ignored (%s)",
        r.reason,
        extra={"task_id": r.outcome.task_id, "attempt": r.outcome.attempt, "stage": Stage.STORE.value},
    )


def _log_write(w: Write, retry_at: Any) -> None:
    o = w.outcome
    cause = o.failure or o.release
    extra = {"task_id": o.task_id, "attempt": o.attempt, "stage": cause.stage.value if cause else Stage.STORE.value}
    if w.status is TaskStatus.DEAD:
        log.warning("task dead: %s", w.reason, extra=extra)
    elif w.status is TaskStatus.PENDING:
        log.info("task released, not charged: %s", o.release.cause if o.release else "", extra=extra)
    elif w.status is TaskStatus.FAILED:
        log.info("task failed, retry at %s: %s", retry_at, w.reason, extra=extra)
    else:
        log.debug("task completed", extra=extra)
