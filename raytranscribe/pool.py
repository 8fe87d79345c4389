"""Actor pools: one per (engine, model); each owns its worker actors and every attempt in flight on them.

What the orchestrator sees (:class:`ActorPools`, every pool together):

- ``ensure(engine_spec)`` the pool for that (engine, model) (``pools`` holds them by that pair); a pool's
  ``capacity()`` how many more tasks its actors want now, its ``submit(task_spec)`` hands a task to an
  actor (False: none wants it);
  ``send()`` issues the Ray calls for what was submitted this turn: one ``take`` call per actor with
  all its tasks of the turn (an actor is refilled once a quarter of its slots is free, so a call
  carries many tasks);
- ``refs()`` what is worth waiting on: each live actor's ``results`` stream (one Ray streaming
  generator for the actor's life, a list of outcomes per item, sent as its tasks end) and the control
  calls; ``collect(ready)`` the :class:`Outcome` s that came back,
  ``tick(now)`` start-up, pings, deadlines, deaths, quarantines and the pool's size, returning the
  outcomes those produce (a failover or a deadline kill is just another outcome);
- ``abandon(lease)`` for an attempt whose lease was lost, ``views()`` for ``status``.

It never writes to the database. An actor dies by one path (:meth:`ActorPool._die`), which fails
its attempts over (keeping results that had already come back) and counts start-up failures.
Actor states: *pending* (Ray has not placed it: waiting for a GPU the autoscaler may be adding; never
a failure), *starting* (placed, its process starting), *loading* (it answers pings while its model
downloads into the node's cache and loads: bytes done of total), *alive*, *quarantined* (unreachable
for now: keeps its tasks, gets no new ones), *dead*. ``health.start_timeout_s`` bounds *starting*, and
*loading* only while it makes no progress: a download is hung when its bytes stop advancing that long,
and the engine load after it gets that long from the end of the download.

An ``s3://`` model reaches an actor as presigned URLs from ``model_source`` (the orchestrator binds
:meth:`S3Storage.model_for_actor`; this module imports no storage), called at each actor start.
"""

from __future__ import annotations

import enum
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from ray import ObjectRefGenerator
from ray.actor import ActorClass, ActorHandle
from ray.exceptions import ActorUnavailableError, RayActorError, RayError, RayTaskError

from raytranscribe.config import HealthSettings, Settings
from raytranscribe.contracts import Computing, LoadPhase, ModelLoadState, ModelManifest, Outcome, Release, TaskSpec
from raytranscribe.engines.base import EngineSpec
from raytranscribe.errors import (
    DispatchError,
    Failure,
    RayTranscribeError,
    Stage,
    TaskTimedOut,
    WorkerDied,
)
from raytranscribe.isolation import worker_runtime_env
from raytranscribe.logs import task_extra
from raytranscribe.worker import (
    PingReply,
    RunningTask,
    TranscriptionWorker,
    Waiting,
    WorkerConfig,
    worker_actor_class,
)

log = logging.getLogger(__name__)

Lease = tuple[int, int]  # (task id, attempt): the fencing token of one attempt
PoolKey = tuple[str, str]  # (engine, model)
# (engine, model) -> the presigned files of an s3:// model, None for any other; raises RayTranscribeError
ModelSource = Callable[[str, str], ModelManifest | None]

_CHECK_EVERY_S = 0.05  # start-ups and pings are read at most this often under load
_REFILL_FRACTION = 4  # an actor is refilled once this fraction of its slots is free (see _Actor.wants_refill)
_DEADLINES_EVERY_S = 0.5  # deadlines are seconds to minutes long: no need to judge every attempt each turn
_VERDICT_EVERY_S = 0.5  # how often Ray is asked what killed an actor whose suspects wait for the answer
_FINISHING = (Stage.RENDER, Stage.UPLOAD)  # a task past its transcript: moments from its outcome


class ActorState(str, enum.Enum):
    PENDING = "pending"  # not placed yet: no resources free (the autoscaler may be adding a node)
    STARTING = "starting"  # placed; its process starts; gets no work yet
    LOADING = "loading"  # answers pings while its model downloads and loads; gets no work yet
    ALIVE = "alive"
    QUARANTINED = "quarantined"  # unreachable for now: keeps its tasks, gets no new ones
    DRAINING = "draining"  # its node drains (preemption notice): finishes what it computes, gets nothing new
    DEAD = "dead"


class DeathKind(enum.Enum):
    """What Ray says killed an actor, which decides who pays for it."""

    PROCESS = "process"  # its process died (a crash, an OOM kill, a kill): the tasks it computed on pay
    NODE = "node"  # its node died or was preempted: nobody pays
    UNKNOWN = "unknown"  # not told yet (the connection broke first; Ray learns of a lost node in seconds)


_STARTING_UP = (ActorState.PENDING, ActorState.STARTING, ActorState.LOADING)
_SERVING = (ActorState.ALIVE, ActorState.QUARANTINED, ActorState.DRAINING)  # pinged, its deadlines judged


@dataclass(eq=False)
class Attempt:
    """One attempt of a task, from submit until its outcome is handed back."""

    spec: TaskSpec
    actor: _Actor
    dispatched_at: float
    sent: bool = False  # its take call has been issued
    abandoned: bool = False  # its lease is gone: it keeps its actor slot until it ends, its outcome is dropped

    @property
    def lease(self) -> Lease:
        return (self.spec.task_id, self.spec.attempt)


