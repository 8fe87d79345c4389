"""One pool: the actors serving one (engine, model) pair, their start, their death, their number.

An actor dies by one path (:meth:`ActorPool.die`), which fails its attempts over (keeping results
that had already come back) and counts start-up failures. The checks that find an actor must go
(:mod:`~raytranscribe.pool.health`, :mod:`~raytranscribe.pool.dispatch`) answer a :class:`Death`;
the pool carries it out. Its size follows :mod:`~raytranscribe.pool.policy`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import ray
from ray.actor import ActorClass

from raytranscribe.config import Settings
from raytranscribe.contracts import Computing, ModelManifest, Outcome, TaskSpec
from raytranscribe.engines.base import EngineSpec
from raytranscribe.errors import RayTranscribeError
from raytranscribe.isolation import worker_runtime_env
from raytranscribe.pool import dispatch, policy
from raytranscribe.pool.actor import SERVING, STARTING_UP, Actor, ActorState, Death
from raytranscribe.pool.failover import Failover
from raytranscribe.pool.health import Health
from raytranscribe.pool.ledger import Attempt, Ledger, PoolKey
from raytranscribe.worker import WorkerConfig

log = logging.getLogger(__name__)

# (engine, model) -> the presigned files of an s3:// model, None for any other; raises RayTranscribeError
ModelSource = Callable[[str, str], ModelManifest | None]


@dataclass(frozen=True)
class Env:
    """What every pool needs to start actors."""

    settings: Settings
    owner_tag: str
    runtime_env: dict | None
    actor_cls: ActorClass
    ledger: Ledger
    serial: list[int]  # actor numbers across pools: two pools may serve the same model name
    model_source: ModelSource | None = None


class ActorPool:
    """The actors serving one (engine, model) pair, between ``worker.min_actors`` and ``worker.max_actors``.

    It grows while claimed work keeps filling every live actor (so claimable work waits), one
    batch of new actors at a time, and shrinks toward ``min_actors`` after ``health.pool_idle_s``
    without such work. Pending actors are demand the Ray autoscaler sees and serves.
    """

    def __init__(self, spec: EngineSpec, env: Env, now: float) -> None:
        self.spec = spec
        self._env = env
        self._h = env.settings.health
        w = env.settings.worker
        self.min_actors, self.max_actors = w.min_actors, max(w.min_actors, w.max_actors)
        self.actors: list[Actor] = []
        self.started = 0  # actors started over the pool's life
        self.start_failures = 0  # consecutive deaths before ever becoming ready
        self.next_start_at = 0.0
        self.gave_up: str | None = None  # why starting actors stopped
        self.demand = policy.Demand()  # what the claims for its pair said lately
        self.idle_since: float | None = None  # since when its pair had no work and it had nothing in flight
        self.health = Health(env.settings)
        self.failover = Failover(env.ledger, self._h)
        self.resize(now)

    @property
    def key(self) -> PoolKey:
        return (self.spec.engine, self.spec.model)

    @property
    def label(self) -> str:
        return f"{self.spec.engine}/{self.spec.model}"

    def alive(self) -> list[Actor]:
        return [a for a in self.actors if a.state is ActorState.ALIVE]

    def in_flight(self) -> int:
        return sum(len(a.attempts) for a in self.actors) + self.failover.waiting()

    # --- work in --------------------------------------------------------------------------------

    def capacity(self) -> int:
        """How many more tasks the live actors want now (their own wish, as each last reported it),
        counting only actors with enough free slots to be worth a call."""
        return sum(a.free() for a in self.actors if a.state is ActorState.ALIVE and a.wants_refill())

    def submit(self, spec: TaskSpec, now: float | None = None) -> bool:
        """Take a claimed, presigned task; False when no live actor wants it (release it, uncharged)."""
        now = time.monotonic() if now is None else now
        best: Actor | None = None
        for a in self.actors:
            if a.state is ActorState.ALIVE and a.free() > 0 and (best is None or a.free() > best.free()):
                best = a
        if best is None:
            return False
        attempt = Attempt(spec=spec, actor=best, dispatched_at=now)
        self._env.ledger.add(attempt)
        best.outbox.append(attempt)
        best.idle_since = None
        return True

    def send(self, now: float) -> list[Outcome]:
        """The take calls for what was submitted this turn."""
        out: list[Outcome] = []
        for actor in list(self.actors):
            if actor.outbox:
                out.extend(self._carry_out(actor, dispatch.send(actor), now))
        return out

    # --- work out -------------------------------------------------------------------------------

    def received(
        self, actor: Actor, items: list[list[Outcome | Computing] | BaseException], now: float
    ) -> list[Outcome]:
        """What arrived on one of its actors' results streams."""
        out: list[Outcome] = []
        for value in items:
            outcomes, death = dispatch.received(actor, value, self._env.ledger, self.health, now)
            out.extend(outcomes)
            if death is not None:
                return out + self.die(actor, death, now)  # the rest of its items fail over with it
        return out

    # --- housekeeping ---------------------------------------------------------------------------

    def tick(self, now: float, ready: set[ray.ObjectRef], deadlines: bool) -> list[Outcome]:
        """Start-up, take calls, pings, deadlines and draining of every actor; Ray's verdicts."""
        out: list[Outcome] = []
        ledger, health = self._env.ledger, self.health
        for actor in list(self.actors):
            if actor.state in STARTING_UP:
                out.extend(self._carry_out(actor, health.check_start(actor, now, ready), now))
                if actor.state is ActorState.ALIVE and actor.results is None:
                    dispatch.open_results(actor, ledger)
                    self.start_failures = 0
            if actor.takes and actor.state is not ActorState.DEAD:
                outcomes, death = dispatch.check_takes(actor, ready, ledger, health, now)
                out.extend(outcomes + self._carry_out(actor, death, now))
            if actor.state in SERVING:
                out.extend(self._carry_out(actor, health.check_ping(actor, now, ready), now))
            if deadlines and actor.state in SERVING:
                out.extend(self._carry_out(actor, health.check_deadlines(actor, now), now))
            if actor.state is ActorState.DRAINING and not actor.attempts:
                out.extend(self.die(actor, Death("its node drains; its work is done or moved", deliberate=True), now))
        if self.failover.verdicts:
            out.extend(self.failover.judge(now))
        return out

    def drain(self, draining: set[str], now: float) -> list[Outcome]:
        """Actors on nodes Ray drains (``ray drain-node``, a spot interruption notice) take no more
        work; what they hold and have not started goes to other actors, uncharged; what they
        compute on (and what is past its transcript) finishes; then they stop."""
        out: list[Outcome] = []
        for actor in list(self.actors):
            node = actor.node_id
            if node is None or node not in draining:
                continue
            if actor.state in STARTING_UP:
                out.extend(self.die(actor, Death(f"its node {node[:12]} drains", deliberate=True), now))
            elif self.health.start_draining(actor):
                out.extend(self.failover.withdraw(actor, now))
        return out

    def resize(self, now: float) -> list[Outcome]:
        """Start actors up to what the policy wants; stop surplus ones once claims have come back short."""
        # A draining actor's node is going: its replacement starts now, elsewhere.
        live = [a for a in self.actors if a.state not in (ActorState.DEAD, ActorState.DRAINING)]
        if not self.gave_up and now >= self.next_start_at:
            waiting = sum(1 for a in live if a.state in STARTING_UP)
            grow = policy.should_grow(live=len(live), waiting=waiting, alive=len(self.alive()),
                                      min_actors=self.min_actors, max_actors=self.max_actors,
                                      work_waits=self.demand.work_waits)  # fmt: skip
            for _ in range(grow):
                self._start_actor(now)
        if not policy.should_shrink(self.demand, now, self._h.pool_idle_s):
            return []
        # Give GPUs back down to min_actors, waiting ones first.
        out: list[Outcome] = []
        surplus = len(live) - self.min_actors
        for a in sorted(live, key=lambda a: a.state is ActorState.ALIVE):
            if surplus <= 0:
                break
            idle = not a.attempts and policy.idle_for(a.idle_since, now, self._h.pool_idle_s)
            if a.state in STARTING_UP or idle:
                out.extend(self.die(a, Death("pool shrank: no work waiting for it", deliberate=True), now))
                surplus -= 1
        return out

    def stop(self, cause: str, now: float) -> list[Outcome]:
        """Stop every actor (the pool retires, the driver stops)."""
        out: list[Outcome] = []
        for actor in list(self.actors):
            out.extend(self.die(actor, Death(cause, deliberate=True), now))
        return out

    # --- the one way an actor dies --------------------------------------------------------------

    def die(self, actor: Actor, death: Death, now: float) -> list[Outcome]:
        """Kill (to be sure: an unreachable actor must not keep its GPU as a zombie), count a start-up
        failure if it never became ready, and hand back every attempt it held (failover)."""
        if actor.state is ActorState.DEAD:
            return []
        was_starting = actor.state in STARTING_UP
        actor.state, actor.death_cause = ActorState.DEAD, death.cause
        try:
            ray.kill(actor.handle, no_restart=True)
        except Exception:  # already gone
            pass
        if actor in self.actors:
            self.actors.remove(actor)
        extra = {"actor": actor.name, "node": (actor.node_id or "")[:12]}
        if death.deliberate:
            log.info("actor %s stopped: %s", actor.name, death.cause, extra=extra)
        elif was_starting:
            self._start_failed(actor, death.cause, now, extra)
        else:
            log.error("actor %s died: %s", actor.name, death.cause, extra=extra)
            if self.start_failures == 0:
                self.next_start_at = now + self._h.replace_backoff_s
        return self.failover.fail_over(actor, death, now)

    def _carry_out(self, actor: Actor, death: Death | None, now: float) -> list[Outcome]:
        return [] if death is None else self.die(actor, death, now)

    def _start_failed(self, actor: Actor, cause: str, now: float, extra: dict[str, str]) -> None:
        self.start_failures += 1
        delay = self._h.replace_backoff_s * 2 ** (self.start_failures - 1)
        self.next_start_at = now + delay
        if self.start_failures >= self._h.max_start_failures:
            self.gave_up = f"{self.start_failures} actors for {self.label} died during start-up; last cause: {cause}"
            log.error("giving up on starting actors: %s", self.gave_up, extra=extra)
        else:
            log.warning("actor %s died during start-up (%s); retrying in %.1fs", actor.name, cause, delay, extra=extra)

    # --- starting actors ------------------------------------------------------------------------

    def _start_actor(self, now: float) -> None:
        env = self._env
        if self.gave_up or now < self.next_start_at:
            return  # an earlier start of this round could not list the model
        try:
            # An s3:// model's files, signed afresh for this actor (workers hold no credentials).
            model = env.model_source(self.spec.engine, self.spec.model) if env.model_source else None
        except RayTranscribeError as exc:
            self._model_unavailable(exc, now)
            return
        env.serial[0] += 1
        self.started += 1
        short_model = self.spec.model.replace("/", "_").replace(".", "-")[-24:]
        name = f"worker-{env.serial[0]}.{short_model}.{env.owner_tag}"
        s = env.settings
        options: dict[str, object] = dict(
            name=name, namespace=s.namespace, num_gpus=s.worker.num_gpus, num_cpus=s.worker.num_cpus
        )
        # Every worker actor starts scrubbed of the driver's secrets, whatever the job's env_vars say.
        options["runtime_env"] = worker_runtime_env(env.runtime_env)
        config = WorkerConfig(
            name=name,
            engine=self.spec,
            transfer=s.transfer,
            log_level=s.log_level,
            worker=s.worker,
            batch_wait_ms=s.engine.batch_wait_ms,
            model=model,
            model_cache_dir=s.engine.model_cache_dir,
            quality=s.quality,
        )
        handle = env.actor_cls.options(**options).remote(config)
        actor = Actor(name=name, handle=handle, pool=self, created_at=now, idle_since=now)
        actor.ready_ref = handle.ready.remote()
        self.actors.append(actor)
        log.info("starting actor %s for %s", name, self.label, extra={"actor": name})

    def _model_unavailable(self, exc: RayTranscribeError, now: float) -> None:
        """The model could not be listed for an actor start: gone or mistyped for good (the pool gives
        up with the cause, as after max_start_failures), or S3 hiccupped (retry after the back-off)."""
        if exc.transient:
            self.next_start_at = now + max(self._h.replace_backoff_s, 1.0)
            log.warning("cannot list the model of %s, retrying: %s", self.label, exc)
            return
        self.gave_up = f"the model of {self.label} cannot be fetched: {exc}"
        log.error("giving up on starting actors: %s", self.gave_up)
