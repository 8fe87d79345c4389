"""The actor's health state machine: start-up (pending -> starting -> loading -> alive), pings,
quarantine, task deadlines, a sick actor, a draining node.

``health.start_timeout_s`` bounds *starting*, and *loading* only while it makes no progress: a
download is hung when its bytes stop advancing that long, and the engine load after it gets that
long from the end of the download. Each check moves the actor's state and, when the actor must go,
answers a :class:`Death` for its pool to carry out (the one way an actor dies is the pool's).
"""

from __future__ import annotations

import logging

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError

from raytranscribe.config import Settings
from raytranscribe.contracts import LoadPhase, Outcome
from raytranscribe.errors import Stage
from raytranscribe.logs import task_extra
from raytranscribe.pool.actor import Actor, ActorState, Death, DeathKind
from raytranscribe.pool.ledger import Attempt
from raytranscribe.pool.rayinfo import actor_state, death_cause, placed
from raytranscribe.worker import PingReply, Waiting

log = logging.getLogger(__name__)


class Health:
    """The checks of every actor of one pool, against ``settings.health``."""

    def __init__(self, settings: Settings) -> None:
        self.h = settings.health
        self.worker = settings.worker

    # --- start-up -------------------------------------------------------------------------------

    def check_start(self, actor: Actor, now: float, ready: set[ray.ObjectRef]) -> Death | None:
        """An actor starting up: ready (it turns alive), its loading pings, its placement, its deadline."""
        if actor.ready_ref is not None and actor.ready_ref in ready:
            return self._ready(actor, now)
        if actor.ping_ref is not None and actor.ping_ref in ready:
            ref, actor.ping_ref = actor.ping_ref, None
            try:
                self._loading_pong(actor, ray.get(ref), now)
            except ActorUnavailableError:
                pass  # a blip: the start-up deadline judges it
            except RayActorError as exc:
                return Death(death_cause(exc))
            except RayError:
                pass  # the ping itself failed: no progress seen, so the start-up deadline judges it
        if now >= actor.next_placement_check:
            actor.next_placement_check = now + self.h.ping_interval_s
            self._placement(actor, now)
        if actor.ping_ref is None and now - actor.ping_sent_at >= self.h.ping_interval_s:
            # Answered as soon as its process runs (the model loads on a thread of its own): how far it is.
            try:
                actor.ping_ref, actor.ping_sent_at = actor.handle.ping.remote(), now
            except RayActorError as exc:
                return Death(death_cause(exc))
        return self._start_deadline(actor, now)

    def _ready(self, actor: Actor, now: float) -> Death | None:
        assert actor.ready_ref is not None
        try:
            pong = ray.get(actor.ready_ref)
        except RayError as exc:  # the model did not load, the constructor raised, or its node died
            return Death(death_cause(exc), error=exc)
        actor.ready_ref = None
        # A ping still in flight from the loading phase would report wanting nothing: ready's reply is newer.
        actor.ping_ref = None
        actor.state, actor.idle_since, actor.loading = ActorState.ALIVE, now, None
        self.pong(actor, pong, now)
        log.info(
            "actor %s alive on node %s gpus %s (pid %d)",
            actor.name,
            pong.node_id[:12],
            ",".join(pong.gpu_ids) or "-",
            pong.pid,
            extra={"actor": actor.name, "node": pong.node_id[:12]},
        )
        return None

    def _placement(self, actor: Actor, now: float) -> None:
        is_placed = placed(actor.handle)
        if is_placed is True and actor.state is ActorState.PENDING:
            actor.state, actor.placed_at, actor.progress_at = ActorState.STARTING, now, now
        elif is_placed is False and actor.state is ActorState.STARTING:
            actor.state, actor.placed_at = ActorState.PENDING, None  # its node went away; Ray places it again

    def _start_deadline(self, actor: Actor, now: float) -> Death | None:
        if actor.state in (ActorState.STARTING, ActorState.LOADING) and actor.placed_at is not None:
            if now - actor.progress_at > self.h.start_timeout_s:
                return Death(self._start_stalled(actor))
        elif not actor.warned_pending and now - actor.created_at > self.h.start_timeout_s:
            # Waiting for resources is not a failure (a node may be on its way), but say so once.
            actor.warned_pending = True
            log.warning(
                "actor %s still waits for resources after %.0fs (%s GPU, %s CPU): the cluster has none free; "
                "it starts when a node with room joins",
                actor.name,
                now - actor.created_at,
                self.worker.num_gpus,
                self.worker.num_cpus,
                extra={"actor": actor.name},
            )
        return None

    def _loading_pong(self, actor: Actor, pong: PingReply, now: float) -> None:
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

    def _start_stalled(self, actor: Actor) -> str:
        t = self.h.start_timeout_s
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

    # --- serving: pings and quarantine ----------------------------------------------------------

    def pong(self, actor: Actor, pong: PingReply, now: float) -> None:
        actor.last_pong, actor.last_pong_at = pong, now
        actor.running = {(r.task_id, r.attempt): r for r in pong.running}
        # The actor's own wish (memory and threads), never past what the driver keeps in flight per actor.
        actor.limit = min(self.worker.prefetch, len(pong.running) + pong.wants)

    def check_ping(self, actor: Actor, now: float, ready: set[ray.ObjectRef]) -> Death | None:
        h = self.h
        if (
            actor.state is ActorState.QUARANTINED
            and actor.quarantined_since is not None
            and now - actor.quarantined_since > h.quarantine_timeout_s
        ):
            return Death(f"unreachable for {h.quarantine_timeout_s:.0f}s (quarantined, never answered again)")
        if actor.ping_ref is not None:
            if actor.ping_ref in ready:
                try:
                    self.pong(actor, ray.get(actor.ping_ref), now)
                    if actor.state is ActorState.QUARANTINED:
                        log.info("actor %s answers again; back in service", actor.name, extra={"actor": actor.name})
                        actor.state, actor.quarantined_since = ActorState.ALIVE, None
                except ActorUnavailableError as exc:
                    self.quarantine(actor, f"unavailable: {death_cause(exc)}", now)
                except RayActorError as exc:
                    return Death(death_cause(exc), error=exc)
                actor.ping_ref = None
            elif now - actor.ping_sent_at > h.ping_timeout_s:
                actor.ping_ref = None
                if actor_state(actor.handle) == "DEAD":
                    return Death("Ray reports the actor DEAD (no reply to ping)")
                self.quarantine(actor, f"no reply to ping within {h.ping_timeout_s:.0f}s", now)
        if actor.ping_ref is None and now - actor.ping_sent_at >= h.ping_interval_s:
            try:
                actor.ping_ref = actor.handle.ping.remote()
                actor.ping_sent_at = now
            except RayActorError as exc:
                return Death(death_cause(exc), error=exc)
        return None

    def quarantine(self, actor: Actor, why: str, now: float) -> None:
        """No new work for this actor until a ping answers (or it is declared dead). A draining actor
        gets none anyway, and stays draining (its node's death ends it)."""
        if actor.state in (ActorState.DEAD, ActorState.DRAINING):
            return
        if actor.state is not ActorState.QUARANTINED:
            log.warning("actor %s quarantined: %s", actor.name, why, extra={"actor": actor.name})
            actor.quarantined_since = now
        actor.state = ActorState.QUARANTINED

    def start_draining(self, actor: Actor) -> bool:
        """Its node drains: a serving actor takes no more work (True: it just turned draining)."""
        if actor.state not in (ActorState.ALIVE, ActorState.QUARANTINED):
            return False
        actor.state = ActorState.DRAINING
        node = (actor.node_id or "")[:12]
        log.warning("actor %s: its node %s drains; moving its waiting tasks to other actors",
                    actor.name, node, extra={"actor": actor.name, "node": node})  # fmt: skip
        return True

    # --- deadlines and a sick actor -------------------------------------------------------------

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
        base, per_audio = self.h.task_deadline_base_s, self.h.task_deadline_per_audio_s
        if run is not None:
            if run.stage is Waiting.QUEUED:
                return None
            deadline = base + per_audio * (run.audio_duration_s or 0.0)
            elapsed = run.stage_s + (now - actor.last_pong_at)
        else:
            deadline = base * (max(actor.limit, self.worker.prefetch) + 1)
            elapsed = now - attempt.dispatched_at
        return deadline if elapsed > deadline else None

    def check_deadlines(self, actor: Actor, now: float) -> Death | None:
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
            return Death(cause, hung=attempt, kind=DeathKind.PROCESS)
        return None

    def observe(self, actor: Actor, outcome: Outcome) -> Death | None:
        """An actor whose transcriptions keep failing (a sick GPU) is replaced, not fed more work."""
        f = outcome.failure
        if f is None or f.stage is not Stage.TRANSCRIBE:
            actor.consecutive_failures = 0
            return None
        actor.consecutive_failures += 1
        if actor.consecutive_failures < self.h.max_consecutive_failures or actor.state is ActorState.DEAD:
            return None
        cause = f"{actor.consecutive_failures} transcriptions in a row failed on this actor (last: {f.message})"
        log.error("replacing actor %s: %s", actor.name, cause, extra={"actor": actor.name})
        return Death(cause, deliberate=True)  # the actor is sick, not the tasks it holds
