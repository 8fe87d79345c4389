"""Ray metrics reach the node's Prometheus endpoint (what the dashboard and Grafana scrape)."""

from __future__ import annotations

import time

import pytest
import requests

pytestmark = pytest.mark.slow


def _audio_total(found: dict[str, list[str]]) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in found.get("raytranscribe_audio_seconds", []) if "_total{" in line]
    return max(values, default=0.0)


def _body(ray_session) -> str:
    port = next(n["MetricsExportPort"] for n in ray_session.nodes() if n["Alive"])
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def _scrape(ray_session, names: set[str], timeout: float = 30.0, ready=lambda found: True) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    found: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        body = _body(ray_session)
        found = {n: [line for line in body.splitlines() if line.startswith(f"ray_{n}")] for n in names}
        if all(found.values()) and ready(found):
            return found
        time.sleep(0.5)
    raise AssertionError(f"metrics missing from the endpoint: {[n for n, v in found.items() if not v]}")


def test_a_run_exports_outcome_stage_and_audio_metrics(system):
    # Counters live as long as the Ray session: earlier tests' audio is already counted.
    ray_module = __import__("ray")
    before = _audio_total({"raytranscribe_audio_seconds": [
        line for line in _body(ray_module).splitlines() if line.startswith("ray_raytranscribe_audio_seconds")
    ]})
    inputs = system.upload_samples(["fox.wav", "doctor.flac"])
    corrupt = system.put("in/corrupt.wav", b"not audio" * 100)
    system.submit([u for u, _ in inputs] + [corrupt])

    summary = system.run()

    assert summary.completed == 2 and summary.dead == 1
    expected_audio = sum(system.store.get(i).audio_duration_s or 0 for i in (1, 2))
    found = _scrape(ray_module, {
        "raytranscribe_tasks_finished",
        "raytranscribe_stage_seconds",
        "raytranscribe_audio_seconds",
        "raytranscribe_live_actors",
        "raytranscribe_tasks_in_flight",
        "raytranscribe_queue_depth",
    }, ready=lambda f: _audio_total(f) >= before + expected_audio - 0.01)
    finished = found["raytranscribe_tasks_finished"]
    assert any('outcome="completed"' in line for line in finished)
    assert any('outcome="dead"' in line and 'stage="decode"' in line for line in finished)
    assert any('stage="transcribe"' in line for line in found["raytranscribe_stage_seconds"])
    assert any('status="pending"' in line for line in found["raytranscribe_queue_depth"])
    assert expected_audio > 5.0 and _audio_total(found) - before == pytest.approx(expected_audio, abs=0.01)
