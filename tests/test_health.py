"""Actor health, failover and outages, proven by fault injection on real processes.

Each scenario checks the invariants (System.check_invariants) in the database and in S3:
every task completed, dead or cancelled; none stuck in progress; each completed task has all its
outputs and exactly one completed attempt; retries <= max_retries; every dead task's reason names
its stage.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import ray

from raytranscribe import samples
from raytranscribe.breakers import BreakerState, CircuitBreaker
from raytranscribe.config import BreakerSettings, RetrySettings
from raytranscribe.engines.base import TranscribeOptions
from raytranscribe.errors import Stage
from raytranscribe.orchestrator import NoWorkers, RunOptions
from raytranscribe.store import TaskStatus
from tests.support.batch_faults import computing_at_death, trace_prompt
from tests.support.faultserver import Fault
from tests.support.metrics import lines, scrape, total
from tests.support.system import FAULTY_ENGINE
from tests.support.wait import wait_for

# --- circuit breaker (pure) ---------------------------------------------------------------------


def test_breaker_opens_on_mostly_failing_transfers_and_closes_after_a_good_probe():
    now = [0.0]
    b = CircuitBreaker(Stage.DOWNLOAD, BreakerSettings(window=10, failure_ratio=0.8, min_samples=5, cooldown_s=30),
                       clock=lambda: now[0])
    for _ in range(4):
        b.record(False)
    assert b.state == "closed"  # too few samples to judge
    b.record(False)
    assert b.state == "open" and not b.allows_dispatch() and b.trips == 1
    now[0] = 31.0
    assert b.state is BreakerState.HALF_OPEN and b.allows_dispatch()
    b.record(False)  # the probe failed: another cool-down
    assert b.state == "open"
    now[0] = 62.0
    b.record(True)
    assert b.state == "closed"


def test_breaker_ignores_a_few_failures_among_successes():
    b = CircuitBreaker(Stage.UPLOAD, BreakerSettings(window=10, failure_ratio=0.8, min_samples=5, cooldown_s=30))
    for ok in [True, False, True, False, True, False, True, False, True, False]:
        b.record(ok)
    assert b.state == "closed"


# --- failure scenarios on real actors -----------------------------------------------------------


def _busy_actor(orch):
    """An actor that is transcribing a task right now (its ping says so)."""
    for actor in orch.pools.views():
        if actor.state == "alive" and actor.in_flight and {"transcribe", "batched"} & set(actor.stages):
            return actor
    return None


def _actor(orch, name: str):
    """The pool's current view of one actor; None once it is dead."""
    return next((a for a in orch.pools.views() if a.name == name), None)


def _slow_tasks(system, n: int, seconds: float = 2.0) -> list[int]:
    inputs = system.upload_samples()
    uris = [u for u, _ in inputs][:n]
    return system.submit(uris, engine=FAULTY_ENGINE, options=TranscribeOptions(initial_prompt=f"fault:slow:{seconds}"))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ray.kill", "SIGKILL"])
def test_actor_killed_mid_transcription_fails_over(system, how):
    ids = _slow_tasks(system, 4)
    killed = {}

    def kill(orch):
        actor = wait_for(lambda: _busy_actor(orch), what="an actor mid-transcription")
        killed["name"] = actor.name
        if how == "ray.kill":
            ray.kill(ray.get_actor(actor.name, namespace=orch.settings.namespace), no_restart=True)
        else:
            os.kill(actor.pid, signal.SIGKILL)

    system.run(during=kill)

    system.check_invariants()
    assert all(system.store.get(i).status is TaskStatus.COMPLETED for i in ids)
    deaths = [a for i in ids for a in system.store.get(i).attempts if a.stage == "worker-death"]
    assert deaths, "no attempt recorded the worker's death"
    assert all(killed["name"] in a.error_message for a in deaths)
    # The task inside the engine pays for the death; what the actor only held goes back uncharged.
    charged = [a for a in deaths if a.outcome != "released"]
    assert len(charged) == 1 and charged[0].error_class == "WorkerDied", deaths
    assert all(a.error_class is None for a in deaths if a.outcome == "released")


