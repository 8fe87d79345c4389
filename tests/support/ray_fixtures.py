"""One local Ray for the whole session: starting Ray costs seconds, so every test shares it.

Logical GPUs let GPU-reserving actors schedule on a machine with none. The repository root goes on
the workers' PYTHONPATH so fault-injection engines under tests/support import inside actors.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

RAY_NUM_CPUS = 4
RAY_NUM_GPUS = 4
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_session():
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(
            # Always a fresh local Ray: never join a cluster another process started on this host
            # (a multi-node test's ray.cluster_utils.Cluster, an operator's `ray start`).
            address="local",
            num_cpus=RAY_NUM_CPUS,
            num_gpus=RAY_NUM_GPUS,
            namespace="raytranscribe-tests",
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
            # Export metrics every second (default 10 s) so a test can read them back promptly.
            _system_config={"metrics_report_interval_ms": 1000},
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_address(ray_session) -> str:
    return ray_session.get_runtime_context().gcs_address
