"""The walls of ../shared/ARCHITECTURE.md, checked on the real import graph (each in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
    "raytranscribe.uris": ("ray", "sqlalchemy", "boto3", "botocore", "requests"),
    "raytranscribe.batching": ("ray", "sqlalchemy", "boto3", "botocore", "requests"),
    "raytranscribe.isolation": ("ray", "sqlalchemy", "boto3", "botocore", "requests"),
    # the node's model cache runs in workers and engines: no HTTP client until a download starts
    "raytranscribe.modelcache": ("requests", "boto3", "botocore", "sqlalchemy", "ray", "raytranscribe.store"),
    # `import raytranscribe` stays cheap: the Client loads on first use
    "raytranscribe": ("sqlalchemy", "pydantic", "ray", "boto3", "raytranscribe.client"),
    # the Client reads the store; Ray, S3 and the orchestrator load when it runs or lists
    "raytranscribe.client": ("ray", "boto3", "botocore", "requests", "raytranscribe.orchestrator", "raytranscribe.pool",
                             "raytranscribe.worker"),
    # the command line answers --help at once: each command imports what it uses when it runs
    "raytranscribe.cli": ("sqlalchemy", "pydantic", "pydantic_settings", "rich", "ray", "boto3", "numpy", "av",
                          "raytranscribe.store", "raytranscribe.client"),
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
