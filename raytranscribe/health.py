"""Actor health: start-up, pings, deadlines, death, failover and replacement; and circuit breakers.

The monitor owns the actor pools. It never writes to the database: when an actor dies it hands the
orchestrator the tasks that were in flight on it, each with the :class:`Failure` to record.
"""

from __future__ import annotations

import collections
import enum
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from raytranscribe.config import BreakerSettings, HealthSettings, Settings
from raytranscribe.engines.base import EngineSpec
from raytranscribe.errors import Failure, Stage, TaskTimedOut, WorkerDied
from raytranscribe.logs import task_extra
from raytranscribe.worker import QUEUED, PingReply, WorkerConfig, worker_actor_class

log = logging.getLogger(__name__)


class ActorState(str, enum.Enum):
    STARTING = "starting"  # constructor (model load) running; gets no work yet
    ALIVE = "alive"
    QUARANTINED = "quarantined"  # unreachable for now: keeps its tasks, gets no new ones
    DEAD = "dead"


@dataclass
class InFlight:
    """A task dispatched to an actor and not yet recorded."""

    task: Any  # store.ClaimedTask
    spec: Any  # contracts.TaskSpec
    ref: ray.ObjectRef
    slot: ActorSlot
    dispatched_at: float

    @property
    def lease(self) -> tuple[int, int]:
        return (self.task.id, self.task.attempt)


@dataclass(eq=False)
class ActorSlot:
    name: str
    pool: Pool
    handle: Any
    state: ActorState = ActorState.STARTING
    created_at: float = field(default_factory=time.monotonic)
    ready_ref: ray.ObjectRef | None = None
    ping_ref: ray.ObjectRef | None = None
    ping_sent_at: float = 0.0
    last_pong: PingReply | None = None
    last_pong_at: float = 0.0
    quarantined_since: float | None = None
    inflight: dict[ray.ObjectRef, InFlight] = field(default_factory=dict)
    death_cause: str | None = None
    consecutive_failures: int = 0  # transcriptions in a row that failed here (a sick GPU shows up so)

    @property
    def node_id(self) -> str | None:
        return self.last_pong.node_id if self.last_pong else None


@dataclass(eq=False)
class Pool:
    """The actors serving one (engine, model) pair."""

    spec: EngineSpec
    size: int
    slots: list[ActorSlot] = field(default_factory=list)
    start_failures: int = 0  # consecutive deaths before ever becoming ready
    next_start_at: float = 0.0
    gave_up: str | None = None  # why replacement stopped
    serial: int = 0
    idle_since: float | None = None  # since when its pair had no work and it had nothing in flight

    @property
    def key(self) -> tuple[str, str]:
        return (self.spec.engine, self.spec.model)

    def alive(self) -> list[ActorSlot]:
        return [s for s in self.slots if s.state is ActorState.ALIVE]

    def live_or_starting(self) -> list[ActorSlot]:
        return [s for s in self.slots if s.state is not ActorState.DEAD]


@dataclass(frozen=True)
class Failover:
    """A task that lost its actor, and the failure to record for its attempt; or, when the task had
    finished before the actor died, its real ``outcome``."""

    inflight: InFlight
    failure: Failure
    outcome: Any = None  # contracts.Outcome


class CircuitBreaker:
    """Opens when most recent transfers of one stage fail transiently, so a store or network outage
    pauses dispatch for a cool-down instead of burning every task's retries. After the cool-down it
    lets one probe batch through (half-open) and closes on the first success."""

    def __init__(self, stage: str, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic):
        self.stage = stage
        self.s = settings
        self.clock = clock
        self.window: collections.deque[bool] = collections.deque(maxlen=settings.window)
        self.opened_at: float | None = None
        self.half_open = False
        self.trips = 0

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.s.cooldown_s:
            return "half-open"
        return "open"

    def allows_dispatch(self) -> bool:
        return self.state != "open"

    def record(self, ok: bool) -> None:
        if ok:
            if self.opened_at is not None:
                log.info("circuit breaker for %s closed: a transfer succeeded", self.stage, extra={"stage": self.stage})
            self.opened_at = None
            self.window.append(True)
            return
        self.window.append(False)
        if self.opened_at is not None and self.state == "half-open":
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
                extra={"stage": self.stage},
            )


