"""What the store returns: result classes, and the mappers from rows to them."""

from __future__ import annotations

import functools
import json
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from raytranscribe.store.states import TaskStatus

if TYPE_CHECKING:
    from raytranscribe.engines.base import TranscribeOptions


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
    quality: dict[str, Any] | None = None  # a completed attempt's measures and verdict (engines.verdict)


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
    # The latest completion's measures and verdict (engines.verdict); None until completed.
    quality: dict[str, Any] | None = None
    suspect: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


class ResultRow(NamedTuple):
    """One task as ``raytranscribe export`` writes it: what went in, what came out, and its verdict.

    A NamedTuple, not a frozen dataclass like the other views: an export makes millions, a tuple is
    built in one step where a frozen dataclass sets each field through ``object.__setattr__``, and a
    page turns into columns with one ``zip(*page)``. The fields are reads.sql's export_page columns, in order.
    """

    id: int
    status: TaskStatus
    input_uri: str
    output_uri: str  # the output stem
    output_uris: tuple[str, ...]  # the files written
    engine: str
    model: str
    options: str  # the task's options as stored: a JSON object, as text
    language: str | None
    audio_duration_s: float | None
    text_preview: str | None
    quality: str | None  # the quality measures and reasons as stored (JSON text); None until measured
    suspect: bool | None  # the verdict; None until measured
    attempt: int
    retries: int
    failure_reason: str | None
    created_at: datetime
    completed_at: datetime | None


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


# --- row mappers ----------------------------------------------------------------------------------


def _options(document: dict[str, Any]) -> TranscribeOptions:
    # The engines' module loads with the first task read, not for `raytranscribe status`.
    from raytranscribe.engines.base import TranscribeOptions

    return TranscribeOptions.from_dict(document)


@functools.lru_cache(maxsize=256)
def options_of(raw: str) -> TranscribeOptions:
    """Options of claimed tasks; a batch mostly shares one document, and the result is frozen."""
    return _options(json.loads(raw))


def claimed_task(r: Sequence[Any]) -> ClaimedTask:
    """A row of queue.sql's claim, a plain tuple (the hot path skips SQLAlchemy's rows)."""
    return ClaimedTask(
        id=r[0],
        attempt=r[1],
        input_uri=r[2],
        output_uri=r[3],
        engine=r[4],
        model=r[5],
        options=options_of(r[6]),
        priority=r[7],
        retries=r[8],
        max_retries=r[9],
        backoff_factor=r[10],
        lease_expires_at=r[11],
        crashes=r[12],
        releases=r[13],
    )


def attempt_view(a: Any) -> AttemptView:
    """A row of reads.sql's attempts."""
    return AttemptView(*a[:12], timings=tuple((str(s), float(t)) for s, t in (a.timings or [])), quality=a.quality)


def task_view(r: Any, attempts: tuple[AttemptView, ...] = ()) -> TaskView:
    """A row of reads.sql's task or list_tasks."""
    return TaskView(
        id=r.id,
        input_uri=r.input_uri,
        output_uri=r.output_uri,
        engine=r.engine,
        model=r.model,
        options=_options(r.options),
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
        quality=r.quality,
        suspect=r.suspect,
    )


_STATUSES = {s.value: s for s in TaskStatus}  # a dict look-up: TaskStatus(value) costs more per row


def result_row(r: Sequence[Any]) -> ResultRow:
    """A row of reads.sql's export_page (its columns are ResultRow's fields, in order)."""
    return ResultRow(r[0], _STATUSES[r[1]], r[2], r[3], tuple(r[4] or ()), *r[5:])


def orchestrator_view(r: Any) -> OrchestratorView:
    """A row of orchestrators.sql's running."""
    return OrchestratorView(r.owner, r.state, r.started_at, r.heartbeat_at)
