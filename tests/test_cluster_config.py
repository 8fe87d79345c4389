"""cluster.yaml passes Ray's own cluster-config validation (the schema `ray up` applies)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

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
    assert "--dashboard-host=0.0.0.0" in " ".join(config["head_start_ray_commands"])


def test_nodes_run_the_pinned_node_image_on_a_pinned_ami_and_install_nothing_at_boot():
    config = _config()
    # The image built from deploy/Dockerfile (whose base is Ray's, at this package's Ray version:
    # tests/test_deploy.py), never a moving rayproject alias.
    image = config["docker"]["image"]
    assert "raytranscribe-node:" in image and not image.startswith("rayproject/"), image
    # No pip, uv or conda anywhere a node runs commands: what runs is what the image holds.
    commands = [c for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                              "worker_setup_commands") for c in config.get(key, [])]  # fmt: skip
    assert not any(re.search(r"\b(pip|uv|conda)\b", c) for c in commands), commands
    # No source tree synced over the image's own copy.
    assert not any("raytranscribe" in target for target in config["file_mounts"]), config["file_mounts"]
    # Every node type names one AMI by id (per region), with its name and driver in a comment.
    text = (ROOT / "cluster.yaml").read_text()
    for node in config["available_node_types"].values():
        assert re.fullmatch(r"ami-[0-9a-f]{17}", node["node_config"]["ImageId"]), node["node_config"]["ImageId"]
    assert "latest_dlami" not in text and "NVIDIA driver" in text and "describe-images" in text


def _config() -> dict:
    config = prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    validate_config(config)
    return config


def test_instance_profiles_give_credentials_to_the_head_only():
    nodes = _config()["available_node_types"]
    # The head reads inputs, writes outputs and fetches the database URL: a named profile, so
    # `ray up` does not attach its default one (EC2 and S3 full access).
    assert nodes["head"]["node_config"]["IamInstanceProfile"] == {"Name": "raytranscribe-head"}
    # Nodes that run worker actors get no profile at all: nothing for a worker to fetch from the
    # instance metadata service.
    workers = [n for name, n in nodes.items() if name != "head"]
    assert workers and all("IamInstanceProfile" not in n["node_config"] for n in workers)


def test_ray_token_auth_is_enabled_on_every_node():
    config = _config()
    docker = config["docker"]
    # Every process in every container (ray start, the autoscaler's updaters, clients) runs in token mode...
    assert "--env RAY_AUTH_MODE=token" in docker["run_options"]
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert "RAY_AUTH_MODE=token" in start.split("ray start")[0]
    # ...with the token from the machine running `ray up` on every node (Ray's token-auth guide).
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_the_database_url_reaches_the_head_only():
    config = _config()
    text = (ROOT / "cluster.yaml").read_text()
    # Not in anything every node gets: file_mounts, setup_commands, the shared docker options.
    assert not any("database" in k or "database" in v for k, v in config["file_mounts"].items())
    assert not any("database" in c.lower() for c in config["setup_commands"] + config["docker"]["run_options"])
    assert "RAYTRANSCRIBE_DATABASE_URL=" not in text and "postgresql" not in text
    # The head writes it to a file of its own (mode 0600 through umask 077) and the driver reads it.
    (fetch,) = [c for c in config["head_setup_commands"] if "database_url" in c]
    assert fetch.startswith("umask 077")
    head_options = config["docker"]["head_run_options"]
    assert "--env RAYTRANSCRIBE_DATABASE_URL_FILE=/home/ray/.raytranscribe/database_url" in head_options
