"""Reaching the database: the URLs an operator types, and refusals told apart from outages.

Against the real server: unknown roles and databases, a role that may not log in or has no
CONNECT right, libpq options it rejects, a port nobody listens on, and databases with no or an
older schema.
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from raytranscribe.errors import ConfigError, SchemaOutOfDate, StoreMisconfigured, StoreUnavailable
from raytranscribe.store import NewTask, Store
from raytranscribe.store.url import redact_url, sqlalchemy_url
from tests.support.db import TEST_SETTINGS, create_database, drop_database

# Retries that would take seconds: a refusal must not wait for them.
SLOW_RETRIES = TEST_SETTINGS.with_(store={"op_retries": 5, "op_retry_base_s": 0.5})


def _url(database_url: str, **parts) -> str:
    return sa.engine.make_url(database_url).set(**parts).render_as_string(hide_password=False)


def _plain(url: str, scheme: str) -> str:
    """The same URL as a PostgreSQL tool would take it: ``scheme://...``, no SQLAlchemy driver."""
    return scheme + "://" + url.partition("://")[2]


@pytest.fixture
def admin(database_url):
    """A superuser connection to the test server, for roles and databases made by a test."""
    engine = sa.create_engine(_url(database_url, database="postgres"), isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
def fresh_url(database_url):
    """An empty, unmigrated database on the same server."""
    url = create_database(_url(database_url, database="postgres"), prefix="rt_conn")
    yield url
    drop_database(url)


# --- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg2", "POSTGRESQL"])
def test_every_postgresql_url_form_connects(database_url, store, scheme):
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3 (not installed): we always name psycopg2."""
    url = _plain(database_url, scheme)
    with Store(url, settings=TEST_SETTINGS) as s:
        assert s.stats().total == 0
        assert s.url.startswith("postgresql+psycopg2://")


@pytest.mark.parametrize(
    "url,message",
    [
        ("not a url", "invalid database URL 'not a url': expected postgresql://user[:password]@host[:port]/database"),
        ("postgresql+asyncpg://bob:hunter2@db/x",
         "unsupported database driver 'asyncpg' in 'postgresql+asyncpg://bob:***@db/x': raytranscribe connects "
         "through psycopg2; write postgresql://user[:password]@host[:port]/database"),
        ("mysql://bob:hunter2@db/x",
         "database URL 'mysql://bob:***@db/x' is not PostgreSQL (mysql://): expected "
         "postgresql://user[:password]@host[:port]/database"),
        ("host=db password=hunter2",
         "invalid database URL 'host=db password=***': expected postgresql://user[:password]@host[:port]/database"),
        ("postgresql://bob:hunter2@db:543x/x",
         "invalid database URL 'postgresql://bob:***@db:543x/x': expected "
         "postgresql://user[:password]@host[:port]/database"),
        ("postgresql://db:70000/x",
         "invalid database URL 'postgresql://db:70000/x': port 70000 is not between 1 and 65535"),
    ],
    ids=["not-a-url", "asyncpg", "mysql", "libpq-keywords", "bad-port", "port-range"],
)
def test_urls_we_cannot_use_are_refused_in_one_line_without_the_password(url, message):
    with pytest.raises(ConfigError) as info:
        Store(url, settings=TEST_SETTINGS)
    assert str(info.value) == message
    assert "hunter2" not in str(info.value)


def test_redact_url_hides_passwords_holding_an_at_sign():
    assert redact_url("postgresql://bob:p@ss@db/x") == "postgresql://bob:***@db/x"
    assert redact_url("postgresql://bob@db/x?password=hunter2") == "postgresql://bob@db/x?password=***"
    assert sqlalchemy_url(" postgres://bob@db/x ") == "postgresql+psycopg2://bob@db/x"


# --- refusals are permanent, outages transient -------------------------------------------------


def _refused(url: str, pattern: str) -> StoreMisconfigured:
    """The store refuses at once (no retry, no backoff) with a StoreMisconfigured naming the cause."""
    s = Store(url, settings=SLOW_RETRIES)
    try:
        with pytest.raises(StoreMisconfigured, match=pattern) as info:
            s.stats()
        assert s.transient_errors == 0  # not one retry (the store counts each one before sleeping)
        with pytest.raises(StoreMisconfigured, match=pattern):
            s.claim(1, "orch", lease_s=60)  # the hot path (its own connection) says the same
        assert s.transient_errors == 0
    finally:
        s.close()
    err = info.value
    assert err.transient is False
    assert not isinstance(err, StoreUnavailable)
    assert "\n" not in str(err)
    return err


def test_unknown_role_is_refused_at_once(database_url):
    name = f"rt_nobody_{uuid.uuid4().hex[:8]}"
    err = _refused(_url(database_url, username=name), rf'role "{name}" does not exist')
    assert str(err).startswith("store stats: ") and "(check the database URL, role and grants; not retried)" in str(err)


def test_unknown_database_is_refused_at_once(database_url):
    _refused(_url(database_url, database=f"rt_none_{uuid.uuid4().hex[:8]}"), r'database "rt_none_\w+" does not exist')


@pytest.mark.parametrize(
    "query,pattern",
    [
        ({"sslmode": "bogus"}, r'invalid sslmode value: "bogus"'),
        ({"sslmode": "require"}, r"server does not support SSL, but SSL was required"),
        ({"no_such_option": "1"}, r'invalid dsn: invalid connection option "no_such_option"'),
    ],
    ids=["sslmode-bogus", "sslmode-require-without-ssl", "unknown-option"],
)
def test_connection_options_libpq_rejects_are_refused_at_once(database_url, query, pattern):
    _refused(_url(database_url, query=query), pattern)


def test_a_role_that_may_not_log_in_or_connect_is_refused_at_once(database_url, admin, fresh_url):
    nologin, noconnect = (f"rt_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("nologin", "noconnect"))
    database = sa.engine.make_url(fresh_url).database
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{nologin}" NOLOGIN'))
        conn.execute(sa.text(f'CREATE ROLE "{noconnect}" LOGIN'))
        conn.execute(sa.text(f'REVOKE CONNECT ON DATABASE "{database}" FROM PUBLIC'))
    try:
        _refused(_url(database_url, username=nologin), rf'role "{nologin}" is not permitted to log in')
        _refused(_url(fresh_url, username=noconnect), rf'permission denied for database "?{database}"?')
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP ROLE "{nologin}"'))
            conn.execute(sa.text(f'DROP ROLE "{noconnect}"'))


def test_a_missing_grant_on_a_table_is_refused_not_retried(database_url, admin, store):
    """SQLSTATE 42501 in a statement (the role may connect, not read tasks): permanent too."""
    role = f"rt_reader_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        _refused(_url(database_url, username=role), r"permission denied for (table|relation) \w+")
    finally:
        engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:  # privileges it may hold on the test database's schema objects
            conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP ROLE "{role}"'))


def test_nobody_listening_is_an_outage_retried_then_unavailable(database_url):
    settings = TEST_SETTINGS.with_(store={"op_retries": 2, "op_retry_base_s": 0.01, "connect_timeout_s": 2})
    with Store(_url(database_url, host="127.0.0.1", port=1), settings=settings) as s:
        with pytest.raises(StoreUnavailable, match=r"store stats: database unavailable after 3 tries: .*port 1 failed"):
            s.stats()
        assert s.transient_errors == 3


# --- the schema --------------------------------------------------------------------------------


def test_an_unmigrated_database_says_to_run_db_upgrade(fresh_url):
    with Store(fresh_url, settings=SLOW_RETRIES) as s:
        for call in (s.stats, lambda: s.list_tasks(), lambda: s.submit([NewTask("s3://bkt/a.wav", "s3://bkt/out/a")])):
            with pytest.raises(SchemaOutOfDate, match=r"run `raytranscribe db upgrade`$"):
                call()
        no_schema = r"^the database has no raytranscribe schema: run `raytranscribe db upgrade`$"
        with pytest.raises(SchemaOutOfDate, match=no_schema):
            s.check_ready()
        assert s.transient_errors == 0


def test_check_ready_wants_this_versions_schema(fresh_url):
    with Store(fresh_url, settings=TEST_SETTINGS) as s:
        s.upgrade("0001")
        older = r"^the database schema is at revision 0001, this raytranscribe needs \d{4}: run `raytranscribe db upgrade`"
        with pytest.raises(SchemaOutOfDate, match=older):
            s.check_ready()
        s.upgrade()
        s.check_ready()  # at head: nothing to say


def test_check_ready_on_an_unreachable_database_is_unavailable(database_url):
    settings = TEST_SETTINGS.with_(store={"op_retries": 1, "op_retry_base_s": 0.01})
    with Store(_url(database_url, host="127.0.0.1", port=1), settings=settings) as s:
        with pytest.raises(StoreUnavailable, match=r"^store current_revision: database unavailable after 2 tries"):
            s.check_ready()