@dataclass(eq=False)
class _Actor:
    name: str
    handle: ActorHandle
    pool: ActorPool
    created_at: float
    state: ActorState = ActorState.PENDING
    placed_at: float | None = None
    ready_ref: ray.ObjectRef | None = None
    next_placement_check: float = 0.0
    warned_pending: bool = False
    # Start-up progress: when the (phase, bytes done) its pings report last changed (placement first),
    # and what it was; the start-up deadline counts from then, so only a stalled download is hung.
    progress_at: float = 0.0
    progress_mark: tuple[LoadPhase | None, int] | None = None  # None: the last pong said the model is in
    loading: ModelLoadState | None = None  # from its last pong while loading
    ping_ref: ray.ObjectRef | None = None
    ping_sent_at: float = 0.0
    last_pong: PingReply | None = None
    last_pong_at: float = 0.0
    running: dict[Lease, RunningTask] = field(default_factory=dict)  # from the last pong
    limit: int = 0  # tasks it is willing to hold: what it held at the last pong plus what it wanted
    quarantined_since: float | None = None
    attempts: dict[Lease, Attempt] = field(default_factory=dict)
    outbox: list[Attempt] = field(default_factory=list)  # submitted this turn, not yet sent
    results: ObjectRefGenerator | None = None  # its outcome stream, open while it is alive
    takes: dict[ray.ObjectRef, list[Attempt]] = field(default_factory=dict)  # take calls not yet answered
    idle_since: float | None = None
    consecutive_failures: int = 0  # transcriptions in a row that failed here (a sick GPU shows up so)
    death_cause: str | None = None
    # What its process computes on now (inside the engine), from the Computing notes on its results stream.
    computing: frozenset[Lease] = frozenset()

    @property
    def node_id(self) -> str | None:
        return self.last_pong.node_id if self.last_pong else None

    def free(self) -> int:
        return self.limit - len(self.attempts)

    def wants_refill(self) -> bool:
        """Free slots worth a call: a quarter of what it holds at most (one, for small limits), so one
        call carries many tasks while the actor still has plenty in hand."""
        return self.free() >= max(1, self.limit // _REFILL_FRACTION)


@dataclass(eq=False)
class _Verdict:
    """The suspects of an actor that vanished before Ray said whether its process or its node died:
    they stay in flight (leases renewed) until Ray tells, or ``health.death_verdict_s`` passes."""

    actor: _Actor
    attempts: list[Attempt]
    deadline: float
    next_check: float = 0.0


@dataclass(frozen=True)
class ActorView:
    name: str
    pool: str
    state: str
    node_id: str | None
    gpu_ids: tuple[str, ...]
    in_flight: int
    tasks_done: int
    pid: int | None = None
    stages: tuple[str, ...] = ()  # the stage of each task it reported running at its last pong
    loading: str = ""  # while loading: how far (``downloading 12.0 of 75.5 MB``)
    bytes_done: int = 0  # while loading: model bytes on the node so far, of bytes_total
    bytes_total: int = 0
    windows: tuple[tuple[int, int], ...] = ()  # per running task: windows decoded, of its total
    batch_size: int = 1  # slots per batch now (halved after a device out of memory); 1: sequential
    batches: int = 0  # batched model calls so far
    windows_decoded: int = 0  # windows those calls decoded: over batches, how full batches run
    buffered_audio_s: float = 0.0  # decoded audio the actor holds now
    device: str = ""  # where it computes once resolved: cuda or cpu ("" before its first pong)
    compute_type: str = ""  # float16, int8, ... ("" until its model is in)
    gpu_name: str = ""  # its reserved GPU's name, "" on the CPU


class _Ledger:
    """Every attempt in flight, by lease, and each actor by its outcome stream: the pools' shared
    index. Keeps the count of attempts whose lease is still ours."""

    def __init__(self) -> None:
        self.by_lease: dict[Lease, Attempt] = {}
        self.by_stream: dict[ObjectRefGenerator, _Actor] = {}
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


@dataclass(frozen=True)
class _Env:
    """What every pool needs to start actors."""

    settings: Settings
    owner_tag: str
    runtime_env: dict | None
    actor_cls: ActorClass
    ledger: _Ledger
    serial: list[int]  # actor numbers across pools: two pools may serve the same model name
    model_source: ModelSource | None = None


class ActorPool:
    """The actors serving one (engine, model) pair, between ``worker.min_actors`` and ``worker.max_actors``.

    It grows while claimed work keeps filling every live actor (so claimable work waits), one
    batch of new actors at a time, and shrinks toward ``min_actors`` after ``health.pool_idle_s``
    without such work. Pending actors are demand the Ray autoscaler sees and serves.
    """

    def __init__(self, spec: EngineSpec, env: _Env, now: float) -> None:
        self.spec = spec
        self._env = env
        self._h: HealthSettings = env.settings.health
        w = env.settings.worker
        self.min_actors, self.max_actors = w.min_actors, max(w.min_actors, w.max_actors)
        self.actors: list[_Actor] = []
        self.started = 0  # actors started over the pool's life
        self.start_failures = 0  # consecutive deaths before ever becoming ready
        self.next_start_at = 0.0
        self.gave_up: str | None = None  # why starting actors stopped
        # Whether the last claim came back full (work waits beyond what the actors hold; a pool
        # exists because its pair has work), and since when claims have come back short.
        self.work_waits = True
        self.short_since: float | None = None
        self.idle_since: float | None = None  # since when its pair had no work and it had nothing in flight
        self._verdicts: list[_Verdict] = []
        self._resize(now)

    @property
    def key(self) -> PoolKey:
        return (self.spec.engine, self.spec.model)

    @property
    def label(self) -> str:
        return f"{self.spec.engine}/{self.spec.model}"

    def alive(self) -> list[_Actor]:
        return [a for a in self.actors if a.state is ActorState.ALIVE]

    def in_flight(self) -> int:
        return sum(len(a.attempts) for a in self.actors) + sum(len(v.attempts) for v in self._verdicts)

    # --- what the orchestrator asks -------------------------------------------------------------

    def capacity(self) -> int:
        """How many more tasks the live actors want now (their own wish, as each last reported it),
        counting only actors with enough free slots to be worth a call."""
        return sum(a.free() for a in self.actors if a.state is ActorState.ALIVE and a.wants_refill())

    def submit(self, spec: TaskSpec, now: float | None = None) -> bool:
        """Take a claimed, presigned task; False when no live actor wants it (release it, uncharged)."""
        now = time.monotonic() if now is None else now
        best: _Actor | None = None
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

    # --- sending --------------------------------------------------------------------------------

    def _send(self, now: float) -> list[Outcome]:
        out: list[Outcome] = []
        for actor in list(self.actors):
            if not actor.outbox:
                continue
            batch, actor.outbox = actor.outbox, []
            try:
                # One call for everything the actor was given this turn; the outcomes come back on its
                # results stream, each as soon as its task ends.
                ref = actor.handle.take.remote([attempt.spec for attempt in batch])
            except RayActorError as exc:  # its attempts, sent or not, fail over with it
                out.extend(self._die(actor, death_cause(exc), now, error=exc))
                continue
            actor.takes[ref] = batch
            for attempt in batch:
                attempt.sent = True
            if log.isEnabledFor(logging.DEBUG):
                for attempt in batch:
                    log.debug("dispatched", extra=task_extra(*attempt.lease, Stage.DISPATCH, actor=actor.name))
        return out

    # --- results --------------------------------------------------------------------------------

    def _open_results(self, actor: _Actor) -> None:
        actor.results = actor.handle.results.remote()
        self._env.ledger.by_stream[actor.results] = actor

    def _close_results(self, actor: _Actor) -> None:
        if actor.results is not None:
            self._env.ledger.by_stream.pop(actor.results, None)
            actor.results = None

    def _received(
        self, actor: _Actor, value: list[Outcome | Computing] | BaseException, now: float
    ) -> list[Outcome]:
        """One item of an actor's results stream: outcomes of some of its attempts and notes of what
        it computes on, or what ended it."""
        if isinstance(value, BaseException):
            if isinstance(value, RayActorError) and not isinstance(value, ActorUnavailableError):
                return self._die(actor, death_cause(value), now, error=value)  # every attempt it held fails over
            # Unreachable for now, or the stream itself broke: what it holds may never come back.
            return self._die(actor, f"its results stream failed: {death_cause(value)}", now, error=value)
        ledger = self._env.ledger
        out: list[Outcome] = []
        for outcome in value:
            if isinstance(outcome, Computing):
                actor.computing = outcome.leases
                continue
            attempt = actor.attempts.get((outcome.task_id, outcome.attempt))
            if attempt is None:  # failed over already (a late result of a quarantined actor)
                continue
            ledger.remove(attempt, now)
            if attempt.abandoned:
                continue  # its lease went elsewhere; its slot frees up now
            out.append(outcome)
            out.extend(self._observe(actor, outcome, now))
        return out

    def _check_takes(self, actor: _Actor, now: float, ready: set[ray.ObjectRef]) -> list[Outcome]:
        """A take call that failed: its tasks never reached the actor (or their fate is unknown)."""
        out: list[Outcome] = []
        for ref in [r for r in actor.takes if r in ready]:
            batch = actor.takes.pop(ref)
            try:
                ray.get(ref)
                continue
            except ActorUnavailableError as exc:
                # The actor may come back (a network blip), but these tasks' fate is unknown: run them
                # elsewhere, uncharged (the call that carried them failed, not they), and keep the actor
                # out of rotation until it answers a ping.
                self._quarantine(actor, f"call failed: {death_cause(exc)}", now)
                message = f"actor {actor.name} became unreachable as the task was handed to it: {death_cause(exc)}"
                outcome: dict[str, Failure | Release] = {"release": Release(Stage.DISPATCH, message)}
            except RayActorError as exc:
                return out + self._die(actor, death_cause(exc), now, error=exc)
            except RayError as exc:  # take itself raised: the actor is broken for these tasks
                failure = Failure(Stage.DISPATCH, type(exc).__name__, str(exc).splitlines()[0][:500], True)
                outcome = {"failure": failure}
            for attempt in batch:
                if actor.attempts.get(attempt.lease) is not attempt:
                    continue
                self._env.ledger.remove(attempt, now)
                if not attempt.abandoned:
                    out.append(Outcome(*attempt.lease, actor=actor.name, **outcome))  # type: ignore[arg-type]
        return out

    def _observe(self, actor: _Actor, outcome: Outcome, now: float) -> list[Outcome]:
        """An actor whose transcriptions keep failing (a sick GPU) is replaced, not fed more work."""
        f = outcome.failure
        if f is None or f.stage is not Stage.TRANSCRIBE:
            actor.consecutive_failures = 0
            return []
        actor.consecutive_failures += 1
        if actor.consecutive_failures < self._h.max_consecutive_failures or actor.state is ActorState.DEAD:
            return []
        cause = f"{actor.consecutive_failures} transcriptions in a row failed on this actor (last: {f.message})"
        log.error("replacing actor %s: %s", actor.name, cause, extra={"actor": actor.name})
        return self._die(actor, cause, now, deliberate=True)  # the actor is sick, not the tasks it holds

    # --- the tick -------------------------------------------------------------------------------

    def _tick(self, now: float, ready: set[ray.ObjectRef], deadlines: bool) -> list[Outcome]:
        out: list[Outcome] = []
        for actor in list(self.actors):
            if actor.state in _STARTING_UP:
                out.extend(self._check_start(actor, now, ready))
            if actor.takes and actor.state is not ActorState.DEAD:
                out.extend(self._check_takes(actor, now, ready))
            if actor.state in _SERVING:
                out.extend(self._check_ping(actor, now, ready))
            if deadlines and actor.state in _SERVING:
                out.extend(self._check_deadlines(actor, now))
            if actor.state is ActorState.DRAINING and not actor.attempts:
                out.extend(self._die(actor, "its node drains; its work is done or moved", now, deliberate=True))
        if self._verdicts:
            out.extend(self._judge(now))
        return out

    def _check_start(self, actor: _Actor, now: float, ready: set[ray.ObjectRef]) -> list[Outcome]:
        h = self._h
        if actor.ready_ref is not None and actor.ready_ref in ready:
            try:
                pong = ray.get(actor.ready_ref)
            except RayError as exc:  # the model did not load, the constructor raised, or its node died
                return self._die(actor, death_cause(exc), now, error=exc)
            actor.ready_ref = None
            # A ping still in flight from the loading phase would report wanting nothing: ready's reply is newer.
            actor.ping_ref = None
            actor.state, actor.idle_since, actor.loading = ActorState.ALIVE, now, None
            self._pong(actor, pong, now)
            self._open_results(actor)
            self.start_failures = 0
            log.info(
                "actor %s alive on node %s gpus %s (pid %d)",
                actor.name,
                pong.node_id[:12],
                ",".join(pong.gpu_ids) or "-",
                pong.pid,
                extra={"actor": actor.name, "node": pong.node_id[:12]},
            )
            return []
        if actor.ping_ref is not None and actor.ping_ref in ready:
            ref, actor.ping_ref = actor.ping_ref, None
            try:
                self._loading_pong(actor, ray.get(ref), now)
            except ActorUnavailableError:
                pass  # a blip: the start-up deadline judges it
            except RayActorError as exc:
                return self._die(actor, death_cause(exc), now)
            except RayError:
                pass  # the ping itself failed: no progress seen, so the start-up deadline judges it
        if now >= actor.next_placement_check:
            actor.next_placement_check = now + h.ping_interval_s
            placed = _placed(actor.handle)
            if placed is True and actor.state is ActorState.PENDING:
                actor.state, actor.placed_at, actor.progress_at = ActorState.STARTING, now, now
            elif placed is False and actor.state is ActorState.STARTING:
                actor.state, actor.placed_at = ActorState.PENDING, None  # its node went away; Ray places it again
        if actor.ping_ref is None and now - actor.ping_sent_at >= h.ping_interval_s:
            # Answered as soon as its process runs (the model loads on a thread of its own): how far it is.
            try:
                actor.ping_ref, actor.ping_sent_at = actor.handle.ping.remote(), now
            except RayActorError as exc:
                return self._die(actor, death_cause(exc), now)
        if actor.state in (ActorState.STARTING, ActorState.LOADING) and actor.placed_at is not None:
            if now - actor.progress_at > h.start_timeout_s:
                return self._die(actor, self._start_stalled(actor), now)
        elif not actor.warned_pending and now - actor.created_at > h.start_timeout_s:
            # Waiting for resources is not a failure (a node may be on its way), but say so once.
            actor.warned_pending = True
            log.warning(
                "actor %s still waits for resources after %.0fs (%s GPU, %s CPU): the cluster has none free; "
                "it starts when a node with room joins",
                actor.name,
                now - actor.created_at,
                self._env.settings.worker.num_gpus,
                self._env.settings.worker.num_cpus,
                extra={"actor": actor.name},
            )
        return []

    def _loading_pong(self, actor: _Actor, pong: PingReply, now: float) -> None:
        """A ping answered during start-up: the actor runs and loads its model. Progress is a change
        in (phase, bytes done); the start-up deadline counts from the last one."""
        actor.last_pong, actor.last_pong_at = pong, now  # node, GPUs and pid for status
        state = pong.loading
        mark = (state.phase, state.bytes_done) if state is not None else None
        if actor.state is not ActorState.LOADING:
            if actor.placed_at is None:  # answering proves it was placed (the actor table may lag)
                actor.placed_at = now
            actor.state, actor.progress_mark, actor.progress_at = ActorState.LOADING, mark, now
            log.info(
                "actor %s loading its model on node %s", actor.name, pong.node_id[:12],
                extra={"actor": actor.name, "node": pong.node_id[:12], "stage": Stage.MODEL_LOAD.value},
            )  # fmt: skip
        elif mark != actor.progress_mark:
            actor.progress_mark, actor.progress_at = mark, now
        actor.loading = state

    def _start_stalled(self, actor: _Actor) -> str:
        t = self._h.start_timeout_s
        state = actor.loading
        if actor.state is ActorState.STARTING:
            return f"placed but not started within {t:.0f}s (its process or constructor hangs)"
        if state is not None and state.phase in (LoadPhase.WAITING, LoadPhase.DOWNLOADING, LoadPhase.VERIFYING):
            return (
                f"model download made no progress for {t:.0f}s ({state.phase.value}, "
                f"{state.bytes_done / 1e6:.1f} of {state.total_bytes / 1e6:.1f} MB): presumed hung"
            )
        after = " after its download" if state is not None and state.phase is LoadPhase.READY else ""
        return f"model not loaded within {t:.0f}s{after} (the model load hangs)"

    def _pong(self, actor: _Actor, pong: PingReply, now: float) -> None:
        actor.last_pong, actor.last_pong_at = pong, now
        actor.running = {(r.task_id, r.attempt): r for r in pong.running}
        # The actor's own wish (memory and threads), never past what the driver keeps in flight per actor.
        prefetch = self._env.settings.worker.prefetch
        actor.limit = min(prefetch, len(pong.running) + pong.wants)

    def _check_ping(self, actor: _Actor, now: float, ready: set[ray.ObjectRef]) -> list[Outcome]:
        h = self._h
        if (
            actor.state is ActorState.QUARANTINED
            and actor.quarantined_since is not None
            and now - actor.quarantined_since > h.quarantine_timeout_s
        ):
            cause = f"unreachable for {h.quarantine_timeout_s:.0f}s (quarantined, never answered again)"
            return self._die(actor, cause, now)
        if actor.ping_ref is not None:
            if actor.ping_ref in ready:
                try:
                    self._pong(actor, ray.get(actor.ping_ref), now)
                    if actor.state is ActorState.QUARANTINED:
                        log.info("actor %s answers again; back in service", actor.name, extra={"actor": actor.name})
                        actor.state, actor.quarantined_since = ActorState.ALIVE, None
                except ActorUnavailableError as exc:
                    self._quarantine(actor, f"unavailable: {death_cause(exc)}", now)
                except RayActorError as exc:
                    return self._die(actor, death_cause(exc), now, error=exc)
                actor.ping_ref = None
            elif now - actor.ping_sent_at > h.ping_timeout_s:
                actor.ping_ref = None
                if _ray_actor_state(actor.handle) == "DEAD":
                    return self._die(actor, "Ray reports the actor DEAD (no reply to ping)", now)
                self._quarantine(actor, f"no reply to ping within {h.ping_timeout_s:.0f}s", now)
        if actor.ping_ref is None and now - actor.ping_sent_at >= h.ping_interval_s:
            try:
                actor.ping_ref = actor.handle.ping.remote()
                actor.ping_sent_at = now
            except RayActorError as exc:
                return self._die(actor, death_cause(exc), now, error=exc)
        return []

    def _quarantine(self, actor: _Actor, why: str, now: float) -> None:
        """No new work for this actor until a ping answers (or it is declared dead). A draining actor
        gets none anyway, and stays draining (its node's death ends it)."""
        if actor.state in (ActorState.DEAD, ActorState.DRAINING):
            return
        if actor.state is not ActorState.QUARANTINED:
            log.warning("actor %s quarantined: %s", actor.name, why, extra={"actor": actor.name})
            actor.quarantined_since = now
        actor.state = ActorState.QUARANTINED

    def overdue(self, attempt: Attempt, now: float) -> float | None:
        """The deadline an attempt has run past, or None.

        A task the worker reports as working is judged by its time in the current stage, which for a
        task in the batcher counts from the batcher's last progress (windows decoded), not from when
        it joined the queue; transcription gets ``base + per_audio_s x duration``. A task waiting
        for the compute lock is not judged (the one in front is). A task the worker does not report
        (still in Ray's queue, or the actor stopped answering) is judged from dispatch, with room
        for the tasks ahead of it.
        """
        actor = attempt.actor
        run = actor.running.get(attempt.lease)
        base, per_audio = self._h.task_deadline_base_s, self._h.task_deadline_per_audio_s
        if run is not None:
            if run.stage is Waiting.QUEUED:
                return None
            deadline = base + per_audio * (run.audio_duration_s or 0.0)
            elapsed = run.stage_s + (now - actor.last_pong_at)
        else:
            deadline = base * (max(actor.limit, self._env.settings.worker.prefetch) + 1)
            elapsed = now - attempt.dispatched_at
        return deadline if elapsed > deadline else None

    def _check_deadlines(self, actor: _Actor, now: float) -> list[Outcome]:
        for attempt in actor.attempts.values():
            deadline = self.overdue(attempt, now)
            if deadline is None:
                continue
            run = actor.running.get(attempt.lease)
            where = f" (stage {run.stage})" if run is not None else " (never reported running)"
            cause = (
                f"task {attempt.spec.task_id} ran past its deadline of {deadline:.0f}s on actor {actor.name}{where}; "
                "the actor was presumed hung and killed"
            )
            log.error(cause, extra=task_extra(*attempt.lease, Stage.TIMEOUT, actor=actor.name))
            return self._die(actor, cause, now, hung=attempt, kind=DeathKind.PROCESS)
        return []

    # --- the one way an actor dies ---------------------------------------------------------------

    def _die(self, actor: _Actor, cause: str, now: float, *, hung: Attempt | None = None,
             deliberate: bool = False, error: BaseException | None = None,
             kind: DeathKind | None = None) -> list[Outcome]:
        """Kill (to be sure: an unreachable actor must not keep its GPU as a zombie), count a start-up
        failure if it never became ready, and hand back every attempt it held (:meth:`_failover`).
        ``deliberate``: the pool stops it (shrinking, retiring, draining, replacing a sick actor), so
        none of its tasks is to blame. ``error``: what Ray raised, which may tell a node's death
        from a process's; ``kind``: what the caller already knows of it."""
        if actor.state is ActorState.DEAD:
            return []
        was_starting = actor.state in _STARTING_UP
        actor.state, actor.death_cause = ActorState.DEAD, cause
        try:
            ray.kill(actor.handle, no_restart=True)
        except Exception:  # already gone
            pass
        if actor in self.actors:
            self.actors.remove(actor)
        extra = {"actor": actor.name, "node": (actor.node_id or "")[:12]}
        if deliberate:
            log.info("actor %s stopped: %s", actor.name, cause, extra=extra)
        elif was_starting:
            self.start_failures += 1
            delay = self._h.replace_backoff_s * 2 ** (self.start_failures - 1)
            self.next_start_at = now + delay
            if self.start_failures >= self._h.max_start_failures:
                self.gave_up = (
                    f"{self.start_failures} actors for {self.label} died during start-up; last cause: {cause}"
                )
                log.error("giving up on starting actors: %s", self.gave_up, extra=extra)
            else:
                log.warning(
                    "actor %s died during start-up (%s); retrying in %.1fs", actor.name, cause, delay, extra=extra
                )
        else:
            log.error("actor %s died: %s", actor.name, cause, extra=extra)
            if self.start_failures == 0:
                self.next_start_at = now + self._h.replace_backoff_s
        return self._failover(actor, hung, now, deliberate=deliberate, error=error, kind=kind)

    def _failover(self, actor: _Actor, hung: Attempt | None, now: float, *, deliberate: bool,
                  error: BaseException | None, kind: DeathKind | None) -> list[Outcome]:
        """Every attempt the dead actor held, judged by what it was doing. An outcome that came back
        before the death stands; the hung attempt of a deadline kill is a timeout. Of the rest, only
        the suspects pay (:meth:`_suspects`: what the process computed on), and only for a process's
        death: after a node's, nobody does, and while Ray has not said which, the suspects wait
        (:meth:`_judge`). Everything else goes back to pending uncharged."""
        ledger = self._env.ledger
        actor.outbox.clear()
        attempts = list(actor.attempts.values())
        finished: dict[Lease, Outcome] = {}
        if actor.results is not None:
            for value in _drain(actor.results):  # outcomes and notes that reached us before it died
                if isinstance(value, BaseException):
                    break  # the stream died with the actor: the rest fail over
                for item in value:
                    if isinstance(item, Computing):
                        actor.computing = item.leases
                    else:
                        finished[(item.task_id, item.attempt)] = item
            self._close_results(actor)
        actor.takes.clear()
        suspects = set() if deliberate else self._suspects(actor, attempts)
        if suspects and kind is None:
            kind = _death_kind(actor, error)
        node = f" on node {actor.node_id[:12]}" if actor.node_id else ""
        out: list[Outcome] = []
        waiting: list[Attempt] = []
        for attempt in attempts:
            kept = finished.get(attempt.lease)
            if attempt.lease in suspects and kept is None and attempt is not hung and not attempt.abandoned:
                if kind is DeathKind.UNKNOWN:
                    waiting.append(attempt)  # stays in flight, its lease renewed, until Ray says
                    continue
                ledger.remove(attempt, now)
                out.append(self._crash_outcome(actor, attempt, kind is DeathKind.NODE))
                continue
            ledger.remove(attempt, now)
            if attempt.abandoned:
                continue  # its lease is gone already: nothing to record
            if kept is not None:  # it finished before its actor died: keep the real outcome
                out.append(kept)
            elif attempt is hung:
                failure = Failure.from_exception(TaskTimedOut(actor.death_cause or "deadline"))
                out.append(Outcome(*attempt.lease, failure=failure, actor=actor.name, node_id=actor.node_id))
            else:
                run = actor.running.get(attempt.lease)
                doing = f"the task was {run.stage}" if run is not None else "the task had not started"
                release = Release(Stage.WORKER_DEATH, f"actor {actor.name}{node} died ({actor.death_cause}) "
                                                      f"while {doing}: not its doing, not charged")
                out.append(Outcome(*attempt.lease, release=release, actor=actor.name, node_id=actor.node_id))
        if waiting:
            log.warning(
                "actor %s vanished while computing %d task(s); waiting for Ray to say whether its node died",
                actor.name, len(waiting), extra={"actor": actor.name},
            )  # fmt: skip
            deadline = now + self._h.death_verdict_s
            self._verdicts.append(_Verdict(actor, waiting, deadline, now + _VERDICT_EVERY_S))
        return out

    def _suspects(self, actor: _Actor, attempts: list[Attempt]) -> set[Lease]:
        """The attempts that could have killed the process: those it computed on, as its last
        Computing note said (a task entering the engine waits until its note has left, so a crash
        inside finds the driver told). A task that runs alone has crashed a worker before: if one
        was computing, it alone is suspected, not the neighbours preparing meanwhile."""
        computing = actor.computing & {a.lease for a in attempts}
        alone = {a.lease for a in attempts if a.spec.alone} & computing
        return alone or computing

    def _crash_outcome(self, actor: _Actor, attempt: Attempt, node_died: bool) -> Outcome:
        where = f" on node {actor.node_id[:12]}" if actor.node_id else ""
        if node_died:
            release = Release(Stage.WORKER_DEATH, f"the node of actor {actor.name}{where[3:]} died "
                                                  f"({actor.death_cause}): not the task's doing, not charged")
            return Outcome(*attempt.lease, release=release, actor=actor.name, node_id=actor.node_id)
        message = f"actor {actor.name}{where} died while computing the task: {actor.death_cause}"
        log.warning("charged for a worker crash: %s", message,
                    extra=task_extra(*attempt.lease, Stage.WORKER_DEATH, actor=actor.name))  # fmt: skip
        failure = Failure.from_exception(WorkerDied(message))
        return Outcome(*attempt.lease, failure=failure, actor=actor.name, node_id=actor.node_id)

    def _judge(self, now: float) -> list[Outcome]:
        """Suspects waiting for Ray's word: released once it says the node died, charged once it says
        the process did, or once ``health.death_verdict_s`` passes without a word (a lost node is
        known within seconds, so silence means the process)."""
        out: list[Outcome] = []
        for v in list(self._verdicts):
            if now < v.next_check:
                continue
            v.next_check = now + _VERDICT_EVERY_S
            kind = _death_kind(v.actor, None)
            if kind is DeathKind.UNKNOWN and now < v.deadline:
                continue
            self._verdicts.remove(v)
            for attempt in v.attempts:
                self._env.ledger.remove(attempt, now)
                if not attempt.abandoned:
                    out.append(self._crash_outcome(v.actor, attempt, kind is DeathKind.NODE))
        return out

    # --- draining nodes -------------------------------------------------------------------------

    def _drain(self, draining: set[str], now: float) -> list[Outcome]:
        """Actors on nodes Ray drains (``ray drain-node``, a spot interruption notice) take no more
        work; what they hold and have not started goes to other actors, uncharged; what they
        compute on (and what is past its transcript) finishes; then they stop."""
        out: list[Outcome] = []
        for actor in list(self.actors):
            node = actor.node_id
            if node is None or node not in draining:
                continue
            if actor.state in _STARTING_UP:
                out.extend(self._die(actor, f"its node {node[:12]} drains", now, deliberate=True))
                continue
            if actor.state in (ActorState.ALIVE, ActorState.QUARANTINED):
                actor.state = ActorState.DRAINING
                log.warning("actor %s: its node %s drains; moving its waiting tasks to other actors",
                            actor.name, node[:12], extra={"actor": actor.name, "node": node[:12]})  # fmt: skip
                out.extend(self._withdraw(actor, now))
        return out

    def _withdraw(self, actor: _Actor, now: float) -> list[Outcome]:
        node = (actor.node_id or "")[:12]
        keep = set(actor.computing)
        for lease, run in actor.running.items():
            if run.stage in _FINISHING or run.windows_done > 0:
                keep.add(lease)
        out: list[Outcome] = []
        sent: list[Lease] = []
        for attempt in list(actor.attempts.values()):
            if attempt.lease in keep:
                continue
            if attempt in actor.outbox:
                actor.outbox.remove(attempt)
            elif attempt.sent:
                sent.append(attempt.lease)
            self._env.ledger.remove(attempt, now)
            if not attempt.abandoned:
                release = Release(Stage.DISPATCH, f"node {node} drains: moved off actor {actor.name}, not charged")
                out.append(Outcome(*attempt.lease, release=release, actor=actor.name, node_id=actor.node_id))
        if sent:
            try:  # spare it the work; their outcomes are dropped anyway (no longer in flight)
                actor.handle.withdraw.remote(sent)
            except RayActorError:
                pass
        return out

    # --- size -----------------------------------------------------------------------------------

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
        options["runtime_env"] = worker_runtime_env(self._env.runtime_env)
        config = WorkerConfig(
            name=name,
            engine=self.spec,
            transfer=s.transfer,
            log_level=s.log_level,
            worker=s.worker,
            batch_wait_ms=s.engine.batch_wait_ms,
            model=model,
            model_cache_dir=s.engine.model_cache_dir,
        )
        handle = env.actor_cls.options(**options).remote(config)
        actor = _Actor(name=name, handle=handle, pool=self, created_at=now, idle_since=now)
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

    def _resize(self, now: float) -> list[Outcome]:
        # A draining actor's node is going: its replacement starts now, elsewhere.
        live = [a for a in self.actors if a.state not in (ActorState.DEAD, ActorState.DRAINING)]
        waiting = [a for a in live if a.state in _STARTING_UP]
        if not self.gave_up and now >= self.next_start_at:
            want = self.min_actors
            if self.work_waits and len(waiting) < max(1, len(self.alive())):
                # Claims keep coming back full (the live actors took all they wanted and work still
                # waits): one more actor per tick while fewer wait than live, so the pool doubles
                # (1, 2, 4, ...) as fast as the cluster places them, never past max_actors.
                want = max(want, len(live) + 1)
            for _ in range(min(want, self.max_actors) - len(live)):
                self._start_actor(now)
        if self.work_waits or self.short_since is None or now - self.short_since < self._h.pool_idle_s:
            return []
        # Claims have come back short for a while: give GPUs back down to min_actors, waiting ones first.
        out: list[Outcome] = []
        surplus = len(live) - self.min_actors
        for a in sorted(live, key=lambda a: a.state is ActorState.ALIVE):
            if surplus <= 0:
                break
            idle = not a.attempts and a.idle_since is not None and now - a.idle_since >= self._h.pool_idle_s
            if a.state in _STARTING_UP or idle:
                out.extend(self._die(a, "pool shrank: no work waiting for it", now, deliberate=True))
                surplus -= 1
        return out


class ActorPools:
    """Every pool of this orchestrator, and the index of every attempt in flight on them."""

    def __init__(
        self,
        settings: Settings,
        owner_tag: str,
        *,
        runtime_env: dict | None = None,
        model_source: ModelSource | None = None,
        worker: type[TranscriptionWorker] = TranscriptionWorker,
    ) -> None:
        """``worker``: the actor class its pools start, TranscriptionWorker or a subclass of it."""
        self.settings = settings
        self.pools: dict[PoolKey, ActorPool] = {}
        self._ledger = _Ledger()
        self._env = _Env(
            settings=settings,
            owner_tag=owner_tag,
            runtime_env=runtime_env,
            actor_cls=worker_actor_class(worker),
            ledger=self._ledger,
            serial=[0],
            model_source=model_source,
        )
        self._pending: list[Outcome] = []  # produced while sending; handed back on the next collect
        self._control_ready = False
        self._next_check = 0.0
        self._next_deadlines = 0.0
        self._next_drain_check = 0.0

    # --- pools ----------------------------------------------------------------------------------

    def ensure(self, spec: EngineSpec) -> ActorPool:
        key = (spec.engine, spec.model)
        if key not in self.pools:
            self.pools[key] = ActorPool(spec, self._env, time.monotonic())
        return self.pools[key]

    # --- attempts -------------------------------------------------------------------------------

    def send(self) -> None:
        now = time.monotonic()
        for pool in self.pools.values():
            self._pending.extend(pool._send(now))

    def refs(self) -> list[ray.ObjectRef | ObjectRefGenerator]:
        """What is worth waiting on: every live actor's results stream, and the start-up and ping calls
        (take calls answer at once and are checked by the tick, not waited on)."""
        refs: list[ray.ObjectRef | ObjectRefGenerator] = list(self._ledger.by_stream)
        for pool in self.pools.values():
            for a in pool.actors:
                if a.ready_ref is not None:
                    refs.append(a.ready_ref)
                if a.ping_ref is not None:
                    refs.append(a.ping_ref)
        return refs

    def collect(self, ready: list[ray.ObjectRef | ObjectRefGenerator]) -> list[Outcome]:
        """The outcomes that came back on the results streams among ``ready`` (control refs are left
        for the tick)."""
        out, self._pending = self._pending, []
        actors = [self._ledger.by_stream[r] for r in ready if r in self._ledger.by_stream]
        if len(actors) < len(ready):
            self._control_ready = True
        now = time.monotonic()
        for actor in actors:
            stream = actor.results
            if stream is None:
                continue  # it died earlier in this loop, and its attempts failed over with it
            items = _drain(stream)
            if not items and stream.is_finished():  # a results stream never ends while its actor lives
                items = [DispatchError(f"actor {actor.name} closed its results stream")]
            for value in items:
                out.extend(actor.pool._received(actor, value, now))
        return out

    def tick(self, now: float | None = None) -> list[Outcome]:
        """Start-up, pings, deadlines, deaths, quarantines and sizes; the outcomes they produce."""
        now = time.monotonic() if now is None else now
        out, self._pending = self._pending, []
        if not self._control_ready and now < self._next_check:
            return out
        self._control_ready, self._next_check = False, now + _CHECK_EVERY_S
        control = [
            r
            for p in self.pools.values()
            for a in p.actors
            for r in (a.ready_ref, a.ping_ref, *a.takes)
            if r is not None
        ]
        ready: set[ray.ObjectRef] = set()
        if control:
            done, _ = ray.wait(control, num_returns=len(control), timeout=0)
            ready = set(done)
        deadlines = now >= self._next_deadlines
        if deadlines:
            self._next_deadlines = now + _DEADLINES_EVERY_S
        if now >= self._next_drain_check and any(p.actors for p in self.pools.values()):
            self._next_drain_check = now + self.settings.health.drain_check_s
            draining = _draining_nodes()
            if draining:
                for pool in self.pools.values():
                    out.extend(pool._drain(draining, now))
        for pool in self.pools.values():
            out.extend(pool._tick(now, ready, deadlines))
            out.extend(pool._resize(now))
        return out

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

    def leases(self) -> list[Lease]:
        """The leases of every attempt in flight (abandoned ones excluded)."""
        return [lease for lease, a in self._ledger.by_lease.items() if not a.abandoned]

    def finishing(self) -> set[Lease]:
        """Attempts past their transcript (rendering or uploading, as their actors last said): a
        stopping driver waits a moment for these rather than hand them back."""
        return {
            lease
            for p in self.pools.values()
            for a in p.actors
            for lease, run in a.running.items()
            if run.stage in _FINISHING and lease in a.attempts and not a.attempts[lease].abandoned
        }

    def holds(self, lease: Lease) -> bool:
        a = self._ledger.by_lease.get(lease)
        return a is not None and not a.abandoned

    @property
    def in_flight(self) -> int:
        return self._ledger.live

    # --- what status and the loop read ---------------------------------------------------------

    def views(self) -> list[ActorView]:
        return [
            ActorView(
                name=a.name,
                pool=p.label,
                state=a.state.value,
                node_id=a.node_id,
                gpu_ids=a.last_pong.gpu_ids if a.last_pong else (),
                in_flight=len(a.attempts),
                tasks_done=a.last_pong.tasks_done if a.last_pong else 0,
                pid=a.last_pong.pid if a.last_pong else None,
                stages=tuple(r.stage for r in a.last_pong.running) if a.last_pong else (),
                loading=a.loading.describe() if a.state is ActorState.LOADING and a.loading else "",
                bytes_done=a.loading.bytes_done if a.state is ActorState.LOADING and a.loading else 0,
                bytes_total=a.loading.total_bytes if a.state is ActorState.LOADING and a.loading else 0,
                **_batching_view(a.last_pong),
                **_device_view(a.last_pong),
            )
            for p in list(self.pools.values())
            for a in list(p.actors)
            if a.state is not ActorState.DEAD
        ]

    def actor_starts(self) -> dict[str, int]:
        """Actors each pool has started over its life: more than its size means replacements."""
        return {p.label: p.started for p in list(self.pools.values())}

    def live_count(self) -> int:
        return sum(len(p.alive()) for p in self.pools.values())

    def gave_up(self) -> dict[PoolKey, str]:
        """Pools that stopped starting actors and have none left: why, by (engine, model)."""
        return {k: p.gave_up for k, p in self.pools.items() if p.gave_up and not p.actors}

    def serviceable(self) -> bool:
        """False once every pool has given up and none has an actor left."""
        return not self.pools or len(self.gave_up()) < len(self.pools)

    def retire_idle(self, wanted: set[PoolKey], now: float) -> list[PoolKey]:
        """Stop the pools whose pair has no work left once they have had nothing in flight for
        ``health.pool_idle_s``, freeing their GPUs for the pools that still have work."""
        retired = []
        idle_s = self.settings.health.pool_idle_s
        for key, pool in list(self.pools.items()):
            if key in wanted or pool.in_flight():
                pool.idle_since = None
                continue
            if pool.idle_since is None:
                pool.idle_since = now
            elif now - pool.idle_since >= idle_s:
                for actor in list(pool.actors):
                    self._pending.extend(pool._die(actor, "pool retired: no work left for its engine and model", now,
                                                   deliberate=True))
                del self.pools[key]
                retired.append(key)
                log.info("retired the idle pool for %s/%s, freeing its GPUs", *key)
        return retired

    def shutdown(self) -> None:
        now = time.monotonic()
        for pool in self.pools.values():
            for actor in list(pool.actors):
                pool._die(actor, "orchestrator stopped", now, deliberate=True)


def _drain(stream: ObjectRefGenerator) -> list[list[Outcome] | BaseException]:
    """Every item of a results stream that has arrived: a list of outcomes each, or (last) the error
    that ended the stream."""
    items: list[list[Outcome] | BaseException] = []
    try:
        while stream.next_ready():
            try:
                items.append(ray.get(next(stream)))
            except RayError as exc:
                items.append(exc)
                break
    except StopIteration:  # raced with its end
        pass
    return items


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)[\w]*): (.*)$")


