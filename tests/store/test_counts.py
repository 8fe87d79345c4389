"""Counts and status side rows kept by the database (migration 0006), and the reads built on them.

The heartbeat and ``status`` read per-status counts, audio seconds and failure reasons that the
statement triggers keep, and ``tasks --status`` reads ids from the side rows, so none of them grows
with the table's history. The counts must stay exact whoever changes ``tasks``: every store
operation, an operator's SQL, DELETE, TRUNCATE, racing claimers; and the migration must backfill
them and come back down.
"""

from __future__ import annotations

import json
import random
import threading
import time
from decimal import Decimal

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from raytranscribe.contracts import Outcome, TaskResult
from raytranscribe.errors import Failure, Stage
from raytranscribe.store import NewTask, Store, TaskStatus
from raytranscribe.store.store import MIGRATIONS_DIR
from tests.support.db import TEST_SETTINGS, complete, create_database, drop_database, fail, side_table_violations

UNAVAILABLE = Failure(Stage.DOWNLOAD, "ServerError", "503 Service Unavailable", transient=True, http_status=503)
MISSING = Failure(Stage.DOWNLOAD, "InputMissing", "404 Not Found", transient=False, http_status=404)
BROKEN = Failure(Stage.DECODE, "AudioDecodeError", "not audio", transient=False)


def result(seconds: float = 1.5) -> TaskResult:
    return TaskResult(seconds, "en", ("s3://bkt/out/a.json",), "hello")


def new(i: int, **kw) -> NewTask:
    return NewTask(f"s3://bkt/counts/{i:05d}.wav", f"s3://bkt/out/{i:05d}", **kw)


def sql(store: Store, statement: str, **params) -> list[tuple]:
    with store.db.engine.begin() as conn:
        rows = conn.execute(sa.text(statement), params)
        return [tuple(r) for r in rows] if rows.returns_rows else []


# What the counts must say, computed from tasks itself; and what they say. Both in one snapshot.
_WANT_COUNTS = """
SELECT engine, model, CAST(status AS text), count(*), COALESCE(sum(CAST(audio_duration_s AS numeric)), 0)
FROM tasks GROUP BY 1, 2, 3
"""
_HAVE_COUNTS = """
SELECT engine, model, CAST(status AS text), CAST(sum(tasks) AS bigint), sum(audio_s)
FROM task_counts GROUP BY 1, 2, 3 HAVING sum(tasks) <> 0 OR sum(audio_s) <> 0
"""
_WANT_REASONS = """
SELECT failure_reason, count(*) FROM tasks
WHERE status IN ('failed', 'dead') AND failure_reason IS NOT NULL GROUP BY 1
"""
_HAVE_REASONS = (
    "SELECT failure_reason, CAST(sum(tasks) AS bigint) FROM task_failure_counts GROUP BY 1 HAVING sum(tasks) <> 0"
)
_WANT_STOPPED = "SELECT CAST(status AS text), id FROM tasks WHERE status IN ('dead', 'cancelled')"
_HAVE_STOPPED = "SELECT CAST(status AS text), task_id FROM task_stopped"


def count_differences(conn: sa.Connection) -> list[tuple[str, object, object]]:
    """Every way the counts and task_stopped disagree with tasks (on ``conn``'s snapshot); [] when exact."""

    out: list[tuple[str, object, object]] = []
    want_counts = {(r[0], r[1], r[2]): (int(r[3]), Decimal(r[4])) for r in conn.execute(sa.text(_WANT_COUNTS))}
    have_counts = {(r[0], r[1], r[2]): (int(r[3]), Decimal(r[4])) for r in conn.execute(sa.text(_HAVE_COUNTS))}
    for key in sorted(set(want_counts) | set(have_counts)):
        if want_counts.get(key) != have_counts.get(key):
            out.append((f"count {key}", want_counts.get(key), have_counts.get(key)))
    want_reasons = dict(tuple(r) for r in conn.execute(sa.text(_WANT_REASONS)))
    have_reasons = dict(tuple(r) for r in conn.execute(sa.text(_HAVE_REASONS)))
    for key in sorted(set(want_reasons) | set(have_reasons)):
        if want_reasons.get(key) != have_reasons.get(key):
            out.append((f"reason {key!r}", want_reasons.get(key), have_reasons.get(key)))
    want_stopped = {tuple(r) for r in conn.execute(sa.text(_WANT_STOPPED))}
    have_stopped = {tuple(r) for r in conn.execute(sa.text(_HAVE_STOPPED))}
    out += [("stopped row missing", s, None) for s in sorted(want_stopped - have_stopped)]
    out += [("stray stopped row", None, s) for s in sorted(have_stopped - want_stopped)]
    return out


