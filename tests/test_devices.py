"""Honest devices: an actor that reserved a GPU computes on it, or does not start and says why.

This machine has no CUDA driver; the session's Ray has logical GPUs, so every GPU-reserving actor
here reserves a GPU it cannot use: with ``device = auto`` it must refuse to start (no task charged),
with ``device = cpu`` (the operator's choice) it runs on the CPU and says so.
"""

from __future__ import annotations

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
