"""Dispatch and result streams: the Ray calls that carry tasks to an actor and outcomes back.

An actor gets one ``take`` call per turn with every task it was given that turn (it is refilled once
a quarter of its slots is free, so a call carries many tasks), and answers on its ``results`` stream:
one Ray streaming generator for the actor's life, a list of outcomes (and Computing notes) per item,
sent as its tasks end. A check that finds the actor dead says so as a :class:`Death` for its pool to
carry out; nothing here kills an actor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import ray
from ray import ObjectRefGenerator
from ray.exceptions import ActorUnavailableError, RayActorError, RayError

from raytranscribe.contracts import Computing, Outcome, Release
from raytranscribe.errors import DispatchError, Failure, Stage
from raytranscribe.logs import task_extra
from raytranscribe.pool.actor import Actor, Death
from raytranscribe.pool.health import Health
from raytranscribe.pool.ledger import Ledger
from raytranscribe.pool.rayinfo import death_cause

log = logging.getLogger(__name__)

Ref = ray.ObjectRef | ObjectRefGenerator


def send(actor: Actor) -> Death | None:
    """One call for everything the actor was given this turn; the outcomes come back on its results
    stream, each as soon as its task ends."""
    batch, actor.outbox = actor.outbox, []
    try:
        ref = actor.handle.take.remote([attempt.spec for attempt in batch])
    except RayActorError as exc:  # its attempts, sent or not, fail over with it
        return Death(death_cause(exc), error=exc)
    actor.takes[ref] = batch
    for attempt in batch:
        attempt.sent = True
    if log.isEnabledFor(logging.DEBUG):
        for attempt in batch:
            log.debug("dispatched", extra=task_extra(*attempt.lease, Stage.DISPATCH, actor=actor.name))
    return None


def open_results(actor: Actor, ledger: Ledger) -> None:
    actor.results = actor.handle.results.remote()
    ledger.by_stream[actor.results] = actor


def close_results(actor: Actor, ledger: Ledger) -> None:
    if actor.results is not None:
        ledger.by_stream.pop(actor.results, None)
        actor.results = None


def drain(stream: ObjectRefGenerator) -> list[list[Outcome | Computing] | BaseException]:
    """Every item of a results stream that has arrived: a list of outcomes each, or (last) the error
    that ended the stream."""
    items: list[list[Outcome | Computing] | BaseException] = []
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


def arrived(actor: Actor) -> list[list[Outcome | Computing] | BaseException]:
    """What the actor's results stream holds now, a stream that ended counting as a failure (it never
    ends while its actor lives)."""
    stream = actor.results
    if stream is None:
        return []  # it died earlier this turn, and its attempts failed over with it
    items = drain(stream)
    if not items and stream.is_finished():
        items = [DispatchError(f"actor {actor.name} closed its results stream")]
    return items


def received(
    actor: Actor, value: list[Outcome | Computing] | BaseException, ledger: Ledger, health: Health, now: float
) -> tuple[list[Outcome], Death | None]:
    """One item of an actor's results stream: outcomes of some of its attempts and notes of what it
    computes on, or what ended it (then the actor dies: every attempt it held fails over)."""
    if isinstance(value, BaseException):
        if isinstance(value, RayActorError) and not isinstance(value, ActorUnavailableError):
            return [], Death(death_cause(value), error=value)
        # Unreachable for now, or the stream itself broke: what it holds may never come back.
        return [], Death(f"its results stream failed: {death_cause(value)}", error=value)
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
        sick = health.observe(actor, outcome)
        if sick is not None:
            return out, sick  # the rest of its attempts fail over with it
    return out, None


def check_takes(
    actor: Actor, ready: set[ray.ObjectRef], ledger: Ledger, health: Health, now: float
) -> tuple[list[Outcome], Death | None]:
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
            health.quarantine(actor, f"call failed: {death_cause(exc)}", now)
            message = f"actor {actor.name} became unreachable as the task was handed to it: {death_cause(exc)}"
            outcome: dict[str, Failure | Release] = {"release": Release(Stage.DISPATCH, message)}
        except RayActorError as exc:
            return out, Death(death_cause(exc), error=exc)
        except RayError as exc:  # take itself raised: the actor is broken for these tasks
            failure = Failure(Stage.DISPATCH, type(exc).__name__, str(exc).splitlines()[0][:500], True)
            outcome = {"failure": failure}
        for attempt in batch:
            if actor.attempts.get(attempt.lease) is not attempt:
                continue
            ledger.remove(attempt, now)
            if not attempt.abandoned:
                out.append(Outcome(*attempt.lease, actor=actor.name, **outcome))  # type: ignore[arg-type]
    return out, None


def wait_ready(refs: Sequence[Ref], timeout: float, ready_by: float) -> list[Ref]:
    """Every ref that is ready once ``ready_by`` has passed, waiting up to ``timeout`` for one when
    none is (with nothing to wait on, just the timeout)."""
    if not refs:
        time.sleep(timeout)
        return []
    rest = ready_by - time.monotonic()
    if rest > 0:
        time.sleep(rest)
    # Under load something is ready every turn: one pass over the refs, not two.
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    if ready:
        return ready
    ready, _ = ray.wait(list(refs), num_returns=1, timeout=timeout)
    if not ready:
        return []
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    return ready
