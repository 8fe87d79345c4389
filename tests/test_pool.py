"""The elastic actor pool on real Ray: it follows the cluster as nodes come and go, waits (pending)
for resources instead of failing, and packs fractional-GPU actors onto one GPU.

The fault suite that drives the pool's deaths, deadlines and quarantines is tests/test_health.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from raytranscribe import samples
from raytranscribe.engines.base import TranscribeOptions
from raytranscribe.store import TaskStatus
from tests.support.speech import wer
from tests.support.system import FAULTY_ENGINE
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(600)  # above the subprocess's own 420 s watchdog
def test_pool_grows_when_nodes_join_and_carries_on_when_one_is_lost(system):
    """One GPU node and work for three; two nodes join mid-run, then one is removed (a separate
    multi-node Ray in a subprocess, as tests/support/elastic.py describes)."""
    audio = samples.sample_path("fox.wav").read_bytes()
    # Enough that one actor would still be busy when the nodes have joined (starting a node takes a while).
    ids = system.submit([system.put(f"in/e{n}.wav", audio) for n in range(24)], engine=FAULTY_ENGINE,
                        options=TranscribeOptions(initial_prompt="fault:slow:2"))
    env = {
        **os.environ,
        "RAYTRANSCRIBE_DATABASE_URL": system.database_url,
        "RAYTRANSCRIBE_S3__ENDPOINT_URL": system.settings.s3.endpoint_url,
    }
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "tests.support.elastic"], env=env, capture_output=True, text=True,
                         timeout=420, cwd=ROOT)
    lines = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.strip()}
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # Before the nodes joined: the extra actor waited, pending, and no start-up failure was counted.
    assert "PENDING" in lines, out.stdout[-2000:]
    assert int(lines["PENDING"][0]) >= 1 and lines["PENDING"][2] == "0", lines["PENDING"]
    assert lines.get("GREW") == ["3"], out.stdout[-4000:] + out.stderr[-3000:]
    assert "REMOVED_NODE" in lines, out.stdout[-2000:]
    # The pool never gave up, and nothing was lost: every task completed exactly once.
    assert lines["POOL"][5] == "None", lines["POOL"]
    system.check_invariants()
    assert all(system.store.get(i).status is TaskStatus.COMPLETED for i in ids)
    deaths = [a for i in ids for a in system.store.get(i).attempts if a.stage == "worker-death"]
    # A node that vanished charges nobody: its tasks went back uncharged and completed elsewhere.
    assert deaths and all(a.outcome == "released" and a.error_class is None for a in deaths), deaths
    assert all(system.store.get(i).retries == 0 for i in ids)
    # All three actors took work (the one on the removed node may not have finished any: its node can
    # go while its first task runs); the two left finished the rest.
    attempts = [a for i in ids for a in system.store.get(i).attempts]
    assert len({a.actor for a in attempts}) >= 3, [(a.actor, a.outcome) for a in attempts]
    assert len({a.actor for a in attempts if a.outcome == "completed"}) >= 2


def test_two_fractional_actors_share_one_gpu_and_both_work(system):
    """``--gpus-per-actor 0.5``: two actors on one (logical) GPU, each transcribing."""
    audio = samples.sample_path("fox.wav").read_bytes()
    ids = system.submit([system.put(f"in/f{n}.wav", audio) for n in range(4)], engine=FAULTY_ENGINE,
                        options=TranscribeOptions(initial_prompt="fault:slow:1"))
    settings = system.settings.with_(worker={"num_gpus": 0.5, "min_actors": 2, "max_actors": 2, "prefetch": 1})
    seen: dict[str, object] = {}

    def look(orch):
        views = wait_for(lambda: (v := orch.pools.views()) and [a for a in v if a.state == "alive"] == v
                          and len(v) == 2 and v, what="two live actors")
        seen["gpus"] = [v.gpu_ids for v in views]

    system.run(settings, during=look)

    assert len(seen["gpus"]) == 2 and len(set(seen["gpus"])) == 1 and len(seen["gpus"][0]) == 1, seen
    done_by = {a.actor for i in ids for a in system.store.get(i).attempts if a.outcome == "completed"}
    assert len(done_by) == 2, done_by
    assert all(system.store.get(i).status is TaskStatus.COMPLETED for i in ids)


def test_pool_grows_while_work_waits_and_sheds_idle_actors_down_to_min(system):
    """min 1, max 2: claims come back full, so a second actor starts; once only the long task is
    left, the idle actor is stopped after pool_idle_s while the other still works."""
    from raytranscribe.orchestrator import RunOptions

    audio = samples.sample_path("fox.wav").read_bytes()
    (long,) = system.submit([system.put("in/long.wav", audio)], engine=FAULTY_ENGINE,
                            options=TranscribeOptions(initial_prompt="fault:slow:20"))
    short = system.submit([system.put(f"in/s{n}.wav", audio) for n in range(4)], engine=FAULTY_ENGINE,
                          options=TranscribeOptions(initial_prompt="fault:slow:0.2"))
    settings = system.settings.with_(worker={"min_actors": 1, "max_actors": 2, "prefetch": 1},
                                     health={"pool_idle_s": 1.0})
    orch = system.orchestrator(settings, RunOptions(idle_poll_s=0.2, grace_s=30))
    seen: dict[str, object] = {}

    def watch(orch):
        alive = lambda: [v for v in orch.pools.views() if v.state == "alive"]  # noqa: E731
        seen["grew"] = len(wait_for(lambda: len(alive()) == 2 and alive(), timeout=90, what="a second actor"))
        wait_for(lambda: all(system.store.get(i).status is TaskStatus.COMPLETED for i in short), timeout=90,
                  what="the short tasks")
        shrunk = wait_for(lambda: len(orch.pools.views()) == 1 and orch.pools.views(), timeout=30, what="shrinking")
        seen["left"] = [(v.state, v.in_flight) for v in shrunk]
        seen["long_then"] = system.store.get(long).status
        wait_for(lambda: system.store.get(long).status is TaskStatus.COMPLETED, timeout=60, what="the long task")
        orch.request_stop()

    system.run_orchestrators([orch], during=watch, timeout=180)

    assert seen["grew"] == 2
    assert seen["left"] == [("alive", 1)] and seen["long_then"] is TaskStatus.IN_PROGRESS, seen
    (pool,) = orch.pools.pools.values()
    assert pool.started == 2 and pool.start_failures == 0
    assert all(system.store.get(i).status is TaskStatus.COMPLETED for i in [long, *short])


def test_a_slow_model_download_shows_loading_with_bytes_and_is_not_a_hang(system, fault_server, tmp_path):
    """A model served slowly from S3: the actor shows *loading* with its bytes advancing for longer than
    ``start_timeout_s`` (a download making progress is not a hang), then becomes alive and works."""
    from tests.support.faultserver import Fault
    from tests.support.models import model_gets, serve_model, submit_with_model, tiny_model_files

    files = tiny_model_files()
    model = serve_model(fault_server, system.bucket, "models/slow/", files)
    size = len(files["model.bin"])
    fault_server.script(f"/{system.bucket}/models/slow/model.bin", Fault(200, rate_bps=size / 15), method="GET")
    ids, expected = submit_with_model(system, fault_server, ["fox.wav"], model)
    settings = system.use_fault_server(
        fault_server,
        engine={"model_cache_dir": str(tmp_path)},
        worker={"min_actors": 1, "max_actors": 1},
        health={"start_timeout_s": 5.0, "max_start_failures": 1},  # the download takes about 15 s
    )
    seen: list[tuple[str, str, int, int]] = []

    def watch(orch):
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not (seen and seen[-1][0] == "alive") and orch.summary.finished is None:
            seen.extend((v.state, v.loading, v.bytes_done, v.bytes_total) for v in orch.pools.views())
            time.sleep(0.2)

    orch = system.orchestrator(settings)
    system.run_orchestrators([orch], during=watch, timeout=200)

    loading = [(text, done, total) for state, text, done, total in seen if state == "loading"]
    downloading = [done for text, done, _ in loading if text.startswith("downloading ")]
    assert len(set(downloading)) >= 5 and downloading == sorted(downloading), seen  # bytes advance
    assert {total for _, _, total in loading} == {sum(map(len, files.values()))}
    assert any(text.endswith(" MB") and " of " in text for text, _, _ in loading), loading
    assert seen[-1][0] == "alive", seen[-5:]
    (pool,) = orch.pools.pools.values()
    assert (pool.started, pool.start_failures) == (1, 0)  # never killed as hung
    view = system.store.get(ids[0])
    assert view.status is TaskStatus.COMPLETED and [a.outcome for a in view.attempts] == ["completed"]
    (uri, sentence), = expected.items()
    assert wer(sentence, system.object_text(uri)) <= 0.3
    assert model_gets(fault_server, model, "model.bin") == 1  # one actor, never replaced: one download


def test_an_actor_is_refilled_once_a_quarter_of_its_slots_is_free(ray_session):
    """A pool offers an actor more work only once a quarter of its slots is free, so one take() call
    carries that many tasks: the driver pays one Ray call per batch. Small limits refill slot by slot.

    Real actors (faster-whisper, tiny.en): an idle one asks for ``max_tasks_in_hand`` tasks, held to
    ``prefetch``; tasks submitted and not yet sent hold their slots."""
    from raytranscribe.config import Settings
    from raytranscribe.contracts import TaskSpec
    from raytranscribe.engines.base import EngineSpec
    from raytranscribe.pool import ActorPools, new_owner_tag

    base = Settings(database_url=None).with_(
        engine={"cpu_threads": 1, "device": "cpu"},  # logical GPUs: cpu by choice
        worker={"min_actors": 1, "max_actors": 1, "num_gpus": 1, "num_cpus": 1},
        health={"ping_interval_s": 0.5},
    )
    engine = EngineSpec.from_settings(base.engine)
    big = ActorPools(base.with_(worker={"prefetch": 64, "max_tasks_in_hand": 64}), new_owner_tag())
    small = ActorPools(base.with_(worker={"prefetch": 2, "max_tasks_in_hand": 2}), new_owner_tag())
    try:
        pools = [p.ensure(engine) for p in (big, small)]

        def started() -> bool:
            for p in (big, small):
                p.tick()
                assert not p.gave_up(), p.gave_up()
            return all(pool.capacity() for pool in pools)

        wait_for(started, timeout=180, what="an idle live actor in each pool")
        big_pool, small_pool = pools
        assert [v.state for p in (big, small) for v in p.views()] == ["alive", "alive"]
        assert (big_pool.capacity(), small_pool.capacity()) == (64, 2)  # each idle actor's whole limit

        def task(n: int) -> TaskSpec:  # never sent: submitted tasks wait for send()
            return TaskSpec(task_id=n, attempt=1, input_url="http://127.0.0.1:9/never.wav",
                            input_uri=f"s3://never/{n}.wav", outputs=(), engine=engine)

        assert all(big_pool.submit(task(n)) for n in range(47))
        assert big_pool.capacity() == 17
        assert big_pool.submit(task(47))
        assert big_pool.capacity() == 16  # 48 of 64 held: a quarter free, worth a call
        assert big_pool.submit(task(48))
        assert big_pool.capacity() == 0  # 49 held: 15 free, not yet worth one
        assert big.in_flight == 49
        assert small_pool.submit(task(100))
        assert small_pool.capacity() == 1  # limit 2, one held: the free slot is offered at once
        assert small_pool.submit(task(101)) and small_pool.capacity() == 0
        assert not small_pool.submit(task(102))  # full: the orchestrator releases it
    finally:
        big.shutdown()
        small.shutdown()
