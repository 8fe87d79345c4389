"""Many claimers at once, a database that keeps killing our connections, and a database that is gone."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
import uuid
from collections import Counter

import pytest
import sqlalchemy as sa

from raytranscribe.contracts import Outcome, TaskResult
from raytranscribe.errors import Stage, StoreUnavailable
from raytranscribe.store import NewTask, Store, TaskStatus
from tests.store.claimers import claim_until_empty, process_main
from tests.support.db import TEST_SETTINGS, side_table_violations

N_TASKS = 2000


def test_threads_and_processes_claim_each_task_exactly_once(store, database_url):
    store.submit([NewTask(f"s3://bkt/c/{i}.wav", f"s3://bkt/o/{i}") for i in range(N_TASKS)])
    ctx = multiprocessing.get_context("spawn")  # no fork: the parent holds pooled connections
    n_procs, n_threads = 3, 3
    barrier = ctx.Barrier(n_procs + n_threads)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=process_main, args=(database_url, f"proc-{i}", 7, barrier, queue)) for i in range(n_procs)
    ]
    for p in procs:
        p.start()
    thread_results: dict[str, list] = {}

    def run(name: str) -> None:
        thread_results[name] = claim_until_empty(database_url, name, 5, barrier)

    threads = [threading.Thread(target=run, args=(f"thread-{i}",)) for i in range(n_threads)]
    for t in threads:
        t.start()
    proc_results = dict(queue.get(timeout=120) for _ in procs)
    for t in threads:
        t.join(120)
    for p in procs:
        p.join(30)
    assert all(isinstance(v, list) for v in proc_results.values()), proc_results
    per_owner = {**proc_results, **thread_results}
    assert len(per_owner) == n_procs + n_threads
    assert all(len(v) > 0 for v in per_owner.values()), {k: len(v) for k, v in per_owner.items()}
    claimed = Counter(task_id for got in per_owner.values() for task_id, _ in got)
    assert len(claimed) == N_TASKS
    assert set(claimed.values()) == {1}  # nobody claimed a task twice
    assert {attempt for got in per_owner.values() for _, attempt in got} == {1}
    with store.db.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT count(*), count(DISTINCT task_id), count(*) FILTER (WHERE outcome = 'completed') FROM task_attempts"
        )).one()  # fmt: skip
        owners = dict(conn.execute(sa.text("SELECT worker, count(*) FROM task_attempts GROUP BY worker")).all())
    assert tuple(rows) == (N_TASKS, N_TASKS, N_TASKS)
    assert owners == {k: len(v) for k, v in per_owner.items()}
    assert store.stats().counts[TaskStatus.COMPLETED] == N_TASKS
    assert side_table_violations(store) == []


def test_backends_terminated_during_claim_loop_lose_nothing(store, database_url, make_store):
    n = 300
    store.submit([NewTask(f"s3://bkt/r/{i}.wav", f"s3://bkt/o/{i}") for i in range(n)])
    app = f"rt-chaos-{uuid.uuid4().hex[:8]}"
    victim = make_store(
        TEST_SETTINGS.with_(store={"op_retries": 10, "op_retry_base_s": 0.01, "pool_size": 2}), application_name=app
    )
    killer_engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    stop = threading.Event()
    kills = 0

    def killer() -> None:
        nonlocal kills
        with killer_engine.connect() as conn:
            while not stop.is_set():
                kills += conn.execute(
                    sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :a"),
                    {"a": app},
                ).scalar_one()
                time.sleep(0.03)

    k = threading.Thread(target=killer)
    k.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            claimed = victim.claim(10, "chaos", lease_s=1.0)
            victim.record([Outcome(c.id, c.attempt, result=TaskResult(2.0, "en", ())) for c in claimed])
            victim.reap()  # claims whose commit answer was lost come back this way
            if not claimed and victim.outstanding() == 0:
                break
            if not claimed:
                time.sleep(0.05)
    finally:
        stop.set()
        k.join(10)
        killer_engine.dispose()
    assert kills > 0
    assert victim.transient_errors > 0  # the loop really was hit mid-operation, and survived it
    s = store.stats()
    assert s.counts[TaskStatus.COMPLETED] == n
    assert s.total == n
    with store.db.engine.connect() as conn:
        per_task = conn.execute(sa.text(
            "SELECT count(*) FILTER (WHERE outcome = 'completed') AS c FROM tasks t "
            "LEFT JOIN task_attempts a ON a.task_id = t.id GROUP BY t.id"
        )).scalars().all()  # fmt: skip
        open_attempts = conn.execute(sa.text("SELECT count(*) FROM task_attempts WHERE finished_at IS NULL")).scalar_one()
    assert Counter(per_task) == {1: n}  # each task completed exactly once
    assert open_attempts == 0  # nothing stuck in progress
    assert side_table_violations(store) == []  # killed mid-statement: the side tables never drifted


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_store_unavailable_after_bounded_retries():
    port = _closed_port()
    store = Store(
        f"postgresql+psycopg2://postgres@127.0.0.1:{port}/nothing",
        settings=TEST_SETTINGS.with_(store={"op_retries": 2, "op_retry_base_s": 0.01}),
    )
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.claim(5, "o", lease_s=10)
    finally:
        store.close()
    err = info.value
    assert str(err).startswith("store claim: database unavailable after 3 tries: ")
    assert f"port {port} failed: Connection refused" in str(err)
    assert isinstance(err.__cause__, sa.exc.OperationalError)
    assert (err.transient, err.stage) == (True, Stage.STORE)
    assert store.transient_errors == 3  # bounded: the first try and op_retries more, then it gave up
