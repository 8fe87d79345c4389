"""The driver: claim -> presign -> pool.submit; outcomes -> buffer -> store.record. Leases, reaper, drain.

It is the only writer to the database; the actor pools (:mod:`raytranscribe.pool`) own the actors
and every attempt in flight on them, and hand back :class:`Outcome` s, failovers included. Each turn:
1. on the heartbeat: renews the leases of everything in flight, reaps expired leases, refreshes
   which (engine, model) pairs it serves, and publishes its state;
2. ``pools.tick``: start-up, pings, deadlines, deaths and pool sizes, as outcomes;
3. writes buffered outcomes (batched, fenced); while the database is unreachable outcomes stay in
   memory and claiming stops, so nothing is lost;
4. claims what each pool's actors want (unless a circuit breaker is open), presigns, submits, and
   sends them to the actors;
5. waits on results with ``ray.wait`` and collects their outcomes.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import ray
from ray import ObjectRefGenerator

from raytranscribe import metrics
from raytranscribe.alerts import Alerter
from raytranscribe.breakers import BreakerState, CircuitBreaker
from raytranscribe.config import Settings
from raytranscribe.contracts import Outcome, TaskSpec
from raytranscribe.engines.base import EngineSpec
from raytranscribe.errors import Failure, PresignError, RayTranscribeError, Stage, StoreUnavailable
from raytranscribe.logs import task_extra
from raytranscribe.pool import ActorPool, ActorPools, Lease, new_owner_tag
from raytranscribe.storage import S3Storage
from raytranscribe.store import ClaimedTask, RecordResult, Store, TaskStatus
from raytranscribe.worker import TranscriptionWorker

log = logging.getLogger(__name__)

# Presign is here too: credentials that vanish on the driver must pause dispatch, not burn retries.
BREAKER_STAGES = (Stage.PRESIGN, Stage.DOWNLOAD, Stage.UPLOAD)
# On stop, how long the tasks already rendering or uploading may take to land before the rest is
# handed back: short enough that the whole stop fits in Ray's 3 s between SIGTERM and SIGKILL.
FINISHING_WAIT_S = 1.0


class NoWorkers(RayTranscribeError):
    """Every actor pool gave up: the model cannot load, or no GPU is left."""


@dataclass
class RunSummary:
    completed: int = 0
    retried: int = 0
    dead: int = 0
    fenced: int = 0  # outcomes refused by fencing (a newer attempt owns the task)
    released: int = 0  # handed back uncharged: on stop, or by a dead actor or node the task did not kill
    audio_s: float = 0.0
    stopped: bool = False  # a stop request (a signal) ended the run, not the work running out
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def wall_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rtfx(self) -> float:
        """Audio seconds per wall second (RTFx; the real-time factor, RTF, is its inverse)."""
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
    grace_s: float = 0.0  # on stop: how long in-flight work may finish (0: hand it back at once, uncharged)
    idle_poll_s: float = 1.0  # how often an idle pool asks the database for work
    tick_s: float = 0.25  # longest ray.wait
    turn_s: float = 0.05  # shortest turn: what finishes meanwhile is recorded, and refilled, in one batch


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
        worker: type[TranscriptionWorker] = TranscriptionWorker,
    ) -> None:
        """``worker``: the actor class the pools start (TranscriptionWorker, or a subclass of it)."""
        self.settings = settings
        self.store = store
        self.storage = storage
        self.options = options
        self.observer = observer or _NullObserver()
        tag = new_owner_tag()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{tag}"
        # An s3:// model reaches each new actor as presigned URLs listed here (the pool imports no storage).
        self.pools = ActorPools(
            settings, tag, runtime_env=runtime_env, model_source=storage.model_for_actor, worker=worker
        )
        self.breakers: dict[Stage, CircuitBreaker] = {s: CircuitBreaker(s, settings.breaker) for s in BREAKER_STAGES}
        self.alerter = Alerter(settings.alerts)
        self.summary = RunSummary()
        self._probe: Lease | None = None  # the one task a half-open breaker lets through
        self._buffer: list[Outcome] = []  # outcomes waiting to be written
        self._stop = threading.Event()
        self._next_heartbeat = 0.0
        self._next_depth = 0.0
        self._next_claim: dict[tuple[str, str], float] = {}
        self._db_down_until = 0.0
        self._db_failures = 0
        self._pairs: list[tuple[str, str]] = list(options.pairs or [])
        self._outstanding: int | None = None
        self._store_errors_seen = store.transient_errors  # how many the metric has been given

    # --- public ---------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop claiming; let in-flight work finish within the grace period (none by default); write
        what finished and hand the rest back, uncharged, for the next run to pick up at once."""
        if not self._stop.is_set():
            log.info(
                "stop requested: no new claims; %d task(s) in flight, %s", self.pools.in_flight,
                f"{self.options.grace_s:g}s to finish" if self.options.grace_s else "handing them back",
            )  # fmt: skip
        self._stop.set()

    @property
    def in_flight(self) -> int:
        return self.pools.in_flight

    @property
    def outstanding(self) -> int | None:
        """Tasks not yet settled, as of the last heartbeat (None before the first)."""
        return self._outstanding

    @property
    def db_available(self) -> bool:
        return time.monotonic() >= self._db_down_until

    def breaker_states(self) -> dict[str, str]:
        return {s.value: b.state.value for s, b in self.breakers.items()}

    def run(self) -> RunSummary:
        log.info("orchestrator %s starting", self.owner, extra={"owner": self.owner})
        stop_deadline: float | None = None
        try:
            while True:
                now = time.monotonic()
                turn_started = now
                if self._stop.is_set() and stop_deadline is None:
                    stop_deadline = now + self.options.grace_s
                if stop_deadline is not None and (not self.pools.in_flight or now >= stop_deadline):
                    self.summary.stopped = True
                    break
                self._flush()  # before the heartbeat, so the reaper never sees our own finished work
                if now >= self._next_heartbeat:
                    self._heartbeat(now)
                self._take(self.pools.tick(now))
                self._flush()
                if stop_deadline is None:
                    self._fill(now)
                if self.options.until_drained and self._drained():
                    log.info("drained: nothing pending, in progress or waiting for retry")
                    break
                if not self.pools.serviceable():
                    raise NoWorkers("no worker actors can run: " + "; ".join(self.pools.gave_up().values()))
                self._take(self.pools.collect(self._wait(self.options.tick_s, turn_started)))
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
            leases = self.pools.leases() + [(o.task_id, o.attempt) for o in self._buffer]
            if leases:
                lost = self.store.renew(leases, self.owner, lease_s=self.settings.lease.lease_s)
                for lease in lost:  # cancelled or taken over: its outcome would be fenced out anyway
                    self.pools.abandon(lease)
            reaped = [] if self._buffer else self.store.reap()
            for r in reaped:
                log.warning(
                    "lease expired (holder vanished): %s", r.reason, extra=task_extra(r.task_id, r.attempt, Stage.LEASE)
                )
            self._count([(r, None) for r in reaped])
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
            self.pools.ensure(self._engine_spec(pair))
        if self.db_available:
            # A pool whose (engine, model) has no work left gives its GPUs back after a while.
            self.pools.retire_idle(set(self._pairs), now)
        m = metrics.get()
        m.in_flight.set(self.pools.in_flight)
        # By pool and where each computes: a GPU pool's actors on the CPU show as device "cpu".
        live = collections.Counter((v.pool, v.device, v.compute_type) for v in self.pools.views() if v.state == "alive")
        metrics.set_live_actors({(p.label, "", ""): 0 for p in self.pools.pools.values()} | live)
        for stage, b in self.breakers.items():
            m.breaker_open.set(1 if b.state is BreakerState.OPEN else 0, tags={"stage": stage.value})
        self._publish_database_health()
        self._publish_state()
        self.observer.heartbeat(self)

    def _publish_state(self) -> None:
        if not self.db_available:
            return
        state = {
            "owner": self.owner,
            "actors": [asdict(a) for a in self.pools.views()],
            "breakers": self.breaker_states(),
            "breaker_trips": {s.value: b.trips for s, b in self.breakers.items()},
            "actor_starts": self.pools.actor_starts(),
            "in_flight": self.pools.in_flight,
            "buffered": len(self._buffer),
        }
        try:
            self.store.publish_orchestrator(self.owner, state, ttl_s=3 * self.settings.lease.heartbeat_s)
        except StoreUnavailable as exc:
            self._db_down(exc)

    def _engine_spec(self, pair: tuple[str, str]) -> EngineSpec:
        return EngineSpec.from_settings(self.settings.engine, *pair)

    # --- claim, presign, submit ----------------------------------------------------------------

    def _fill(self, now: float) -> None:
        if not self.db_available or self._buffer:
            return  # write what we owe before taking more
        if not self._breakers_allow():
            return
        half_open = any(b.state is BreakerState.HALF_OPEN for b in self.breakers.values())
        if not half_open:
            self._probe = None
        elif self._probe is not None and self.pools.holds(self._probe):
            return  # one probe at a time: wait for its outcome
        try:
            for pool in list(self.pools.pools.values()):
                if not self._fill_pool(pool, now, half_open):
                    return
        finally:
            self.pools.send()  # the Ray calls for what the actors were given this turn

    def _fill_pool(self, pool: ActorPool, now: float, half_open: bool) -> bool:
        """Claim what the pool's actors want, presign, submit. False: stop filling this turn."""
        cap = pool.capacity()
        if cap <= 0 or now < self._next_claim.get(pool.key, 0.0):
            return True
        if half_open:
            cap = 1  # probe with one task before opening the taps
        try:
            claimed = self.store.claim(cap, self.owner, lease_s=self.settings.lease.lease_s, pairs=[pool.key])
            self._db_ok()
        except StoreUnavailable as exc:
            self._db_down(exc)
            return False
        pool.note_claim(cap, len(claimed), now)
        if len(claimed) < cap:
            self._next_claim[pool.key] = now + self.options.idle_poll_s
        for n, task in enumerate(claimed):
            if not self._breakers_allow():
                # A breaker opened mid-batch (presign failing): hand the rest back uncharged.
                self._release([(t.id, t.attempt) for t in claimed[n:]])
                return False
            spec = self._presign(pool, task)
            if spec is None:
                continue
            if not pool.submit(spec, now):  # capacity vanished (an actor died): not the task's fault
                self._release([(task.id, task.attempt)])
                continue
            if half_open:
                self._probe = (task.id, task.attempt)
                self._release([(t.id, t.attempt) for t in claimed[n + 1 :]])
                return False
        return True

    def _breakers_allow(self) -> bool:
        return all(b.allows_dispatch() for b in self.breakers.values())

    def _presign(self, pool: ActorPool, task: ClaimedTask) -> TaskSpec | None:
        """The task as a worker sees it (presigned URLs only); None when presigning failed (recorded)."""
        presign = self.breakers[Stage.PRESIGN]
        try:
            input_url, outputs = self.storage.presign_task(task.input_uri, task.output_uri, task.options.formats)
        except Exception as exc:
            err = exc if isinstance(exc, RayTranscribeError) else PresignError(f"{type(exc).__name__}: {exc}", transient=True)
            if err is not exc:
                err.__cause__ = exc
            log.error("presign failed: %s", err, extra=task_extra(task.id, task.attempt, Stage.PRESIGN))
            if err.transient:
                presign.record(False)
            self._buffer.append(Outcome(task.id, task.attempt, failure=Failure.from_exception(err, Stage.PRESIGN)))
            return None
        presign.record(True)
        r = self.settings.retry
        return TaskSpec(
            task_id=task.id,
            attempt=task.attempt,
            input_url=input_url,
            input_uri=task.input_uri,
            outputs=outputs,
            engine=pool.spec,
            options=task.options,
            alone=task.crashes >= r.alone_after_crashes or task.releases >= r.alone_after_releases,
        )

    def _release(self, leases: list[tuple[int, int]]) -> None:
        if not leases:
            return
        try:
            self.summary.released += self.store.release(leases, self.owner)
        except StoreUnavailable as exc:  # the lease will expire and the reaper will bring it back
            self._db_down(exc)

    # --- results --------------------------------------------------------------------------------

    def _wait(self, timeout: float, turn_started: float) -> list[ray.ObjectRef | ObjectRefGenerator]:
        """Every ref that is ready, once the turn has lasted ``turn_s``, waiting up to ``timeout``
        for one when none is."""
        refs = self.pools.refs()
        if not refs:
            time.sleep(timeout)
            return []
        rest = turn_started + self.options.turn_s - time.monotonic()
        if rest > 0:
            time.sleep(rest)
        # Under load something is ready every turn: one pass over the refs, not two.
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        if ready:
            return ready
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if not ready:
            return []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return ready

    def _take(self, outcomes: Sequence[Outcome]) -> None:
        """Outcomes from the pools (results, failovers, deadline kills) into the write buffer."""
        for outcome in outcomes:
            self._observe_transfer(outcome)
            self._buffer.append(outcome)

    def _observe_transfer(self, outcome: Outcome) -> None:
        f = outcome.failure
        if outcome.release is not None:
            return  # handed back: says nothing of S3
        if f is None:
            for b in self.breakers.values():
                b.record(True)
        elif f.stage in self.breakers and f.transient:
            self.breakers[f.stage].record(False)

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
        self._count(list(zip(results, batch)))
        for outcome, result in zip(batch, results):
            self.observer.recorded(outcome, result)

    def _count(self, recorded: Sequence[tuple[RecordResult, Outcome | None]]) -> None:
        """The run's summary, alerts and metrics for recorded outcomes (None: a reaped lease). The
        metrics move once per batch and kind, not once per task: at a thousand tasks a second each
        metric call is driver time."""
        finished: collections.Counter[tuple[str, str]] = collections.Counter()
        audio = 0.0
        for result, outcome in recorded:
            f = outcome.failure if outcome is not None else None
            stage = f.stage.value if f is not None else (Stage.LEASE.value if outcome is None else "")
            if not result.applied:
                self.summary.fenced += 1
                finished["fenced", stage] += 1
            elif result.status is TaskStatus.COMPLETED:
                self.summary.completed += 1
                audio += outcome.result.audio_duration_s if outcome and outcome.result else 0.0
                finished["completed", ""] += 1
                self.alerter.observe(ok=True)
            elif result.status is TaskStatus.DEAD:
                self.summary.dead += 1
                finished["dead", stage] += 1
                self.alerter.observe(ok=False)
                self.alerter.task_dead(result.task_id, result.reason or "")
            elif result.status is TaskStatus.FAILED:
                self.summary.retried += 1
                finished["retry", stage] += 1
                self.alerter.observe(ok=False)
            elif result.status is TaskStatus.PENDING:  # handed back uncharged: nobody's failure
                self.summary.released += 1
                finished["released", outcome.release.stage.value if outcome and outcome.release else ""] += 1
        if not finished:
            return
        m = metrics.get()
        for (kind, stage), n in finished.items():
            m.tasks_finished.inc(n, tags={"outcome": kind, "stage": stage})
        if audio > 0:
            self.summary.audio_s += audio
            m.audio_seconds.inc(audio)
        if finished["completed", ""]:
            m.rtfx.set(self.summary.rtfx)

    def _db_ok(self) -> None:
        if self._db_failures:  # only on the way back up: this runs after every claim and record
            log.info("database reachable again; resuming (%d outcome(s) buffered)", len(self._buffer))
            self._db_failures = 0
            self._db_down_until = 0.0
            self._publish_database_health()

    def _db_down(self, exc: BaseException) -> None:
        self._db_failures += 1
        delay = min(30.0, 0.5 * 2 ** (self._db_failures - 1))
        self._db_down_until = time.monotonic() + delay
        self._publish_database_health()
        log.error(
            "database unavailable (%s); claiming paused, %d outcome(s) kept in memory; next try in %.1fs",
            exc,
            len(self._buffer),
            delay,
        )

    def _publish_database_health(self) -> None:
        """At every heartbeat and at once when the database goes down or comes back."""
        m = metrics.get()
        m.database_up.set(0 if self._db_failures else 1)
        seen, self._store_errors_seen = self._store_errors_seen, self.store.transient_errors
        if self._store_errors_seen > seen:
            m.store_transient_errors.inc(self._store_errors_seen - seen)

    # --- drain and shutdown ---------------------------------------------------------------------

    def _drained(self) -> bool:
        if self.pools.in_flight or self._buffer or not self.db_available:
            return False
        try:
            self._outstanding = self.store.outstanding(self.options.pairs)
            stuck = self.pools.gave_up()
            if self._outstanding and stuck:
                waiting = self.store.outstanding(list(stuck))
                if waiting == self._outstanding:
                    # All that is left waits for models that cannot load: say so now rather than
                    # idling until the good pools retire.
                    raise NoWorkers(
                        f"nothing left that can run: {waiting} task(s) wait for "
                        + "; ".join(f"{e}/{m} ({why})" for (e, m), why in stuck.items())
                    )
        except StoreUnavailable as exc:
            self._db_down(exc)
            return False
        return self._outstanding == 0

    def _land_finishing(self) -> None:
        """Wait a moment for the tasks already rendering or uploading: their work is done."""
        finishing = self.pools.finishing()
        deadline = time.monotonic() + FINISHING_WAIT_S
        while finishing and time.monotonic() < deadline:
            self._take(self.pools.collect(self._wait(0.1, time.monotonic())))
            finishing &= set(self.pools.leases())

    def _shutdown(self) -> None:
        """Write what finished, hand back every other lease (attempt closed as released, retries
        unchanged), stop the actors; in about a second, so that ``ray job stop`` (SIGKILL 3 s after
        SIGTERM) finds nothing owed and the next run starts on it at once."""
        self._land_finishing()
        leftovers = self.pools.leases()
        deadline = time.monotonic() + 5.0
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
        self.pools.shutdown()  # after the release: whatever the actors still send is fenced out
        try:
            self.store.retire_orchestrator(self.owner)
        except StoreUnavailable:
            pass
        log.info("orchestrator %s stopped", self.owner, extra={"owner": self.owner})
