"""The store's reads for a one-shot command (``raytranscribe status``, ``tasks``, ``show``) through
psycopg2 alone: the statements of ``reads`` with the views and errors :class:`Store` gives, without
SQLAlchemy, its pools or alembic, whose import cost such a command more than all the rest of it.

One connection, opened on first use, one transaction per read. Errors are sorted by ``sqlstate`` as
the Store's are: a transient one (a lost connection, a serialization failure) re-runs the read
after the same back-off, up to ``store.op_retries`` times, then :class:`StoreUnavailable`; a refusal
(role, grants, no schema) raises at once.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg2

from raytranscribe.config import StoreSettings
from raytranscribe.errors import StoreUnavailable
from raytranscribe.store import reads, sqlstate
from raytranscribe.store.sql import pyformat
from raytranscribe.store.states import TaskStatus
from raytranscribe.store.views import OrchestratorView, StoreStats, TaskView

T = TypeVar("T")


class Reader:
    """Read-only access to the store for one command; threads sharing one read one at a time."""

    def __init__(self, connect_args: Mapping[str, Any], settings: StoreSettings, *,
                 application_name: str = "raytranscribe") -> None:  # fmt: skip
        """``connect_args``: ``store.url.psycopg2_args`` of the URL. Connects as the Store's engines do."""
        self.settings = settings
        self._args = {**connect_args, "connect_timeout": settings.connect_timeout_s,
                      "application_name": application_name}  # fmt: skip
        self._conn: Any = None  # psycopg2's connection, once opened
        self._lock = threading.Lock()  # one transaction at a time on it

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Reader(host={self._args.get('host')!r}, dbname={self._args.get('dbname')!r})"

    # --- what Store reads, the same way ----------------------------------------------------------

    def get(self, task_id: int) -> TaskView | None:
        return reads.get(self, task_id)

    def list_tasks(self, *, status: TaskStatus | None = None, limit: int = 100, suspect: bool = False) -> list[TaskView]:
        return reads.list_tasks(self, status, limit, suspect)

    def stats(self, *, top: int = 5) -> StoreStats:
        return reads.stats(self, top)

    def orchestrators(self) -> list[OrchestratorView]:
        return reads.orchestrators(self)

    def suspects(self) -> int:
        return reads.suspects(self)

    # --- running a read ------------------------------------------------------------------------

    def read(self, op: str, fn: Callable[[reads.Query], T]) -> T:
        """``fn(query)`` in one transaction, re-run on transient errors (``reads.Reads``)."""
        retries = self.settings.op_retries
        last: BaseException | None = None
        for n in range(retries + 1):
            try:
                with self._lock:
                    return self._once(fn)
            except psycopg2.Error as exc:
                gone = self._conn is None or bool(self._conn.closed)  # never opened, or lost
                lost = isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))
                error = sqlstate.permanent_error(
                    op, exc, transient=sqlstate.is_transient(exc, invalidated=gone, lost=lost)
                )
                if error is not None:
                    raise error from exc
                last = exc
                if gone or lost:  # the server may have restarted: the next try connects afresh
                    self.close()
            if n < retries:
                sqlstate.back_off(op, n, self.settings, last)
        raise StoreUnavailable(
            f"store {op}: database unavailable after {retries + 1} tries: {sqlstate.pg_message(last)}"
        ) from last

    def _once(self, fn: Callable[[reads.Query], T]) -> T:
        if self._conn is None:
            self._conn = psycopg2.connect(**self._args)
        conn = self._conn
        try:
            with conn.cursor() as cursor:

                def query(sql: str, params: Mapping[str, Any]) -> Sequence[Any]:
                    cursor.execute(pyformat(sql), params)
                    row = _row_type(tuple(d[0] for d in cursor.description))
                    return [row._make(r) for r in cursor.fetchall()]

                result = fn(query)
            conn.commit()
            return result
        except BaseException:
            if not conn.closed:
                try:
                    conn.rollback()
                except psycopg2.Error:  # lost on the way: the error being raised says why
                    pass
            raise


_ROW_TYPES: dict[tuple[str, ...], Any] = {}


def _row_type(columns: tuple[str, ...]) -> Any:
    """A row with its columns by name and by position, as SQLAlchemy's rows are."""
    row = _ROW_TYPES.get(columns)
    if row is None:
        row = _ROW_TYPES[columns] = namedtuple("Row", columns, rename=True)  # type: ignore[misc]
    return row
