"""The one-shot reads through psycopg2 alone (store.reader): what the Store reads, the way it reads
it, with the same errors; URLs and statements handed to psycopg2 as SQLAlchemy hands them."""

from __future__ import annotations

import dataclasses
import uuid
from importlib.resources import files

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import psycopg2 as pg_psycopg2

from raytranscribe.contracts import TaskResult
from raytranscribe.errors import Failure, SchemaOutOfDate, Stage, StoreMisconfigured, StoreUnavailable
from raytranscribe.store import NewTask, TaskStatus
from raytranscribe.store.reader import Reader
from raytranscribe.store.sql import load, pyformat
from raytranscribe.store.url import psycopg2_args, sqlalchemy_url
from tests.support.db import TEST_SETTINGS, complete, create_database, drop_database, fail


def _reader(url: str, **store: float) -> Reader:
    args = psycopg2_args(url)
    assert args is not None
    return Reader(args, TEST_SETTINGS.with_(store=store).store if store else TEST_SETTINGS.store)


def _url(database_url: str, **parts) -> str:
    return sa.engine.make_url(database_url).set(**parts).render_as_string(hide_password=False)


def test_the_reader_reads_what_the_store_reads(store, database_url):
    store.submit([NewTask(f"s3://bkt/r/{i}.wav", f"s3://bkt/o/{i}", priority=i % 2) for i in range(6)])
    claimed = store.claim(3, "orch", lease_s=60)
    complete(store, claimed[0].id, claimed[0].attempt, TaskResult(12.5, "en", ()), actor="a1", timings=(("decode", 0.5),))
    fail(store, claimed[1].id, claimed[1].attempt, Failure(Stage.DOWNLOAD, "HTTPError", "404 Not Found", transient=False))
    store.publish_orchestrator("orch", {"in_flight": 1, "actors": []}, ttl_s=60)
    with _reader(database_url) as reader:
        read, stored = reader.stats(), store.stats()
        assert read.oldest_pending_age_s == pytest.approx(stored.oldest_pending_age_s, abs=30)  # read moments apart
        assert dataclasses.replace(read, oldest_pending_age_s=None) == dataclasses.replace(stored, oldest_pending_age_s=None)
        assert reader.orchestrators() == store.orchestrators() != []
        for status in (None, *TaskStatus):
            assert reader.list_tasks(status=status, limit=4) == store.list_tasks(status=status, limit=4)
        for task in claimed:
            assert reader.get(task.id) == store.get(task.id)
            assert reader.get(task.id).attempts  # type: ignore[union-attr]
        assert reader.get(10**9) is None


def test_a_lost_connection_is_read_again_on_a_new_one(store, database_url):
    app = f"rt-reader-{uuid.uuid4().hex[:8]}"
    args = psycopg2_args(database_url)
    assert args is not None
    with Reader(args, TEST_SETTINGS.store, application_name=app) as reader:
        assert reader.stats().total == 0
        killer = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
        with killer.connect() as conn:
            killed = conn.execute(
                sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :a"),
                {"a": app},
            ).scalar_one()
        killer.dispose()
        assert killed == 1
        assert reader.stats().total == 0


def test_a_refusal_raises_at_once_and_an_outage_after_the_retries(database_url):
    name = f"rt_nobody_{uuid.uuid4().hex[:8]}"
    with _reader(_url(database_url, username=name), op_retries=5, op_retry_base_s=0.5) as reader:
        with pytest.raises(StoreMisconfigured, match=rf'^store stats: .*role "{name}" does not exist.*not retried\)$'):
            reader.stats()
    with _reader(_url(database_url, host="127.0.0.1", port=1), op_retries=2, op_retry_base_s=0.01) as reader:
        with pytest.raises(StoreUnavailable, match=r"^store list_tasks: database unavailable after 3 tries: .*port 1 failed"):
            reader.list_tasks()


def test_an_unmigrated_database_says_to_run_db_upgrade(database_url):
    url = create_database(_url(database_url, database="postgres"), prefix="rt_reader")
    try:
        with _reader(url, op_retries=5, op_retry_base_s=0.5) as reader:
            for read in (reader.stats, reader.orchestrators, lambda: reader.get(1)):
                with pytest.raises(SchemaOutOfDate, match=r"no raytranscribe schema.*run `raytranscribe db upgrade`$"):
                    read()
    finally:
        drop_database(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:5432/db",
        "postgres://u:p%40ss@h/db?sslmode=require&application_name=x",
        "postgresql+psycopg2://u:p@ss@h:5/db",  # an unquoted "@" in the password: read as SQLAlchemy reads it
        "postgresql://[::1]:5433/x",
        "postgresql:///db?host=/run/postgresql",
        "postgresql://h",
        "postgresql://u:@h:5432/d%2Fb",
        "postgresql://h1,h2/db",
    ],
)
def test_psycopg2_args_are_what_sqlalchemy_connects_with(url):
    assert psycopg2_args(url) == pg_psycopg2.dialect().create_connect_args(sa.engine.make_url(sqlalchemy_url(url)))[1]


@pytest.mark.parametrize(
    "url", ["postgresql://h:99999/db", "postgresql://h:abc/db", "postgresql://h/db?host=a&host=b", "postgresql://h/db?host=/s"]
)
def test_a_url_that_is_not_plain_is_left_to_the_store(url):
    assert psycopg2_args(url) is None


def test_every_statement_goes_to_psycopg2_as_sqlalchemy_sends_it():
    dialect = pg_psycopg2.dialect()
    concerns = [f.name.removesuffix(".sql") for f in files("raytranscribe.store.sql").iterdir() if f.name.endswith(".sql")]
    statements = [sql for concern in concerns for sql in load(concern)._statements.values()]
    assert len(statements) > 40
    for sql in statements:
        assert pyformat(sql) == str(sa.text(sql).compile(dialect=dialect))
    assert pyformat("SELECT x::int, :a WHERE y LIKE 'a%'") == "SELECT x::int, %(a)s WHERE y LIKE 'a%%'"
