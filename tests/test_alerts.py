"""Webhook alerts against a real HTTP server on loopback (the fault server records what it got)."""

from __future__ import annotations

import json

from raytranscribe.alerts import Alerter
from raytranscribe.config import AlertSettings
from tests.support.faultserver import Fault


def _posts(fault_server, path: str, n: int) -> list[dict]:
    fault_server.wait_for_requests(n, timeout=5)
    return [r for r in fault_server.requests if r.path == path and r.method == "POST"]


def test_dead_task_posts_json(fault_server):
    alerter = Alerter(AlertSettings(webhook_url=fault_server.url("/hook")))
    alerter.task_dead(42, "download: Failed to download from S3: 404 Not Found (permanent error)")
    posts = _posts(fault_server, "/hook", 1)
    assert len(posts) == 1
    assert alerter.sent[0]["event"] == "task_dead" and alerter.sent[0]["task_id"] == 42


def test_failure_rate_alert_once_per_excursion():
    now = [0.0]
    alerter = Alerter(AlertSettings(failure_rate_threshold=0.5, window_s=60, min_tasks=4), clock=lambda: now[0])
    for ok in (True, False, False, False):
        alerter.observe(ok)
    rate_alerts = [a for a in alerter.sent if a["event"] == "failure_rate"]
    assert len(rate_alerts) == 1 and rate_alerts[0]["failure_rate"] == 0.75
    alerter.observe(False)  # still above: no second alert
    assert len([a for a in alerter.sent if a["event"] == "failure_rate"]) == 1
    now[0] = 120.0  # the window slides past the failures; recovery re-arms the alert
    for _ in range(4):
        alerter.observe(True)
    for _ in range(4):
        alerter.observe(False)
    assert len([a for a in alerter.sent if a["event"] == "failure_rate"]) == 2


def test_webhook_failure_is_logged_not_fatal(fault_server, caplog):
    fault_server.script("/hook", Fault(500))
    alerter = Alerter(AlertSettings(webhook_url=fault_server.url("/hook")))
    with caplog.at_level("WARNING", logger="raytranscribe.alerts"):
        alerter.task_dead(1, "x")
        alerter._send({"event": "probe"})  # the same code the thread runs, here synchronously
    assert any("500" in r.getMessage() for r in caplog.records)
    # An unreachable webhook is only a warning too.
    unreachable = Alerter(AlertSettings(webhook_url="http://127.0.0.1:9/hook"))
    unreachable._send({"event": "probe"})
    assert json.loads(json.dumps(unreachable.sent)) == []
