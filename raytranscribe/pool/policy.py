"""The scaling policy of a pool, pure: counts and monotonic times in, a decision out (no Ray).

A pool grows while claimed work keeps filling every live actor (so claimable work waits), one batch
of new actors at a time, and shrinks toward ``min_actors`` after ``health.pool_idle_s`` without such
work. Whether work waits is what the driver's claims say (:class:`Demand`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Demand:
    """What the claims for a pool's pair said lately. A pool exists because its pair has work, so it
    starts out as work waiting."""

    work_waits: bool = True  # the last claim came back full: more waits beyond what the actors hold
    short_since: float | None = None  # since when claims have come back short

    def note_claim(self, asked: int, got: int, now: float) -> None:
        """A claim that came back full means more work waits: the pool may grow. One that came back
        short means the actors hold all there is: after ``pool_idle_s`` of those it may shrink.
        (While every actor is full nothing is claimed, and the last answer stands.)"""
        if asked <= 0:
            return
        if got >= asked:
            self.work_waits, self.short_since = True, None
        elif self.work_waits or self.short_since is None:
            self.work_waits, self.short_since = False, now


def should_grow(*, live: int, waiting: int, alive: int, min_actors: int, max_actors: int, work_waits: bool) -> int:
    """How many actors to start now: up to ``min_actors`` always; while work waits, one more than
    ``live`` as long as fewer wait to start (``waiting``) than serve (``alive``), so the pool doubles
    (1, 2, 4, ...) as fast as the cluster places them; never past ``max_actors``. ``live`` counts
    every actor not dead and not draining (a draining actor's node is going: its replacement starts)."""
    want = min_actors
    if work_waits and waiting < max(1, alive):
        want = max(want, live + 1)
    return max(0, min(want, max_actors) - live)


def should_shrink(demand: Demand, now: float, idle_s: float) -> bool:
    """Whether claims have come back short for ``idle_s``: give actors back down to ``min_actors``."""
    return not demand.work_waits and idle_for(demand.short_since, now, idle_s)


def idle_for(since: float | None, now: float, idle_s: float) -> bool:
    """Idle (an actor with nothing in hand, a pool whose pair has no work) since ``since``, for ``idle_s``."""
    return since is not None and now - since >= idle_s
