"""Connections to PostgreSQL: the engines, each thread's hot-path connection, the retry loop around
every transaction (``sqlstate`` tells a transient error from a refusal), and the prepared statements
of the hot path.

Transient database errors (lost connection, admin shutdown, serialization failure, deadlock) re-run
the whole transaction up to ``settings.store.op_retries`` times with exponential backoff, then raise
:class:`StoreUnavailable`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPICursor
from sqlalchemy.pool import PoolProxiedConnection

from raytranscribe.config import StoreSettings
from raytranscribe.errors import ConfigError, StoreUnavailable
from raytranscribe.store import sqlstate
from raytranscribe.store.sql import load
from raytranscribe.store.sqlstate import pg_message
from raytranscribe.store.url import redact_url, sqlalchemy_url

log = logging.getLogger(__name__)

SESSION = load("session")

T = TypeVar("T")

# Session settings of the hot-path (autocommit) connections; see Database.__init__.
HOT_PATH_OPTIONS = "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off"


class Database:
    """The store's two connection pools and the loop that runs each operation as one transaction.

    Re-running is safe: writes about a task are fenced by ``(status = 'in_progress', attempt)``, so a
    repeated ``record`` changes nothing, and a repeated ``claim`` simply claims other rows (rows
    claimed by a commit whose answer was lost come back through ``Store.reap``).
    """

    def __init__(self, url: str, settings: StoreSettings, *, application_name: str):
        """``application_name`` names the connections in ``pg_stat_activity``."""
        self.settings = settings
        self.url = sqlalchemy_url(url)  # postgresql://, postgres:// too: ConfigError for anything else
        # Transient database errors met, each try's (the orchestrator exports them as
        # raytranscribe_store_transient_errors).
        self.transient_errors = 0
        self._lock = threading.Lock()  # guards _held
        self._hot = threading.local()
        self._held: dict[threading.Thread, PoolProxiedConnection] = {}  # each thread's hot-path connection
        try:
            # No pool_pre_ping: it costs a round trip per operation. A pooled connection killed while
            # idle fails its first statement instead, and run() re-runs the operation on a fresh pool.
            pool = {
                "pool_size": settings.pool_size,
                "max_overflow": settings.pool_size,
                "connect_args": {"connect_timeout": settings.connect_timeout_s, "application_name": application_name},
            }
            self.engine = sa.create_engine(self.url, **pool)
            # Single-statement operations (claim, completions) run on their own autocommit pool:
            # the statement is its own transaction, with no BEGIN/COMMIT round trips. A pool of its
            # own, because switching a pooled connection's mode per checkout breaks on a dead one.
            # Its statements are planned once per connection (the best plan of claim and complete
            # does not depend on their arguments; a custom plan per call cost a third of a batch of
            # ten's server time), and without sequential scans, so a plan made while the queue
            # was empty stays an index scan when it holds millions.
            hot = {**pool, "connect_args": {**pool["connect_args"], "options": HOT_PATH_OPTIONS}}
            self.autocommit = sa.create_engine(self.url, isolation_level="AUTOCOMMIT", **hot)
            self._dbapi_error = self.autocommit.dialect.loaded_dbapi.Error
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise ConfigError(f"bad database URL {redact_url(self.url)!r}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for raw in held:  # hot-path connections still held by threads: back to the pool, then closed
            try:
                raw.close()
            except Exception:  # a connection that died on its own is closed already
                log.debug("closing a held connection failed", exc_info=True)
        self.engine.dispose()
        self.autocommit.dispose()

    def run(self, op: str, fn: Callable[[Any], T], *, single: bool = False, raw: bool = False) -> T:
        """Run ``fn`` in one transaction; re-run it on transient errors, then give up clearly.

        ``single``: ``fn`` issues exactly one statement, which is then its own transaction
        (autocommit): no BEGIN and COMMIT round trips around it. ``raw``: the same, but ``fn`` gets
        the pooled DBAPI connection itself (see :class:`Prepared`).
        """
        retries = self.settings.op_retries
        last: BaseException | None = None
        for n in range(retries + 1):
            try:
                if raw:
                    return self.run_raw(fn)
                if single:
                    with self.autocommit.connect() as conn:
                        return fn(conn)
                with self.engine.begin() as conn:
                    return fn(conn)
            except sa.exc.DBAPIError as exc:
                raise_permanent(op, exc)
                last = exc
                if exc.connection_invalidated or isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
                    # The server may have restarted: drop every pooled connection, not only this one.
                    self._drop_hot_connection()
                    self.engine.dispose()
                    self.autocommit.dispose()
            except sa.exc.TimeoutError as exc:  # no pooled connection came free in time
                last = exc
            self.transient_errors += 1
            if n < retries:
                self._back_off(op, n, last)
        raise StoreUnavailable(
            f"store {op}: database unavailable after {retries + 1} tries: {pg_message(last)}"
        ) from last

    def read(self, op: str, fn: Callable[[Callable[[str, Mapping[str, Any]], Sequence[Any]]], T]) -> T:
        """``fn(query)`` in one transaction, ``query(sql, params)`` giving every row: how ``reads`` runs."""
        return self.run(op, lambda conn: fn(lambda sql, params: conn.execute(sa.text(sql), params).all()))

    def _back_off(self, op: str, n: int, error: BaseException | None) -> None:
        sqlstate.back_off(op, n, self.settings, error)

    def run_raw(self, fn: Callable[[PoolProxiedConnection], T]) -> T:
        """``fn`` on this thread's hot-path connection; its errors come out as SQLAlchemy's."""
        try:
            raw = self._hot_connection()
        except self._dbapi_error as exc:  # could not connect at all
            raise sa.exc.DBAPIError.instance(
                None, None, exc, self._dbapi_error, connection_invalidated=True, dialect=self.autocommit.dialect
            ) from exc
        try:
            return fn(raw)
        except self._dbapi_error as exc:
            gone = self.autocommit.dialect.is_disconnect(exc, raw.dbapi_connection, None)
            if gone:
                self._drop_hot_connection(exc)  # the next call opens a new one
            raise sa.exc.DBAPIError.instance(
                None, None, exc, self._dbapi_error, connection_invalidated=gone, dialect=self.autocommit.dialect
            ) from exc

    def raw_call(self, raw: DBAPIConnection, fn: Callable[[], T]) -> T:
        """``fn()``, a call on a transaction's DBAPI connection; its errors come out as SQLAlchemy's,
        so :meth:`run` sorts them as it does any statement's."""
        try:
            return fn()
        except self._dbapi_error as exc:
            gone = self.engine.dialect.is_disconnect(exc, raw, None)
            raise sa.exc.DBAPIError.instance(
                None, None, exc, self._dbapi_error, connection_invalidated=gone, dialect=self.engine.dialect
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
            raw = self.autocommit.raw_connection()
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


# --- what an error means (the SQLSTATEs themselves: sqlstate) ------------------------------------


def raise_permanent(op: str, exc: sa.exc.DBAPIError) -> None:
    """Raise the store's error for ``exc`` unless it is transient (then return: the caller retries)."""
    error = sqlstate.permanent_error(op, exc, transient=is_transient(exc))
    if error is not None:
        raise error from exc


def is_transient(exc: sa.exc.DBAPIError) -> bool:
    # Lost sockets arrive without a SQLSTATE, as OperationalError/InterfaceError.
    lost = isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))
    return sqlstate.is_transient(exc, invalidated=exc.connection_invalidated, lost=lost)


