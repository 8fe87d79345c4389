"""deploy/kuberay/: the manifests are what KubeRay accepts (validated against its CRD schemas,
vendored in tests/fixtures/kuberay with their release), and they keep the project's walls: the
database URL reaches the head container only, GPU workers get no secret and no cloud identity."""

from __future__ import annotations

import copy
import hashlib
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import typer
import yaml

from raytranscribe import __version__
from raytranscribe.cli import app
from raytranscribe.isolation import DATABASE_URL_FILE_VAR, is_secret_name

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kuberay"
CRDS = ROOT / "tests" / "fixtures" / "kuberay"
DATABASE_SECRET = "raytranscribe-database-url"
IMAGE_HOME = "/home/ray/raytranscribe"  # where deploy/Dockerfile puts the repository
# Annotations that hand a pod's service account a cloud identity (EKS IRSA, GKE and Azure workload identity).
IDENTITY_ANNOTATIONS = ("eks.amazonaws.com/", "iam.gke.io/", "azure.workload.identity/")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(path: Path, kind: str) -> dict[str, Any]:
    [doc] = [d for d in _documents(path) if d["kind"] == kind]
    return doc


@pytest.fixture(scope="module")
def raycluster() -> dict[str, Any]:
    return _one(DEPLOY / "raycluster.yaml", "RayCluster")


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return _one(DEPLOY / "rayjob-backfill.yaml", "RayJob")


@pytest.fixture(scope="module")
def service_accounts() -> dict[str, dict[str, Any]]:
    documents = _documents(DEPLOY / "serviceaccounts.yaml")
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == "ServiceAccount"}


# --- the CRD schemas ---------------------------------------------------------------------------


def _crd(kind: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml reads the 1 MB files in a second
    crd = yaml.load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=loader)
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    return crd


def _strict(schema: Any) -> Any:
    """The schema as `kubectl apply` (strict field validation) reads it: an object with declared
    properties takes no others, unless the schema keeps unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not keeps_unknown:
        out["additionalProperties"] = False
    return out


_VALIDATORS: dict[str, jsonschema.Draft4Validator] = {}


def _validator(manifest: dict[str, Any]) -> jsonschema.Draft4Validator:
    kind = manifest["kind"]
    if kind not in _VALIDATORS:
        crd = _crd(kind)
        group, version = manifest["apiVersion"].split("/")
        assert group == crd["spec"]["group"]
        [served] = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
        _VALIDATORS[kind] = jsonschema.Draft4Validator(_strict(served["schema"]["openAPIV3Schema"]))
    return _VALIDATORS[kind]


def _errors(manifest: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(manifest).iter_errors(manifest)]


def test_the_vendored_crds_are_the_recorded_release():
    readme = (CRDS / "README.md").read_text()
    assert re.search(r"release: \*\*v\d+\.\d+\.\d+\*\* \(commit `[0-9a-f]{40}`\)", readme)
    for name in ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml"):
        digest = hashlib.sha256((CRDS / name).read_bytes()).hexdigest()
        assert f"| `{name}` | `{digest}` |" in readme, f"{name} is not the file README.md records"


@pytest.mark.parametrize("manifest", ["raycluster", "rayjob"])
def test_manifests_validate_against_the_kuberay_crds(manifest, request):
    assert _errors(request.getfixturevalue(manifest)) == []


def test_strict_validation_refuses_a_misspelt_field_and_a_wrong_type(raycluster, rayjob):
    misspelt = copy.deepcopy(raycluster)
    misspelt["spec"]["enableInTreeAutoScaling"] = misspelt["spec"].pop("enableInTreeAutoscaling")
    assert any("enableInTreeAutoScaling" in e for e in _errors(misspelt))
    wrong_type = copy.deepcopy(rayjob)
    wrong_type["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "8"
    assert any("maxReplicas" in e for e in _errors(wrong_type))


# --- the secrets rule ----------------------------------------------------------------------------


def _cluster_specs(raycluster, rayjob) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "RayCluster", raycluster["spec"]
    yield "RayJob", rayjob["spec"]["rayClusterSpec"]


def _secrets_reached(pod: dict[str, Any], container: dict[str, Any] | None = None) -> set[str]:
    """Secrets a pod (or one container of it) can read: mounted volumes, projected sources, env and envFrom."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    containers = [container] if container else [*pod.get("initContainers", []), *pod["containers"]]
    mounted = {m["name"] for c in containers for m in c.get("volumeMounts", [])} if container else set(volumes)
    found = set()
    for name in mounted:
        volume = volumes[name]
        if "secret" in volume:
            found.add(volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                found.add(source["secret"]["name"])
        if "csi" in volume:  # e.g. the Secrets Store CSI driver
            found.add(f"csi:{volume['csi']['driver']}")
    for c in containers:
        env = c.get("env", [])
        found |= {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}
        found |= {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
    return found


def _worker_problems(pod: dict[str, Any], service_accounts: dict[str, dict[str, Any]]) -> list[str]:
    problems = [f"reaches secret {s}" for s in sorted(_secrets_reached(pod))]
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("mounts a Kubernetes API token")
    account = service_accounts.get(pod.get("serviceAccountName", "default"))
    if account is None or account.get("metadata", {}).get("annotations"):
        problems.append(f"service account {pod.get('serviceAccountName', 'default')!r} is not one without identity")
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        env = c.get("env", [])
        problems += [f"env {e['name']}" for e in env if is_secret_name(e["name"]) or "://" in e.get("value", "")]
    if DATABASE_SECRET in yaml.safe_dump(pod) or DATABASE_URL_FILE_VAR in yaml.safe_dump(pod):
        problems.append("names the database URL")
    return problems


def test_the_database_url_reaches_the_head_container_only(raycluster, rayjob):
    for kind, spec in _cluster_specs(raycluster, rayjob):
        head = spec["headGroupSpec"]["template"]["spec"]
        [container] = head["containers"]
        assert _secrets_reached(head) == _secrets_reached(head, container) == {DATABASE_SECRET}, kind
        env = {e["name"]: e for e in container["env"]}
        # The URL is never in an environment variable: only the path of its file is.
        assert [n for n in env if is_secret_name(n) and n != DATABASE_URL_FILE_VAR] == [], kind
        assert not any("://" in e.get("value", "") or "valueFrom" in e for e in env.values()), kind
        [mount] = [m for m in container["volumeMounts"] if m["name"] == "database-url"]
        [volume] = [v for v in head["volumes"] if v["name"] == "database-url"]
        [item] = volume["secret"]["items"]
        assert mount["readOnly"] is True and volume["secret"]["defaultMode"] == 0o440, kind
        assert env[DATABASE_URL_FILE_VAR]["value"] == f"{mount['mountPath']}/{item['path']}", kind
        # Readable by the image's user (ray, group users) through the pod's fsGroup, and no one else.
        assert head["securityContext"]["fsGroup"] == 100, kind


def test_gpu_workers_get_no_secret_and_no_cloud_identity(raycluster, rayjob, service_accounts):
    for kind, spec in _cluster_specs(raycluster, rayjob):
        for group in spec["workerGroupSpecs"]:
            assert _worker_problems(group["template"]["spec"], service_accounts) == [], (kind, group["groupName"])


def test_the_rule_catches_a_worker_given_the_secret_or_an_identity(raycluster, service_accounts):
    worker = raycluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    head = raycluster["spec"]["headGroupSpec"]["template"]["spec"]
    mounted = copy.deepcopy(worker)
    mounted["volumes"] = copy.deepcopy(head["volumes"])
    mounted["containers"][0]["volumeMounts"] = copy.deepcopy(head["containers"][0]["volumeMounts"])
    as_env = copy.deepcopy(worker)
    as_env["containers"][0]["env"] = [
        {"name": "RAYTRANSCRIBE_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": DATABASE_SECRET, "key": "url"}}}
    ]
    as_head = copy.deepcopy(worker)
    as_head["serviceAccountName"] = "raytranscribe-head"
    with_token = copy.deepcopy(worker)
    del with_token["automountServiceAccountToken"]
    assert "reaches secret raytranscribe-database-url" in _worker_problems(mounted, service_accounts)
    assert {"reaches secret raytranscribe-database-url", "env RAYTRANSCRIBE_DATABASE_URL"} <= set(
        _worker_problems(as_env, service_accounts)
    )
    assert _worker_problems(as_head, service_accounts) == [
        "service account 'raytranscribe-head' is not one without identity"
    ]
    assert _worker_problems(with_token, service_accounts) == ["mounts a Kubernetes API token"]