def differences(store: Store) -> list[tuple[str, object, object]]:
    """count_differences in one REPEATABLE READ snapshot, plus the queue and lease rows of 0005."""
    with store.db.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        with conn.begin():
            out = count_differences(conn)
    return out + [(what, task_id, None) for what, task_id in side_table_violations(store)]


def by_status(store: Store) -> dict[TaskStatus, int]:
    counts = {s: 0 for s in TaskStatus}
    counts.update({TaskStatus(s): n for s, n in sql(store, "SELECT status, count(*) FROM tasks GROUP BY status")})
    return counts


def test_every_store_operation_keeps_the_counts_exact(store):
    store.submit([new(i) for i in range(10)] + [new(50, engine="openai-whisper", model="base")])
    assert differences(store) == []
    assert store.stats().counts == by_status(store)

    claimed = store.claim(8, "orch", lease_s=60)
    assert differences(store) == []
    assert store.renew([(c.id, c.attempt) for c in claimed], "orch", lease_s=120) == set()
    c = {x.id: x for x in claimed}
    store.record([
        Outcome(1, c[1].attempt, result=result(2.25)),
        Outcome(2, c[2].attempt, result=result(0.1)),
        Outcome(3, c[3].attempt, failure=UNAVAILABLE),  # failed, waiting for its retry
        Outcome(4, c[4].attempt, failure=MISSING),  # dead
        Outcome(5, c[5].attempt, failure=BROKEN),  # dead, another reason
    ])  # fmt: skip
    assert differences(store) == []
    assert store.release([(6, c[6].attempt)], "orch") == 1
    assert store.cancel([7, 9]).count == 2  # in progress, pending
    assert differences(store) == []
    sql(store, "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = 8")
    assert [r.task_id for r in store.reap()] == [8]
    assert differences(store) == []
    assert store.requeue([4, 7]).count == 2
    assert store.requeue(status=TaskStatus.DEAD).count == 1
    assert differences(store) == []

    s = store.stats()
    assert s.counts == by_status(store)
    assert s.audio_seconds_completed == 2.35
    assert s.retries_scheduled == 2  # tasks 3 and 8
    assert s.top_failure_reasons == (("download: 503 Service Unavailable", 1), ("lease: lease expired", 1))
    assert store.stats(top=0).top_failure_reasons == ()


