"""Optional webhook alerts: a JSON POST when a task goes dead, and when the failure rate over a
window passes a threshold. A webhook that fails is logged, never fatal."""

from __future__ import annotations

import collections
import logging
import threading
import time

import requests

from raytranscribe.config import AlertSettings

log = logging.getLogger(__name__)


class Alerter:
    def __init__(self, settings: AlertSettings, clock=time.monotonic) -> None:
        self.s = settings
        self.clock = clock
        self._events: collections.deque[tuple[float, bool]] = collections.deque()
        self._failures = 0  # of the events in the window: kept, not counted, since observe runs per task
        self._rate_alerted = False

    def task_dead(self, task_id: int, reason: str) -> None:
        self._post({"event": "task_dead", "task_id": task_id, "reason": reason})

    def observe(self, ok: bool) -> None:
        now = self.clock()
        self._events.append((now, ok))
        self._failures += not ok
        while self._events and now - self._events[0][0] > self.s.window_s:
            self._failures -= not self._events.popleft()[1]
        n = len(self._events)
        failures = self._failures
        rate = failures / n if n else 0.0
        if n >= self.s.min_tasks and rate >= self.s.failure_rate_threshold:
            if not self._rate_alerted:  # once per excursion, not once per task
                self._rate_alerted = True
                self._post(
                    {
                        "event": "failure_rate",
                        "failure_rate": round(rate, 3),
                        "window_s": self.s.window_s,
                        "attempts": n,
                        "failures": failures,
                    }
                )
        elif rate < self.s.failure_rate_threshold / 2:
            self._rate_alerted = False

    def _post(self, payload: dict) -> None:
        if not self.s.webhook_url:
            return
        payload = {"source": "raytranscribe", "ts": time.time(), **payload}
        # Fire and forget on a thread: a slow webhook must not stall the driver loop.
        threading.Thread(target=self._send, args=(payload,), daemon=True).start()

    def _send(self, payload: dict) -> None:
        try:
            r = requests.post(self.s.webhook_url, json=payload, timeout=5)
            if r.status_code >= 300:
                log.warning("alert webhook answered %s %s", r.status_code, r.reason)
        except requests.RequestException as exc:
            log.warning("alert webhook failed: %s", exc)