@pytest.mark.slow
def test_hung_transcription_is_killed_at_its_deadline(system):
    good = system.submit([system.upload_samples(["fox.wav"])[0][0]], engine=FAULTY_ENGINE)
    hung = system.submit(
        [system.put("in/hang.wav", open(__import__("raytranscribe.samples", fromlist=["x"]).sample_path("fox.wav"), "rb").read())],
        engine=FAULTY_ENGINE,
        options=TranscribeOptions(initial_prompt="fault:hang"),
        max_retries=1,
    )
    settings = system.settings.with_(health={"task_deadline_base_s": 4.0, "task_deadline_per_audio_s": 0.0})

    system.run(settings)

    system.check_invariants()
    assert system.store.get(good[0]).status is TaskStatus.COMPLETED
    view = system.store.get(hung[0])
    assert view.status is TaskStatus.DEAD
    assert [a.stage for a in view.attempts] == ["timeout", "timeout"]
    assert "deadline" in view.failure_reason and view.failure_reason.startswith("timeout:")


@pytest.mark.slow
def test_poison_file_that_kills_the_worker_ends_dead(system):
    good = system.submit([u for u, _ in system.upload_samples(["fox.wav", "doctor.flac"])], engine=FAULTY_ENGINE)
    poison = system.submit(
        [system.put("in/poison.wav", __import__("raytranscribe.samples", fromlist=["x"]).sample_path("fox.wav").read_bytes())],
        engine=FAULTY_ENGINE,
        options=TranscribeOptions(initial_prompt="fault:crash"),
    )
    settings = system.settings.with_(worker={"prefetch": 1})  # keep innocent tasks off the doomed actor

    system.run(settings)

    system.check_invariants()
    assert all(system.store.get(i).status is TaskStatus.COMPLETED for i in good)
    view = system.store.get(poison[0])
    assert view.status is TaskStatus.DEAD
    assert view.retries == view.max_retries
    assert {a.stage for a in view.attempts} == {"worker-death"}
    assert "retries exhausted" in view.failure_reason


@pytest.mark.slow
def test_model_that_cannot_load_stops_replacing_and_says_why(system):
    (uri, _), = system.upload_samples(["fox.wav"])
    report = system.store.submit(
        [__import__("raytranscribe.store", fromlist=["NewTask"]).NewTask(
            input_uri=uri, output_uri=f"s3://{system.bucket}/out/x", model="/nonexistent/model-dir")]
    )
    settings = system.settings.with_(health={"max_start_failures": 2, "replace_backoff_s": 0.1})
    orch = system.orchestrator(settings)
    with pytest.raises(NoWorkers, match="ModelLoadError: model path /nonexistent/model-dir does not exist"):
        orch.run()
    # Nothing was charged to the task: it waits, pending, for a model that loads.
    view = system.store.get(report.inserted[0])
    assert view.status is TaskStatus.PENDING and view.attempts == ()


@pytest.mark.slow
def test_s3_burst_of_503s_and_timeouts_opens_the_breaker_and_recovers(system, fault_server):
    from raytranscribe import samples

    settings = system.use_fault_server(
        fault_server,
        breaker={"window": 6, "min_samples": 4, "failure_ratio": 0.75, "cooldown_s": 1.0},
        retry={"max_retries": 6, "base_delay_s": 0.1, "max_delay_s": 0.3},
        transfer={"read_timeout_s": 0.5},
    )
    audio = samples.sample_path("fox.wav").read_bytes()
    uris = []
    for n in range(8):
        path = f"/{system.bucket}/in/{n}.wav"
        fault_server.put_object(path, audio)
        bad = Fault(503) if n % 2 else Fault(200, stall_after_bytes=100, stall_s=2.0)
        fault_server.script(path, bad, bad, Fault(), method="GET")
        uris.append(f"s3:/{path}")
    ids = system.submit(uris)
    orch = system.orchestrator(settings)

    system.run_orchestrators([orch], timeout=180)

    system.check_invariants()
    assert all(system.store.get(i).status is TaskStatus.COMPLETED for i in ids)
    assert orch.breakers["download"].trips >= 1
    stages = [(a.error_class, a.http_status) for i in ids for a in system.store.get(i).attempts if a.outcome != "completed"]
    assert ("ServerError", 503) in stages and any(c == "TransferTimeout" for c, _ in stages)


