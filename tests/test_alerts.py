"""Webhook alerts against a real HTTP server on loopback (the fault server records what it got)."""

from __future__ import annotations

import json
import threading
import time

from raytranscribe.alerts import Alerter
from raytranscribe.config import AlertSettings
from tests.support.faultserver import Fault
from tests.support.wait import wait_for


def _posts(fault_server, n: int, timeout: float = 10.0) -> list[dict]:
    """The JSON bodies POSTed to /hook, once at least ``n`` arrived (a bounded poll: alerts go out
    on threads of their own)."""
    def enough():
        hooks = fault_server.requests_for("/hook", "POST")
        return hooks if len(hooks) >= n else None

    hooks = wait_for(enough, timeout, what=f"{n} POSTs to /hook", every=0.01)
    return [json.loads(r.posted) for r in hooks]


def _sent(before: set[threading.Thread], timeout: float = 10.0) -> None:
    """Return once every thread started since ``before`` has ended. Each alert is POSTed on a thread
    of its own that ends only once the webhook answered, and the fault server records a request
    before answering it: after this, no alert started so far can still be on its way."""
    deadline = time.monotonic() + timeout
    for thread in set(threading.enumerate()) - before:
        thread.join(max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), f"{thread.name} still running after {timeout} s"


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
    before = set(threading.enumerate())
    for ok in (True, False, False, False):
        alerter.observe(ok)
    alerter.observe(False)  # still above: no second alert
    _sent(before)  # every alert of these observations has arrived
    (first,) = _posts(fault_server, 1)
    assert first["event"] == "failure_rate" and first["failure_rate"] == 0.75
    assert (first["attempts"], first["failures"], first["window_s"]) == (4, 3, 60)
    before = set(threading.enumerate())
    now[0] = 120.0  # the window slides past the failures; recovery re-arms the alert
    for _ in range(4):
        alerter.observe(True)
    for _ in range(4):
        alerter.observe(False)
    _sent(before)
    posts = _posts(fault_server, 2)
    assert [p["event"] for p in posts] == ["failure_rate", "failure_rate"]
    assert posts[1]["attempts"] == 8 and posts[1]["failure_rate"] == 0.5


def _warnings(caplog, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "raytranscribe.alerts" and r.levelname == "WARNING" and r.getMessage().startswith(prefix)]


def _wait_for_warnings(caplog, prefix: str, timeout: float = 10.0) -> list[str]:
    """The warnings starting with ``prefix`` once at least one was logged (alerts go out on threads)."""
    return wait_for(lambda: _warnings(caplog, prefix), timeout, what=f"a {prefix!r} warning", every=0.02)


def test_webhook_failure_is_logged_not_fatal(fault_server, caplog):
    fault_server.script("/hook", Fault(500))
    alerter = Alerter(AlertSettings(webhook_url=fault_server.url("/hook")))
    with caplog.at_level("WARNING", logger="raytranscribe.alerts"):
        alerter.task_dead(1, "x")  # returns at once: the POST goes out on a thread of its own
        (answered,) = _wait_for_warnings(caplog, "alert webhook answered ")
    assert "500" in answered, answered
    (post,) = [json.loads(r.posted) for r in fault_server.requests if r.path == "/hook" and r.method == "POST"]
    assert (post["event"], post["task_id"], post["reason"]) == ("task_dead", 1, "x")
    # An unreachable webhook is only a warning too.
    unreachable = Alerter(AlertSettings(webhook_url="http://127.0.0.1:9/hook"))
    with caplog.at_level("WARNING", logger="raytranscribe.alerts"):
        unreachable.task_dead(2, "y")
        failed = _wait_for_warnings(caplog, "alert webhook failed: ")
    assert len(failed) == 1 and "127.0.0.1" in failed[0], failed