def test_only_the_head_account_carries_a_cloud_identity(raycluster, service_accounts):
    head = raycluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert head["serviceAccountName"] == "raytranscribe-head"
    with_identity = {
        name for name, account in service_accounts.items()
        if any(key.startswith(IDENTITY_ANNOTATIONS) for key in account["metadata"].get("annotations", {}))
    }  # fmt: skip
    assert with_identity == {"raytranscribe-head"}
    assert service_accounts["raytranscribe-worker"]["automountServiceAccountToken"] is False


# --- the cluster and the job ---------------------------------------------------------------------


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    pods = [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]
    return [c for pod in pods for c in pod["containers"]]


def test_a_cpu_head_and_an_autoscaled_gpu_group_on_the_project_image(raycluster):
    spec = raycluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["authOptions"] == {"mode": "token"}
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # worker actors never land beside the secret
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    [gpu] = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    images = {c["image"] for c in _containers(spec)}
    assert len(images) == 1 and images.pop().endswith(f"/raytranscribe-node:{__version__}")


def test_the_job_runs_a_backfill_on_the_same_cluster_and_shuts_it_down(raycluster, rayjob):
    spec = rayjob["spec"]
    assert spec["rayClusterSpec"] == raycluster["spec"], "rayjob-backfill.yaml's cluster drifted from raycluster.yaml's"
    assert spec["shutdownAfterJobFinishes"] is True and "clusterSelector" not in spec
    assert "runtimeEnvYAML" not in spec  # a job's env_vars reach every worker: nothing to hand over here
    python, script, *args = shlex.split(spec["entrypoint"])
    assert python == "python" and script.startswith(f"{IMAGE_HOME}/")
    assert (ROOT / script.removeprefix(f"{IMAGE_HOME}/")).is_file()
    assert script.endswith("jobs/backfill.py")
    # The arguments are the backfill command's own, and --actors matches what the GPU group can reach.
    backfill = typer.main.get_command(app).commands["backfill"]
    options = {opt for param in backfill.params for opt in param.opts}
    assert {a for a in args if a.startswith("--")} <= options
    assert [a for a in args if a.startswith("s3://")][0] == "s3://bucket/prefix/"
    actors = int(args[args.index("--actors") + 1])
    assert actors == sum(g["maxReplicas"] for g in spec["rayClusterSpec"]["workerGroupSpecs"])
