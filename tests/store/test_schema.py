"""Migrations, metadata, the enum mirror, and the rules the database enforces on its own."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from raytranscribe.errors import IllegalTransition
from raytranscribe.local import embedded_postgres_url
from raytranscribe.store import NewTask, Store, TaskStatus
from raytranscribe.store.models import Base
from tests.support.db import TEST_SETTINGS, create_database, drop_database

HEAD = "0010"  # the newest migration; an older database must be brought exactly here


def _diffs(url: str) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            mc = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(mc, Base.metadata)
    finally:
        engine.dispose()


@pytest.fixture
def fresh_url(database_url):
    """An empty, unmigrated database on the same server as the session database."""
    admin = sa.engine.make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
    url = create_database(admin, prefix="rt_mig")
    yield url
    drop_database(url)


def test_migrated_schema_equals_models_metadata(database_url):
    assert _diffs(database_url) == []


def test_enum_mirrors_task_status(store):
    with store.db.engine.connect() as conn:
        labels = conn.execute(sa.text("SELECT enum_range(NULL::task_status)::text[]")).scalar_one()
    assert labels == [s.value for s in TaskStatus]
    assert labels == ["pending", "in_progress", "completed", "failed", "dead", "cancelled"]


def test_upgrade_empty_database_is_idempotent(fresh_url):
    store = Store(fresh_url, settings=TEST_SETTINGS)
    try:
        assert store.current_revision() is None
        store.upgrade()
        assert store.current_revision() == HEAD
        store.upgrade()  # second run: nothing to do, no error
        assert store.current_revision() == HEAD
    finally:
        store.close()
    assert _diffs(fresh_url) == []


def test_upgrade_older_database_keeps_rows_and_adds_the_rest(fresh_url):
    store = Store(fresh_url, settings=TEST_SETTINGS)
    try:
        store.upgrade("0001")
        assert store.current_revision() == "0001"
        # At 0001 the schema really is older: result columns, side tables and indexes are missing,
        # and task_attempts still has its surrogate id and the unique key that became its primary key.
        diff_kinds = sorted({d[0] for d in _diffs(fresh_url) if isinstance(d, tuple)})
        assert diff_kinds == ["add_column", "add_index", "add_table", "remove_column", "remove_constraint"]
        with store.db.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO tasks (input_uri, output_uri, engine, model, max_retries, backoff_factor, dedupe_key)"
                    " VALUES ('s3://old-bucket/a.wav', 's3://old-bucket/out/a', 'faster-whisper', 'tiny.en', 2, 2.0, 'k1')"
                )
            )
            # No trigger yet at 0001: an illegal jump goes through.
            conn.execute(sa.text("UPDATE tasks SET status = 'completed'"))
            conn.execute(sa.text("UPDATE tasks SET status = 'pending'"))
        store.upgrade()
        assert store.current_revision() == HEAD
        task = store.get(1)
        assert (task.input_uri, task.status, task.max_retries, task.output_uris) == (
            "s3://old-bucket/a.wav", TaskStatus.PENDING, 2, ()
        )
        claimed = store.claim(1, "w", lease_s=10)
        assert [(c.id, c.attempt) for c in claimed] == [(1, 1)]
        # Now the trigger exists.
        with pytest.raises(sa.exc.DBAPIError, match="illegal task status transition completed -> pending"):
            with store.db.engine.begin() as conn:
                conn.execute(sa.text("UPDATE tasks SET status = 'completed', lease_owner = NULL, "
                                     "lease_expires_at = NULL"))
                conn.execute(sa.text("UPDATE tasks SET status = 'pending'"))
    finally:
        store.close()
    assert _diffs(fresh_url) == []


def test_concurrent_upgrades_are_serialised(fresh_url):
    errors: list[BaseException] = []
    stores = [Store(fresh_url, settings=TEST_SETTINGS) for _ in range(3)]

    def run(s: Store) -> None:
        try:
            s.upgrade()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert [s.current_revision() for s in stores] == [HEAD] * 3
    finally:
        for s in stores:
            s.close()


ILLEGAL = [
    ("pending", "completed"),
    ("pending", "failed"),
    ("pending", "dead"),
    ("completed", "pending"),
    ("completed", "failed"),
    ("dead", "in_progress"),
    ("cancelled", "completed"),
    ("failed", "completed"),
]


def _insert_with_status(conn, status: str) -> int:
    extra = {
        "in_progress": ", attempt = attempt + 1, lease_owner = 'w', lease_expires_at = now() + interval '1 minute'",
        "failed": ", retry_at = now()",
    }
    task_id = conn.execute(
        sa.text(
            "INSERT INTO tasks (input_uri, output_uri, engine, model, max_retries, backoff_factor, dedupe_key) "
            "VALUES ('s3://bkt/a.wav', 's3://bkt/o', 'faster-whisper', 'tiny.en', 3, 2, md5(random()::text)) "
            "RETURNING id"
        )
    ).scalar_one()
    # Walk a legal path to the starting status.
    path = {
        "pending": [],
        "in_progress": ["in_progress"],
        "completed": ["in_progress", "completed"],
        "failed": ["in_progress", "failed"],
        "dead": ["in_progress", "dead"],
        "cancelled": ["cancelled"],
    }[status]
    for step in path:
        conn.execute(
            sa.text(f"UPDATE tasks SET status = '{step}' {extra.get(step, '')} WHERE id = :id"), {"id": task_id}
        )
    return task_id


@pytest.mark.parametrize(("old", "new"), ILLEGAL)
def test_database_refuses_illegal_transition_via_raw_sql(store, old, new):
    with store.db.engine.begin() as conn:
        task_id = _insert_with_status(conn, old)
    with pytest.raises(sa.exc.DBAPIError) as info:
        with store.db.engine.begin() as conn:
            conn.execute(
                sa.text(f"UPDATE tasks SET status = '{new}', retry_at = now(), lease_owner = 'x', "
                        "lease_expires_at = now() WHERE id = :id"),
                {"id": task_id},
            )
    assert info.value.orig.pgcode == "RT001"
    assert f"illegal task status transition {old} -> {new} (task {task_id})" in str(info.value.orig)
    assert store.get(task_id).status == TaskStatus(old)


def test_every_legal_transition_is_accepted(store):
    legal = {
        "pending": ["in_progress", "cancelled"],
        "in_progress": ["completed", "failed", "dead", "pending", "cancelled"],
        "failed": ["in_progress", "pending", "cancelled", "dead"],
        "dead": ["pending"],
        "cancelled": ["pending"],
    }
    done = []
    for old, news in legal.items():
        for new in news:
            with store.db.engine.begin() as conn:
                task_id = _insert_with_status(conn, old)
                conn.execute(
                    sa.text(f"UPDATE tasks SET status = '{new}', retry_at = now(), lease_owner = 'x', "
                            "lease_expires_at = now() WHERE id = :id"),
                    {"id": task_id},
                )
            done.append((old, new, store.get(task_id).status.value))
    assert done == [(o, n, n) for o, ns in legal.items() for n in ns]


def test_store_maps_trigger_error_to_illegal_transition(store):
    with store.db.engine.begin() as conn:
        task_id = _insert_with_status(conn, "completed")
    sql = sa.text("UPDATE tasks SET status = 'pending' WHERE id = :id")
    with pytest.raises(IllegalTransition, match=r"illegal task status transition completed -> pending") as info:
        store.db.run("raw", lambda conn: conn.execute(sql, {"id": task_id}))
    assert info.value.__cause__.orig.pgcode == "RT001"
    assert store.transient_errors == 0  # not retried


def test_attempt_counter_may_not_go_back(store):
    with store.db.engine.begin() as conn:
        task_id = _insert_with_status(conn, "in_progress")
    with pytest.raises(sa.exc.DBAPIError, match="attempt of task .* may not go back from 1 to 0"):
        with store.db.engine.begin() as conn:
            conn.execute(sa.text("UPDATE tasks SET attempt = 0 WHERE id = :id"), {"id": task_id})


@pytest.mark.parametrize(
    ("assignment", "constraint"),
    [
        ("retries = -1", "ck_tasks_retries_nonnegative"),
        ("max_retries = -1", "ck_tasks_max_retries_nonnegative"),
        ("retries = 4", "ck_tasks_retries_within_max"),
        ("backoff_factor = 0.5", "ck_tasks_backoff_factor_min"),
        ("status = 'in_progress'", "ck_tasks_in_progress_has_lease"),
    ],
)
def test_check_constraints(store, assignment, constraint):
    with store.db.engine.begin() as conn:
        task_id = _insert_with_status(conn, "pending")
    with pytest.raises(sa.exc.IntegrityError, match=constraint):
        with store.db.engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE tasks SET {assignment} WHERE id = :id"), {"id": task_id})


def test_failed_requires_retry_at(store):
    with store.db.engine.begin() as conn:
        task_id = _insert_with_status(conn, "in_progress")
    with pytest.raises(sa.exc.IntegrityError, match="ck_tasks_failed_has_retry_at"):
        with store.db.engine.begin() as conn:
            conn.execute(sa.text("UPDATE tasks SET status = 'failed', retry_at = NULL WHERE id = :id"), {"id": task_id})


def test_embedded_postgres_fallback(tmp_path: Path):
    """The path taken on machines without a server: start embedded-postgres, migrate, submit, claim."""
    from embedded_postgres import get_server

    server_url = embedded_postgres_url(tmp_path)
    try:
        url = create_database(server_url, prefix="rt_emb")
        store = Store(url, settings=TEST_SETTINGS)
        try:
            store.upgrade()
            report = store.submit([NewTask("s3://emb-bucket/a.wav", "s3://emb-bucket/out/a")])
            assert report.inserted == (1,)
            claimed = store.claim(5, "embedded-test", lease_s=30)
            assert [(c.id, c.attempt, c.input_uri) for c in claimed] == [(1, 1, "s3://emb-bucket/a.wav")]
            assert store.get(1).status is TaskStatus.IN_PROGRESS
        finally:
            store.close()
    finally:
        server = get_server(tmp_path / "pgdata")
        server.cleanup_mode = "stop"  # embedded_postgres_url leaves it running for reuse; tests do not
        server.cleanup()
