"""task_queue and task_leases (migration 0005): the database keeps them exact mirrors of tasks.

Claim order and lease expiry live in these narrow tables so the hot path's updates of ``tasks``
write no index entry. Nothing in the application writes them: statement triggers on ``tasks`` do,
so every operation of the store, an operator's ad-hoc SQL, DELETE and TRUNCATE keep them exact.
"""

from __future__ import annotations

import random
import threading
import time

import sqlalchemy as sa

from raytranscribe.contracts import Outcome, TaskResult
from raytranscribe.errors import Failure, Stage
from raytranscribe.store import NewTask, Store, TaskStatus
from tests.support.db import (
    TEST_SETTINGS,
    complete,
    create_database,
    drop_database,
    fail,
    hot_sql,
    side_table_violations,
)

RESULT = TaskResult(1.5, "en", ("s3://bkt/out/a.json",), "hello")
UNAVAILABLE = Failure(Stage.DOWNLOAD, "ServerError", "503 Service Unavailable", transient=True, http_status=503)
MISSING = Failure(Stage.DOWNLOAD, "InputMissing", "404 Not Found", transient=False, http_status=404)


def new(i: int, **kw) -> NewTask:
    return NewTask(f"s3://bkt/side/{i:05d}.wav", f"s3://bkt/out/{i:05d}", **kw)


def sql(store: Store, statement: str, **params) -> list[tuple]:
    with store.db.engine.begin() as conn:
        result = conn.execute(sa.text(statement), params)
        return [tuple(r) for r in result] if result.returns_rows else []


def side_rows(store: Store) -> tuple[list[int], list[tuple[int, int, str]]]:
    queued = [r[0] for r in sql(store, "SELECT task_id FROM task_queue ORDER BY task_id")]
    leased = sql(store, "SELECT task_id, attempt, owner FROM task_leases ORDER BY task_id")
    return queued, leased


def test_every_store_operation_keeps_the_side_tables_exact(store):
    store.submit([new(i) for i in range(8)] + [new(100, priority=5)])
    assert side_rows(store) == ([1, 2, 3, 4, 5, 6, 7, 8, 9], [])
    assert side_table_violations(store) == []

    claimed = store.claim(6, "orch", lease_s=60)
    assert [c.id for c in claimed] == [9, 1, 2, 3, 4, 5]  # priority first, then oldest
    assert side_rows(store) == ([6, 7, 8], [(i, 1, "orch") for i in (1, 2, 3, 4, 5, 9)])
    assert side_table_violations(store) == []

    by_id = {c.id: c for c in claimed}
    assert store.renew([(1, 1), (2, 1)], "orch", lease_s=600) == set()
    expiry = dict(sql(store, "SELECT task_id, expires_at FROM task_leases WHERE task_id IN (1, 2)"))
    assert expiry == dict(sql(store, "SELECT id, lease_expires_at FROM tasks WHERE id IN (1, 2)"))
    store.record([
        Outcome(1, 1, result=RESULT),  # completed: lease gone
        Outcome(2, 1, failure=UNAVAILABLE),  # failed: back in the queue at its retry_at
        Outcome(3, 1, failure=MISSING),  # dead: neither
    ])  # fmt: skip
    assert store.release([(4, by_id[4].attempt)], "orch") == 1  # pending again: queued, not leased
    assert store.cancel([5, 6]).changed == (5, 6)  # one in progress, one pending
    queued, leased = side_rows(store)
    assert (queued, leased) == ([2, 4, 7, 8], [(9, 1, "orch")])
    ready = dict(sql(store, "SELECT task_id, ready_at FROM task_queue"))
    assert ready[2] == store.get(2).retry_at  # a failed task is queued for its retry time
    assert side_table_violations(store) == []

    assert store.requeue([3, 5]).changed == (3, 5)  # dead and cancelled back to pending
    assert side_rows(store)[0] == [2, 3, 4, 5, 7, 8]
    sql(store, "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = 9")
    assert [(r.task_id, r.status) for r in store.reap()] == [(9, TaskStatus.FAILED)]
    assert side_rows(store)[1] == []
    assert side_table_violations(store) == []


def test_an_operators_own_sql_keeps_them_exact_too(store):
    store.submit([new(i) for i in range(6)])
    store.claim(2, "orch", lease_s=60)
    # Ad-hoc statements nobody in the application wrote: a reprioritisation, a manual requeue of a
    # running task, a hand-made retry time, a deletion and a lease stretched by hand.
    sql(store, "UPDATE tasks SET priority = 9 WHERE id = 5")
    sql(store, "UPDATE tasks SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL WHERE id = 1")
    sql(store, "UPDATE tasks SET lease_expires_at = lease_expires_at + interval '1 hour' WHERE id = 2")
    sql(store, "DELETE FROM task_attempts WHERE task_id = 6")
    sql(store, "DELETE FROM tasks WHERE id = 6")
    assert side_table_violations(store) == []
    assert sql(store, "SELECT priority FROM task_queue WHERE task_id = 5") == [(9,)]
    assert [c.id for c in store.claim(10, "orch", lease_s=60)] == [5, 1, 3, 4]
    assert side_table_violations(store) == []
    sql(store, "TRUNCATE tasks, task_attempts RESTART IDENTITY")
    assert side_rows(store) == ([], [])


