"""The ledger: every attempt in flight, by lease, from submit until its outcome is handed back.

One object owns each attempt (:class:`Attempt`), so a lost lease, a failover and a late result can
never disagree about it: each of them ends the attempt here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ray import ObjectRefGenerator

from raytranscribe.contracts import TaskSpec

if TYPE_CHECKING:
    from raytranscribe.pool.actor import Actor

Lease = tuple[int, int]  # (task id, attempt): the fencing token of one attempt
PoolKey = tuple[str, str]  # (engine, model)


@dataclass(eq=False)
class Attempt:
    """One attempt of a task, from submit until its outcome is handed back."""

    spec: TaskSpec
    actor: Actor
    dispatched_at: float
    sent: bool = False  # its take call has been issued
    abandoned: bool = False  # its lease is gone: it keeps its actor slot until it ends, its outcome is dropped

    @property
    def lease(self) -> Lease:
        return (self.spec.task_id, self.spec.attempt)


class Ledger:
    """Every attempt in flight, by lease, and each actor by its outcome stream: the pools' shared
    index. Keeps the count of attempts whose lease is still ours."""

    def __init__(self) -> None:
        self.by_lease: dict[Lease, Attempt] = {}
        self.by_stream: dict[ObjectRefGenerator, Actor] = {}
        self.live = 0  # attempts in by_lease not abandoned

    def add(self, attempt: Attempt) -> None:
        self.by_lease[attempt.lease] = attempt
        attempt.actor.attempts[attempt.lease] = attempt
        self.live += 1

    def abandon(self, attempt: Attempt) -> None:
        attempt.abandoned = True
        self.live -= 1

    def remove(self, attempt: Attempt, now: float) -> None:
        if self.by_lease.get(attempt.lease) is attempt:
            del self.by_lease[attempt.lease]
            if not attempt.abandoned:
                self.live -= 1
        actor = attempt.actor
        if actor.attempts.get(attempt.lease) is attempt:
            del actor.attempts[attempt.lease]
            if not actor.attempts:
                actor.idle_since = now

    def holds(self, lease: Lease) -> bool:
        a = self.by_lease.get(lease)
        return a is not None and not a.abandoned

    def leases(self) -> list[Lease]:
        """The leases of every attempt in flight (abandoned ones excluded)."""
        return [lease for lease, a in self.by_lease.items() if not a.abandoned]
