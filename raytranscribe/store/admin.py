"""Scratch databases on a PostgreSQL server, for tests, benchmarks and experiments.

Administrative SQL lives with the store like every other statement.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import sqlalchemy as sa

from raytranscribe.local import embedded_postgres_url, server_answers
from raytranscribe.store.sql import load
from raytranscribe.store.url import sqlalchemy_url

SESSION = load("session")

LOCAL_SERVER = ("127.0.0.1", 5432)


def _admin_engine(url: str) -> sa.Engine:
    return sa.create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def _with_database(url: str, database: str) -> str:
    return sa.engine.make_url(url).set(database=database).render_as_string(hide_password=False)


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


def scratch_server_url(explicit: str | None = None) -> str:
    """A server to create scratch databases on: ``explicit``; else 127.0.0.1:5432 when it answers;
    else embedded-postgres in a temporary folder."""
    if explicit:
        return sqlalchemy_url(explicit)
    if server_answers(*LOCAL_SERVER):
        return local_server_url()
    return embedded_postgres_url(Path(tempfile.mkdtemp(prefix="rt-pg-")))


def create_database(server_url: str, prefix: str = "rt_scratch") -> str:
    """Create a uniquely named database on the server at ``server_url``; return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine(server_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(SESSION.create_database.format(name=name)))
    finally:
        engine.dispose()
    return _with_database(server_url, name)


def drop_database(url: str) -> None:
    """Drop the database ``url`` names, closing whatever is still connected to it."""
    engine = _admin_engine(_with_database(url, "postgres"))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(SESSION.drop_database.format(name=sa.engine.make_url(url).database)))
    finally:
        engine.dispose()
