"""One worker actor as its pool sees it (:class:`Actor`), its states, and its view for ``status``.

States: *pending* (Ray has not placed it: waiting for a GPU the autoscaler may be adding; never a
failure), *starting* (placed, its process starting), *loading* (it answers pings while its model
downloads into the node's cache and loads: bytes done of total), *alive*, *quarantined* (unreachable
for now: keeps its tasks, gets no new ones), *draining* (its node drains), *dead*. The moves between
them are :mod:`raytranscribe.pool.health`'s.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import ray
from ray import ObjectRefGenerator
from ray.actor import ActorHandle

from raytranscribe.contracts import LoadPhase, ModelLoadState
from raytranscribe.errors import Stage
from raytranscribe.pool.ledger import Attempt, Lease
from raytranscribe.worker import PingReply, RunningTask

if TYPE_CHECKING:
    from raytranscribe.pool.pool import ActorPool

_REFILL_FRACTION = 4  # an actor is refilled once this fraction of its slots is free (see Actor.wants_refill)
FINISHING = (Stage.RENDER, Stage.UPLOAD)  # a task past its transcript: moments from its outcome


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


@dataclass(frozen=True)
class Death:
    """Why an actor must die, as a check found it; its pool carries it out (the one way an actor dies).
    ``deliberate``: the pool stops it (shrinking, retiring, draining, replacing a sick actor), so none
    of its tasks is to blame. ``error``: what Ray raised, which may tell a node's death from a
    process's; ``kind``: what the check already knows of it; ``hung``: the attempt past its deadline."""

    cause: str
    error: BaseException | None = None
    hung: Attempt | None = None
    deliberate: bool = False
    kind: DeathKind | None = None


STARTING_UP = (ActorState.PENDING, ActorState.STARTING, ActorState.LOADING)
SERVING = (ActorState.ALIVE, ActorState.QUARANTINED, ActorState.DRAINING)  # pinged, its deadlines judged


@dataclass(eq=False)
class Actor:
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

    def finishing(self) -> set[Lease]:
        """Its attempts past their transcript (rendering or uploading, as it last said)."""
        return {
            lease
            for lease, run in self.running.items()
            if run.stage in FINISHING and lease in self.attempts and not self.attempts[lease].abandoned
        }


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


def view(a: Actor, pool_label: str) -> ActorView:
    """What ``raytranscribe status`` and the metrics show of one actor."""
    pong = a.last_pong
    loading = a.loading if a.state is ActorState.LOADING else None
    return ActorView(
        name=a.name,
        pool=pool_label,
        state=a.state.value,
        node_id=a.node_id,
        gpu_ids=pong.gpu_ids if pong else (),
        in_flight=len(a.attempts),
        tasks_done=pong.tasks_done if pong else 0,
        pid=pong.pid if pong else None,
        stages=tuple(r.stage for r in pong.running) if pong else (),
        loading=loading.describe() if loading else "",
        bytes_done=loading.bytes_done if loading else 0,
        bytes_total=loading.total_bytes if loading else 0,
        **_batching_view(pong),
        **_device_view(pong),
    )


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
