"""What Ray says of actors and nodes: its error text, read into one line (:func:`death_cause`) and a
:class:`DeathKind`, and its control store's (the GCS) tables, the one place that reads Ray's private
state API (``ray._private.state``: no dashboard needed, unlike ``ray.util.state``).

Every look-up is best-effort: a failed one answers "unknown", and the caller waits for the next.
"""

from __future__ import annotations

import re

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayTaskError

from raytranscribe.pool.actor import DeathKind

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)[\w]*): (.*)$")
_BECAUSE = ("The actor is dead because", "The actor died because")
# Someone killed the actor (an operator, an outside tool): an actor loss like any other. Read only
# from the error a call raised, never from the actor table, where the pool's own kill says the same.
_KILLED = "killed by `ray.kill`"


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


def death_kind(handle: ActorHandle, node_id: str | None, error: BaseException | None) -> DeathKind:
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
    entry = actor_entry(handle)
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
    if node_id and node_dead(node_id):
        return DeathKind.NODE
    return DeathKind.UNKNOWN


def _kind_from_text(text: str) -> DeathKind | None:
    if "its node has died" in text or "node was terminated" in text:
        return DeathKind.NODE
    if "worker process has died" in text:
        return DeathKind.PROCESS
    return None


def actor_entry(handle: ActorHandle) -> dict | None:
    """The GCS actor table's entry of the actor."""
    try:
        from ray._private.state import state as gcs

        return gcs.actor_table(handle._actor_id.hex()) or None
    except Exception:  # best-effort: without it an actor simply stays "pending" until ready
        return None


def placed(handle: ActorHandle) -> bool | None:
    """Whether Ray has placed the actor on a node (a worker process exists, the constructor runs),
    False while it waits for resources, None when unknown."""
    entry = actor_entry(handle)
    if entry is None:
        return None
    if entry.get("State") in ("PENDING_CREATION", "DEPENDENCIES_UNREADY", "RESTARTING"):
        return bool(entry.get("Pid"))
    return True


def actor_state(handle: ActorHandle) -> str | None:
    entry = actor_entry(handle)
    return entry.get("State") if entry else None


def node_dead(node_id: str) -> bool:
    try:
        return any(n.get("NodeID") == node_id and not n.get("Alive") for n in ray.nodes())
    except Exception:  # best-effort: without it the verdict waits for the actor's own entry
        return False


def draining_nodes() -> set[str]:
    """Nodes Ray drains now (hex ids): ``ray drain-node``, or the autoscaler acting on a spot
    interruption notice. Ray places nothing new there; the pools move their waiting work off."""
    try:
        from ray._private.state import state as gcs

        return set(gcs.get_draining_nodes())
    except Exception:  # best-effort: a failed look-up only delays the move to the next check
        return set()