@pytest.mark.slow
def test_database_outage_buffers_outcomes_and_loses_nothing(system):
    """Connections to the test database are refused and every backend terminated, twice, mid-run."""
    inputs = system.upload_samples()
    ids = system.submit([u for u, _ in inputs])
    dbname = system.sql("SELECT current_database()")[0][0]
    admin_url = system.database_url.rsplit("/", 1)[0] + "/postgres"
    outages = []

    def outage(orch):
        from sqlalchemy import create_engine, text

        admin = create_engine(admin_url.replace("postgresql://", "postgresql+psycopg2://", 1), isolation_level="AUTOCOMMIT")

        def noticed_before_the_end() -> bool:
            """Whether a database call failed (an outcome write, a heartbeat, a claim) within 30 s,
            polled until the run ends: a finished orchestrator makes no more calls."""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and orch.summary.finished is None:
                if not orch.db_available:
                    return True
                time.sleep(0.05)
            return not orch.db_available

        for _ in range(2):
            wait_for(lambda: orch.in_flight > 0 or orch.summary.completed > 0, what="work in flight")
            if orch.summary.finished is not None:  # drained before this outage: nothing left to cut off
                break
            with admin.connect() as c:
                c.execute(text(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false'))
                c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"), {"d": dbname})
            outages.append(noticed_before_the_end())
            with admin.connect() as c:
                c.execute(text(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true'))
            time.sleep(1.0)
        admin.dispose()

    errors_before = total(lines(ray, "raytranscribe_store_transient_errors"))
    system.run(during=outage, timeout=240)

    system.check_invariants()
    assert all(system.store.get(i).status is TaskStatus.COMPLETED for i in ids)
    assert any(outages), "the orchestrator never noticed the outage"
    # What an operator's dashboard shows of it: the errors the store met, and the database back up.
    scrape(ray, {"raytranscribe_store_transient_errors", "raytranscribe_database_up"},
           ready=lambda f: total(f["raytranscribe_store_transient_errors"]) > errors_before
           and "1.0" in [line.rsplit(" ", 1)[1] for line in f["raytranscribe_database_up"]])


@pytest.mark.slow
def test_orchestrator_killed_mid_run_next_one_finishes_via_lease_expiry(system, ray_address):
    inputs = system.upload_samples()
    ids = system.submit([u for u, _ in inputs], engine=FAULTY_ENGINE, options=TranscribeOptions(initial_prompt="fault:slow:3"))
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_address,
        "RAYTRANSCRIBE_DATABASE_URL": system.database_url,
        "RAYTRANSCRIBE_S3__ENDPOINT_URL": system.settings.s3.endpoint_url,
        "RAYTRANSCRIBE_ENGINE__CPU_THREADS": "1",
        "RAYTRANSCRIBE_ENGINE__DEVICE": "cpu",  # logical GPUs: cpu by choice
        "RAYTRANSCRIBE_LEASE__LEASE_S": "4",
        "RAYTRANSCRIBE_LEASE__HEARTBEAT_S": "0.5",
        "RAYTRANSCRIBE_NAMESPACE": system.settings.namespace + "-doomed",
    }
    proc = subprocess.Popen([sys.executable, "-m", "raytranscribe.cli", "run", "--actors", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "in_progress" in system.statuses().values(), timeout=90, what="a claimed task")
    finally:
        proc.kill()  # SIGKILL: no cleanup, no release; its actors die with it
        proc.wait(30)
    stuck = [i for i, s in system.statuses().items() if s == "in_progress"]
    assert stuck

    system.run(system.settings.with_(lease={"lease_s": 4.0, "heartbeat_s": 0.5}))

    system.check_invariants()
    assert all(system.store.get(i).status is TaskStatus.COMPLETED for i in ids)
    for i in stuck:
        stages = [a.stage for a in system.store.get(i).attempts]
        # The vanished holder's attempt was reaped (stage "lease"); the last one completed (no stage).
        assert stages[0] == "lease" and stages[-1] is None, stages


BATCH_ENGINE = "tests.support.batch_faults:FaultyBatchEngine"


def _copies(system, n: int, folder: str) -> list[str]:
    """``n`` speech files under distinct names (each its own output stem), cycling the samples."""
    paths = list(samples.sample_paths())
    return [system.put(f"{folder}/{i:03d}-{folder}-{paths[i % len(paths)].name}", paths[i % len(paths)].read_bytes())
            for i in range(n)]  # fmt: skip


@pytest.mark.slow
def test_spot_churn_charges_only_what_each_crash_was_computing(system, tmp_path):
    """Eight actor SIGKILLs a few seconds apart (spot nodes vanishing) under the default retry policy,
    three actors holding up to eight tasks each, batches lasting 2.5 s as a large model's do on a GPU:
    every task completes, none is dead, and no task is charged more crashes than it was inside the
    engine for (read from the engine's own trace)."""
    trace = tmp_path / "trace"
    trace.mkdir()
    tags: dict[str, int] = {}
    for uri in _copies(system, 60, "churn"):
        tag = uri.rsplit("/", 1)[1].split("-", 1)[0]
        (tags[tag],) = system.submit([uri], engine=BATCH_ENGINE, max_retries=RetrySettings().max_retries,
                                     options=TranscribeOptions(initial_prompt=trace_prompt(trace, tag)))  # fmt: skip
    settings = system.settings.with_(
        worker={"min_actors": 3, "max_actors": 3, "prefetch": 8, "max_tasks_in_hand": 8},
        engine={"batch_size": 4, "batch_wait_ms": 200},
        health={"replace_backoff_s": 0.2},
    )
    kills: list[tuple[int, float]] = []
    rng = random.Random(8)

    def churn(orch):
        for _ in range(8):
            # Any busy actor, as a spot reclaim picks its node: not always the first in the list,
            # which would hit the task running alone there again and again.
            victim = wait_for(
                lambda: orch.outstanding == 0 or (rng.choice(busy) if (busy := [
                    a for a in orch.pools.views() if a.state == "alive" and a.in_flight and a.pid]) else None),
                timeout=120, what="a busy actor to kill",
            )  # fmt: skip
            if victim is True:
                return  # the work ran out first
            os.kill(victim.pid, signal.SIGKILL)
            kills.append((victim.pid, time.time()))
            time.sleep(2)

    system.run(settings, timeout=280, during=churn)

    assert len(kills) >= 6, kills
    system.check_invariants()
    views = {tag: system.store.get(i) for tag, i in tags.items()}
    unfinished = {t: (v.status, v.failure_reason, v.attempts) for t, v in views.items() if v.status is not TaskStatus.COMPLETED}
    assert not unfinished, unfinished
    released = beyond = 0
    for tag, v in views.items():
        charged = [a for a in v.attempts if a.stage == "worker-death" and a.outcome != "released"]
        released += sum(a.outcome == "released" for a in v.attempts)
        inside = sum(tag in computing_at_death(trace, pid, at, slack_s=0.5) for pid, at in kills)
        # The driver is told before the engine is entered (a crash inside must find it told), so a
        # kill in the moment between the note and the call charges a task the trace never saw
        # inside: once for a task at most, and rarely. Charging the tasks an actor merely held would
        # go far beyond this (each kill hits an actor holding up to eight).
        assert len(charged) <= inside + 1, (tag, inside, v.attempts)
        beyond += max(0, len(charged) - inside)
        assert v.crashes == len(charged), (tag, v.crashes, v.attempts)
    assert beyond <= 2, f"{beyond} charges of tasks that were not computing"
    assert released, "no task was handed back uncharged"


@pytest.mark.slow
def test_a_poison_file_in_a_batch_of_eight_ends_dead_alone(system):
    """A file that kills the process from inside a shared model call: the first crash charges the
    batch, then each suspect runs alone, so the poison ends dead on crashes of its own and its seven
    neighbours complete, each charged at most once."""
    good = system.submit(_copies(system, 7, "batch"), engine=BATCH_ENGINE, max_retries=3)
    poison = system.submit([_copies(system, 1, "poison")[0]], engine=BATCH_ENGINE, max_retries=3,
                           options=TranscribeOptions(initial_prompt="fault:crash"))  # fmt: skip
    settings = system.settings.with_(
        worker={"min_actors": 1, "max_actors": 1, "prefetch": 8, "max_tasks_in_hand": 8},
        engine={"batch_size": 8, "batch_wait_ms": 3000},
        health={"replace_backoff_s": 0.2},
    )

    system.run(settings, timeout=280)

    system.check_invariants()
    view = system.store.get(poison[0])
    assert view.status is TaskStatus.DEAD and view.crashes == 4, view
    assert "crashed the worker 4 times" in view.failure_reason, view.failure_reason
    for i in good:
        v = system.store.get(i)
        assert v.status is TaskStatus.COMPLETED and v.retries <= 1 and v.crashes <= 1, v


@pytest.mark.slow
@pytest.mark.timeout(420)  # above the subprocess's own 280 s watchdog, so that one reports
@pytest.mark.parametrize("mode", ["remove", "drain"])
def test_a_lost_node_charges_nobody(system, mode):
    """A separate multi-node Ray (ray.cluster_utils.Cluster) in a subprocess. ``remove``: one GPU node
    vanishes mid-run (a spot preemption without notice); ``drain``: Ray drains it first (the notice).
    Either way its tasks complete elsewhere with retries 0; a drained node takes no new work."""
    inputs = system.upload_samples()
    ids = system.submit([u for u, _ in inputs], engine=FAULTY_ENGINE, options=TranscribeOptions(initial_prompt="fault:slow:2"))
    env = {
        **os.environ,
        "RAYTRANSCRIBE_DATABASE_URL": system.database_url,
        "RAYTRANSCRIBE_S3__ENDPOINT_URL": system.settings.s3.endpoint_url,
    }
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.node_loss", mode], env=env, capture_output=True, text=True, timeout=280,
        check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lost = [line.split() for line in out.stdout.splitlines() if line.startswith("LOST_NODE")]
    assert lost, out.stdout[-2000:]
    node, lost_at = lost[0][2], float(lost[0][3])
    system.check_invariants()
    views = [system.store.get(i) for i in ids]
    assert all(v.status is TaskStatus.COMPLETED and v.retries == 0 and v.crashes == 0 for v in views), views
    on_node = [a for v in views for a in v.attempts if a.node and node.startswith(a.node[:12])]
    handed_back = [a for a in on_node if a.outcome == "released"]
    assert handed_back, on_node  # the node held tasks it did not finish: each went back uncharged
    assert all(a.outcome in ("released", "completed") for a in on_node), on_node
    if mode == "remove":
        assert all(a.stage == "worker-death" and "died" in a.error_message for a in handed_back), handed_back
    else:
        # Its waiting tasks moved off at the notice (the check runs every 0.5 s), and nothing new came.
        assert any(a.stage == "dispatch" and "drains" in a.error_message for a in handed_back), handed_back
        assert all(a.started_at.timestamp() <= lost_at + 2.0 for a in on_node), (lost_at, on_node)


@pytest.mark.slow
def test_frozen_actor_is_quarantined_then_killed_and_replaced(system):
    """SIGSTOP freezes a worker process (as a swapping or wedged host would): its pings go unanswered,
    it is quarantined (no new work), its task passes the deadline, the actor is killed and replaced."""
    ids = _slow_tasks(system, 4, seconds=1.0)
    settings = system.settings.with_(
        health={"ping_timeout_s": 1.0, "ping_interval_s": 0.3, "task_deadline_base_s": 5.0, "replace_backoff_s": 0.1}
    )
    seen: dict[str, object] = {}

    def freeze(orch):
        actor = wait_for(lambda: _busy_actor(orch), what="an actor mid-transcription")
        seen["name"] = actor.name
        os.kill(actor.pid, signal.SIGSTOP)
        quarantined = wait_for(lambda: (a := _actor(orch, actor.name)) and a.state == "quarantined" and a,
                                timeout=20, what="quarantine")
        seen["quarantined_with"] = quarantined.in_flight
        wait_for(lambda: _actor(orch, actor.name) is None, timeout=30, what="the frozen actor's death")
        (pool,) = orch.pools.pools.values()
        wait_for(lambda: pool.started >= 3 and len(pool.alive()) == 2, timeout=30, what="a live replacement")
        seen["replaced"] = True

    system.run(settings, during=freeze)

    system.check_invariants()
    assert all(system.store.get(i).status is TaskStatus.COMPLETED for i in ids)
    assert seen["quarantined_with"] >= 1
    assert seen.get("replaced"), "the dead actor was not replaced"
    stages = {a.stage for i in ids for a in system.store.get(i).attempts if a.outcome != "completed"}
    assert stages <= {"timeout", "worker-death"} and "timeout" in stages


@pytest.mark.slow
def test_status_shows_live_actors_and_breakers_during_a_run(system):
    # Long enough that the run outlasts both CLI processes (each a Python start-up) on a busy host.
    ids = _slow_tasks(system, 3, seconds=4.0)

    def cli(*args: str) -> str:
        # A real process, as an operator would run it next to a live orchestrator.
        proc = subprocess.run([sys.executable, "-m", "raytranscribe.cli", "--database-url", system.database_url, *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    shown: dict[str, object] = {}

    def look(orch):
        wait_for(lambda: orch.pools.live_count() == 2 and orch.in_flight > 0, what="two live actors at work")
        # A heartbeat publishes the state: wait until the published row shows both live actors.
        wait_for(lambda: any(len([a for a in o.state.get("actors", []) if a["state"] == "alive"]) == 2
                              for o in system.store.orchestrators()),
                  timeout=30, what="the state with two live actors published")
        shown["doc"] = __import__("json").loads(cli("status", "--json"))
        shown["text"] = cli("status")

    system.run(during=look)

    (orch_doc,) = shown["doc"]["orchestrators"]
    assert len(orch_doc["actors"]) == 2
    assert {a["state"] for a in orch_doc["actors"]} == {"alive"}
    assert all(a["name"].startswith("worker-") and a["gpu_ids"] for a in orch_doc["actors"])
    assert orch_doc["breakers"] == {"download": "closed", "presign": "closed", "upload": "closed"}
    assert orch_doc["breaker_trips"] == {"download": 0, "presign": 0, "upload": 0}
    assert list(orch_doc["actor_starts"].values()) == [2]
    assert all(a["batch_size"] >= 1 and a["buffered_audio_s"] >= 0 for a in orch_doc["actors"])
    assert "actors" in shown["text"] and "breakers: download closed" in shown["text"], shown["text"]
    # After the run the orchestrator retired its row.
    assert system.store.orchestrators() == []
    assert all(system.store.get(i).status is TaskStatus.COMPLETED for i in ids)


@pytest.mark.slow
def test_a_pool_with_no_work_left_gives_its_gpus_back(system):
    """Two (engine, model) pools; the one whose tasks are done retires while the other still works."""
    from raytranscribe import samples

    # Its own output name: the slow tasks below transcribe fox.wav too.
    fast = system.submit([system.put("in/quick.wav", samples.sample_path("fox.wav").read_bytes())])
    slow = _slow_tasks(system, 3, seconds=2.0)
    settings = system.settings.with_(health={"pool_idle_s": 0.5}, worker={"min_actors": 1, "max_actors": 1})
    seen: dict[str, object] = {}

    def watch(orch):
        key = ("faster-whisper", "tiny.en")
        wait_for(lambda: key in orch.pools.pools, what="the faster-whisper pool")
        wait_for(lambda: system.store.get(fast[0]).status is TaskStatus.COMPLETED, what="the quick task")
        wait_for(lambda: key not in orch.pools.pools, timeout=30, what="the idle pool to retire")
        seen["slow_in_flight"] = orch.in_flight
        seen["pools"] = sorted(orch.pools.pools)

    system.run(settings, during=watch)

    assert seen["pools"] == [(FAULTY_ENGINE, "tiny.en")]
    assert seen["slow_in_flight"] >= 1  # the other pool was still at work when this one retired
    assert all(system.store.get(i).status is TaskStatus.COMPLETED for i in fast + slow)


@pytest.mark.slow
def test_actor_whose_transcriptions_keep_failing_is_replaced(system):
    """A sick GPU shows up as transcription after transcription failing on one actor: replace it."""
    (uri, _), = system.upload_samples(["fox.wav"])
    bad = system.submit([uri], engine=FAULTY_ENGINE, options=TranscribeOptions(initial_prompt="fault:raise"), max_retries=4)
    settings = system.settings.with_(worker={"min_actors": 1, "max_actors": 1},
                                     health={"max_consecutive_failures": 2, "replace_backoff_s": 0.1})
    orch = system.orchestrator(settings)

    system.run_orchestrators([orch])

    (pool,) = orch.pools.pools.values()
    assert pool.started >= 3  # replaced after every second failure: 5 attempts, 2 replacements
    view = system.store.get(bad[0])
    assert view.status is TaskStatus.DEAD and len(view.attempts) == 5
    assert {a.stage for a in view.attempts} == {"transcribe"}
    assert len({a.actor for a in view.attempts}) >= 3


@pytest.mark.slow
def test_actors_that_cannot_be_placed_wait_pending_and_are_never_start_failures(system):
    """An actor that asks for more than the cluster has waits for resources (the autoscaler may be
    adding a node): it is shown as pending, never counted as a start-up failure, never killed as
    "did not start", and the task it would run stays pending, uncharged."""
    (uri, _), = system.upload_samples(["fox.wav"])
    (task_id,) = system.submit([uri])
    settings = system.settings.with_(
        worker={"num_gpus": 64, "min_actors": 1, "max_actors": 1},  # more than the cluster has: never placed
        health={"start_timeout_s": 0.5, "max_start_failures": 1, "replace_backoff_s": 0.1},
    )
    orch = system.orchestrator(settings, RunOptions(idle_poll_s=0.2, grace_s=1))
    seen: dict[str, object] = {}

    def look(orch):
        wait_for(lambda: orch.pools.views(), what="an actor")
        time.sleep(3.0)  # six start timeouts' worth
        seen["views"] = orch.pools.views()
        (pool,) = orch.pools.pools.values()
        seen["start_failures"], seen["gave_up"], seen["started"] = pool.start_failures, pool.gave_up, pool.started
        shown = system.store.orchestrators()
        seen["status"] = [a["state"] for o in shown for a in o.state.get("actors", [])]
        orch.request_stop()

    system.run_orchestrators([orch], during=look, timeout=60)

    assert [v.state for v in seen["views"]] == ["pending"]
    assert seen["start_failures"] == 0 and seen["gave_up"] is None and seen["started"] == 1
    assert seen["status"] == ["pending"]
    view = system.store.get(task_id)
    assert view.status is TaskStatus.PENDING and view.attempts == ()
