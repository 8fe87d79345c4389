"""The walls of ../shared/ARCHITECTURE.md, checked on the real import graph (each in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    # module: what importing it must not drag in
    "raytranscribe.worker": ("sqlalchemy", "psycopg2", "boto3", "botocore", "raytranscribe.store", "raytranscribe.storage"),
    "raytranscribe.engines.faster": ("ray", "sqlalchemy", "boto3", "requests"),
    "raytranscribe.engines.openai": ("ray", "sqlalchemy", "boto3", "requests"),
    "raytranscribe.audio": ("ray", "sqlalchemy", "boto3", "requests"),
    "raytranscribe.formats": ("ray", "sqlalchemy", "boto3", "requests"),
    "raytranscribe.transfer": ("ray", "sqlalchemy", "boto3", "raytranscribe.store"),
    "raytranscribe.store": ("ray", "boto3", "requests"),
    "raytranscribe.storage": ("ray", "raytranscribe.store", "requests"),
    "raytranscribe.retry": ("ray", "sqlalchemy", "boto3", "requests"),
    "raytranscribe.pool": ("sqlalchemy", "psycopg2", "raytranscribe.store", "boto3", "botocore", "raytranscribe.storage"),
    "raytranscribe.breakers": ("ray", "sqlalchemy", "boto3", "requests"),
    "raytranscribe.orchestrator": ("raytranscribe.engines.faster", "raytranscribe.engines.openai"),
    # the pools' ledger, dispatch, health and failover: Ray and the worker's types, never the database or S3
    **{f"raytranscribe.pool.{m}": ("sqlalchemy", "psycopg2", "raytranscribe.store", "boto3", "botocore",
                                   "raytranscribe.storage") for m in ("ledger", "dispatch", "health", "failover")},
    "raytranscribe.uris": ("ray", "sqlalchemy", "boto3", "botocore", "requests"),
    "raytranscribe.batching": ("ray", "sqlalchemy", "boto3", "botocore", "requests"),
    "raytranscribe.isolation": ("ray", "sqlalchemy", "boto3", "botocore", "requests"),
    # the node's model cache runs in workers and engines: no HTTP client until a download starts
    "raytranscribe.modelcache": ("requests", "boto3", "botocore", "sqlalchemy", "ray", "raytranscribe.store"),
}


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_module_stays_inside_its_walls(module):
    code = (
        f"import sys, {module}; "
        f"print(','.join(m for m in {FORBIDDEN[module]!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"


# Pure modules inside a package whose __init__ imports more (the pool package imports Ray): each is
# loaded alone, from its file, and must import nothing outside the standard library but these.
PURE = {
    "raytranscribe/pool/policy.py": (),  # the scaling policy: counts and times in, a decision out
}


@pytest.mark.parametrize("path", sorted(PURE))
def test_pure_module_imports_nothing_but_the_standard_library(path):
    code = (
        "import importlib.util, sys; before = set(sys.modules); "
        f"spec = importlib.util.spec_from_file_location('pure_module', {path!r}); "
        "module = importlib.util.module_from_spec(spec); sys.modules['pure_module'] = module; "
        "spec.loader.exec_module(module); "
        "new = {m.split('.')[0] for m in set(sys.modules) - before} - {'pure_module'}; "
        "print(','.join(sorted(m for m in new if m not in sys.stdlib_module_names)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert set(filter(None, out.stdout.strip().split(","))) <= set(PURE[path]), f"{path} imports {out.stdout.strip()}"