@dataclass(frozen=True)
class ActorView:
    name: str
    pool: str
    state: str
    node_id: str | None
    gpu_ids: tuple[str, ...]
    in_flight: int
    tasks_done: int


class HealthMonitor:
    """Starts, pings, times out, kills and replaces worker actors."""

    def __init__(self, settings: Settings, owner_tag: str, *, runtime_env: dict | None = None) -> None:
        self.settings = settings
        self.h: HealthSettings = settings.health
        self.owner_tag = owner_tag
        self.runtime_env = runtime_env
        self.pools: dict[tuple[str, str], Pool] = {}
        self._serial = 0
        self._actor_cls = worker_actor_class(settings.worker.prefetch)

    # --- pools ----------------------------------------------------------------------------------

    def ensure_pool(self, spec: EngineSpec) -> Pool:
        key = (spec.engine, spec.model)
        if key not in self.pools:
            self.pools[key] = Pool(spec=spec, size=self.settings.worker.actors)
            self._top_up(self.pools[key], time.monotonic())
        return self.pools[key]

    def _start_actor(self, pool: Pool) -> ActorSlot:
        pool.serial += 1
        self._serial += 1  # numbered across pools: two pools may serve the same model name
        short_model = pool.spec.model.replace("/", "_").replace(".", "-")[-24:]
        name = f"worker-{self._serial}.{short_model}.{self.owner_tag}"
        options: dict[str, Any] = dict(
            name=name,
            namespace=self.settings.namespace,
            num_gpus=self.settings.worker.num_gpus,
            num_cpus=self.settings.worker.num_cpus,
        )
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        config = WorkerConfig(
            name=name, engine=pool.spec, transfer=self.settings.transfer, log_level=self.settings.log_level
        )
        handle = self._actor_cls.options(**options).remote(config)
        slot = ActorSlot(name=name, pool=pool, handle=handle)
        slot.ready_ref = handle.ready.remote()
        pool.slots.append(slot)
        log.info("starting actor %s for %s/%s", name, pool.spec.engine, pool.spec.model, extra={"actor": name})
        return slot

    def _top_up(self, pool: Pool, now: float) -> None:
        if pool.gave_up or now < pool.next_start_at:
            return
        while len(pool.live_or_starting()) < pool.size:
            self._start_actor(pool)

    # --- what the orchestrator asks -------------------------------------------------------------

    def capacity(self, pool: Pool) -> int:
        prefetch = self.settings.worker.prefetch
        return sum(max(0, prefetch - len(s.inflight)) for s in pool.alive())

    def pick(self, pool: Pool) -> ActorSlot | None:
        prefetch = self.settings.worker.prefetch
        candidates = [s for s in pool.alive() if len(s.inflight) < prefetch]
        return min(candidates, key=lambda s: len(s.inflight), default=None)

    def control_refs(self) -> list[ray.ObjectRef]:
        refs = []
        for pool in self.pools.values():
            for s in pool.slots:
                if s.state is ActorState.STARTING and s.ready_ref is not None:
                    refs.append(s.ready_ref)
                if s.ping_ref is not None:
                    refs.append(s.ping_ref)
        return refs

    def all_slots(self) -> list[ActorSlot]:
        return [s for p in self.pools.values() for s in p.slots]

    def views(self) -> list[ActorView]:
        return [
            ActorView(
                name=s.name,
                pool=f"{p.spec.engine}/{p.spec.model}",
                state=s.state.value,
                node_id=s.node_id,
                gpu_ids=s.last_pong.gpu_ids if s.last_pong else (),
                in_flight=len(s.inflight),
                tasks_done=s.last_pong.tasks_done if s.last_pong else 0,
            )
            for p in self.pools.values()
            for s in p.slots
            if s.state is not ActorState.DEAD
        ]

    def live_count(self) -> int:
        return sum(len(p.alive()) for p in self.pools.values())

    def serviceable(self) -> bool:
        """False once every pool has given up and none has an actor left."""
        return any(not p.gave_up or p.live_or_starting() for p in self.pools.values()) or not self.pools

    # --- the tick -------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> list[Failover]:
        now = time.monotonic() if now is None else now
        failovers: list[Failover] = []
        for pool in self.pools.values():
            for slot in list(pool.slots):
                if slot.state is ActorState.DEAD:
                    continue
                self._check_start(slot, now)
                self._check_ping(slot, now)
                failovers.extend(self._check_deadlines(slot, now))
                if slot.state is ActorState.DEAD:
                    failovers.extend(self._failover(slot))
            pool.slots = [s for s in pool.slots if s.state is not ActorState.DEAD]
            self._top_up(pool, now)
        return failovers

    def _check_start(self, slot: ActorSlot, now: float) -> None:
        if slot.state is not ActorState.STARTING or slot.ready_ref is None:
            return
        done, _ = ray.wait([slot.ready_ref], timeout=0)
        if not done:
            if now - slot.created_at > self.h.start_timeout_s:
                # Never placed (no free GPU, autoscaler at its limit) or stuck loading: say so, retry.
                cause = (
                    f"did not start within {self.h.start_timeout_s:.0f}s "
                    "(no free GPU or CPU for it in the cluster, or the model load hangs)"
                )
                self.kill(slot, cause)
                slot.ready_ref = None
                self._start_failed(slot, cause, now)
            return
        try:
            pong = ray.get(slot.ready_ref)
        except RayActorError as exc:
            slot.ready_ref = None
            self._start_failed(slot, death_cause(exc), now)
            return
        slot.ready_ref = None
        slot.state = ActorState.ALIVE
        slot.last_pong, slot.last_pong_at = pong, now
        slot.pool.start_failures = 0
        log.info(
            "actor %s alive on node %s gpus %s (pid %d)",
            slot.name,
            pong.node_id[:12],
            ",".join(pong.gpu_ids) or "-",
            pong.pid,
            extra={"actor": slot.name, "node": pong.node_id[:12]},
        )

    def _start_failed(self, slot: ActorSlot, cause: str, now: float) -> None:
        pool = slot.pool
        slot.state = ActorState.DEAD
        slot.death_cause = cause
        pool.start_failures += 1
        delay = self.h.replace_backoff_s * 2 ** (pool.start_failures - 1)
        pool.next_start_at = now + delay
        if pool.start_failures >= self.h.max_start_failures:
            pool.gave_up = (
                f"{pool.start_failures} actors for {pool.spec.engine}/{pool.spec.model} died during start-up; "
                f"last cause: {cause}"
            )
            log.error("giving up on replacing actors: %s", pool.gave_up, extra={"actor": slot.name})
        else:
            log.warning(
                "actor %s died during start-up (%s); retrying in %.1fs", slot.name, cause, delay, extra={"actor": slot.name}
            )

    def _check_ping(self, slot: ActorSlot, now: float) -> None:
        if slot.state not in (ActorState.ALIVE, ActorState.QUARANTINED):
            return
        if (
            slot.state is ActorState.QUARANTINED
            and slot.quarantined_since is not None
            and now - slot.quarantined_since > self.h.quarantine_timeout_s
        ):
            self.kill(slot, f"unreachable for {self.h.quarantine_timeout_s:.0f}s (quarantined, never answered again)")
            log.error("actor %s killed: %s", slot.name, slot.death_cause, extra={"actor": slot.name})
            return
        if slot.ping_ref is not None:
            done, _ = ray.wait([slot.ping_ref], timeout=0)
            if done:
                try:
                    slot.last_pong = ray.get(slot.ping_ref)
                    slot.last_pong_at = now
                    if slot.state is ActorState.QUARANTINED:
                        log.info("actor %s answers again; back in service", slot.name, extra={"actor": slot.name})
                    slot.state, slot.quarantined_since = ActorState.ALIVE, None
                except ActorUnavailableError as exc:
                    self.quarantine(slot, f"unavailable: {death_cause(exc)}", now)
                except RayActorError as exc:
                    self.mark_dead(slot, death_cause(exc))
                    return
                slot.ping_ref = None
            elif now - slot.ping_sent_at > self.h.ping_timeout_s:
                slot.ping_ref = None
                state = _ray_actor_state(slot.handle)
                if state == "DEAD":
                    self.mark_dead(slot, "Ray reports the actor DEAD (no reply to ping)")
                    return
                self.quarantine(slot, f"no reply to ping within {self.h.ping_timeout_s:.0f}s", now)
        if slot.ping_ref is None and now - slot.ping_sent_at >= self.h.ping_interval_s:
            try:
                slot.ping_ref = slot.handle.ping.remote()
                slot.ping_sent_at = now
            except RayActorError as exc:
                self.mark_dead(slot, death_cause(exc))

    def quarantine(self, slot: ActorSlot, why: str, now: float | None = None) -> None:
        """No new work for this actor until a ping answers (or it is declared dead)."""
        now = time.monotonic() if now is None else now
        if slot.state is not ActorState.QUARANTINED:
            log.warning("actor %s quarantined: %s", slot.name, why, extra={"actor": slot.name})
            slot.quarantined_since = now
        slot.state = ActorState.QUARANTINED

    def overdue(self, inflight: InFlight, now: float) -> float | None:
        """The deadline a task has run past, or None.

        A task the worker reports as working is judged by the time in its current stage (transcription
        gets ``base + per_audio_s x duration``). A task waiting behind another for the device is not
        judged (the one in front is). A task the worker does not report (still in Ray's queue, or the
        actor stopped answering pings) is judged from dispatch, with room for the tasks ahead of it.
        """
        slot = inflight.slot
        pong = slot.last_pong
        run = next((r for r in pong.running if (r.task_id, r.attempt) == inflight.lease), None) if pong else None
        base, per_audio = self.h.task_deadline_base_s, self.h.task_deadline_per_audio_s
        if run is not None:
            if run.stage == QUEUED:
                return None
            deadline = base + per_audio * (run.audio_duration_s or 0.0)
            elapsed = run.stage_s + (now - slot.last_pong_at)
        else:
            deadline = base * (self.settings.worker.prefetch + 1)
            elapsed = now - inflight.dispatched_at
        return deadline if elapsed > deadline else None

    def _check_deadlines(self, slot: ActorSlot, now: float) -> list[Failover]:
        if slot.state is ActorState.DEAD:
            return []
        for inflight in slot.inflight.values():
            deadline = self.overdue(inflight, now)
            if deadline is not None:
                cause = (
                    f"task {inflight.task.id} ran past its deadline of {deadline:.0f}s on actor {slot.name}; "
                    "the actor was presumed hung and killed"
                )
                log.error(cause, extra=task_extra(inflight.task.id, inflight.task.attempt, Stage.TIMEOUT, actor=slot.name))
                self.kill(slot, cause)
                hung = Failover(
                    inflight, Failure.from_exception(TaskTimedOut(cause))
                )
                rest = [f for f in self._failover(slot) if f.inflight is not inflight]
                return [hung, *rest]
        return []

    def kill(self, slot: ActorSlot, cause: str) -> None:
        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:  # already gone
            pass
        slot.state = ActorState.DEAD
        slot.death_cause = cause

    def mark_dead(self, slot: ActorSlot, cause: str) -> None:
        if slot.state is ActorState.DEAD:
            return
        slot.state = ActorState.DEAD
        slot.death_cause = cause
        log.error("actor %s died: %s", slot.name, cause, extra={"actor": slot.name, "node": (slot.node_id or "")[:12]})

    def failover(self, slot: ActorSlot) -> list[Failover]:
        """Every task in flight on a dead actor: its attempt fails with stage worker-death, unless it
        had already finished (its result is kept)."""
        return self._failover(slot)

    def _failover(self, slot: ActorSlot) -> list[Failover]:
        out = []
        where = f" on node {slot.node_id[:12]}" if slot.node_id else ""
        finished = {}
        if slot.inflight:
            ready, _ = ray.wait(list(slot.inflight), num_returns=len(slot.inflight), timeout=0)
            for ref in ready:
                try:
                    finished[ref] = ray.get(ref, timeout=0)
                except Exception:  # it died with the actor: fail it over like the rest
                    pass
        for ref, inflight in list(slot.inflight.items()):
            message = f"actor {slot.name}{where} died while holding the task: {slot.death_cause}"
            failure = Failure.from_exception(WorkerDied(message))
            out.append(Failover(inflight, failure, outcome=finished.get(ref)))
        slot.inflight.clear()
        if slot in slot.pool.slots:
            slot.pool.slots.remove(slot)
        if slot.pool.start_failures == 0:
            slot.pool.next_start_at = time.monotonic() + self.h.replace_backoff_s
        return out

    def actor_died(self, slot: ActorSlot, cause: str) -> list[Failover]:
        """A call on the actor raised RayActorError: declare it dead and fail its tasks over."""
        was_starting = slot.state is ActorState.STARTING
        if was_starting:
            self._start_failed(slot, cause, time.monotonic())
        else:
            self.mark_dead(slot, cause)
        try:  # make sure: an actor that is only unreachable must not keep its GPU as a zombie
            ray.kill(slot.handle, no_restart=True)
        except Exception:
            pass
        return self._failover(slot)

    def retire_idle(self, wanted: set[tuple[str, str]], now: float, idle_s: float) -> list[tuple[str, str]]:
        """Stop the pools no longer wanted once they have had nothing in flight for ``idle_s``."""
        retired = []
        for key, pool in list(self.pools.items()):
            busy = any(s.inflight for s in pool.slots)
            if key in wanted or busy:
                pool.idle_since = None
                continue
            if pool.idle_since is None:
                pool.idle_since = now
            elif now - pool.idle_since >= idle_s:
                for slot in pool.slots:
                    self.kill(slot, "pool retired: no work left for its engine and model")
                del self.pools[key]
                retired.append(key)
                log.info("retired the idle pool for %s/%s, freeing its GPUs", *key)
        return retired

    def shutdown(self) -> None:
        for slot in self.all_slots():
            self.kill(slot, "orchestrator stopped")
        for pool in self.pools.values():
            pool.slots.clear()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)[\w]*): (.*)$")


def death_cause(exc: BaseException) -> str:
    """One readable line from Ray's death report: for a constructor that raised, the exception it
    raised (``ModelLoadError: model path ... does not exist``), else Ray's first sentence."""
    lines = [_ANSI.sub("", line).rstrip() for line in str(exc).strip().splitlines()]
    if lines and "creation task" in lines[0]:
        for line in reversed(lines):
            m = _EXC_LINE.match(line.strip())
            if m:
                return f"start-up failed: {m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"[:500]
    first = lines[0] if lines else ""
    return first[:500] or type(exc).__name__


def _ray_actor_state(handle) -> str | None:
    try:
        from ray.util.state import get_actor

        info = get_actor(handle._actor_id.hex(), timeout=5)
        return getattr(info, "state", None) if info else None
    except Exception:  # the state API is best-effort; a ping timeout alone only quarantines
        return None


def new_owner_tag() -> str:
    return uuid.uuid4().hex[:6]


__all__ = [
    "ActorSlot",
    "ActorState",
    "ActorView",
    "CircuitBreaker",
    "Failover",
    "HealthMonitor",
    "InFlight",
    "Pool",
]
