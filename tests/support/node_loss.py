"""Node loss scenario, run as its own process (it needs its own multi-node Ray):
``python -m tests.support.node_loss`` with RAYTRANSCRIBE_DATABASE_URL and RAYTRANSCRIBE_S3__ENDPOINT_URL set.

A head without GPUs and two GPU nodes (one logical GPU, then two) under ``ray.cluster_utils.Cluster``;
while an actor transcribes, its node is removed (as on a spot preemption). The orchestrator must fail
the node's tasks over and schedule replacements on the surviving node; the test process checks the
database and S3 afterwards.
"""

from __future__ import annotations

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


def main() -> int:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    nodes = [cluster.add_node(num_cpus=2, num_gpus=1), cluster.add_node(num_cpus=2, num_gpus=2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    settings = Settings().with_(
        retry={"max_retries": 3, "base_delay_s": 0.2, "max_delay_s": 1.0},
        lease={"lease_s": 20.0, "heartbeat_s": 0.5},
        engine={"cpu_threads": 1, "device": "cpu"},  # logical GPUs: cpu by choice
        worker={"min_actors": 2, "max_actors": 2, "num_gpus": 1, "num_cpus": 1, "prefetch": 2},
        health={"ping_interval_s": 0.5, "ping_timeout_s": 5.0, "replace_backoff_s": 0.2},
    )
    store = Store.from_settings(settings)
    orch = Orchestrator(settings, store, S3Storage(settings.s3), options=RunOptions(until_drained=True, idle_poll_s=0.2))

    def preempt() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for actor in orch.pools.views():
                if actor.state == "alive" and {"transcribe", "batched"} & set(actor.stages):
                    for node in nodes:
                        if node.node_id == actor.node_id:
                            cluster.remove_node(node, allow_graceful=False)
                            print("REMOVED_NODE", node.node_id[:12], "holding", actor.name, flush=True)
                            return
            time.sleep(0.05)
        print("NO_NODE_REMOVED", flush=True)

    t = threading.Thread(target=preempt, daemon=True)
    t.start()
    summary = orch.run()
    t.join(5)
    print("SUMMARY", summary.completed, summary.retried, summary.dead, flush=True)
    store.close()
    ray.shutdown()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