# --- the hot path's statements --------------------------------------------------------------------


def _pg_array_element(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "NULL"  # a NaN or infinite measurement is no measurement
    if isinstance(value, str):
        # Inside double quotes a backslash escapes the next character; nothing else is special.
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value) if isinstance(value, float) else str(int(value))


def pg_array(values: Sequence[Any]) -> str:
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
class Prepared:
    """A statement PREPAREd once per pooled connection, then EXECUTEd: no parse or plan per call.

    psycopg2 has no protocol-level prepared statements, so this is SQL-level PREPARE/EXECUTE. The
    names prepared on a connection live in the pool's ``info`` dict for that connection, which is
    cleared when the connection is replaced (after a disconnect), exactly when the server forgot
    them too. Only for autocommit operations: a failed EXECUTE there aborts nothing else.

    It runs on the pooled DBAPI connection's own cursor (:meth:`Database.run` with ``raw=True``), not
    through SQLAlchemy's statement layer: on the claim/complete hot path that layer cost more client
    time per call than the server spent on a batch of ten (bench/queue_throughput.py).
    """

    name: str
    types: tuple[str, ...]  # SQL types of $1..$n
    body: str
    # Explicit casts: psycopg2 sends values as literals (an all-NULL list is ARRAY[NULL] of text).
    call: str = field(init=False)

    def __post_init__(self) -> None:
        arguments = ", ".join(SESSION.execute_argument.format(type=t) for t in self.types)
        object.__setattr__(self, "call", SESSION.execute.format(name=self.name, arguments=arguments))

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
            cursor.execute(SESSION.prepare.format(name=self.name, types=", ".join(self.types), body=self.body))
        except Exception as exc:
            if getattr(exc, "pgcode", None) != "42P05":  # duplicate_prepared_statement: already there
                raise
