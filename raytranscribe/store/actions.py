"""What an operator does to tasks: requeue and cancel. Each locks the queue rows of the tasks it
names before the tasks, the order claims take (see lifecycle.sql's lock_queued)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import text

from raytranscribe.errors import InvalidInput
from raytranscribe.store.connection import Database
from raytranscribe.store.sql import load
from raytranscribe.store.states import CANCELLABLE, REQUEUEABLE, TaskStatus
from raytranscribe.store.views import StatusChange

log = logging.getLogger(__name__)

SQL = load("lifecycle")
_MAX_TASK_ID = 2**63 - 1  # bigint

T = TypeVar("T")


def requeue(db: Database, ids: Sequence[int], status: TaskStatus | None) -> StatusChange:
    """See :meth:`Store.requeue`."""
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
    where = [SQL.where_requeueable]
    params: dict[str, Any] = {"requeueable": [s.value for s in REQUEUEABLE]}
    if ids:
        where.append(SQL.where_ids)
        params["ids"] = ids
    if status is not None:
        where.append(SQL.where_status)
        params["status"] = status.value
    cond = " AND ".join(where)
    sql = text(SQL.requeue.format(where=cond))

    def write(conn: sa.Connection) -> StatusChange:
        changed = sorted(conn.execute(sql, params).scalars())
        return _left_alone(conn, ids, changed, out_of_range)

    report = _write_queued(db, "requeue", cond, params, write)
    log.info("requeued %d task(s)", report.count)
    return report


def requeue_suspects(db: Database, model: str | None) -> StatusChange:
    """See :meth:`Store.requeue_suspects`."""
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise InvalidInput(f"model must be a non-empty name, got {model!r}")
    sql = text(SQL.requeue_suspects)
    changed = db.run("requeue", lambda conn: sorted(conn.execute(sql, {"model": model}).scalars()))
    log.info("requeued %d suspect task(s)%s", len(changed), f" with model {model}" if model else "")
    return StatusChange(tuple(changed))


def cancel(db: Database, ids: Sequence[int]) -> StatusChange:
    """See :meth:`Store.cancel`."""
    ids, out_of_range = _task_ids(ids)
    if not ids:
        return StatusChange((), (), out_of_range)
    params = {"ids": ids, "cancellable": [s.value for s in CANCELLABLE]}

    def write(conn: sa.Connection) -> StatusChange:
        changed = list(conn.execute(text(SQL.cancel), params).scalars())
        return _left_alone(conn, ids, changed, out_of_range)

    report = _write_queued(db, "cancel", SQL.where_ids, params, write)
    log.info("cancelled %d of %d task(s)", report.count, len(ids) + len(out_of_range))
    return report


def _write_queued(db: Database, op: str, where: str, params: dict[str, Any], write: Callable[[sa.Connection], T]) -> T:
    """One transaction: lock the queue rows of the tasks ``where`` names (alias t), then ``write``.

    The lock order claims take (queue row, then task; see lifecycle.sql's lock_queued), for every
    writer that may change a queued task.
    """
    lock = text(SQL.lock_queued.format(where=where))

    def tx(conn: sa.Connection) -> T:
        conn.execute(lock, params)
        return write(conn)

    return db.run(op, tx)


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
        rows = conn.execute(text(SQL.status_of), {"ids": rest})
        found = {int(r.id): TaskStatus(r.status) for r in rows}
    missing = tuple(sorted([i for i in rest if i not in found] + list(out_of_range)))
    return StatusChange(tuple(sorted(done)), tuple((i, found[i]) for i in rest if i in found), missing)
