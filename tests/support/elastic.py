"""Elastic pool scenario, run as its own process (it needs its own multi-node Ray):
``python -m tests.support.elastic`` with RAYTRANSCRIBE_DATABASE_URL and RAYTRANSCRIBE_S3__ENDPOINT_URL set.

A head without GPUs and one GPU node (one logical GPU) under ``ray.cluster_utils.Cluster``, work
queued for three actors, ``max_actors`` 3. The pool's second actor waits pending (no GPU for it);
then two GPU nodes join and the pool grows to three without a restart; then one GPU node is removed
while its actor transcribes (a spot preemption) and the pool carries on. Lines printed for the test:
``PENDING`` (pending actors, start failures), ``GREW`` (alive count), ``REMOVED_NODE``, ``POOL``.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from raytranscribe.config import Settings
from raytranscribe.orchestrator import Orchestrator, RunOptions
from raytranscribe.storage import S3Storage
from raytranscribe.store import Store

ROOT = Path(__file__).resolve().parents[2]
BUSY = {"transcribe", "batched"}
_say_lock = threading.Lock()


def say(*parts: object) -> None:
    """One marker line for the test to parse, written whole (two threads report)."""
    with _say_lock:
        sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
        sys.stdout.flush()


def main() -> int:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    first = cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    # The nodes' own logs stay out of stdout: a raylet's dying words would land inside a marker line.
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}, log_to_driver=False)
    settings = Settings().with_(
        retry={"max_retries": 3, "base_delay_s": 0.2, "max_delay_s": 1.0},
        lease={"lease_s": 20.0, "heartbeat_s": 0.5},
        engine={"cpu_threads": 1, "device": "cpu"},  # logical GPUs: cpu by choice
        worker={"min_actors": 1, "max_actors": 3, "num_gpus": 1, "num_cpus": 1, "prefetch": 1},
        health={"ping_interval_s": 0.3, "ping_timeout_s": 5.0, "replace_backoff_s": 0.2,
                "start_timeout_s": 1.0, "pool_idle_s": 60.0},
    )
    store = Store.from_settings(settings)
    options = RunOptions(until_drained=True, idle_poll_s=0.2)
    orch = Orchestrator(settings, store, S3Storage(settings.s3), options=options)

    def states() -> list[str]:
        return [v.state for v in orch.pools.views()]

    def wait(predicate, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def scenario() -> None:
        if not wait(lambda: "alive" in states() and "pending" in states()):
            say("NO_PENDING", states())
            return
        time.sleep(2.0)  # two start timeouts: a pending actor must not be failed for waiting
        (pool,) = orch.pools.pools.values()
        say("PENDING", states().count("pending"), "start_failures", pool.start_failures)
        added = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
        if not wait(lambda: states().count("alive") == 3):
            say("NO_GROWTH", states())
            return
        say("GREW", states().count("alive"))
        for node in [first, *added]:
            for v in orch.pools.views():
                if v.state == "alive" and BUSY & set(v.stages) and v.node_id == node.node_id:
                    cluster.remove_node(node, allow_graceful=False)
                    say("REMOVED_NODE", node.node_id[:12], "holding", v.name)
                    return
        say("NOTHING_TO_REMOVE")

    def trace() -> None:  # for a failing test's message: what the pool looked like over time
        started = time.monotonic()
        while True:
            say("STATES", f"{time.monotonic() - started:.0f}s", ",".join(states()))
            time.sleep(2.0)

    threading.Thread(target=trace, daemon=True).start()
    box: dict[str, object] = {}

    def drive() -> None:
        box["summary"] = orch.run()

    # The orchestrator in a thread, the scenario on the main thread: starting a node wants it.
    runner = threading.Thread(target=drive, daemon=True)
    runner.start()
    try:
        scenario()
    except Exception as exc:  # shown in the test's failure message
        say("SCENARIO_FAILED", type(exc).__name__, exc)
    runner.join(300)
    summary = box["summary"]
    (pool,) = orch.pools.pools.values() or [None]
    if pool is not None:
        say("POOL", "started", pool.started, "start_failures", pool.start_failures, "gave_up", pool.gave_up)
    say("SUMMARY", summary.completed, summary.retried, summary.dead)
    store.close()
    ray.shutdown()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