def test_an_operators_own_sql_keeps_the_counts_exact_too(store):
    store.submit([new(i) for i in range(8)])
    while claimed := store.claim(3, "orch", lease_s=60):
        store.record([Outcome(c.id, c.attempt, result=result(1.0 + c.id)) for c in claimed[:2]]
                     + [Outcome(c.id, c.attempt, failure=MISSING) for c in claimed[2:]])  # fmt: skip
    assert differences(store) == []
    # Statements the application never writes: a result corrected by hand, a reason reworded,
    # a dead task requeued in bulk, rows inserted straight into any status, deletions.
    sql(store, "UPDATE tasks SET audio_duration_s = 10.125 WHERE id = 1")
    sql(store, "UPDATE tasks SET audio_duration_s = NULL WHERE id = 2")
    sql(store, "UPDATE tasks SET failure_reason = 'reworded' WHERE id = 3")
    sql(store, "UPDATE tasks SET priority = priority + 1")  # every row, no status change
    assert differences(store) == []
    sql(store, "UPDATE tasks SET status = 'pending', failure_reason = NULL, completed_at = NULL WHERE id = 6")
    sql(
        store,
        "INSERT INTO tasks (input_uri, output_uri, engine, model, max_retries, backoff_factor, dedupe_key, status, "
        "failure_reason, audio_duration_s) VALUES "
        "('s3://bkt/x/1.wav', 's3://bkt/o/1', 'faster-whisper', 'base', 2, 2, 'k1', 'dead', 'by hand', NULL), "
        "('s3://bkt/x/2.wav', 's3://bkt/o/2', 'faster-whisper', 'base', 2, 2, 'k2', 'completed', NULL, 3.5), "
        "('s3://bkt/x/3.wav', 's3://bkt/o/3', 'faster-whisper', 'base', 2, 2, 'k3', 'cancelled', NULL, NULL)",
    )
    assert differences(store) == []
    sql(store, "DELETE FROM task_attempts WHERE task_id IN (1, 3)")
    sql(store, "DELETE FROM tasks WHERE id IN (1, 3)")  # a completed and a dead task
    sql(store, "DELETE FROM tasks WHERE status = 'cancelled'")
    assert differences(store) == []
    assert store.stats().counts == by_status(store)
    with store.db.engine.begin() as conn:  # a transaction of several statements, rolled back
        conn.execute(sa.text("DELETE FROM tasks WHERE status = 'completed'"))
        conn.execute(sa.text("UPDATE tasks SET status = 'cancelled', completed_at = now() WHERE status = 'pending'"))
        assert count_differences(conn) == []  # its own changes, counted inside it
        conn.rollback()
    assert differences(store) == []
    sql(store, "TRUNCATE tasks, task_attempts RESTART IDENTITY")
    assert sql(store, "SELECT count(*) FROM task_counts") == [(0,)]
    assert sql(store, "SELECT count(*) FROM task_failure_counts") == [(0,)]
    assert sql(store, "SELECT count(*) FROM task_stopped") == [(0,)]
    assert store.stats().total == 0