def death_cause(exc: BaseException) -> str:
    """One readable line from Ray's death report: for a constructor that raised, the exception it
    raised (``ModelLoadError: model path ... does not exist``), else Ray's first sentence."""
    if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        # ready() re-raised the model's load error (the actor itself is still up)
        cause = exc.cause
        first = (str(cause).strip().splitlines() or [""])[0]
        return f"start-up failed: {type(cause).__name__}: {first}"[:500]
    lines = [_ANSI.sub("", line).rstrip() for line in str(exc).strip().splitlines()]
    if lines and "creation task" in lines[0]:
        for line in reversed(lines):
            m = _EXC_LINE.match(line.strip())
            if m:
                return f"start-up failed: {m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"[:500]
    # Ray's own sentence for why (its process died, its node died, ray.kill), not its generic first line.
    because = next((line.strip().split(" Some common causes")[0] for line in lines if line.strip().startswith(_BECAUSE)),
                   None)  # fmt: skip
    first = because or (lines[0] if lines else "")
    return first[:500] or type(exc).__name__


_BECAUSE = ("The actor is dead because", "The actor died because")


def _actor_entry(handle: ActorHandle) -> dict | None:
    """The GCS actor table's entry (no dashboard needed, unlike ``ray.util.state``)."""
    try:
        from ray._private.state import state as gcs

        return gcs.actor_table(handle._actor_id.hex()) or None
    except Exception:  # best-effort: without it an actor simply stays "pending" until ready
        return None


