"""Ray metrics reach the node's Prometheus endpoint (what the dashboard and Grafana scrape)."""

from __future__ import annotations

import re

import pytest

from tests.support import grafana
from tests.support.metrics import body, lines, scrape, total

pytestmark = pytest.mark.slow


def test_a_run_exports_outcome_stage_and_audio_metrics(system):
    # Counters live as long as the Ray session: earlier tests' audio is already counted.
    ray_module = __import__("ray")
    before = total(lines(ray_module, "raytranscribe_audio_seconds"))
    inputs = system.upload_samples(["fox.wav", "doctor.flac"])
    corrupt = system.put("in/corrupt.wav", b"not audio" * 100)
    system.submit([u for u, _ in inputs] + [corrupt])

    summary = system.run()

    assert summary.completed == 2 and summary.dead == 1
    expected_audio = sum(system.store.get(i).audio_duration_s or 0 for i in (1, 2))
    found = scrape(ray_module, {
        "raytranscribe_tasks_finished",
        "raytranscribe_stage_seconds",
        "raytranscribe_audio_seconds",
        "raytranscribe_live_actors",
        "raytranscribe_tasks_in_flight",
        "raytranscribe_queue_depth",
        "raytranscribe_database_up",
        "raytranscribe_rtfx",
    }, ready=lambda f: total(f["raytranscribe_audio_seconds"]) >= before + expected_audio - 0.01)
    finished = found["raytranscribe_tasks_finished"]
    assert any('outcome="completed"' in line for line in finished)
    assert any('outcome="dead"' in line and 'stage="decode"' in line for line in finished)
    assert any('stage="transcribe"' in line for line in found["raytranscribe_stage_seconds"])
    assert any('status="pending"' in line for line in found["raytranscribe_queue_depth"])
    # One series per driver process that ran an orchestrator in this Ray session; this one's is up.
    assert 1.0 in [float(line.rsplit(" ", 1)[1]) for line in found["raytranscribe_database_up"]]
    assert expected_audio > 5.0
    assert total(found["raytranscribe_audio_seconds"]) - before == pytest.approx(expected_audio, abs=0.01)
    # RTFx: audio seconds per wall second of this run, set when outcomes with completions are recorded
    # (so at least the run's own figure, which counts the time after the last one too).
    rtfx = [float(line.rsplit(" ", 1)[1]) for line in found["raytranscribe_rtfx"]]
    assert summary.rtfx > 0 and max(rtfx) >= summary.rtfx


def test_the_dashboard_queries_series_by_the_names_the_endpoint_exports(system):
    """Every series the Grafana dashboard queries, of each metric this run exported, is on the endpoint
    under exactly that name (Ray's ``ray_`` prefix, a counter's ``_total``, a histogram's three)."""
    ray_module = __import__("ray")
    inputs = system.upload_samples(["fox.wav"])
    system.submit([u for u, _ in inputs])
    assert system.run().completed == 1
    scrape(ray_module, {"raytranscribe_rtfx", "raytranscribe_stage_seconds", "raytranscribe_circuit_open"})
    on_endpoint = set(re.findall(r"^(ray_raytranscribe_\w+)[{ ]", body(ray_module), re.MULTILINE))
    queried = set().union(*(grafana.series_in(expr) for _, expr in grafana.queries(grafana.load())))
    checked = []
    for name, (series, _) in grafana.exported().items():
        if series & on_endpoint:
            checked.append(name)
            absent = sorted(series & queried - on_endpoint)
            assert absent == [], f"{name}: the dashboard queries {absent}, which the endpoint does not have"
    # Every metric but the store's transient errors (none happen here) was exported by this run.
    assert len(checked) >= 9, checked
