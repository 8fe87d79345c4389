"""Reads: one task with its attempts, lists, the counts. None grows with the table's history (the
side tables and counts of migrations 0005 and 0006; see reads.sql)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import text

from raytranscribe.store.connection import Database
from raytranscribe.store.sql import load
from raytranscribe.store.states import UNFINISHED, TaskStatus
from raytranscribe.store.views import StoreStats, TaskView, attempt_view, task_view

SQL = load("reads")


def get(db: Database, task_id: int) -> TaskView | None:
    def tx(conn: sa.Connection) -> TaskView | None:
        row = conn.execute(text(SQL.task), {"id": task_id}).first()
        if row is None:
            return None
        attempts = conn.execute(text(SQL.attempts), {"id": task_id})
        return task_view(row, tuple(attempt_view(a) for a in attempts))

    return db.run("get", tx)


def list_tasks(db: Database, status: TaskStatus | None, limit: int, suspect: bool = False) -> list[TaskView]:
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


def suspects(db: Database) -> int:
    sql = text(SQL.suspects)
    return db.run("suspects", lambda conn: int(conn.execute(sql).scalar_one()))


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
