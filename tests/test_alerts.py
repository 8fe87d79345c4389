"""Webhook alerts against a real HTTP server on loopback (the fault server records what it got)."""

from __future__ import annotations

import json
import time

from raytranscribe.alerts import Alerter
from raytranscribe.config import AlertSettings
from tests.support.faultserver import Fault


def _posts(fault_server, n: int, settle_s: float = 0.0) -> list[dict]:
    """The JSON bodies POSTed to /hook, once at least ``n`` arrived (and ``settle_s`` more passed:
    alerts go out on threads of their own, so one too many could still be on its way)."""
    fault_server.wait_for_requests(n, timeout=5)
    time.sleep(settle_s)
    return [json.loads(r.posted) for r in fault_server.requests if r.path == "/hook" and r.method == "POST"]


def test_dead_task_posts_json(fault_server):
    alerter = Alerter(AlertSettings(webhook_url=fault_server.url("/hook")))
    reason = "download: Failed to download from S3: 404 Not Found (permanent error)"
    alerter.task_dead(42, reason)
    (post,) = _posts(fault_server, 1)
    assert (post["source"], post["event"], post["task_id"], post["reason"]) == ("raytranscribe", "task_dead", 42, reason)
    assert abs(post["ts"] - time.time()) < 60


def test_failure_rate_alert_once_per_excursion(fault_server):
    now = [0.0]
    settings = AlertSettings(webhook_url=fault_server.url("/hook"), failure_rate_threshold=0.5, window_s=60, min_tasks=4)
    alerter = Alerter(settings, clock=lambda: now[0])
    for ok in (True, False, False, False):
        alerter.observe(ok)
    alerter.observe(False)  # still above: no second alert
    (first,) = _posts(fault_server, 1, settle_s=0.3)
    assert first["event"] == "failure_rate" and first["failure_rate"] == 0.75
    assert (first["attempts"], first["failures"], first["window_s"]) == (4, 3, 60)
    now[0] = 120.0  # the window slides past the failures; recovery re-arms the alert
    for _ in range(4):
        alerter.observe(True)
    for _ in range(4):
        alerter.observe(False)
    posts = _posts(fault_server, 2, settle_s=0.3)
    assert [p["event"] for p in posts] == ["failure_rate", "failure_rate"]
    assert posts[1]["attempts"] == 8 and posts[1]["failure_rate"] == 0.5


def test_webhook_failure_is_logged_not_fatal(fault_server, caplog):
    fault_server.script("/hook", Fault(500))
    alerter = Alerter(AlertSettings(webhook_url=fault_server.url("/hook")))
    with caplog.at_level("WARNING", logger="raytranscribe.alerts"):
        alerter.task_dead(1, "x")
        alerter._send({"event": "probe"})  # the same code the thread runs, here synchronously
    assert any("500" in r.getMessage() for r in caplog.records)
    # An unreachable webhook is only a warning too.
    unreachable = Alerter(AlertSettings(webhook_url="http://127.0.0.1:9/hook"))
    with caplog.at_level("WARNING", logger="raytranscribe.alerts"):
        unreachable._send({"event": "probe"})
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alert webhook failed: ")]
    assert len(failed) == 1 and "127.0.0.1" in failed[0], failed
