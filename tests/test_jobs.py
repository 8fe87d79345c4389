"""jobs/backfill.py as `ray job submit` runs it: a real process joining the running Ray."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from raytranscribe.store import TaskStatus
from tests.support.wait import wait_for

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


# --- `ray job stop`: a head of our own with Ray's job server ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def job_head():
    """A Ray head with its dashboard (the job server), `ray start --block` in a process group of its
    own: stopping that group stops this head alone (`ray stop` would stop every Ray on the host)."""
    temp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: Ray's socket paths have a length limit
    # Every port of our own: the suite's Ray (and any other on the host) holds Ray's default ones.
    port, dashboard, agent, client = _free_port(), _free_port(), _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_JOB_STOP_WAIT_TIME_S", None)  # Ray's default: SIGKILL 3 s after SIGTERM
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head_log = open(temp / "head.log", "w")  # noqa: SIM115 (the head outlives this statement)
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dashboard}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={agent}",
         f"--ray-client-server-port={client}", "--num-cpus=4", "--num-gpus=2",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"

    def job(command: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([ray_cli, "job", command, "--address", address, *args], env=env, capture_output=True,
                             text=True, timeout=120, check=False)  # fmt: skip
        assert not check or out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out

    def up() -> bool:
        assert head.poll() is None, (temp / "head.log").read_text()[-3000:]
        return job("list", check=False).returncode == 0

    try:
        wait_for(up, timeout=180, every=1.0, what="Ray's job server")
        yield job
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        head_log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _submit_backfill(job, system, submission_id: str, prefix: str) -> None:
    env_vars = {
        "RAYTRANSCRIBE_DATABASE_URL": system.database_url,
        "RAYTRANSCRIBE_S3__ENDPOINT_URL": system.settings.s3.endpoint_url,
        "RAYTRANSCRIBE_ENGINE__CPU_THREADS": "1",
        "RAYTRANSCRIBE_ENGINE__DEVICE": "cpu",
        "RAYTRANSCRIBE_WORKER__MAX_ACTORS": "2",
        "RAYTRANSCRIBE_LEASE__HEARTBEAT_S": "0.5",
        "RAYTRANSCRIBE_NAMESPACE": system.settings.namespace + "-" + submission_id,
    }
    args = ("--no-wait", "--submission-id", submission_id, "--runtime-env-json", json.dumps({"env_vars": env_vars}),
            "--", sys.executable, str(ROOT / "jobs" / "backfill.py"), prefix, "--output", f"s3://{system.bucket}/out/")

    def submitted() -> bool:  # a fresh head's job agent comes up a little after its job server
        out = job("submit", *args, check=False)
        assert out.returncode == 0 or "No available agent" in out.stderr, out.stdout[-2000:] + out.stderr[-2000:]
        return out.returncode == 0

    wait_for(submitted, timeout=120, every=2.0, what="the head's job agent to take the job")


def _job_status(job, submission_id: str) -> str:
    """What `ray job status` says, as Ray's JobStatus names it."""
    out = job("status", submission_id).stdout
    for phrase, status in (("succeeded", "SUCCEEDED"), ("was stopped", "STOPPED"), ("failed", "FAILED")):
        if f"Job '{submission_id}' {phrase}" in out:
            return status
    found = re.search(r"Status for job '[^']+': (\w+)", out)
    return found.group(1) if found else out.strip()[-200:]


@pytest.mark.timeout(780)
def test_ray_job_stop_hands_everything_back_and_the_next_job_charges_nothing(system, job_head):
    """`ray job stop` with Ray's default wait (SIGKILL 3 s after SIGTERM): the driver writes what
    finished and hands back the rest in time, so nothing stays in progress, no attempt is failed or
    dead, and the next job runs everything at once with every retries 0."""
    system.upload_samples(prefix="stop/")
    prefix = f"s3://{system.bucket}/stop/"
    _submit_backfill(job_head, system, "backfill-1", prefix)
    wait_for(lambda: len(system.store.list_tasks(status=TaskStatus.IN_PROGRESS)) >= 2, timeout=240, every=0.2,
             what="tasks in flight under the first job")  # fmt: skip

    job_head("stop", "backfill-1")

    logs = job_head("logs", "backfill-1").stdout
    assert "received SIGTERM" in logs and "stopped" in logs.rsplit("received SIGTERM", 1)[1], logs[-3000:]
    assert not system.store.list_tasks(status=TaskStatus.IN_PROGRESS), system.statuses()
    attempts = [a for t in system.store.list_tasks(limit=1000) for a in system.store.get(t.id).attempts]
    assert not [a for a in attempts if a.outcome in ("failed", "dead") or a.finished_at is None], attempts
    assert any(a.outcome == "released" and a.stage == "shutdown" for a in attempts), attempts

    _submit_backfill(job_head, system, "backfill-2", prefix)
    deadline = time.monotonic() + 360
    while (status := _job_status(job_head, "backfill-2")) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"still {status}: " + job_head("logs", "backfill-2").stdout[-3000:]
        time.sleep(1.0)
    assert status == "SUCCEEDED", job_head("logs", "backfill-2").stdout[-3000:]
    system.check_invariants()
    tasks = system.store.list_tasks(limit=1000)
    assert len(tasks) == 6 and all(t.status is TaskStatus.COMPLETED and t.retries == 0 for t in tasks), tasks