def test_outstanding_and_pools_come_from_the_side_tables(store):
    store.submit([new(1), new(2), NewTask("s3://bkt/side/x.wav", "s3://bkt/out/x", engine="openai-whisper", model="base")])
    (c,) = store.claim(1, "orch", lease_s=60, pairs=[("openai-whisper", "base")])
    fail(store, c.id, c.attempt, UNAVAILABLE)
    sql(store, "UPDATE tasks SET retry_at = now() + interval '1 hour' WHERE id = :i", i=c.id)  # its retry is later
    assert store.outstanding() == 3
    assert store.outstanding([("openai-whisper", "base")]) == 1
    assert store.claimable_pairs() == [("faster-whisper", "tiny.en")]
    (d,) = store.claim(1, "orch", lease_s=60)
    assert store.claimable_pairs() == [("faster-whisper", "tiny.en")]  # one queued, one in flight
    complete(store, d.id, d.attempt, RESULT)
    assert store.outstanding([("faster-whisper", "tiny.en")]) == 1


def test_claim_and_complete_write_no_index_entry_into_tasks(store):
    """HOT updates: after claiming and completing 2,000 tasks the indexes of tasks have not grown."""
    store.submit([new(i) for i in range(2000)])
    sizes = "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index WHERE indrelid = 'tasks'::regclass"
    before = dict(sql(store, sizes))
    assert set(before) == {"pk_tasks", "uq_tasks_dedupe_key", "ix_tasks_input_uri", "ix_tasks_output_uri"}  # nothing names status
    while claimed := store.claim(100, "orch", lease_s=60):
        store.record([Outcome(c.id, c.attempt, result=RESULT) for c in claimed])
    assert store.stats().counts[TaskStatus.COMPLETED] == 2000
    assert dict(sql(store, sizes)) == before


def test_hot_path_plans_stay_index_scans_as_the_queue_grows(store, make_store):
    """A claim prepared while the queue was empty still walks the claim-order index, not the table."""
    store = make_store(TEST_SETTINGS.with_(store={"pool_size": 1}))
    assert store.claim(10, "orch", lease_s=60) == []  # prepares (and plans) on an empty queue
    store.submit([new(i) for i in range(20000)])
    # On the connection that prepared it:
    settings = dict(hot_sql(store, "SELECT name, setting FROM pg_settings WHERE name IN ('plan_cache_mode', 'enable_seqscan')"))
    plan = "\n".join(r[0] for r in hot_sql(store, "EXPLAIN EXECUTE raytranscribe_claim (10, 'orch', 60)"))
    assert settings == {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}
    assert "Index Scan using ix_task_queue_claim_order on task_queue" in plan
    assert "Seq Scan" not in plan
    assert len(store.claim(10, "orch", lease_s=60)) == 10


