"""The orchestrator end to end: real Postgres, S3 over HTTP, Ray actors on logical GPUs, tiny.en."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest

from raytranscribe.store import TaskStatus
from tests.support.faultserver import Fault
from tests.support.speech import wer
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow


def test_end_to_end_real_speech(system):
    inputs = system.upload_samples()
    assert len(inputs) >= 4
    ids = system.submit([uri for uri, _ in inputs])

    summary = system.run()

    assert summary.completed == len(ids)
    assert summary.dead == 0
    system.check_invariants()
    for (uri, sentence), task_id in zip(inputs, ids):
        view = system.store.get(task_id)
        assert view.status is TaskStatus.COMPLETED
        assert view.attempt == 1 and view.retries == 0
        assert [a.outcome for a in view.attempts] == ["completed"]
        assert view.attempts[0].actor and view.attempts[0].actor.startswith("worker-")
        stem = view.output_uri
        txt = system.object_text(f"{stem}.txt")
        assert wer(sentence, txt) <= 0.25, (sentence, txt)
        doc = json.loads(system.object_text(f"{stem}.json"))
        assert doc["engine"] == "faster-whisper" and doc["model"] == "tiny.en"
        assert doc["duration_s"] == pytest.approx(view.audio_duration_s, abs=0.01)
        assert system.object_text(f"{stem}.srt").startswith("1\n00:00:")
        assert system.object_text(f"{stem}.vtt").startswith("WEBVTT")
        assert view.audio_duration_s > 1.0
    # Both actors took work: dispatch spreads over the pool.
    actors = {a.actor for t in ids for a in system.store.get(t).attempts}
    assert len(actors) == 2, actors


class _Recorder:
    """An orchestrator observer that keeps what the store answered for every outcome written."""

    def __init__(self) -> None:
        self.results: list[tuple[object, object]] = []
        self.heartbeats = 0

    def recorded(self, outcome, result) -> None:
        self.results.append((outcome, result))

    def heartbeat(self, orchestrator) -> None:
        self.heartbeats += 1


def _fault_settings(system, fault_server):
    """S3 presigned against the fault server: the same signing code, a store that misbehaves on cue."""
    return system.use_fault_server(fault_server)


def test_transient_503_is_retried_and_completes(system, fault_server, make_store):
    from raytranscribe.orchestrator import Orchestrator, RunOptions
    from raytranscribe.storage import S3Storage

    # A first retry due up to 2 s later (full jitter): longer than the orchestrator takes to claim again,
    # so a retry claimed before it was due would show.
    settings = _fault_settings(system, fault_server).with_(retry={"base_delay_s": 2.0, "max_delay_s": 2.0})
    (path,) = [p for p in __import__("raytranscribe.samples", fromlist=["x"]).sample_paths() if p.suffix == ".wav"][:1]
    fault_server.put_object(f"/{system.bucket}/in/a.wav", path.read_bytes())
    fault_server.script(f"/{system.bucket}/in/a.wav", Fault(503), Fault(), method="GET")
    (task_id,) = system.submit([f"s3://{system.bucket}/in/a.wav"])
    recorder = _Recorder()
    # Its own store: the retry policy (and so the backoff) is the store's.
    orch = Orchestrator(settings, make_store(settings), S3Storage(settings.s3), observer=recorder,
                        options=RunOptions(until_drained=True, idle_poll_s=0.2, grace_s=10))

    (summary,) = system.run_orchestrators([orch])

    view = system.store.get(task_id)
    assert view.status is TaskStatus.COMPLETED
    assert view.retries == 1
    assert [a.outcome for a in view.attempts] == ["failed", "completed"]
    first = view.attempts[0]
    assert first.stage == "download" and first.http_status == 503 and first.error_class == "ServerError"
    assert first.decision == f"transient error, retry 1 of {view.max_retries}"
    assert summary.retried == 1 and summary.completed == 1
    # The failure scheduled the retry after a backoff (full jitter: at most base_delay_s for the first
    # retry), and the retry was not claimed before it was due (every time here is the database's).
    (retry_at,) = [r.retry_at for _, r in recorder.results if r.status is TaskStatus.FAILED]
    assert timedelta(0) <= retry_at - first.finished_at <= timedelta(seconds=settings.retry.base_delay_s)
    assert view.attempts[1].started_at >= retry_at
    assert fault_server.get_object(f"/{system.bucket}/out/a.txt")


def test_permanent_failures_are_dead_at_once(system, fault_server):
    corrupt = system.put("in/corrupt.wav", b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
    missing = f"s3://{system.bucket}/in/does-not-exist.wav"
    ids = system.submit([corrupt, missing])
    # The alert webhook is a real HTTP endpoint (the fault server records what it receives).
    settings = system.settings.with_(alerts={"webhook_url": fault_server.url("/hooks/alerts")})

    summary = system.run(settings)

    assert summary.dead == 2 and summary.retried == 0
    corrupt_view, missing_view = (system.store.get(i) for i in ids)
    assert corrupt_view.status is TaskStatus.DEAD and corrupt_view.retries == 0
    assert corrupt_view.failure_reason.startswith("decode:")
    assert corrupt_view.attempts[0].error_class == "AudioDecodeError"
    assert missing_view.status is TaskStatus.DEAD and missing_view.retries == 0
    assert missing_view.failure_reason.startswith("download:")
    assert "404" in missing_view.failure_reason
    assert missing_view.attempts[0].http_status == 404
    system.check_invariants()
    posts = fault_server.wait_for_requests(2)
    hooks = [r for r in posts if r.path == "/hooks/alerts" and r.method == "POST"]
    assert len(hooks) == 2 and all(r.headers["content-type"] == "application/json" for r in hooks)
    last = json.loads(fault_server.get_object("/hooks/alerts").body)
    assert last["event"] == "task_dead" and last["task_id"] in ids and last["reason"].split(":")[0] in ("decode", "download")


def test_exhausted_retries_end_dead(system, fault_server):
    settings = _fault_settings(system, fault_server)
    fault_server.script(f"/{system.bucket}/in/b.wav", Fault(500), method="GET")
    (task_id,) = system.submit([f"s3://{system.bucket}/in/b.wav"])

    system.run(settings)

    view = system.store.get(task_id)
    assert view.status is TaskStatus.DEAD
    assert view.retries == view.max_retries == 2
    assert len(view.attempts) == 3
    assert all(a.http_status == 500 for a in view.attempts)
    assert "retries exhausted" in view.failure_reason
    system.check_invariants()


def test_two_orchestrators_complete_each_task_exactly_once(system):
    inputs = system.upload_samples()
    uris = [uri for uri, _ in inputs]
    # More tasks than samples: the same audio under several keys.
    for i in range(2):
        for uri, _ in inputs:
            key = uri.split("/", 3)[3]
            system.s3_client.copy_object(
                Bucket=system.bucket, Key=f"copy{i}/{key}", CopySource={"Bucket": system.bucket, "Key": key}
            )
            uris.append(f"s3://{system.bucket}/copy{i}/{key}")
    tasks = []
    for uri in uris:
        tasks.append(uri)
    from raytranscribe.store import NewTask

    report = system.store.submit(
        [NewTask(input_uri=u, output_uri=f"s3://{system.bucket}/out/{n}") for n, u in enumerate(uris)]
    )
    settings = system.settings.with_(worker={"min_actors": 1, "max_actors": 1})
    a, b = system.orchestrator(settings), system.orchestrator(settings)

    summaries = system.run_orchestrators([a, b], timeout=240)

    assert sum(s.completed for s in summaries) == len(report.inserted)
    assert all(s.completed > 0 for s in summaries), [s.completed for s in summaries]
    rows = system.sql(
        "SELECT task_id, count(*) FROM task_attempts WHERE outcome = 'completed' GROUP BY task_id"
    )
    assert len(rows) == len(report.inserted) and all(c == 1 for _, c in rows)
    system.check_invariants()


def test_sigterm_releases_or_finishes_in_flight_work(system, ray_address, tmp_path):
    """`raytranscribe run` in a subprocess, SIGTERM mid-run: nothing stays in progress."""
    inputs = system.upload_samples()
    ids = system.submit([u for u, _ in inputs] * 1, options=None)
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_address,
        "RAYTRANSCRIBE_DATABASE_URL": system.database_url,
        "RAYTRANSCRIBE_S3__ENDPOINT_URL": system.settings.s3.endpoint_url,
        "RAYTRANSCRIBE_ENGINE__CPU_THREADS": "1",
        "RAYTRANSCRIBE_ENGINE__DEVICE": "cpu",  # logical GPUs: cpu by choice
        "RAYTRANSCRIBE_WORKER__NUM_GPUS": "1",
        "RAYTRANSCRIBE_LEASE__HEARTBEAT_S": "0.5",
        "RAYTRANSCRIBE_NAMESPACE": system.settings.namespace + "-sub",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "raytranscribe.cli", "run", "--actors", "1", "--grace", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Wait until something is in progress (or already done), then ask it to stop.
    try:
        wait_for(lambda: any(s in ("in_progress", "completed") for s in system.statuses().values()),
                  timeout=90, what="a task claimed by the subprocess")
    except AssertionError:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
        raise AssertionError(f"nothing reached in_progress within 90 s; its output:\n{out[-3000:]}") from None
    opened_before = system.sql("SELECT count(*) FROM task_attempts")[0][0]
    assert opened_before >= 1  # the signal lands on a run that has claimed work
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    statuses = system.statuses()
    assert "in_progress" not in statuses.values(), statuses
    assert set(statuses.values()) <= {"completed", "pending"}, statuses
    released = system.sql("SELECT count(*) FROM task_attempts WHERE outcome = 'released'")[0][0]
    completed = sum(1 for s in statuses.values() if s == "completed")
    # Every attempt that was opened either finished or was handed back without charging a retry.
    opened = system.sql("SELECT count(*) FROM task_attempts")[0][0]
    assert opened >= opened_before and opened == released + completed, (opened_before, opened, released, completed, out)
    assert all(system.store.get(i).retries == 0 for i in ids)
    # What was released is picked up by the next run.
    system.run()
    system.check_invariants()


def test_engine_crash_is_transient_and_bounded(system):
    """An unexpected exception inside the engine (an OOM, say) is retried, then buried with its cause."""
    from raytranscribe.engines.base import TranscribeOptions
    from tests.support.system import FAULTY_ENGINE

    (uri, _), = system.upload_samples(["fox.wav"])
    (task_id,) = system.submit([uri], engine=FAULTY_ENGINE, options=TranscribeOptions(initial_prompt="fault:raise"))

    system.run()

    view = system.store.get(task_id)
    assert view.status is TaskStatus.DEAD
    assert view.retries == view.max_retries == 2 and len(view.attempts) == 3
    assert {(a.stage, a.error_class) for a in view.attempts} == {("transcribe", "TranscriptionError")}
    assert "RuntimeError: CUDA error: out of memory (injected)" in view.attempts[0].error_message
    assert view.failure_reason.startswith("transcribe: RuntimeError: CUDA error")
    system.check_invariants()


def test_presign_failure_is_recorded_on_the_task(system, no_aws_credentials):
    """Credentials vanish on the driver: every attempt fails at presign, transiently, then the task is dead."""
    from raytranscribe.orchestrator import Orchestrator, RunOptions
    from raytranscribe.storage import S3Storage

    (uri, _), = system.upload_samples(["fox.wav"])
    (task_id,) = system.submit([uri])
    storage = S3Storage(system.settings.s3)  # the standard chain, found empty
    orch = Orchestrator(system.settings, system.store, storage, options=RunOptions(until_drained=True, idle_poll_s=0.2))

    system.run_orchestrators([orch])

    view = system.store.get(task_id)
    assert view.status is TaskStatus.DEAD and view.retries == view.max_retries
    assert {(a.stage, a.error_class) for a in view.attempts} == {("presign", "PresignError")}
    assert all(a.actor is None for a in view.attempts)  # never reached a worker
    assert "AWS credentials unavailable" in view.failure_reason and view.failure_reason.startswith("presign:")


def test_presign_outage_opens_the_breaker_instead_of_burning_retries(system, no_aws_credentials):
    """Credentials gone on the driver with many tasks queued: a few attempts fail, the presign breaker
    opens, the rest of the claimed batch goes back uncharged, and no task is buried."""
    from raytranscribe.orchestrator import Orchestrator, RunOptions
    from raytranscribe.storage import S3Storage

    (uri, _), = system.upload_samples(["fox.wav"])
    uris = [uri] + [system.put(f"in/copy-{n}.wav", b"x") for n in range(15)]
    ids = system.submit(uris)
    settings = system.settings.with_(
        breaker={"window": 4, "min_samples": 4, "failure_ratio": 0.75, "cooldown_s": 60.0},
        retry={"max_retries": 5},
        worker={"min_actors": 1, "max_actors": 1, "prefetch": 8},  # one claim of 8: the breaker opens after the 4th presign
    )
    storage = S3Storage(settings.s3)  # the standard chain, found empty
    recorder = _Recorder()
    orch = Orchestrator(settings, system.store, storage, options=RunOptions(idle_poll_s=0.1, grace_s=2),
                        observer=recorder)

    def stop_once_settled(orch) -> None:
        # The breaker opened, the rest of the batch went back and the failed attempts were written...
        wait_for(lambda: orch.breakers["presign"].trips >= 1 and orch.summary.released >= 4
                  and orch.summary.retried >= 4, timeout=45, what="the breaker to open and the batch to settle")
        # ...then two more heartbeats, so that at least one whole turn (claims included) ran with the
        # breaker open: whatever it would wrongly claim or charge then is counted below.
        settled = recorder.heartbeats
        wait_for(lambda: recorder.heartbeats >= settled + 2, timeout=30, what="two more heartbeats")
        orch.request_stop()

    system.run_orchestrators([orch], timeout=90, during=stop_once_settled)

    assert orch.breakers["presign"].trips == 1 and orch.breakers["presign"].state == "open"
    attempts = system.sql("SELECT count(*) FROM task_attempts WHERE stage = 'presign'")[0][0]
    assert attempts == 4, attempts  # the breaker's window, not the whole queue
    statuses = {system.store.get(i).status for i in ids}
    assert TaskStatus.DEAD not in statuses and statuses <= {TaskStatus.PENDING, TaskStatus.FAILED}
    released = system.sql("SELECT count(*) FROM task_attempts WHERE outcome = 'released'")[0][0]
    assert released == 4  # the rest of the claimed batch went back uncharged


def test_until_drained_with_engine_and_model_ignores_other_pools(system):
    from raytranscribe.orchestrator import RunOptions
    from raytranscribe.store import NewTask

    (uri, _), = system.upload_samples(["fox.wav"])
    mine = system.submit([uri])
    other = system.store.submit([NewTask(uri, f"s3://{system.bucket}/out/other", model="large-v3")]).inserted

    summary = system.run(options=RunOptions(until_drained=True, pairs=(("faster-whisper", "tiny.en"),), idle_poll_s=0.2))

    assert summary.completed == 1
    assert system.store.get(mine[0]).status is TaskStatus.COMPLETED
    assert system.store.get(other[0]).status is TaskStatus.PENDING  # not its pool: untouched, and no wait for it


@pytest.mark.timeout(300)  # far below pool_idle_s: a run that waited for the idle pool to retire fails here
def test_until_drained_ends_at_once_when_what_is_left_waits_for_a_model_that_cannot_load(system):
    """Issue 11: the good work done, a task for a model that cannot load must not hold the run for
    ``pool_idle_s``: the run ends at once, saying which tasks wait for which model."""
    from raytranscribe.orchestrator import NoWorkers
    from raytranscribe.store import NewTask

    (uri, _), = system.upload_samples(["fox.wav"])
    good = system.submit([uri])
    bad = system.store.submit([NewTask(uri, f"s3://{system.bucket}/out/bad", model="/nonexistent/model-dir")]).inserted
    settings = system.settings.with_(health={"max_start_failures": 2, "replace_backoff_s": 0.1, "pool_idle_s": 600.0})
    orch = system.orchestrator(settings)

    with pytest.raises(NoWorkers) as info:
        orch.run()

    message = str(info.value)
    assert message.startswith("nothing left that can run: 1 task(s) wait for faster-whisper//nonexistent/model-dir")
    assert "ModelLoadError" in message
    assert system.store.get(good[0]).status is TaskStatus.COMPLETED
    assert system.store.get(bad[0]).status is TaskStatus.PENDING and system.store.get(bad[0]).attempts == ()
