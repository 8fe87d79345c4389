"""A mixed soak: 300+ tasks through the whole system with every kind of fault at once.

S3 is the fault server for this run (inputs and outputs live there), so any object can misbehave
on cue. Meanwhile an actor is killed and every database connection is terminated.
"""

from __future__ import annotations

import io
import time
import wave

import pytest
import ray
from sqlalchemy import create_engine, text

from raytranscribe import samples
from raytranscribe.engines.base import TranscribeOptions
from raytranscribe.store import NewTask, TaskStatus
from tests.support.faultserver import Fault
from tests.support.system import FAULTY_ENGINE

pytestmark = pytest.mark.slow


def _silence_wav(seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * int(16000 * seconds))
    return buf.getvalue()


@pytest.mark.timeout(600)  # above the run's own 420 s watchdog (and its 30 s stop), so that one reports
def test_mixed_soak_of_300_tasks(system, fault_server):
    settings = system.use_fault_server(
        fault_server,
        retry={"max_retries": 5, "base_delay_s": 0.1, "max_delay_s": 0.5},
        transfer={"read_timeout_s": 0.5},
        breaker={"cooldown_s": 0.5},
    )
    bucket = system.bucket
    silence = _silence_wav()
    tasks: list[NewTask] = []
    expect: dict[str, str] = {}  # input uri -> expected final status

    def add(name: str, body: bytes | None, *faults: Fault, status: str = "completed", options=None, max_retries=None):
        path = f"/{bucket}/soak/{name}"
        if body is not None:
            fault_server.put_object(path, body)
        if faults:
            fault_server.script(path, *faults, method="GET")
        uri = f"s3://{bucket}/soak/{name}"
        tasks.append(NewTask(input_uri=uri, output_uri=f"s3://{bucket}/out/{name}", engine=FAULTY_ENGINE,
                             options=options or TranscribeOptions(), max_retries=max_retries))
        expect[uri] = status

    for n in range(250):
        add(f"silence-{n}.wav", silence)
    for n, path in enumerate(samples.sample_paths() * 3):
        add(f"speech-{n}{path.suffix}", path.read_bytes())
    for n in range(12):
        add(f"flaky503-{n}.wav", silence, Fault(503), Fault())
        add(f"stall-{n}.wav", silence, Fault(200, stall_after_bytes=64, stall_s=1.5), Fault())
    for n in range(6):
        add(f"missing-{n}.wav", None, status="dead")
        add(f"corrupt-{n}.wav", b"\x00not audio at all" * 50, status="dead")
    add("poison.wav", silence, status="dead", options=TranscribeOptions(initial_prompt="fault:crash"), max_retries=1)
    assert len(tasks) >= 300
    report = system.store.submit(tasks)
    assert len(report.inserted) == len(tasks)

    events: list[str] = []

    def chaos(orch) -> None:
        # Kill a busy actor once a third of the work is done.
        deadline = time.monotonic() + 120
        while orch.summary.completed < len(tasks) // 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        # Not every moment has a busy live actor (one may be replacing the poison's crash, the
        # other between batches): look until one has.
        while not events and time.monotonic() < deadline:
            for actor in orch.pools.views():
                if actor.state == "alive" and actor.in_flight:
                    ray.kill(ray.get_actor(actor.name, namespace=orch.settings.namespace), no_restart=True)
                    events.append(f"killed {actor.name}")
                    break
            else:
                time.sleep(0.05)
        # Then terminate every connection to the test database, twice.
        while orch.summary.completed < 2 * len(tasks) // 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        engine = create_engine(system.database_url)
        for _ in range(2):
            with engine.connect() as c:
                n = c.execute(
                    text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND pid <> pg_backend_pid()")
                ).scalar()
            events.append(f"terminated {n} backends")
            time.sleep(0.3)
        engine.dispose()

    started = time.monotonic()
    system.run(settings, during=chaos, timeout=420)
    elapsed = time.monotonic() - started

    assert any(e.startswith("killed") for e in events), events
    assert any(e.startswith("terminated") for e in events), events
    system.check_invariants()
    final = {t.input_uri: t.status.value for t in system.store.list_tasks(limit=10_000)}
    wrong = {u: (final[u], want) for u, want in expect.items() if final[u] != want}
    assert not wrong, wrong
    poison = next(t for t in system.store.list_tasks(status=TaskStatus.DEAD, limit=1000) if "poison" in t.input_uri)
    assert poison.failure_reason.startswith("worker-death:")
    print(f"soak: {len(tasks)} tasks in {elapsed:.1f}s; events: {events}")
