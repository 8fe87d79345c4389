"""The pool's scaling policy, pure: counts and monotonic times in, a decision out (no Ray here)."""

from __future__ import annotations

import pytest

from raytranscribe.pool.policy import Demand, idle_for, should_grow, should_shrink


def grow(live: int, waiting: int, alive: int, *, lo: int = 1, hi: int = 8, waits: bool = True) -> int:
    return should_grow(live=live, waiting=waiting, alive=alive, min_actors=lo, max_actors=hi, work_waits=waits)


def test_an_empty_pool_starts_min_actors_whether_or_not_work_waits():
    assert grow(0, 0, 0, lo=3, waits=False) == 3
    assert grow(0, 0, 0, lo=3, waits=True) == 3
    assert grow(3, 0, 3, lo=3, waits=False) == 0


@pytest.mark.parametrize(
    ("live", "waiting", "alive", "starts"),
    [
        (1, 0, 1, 1),  # one serves, none waits: one more
        (2, 1, 1, 0),  # as many wait to start as serve: wait for them
        (2, 0, 2, 1),  # both serve: one more per turn, so the pool doubles as the cluster places them
        (4, 1, 3, 1),  # fewer wait than serve: go on
        (4, 3, 1, 0),
    ],
)
def test_while_work_waits_the_pool_grows_one_a_turn_while_fewer_wait_than_serve(live, waiting, alive, starts):
    assert grow(live, waiting, alive) == starts


def test_a_pool_starting_its_first_actor_waits_for_it_before_the_next():
    assert grow(1, 1, 0) == 0  # the one starting counts against max(1, alive)


def test_growth_stops_at_max_actors_and_never_below_min():
    assert grow(8, 0, 8, hi=8) == 0
    assert grow(7, 0, 7, hi=8) == 1
    assert grow(2, 0, 2, lo=4, hi=8, waits=False) == 2  # below min (actors died): back up to it
    assert grow(5, 0, 5, lo=1, hi=3) == 0  # above max: never negative


def test_no_work_waiting_means_no_growth_beyond_min():
    assert grow(2, 0, 2, lo=1, waits=False) == 0


def test_a_full_claim_means_work_waits_and_a_short_one_starts_the_idle_clock():
    d = Demand()
    assert d.work_waits and d.short_since is None  # a pool exists because its pair has work
    d.note_claim(asked=8, got=8, now=10.0)
    assert d.work_waits and d.short_since is None
    d.note_claim(asked=8, got=3, now=11.0)
    assert not d.work_waits and d.short_since == 11.0
    d.note_claim(asked=8, got=0, now=12.0)
    assert d.short_since == 11.0  # still short since the first short claim
    d.note_claim(asked=4, got=4, now=13.0)
    assert d.work_waits and d.short_since is None


def test_a_claim_for_nothing_says_nothing():
    d = Demand(work_waits=False, short_since=5.0)
    d.note_claim(asked=0, got=0, now=100.0)
    assert (d.work_waits, d.short_since) == (False, 5.0)


def test_the_pool_shrinks_only_after_claims_came_back_short_for_the_idle_time():
    d = Demand()
    assert not should_shrink(d, now=100.0, idle_s=5.0)  # work waits
    d.note_claim(asked=4, got=1, now=100.0)
    assert not should_shrink(d, now=104.9, idle_s=5.0)
    assert should_shrink(d, now=105.0, idle_s=5.0)
    d.note_claim(asked=4, got=4, now=106.0)
    assert not should_shrink(d, now=200.0, idle_s=5.0)


def test_idle_for_counts_from_the_moment_idleness_began():
    assert not idle_for(None, now=100.0, idle_s=1.0)
    assert not idle_for(99.5, now=100.0, idle_s=1.0)
    assert idle_for(99.0, now=100.0, idle_s=1.0)
