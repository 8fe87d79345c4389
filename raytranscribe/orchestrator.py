"""The driver: claim -> presign -> pools.turn; outcomes -> buffer -> store.record. Leases, reaper, drain.

It is the only writer to the database; the actor pools (:mod:`raytranscribe.pool`) own the actors
and every attempt in flight on them, and hand back :class:`Outcome` s, failovers included. Each turn:
1. writes buffered outcomes (batched, fenced); while the database is unreachable outcomes stay in
   memory and claiming stops, so nothing is lost;
2. on the heartbeat: renews the leases of everything in flight, reaps expired leases, refreshes
   which (engine, model) pairs it serves, and publishes its state;
3. claims what each pool's actors want (unless a circuit breaker is open) and presigns;
4. ``pools.turn``: hands the claimed tasks to the actors, waits on results with ``ray.wait``, and
   keeps house (start-up, pings, deadlines, deaths, pool sizes, idle pools); its one report holds the
   outcomes, how many more each pool wants, the leases to renew and the views to publish.
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

from raytranscribe import metrics
from raytranscribe.alerts import Alerter
from raytranscribe.breakers import BreakerState, CircuitBreaker
from raytranscribe.config import Settings
from raytranscribe.contracts import Outcome, TaskSpec
from raytranscribe.engines.base import EngineSpec
from raytranscribe.errors import Failure, PresignError, RayTranscribeError, Stage, StoreUnavailable
from raytranscribe.logs import task_extra
from raytranscribe.pool import ActorPools, Claim, Lease, PoolKey, TurnReport, new_owner_tag
from raytranscribe.storage import S3Storage
from raytranscribe.store import ClaimedTask, RecordResult, Store, TaskStatus

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
    suspect: int = 0  # completed with a suspect transcript (engines.verdict)
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
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.options = options
        self.observer = observer or _NullObserver()
        tag = new_owner_tag()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{tag}"
        # An s3:// model reaches each new actor as presigned URLs listed here (the pool imports no storage).
        self.pools = ActorPools(settings, tag, runtime_env=runtime_env, model_source=storage.model_for_actor)
        self.breakers: dict[Stage, CircuitBreaker] = {s: CircuitBreaker(s, settings.breaker) for s in BREAKER_STAGES}
        self.alerter = Alerter(settings.alerts)
        self.summary = RunSummary()
        self._probe: Lease | None = None  # the one task a half-open breaker lets through
        self._buffer: list[Outcome] = []  # outcomes waiting to be written
        self._report = TurnReport()  # the pools' report of the last turn
        self._lost: list[Lease] = []  # leases the store says are no longer ours, for the next turn
        self._stop = threading.Event()
        self._next_heartbeat = 0.0
        self._next_depth = 0.0
        self._next_claim: dict[PoolKey, float] = {}
        self._db_down_until = 0.0
        self._db_failures = 0
        self._pairs: list[PoolKey] = list(options.pairs or [])
        self._specs: dict[PoolKey, EngineSpec] = {}
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
                if self._stop.is_set() and stop_deadline is None:
                    stop_deadline = now + self.options.grace_s
                if stop_deadline is not None and (not self._report.in_flight or now >= stop_deadline):
                    self.summary.stopped = True
                    break
                self._flush()  # before the heartbeat, so the reaper never sees our own finished work
                if now >= self._next_heartbeat:
                    self._heartbeat(now)
                if self.options.until_drained and self._drained():
                    log.info("drained: nothing pending, in progress or waiting for retry")
                    break
                if not self._report.serviceable:
                    raise NoWorkers("no worker actors can run: " + "; ".join(self._report.gave_up.values()))
                claims = self._fill(now) if stop_deadline is None else []
                lost, self._lost = self._lost, []
                self._settle(self.pools.turn(
                    claims, now, serve=self._pairs, retire=self.db_available, lost=lost,
                    wait_s=self.options.tick_s, ready_by=now + self.options.turn_s,
                ))  # fmt: skip
        finally:
            self._shutdown()
        self.summary.finished = time.monotonic()
        return self.summary

    def _settle(self, report: TurnReport) -> None:
        """The pools' report: outcomes into the write buffer, tasks no actor took handed back."""
        self._report = report
        self._take(report.outcomes)
        self._release([(t.task_id, t.attempt) for t in report.refused])

    # --- heartbeat: leases, reaper, pairs, state ------------------------------------------------

    def _heartbeat(self, now: float) -> None:
        self._next_heartbeat = now + self.settings.lease.heartbeat_s
        if not self.db_available:
            return
        try:
            self._renew_leases()
            self._reap()
            self._refresh_work(now)
            self._db_ok()
        except StoreUnavailable as exc:
            self._db_down(exc)
        self._publish_metrics()
        self._publish_database_health()
        self._publish_state()
        self.observer.heartbeat(self)

    def _renew_leases(self) -> None:
        """Everything in flight keeps its lease; so do finished but unwritten outcomes (a long
        database outage). A lease lost (cancelled or taken over) is dropped on the next turn: its
        outcome would be fenced out anyway."""
        leases = self._report.leases + [(o.task_id, o.attempt) for o in self._buffer]
        if leases:
            self._lost += self.store.renew(leases, self.owner, lease_s=self.settings.lease.lease_s)

    def _reap(self) -> None:
        """Expired leases of vanished holders back to their queue (not while we owe outcomes)."""
        reaped = [] if self._buffer else self.store.reap()
        for r in reaped:
            log.warning(
                "lease expired (holder vanished): %s", r.reason, extra=task_extra(r.task_id, r.attempt, Stage.LEASE)
            )
        self._count([(r, None) for r in reaped])

    def _refresh_work(self, now: float) -> None:
        """Which pairs have work (the pools follow them), how much is outstanding, the queue depth."""
        if self.options.pairs is None:
            self._pairs = self.store.claimable_pairs()
        self._outstanding = self.store.outstanding(self.options.pairs)
        if now >= self._next_depth:
            # Queue depth for the dashboard: a count per status, at most every few seconds.
            self._next_depth = now + max(5.0, self.settings.lease.heartbeat_s)
            for status, n in self.store.stats(top=0).counts.items():
                metrics.get().queue_depth.set(n, tags={"status": status.value})

    def _publish_metrics(self) -> None:
        m = metrics.get()
        m.in_flight.set(self.pools.in_flight)
        # By pool and where each computes: a GPU pool's actors on the CPU show as device "cpu".
        views = self._report.views
        live = collections.Counter((v.pool, v.device, v.compute_type) for v in views if v.state == "alive")
        metrics.set_live_actors({(label, "", ""): 0 for label in self._report.actor_starts} | live)
        for stage, b in self.breakers.items():
            m.breaker_open.set(1 if b.state is BreakerState.OPEN else 0, tags={"stage": stage.value})

    def _publish_state(self) -> None:
        if not self.db_available:
            return
        state = {
            "owner": self.owner,
            "actors": [asdict(a) for a in self._report.views],
            "breakers": self.breaker_states(),
            "breaker_trips": {s.value: b.trips for s, b in self.breakers.items()},
            "actor_starts": self._report.actor_starts,
            "in_flight": self._report.in_flight,
            "buffered": len(self._buffer),
        }
        try:
            self.store.publish_orchestrator(self.owner, state, ttl_s=3 * self.settings.lease.heartbeat_s)
        except StoreUnavailable as exc:
            self._db_down(exc)

    def _engine_spec(self, pair: PoolKey) -> EngineSpec:
        if pair not in self._specs:
            self._specs[pair] = EngineSpec.from_settings(self.settings.engine, *pair)
        return self._specs[pair]

    # --- claim, presign -------------------------------------------------------------------------

    def _fill(self, now: float) -> list[Claim]:
        """Claim what each pool's actors want and presign it, for this turn to hand over."""
        if not self.db_available or self._buffer:
            return []  # write what we owe before taking more
        if not self._breakers_allow():
            return []
        half_open = any(b.state is BreakerState.HALF_OPEN for b in self.breakers.values())
        if not half_open:
            self._probe = None
        elif self._probe is not None and self._probe in self._report.leases:
            return []  # one probe at a time: wait for its outcome
        claims: list[Claim] = []
        for key, want in self._report.wants.items():
            if want <= 0 or now < self._next_claim.get(key, 0.0):
                continue
            claim, go_on = self._fill_pool(key, 1 if half_open else want, now)  # a probe: one task
            if claim is not None:
                claims.append(claim)
            if half_open and claim is not None and claim.tasks:
                self._probe = (claim.tasks[0].task_id, claim.tasks[0].attempt)
                break  # one probe at a time
            if not go_on:
                break
        return claims

    def _fill_pool(self, key: PoolKey, want: int, now: float) -> tuple[Claim | None, bool]:
        """Claim what the pool's actors want and presign it; and whether to go on filling this turn."""
        try:
            claimed = self.store.claim(want, self.owner, lease_s=self.settings.lease.lease_s, pairs=[key])
            self._db_ok()
        except StoreUnavailable as exc:
            self._db_down(exc)
            return None, False
        if len(claimed) < want:
            self._next_claim[key] = now + self.options.idle_poll_s
        specs: list[TaskSpec] = []
        for n, task in enumerate(claimed):
            if not self._breakers_allow():
                # A breaker opened mid-batch (presign failing): hand the rest back uncharged.
                self._release([(t.id, t.attempt) for t in claimed[n:]])
                return Claim(key, want, len(claimed), specs), False
            spec = self._presign(key, task)
            if spec is not None:
                specs.append(spec)
        return Claim(key, want, len(claimed), specs), True

    def _breakers_allow(self) -> bool:
        return all(b.allows_dispatch() for b in self.breakers.values())

    def _presign(self, key: PoolKey, task: ClaimedTask) -> TaskSpec | None:
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
            engine=self._engine_spec(key),
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
        suspect = 0
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
                quality = outcome.result.quality if outcome and outcome.result else None
                suspect += bool(quality and quality.suspect)
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
        if suspect:
            self.summary.suspect += suspect
            m.suspect_transcripts.inc(suspect)

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
        if self._report.in_flight or self._buffer or not self.db_available:
            return False
        try:
            self._outstanding = self.store.outstanding(self.options.pairs)
            stuck = self._report.gave_up
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

    def _shutdown(self) -> None:
        """Write what finished, hand back every other lease (attempt closed as released, retries
        unchanged), stop the actors; in about a second, so that ``ray job stop`` (SIGKILL 3 s after
        SIGTERM) finds nothing owed and the next run starts on it at once."""
        # The tasks already rendering or uploading may land first: their work is done.
        lost, self._lost = self._lost, []
        landed = self.pools.land(FINISHING_WAIT_S, self.options.turn_s, lost=lost)
        self._take(landed.outcomes)
        leftovers = landed.leases
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
