"""Circuit breakers: one per transfer stage, so an outage pauses dispatch instead of burning retries.

Pure bookkeeping (no Ray, no I/O): the orchestrator feeds each breaker the outcome of every transfer
of its stage and asks it whether dispatch may go on.
"""

from __future__ import annotations

import collections
import enum
import logging
import time
from collections.abc import Callable

from raytranscribe.config import BreakerSettings
from raytranscribe.errors import Stage

log = logging.getLogger(__name__)


class BreakerState(str, enum.Enum):
    CLOSED = "closed"  # dispatch flows
    OPEN = "open"  # cooling down: no dispatch
    HALF_OPEN = "half-open"  # cool-down over: one probe may go through


class CircuitBreaker:
    """Opens when most recent transfers of one stage fail transiently, so a store or network outage
    pauses dispatch for a cool-down instead of burning every task's retries. After the cool-down it
    lets one probe batch through (half-open) and closes on the first success."""

    def __init__(self, stage: Stage, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic):
        self.stage = stage
        self.s = settings
        self.clock = clock
        self.window: collections.deque[bool] = collections.deque(maxlen=settings.window)
        self.opened_at: float | None = None
        self.trips = 0

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if self.clock() - self.opened_at >= self.s.cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allows_dispatch(self) -> bool:
        return self.state is not BreakerState.OPEN

    def record(self, ok: bool) -> None:
        if ok:
            if self.opened_at is not None:
                log.info(
                    "circuit breaker for %s closed: a transfer succeeded", self.stage, extra={"stage": self.stage.value}
                )
            self.opened_at = None
            self.window.append(True)
            return
        self.window.append(False)
        if self.opened_at is not None and self.state is BreakerState.HALF_OPEN:
            self.opened_at = self.clock()  # the probe failed: another cool-down
            return
        failures = self.window.count(False)
        if (
            self.opened_at is None
            and len(self.window) >= self.s.min_samples
            and failures / len(self.window) >= self.s.failure_ratio
        ):
            self.opened_at = self.clock()
            self.trips += 1
            self.window.clear()
            log.warning(
                "circuit breaker for %s opened: %d of the last transfers failed transiently; pausing dispatch %.0fs",
                self.stage,
                failures,
                self.s.cooldown_s,
                extra={"stage": self.stage.value},
            )


__all__ = ["BreakerState", "CircuitBreaker"]