def _placed(handle: ActorHandle) -> bool | None:
    """Whether Ray has placed the actor on a node (a worker process exists, the constructor runs),
    False while it waits for resources, None when unknown."""
    entry = _actor_entry(handle)
    if entry is None:
        return None
    if entry.get("State") in ("PENDING_CREATION", "DEPENDENCIES_UNREADY", "RESTARTING"):
        return bool(entry.get("Pid"))
    return True


def _ray_actor_state(handle: ActorHandle) -> str | None:
    entry = _actor_entry(handle)
    return entry.get("State") if entry else None


def _death_kind(actor: _Actor, error: BaseException | None) -> DeathKind:
    """Whether Ray says the actor's node died (nobody pays) or its process did (its suspects pay).

    Ray's error says so when the GCS already knew (a SIGKILL, a crash: the raylet reports the
    process at once). A lost node breaks the connection first (ActorUnavailableError) and is known
    only when the GCS misses its heartbeats; then the actor's table entry says "its node has died".
    Our own ray.kill marks the actor dead too, so a death cause naming neither leaves the node's
    own state to decide, and UNKNOWN while it lives.
    """
    if error is not None:
        if isinstance(error, RayActorError) and error.preempted:
            return DeathKind.NODE
        text = str(error)
        verdict = _kind_from_text(text)
        if verdict is not None:
            return verdict
        if _KILLED in text:
            return DeathKind.PROCESS
    entry = _actor_entry(actor.handle)
    if entry is not None and entry.get("State") == "DEAD":
        cause = entry.get("DeathCause")
        if cause is not None and cause.HasField("oom_context"):
            return DeathKind.PROCESS  # Ray's memory monitor killed it: the work it held needed the memory
        if cause is not None and cause.HasField("actor_died_error_context"):
            ctx = cause.actor_died_error_context
            if ctx.HasField("node_death_info"):
                return DeathKind.NODE
            verdict = _kind_from_text(ctx.error_message)
            if verdict is not None:
                return verdict
    if actor.node_id and _node_dead(actor.node_id):
        return DeathKind.NODE
    return DeathKind.UNKNOWN