def test_counts_stay_exact_while_claimers_recorders_and_operators_race(store, make_store):
    """Each snapshot's counts equal its GROUP BY while four claimers record completions, retries and
    dead tasks and an operator cancels and requeues; and the sharded count rows deadlock nobody."""
    n, other = 900, 60
    store.submit([new(i) for i in range(n)] + [new(5000 + i, model="base") for i in range(other)])
    pool = [("faster-whisper", "tiny.en")]
    stop = threading.Event()
    operator_done = threading.Event()
    errors: list[BaseException] = []
    stores: list[Store] = []
    seen: list[list] = []

    def claimer(name: str, seed: int) -> None:
        s = make_store(TEST_SETTINGS)
        stores.append(s)
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                batch = s.claim(9, name, lease_s=60, pairs=pool)
                if not batch:
                    time.sleep(0.005)
                    continue
                outcomes = []
                for c in batch:
                    roll = rng.random()
                    failure = UNAVAILABLE if roll < 0.15 else MISSING if roll < 0.2 else None
                    outcomes.append(Outcome(c.id, c.attempt, result=None if failure else result(rng.random()),
                                            failure=failure))  # fmt: skip
                s.record(outcomes)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def operator() -> None:
        # Cancels and requeues the tasks of a pool nobody claims, and requeues dead tasks of the busy
        # one (never queued, so never held by a claim): the same count rows as the claimers, and none
        # of the queue-row races between an operator and a claim that test_side_tables covers.
        s = make_store(TEST_SETTINGS)
        stores.append(s)
        rng = random.Random(3)
        try:
            for _ in range(40):
                ids = rng.sample(range(n + 1, n + other + 1), 6)
                s.cancel(ids[:3])
                s.requeue(ids[3:])
                s.requeue(status=TaskStatus.DEAD)
                time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)
        finally:
            operator_done.set()

    def checker() -> None:
        try:
            while not stop.is_set():
                seen.append(differences(store))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"c{i}", i)) for i in range(4)]
    threads += [threading.Thread(target=operator), threading.Thread(target=checker)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and not (operator_done.is_set() and store.outstanding(pool) == 0):
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    assert store.outstanding(pool) == 0
    assert len(seen) >= 3 and all(d == [] for d in seen), [d for d in seen if d][:1]
    assert differences(store) == []
    counts = store.stats().counts
    assert counts == by_status(store) and sum(counts.values()) == n + other
    assert counts[TaskStatus.COMPLETED] > 0 and counts[TaskStatus.CANCELLED] > 0
    outcomes = dict(sql(store, "SELECT outcome, count(*) FROM task_attempts GROUP BY outcome"))
    assert outcomes["failed"] > 0 and outcomes["dead"] > 0  # retries and dead tasks (requeued) happened
    # A deadlock would have been survived as a transient error (40P01) and counted here.
    assert [s.transient_errors for s in stores] == [0] * len(stores)


def test_list_tasks_of_each_status_reads_the_side_rows(store):
    store.submit([new(i) for i in range(12)])
    claimed = {c.id: c for c in store.claim(8, "orch", lease_s=60)}
    store.record([Outcome(1, claimed[1].attempt, result=result()), Outcome(2, claimed[2].attempt, failure=MISSING),
                  Outcome(3, claimed[3].attempt, failure=UNAVAILABLE), Outcome(4, claimed[4].attempt, result=result())])
    store.cancel([5, 11])  # fmt: skip
    want = {s: [r[0] for r in sql(store, "SELECT id FROM tasks WHERE status = :s ORDER BY id", s=s.value)]
            for s in TaskStatus}  # fmt: skip
    assert want == {
        TaskStatus.PENDING: [9, 10, 12],
        TaskStatus.IN_PROGRESS: [6, 7, 8],
        TaskStatus.COMPLETED: [1, 4],
        TaskStatus.FAILED: [3],
        TaskStatus.DEAD: [2],
        TaskStatus.CANCELLED: [5, 11],
    }
    for status, ids in want.items():
        views = store.list_tasks(status=status)
        assert [v.id for v in views] == ids and {v.status for v in views} <= {status}
        assert [v.id for v in store.list_tasks(status=status, limit=1)] == ids[:1]
    assert [v.id for v in store.list_tasks(limit=5)] == [1, 2, 3, 4, 5]


def test_heartbeat_pools_and_outstanding_come_from_the_counts(store):
    store.submit([
        new(1), new(2),
        NewTask("s3://bkt/counts/x.wav", "s3://bkt/out/x", engine="openai-whisper", model="base"),
        NewTask("s3://bkt/counts/y.wav", "s3://bkt/out/y", model="base"),
    ])  # fmt: skip
    (c,) = store.claim(1, "orch", lease_s=60, pairs=[("openai-whisper", "base")])
    fail(store, c.id, c.attempt, UNAVAILABLE)
    sql(store, "UPDATE tasks SET retry_at = now() + interval '1 hour' WHERE id = :i", i=c.id)  # its retry is later
    (d,) = store.claim(1, "orch", lease_s=60, pairs=[("faster-whisper", "base")])
    assert store.outstanding() == 4
    assert store.outstanding([("openai-whisper", "base")]) == 1
    assert store.outstanding([("faster-whisper", "base"), ("faster-whisper", "tiny.en")]) == 3
    assert store.outstanding([("nope", "none")]) == 0
    # openai-whisper/base waits for a retry an hour away: no work now. faster-whisper/base is in flight.
    assert store.claimable_pairs() == [("faster-whisper", "base"), ("faster-whisper", "tiny.en")]
    sql(store, "UPDATE tasks SET retry_at = now() - interval '1 second' WHERE id = :i", i=c.id)  # now due
    assert store.claimable_pairs() == [
        ("faster-whisper", "base"), ("faster-whisper", "tiny.en"), ("openai-whisper", "base")]  # fmt: skip
    complete(store, d.id, d.attempt, result())
    assert ("faster-whisper", "base") not in store.claimable_pairs()
    assert store.stats().oldest_pending_age_s is not None
    store.cancel([1, 2])
    assert store.stats().oldest_pending_age_s is None  # only a failed task is queued


def test_the_queue_vacuum_drops_reasons_no_task_has_any_more(store):
    store.submit([new(i) for i in range(6)])
    store.record([Outcome(c.id, c.attempt, failure=MISSING if c.id % 2 else BROKEN)
                  for c in store.claim(6, "orch", lease_s=60)])  # fmt: skip
    store.requeue([1, 3, 5])  # no task is dead for the 404 any more
    assert len(sql(store, "SELECT * FROM task_failure_counts")) == 2
    store.vacuum_queue()
    left = [r[0] for r in sql(store, "SELECT failure_reason FROM task_failure_counts")]
    assert left == ["decode: not audio (permanent error)"]
    assert store.stats().top_failure_reasons == (("decode: not audio (permanent error)", 3),)
    assert differences(store) == []


# --- the reads do not grow with the table -------------------------------------------------------

BIG = 30000  # settled tasks: over a thousand pages of tasks
QUEUED = 15000  # pending tasks: over a hundred pages of task_queue


def _bulk_history(store: Store) -> None:
    """BIG completed and QUEUED pending tasks made in SQL (a long-lived deployment with a backlog),
    counted by the triggers like any other rows."""
    sql(
        store,
        "INSERT INTO tasks (input_uri, output_uri, engine, model, max_retries, backoff_factor, dedupe_key, status, "
        "attempt, completed_at, audio_duration_s) "
        "SELECT 's3://bkt/hist/' || g || '.wav', 's3://bkt/out/' || g, 'faster-whisper', 'tiny.en', 2, 2, 'h' || g, "
        "CASE WHEN g <= :n THEN CAST('completed' AS task_status) ELSE 'pending' END, "
        "CASE WHEN g <= :n THEN 1 ELSE 0 END, CASE WHEN g <= :n THEN now() END, CASE WHEN g <= :n THEN 2.0 END "
        "FROM generate_series(1, :n + :q) g",
        n=BIG,
        q=QUEUED,
    )
    sql(store, "ANALYZE tasks")
    sql(store, "ANALYZE task_queue")


def _buffers_of(store: Store, op) -> list[tuple[str, int]]:
    """(statement, shared buffers it touched) for every statement ``op`` runs, each re-run under EXPLAIN."""
    captured: list[tuple[str, object]] = []

    def listen(conn, cursor, statement, parameters, context, executemany):
        captured.append((statement, parameters))

    sa.event.listen(store.db.engine, "before_cursor_execute", listen)
    try:
        op()
    finally:
        sa.event.remove(store.db.engine, "before_cursor_execute", listen)
    out = []
    raw = store.db.engine.raw_connection()
    try:
        with raw.cursor() as cur:
            for statement, parameters in captured:
                if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
                    continue
                cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters)
                plan = cur.fetchone()[0]
                plan = json.loads(plan) if isinstance(plan, str) else plan
                top = plan[0]["Plan"]
                out.append((statement, top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)))
        raw.rollback()
    finally:
        raw.close()
    return out


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda s: s.stats(top=0), id="heartbeat-stats"),
        pytest.param(lambda s: s.outstanding(), id="outstanding"),
        pytest.param(lambda s: s.outstanding([("faster-whisper", "tiny.en")]), id="outstanding-pairs"),
        pytest.param(lambda s: s.claimable_pairs(), id="claimable-pairs"),
        pytest.param(lambda s: s.stats(), id="status"),
        pytest.param(lambda s: s.list_tasks(status=TaskStatus.DEAD), id="tasks-dead"),
        pytest.param(lambda s: s.list_tasks(status=TaskStatus.FAILED), id="tasks-failed"),
        pytest.param(lambda s: s.list_tasks(status=TaskStatus.PENDING, limit=5), id="tasks-pending"),
        pytest.param(lambda s: s.list_tasks(status=TaskStatus.IN_PROGRESS), id="tasks-in-progress"),
    ],
)
def test_reads_touch_a_handful_of_pages_however_long_the_history(store, read):
    """30,000 completed and 15,000 pending tasks: each read touches a few dozen buffers, not the tables."""
    _bulk_history(store)
    claimed = store.claim(3, "orch", lease_s=60)
    store.record([Outcome(claimed[0].id, claimed[0].attempt, failure=MISSING)])
    pages = dict(sql(store, "SELECT relname, pg_relation_size(oid) / current_setting('block_size')::int FROM pg_class "
                            "WHERE relname IN ('tasks', 'task_queue')"))  # fmt: skip
    assert pages["tasks"] > 1000 and pages["task_queue"] > 100
    touched = _buffers_of(store, lambda: read(store))
    assert touched and all(n < 60 for _, n in touched), touched


