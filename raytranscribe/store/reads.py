"""Reads: one task with its attempts, lists, the counts, the running orchestrators. None grows with
the table's history (the side tables and counts of migrations 0005 and 0006; see reads.sql).

Each read is one transaction run by ``db.read(op, fn)``, where ``fn`` gets ``query(sql, params)``
returning every row (columns by name and by position). Two kinds of ``db`` run them:
``connection.Database`` (SQLAlchemy's pools, the Store's) and ``reader.Reader`` (psycopg2 alone, for
a one-shot command): the same statements, views and errors either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from raytranscribe.errors import InvalidInput
from raytranscribe.store.sql import load
from raytranscribe.store.states import UNFINISHED, TaskStatus
from raytranscribe.store.views import (
    OrchestratorView,
    ResultRow,
    StoreStats,
    TaskView,
    attempt_view,
    orchestrator_view,
    result_row,
    task_view,
)

SQL = load("reads")
ORCHESTRATORS = load("orchestrators")

T = TypeVar("T")
Query = Callable[[str, Mapping[str, Any]], Sequence[Any]]  # (statement, bind parameters) -> all rows

EXPORT_PAGE = 10_000  # tasks an export reads per query: a few MB of rows, one round trip per page


class Reads(Protocol):
    def read(self, op: str, fn: Callable[[Query], T]) -> T: ...


def get(db: Reads, task_id: int) -> TaskView | None:
    def tx(query: Query) -> TaskView | None:
        rows = query(SQL.task, {"id": task_id})
        if not rows:
            return None
        attempts = query(SQL.attempts, {"id": task_id})
        return task_view(rows[0], tuple(attempt_view(a) for a in attempts))

    return db.read("get", tx)


def list_tasks(db: Reads, status: TaskStatus | None, limit: int, suspect: bool = False) -> list[TaskView]:
    params: dict[str, Any] = {"limit": limit}
    where = ""
    if suspect:  # completed, by definition: a status given besides it changes nothing or finds none
        if status is not None and TaskStatus(status) is not TaskStatus.COMPLETED:
            return []
        where = SQL.list_where_suspect
    elif status is not None:
        status = TaskStatus(status)
        params["status"] = status.value
        where = SQL.list_where_status
        ids = getattr(SQL, f"ids_{status.value}", None)
        if ids is not None:  # the side rows name the tasks; tasks is read by primary key only
            where += " " + SQL.list_where_ids.format(ids=ids)
    sql = SQL.list_tasks.format(where=where)
    return db.read("list_tasks", lambda query: [task_view(r) for r in query(sql, params)])


def stats(db: Reads, top: int) -> StoreStats:
    def tx(query: Query) -> StoreStats:
        rows = {TaskStatus(r.status): r for r in query(SQL.counts, {})}
        age = query(SQL.oldest_pending, {})[0][0]
        reasons = query(SQL.top_reasons, {"k": top}) if top > 0 else []
        counts = {s: int(rows[s].n) if s in rows else 0 for s in TaskStatus}
        completed = rows.get(TaskStatus.COMPLETED)
        return StoreStats(
            counts=counts,
            oldest_pending_age_s=float(age) if age is not None else None,
            retries_scheduled=counts[TaskStatus.FAILED],  # a failed task always has its retry_at
            top_failure_reasons=tuple((r.failure_reason, int(r.n)) for r in reasons),
            audio_seconds_completed=float(completed.audio_s) if completed is not None else 0.0,
        )

    return db.read("stats", tx)


def orchestrators(db: Reads) -> list[OrchestratorView]:
    """Orchestrators whose last heartbeat has not expired."""
    return db.read("orchestrators", lambda query: [orchestrator_view(r) for r in query(ORCHESTRATORS.running, {})])


def suspects(db: Reads) -> int:
    return db.read("suspects", lambda query: int(query(SQL.suspects, {})[0][0]))


def claimable_pairs(db: Reads) -> list[tuple[str, str]]:
    return db.read("claimable_pairs", lambda query: [(r.engine, r.model) for r in query(SQL.claimable_pairs, {})])


def outstanding(db: Reads, pairs: Sequence[tuple[str, str]] | None) -> int:
    params: dict[str, Any] = {"s": [s.value for s in UNFINISHED]}
    pairs_filter = ""
    if pairs is not None:
        pairs_filter = SQL.outstanding_pairs_filter
        params |= {"e": [e for e, _ in pairs], "m": [m for _, m in pairs]}
    sql = SQL.outstanding.format(pairs=pairs_filter)
    return db.read("outstanding", lambda query: int(query(sql, params)[0][0]))


def count_by_status(db: Reads, ids: Sequence[int]) -> dict[TaskStatus, int]:
    rows = db.read("count_by_status", lambda query: query(SQL.count_by_status, {"ids": list(ids)}))
    counts = {s: 0 for s in TaskStatus}
    counts.update({TaskStatus(r.status): int(r.n) for r in rows})
    return counts


def result_pages(
    db: Reads, statuses: Sequence[TaskStatus], suspect: bool | None, page_size: int
) -> Iterator[list[ResultRow]]:
    """The tasks of ``statuses`` (and of that verdict, unless ``suspect`` is None) by id, ``page_size``
    at a time: each page is its own short read after the last id of the one before (keyset), so memory
    holds one page and a transient error re-reads that page only. A task that enters one of the statuses
    while the walk is past its id is not seen (run it after the work is done for a complete index)."""
    if page_size < 1:  # checked now, not at the first page
        raise InvalidInput(f"page_size must be at least 1, got {page_size}")
    if not statuses:
        raise InvalidInput("give at least one status to export")
    params: dict[str, Any] = {"statuses": [TaskStatus(s).value for s in statuses], "limit": page_size, "after": 0}
    where = ""
    if suspect is not None:
        params["suspect"] = suspect
        where = SQL.export_where_suspect
    return _pages(db, SQL.export_page.format(suspect=where), params, page_size)


def _pages(db: Reads, sql: str, params: dict[str, Any], page_size: int) -> Iterator[list[ResultRow]]:
    while True:
        page = db.read("export_page", lambda query: [result_row(r) for r in query(sql, params)])
        if page:
            yield page
        if len(page) < page_size:
            return
        params["after"] = page[-1].id