def _kind_from_text(text: str) -> DeathKind | None:
    if "its node has died" in text or "node was terminated" in text:
        return DeathKind.NODE
    if "worker process has died" in text:
        return DeathKind.PROCESS
    return None


# Someone killed the actor (an operator, an outside tool): an actor loss like any other. Read only
# from the error a call raised, never from the actor table, where the pool's own kill says the same.
_KILLED = "killed by `ray.kill`"


def _node_dead(node_id: str) -> bool:
    try:
        return any(n.get("NodeID") == node_id and not n.get("Alive") for n in ray.nodes())
    except Exception:  # best-effort: without it the verdict waits for the actor's own entry
        return False


def _draining_nodes() -> set[str]:
    """Nodes Ray drains now (hex ids): ``ray drain-node``, or the autoscaler acting on a spot
    interruption notice. Ray places nothing new there; the pools move their waiting work off."""
    try:
        from ray._private.state import state as gcs

        return set(gcs.get_draining_nodes())
    except Exception:  # best-effort: a failed look-up only delays the move to the next check
        return set()


def new_owner_tag() -> str:
    return uuid.uuid4().hex[:6]


__all__ = ["ActorPool", "ActorPools", "ActorState", "ActorView", "Attempt", "death_cause", "new_owner_tag"]


def _batching_view(pong: PingReply | None) -> dict[str, object]:
    """What an actor's last pong says of its batcher, for ``raytranscribe status``."""
    if pong is None:
        return {}
    return {
        "windows": tuple((r.windows_done, r.windows_total) for r in pong.running),
        "batch_size": pong.batch_size,
        "batches": pong.batches,
        "windows_decoded": pong.windows_decoded,
        "buffered_audio_s": pong.buffered_audio_s,
    }


def _device_view(pong: PingReply | None) -> dict[str, object]:
    """Where an actor's last pong says it computes, for ``raytranscribe status`` and the metrics."""
    if pong is None:
        return {}
    return {"device": pong.device, "compute_type": pong.compute_type, "gpu_name": pong.gpu_name}