# --- the migration ---------------------------------------------------------------------------


def _alembic(store: Store, action, revision: str) -> None:
    def tx(conn: sa.Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = conn
        action(cfg, revision)

    with store.db.engine.begin() as conn:
        tx(conn)


def _claim_at_0005(store: Store, where: str) -> list[int]:
    rows = sql(store, "UPDATE tasks SET status = 'in_progress', attempt = attempt + 1, lease_owner = 'orch', "
                      f"lease_expires_at = now() + interval '60 seconds', started_at = now() WHERE {where} RETURNING id")
    return sorted(r[0] for r in rows)


def _finish_at_0005(store: Store, task_id: int, changes: str) -> None:
    sql(store, f"UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL, {changes} WHERE id = :id", id=task_id)


def test_upgrade_counts_existing_rows_and_downgrade_goes_back_to_0005(database_url):
    admin = sa.engine.make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
    url = create_database(admin, prefix="rt_mig")
    s = Store(url, settings=TEST_SETTINGS)
    try:
        s.upgrade("0005")
        s.submit([new(i) for i in range(9)] + [new(20, model="base")])  # at 0005
        # Today's claim and record read columns of later migrations: the work is done in 0005's own terms.
        _claim_at_0005(s, "id <= 7")
        _finish_at_0005(s, 1, "status = 'completed', completed_at = now(), audio_duration_s = 3.5")
        _finish_at_0005(s, 2, "status = 'dead', completed_at = now(), failure_reason = 'download: 404 Not Found'")
        _finish_at_0005(s, 3, "status = 'failed', retries = 1, failure_reason = 'download: 503 Service Unavailable', "
                              "retry_at = now() + interval '1 hour'")  # waits through the test
        _finish_at_0005(s, 4, "status = 'completed', completed_at = now(), audio_duration_s = 1.5")
        s.cancel([5, 8])  # fmt: skip
        before = by_status(s)
        s.upgrade("0006")
        assert s.current_revision() == "0006"
        assert differences(s) == []
        assert s.stats().counts == before
        assert s.stats().audio_seconds_completed == 5.0
        # What `tasks --status` reads (task rows themselves carry columns of later migrations).
        stopped = "SELECT task_id FROM task_stopped WHERE status = :s ORDER BY task_id"
        assert sql(s, stopped, s="dead") == [(2,)]
        assert sql(s, stopped, s="cancelled") == [(5,), (8,)]

        _alembic(s, command.downgrade, "0005")
        s.close()
        s = Store(url, settings=TEST_SETTINGS)  # fresh connections: no plans of the 0006 trigger
        assert s.current_revision() == "0005"
        tables = {r[0] for r in sql(s, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert not tables & {"task_counts", "task_failure_counts", "task_stopped"}
        # 0005's trigger is back and keeps its side tables: work goes on at 0005.
        assert _claim_at_0005(s, "status = 'pending'") == [9, 10]
        for task_id in (9, 10):
            _finish_at_0005(s, task_id, "status = 'completed', completed_at = now(), audio_duration_s = 1.5")
        assert sql(s, "SELECT count(*) FROM task_queue") == [(1,)]  # task 3, waiting for its retry
        s.upgrade()
        assert differences(s) == []
        assert s.stats().counts == by_status(s)
    finally:
        s.close()
        drop_database(url)
