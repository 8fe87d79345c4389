"""Reads: one task with its attempts, lists, the counts. None grows with the table's history (the
side tables and counts of migrations 0005 and 0006; see reads.sql)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import text

from raytranscribe.errors import InvalidInput
from raytranscribe.store.connection import Database
from raytranscribe.store.sql import load
from raytranscribe.store.states import UNFINISHED, TaskStatus
from raytranscribe.store.views import ResultRow, StoreStats, TaskView, attempt_view, result_row, task_view

SQL = load("reads")

EXPORT_PAGE = 10_000  # tasks an export reads per query: a few MB of rows, one round trip per page


def get(db: Database, task_id: int) -> TaskView | None:
    def tx(conn: sa.Connection) -> TaskView | None:
        row = conn.execute(text(SQL.task), {"id": task_id}).first()
        if row is None:
            return None
        attempts = conn.execute(text(SQL.attempts), {"id": task_id})
        return task_view(row, tuple(attempt_view(a) for a in attempts))

    return db.run("get", tx)


def list_tasks(db: Database, status: TaskStatus | None, limit: int) -> list[TaskView]:
    params: dict[str, Any] = {"limit": limit}
    where = ""
    if status is not None:
        status = TaskStatus(status)
        params["status"] = status.value
        where = SQL.list_where_status
        ids = getattr(SQL, f"ids_{status.value}", None)
        if ids is not None:  # the side rows name the tasks; tasks is read by primary key only
            where += " " + SQL.list_where_ids.format(ids=ids)
    sql = text(SQL.list_tasks.format(where=where))
    return db.run("list_tasks", lambda conn: [task_view(r) for r in conn.execute(sql, params)])


def stats(db: Database, top: int) -> StoreStats:
    def tx(conn: sa.Connection) -> StoreStats:
        rows = {TaskStatus(r.status): r for r in conn.execute(text(SQL.counts))}
        age = conn.execute(text(SQL.oldest_pending)).scalar()
        reasons = conn.execute(text(SQL.top_reasons), {"k": top}).all() if top > 0 else []
        counts = {s: int(rows[s].n) if s in rows else 0 for s in TaskStatus}
        completed = rows.get(TaskStatus.COMPLETED)
        return StoreStats(
            counts=counts,
            oldest_pending_age_s=float(age) if age is not None else None,
            retries_scheduled=counts[TaskStatus.FAILED],  # a failed task always has its retry_at
            top_failure_reasons=tuple((r.failure_reason, int(r.n)) for r in reasons),
            audio_seconds_completed=float(completed.audio_s) if completed is not None else 0.0,
        )

    return db.run("stats", tx)


def claimable_pairs(db: Database) -> list[tuple[str, str]]:
    sql = text(SQL.claimable_pairs)
    return db.run("claimable_pairs", lambda conn: [(r.engine, r.model) for r in conn.execute(sql)])


def outstanding(db: Database, pairs: Sequence[tuple[str, str]] | None) -> int:
    params: dict[str, Any] = {"s": [s.value for s in UNFINISHED]}
    pairs_filter = ""
    if pairs is not None:
        pairs_filter = SQL.outstanding_pairs_filter
        params |= {"e": [e for e, _ in pairs], "m": [m for _, m in pairs]}
    sql = text(SQL.outstanding.format(pairs=pairs_filter))
    return db.run("outstanding", lambda conn: int(conn.execute(sql, params).scalar_one()))


def count_by_status(db: Database, ids: Sequence[int]) -> dict[TaskStatus, int]:
    sql = text(SQL.count_by_status)
    rows = db.run("count_by_status", lambda conn: conn.execute(sql, {"ids": list(ids)}).all())
    counts = {s: 0 for s in TaskStatus}
    counts.update({TaskStatus(r.status): int(r.n) for r in rows})
    return counts


def result_pages(
    db: Database, statuses: Sequence[TaskStatus], suspect: bool | None, page_size: int
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
    return _pages(db, text(SQL.export_page.format(suspect=where)), params, page_size)


def _pages(db: Database, sql: sa.TextClause, params: dict[str, Any], page_size: int) -> Iterator[list[ResultRow]]:
    while True:
        page = db.run("export_page", lambda conn: [result_row(r) for r in conn.execute(sql, params).fetchall()])
        if page:
            yield page
        if len(page) < page_size:
            return
        params["after"] = page[-1].id
