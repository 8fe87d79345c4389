"""Honest devices: an actor that reserved a GPU computes on it, or does not start and says why.

This machine has no CUDA driver; the session's Ray has logical GPUs, so every GPU-reserving actor
here reserves a GPU it cannot use: with ``device = auto`` it must refuse to start (no task charged),
with ``device = cpu`` (the operator's choice) it runs on the CPU and says so.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from raytranscribe.engines import cuda_missing, resolve_device
from raytranscribe.errors import ModelLoadError
from raytranscribe.store import TaskStatus
from tests.support.metrics import scrape
from tests.support.wait import wait_for


def _cuda_usable() -> bool:
    import ctranslate2

    return ctranslate2.get_cuda_device_count() > 0 and not cuda_missing("faster-whisper")


def _repr_names() -> set[str]:
    """Every actor's repr as Ray's GCS recorded it: what `ray list actors` and the dashboard show."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    table = state._connect_and_get_accessor().get_actor_table(None, None)
    return {gcs_pb2.ActorTableData.FromString(row).repr_name for row in table}


def test_auto_with_a_reserved_gpu_is_cuda_or_a_permanent_error_naming_what_is_missing():
    if _cuda_usable():
        assert resolve_device("auto", "faster-whisper", ("0",)) == "cuda"
        return
    with pytest.raises(ModelLoadError) as info:
        resolve_device("auto", "faster-whisper", ("0",))
    message = str(info.value)
    assert message.startswith("reserved GPU 0 but CTranslate2 ")
    assert all(lib.split()[0] in message for lib in cuda_missing("faster-whisper")), message
    assert "set device = cpu" in message and not info.value.transient
    with pytest.raises(ModelLoadError, match="reserved GPU 2,3 but CTranslate2"):
        resolve_device("cuda", "faster-whisper", ("2", "3"))  # an explicit cuda is held to the same


def test_cpu_is_the_operators_choice_and_no_reservation_keeps_the_old_rule():
    import ctranslate2

    assert resolve_device("cpu", "faster-whisper", ("0",)) == "cpu"
    assert resolve_device("auto", "faster-whisper") == ("cuda" if ctranslate2.get_cuda_device_count() else "cpu")
    with pytest.raises(ModelLoadError, match="unknown device 'tpu'"):
        resolve_device("tpu", "faster-whisper", ("0",))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_logical_gpus_with_device_auto_stop_the_run_at_start_up_and_charge_no_task(system):
    """The issue's run: GPU-reserving actors, device auto, no usable CUDA. Before, both tasks
    completed on the CPU and the run exited 0; now the pool gives up with the CUDA problem."""
    from raytranscribe.orchestrator import NoWorkers

    if _cuda_usable():
        pytest.fail("this test needs a machine where CTranslate2 cannot use CUDA (logical GPUs only)")
    ids = system.submit([u for u, _ in system.upload_samples(["fox.wav", "doctor.flac"])])
    settings = system.settings.with_(
        engine={"device": "auto"}, health={"max_start_failures": 2, "replace_backoff_s": 0.1, "pool_idle_s": 600.0}
    )

    with pytest.raises(NoWorkers) as info:
        system.orchestrator(settings).run()

    message = str(info.value)
    assert "ModelLoadError: reserved GPU" in message and "sees no CUDA device" in message, message
    assert "libcuda.so.1" in message, message
    for task_id in ids:  # nothing was dispatched: pending, no attempt, nothing dead
        task = system.store.get(task_id)
        assert task.status is TaskStatus.PENDING and task.attempts == (), task


@pytest.mark.slow
def test_logical_gpus_with_device_cpu_complete_and_show_where_they_compute(system, ray_session):
    """The same run with device = cpu (system_settings' choice) completes, and status, the actor's
    Ray repr and the live-actor metric all say cpu / int8."""
    ids = system.submit([u for u, _ in system.upload_samples(["fox.wav", "doctor.flac"])])
    seen: dict[str, object] = {}

    def look(orch):
        views = wait_for(lambda: [v for v in orch.pools.views() if v.state == "alive"] or None, what="a live actor")
        seen["views"] = views
        seen["reprs"] = _repr_names()
        seen["metric"] = scrape(ray_session, {"raytranscribe_live_actors"},
                                ready=lambda f: any('device="cpu"' in line for line in f["raytranscribe_live_actors"]))

    summary = system.run(during=look)

    assert summary.completed == 2 and all(system.store.get(i).status is TaskStatus.COMPLETED for i in ids)
    for view in seen["views"]:
        assert view.gpu_ids and (view.device, view.compute_type, view.gpu_name) == ("cpu", "int8", ""), view
        assert f"{view.name} on cpu" in seen["reprs"], seen["reprs"]
    lines = seen["metric"]["raytranscribe_live_actors"]
    assert any('device="cpu"' in line and 'compute_type="int8"' in line and "tiny.en" in line for line in lines)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_issues_command_now_exits_1_naming_the_cuda_problem(system):
    """`raytranscribe run --gpus-per-actor 1 --local-gpus 1` with device auto on a machine without
    CUDA: it used to transcribe on the CPU and exit 0; now one line names the problem, exit 1."""
    if _cuda_usable():
        pytest.fail("this test needs a machine where CTranslate2 cannot use CUDA (logical GPUs only)")
    (task_id,) = system.submit([system.upload_samples(["fox.wav"])[0][0]])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYTRANSCRIBE_"))}
    env.update({
        "RAYTRANSCRIBE_DATABASE_URL": system.database_url,
        "RAYTRANSCRIBE_S3__ENDPOINT_URL": system.settings.s3.endpoint_url,
        "RAYTRANSCRIBE_ENGINE__CPU_THREADS": "1",
        "RAYTRANSCRIBE_HEALTH__MAX_START_FAILURES": "1",
        "RAYTRANSCRIBE_LOG_LEVEL": "WARNING",
        "RAYTRANSCRIBE_NAMESPACE": system.settings.namespace + "-cli",
    })  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "raytranscribe.cli", "run", "--until-drained", "--gpus-per-actor", "1",
         "--local-gpus", "1", "--local-cpus", "2"],
        capture_output=True, text=True, timeout=200, env=env,
    )  # fmt: skip

    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    # "nothing left that can run: 1 task(s) wait for faster-whisper/tiny.en (... start-up failed: ...)"
    assert last.startswith("error: ") and "ModelLoadError: reserved GPU 0 but CTranslate2 sees no CUDA device" in last
    task = system.store.get(task_id)
    assert task.status is TaskStatus.PENDING and task.attempts == (), task
