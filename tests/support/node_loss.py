"""Losing a node, run as its own process (it needs its own multi-node Ray):
``python -m tests.support.node_loss remove|drain`` with RAYTRANSCRIBE_DATABASE_URL and
RAYTRANSCRIBE_S3__ENDPOINT_URL set.

A head without GPUs and two GPU nodes (one logical GPU, then two) under ``ray.cluster_utils.Cluster``.
While an actor transcribes, its node is

- ``remove``d (as on a spot preemption without notice): the orchestrator hands the node's tasks back
  uncharged once Ray says the node died, and replaces the actor on the surviving node;
- ``drain``ed through Ray's drain API (as the autoscaler does on a spot interruption notice, with a
  deadline): the node gets no new work, its actor's waiting tasks move to other actors uncharged, the
  running batch may finish; the node is removed after its deadline, as the cloud would.

Lines for the test process: ``LOST_NODE <mode> <node id> <unix time>`` when it happened, ``SUMMARY ...``.
The test process checks the database and S3 afterwards.
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
# The GCS declares a silent node dead after period x threshold (Ray's defaults: 3 s x 5).
FAST_NODE_DEATH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}
DRAIN_DEADLINE_S = 20


def _drain(cluster: Cluster, node_id: str) -> None:
    from ray.core.generated import autoscaler_pb2

    gcs = ray._raylet.GcsClient(address=cluster.address)
    accepted, why = gcs.drain_node(
        node_id,
        autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
        "spot interruption notice (test)",
        int(time.time() * 1000) + DRAIN_DEADLINE_S * 1000,
    )
    assert accepted, why


def main(mode: str) -> int:
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "_system_config": FAST_NODE_DEATH}
    )
    nodes = [cluster.add_node(num_cpus=2, num_gpus=1), cluster.add_node(num_cpus=2, num_gpus=2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    settings = Settings().with_(
        retry={"max_retries": 3, "base_delay_s": 0.2, "max_delay_s": 1.0},
        lease={"lease_s": 20.0, "heartbeat_s": 0.5},
        engine={"cpu_threads": 1, "device": "cpu"},  # logical GPUs: cpu by choice
        worker={"min_actors": 2, "max_actors": 2, "num_gpus": 1, "num_cpus": 1, "prefetch": 3},
        health={"ping_interval_s": 0.5, "ping_timeout_s": 5.0, "replace_backoff_s": 0.2, "drain_check_s": 0.5,
                "death_verdict_s": 60.0},
    )  # fmt: skip
    store = Store.from_settings(settings)
    orch = Orchestrator(settings, store, S3Storage(settings.s3), options=RunOptions(until_drained=True, idle_poll_s=0.2))

    def lose_a_node() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for actor in orch.pools.views():
                if actor.state == "alive" and actor.in_flight >= 2 and {"transcribe", "batched"} & set(actor.stages):
                    node = next((n for n in nodes if n.node_id == actor.node_id), None)
                    if node is None:
                        continue
                    if mode == "drain":
                        _drain(cluster, node.node_id)
                    else:
                        cluster.remove_node(node, allow_graceful=False)
                    print("LOST_NODE", mode, node.node_id, f"{time.time():.3f}", "holding", actor.name, flush=True)
                    if mode == "drain":  # the cloud takes the node once its notice runs out
                        time.sleep(DRAIN_DEADLINE_S)
                        cluster.remove_node(node, allow_graceful=False)
                    return
            time.sleep(0.05)
        print("NO_NODE_LOST", flush=True)

    t = threading.Thread(target=lose_a_node, daemon=True)
    t.start()
    summary = orch.run()
    t.join(DRAIN_DEADLINE_S + 5)
    print("SUMMARY", summary.completed, summary.retried, summary.dead, summary.released, flush=True)
    store.close()
    ray.shutdown()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "remove"))
