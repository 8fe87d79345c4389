"""cluster.yaml passes Ray's own cluster-config validation (the schema `ray up` applies)."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

import ray

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    config = prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    validate_config(config)
    nodes = config["available_node_types"]
    assert config["head_node_type"] == "head"
    # The head runs the driver only: no CPU slots for actors, no GPU.
    assert nodes["head"]["resources"] == {"CPU": 0}
    gpu_types = [n for n in nodes.values() if n["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(n["min_workers"] == 0 for n in gpu_types)
    # The image matches the Ray this package runs with, and nodes install this package.
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    assert config["docker"]["image"].endswith("-gpu")
    assert any("pip install" in c and "raytranscribe" in c for c in config["setup_commands"])
    assert "--dashboard-host=0.0.0.0" in " ".join(config["head_start_ray_commands"])
