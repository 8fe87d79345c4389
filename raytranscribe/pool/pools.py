"""Every pool of one driver, and the driver's one call a turn (:meth:`ActorPools.turn`).

The driver hands over what it claimed (:class:`Claim` s, presigned) and gets back one
:class:`TurnReport`: the outcomes of the turn (a failover or a deadline kill is just another outcome),
the tasks no actor took, how many more tasks each pool wants, the leases to renew, and what ``status``
and the metrics show. Inside the call: dispatch, the wait for results, and the housekeeping (start-up,
pings, deadlines, deaths, draining nodes, pool sizes, idle pools retired). It never writes to the
database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import ray

from raytranscribe.config import Settings
from raytranscribe.contracts import Outcome, TaskSpec
from raytranscribe.engines.base import EngineSpec
from raytranscribe.errors import Stage
from raytranscribe.logs import task_extra
from raytranscribe.pool import dispatch, policy
from raytranscribe.pool.actor import ActorState, ActorView, view
from raytranscribe.pool.ledger import Lease, Ledger, PoolKey
from raytranscribe.pool.pool import ActorPool, Env, ModelSource
from raytranscribe.pool.rayinfo import draining_nodes
from raytranscribe.worker import worker_actor_class

log = logging.getLogger(__name__)

_CHECK_EVERY_S = 0.05  # start-ups and pings are read at most this often under load
_DEADLINES_EVERY_S = 0.5  # deadlines are seconds to minutes long: no need to judge every attempt each turn


@dataclass(frozen=True)
class Claim:
    """What the driver claimed for one pool this turn: it asked the store for ``asked`` (what the pool
    wanted, or one for a probe), got ``got``, and hands over those it could presign."""

    key: PoolKey
    asked: int
    got: int
    tasks: Sequence[TaskSpec] = ()


@dataclass(frozen=True)
class TurnReport:
    outcomes: list[Outcome] = field(default_factory=list)
    refused: list[TaskSpec] = field(default_factory=list)  # claimed, but no actor took it: release, uncharged
    wants: dict[PoolKey, int] = field(default_factory=dict)  # how many more tasks each pool's actors want now
    leases: list[Lease] = field(default_factory=list)  # every attempt in flight: the leases to renew
    actor_starts: dict[str, int] = field(default_factory=dict)  # by pool label, every pool
    gave_up: dict[PoolKey, str] = field(default_factory=dict)  # pools that stopped starting actors and have none
    # The actors' views are built on first read (a heartbeat's, not every turn's), so read them before
    # the next turn: until then the pools do not change.
    read_views: Callable[[], list[ActorView]] = field(default=list, repr=False, compare=False)

    @cached_property
    def views(self) -> list[ActorView]:
        """Every actor not dead, for status and the metrics."""
        return self.read_views()

    @property
    def in_flight(self) -> int:
        return len(self.leases)

    @property
    def serviceable(self) -> bool:
        """False once every pool has given up and none has an actor left."""
        return not self.actor_starts or len(self.gave_up) < len(self.actor_starts)


class ActorPools:
    """Every pool of this orchestrator, and the index of every attempt in flight on them."""

    def __init__(
        self, settings: Settings, owner_tag: str, *, runtime_env: dict | None = None,
        model_source: ModelSource | None = None,
    ) -> None:  # fmt: skip
        """``model_source``: the presigned files of an ``s3://`` model, asked at each actor start (the
        orchestrator binds :meth:`S3Storage.model_for_actor`; the pools import no storage)."""
        self.settings = settings
        self.pools: dict[PoolKey, ActorPool] = {}
        self._ledger = Ledger()
        self._env = Env(settings=settings, owner_tag=owner_tag, runtime_env=runtime_env,
                        actor_cls=worker_actor_class(), ledger=self._ledger, serial=[0], model_source=model_source)
        self._control_ready = False
        self._next_check = 0.0
        self._next_deadlines = 0.0
        self._next_drain_check = 0.0

    # --- the driver's turn ----------------------------------------------------------------------

    def turn(
        self, claims: Sequence[Claim], now: float, *, serve: Collection[PoolKey], retire: bool = True,
        lost: Sequence[Lease] = (), wait_s: float = 0.0, ready_by: float = 0.0,
    ) -> TurnReport:  # fmt: skip
        """One driver turn: forget ``lost`` leases, keep a pool for each pair in ``serve``, hand the
        claimed tasks to the actors and send them, wait for results (until ``ready_by`` at least, up to
        ``wait_s`` more for one), then housekeeping; ``retire``: whether ``serve`` is known to be
        every pair with work, so the pools of other pairs may retire once idle."""
        for lease in lost:
            self.abandon(lease)
        for key in serve:
            if key not in self.pools:
                self.ensure(EngineSpec.from_settings(self.settings.engine, *key))
        refused, out = self._hand_over(claims, now)
        out += self._collect(dispatch.wait_ready(self._refs(), wait_s, ready_by))
        out += self.tick(time.monotonic())
        if retire:
            out += self._retire_idle(set(serve), time.monotonic())
        return self._report(out, refused)

    def land(self, wait_s: float, turn_s: float, *, lost: Sequence[Lease] = ()) -> TurnReport:
        """On stop: forget ``lost`` leases, and wait up to ``wait_s`` for the attempts past their
        transcript (rendering or uploading): their work is done. Its report's leases are what is
        left in flight."""
        for lease in lost:
            self.abandon(lease)
        finishing = self.finishing()
        deadline = time.monotonic() + wait_s
        out: list[Outcome] = []
        while finishing and time.monotonic() < deadline:
            out += self._collect(dispatch.wait_ready(self._refs(), 0.1, time.monotonic() + turn_s))
            finishing &= set(self._ledger.leases())
        return self._report(out, [])

    def shutdown(self) -> None:
        now = time.monotonic()
        for pool in self.pools.values():
            pool.stop("orchestrator stopped", now)

    # --- reads (status, tests, the progress bar) ------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._ledger.live

    def views(self) -> list[ActorView]:
        return [view(a, p.label) for p in list(self.pools.values()) for a in list(p.actors)
                if a.state is not ActorState.DEAD]  # fmt: skip

    def actor_starts(self) -> dict[str, int]:
        """Actors each pool has started over its life: more than its size means replacements."""
        return {p.label: p.started for p in list(self.pools.values())}

    def live_count(self) -> int:
        return sum(len(p.alive()) for p in self.pools.values())

    def gave_up(self) -> dict[PoolKey, str]:
        """Pools that stopped starting actors and have none left: why, by (engine, model)."""
        return {k: p.gave_up for k, p in self.pools.items() if p.gave_up and not p.actors}

    def finishing(self) -> set[Lease]:
        """Attempts past their transcript (rendering or uploading, as their actors last said): a
        stopping driver waits a moment for these rather than hand them back."""
        return {lease for p in self.pools.values() for a in p.actors for lease in a.finishing()}

    # --- the parts of a turn --------------------------------------------------------------------

    def ensure(self, spec: EngineSpec) -> ActorPool:
        key = (spec.engine, spec.model)
        if key not in self.pools:
            self.pools[key] = ActorPool(spec, self._env, time.monotonic())
        return self.pools[key]

    def abandon(self, lease: Lease) -> None:
        """Stop caring about an attempt whose lease was lost; it keeps its actor slot until it ends."""
        attempt = self._ledger.by_lease.get(lease)
        if attempt is None or attempt.abandoned:
            return
        self._ledger.abandon(attempt)
        log.warning("lease lost; dropping the attempt", extra=task_extra(*lease, Stage.LEASE, actor=attempt.actor.name))
        if not attempt.sent:  # never sent: forget it now
            attempt.actor.outbox.remove(attempt)
            self._ledger.remove(attempt, time.monotonic())
        # Sent: the actor has it (among others of the same call); it runs to its end, and its outcome is dropped.

    def _hand_over(self, claims: Sequence[Claim], now: float) -> tuple[list[TaskSpec], list[Outcome]]:
        """Claimed tasks to the actors that want them, then one take call per actor."""
        refused: list[TaskSpec] = []
        for claim in claims:
            pool = self.pools.get(claim.key)
            if pool is None:  # retired since the driver read its wants
                refused.extend(claim.tasks)
                continue
            pool.demand.note_claim(claim.asked, claim.got, now)
            # A task no actor takes: capacity vanished (an actor died), not the task's fault.
            refused.extend(spec for spec in claim.tasks if not pool.submit(spec, now))
        out: list[Outcome] = []
        for pool in self.pools.values():
            out += pool.send(now)
        return refused, out

    def _refs(self) -> list[dispatch.Ref]:
        """What is worth waiting on: every live actor's results stream, and the start-up and ping calls
        (take calls answer at once and are checked by the tick, not waited on)."""
        refs: list[dispatch.Ref] = list(self._ledger.by_stream)
        for pool in self.pools.values():
            for a in pool.actors:
                if a.ready_ref is not None:
                    refs.append(a.ready_ref)
                if a.ping_ref is not None:
                    refs.append(a.ping_ref)
        return refs

    def _collect(self, ready: list[dispatch.Ref]) -> list[Outcome]:
        """The outcomes that came back on the results streams among ``ready`` (control refs are left
        for the tick)."""
        actors = [self._ledger.by_stream[r] for r in ready if r in self._ledger.by_stream]
        if len(actors) < len(ready):
            self._control_ready = True
        now = time.monotonic()
        out: list[Outcome] = []
        for actor in actors:
            out += actor.pool.received(actor, dispatch.arrived(actor), now)
        return out

    def tick(self, now: float | None = None) -> list[Outcome]:
        """Start-up, pings, deadlines, deaths, draining nodes and sizes; the outcomes they produce."""
        now = time.monotonic() if now is None else now
        if not self._control_ready and now < self._next_check:
            return []
        self._control_ready, self._next_check = False, now + _CHECK_EVERY_S
        control = [r for p in self.pools.values() for a in p.actors for r in (a.ready_ref, a.ping_ref, *a.takes)
                   if r is not None]  # fmt: skip
        ready: set[ray.ObjectRef] = set()
        if control:
            done, _ = ray.wait(control, num_returns=len(control), timeout=0)
            ready = set(done)
        deadlines = now >= self._next_deadlines
        if deadlines:
            self._next_deadlines = now + _DEADLINES_EVERY_S
        out: list[Outcome] = []
        if now >= self._next_drain_check and any(p.actors for p in self.pools.values()):
            self._next_drain_check = now + self.settings.health.drain_check_s
            draining = draining_nodes()
            if draining:
                for pool in self.pools.values():
                    out += pool.drain(draining, now)
        for pool in self.pools.values():
            out += pool.tick(now, ready, deadlines)
            out += pool.resize(now)
        return out

    def _retire_idle(self, wanted: set[PoolKey], now: float) -> list[Outcome]:
        """Stop the pools whose pair has no work left once they have had nothing in flight for
        ``health.pool_idle_s``, freeing their GPUs for the pools that still have work."""
        out: list[Outcome] = []
        for key, pool in list(self.pools.items()):
            if key in wanted or pool.in_flight():
                pool.idle_since = None
                continue
            if pool.idle_since is None:
                pool.idle_since = now
            elif policy.idle_for(pool.idle_since, now, self.settings.health.pool_idle_s):
                out += pool.stop("pool retired: no work left for its engine and model", now)
                del self.pools[key]
                log.info("retired the idle pool for %s/%s, freeing its GPUs", *key)
        return out

    def _report(self, outcomes: list[Outcome], refused: list[TaskSpec]) -> TurnReport:
        return TurnReport(
            outcomes=outcomes,
            refused=refused,
            wants={key: pool.capacity() for key, pool in self.pools.items()},
            leases=self._ledger.leases(),
            read_views=self.views,
            actor_starts=self.actor_starts(),
            gave_up=self.gave_up(),
        )
