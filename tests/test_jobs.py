"""jobs/backfill.py as `ray job submit` runs it: a real process joining the running Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raytranscribe.store import TaskStatus

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _backfill(system, ray_address: str, prefix: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_address,
        "RAYTRANSCRIBE_DATABASE_URL": system.database_url,
        "RAYTRANSCRIBE_S3__ENDPOINT_URL": system.settings.s3.endpoint_url,
        "RAYTRANSCRIBE_ENGINE__CPU_THREADS": "1",
        "RAYTRANSCRIBE_ENGINE__DEVICE": "cpu",  # logical GPUs: cpu by choice
        "RAYTRANSCRIBE_LEASE__HEARTBEAT_S": "0.5",
        "RAYTRANSCRIBE_RETRY__BASE_DELAY_S": "0.2",
        "RAYTRANSCRIBE_NAMESPACE": system.settings.namespace + "-job",
    }
    return subprocess.run(
        [sys.executable, "jobs/backfill.py", prefix, "--output", f"s3://{system.bucket}/out/", "--actors", "1"],
        # 240 s: under pytest's 300, so a hang is reported with its output.
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )


def test_backfill_exits_0_when_everything_completes(system, ray_address):
    system.upload_samples(["fox.wav", "river.mp3"], prefix="calls/2024/")
    proc = _backfill(system, ray_address, f"s3://{system.bucket}/calls/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 audio object(s), 0 already submitted" in proc.stderr
    tasks = system.store.list_tasks()
    assert {t.status for t in tasks} == {TaskStatus.COMPLETED}
    # Outputs keep the folder layout below the prefix.
    assert "brown fox" in system.object_text(f"s3://{system.bucket}/out/2024/fox.txt")


def test_backfill_exits_nonzero_when_a_task_is_dead(system, ray_address):
    system.upload_samples(["fox.wav"], prefix="batch/")
    system.put("batch/broken.wav", b"this is not audio" * 40)
    proc = _backfill(system, ray_address, f"s3://{system.bucket}/batch/")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 task(s) of this backfill are dead" in proc.stderr
    statuses = sorted((t.input_uri.rsplit("/", 1)[1], t.status.value) for t in system.store.list_tasks())
    assert statuses == [("broken.wav", "dead"), ("fox.wav", "completed")]
    # A later backfill of a clean prefix succeeds although the earlier dead task is still there.
    system.upload_samples(["river.mp3"], prefix="clean/")
    again = _backfill(system, ray_address, f"s3://{system.bucket}/clean/")
    assert again.returncode == 0, again.stderr[-3000:]
