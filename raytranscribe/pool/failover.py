"""Failover: what becomes of the attempts a dead actor held, and of those a draining node's actor
has not started.

An outcome that came back before the death stands; the hung attempt of a deadline kill is a
timeout. Of the rest, only the suspects pay (what the process computed on, as its last Computing
note said), and only for a process's death: after a node's, nobody does, and while Ray has not said
which, the suspects wait (:meth:`Failover.judge`). Everything else goes back to pending uncharged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ray.exceptions import RayActorError

from raytranscribe.config import HealthSettings
from raytranscribe.contracts import Computing, Outcome, Release
from raytranscribe.errors import Failure, Stage, TaskTimedOut, WorkerDied
from raytranscribe.logs import task_extra
from raytranscribe.pool import dispatch
from raytranscribe.pool.actor import FINISHING, Actor, Death, DeathKind
from raytranscribe.pool.ledger import Attempt, Lease, Ledger
from raytranscribe.pool.rayinfo import death_kind

log = logging.getLogger(__name__)

_VERDICT_EVERY_S = 0.5  # how often Ray is asked what killed an actor whose suspects wait for the answer


@dataclass(eq=False)
class Verdict:
    """The suspects of an actor that vanished before Ray said whether its process or its node died:
    they stay in flight (leases renewed) until Ray tells, or ``health.death_verdict_s`` passes."""

    actor: Actor
    attempts: list[Attempt]
    deadline: float
    next_check: float = 0.0


class Failover:
    """The failovers of one pool's actors, and the suspects that wait for Ray's verdict."""

    def __init__(self, ledger: Ledger, health: HealthSettings) -> None:
        self.ledger = ledger
        self.h = health
        self.verdicts: list[Verdict] = []

    def waiting(self) -> int:
        """Attempts still in flight while Ray's verdict is awaited."""
        return sum(len(v.attempts) for v in self.verdicts)

    def fail_over(self, actor: Actor, death: Death, now: float) -> list[Outcome]:
        """Every attempt the dead actor held, judged by what it was doing."""
        actor.outbox.clear()
        attempts = list(actor.attempts.values())
        finished = self._finished(actor)
        actor.takes.clear()
        suspects = set() if death.deliberate else _suspects(actor, attempts)
        kind = death.kind
        if suspects and kind is None:
            kind = death_kind(actor.handle, actor.node_id, death.error)
        out: list[Outcome] = []
        waiting: list[Attempt] = []
        for attempt in attempts:
            kept = finished.get(attempt.lease)
            if attempt.lease in suspects and kept is None and attempt is not death.hung and not attempt.abandoned:
                if kind is DeathKind.UNKNOWN:
                    waiting.append(attempt)  # stays in flight, its lease renewed, until Ray says
                    continue
                self.ledger.remove(attempt, now)
                out.append(_crash_outcome(actor, attempt, kind is DeathKind.NODE))
                continue
            self.ledger.remove(attempt, now)
            if attempt.abandoned:
                continue  # its lease is gone already: nothing to record
            # One that finished before its actor died keeps its real outcome.
            out.append(kept if kept is not None else _bystander_outcome(actor, attempt, hung=attempt is death.hung))
        if waiting:
            log.warning(
                "actor %s vanished while computing %d task(s); waiting for Ray to say whether its node died",
                actor.name, len(waiting), extra={"actor": actor.name},
            )  # fmt: skip
            self.verdicts.append(Verdict(actor, waiting, now + self.h.death_verdict_s, now + _VERDICT_EVERY_S))
        return out

    def _finished(self, actor: Actor) -> dict[Lease, Outcome]:
        """Outcomes (and notes) that reached us before the actor died; its stream closes."""
        finished: dict[Lease, Outcome] = {}
        if actor.results is None:
            return finished
        for value in dispatch.drain(actor.results):
            if isinstance(value, BaseException):
                break  # the stream died with the actor: the rest fail over
            for item in value:
                if isinstance(item, Computing):
                    actor.computing = item.leases
                else:
                    finished[(item.task_id, item.attempt)] = item
        dispatch.close_results(actor, self.ledger)
        return finished

    def judge(self, now: float) -> list[Outcome]:
        """Suspects waiting for Ray's word: released once it says the node died, charged once it says
        the process did, or once ``health.death_verdict_s`` passes without a word (a lost node is
        known within seconds, so silence means the process)."""
        out: list[Outcome] = []
        for v in list(self.verdicts):
            if now < v.next_check:
                continue
            v.next_check = now + _VERDICT_EVERY_S
            kind = death_kind(v.actor.handle, v.actor.node_id, None)
            if kind is DeathKind.UNKNOWN and now < v.deadline:
                continue
            self.verdicts.remove(v)
            for attempt in v.attempts:
                self.ledger.remove(attempt, now)
                if not attempt.abandoned:
                    out.append(_crash_outcome(v.actor, attempt, kind is DeathKind.NODE))
        return out

    def withdraw(self, actor: Actor, now: float) -> list[Outcome]:
        """A draining actor's attempts it has not started go to other actors, uncharged; what it
        computes on (and what is past its transcript) finishes there."""
        node = (actor.node_id or "")[:12]
        keep = set(actor.computing)
        for lease, run in actor.running.items():
            if run.stage in FINISHING or run.windows_done > 0:
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
            self.ledger.remove(attempt, now)
            if not attempt.abandoned:
                release = Release(Stage.DISPATCH, f"node {node} drains: moved off actor {actor.name}, not charged")
                out.append(Outcome(*attempt.lease, release=release, actor=actor.name, node_id=actor.node_id))
        if sent:
            try:  # spare it the work; their outcomes are dropped anyway (no longer in flight)
                actor.handle.withdraw.remote(sent)
            except RayActorError:
                pass
        return out


def _suspects(actor: Actor, attempts: list[Attempt]) -> set[Lease]:
    """The attempts that could have killed the process: those it computed on, as its last
    Computing note said (a task entering the engine waits until its note has left, so a crash
    inside finds the driver told). A task that runs alone has crashed a worker before: if one
    was computing, it alone is suspected, not the neighbours preparing meanwhile."""
    computing = actor.computing & {a.lease for a in attempts}
    alone = {a.lease for a in attempts if a.spec.alone} & computing
    return alone or computing


def _bystander_outcome(actor: Actor, attempt: Attempt, *, hung: bool) -> Outcome:
    """An attempt of a dead actor that did not kill it: the hung one of a deadline kill times out,
    the rest go back uncharged."""
    if hung:
        failure = Failure.from_exception(TaskTimedOut(actor.death_cause or "deadline"))
        return Outcome(*attempt.lease, failure=failure, actor=actor.name, node_id=actor.node_id)
    node = f" on node {actor.node_id[:12]}" if actor.node_id else ""
    run = actor.running.get(attempt.lease)
    doing = f"the task was {run.stage}" if run is not None else "the task had not started"
    release = Release(Stage.WORKER_DEATH, f"actor {actor.name}{node} died ({actor.death_cause}) "
                                          f"while {doing}: not its doing, not charged")
    return Outcome(*attempt.lease, release=release, actor=actor.name, node_id=actor.node_id)


def _crash_outcome(actor: Actor, attempt: Attempt, node_died: bool) -> Outcome:
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
