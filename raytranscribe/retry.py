"""Retry decisions as a pure function: ``decide(error, retries, policy) -> RetryDecision``.

``retries`` is how many retries the task was already granted before this failure. Randomness (full jitter)
comes in through ``rand`` so tests can pin it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

from raytranscribe.config import RetrySettings
from raytranscribe.errors import Failure, is_transient


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = RetrySettings().max_retries
    base_delay_s: float = RetrySettings().base_delay_s
    backoff_factor: float = RetrySettings().backoff_factor
    max_delay_s: float = RetrySettings().max_delay_s

    @classmethod
    def from_settings(cls, s: RetrySettings) -> RetryPolicy:
        return cls(s.max_retries, s.base_delay_s, s.backoff_factor, s.max_delay_s)

    def for_task(self, max_retries: int | None, backoff_factor: float | None) -> RetryPolicy:
        """Per-task overrides stored on the row win over the defaults."""
        return replace(
            self,
            max_retries=self.max_retries if max_retries is None else max_retries,
            backoff_factor=self.backoff_factor if backoff_factor is None else backoff_factor,
        )

    def ceiling(self, retries: int) -> float:
        """Upper bound of the delay before retry number ``retries + 1`` (before jitter)."""
        try:
            raw = self.base_delay_s * self.backoff_factor**retries
        except OverflowError:
            raw = float("inf")
        return min(self.max_delay_s, raw)


class Action(str, Enum):
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True)
class RetryDecision:
    action: Action
    delay_s: float  # 0 for dead
    reason: str  # why, in words, for logs and the attempt history

    @property
    def dead(self) -> bool:
        return self.action is Action.DEAD


def decide(
    error: BaseException | Failure,
    retries: int,
    policy: RetryPolicy,
    *,
    crashes: int = 0,
    rand: Callable[[], float] = random.random,
) -> RetryDecision:
    """Retry transient errors with capped exponential backoff and full jitter; bury the rest.

    ``retries`` counts the retries already granted (so a task runs at most ``max_retries + 1``
    times, and ``retries <= max_retries`` always holds in the table). ``crashes`` counts the worker
    crashes the task was charged for, this one included (0 when this failure is not one): a task
    buried by them says so.
    """
    if not is_transient(error):
        return RetryDecision(Action.DEAD, 0.0, "permanent error")
    if retries >= policy.max_retries:
        exhausted = f"retries exhausted {retries} of {policy.max_retries}"
        if crashes:
            return RetryDecision(Action.DEAD, 0.0, f"crashed the worker {crashes} times; {exhausted}")
        return RetryDecision(Action.DEAD, 0.0, exhausted)
    delay = rand() * policy.ceiling(retries)
    return RetryDecision(Action.RETRY, delay, f"transient error, retry {retries + 1} of {policy.max_retries}")