def test_claims_racing_cancels_and_requeues_lose_nothing_and_never_deadlock(store, make_store):
    """Claimers against operators changing queued tasks at the same time: lock order queue row, then task."""
    n = 600
    store.submit([new(i) for i in range(n)])
    stop = threading.Event()
    errors: list[BaseException] = []
    stores: list[Store] = []

    def claimer(name: str) -> None:
        s = make_store(TEST_SETTINGS)
        stores.append(s)
        try:
            while not stop.is_set():
                batch = s.claim(7, name, lease_s=60)
                if not batch:
                    time.sleep(0.005)
                    continue
                s.record([Outcome(c.id, c.attempt, result=RESULT) for c in batch])
        except BaseException as exc:  # reported below
            errors.append(exc)

    def operator() -> None:
        s = make_store(TEST_SETTINGS)
        stores.append(s)
        rng = random.Random(7)
        try:
            while not stop.is_set():
                ids = rng.sample(range(1, n + 1), 5)
                s.cancel(ids[:2])
                s.requeue(ids[2:])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"c{i}",)) for i in range(3)] + [threading.Thread(target=operator)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and store.outstanding() > 0:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    counts = store.stats().counts
    assert counts[TaskStatus.COMPLETED] + counts[TaskStatus.CANCELLED] + store.outstanding() == n
    assert counts[TaskStatus.COMPLETED] > 0 and counts[TaskStatus.CANCELLED] > 0
    assert side_table_violations(store) == []
    # A deadlock would have been survived as a transient error (40P01) and counted here.
    assert [s.transient_errors for s in stores] == [0, 0, 0, 0]


def test_upgrade_from_0004_copies_queued_and_leased_tasks_into_the_side_tables(database_url):
    admin = sa.engine.make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
    url = create_database(admin, prefix="rt_mig")
    s = Store(url, settings=TEST_SETTINGS)
    try:
        s.upgrade("0004")
        s.submit([new(i) for i in range(6)])  # the same INSERT at 0004
        sql(s, "UPDATE tasks SET status = 'in_progress', attempt = 1, lease_owner = 'orch', "
               "lease_expires_at = now() + interval '1 minute' WHERE id IN (1, 2)")  # claimed as 0004 did
        s.upgrade()
        assert side_table_violations(s) == []
        assert side_rows(s)[0] == [3, 4, 5, 6] and [r[0] for r in side_rows(s)[1]] == [1, 2]
        claimed = s.claim(10, "orch", lease_s=60)
        assert [c.id for c in claimed] == [3, 4, 5, 6]
    finally:
        s.close()
        drop_database(url)


_QUEUE_TABLES = ("task_queue", "task_leases", "task_counts", "task_failure_counts")


def manual_vacuums(store: Store) -> dict[str, int]:
    """VACUUMs run on each of the tables ``vacuum_queue`` vacuums, as PostgreSQL counts them
    (autovacuum's rounds are counted apart, in autovacuum_count)."""
    statement = "SELECT relname, vacuum_count FROM pg_stat_user_tables WHERE relname = ANY(:t)"
    return dict(sql(store, statement, t=list(_QUEUE_TABLES)))


def test_the_store_vacuums_the_queue_every_so_many_claimed_tasks(store, make_store):
    store = make_store(TEST_SETTINGS.with_(store={"queue_vacuum_every": 50}))
    before = manual_vacuums(store)
    assert sorted(before) == sorted(_QUEUE_TABLES)

    def vacuums_since() -> int:
        # Most vacuums any one table had: a table an autovacuum held that moment is skipped, not waited for.
        return max(n - before[t] for t, n in manual_vacuums(store).items())

    store.submit([new(i) for i in range(160)])
    for _ in range(4):  # 40 claimed: no vacuum yet
        store.record([Outcome(c.id, c.attempt, result=RESULT) for c in store.claim(10, "orch", lease_s=60)])
    assert vacuums_since() == 0
    for _ in range(12):  # 120 more: past 50, 100 and 150
        store.record([Outcome(c.id, c.attempt, result=RESULT) for c in store.claim(10, "orch", lease_s=60)])
    assert vacuums_since() == 3
    assert side_table_violations(store) == []
    # vacuum_queue says whether it vacuumed every table (an autovacuum holding one this moment: it says so).
    deadline = time.monotonic() + 30
    while not store.vacuum_queue():
        assert time.monotonic() < deadline, "the queue could not be vacuumed for 30 s"
        time.sleep(0.2)
    last = sql(store, "SELECT relname, last_vacuum IS NOT NULL FROM pg_stat_user_tables "
                      "WHERE relname IN ('task_queue', 'task_leases') ORDER BY relname")  # fmt: skip
    assert last == [("task_leases", True), ("task_queue", True)]


def test_cancel_waits_for_a_claim_holding_the_queue_row_instead_of_deadlocking(store, database_url):
    """A claim locks a queue row, then updates its task; cancel takes the same order (queue row first)."""
    store.submit([new(1)])
    claimer = sa.create_engine(database_url)
    try:
        with claimer.connect() as conn:
            tx = conn.begin()
            # The claim's first step, in a transaction held open: the queue row of task 1 is ours.
            assert conn.execute(sa.text(
                "SELECT task_id FROM task_queue WHERE task_id = 1 FOR UPDATE SKIP LOCKED")).all() == [(1,)]  # fmt: skip
            claim_pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            result: list[object] = []
            canceller = threading.Thread(target=lambda: result.append(store.cancel([1]).count))
            canceller.start()
            # Cancel now waits for the queue row (a lock our claim holds), holding nothing the claim needs.
            blocked_by_claim = sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                       "AND CAST(:claim AS int) = ANY(pg_blocking_pids(pid))")  # fmt: skip
            with claimer.connect() as watcher:
                deadline = time.monotonic() + 30
                while not watcher.execute(blocked_by_claim, {"claim": claim_pid}).scalar_one():
                    assert canceller.is_alive(), f"cancel ended without waiting for the claim: {result}"
                    assert time.monotonic() < deadline, "cancel never waited for the claim's queue row"
                    time.sleep(0.02)
            assert canceller.is_alive()
            # The claim's second step: update the task. It must not wait for cancel: were the two to wait
            # for each other, PostgreSQL would detect the deadlock (deadlock_timeout is 1 s) and fail one,
            # this UPDATE (it raises) or the cancel (a transient error the store counts, checked below).
            conn.execute(sa.text(
                "UPDATE tasks SET status = 'in_progress', attempt = 1, lease_owner = 'orch', "
                "lease_expires_at = now() + interval '1 minute' WHERE id = 1"))  # fmt: skip
            tx.commit()
            canceller.join(10)
    finally:
        claimer.dispose()
    assert result == [1]  # then cancelled, as an in-progress task
    assert store.transient_errors == 0  # no deadlock was detected and retried
    assert store.get(1).status is TaskStatus.CANCELLED
    assert side_table_violations(store) == []
