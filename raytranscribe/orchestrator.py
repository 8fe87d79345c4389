"""The driver: claim -> presign -> dispatch -> record, with leases, the reaper, failover and drain.

It is the only writer to the database. Each loop turn it
1. on the heartbeat: renews the leases of everything in flight, reaps expired leases, refreshes
   which (engine, model) pairs it serves, and publishes its state;
2. lets the health monitor start, ping, time out and replace actors, and records failovers;
3. writes buffered outcomes (batched, fenced); while the database is unreachable outcomes stay in
   memory and claiming stops, so nothing is lost;
4. claims up to free capacity (actors x prefetch) unless a circuit breaker is open, presigns and
   dispatches each task to the least-loaded live actor;
5. waits on results with ``ray.wait``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError

from raytranscribe import metrics
from raytranscribe.alerts import Alerter
from raytranscribe.config import Settings
from raytranscribe.contracts import Outcome, TaskSpec
from raytranscribe.engines.base import EngineSpec
from raytranscribe.errors import (
    ActorUnavailable,
    Failure,
    PresignError,
    RayTranscribeError,
    Stage,
    StoreUnavailable,
    WorkerDied,
)
from raytranscribe.health import CircuitBreaker, Failover, HealthMonitor, InFlight, Pool, death_cause, new_owner_tag
from raytranscribe.logs import task_extra
from raytranscribe.storage import S3Storage
from raytranscribe.store import ClaimedTask, RecordResult, Store, TaskStatus

log = logging.getLogger(__name__)

# Presign is here too: credentials that vanish on the driver must pause dispatch, not burn retries.
BREAKER_STAGES = (Stage.PRESIGN.value, Stage.DOWNLOAD.value, Stage.UPLOAD.value)


class NoWorkers(RayTranscribeError):
    """Every actor pool gave up: the model cannot load, or no GPU is left."""


@dataclass
class RunSummary:
    completed: int = 0
    retried: int = 0
    dead: int = 0
    fenced: int = 0  # outcomes refused by fencing (a newer attempt owns the task)
    released: int = 0
    audio_s: float = 0.0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def wall_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def real_time_factor(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0


class Observer(Protocol):
    """What a UI (the CLI's progress bar) or a test hears. Every method is optional to act on."""

    def recorded(self, outcome: Outcome, result: RecordResult) -> None: ...

    def heartbeat(self, orchestrator: Orchestrator) -> None: ...


class _NullObserver:
    def recorded(self, outcome: Outcome, result: RecordResult) -> None:
        pass

    def heartbeat(self, orchestrator: Orchestrator) -> None:
        pass


@dataclass(frozen=True)
class RunOptions:
    until_drained: bool = False
    pairs: tuple[tuple[str, str], ...] | None = None  # None: serve whatever is claimable
    grace_s: float = 30.0  # on stop: how long in-flight work may finish
    idle_poll_s: float = 1.0  # how often an idle pool asks the database for work
    tick_s: float = 0.25  # longest ray.wait


class Orchestrator:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        storage: S3Storage,
        *,
        options: RunOptions = RunOptions(),
        observer: Observer | None = None,
        runtime_env: dict | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.options = options
        self.observer = observer or _NullObserver()
        tag = new_owner_tag()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{tag}"
        self.monitor = HealthMonitor(settings, tag, runtime_env=runtime_env)
        self.breakers = {s: CircuitBreaker(s, settings.breaker) for s in BREAKER_STAGES}
        self.alerter = Alerter(settings.alerts)
        self.summary = RunSummary()
        self._inflight: dict[ray.ObjectRef, InFlight] = {}
        # Attempts whose lease was lost (cancelled, reaped): still running on an actor, so they keep
        # their slot until they finish; their outcomes are ignored.
        self._abandoned: dict[ray.ObjectRef, InFlight] = {}
        self._probe: ray.ObjectRef | None = None  # the one task a half-open breaker lets through
        self._buffer: list[Outcome] = []  # outcomes waiting to be written
        self._stop = threading.Event()
        self._next_heartbeat = 0.0
        self._next_depth = 0.0
        self._next_claim: dict[tuple[str, str], float] = {}
        self._db_down_until = 0.0
        self._db_failures = 0
        self._pairs: list[tuple[str, str]] = list(options.pairs or [])
        self._outstanding: int | None = None
        self._audio_window: list[tuple[float, float]] = []

    # --- public ---------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop claiming; let in-flight work finish within the grace period; release the rest."""
        if not self._stop.is_set():
            log.info("stop requested: no new claims; %d task(s) in flight", len(self._inflight))
        self._stop.set()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def outstanding(self) -> int | None:
        """Tasks not yet settled, as of the last heartbeat (None before the first)."""
        return self._outstanding

    @property
    def db_available(self) -> bool:
        return time.monotonic() >= self._db_down_until

    def breaker_states(self) -> dict[str, str]:
        return {s: b.state for s, b in self.breakers.items()}

    def run(self) -> RunSummary:
        log.info("orchestrator %s starting", self.owner, extra={"owner": self.owner})
        stop_deadline: float | None = None
        try:
            while True:
                now = time.monotonic()
                if self._stop.is_set() and stop_deadline is None:
                    stop_deadline = now + self.options.grace_s
                if stop_deadline is not None and (not self._inflight or now >= stop_deadline):
                    break
                self._flush()  # before the heartbeat, so the reaper never sees our own finished work
                if now >= self._next_heartbeat:
                    self._heartbeat(now)
                self._handle_failovers(self.monitor.tick(now))
                self._flush()
                if stop_deadline is None:
                    self._fill(now)
                if self.options.until_drained and self._drained():
                    log.info("drained: nothing pending, in progress or waiting for retry")
                    break
                if not self.monitor.serviceable():
                    raise NoWorkers(
                        "no worker actors can run: "
                        + "; ".join(p.gave_up for p in self.monitor.pools.values() if p.gave_up)
                    )
                self._wait(self.options.tick_s)
        finally:
            self._shutdown()
        self.summary.finished = time.monotonic()
        return self.summary

    # --- heartbeat: leases, reaper, pairs, state ------------------------------------------------

    def _heartbeat(self, now: float) -> None:
        self._next_heartbeat = now + self.settings.lease.heartbeat_s
        if not self.db_available:
            return
        try:
            # Finished but unwritten outcomes keep their leases too (a long database outage).
            leases = [f.lease for f in self._inflight.values()] + [(o.task_id, o.attempt) for o in self._buffer]
            if leases:
                lost = self.store.renew(leases, self.owner, lease_s=self.settings.lease.lease_s)
                for ref, f in list(self._inflight.items()):
                    if f.lease in lost:
                        # Cancelled or taken over: its outcome would be fenced out anyway.
                        log.warning(
                            "lease lost; dropping the attempt",
                            extra=task_extra(f.task.id, f.task.attempt, Stage.LEASE, actor=f.slot.name),
                        )
                        self._abandon(ref)
            for r in ([] if self._buffer else self.store.reap()):
                log.warning(
                    "lease expired (holder vanished): %s", r.reason, extra=task_extra(r.task_id, r.attempt, Stage.LEASE)
                )
                self._count(r)
            if self.options.pairs is None:
                self._pairs = self.store.claimable_pairs()
            self._outstanding = self.store.outstanding(self.options.pairs)
            if now >= self._next_depth:
                # Queue depth for the dashboard: a count per status, at most every few seconds.
                self._next_depth = now + max(5.0, self.settings.lease.heartbeat_s)
                for status, n in self.store.stats(top=0).counts.items():
                    metrics.get().queue_depth.set(n, tags={"status": status.value})
            self._db_ok()
        except StoreUnavailable as exc:
            self._db_down(exc)
        for pair in self._pairs:
            self.monitor.ensure_pool(self._engine_spec(pair))
        if self.db_available:
            # A pool whose (engine, model) has no work left gives its GPUs back after a while.
            self.monitor.retire_idle(set(self._pairs), now, self.settings.health.pool_idle_s)
        m = metrics.get()
        m.in_flight.set(len(self._inflight))
        for pool in self.monitor.pools.values():
            m.live_actors.set(len(pool.alive()), tags={"pool": f"{pool.key[0]}/{pool.key[1]}"})
        for stage, b in self.breakers.items():
            m.breaker_open.set(1 if b.state == "open" else 0, tags={"stage": stage})
        self._publish_state()
        self.observer.heartbeat(self)

    def _publish_state(self) -> None:
        if not self.db_available:
            return
        state = {
            "owner": self.owner,
            "actors": [asdict(a) for a in self.monitor.views()],
            "breakers": self.breaker_states(),
            "in_flight": len(self._inflight),
            "buffered": len(self._buffer),
        }
        try:
            self.store.publish_orchestrator(self.owner, state, ttl_s=3 * self.settings.lease.heartbeat_s)
        except StoreUnavailable as exc:
            self._db_down(exc)

    def _engine_spec(self, pair: tuple[str, str]) -> EngineSpec:
        e = self.settings.engine
        return EngineSpec(
            engine=pair[0],
            model=pair[1],
            device=e.device,
            compute_type=e.compute_type,
            cpu_threads=e.cpu_threads,
            batch_size=e.batch_size,
        )

    # --- claim, presign, dispatch ---------------------------------------------------------------

    def _fill(self, now: float) -> None:
        if not self.db_available or self._buffer:
            return  # write what we owe before taking more
        if not self._breakers_allow():
            return
        half_open = any(b.state == "half-open" for b in self.breakers.values())
        if not half_open:
            self._probe = None
        elif self._probe is not None and self._probe in self._inflight:
            return  # one probe at a time: wait for its outcome
        for pool in list(self.monitor.pools.values()):
            cap = self.monitor.capacity(pool)
            if cap <= 0 or now < self._next_claim.get(pool.key, 0.0):
                continue
            if half_open:
                cap = 1  # probe with one task before opening the taps
            try:
                claimed = self.store.claim(cap, self.owner, lease_s=self.settings.lease.lease_s, pairs=[pool.key])
                self._db_ok()
            except StoreUnavailable as exc:
                self._db_down(exc)
                return
            if len(claimed) < cap:
                self._next_claim[pool.key] = now + self.options.idle_poll_s
            for n, task in enumerate(claimed):
                if not self._breakers_allow():
                    # A breaker opened mid-batch (presign failing): hand the rest back uncharged.
                    self._release([(t.id, t.attempt) for t in claimed[n:]])
                    return
                ref = self._dispatch(pool, task, now)
                if half_open:
                    self._probe = ref
                    return

    def _breakers_allow(self) -> bool:
        return all(b.allows_dispatch() for b in self.breakers.values())

    def _dispatch(self, pool: Pool, task: ClaimedTask, now: float) -> ray.ObjectRef | None:
        extra = task_extra(task.id, task.attempt, Stage.PRESIGN)
        presign = self.breakers[Stage.PRESIGN.value]
        try:
            input_url, outputs = self.storage.presign_task(task.input_uri, task.output_uri, task.options.formats)
        except Exception as exc:
            err = exc if isinstance(exc, RayTranscribeError) else PresignError(f"{type(exc).__name__}: {exc}", transient=True)
            if err is not exc:
                err.__cause__ = exc
            log.error("presign failed: %s", err, extra=extra)
            if err.transient:
                presign.record(False)
            self._buffer.append(Outcome(task.id, task.attempt, failure=Failure.from_exception(err, Stage.PRESIGN)))
            return None
        presign.record(True)
        spec = TaskSpec(
            task_id=task.id,
            attempt=task.attempt,
            input_url=input_url,
            input_uri=task.input_uri,
            outputs=outputs,
            engine=pool.spec,
            options=task.options,
        )
        slot = self.monitor.pick(pool)
        if slot is None:  # capacity vanished between claim and dispatch (an actor died): not the task's fault
            self._release([(task.id, task.attempt)])
            return None
        try:
            ref = slot.handle.process.remote(spec)
        except RayActorError as exc:
            self._handle_failovers(self.monitor.actor_died(slot, death_cause(exc)))
            self._buffer.append(
                Outcome(task.id, task.attempt, failure=Failure.from_exception(WorkerDied(death_cause(exc), stage=Stage.DISPATCH)))
            )
            return None
        inflight = InFlight(task=task, spec=spec, ref=ref, slot=slot, dispatched_at=now)
        slot.inflight[ref] = inflight
        self._inflight[ref] = inflight
        log.debug("dispatched", extra=task_extra(task.id, task.attempt, Stage.DISPATCH, actor=slot.name))
        return ref

    def _release(self, leases: list[tuple[int, int]]) -> None:
        try:
            self.summary.released += self.store.release(leases, self.owner)
        except StoreUnavailable as exc:  # the lease will expire and the reaper will bring it back
            self._db_down(exc)

    # --- results --------------------------------------------------------------------------------

    def _wait(self, timeout: float) -> None:
        refs = list(self._inflight) + list(self._abandoned) + self.monitor.control_refs()
        if not refs:
            time.sleep(timeout)
            return
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if not ready:
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            abandoned = self._abandoned.pop(ref, None)
            if abandoned is not None:  # finished at last; its lease went elsewhere, so its slot frees up
                abandoned.slot.inflight.pop(ref, None)
                continue
            inflight = self._inflight.get(ref)
            if inflight is None:
                continue  # a control ref; the monitor reads it on its tick
            try:
                outcome: Outcome = ray.get(ref)
            except ActorUnavailableError as exc:
                # The actor may come back (a network blip) but this call's fate is unknown: retry the
                # task elsewhere and keep the actor out of rotation until it answers a ping.
                self.monitor.quarantine(inflight.slot, f"call failed: {death_cause(exc)}")
                message = f"actor {inflight.slot.name} became unreachable while holding the task: {death_cause(exc)}"
                failure = Failure.from_exception(ActorUnavailable(message))
                outcome = Outcome(inflight.task.id, inflight.task.attempt, failure=failure, actor=inflight.slot.name)
            except RayActorError as exc:
                self._handle_failovers(self.monitor.actor_died(inflight.slot, death_cause(exc)))
                continue
            except RayError as exc:  # process() itself raised: the actor is broken for this task
                failure = Failure(Stage.TRANSCRIBE, type(exc).__name__, str(exc).splitlines()[0][:500], True)
                outcome = Outcome(inflight.task.id, inflight.task.attempt, failure=failure, actor=inflight.slot.name)
            self._forget(ref)
            self._observe_transfer(outcome)
            self._observe_actor(inflight.slot, outcome)
            for stage, seconds in outcome.timings:
                metrics.get().stage_seconds.observe(seconds, tags={"stage": stage})
            self._buffer.append(outcome)

    def _forget(self, ref: ray.ObjectRef) -> None:
        inflight = self._inflight.pop(ref, None)
        if inflight is not None:
            inflight.slot.inflight.pop(ref, None)

    def _abandon(self, ref: ray.ObjectRef) -> None:
        """Stop caring about an attempt that lost its lease; it keeps its actor slot until it ends."""
        inflight = self._inflight.pop(ref, None)
        if inflight is None:
            return
        self._abandoned[ref] = inflight
        try:
            ray.cancel(ref)  # frees the slot at once if it is still queued on the actor
        except Exception:  # already running or finished: it ends on its own
            pass

    def _observe_actor(self, slot, outcome: Outcome) -> None:
        """An actor whose transcriptions keep failing (a sick GPU) is replaced, not fed more work."""
        f = outcome.failure
        if f is None or f.stage is not Stage.TRANSCRIBE:
            slot.consecutive_failures = 0
            return
        slot.consecutive_failures += 1
        limit = self.settings.health.max_consecutive_failures
        if slot.consecutive_failures >= limit:
            cause = f"{slot.consecutive_failures} transcriptions in a row failed on this actor (last: {f.message})"
            self.monitor.kill(slot, cause)
            log.error("replacing actor %s: %s", slot.name, cause, extra={"actor": slot.name})
            self._handle_failovers(self.monitor.failover(slot))

    def _handle_failovers(self, failovers: Sequence[Failover]) -> None:
        for fo in failovers:
            self._inflight.pop(fo.inflight.ref, None)
            if self._abandoned.pop(fo.inflight.ref, None) is not None:
                continue  # its lease is gone already: nothing to record
            if fo.outcome is not None:  # it finished before its actor died: keep the real outcome
                self._buffer.append(fo.outcome)
                continue
            t = fo.inflight.task
            log.warning(
                "failing over: %s",
                fo.failure.message,
                extra=task_extra(t.id, t.attempt, fo.failure.stage, actor=fo.inflight.slot.name),
            )
            self._buffer.append(
                Outcome(t.id, t.attempt, failure=fo.failure, actor=fo.inflight.slot.name, node_id=fo.inflight.slot.node_id)
            )

    def _observe_transfer(self, outcome: Outcome) -> None:
        f = outcome.failure
        if f is None:
            for b in self.breakers.values():
                b.record(True)
        elif f.stage.value in self.breakers and f.transient:
            self.breakers[f.stage.value].record(False)

    # --- writing outcomes -----------------------------------------------------------------------

    def _flush(self) -> None:
        if not self._buffer or not self.db_available:
            return
        try:
            self._write_buffer()
            self._db_ok()
        except StoreUnavailable as exc:  # keep the outcomes; stop claiming until the database is back
            self._db_down(exc)

    def _write_buffer(self) -> None:
        """Record every buffered outcome in one fenced batch; raises StoreUnavailable, keeping them."""
        batch = list(self._buffer)
        results = self.store.record(batch)
        del self._buffer[: len(batch)]
        for outcome, result in zip(batch, results):
            self._count(result, outcome)
            self.observer.recorded(outcome, result)

    def _count(self, result: RecordResult, outcome: Outcome | None = None) -> None:
        m = metrics.get()
        stage = outcome.failure.stage.value if outcome and outcome.failure else (Stage.LEASE.value if outcome is None else "")
        if not result.applied:
            self.summary.fenced += 1
            m.tasks_finished.inc(tags={"outcome": "fenced", "stage": stage})
            return
        if result.status is TaskStatus.COMPLETED:
            self.summary.completed += 1
            audio = outcome.result.audio_duration_s if outcome and outcome.result else 0.0
            self.summary.audio_s += audio
            if audio > 0:
                m.audio_seconds.inc(audio)
            m.real_time_factor.set(self.summary.real_time_factor)
            m.tasks_finished.inc(tags={"outcome": "completed", "stage": ""})
            self.alerter.observe(ok=True)
        elif result.status is TaskStatus.DEAD:
            self.summary.dead += 1
            m.tasks_finished.inc(tags={"outcome": "dead", "stage": stage})
            self.alerter.observe(ok=False)
            self.alerter.task_dead(result.task_id, result.reason or "")
        elif result.status is TaskStatus.FAILED:
            self.summary.retried += 1
            m.tasks_finished.inc(tags={"outcome": "retry", "stage": stage})
            self.alerter.observe(ok=False)
        elif result.status is TaskStatus.PENDING:
            self.summary.released += 1

    def _db_ok(self) -> None:
        if self._db_failures:
            log.info("database reachable again; resuming (%d outcome(s) buffered)", len(self._buffer))
        self._db_failures = 0
        self._db_down_until = 0.0

    def _db_down(self, exc: BaseException) -> None:
        self._db_failures += 1
        delay = min(30.0, 0.5 * 2 ** (self._db_failures - 1))
        self._db_down_until = time.monotonic() + delay
        log.error(
            "database unavailable (%s); claiming paused, %d outcome(s) kept in memory; next try in %.1fs",
            exc,
            len(self._buffer),
            delay,
        )

    # --- drain and shutdown ---------------------------------------------------------------------

    def _drained(self) -> bool:
        if self._inflight or self._buffer or not self.db_available:
            return False
        try:
            self._outstanding = self.store.outstanding(self.options.pairs)
        except StoreUnavailable as exc:
            self._db_down(exc)
            return False
        return self._outstanding == 0

    def _shutdown(self) -> None:
        leftovers = [f.lease for f in self._inflight.values()]
        self.monitor.shutdown()
        deadline = time.monotonic() + max(5.0, self.options.grace_s)
        while (self._buffer or leftovers) and time.monotonic() < deadline:
            try:
                if self._buffer:
                    self._write_buffer()
                if leftovers:
                    n = self.store.release(leftovers, self.owner)
                    self.summary.released += n
                    log.info("released %d unfinished task(s) back to pending", n)
                    leftovers = []
            except StoreUnavailable as exc:
                log.error("database unavailable during shutdown (%s); retrying", exc)
                time.sleep(1.0)
        if self._buffer or leftovers:
            log.error(
                "shutting down with %d outcome(s) unwritten and %d lease(s) unreleased: "
                "their leases will expire and the next orchestrator will retry them",
                len(self._buffer),
                len(leftovers),
            )
        self._inflight.clear()
        try:
            self.store.retire_orchestrator(self.owner)
        except StoreUnavailable:
            pass
        log.info("orchestrator %s stopped", self.owner, extra={"owner": self.owner})
