"""The pure retry decision: (error, retries, policy) -> decision."""

from __future__ import annotations

import math

import pytest

from raytranscribe.config import RetrySettings
from raytranscribe.errors import AudioDecodeError, Failure, InputMissing, ServerError, Stage, WorkerDied
from raytranscribe.retry import Action, RetryPolicy, decide

POLICY = RetryPolicy(max_retries=3, base_delay_s=5.0, backoff_factor=2.0, max_delay_s=60.0)


def test_transient_error_retries_with_full_jitter():
    assert decide(ServerError("503"), 0, POLICY, rand=lambda: 1.0).delay_s == 5.0
    assert decide(ServerError("503"), 0, POLICY, rand=lambda: 0.0).delay_s == 0.0
    d = decide(ServerError("503"), 2, POLICY, rand=lambda: 0.5)
    assert (d.action, d.delay_s, d.dead, d.reason) == (Action.RETRY, 10.0, False, "transient error, retry 3 of 3")


def test_ceiling_grows_and_is_capped():
    assert [POLICY.ceiling(n) for n in range(6)] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    huge = RetryPolicy(max_retries=10_000, base_delay_s=1.0, backoff_factor=10.0, max_delay_s=900.0)
    assert huge.ceiling(5000) == 900.0  # overflow is capped, not raised


def test_permanent_error_is_dead_at_once():
    d = decide(InputMissing("404"), 0, POLICY)
    assert (d.action, d.delay_s, d.reason) == (Action.DEAD, 0.0, "permanent error")
    assert decide(AudioDecodeError("not audio"), 0, POLICY).dead


def test_exhausted_retries_are_dead():
    d = decide(ServerError("503"), 3, POLICY)
    assert (d.action, d.reason) == (Action.DEAD, "retries exhausted 3 of 3")
    assert decide(ServerError("x"), 0, RetryPolicy(max_retries=0)).dead


def test_a_task_buried_by_worker_crashes_says_how_many():
    crash = WorkerDied("actor worker-3 died while computing the task")
    assert decide(crash, 1, POLICY, crashes=2).action is Action.RETRY
    d = decide(crash, 3, POLICY, crashes=4)
    assert (d.action, d.reason) == (Action.DEAD, "crashed the worker 4 times; retries exhausted 3 of 3")


def test_failure_records_and_unknown_exceptions():
    transient = Failure(Stage.UPLOAD, "ConnectionLost", "reset", transient=True)
    assert decide(transient, 1, POLICY, rand=lambda: 1.0).delay_s == 10.0
    assert decide(Failure(Stage.DECODE, "AudioDecodeError", "bad", transient=False), 0, POLICY).dead
    # Unknown exceptions count as transient: retried, but only max_retries times.
    assert decide(RuntimeError("boom"), 0, POLICY).action is Action.RETRY


def test_for_task_overrides():
    p = POLICY.for_task(7, 3.0)
    assert (p.max_retries, p.backoff_factor, p.base_delay_s, p.max_delay_s) == (7, 3.0, 5.0, 60.0)
    assert POLICY.for_task(None, None) == POLICY
    assert p.ceiling(2) == 45.0


def test_from_settings():
    p = RetryPolicy.from_settings(RetrySettings(max_retries=9, base_delay_s=1.5, backoff_factor=4, max_delay_s=30))
    assert (p.max_retries, p.base_delay_s, p.backoff_factor, p.max_delay_s) == (9, 1.5, 4.0, 30.0)


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_jitter_stays_within_bounds(retries):
    delays = [decide(ServerError("x"), retries, POLICY).delay_s for _ in range(200)]
    assert all(0 <= d <= POLICY.ceiling(retries) for d in delays)
    assert len(set(delays)) > 100 and not any(math.isnan(d) for d in delays)
