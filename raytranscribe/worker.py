"""The worker actor: one resident Whisper model, a download/decode/transcribe/render/upload pipeline.

A worker holds no database connection and no AWS credentials: it sees presigned URLs and returns an
:class:`~raytranscribe.contracts.Outcome`. It never raises for a task's own failure; an exception
that escapes ``process`` means the actor itself is broken.

Work in, outcomes out: the driver hands over tasks in batches with ``take`` (it returns at once) and
reads their outcomes from ``results``, one Ray streaming generator for the actor's life whose items
are the outcomes finished since the last item: one call per batch of tasks either way, and no outcome
waits for a slower neighbour. (A remote ``process`` call runs one task and returns its outcome, one
call at a time: for a quick check such as ``bench/gpu_check.py``.)

Pipelining and batching: each task runs on a pipeline thread of its own (``max(worker.prefetch,
worker.max_tasks_in_hand)`` of them, the worker's own thread pool). Each thread downloads and decodes its task and has the engine
cut it into windows of at most 30 s (``engine.prepare``); then it hands the windows to the actor's
:class:`Batcher`, the one thread that owns the device, and waits for its transcript. The batcher
decodes windows of many tasks in one model call (``engine.batch_size`` at a time, a partial batch
``batch_wait_ms`` after the last arrival), so a GPU is kept busy with short files too, while other
threads move files. A task is done when its last window is; then its thread renders and uploads.
With ``batch_size == 1`` (or an engine that cannot batch) a compute lock runs ``engine.transcribe``
one task at a time. ``ping`` has its own group, so it answers while every pipeline
thread is busy.

Start-up: the constructor only starts the thread that fetches the model (into the node's model
cache) and loads it; until then ``ping`` reports ``loading`` with bytes done of total, and
``ready`` (a group of its own) returns once the model is in, or raises what stopped it.

Decoding: each file is decoded in one of the actor's decode helper processes (``audio.Decoders``),
so a crash inside FFmpeg fails that task alone, with a permanent ``decode`` error.

Memory: decoded audio is held from decode until its transcript is back. A file comes back from its
helper in pieces of at most ``worker.stream_chunk_s`` (cut at a quiet moment), each prepared and
transcribed before the next is read, so a task holds one piece whatever the recording's length; the
pieces' segments join into one transcript in file time. Past ``worker.max_buffered_audio_s`` of held
audio, downloaded files wait before decoding, and ``wants`` (in the ping reply) tells the driver how
many more tasks this actor can take.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import ray

from raytranscribe import audio, formats, metrics
from raytranscribe.batching import (
    BatchItem,
    PerWindow,
    WindowResult,
    WindowScheduler,
    after_out_of_memory,
    is_batch_engine,
    run_batch,
)
from raytranscribe.config import EngineSettings, QualitySettings, TransferSettings, WorkerSettings
from raytranscribe.contracts import Computing, ModelLoadState, ModelManifest, Outcome, Release, TaskResult, TaskSpec
from raytranscribe.engines import compute_type_of, gpu_name, load_engine, resolve_device, verdict
from raytranscribe.engines.base import (
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    BatchEngine,
    Engine,
    EngineSpec,
    PreparedAudio,
    TranscribeOptions,
    Transcript,
    Window,
)
from raytranscribe.engines.windows import quietest_cut
from raytranscribe.errors import (
    DispatchError,
    EngineOutOfMemory,
    Failure,
    ModelLoadError,
    RayTranscribeError,
    Stage,
    TranscriptionError,
)
from raytranscribe.logs import task_extra
from raytranscribe.modelcache import LoadProgress, ModelCache, engine_spec_on_node
from raytranscribe.names import ENGINES
from raytranscribe.transfer import Downloaded, Transfer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    engine: EngineSpec
    transfer: TransferSettings = TransferSettings()
    scratch_dir: str | None = None  # None: the system temp dir
    log_level: str = "INFO"
    worker: WorkerSettings = WorkerSettings()  # max_tasks_in_hand, max_buffered_audio_s
    batch_wait_ms: float = EngineSettings().batch_wait_ms  # the engine group's setting; the actor applies it
    model: ModelManifest | None = None  # an s3:// model's files, presigned by the driver for this actor
    model_cache_dir: str | None = EngineSettings().model_cache_dir  # None: the node's temp dir
    quality: QualitySettings = QualitySettings()  # when a transcript is suspect (engines.verdict)


# How long results() lets outcomes gather after the first before sending them: fewer, fuller items
# cost the driver less, and a transcript a few milliseconds later costs nobody anything.
_RESULTS_GATHER_S = 0.01

Lease = tuple[int, int]  # (task id, attempt)


# How long a task entering the engine waits for its Computing note to leave on the results stream:
# the note has to be out before a crash it might cause, and it goes in about a millisecond.
_NOTE_SENT_WAIT_S = 1.0
# Ray hands a yielded item to an asynchronous RPC: a process that dies at once can still lose it.
# After the hand-over the engine waits this long for the message to be on its way; longer when a
# task that crashed a worker before (one that runs alone) enters, the likeliest crash of all.
_NOTE_FLUSH_S = 0.005
_NOTE_FLUSH_ALONE_S = 0.05


class Withdrawn(Exception):
    """The driver took the task back (its node drains): stop working on it."""


@dataclass(frozen=True)
class _Note:
    """A Computing note on its way to results(); ``sent`` is set once it has been yielded."""

    computing: Computing
    sent: threading.Event | None = None


class Waiting(enum.StrEnum):
    """What a ping reports of a task that waits instead of working in one of its Stages."""

    # Waiting for the device behind another task (not judged: the one in front is). Sequential path:
    # for the compute lock; batched: before preparing, while a task that runs alone has the engine.
    QUEUED = "queued"
    # Batched path: waiting for room to decode (memory bound), for a batch, or inside one. Its stage_s
    # counts from the batcher's last progress, not from when the task started waiting, so a long queue
    # on a healthy actor never looks hung while a batcher stuck in one model call does.
    BATCHED = "batched"


@dataclass(frozen=True)
class RunningTask:
    task_id: int
    attempt: int
    stage: Stage | Waiting
    running_s: float  # since process() began
    # In the current stage; Waiting.BATCHED: since the later of entering it and the batcher's last progress.
    stage_s: float
    audio_duration_s: float | None
    windows_done: int = 0  # windows decoded so far (batched path); 0/0 until its windows are queued
    windows_total: int = 0


@dataclass(frozen=True)
class PingReply:
    name: str
    actor_id: str
    node_id: str
    pid: int
    gpu_ids: tuple[str, ...]
    engine: str
    model: str
    device: str
    tasks_done: int
    running: tuple[RunningTask, ...] = field(default_factory=tuple)
    wants: int = 0  # how many more tasks this actor would take now (memory and thread bound)
    batch_size: int = 1  # slots per batch now (halved after a device out of memory); 1: sequential
    batches: int = 0  # batched model calls so far
    windows_decoded: int = 0  # windows those calls decoded (windows_decoded / batches: how full batches run)
    buffered_audio_s: float = 0.0  # decoded audio held now
    loading: ModelLoadState | None = None  # while the model downloads and loads: how far; None once ready
    compute_type: str = ""  # what the engine computes in (float16, int8, ...); "" before the model is in
    gpu_name: str = ""  # the reserved GPU's name (nvidia-smi), "" on the CPU


@dataclass
class _Progress:
    task_id: int
    attempt: int
    started: float
    stage: Stage | Waiting = Stage.DOWNLOAD
    stage_started: float = 0.0
    audio_duration_s: float | None = None

    def enter(self, stage: Stage | Waiting) -> None:
        self.stage, self.stage_started = stage, time.monotonic()


@dataclass(eq=False)
class _TaskRun:
    """One task's pass through the pipeline: what its stages share."""

    spec: TaskSpec
    progress: _Progress
    tmp: Path  # its scratch folder
    actor: str
    node_id: str
    timings: list[tuple[str, float]] = field(default_factory=list)
    held_s: float = 0.0  # decoded audio it holds, counted against worker.max_buffered_audio_s

    @property
    def key(self) -> Lease:
        return (self.spec.task_id, self.spec.attempt)

    @contextmanager
    def stage(self, s: Stage) -> Iterator[None]:
        self.progress.enter(s)
        t = time.monotonic()
        try:
            yield
        finally:
            self.timings.append((s.value, round(time.monotonic() - t, 4)))

    def extra(self, stage: Stage, **more: object) -> dict[str, object]:
        return task_extra(self.spec.task_id, self.spec.attempt, stage, actor=self.actor, **more)

    def outcome(self, **what: object) -> Outcome:
        return Outcome(self.spec.task_id, self.spec.attempt, timings=_summed(self.timings), actor=self.actor,
                       node_id=self.node_id, **what)  # type: ignore[arg-type]


class Batcher:
    """The thread that owns the device: windows of every waiting task, decoded in shared batches.

    Pipeline threads call :meth:`transcribe` and block; the batcher thread takes a full batch as soon
    as there is one, or a partial batch once ``wait_s`` has passed since the last file arrived (when
    nothing else is coming, the last files of a backfill must not wait). A failing batch is bisected
    by :func:`~raytranscribe.batching.run_batch`, so only the culprit's task fails; a device out of
    memory halves the batch size for the rest of the actor's life and retries the same windows.
    """

    def __init__(
        self,
        engine: BatchEngine,
        batch_size: int,
        wait_s: float,
        name: str,
        computing: Callable[[frozenset[Hashable], bool], None] | None = None,
    ) -> None:
        """``computing(keys, True)`` before each model call and ``(keys, False)`` after it: the tasks
        inside the engine, for the worker's crash suspects."""
        self.engine = engine
        self._computing = computing
        self.batch_size = max(1, batch_size)
        self.wait_s = wait_s
        self.name = name
        self.batches = 0
        self.windows_decoded = 0
        self._cond = threading.Condition()
        self._scheduler = WindowScheduler(engine.spec)
        self._results: dict[Hashable, Transcript | Exception] = {}
        self._started: dict[Hashable, float] = {}  # when a task's first window went into a batch
        self._last_arrival = 0.0
        self._last_progress = time.monotonic()
        self._busy = False  # a batch is being decoded
        self._in_call: frozenset[Hashable] = frozenset()  # the tasks of the batch being decoded
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    # --- pipeline threads -----------------------------------------------------------------------

    def transcribe(
        self, key: Hashable, prepared: PreparedAudio, options: TranscribeOptions, *, alone: bool = False
    ) -> tuple[Transcript, float]:
        """Block until ``key``'s last window is decoded: its transcript, and the seconds from its
        first window entering a batch to the end (the rest of the wait was for a batch). Raises the
        error that failed this task alone (:class:`Withdrawn` once :meth:`withdraw` took it out).
        ``alone``: its windows share no model call with another task's."""
        arrived = time.monotonic()
        with self._cond:
            done = self._scheduler.add(key, prepared, options, alone=alone)
            if done is not None:  # no windows (silence, empty VAD): nothing to decode
                return done, 0.0
            if not self._busy and self._scheduler.tasks() == 1:
                self._last_progress = arrived  # an idle batcher's progress clock starts with its work
            self._last_arrival = arrived
            self._cond.notify_all()
            while key not in self._results:
                self._cond.wait()
            result = self._results.pop(key)
            started = self._started.pop(key, arrived)
        if isinstance(result, Exception):
            raise result
        return result, time.monotonic() - started

    def progress(self, key: Hashable) -> tuple[int, int]:
        with self._cond:
            return self._scheduler.progress(key)

    def withdraw(self, key: Hashable) -> None:
        """Take a waiting task out: its windows not yet in a model call are dropped, and its
        transcribe() raises Withdrawn. A task inside the running call is left to finish."""
        with self._cond:
            if key in self._results or key in self._in_call or self._scheduler.progress(key) == (0, 0):
                return
            self._scheduler.fail(key)
            self._results[key] = Withdrawn("taken back by the driver")
            self._cond.notify_all()

    @property
    def last_progress(self) -> float:
        return self._last_progress

    # --- the batcher thread ---------------------------------------------------------------------

    def _take(self) -> list[BatchItem]:
        """Wait (holding the condition) for a full batch, or a partial one after ``wait_s`` of quiet.

        Full counts slots, not windows: short clips are packed several to a slot by the scheduler."""
        while True:
            if self._scheduler.pending_slots() >= self.batch_size:
                break
            if self._scheduler.pending_windows():
                left = self._last_arrival + self.wait_s - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            else:
                self._cond.wait()
        batch = self._scheduler.next_batch(self.batch_size)
        now = time.monotonic()
        for item in batch:
            for key in item.keys:
                self._started.setdefault(key, now)
        self._busy = True
        return batch

    def _loop(self) -> None:
        while True:
            with self._cond:
                batch = self._take()
                self._in_call = frozenset(key for item in batch for key in item.keys)
            if self._computing is not None:
                self._computing(self._in_call, True)
            try:
                self._run(batch)
            except Exception as exc:  # a bug here must fail the batch's tasks, not leave them waiting
                log.exception("batcher failed on a batch of %d windows", len(batch), extra={"actor": self.name})
                error = TranscriptionError(f"the batcher failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                with self._cond:
                    for key in {key for item in batch for key in item.keys}:
                        self._scheduler.fail(key)
                        self._results[key] = error
                    self._busy = False
                    self._cond.notify_all()
            finally:
                if self._computing is not None:
                    self._computing(self._in_call, False)
                with self._cond:
                    self._in_call = frozenset()

    def _run(self, batch: list[BatchItem]) -> None:
        t0 = time.monotonic()
        try:
            results = run_batch(self.engine, batch)
        except EngineOutOfMemory as exc:
            shrunk, size = after_out_of_memory(self.engine, batch, self.batch_size)
            if shrunk is not None:
                self._finish(batch, shrunk, t0)
                return
            with self._cond:
                self._scheduler.requeue(batch)
                old, self.batch_size = self.batch_size, size
                self._busy = False
            log.warning(
                "device out of memory on a batch of %d slots (%s); batch size %d -> %d for this actor's life",
                len(batch), exc, old, self.batch_size,
                extra={"actor": self.name, "stage": Stage.TRANSCRIBE.value},
            )
            return
        except Exception as exc:  # run_batch answers per window; anything else fails the batch's tasks
            error = TranscriptionError(f"batched decoding failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            results = [error] * len(batch)
        self._finish(batch, results, t0)

    def _finish(self, batch: list[BatchItem], results: list[WindowResult | PerWindow], t0: float) -> None:
        elapsed = time.monotonic() - t0
        with self._cond:
            finished = self._scheduler.complete(batch, results)
            for key, result in finished:
                self._results[key] = result
            self.batches += 1
            self.windows_decoded += sum(len(item.refs) for item in batch)
            self._last_progress = time.monotonic()
            self._busy = False
            self._cond.notify_all()
        log.debug(
            "batch of %d slots (%d windows of %d tasks) decoded in %.2fs; %d task(s) finished",
            len(batch), sum(len(item.refs) for item in batch), len({k for item in batch for k in item.keys}),
            elapsed, len(finished),
            extra={"actor": self.name, "stage": Stage.TRANSCRIBE.value},
        )


class TranscriptionWorker:
    """Plain class; :func:`worker_actor_class` wraps it with ``ray.remote`` and concurrency groups."""

    def __init__(self, config: WorkerConfig) -> None:
        from raytranscribe import isolation, logs

        logs.configure(config.log_level)
        # Defence in depth: the driver blanks every secret in the actor's runtime_env; one that still
        # arrived (a raylet started from a shell holding it, a name the driver could not know) is
        # named loudly and taken out of os.environ, so nothing this process starts or loads sees it.
        for name in isolation.drop_inherited_secrets():
            log.warning(
                "worker %s inherited the secret variable %s: removed it; start Ray from an environment "
                "without credentials (workers must hold none)", config.name, name, extra={"actor": config.name}
            )
        self.config = config
        spec = config.engine
        self.gpu_ids = tuple(str(g) for g in ray.get_gpu_ids())
        self._load_error: BaseException | None = None
        if spec.device == "auto" and not self.gpu_ids:
            # No GPU reserved for this actor: never grab one that belongs to a neighbour.
            spec = dataclasses.replace(spec, device="cpu")
        elif self.gpu_ids and spec.device != "cpu" and spec.engine in ENGINES:
            # Honest devices: a reserved GPU runs on CUDA or the actor does not start (the cheap probe
            # here, before any download; the model-load thread re-raises its error through ready()).
            try:
                spec = dataclasses.replace(spec, device=resolve_device(spec.device, spec.engine, self.gpu_ids))
            except ModelLoadError as exc:
                self._load_error = exc
        self.spec = spec
        self.gpu_name = gpu_name(self.gpu_ids) if spec.device == "cuda" else ""
        self.compute_type = ""
        # The model downloads (into the node's cache: one copy per node) and loads on a thread of its
        # own, so the actor answers pings meanwhile with its ``loading`` state and bytes done; ready()
        # waits for that thread and re-raises its error, so a model that cannot be fetched or loaded
        # is still a start-up failure with its cause.
        self.loading = LoadProgress()
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None
        self._loaded = threading.Event()
        # One thread per task in hand (take() hands each task to one), and the outcomes they leave for results().
        threads = max(config.worker.prefetch, config.worker.max_tasks_in_hand)
        self._pipeline = ThreadPoolExecutor(threads, thread_name_prefix="pipeline")
        self.transfer = transfer_class(config.worker.transfer_class)(config.transfer, connections=threads)
        # Outcomes for results(), and Computing notes in their order among them.
        self._finished: queue.SimpleQueue[Outcome | _Note] = queue.SimpleQueue()
        self._compute = threading.Lock()
        self._state = threading.Condition()  # guards the fields below; notified when audio is freed
        self._running: dict[tuple[int, int], _Progress] = {}
        self._done = 0
        self._buffered_s = 0.0  # decoded audio held (decode -> transcript back)
        self._decoding = 0  # tasks admitted to decode, not decoded yet
        self._mean_audio_s: float | None = None  # running mean of decoded durations: the size of the unknown
        self._computing: set[Lease] = set()  # inside the engine now: the suspects should this process die
        self._withdrawn: set[Lease] = set()  # taken back by the driver; dropped at their next step
        self._alone: set[Lease] = set()  # tasks that run alone: they crashed a worker before
        self._alone_waiting = 0  # of them, how many wait to enter the engine
        self._streaming = False  # results() has a reader: Computing notes have somewhere to go
        # Untrusted media decode in helper processes (a crash inside FFmpeg fails one file, not this
        # actor), streamed back in pieces of at most stream_chunk_s: what a task holds is bounded.
        self._decoders = audio.Decoders(config.worker.decoder)
        chunk_s = min(config.worker.stream_chunk_s, max(config.worker.max_buffered_audio_s, 60.0))
        self._chunk_samples = int(chunk_s * SAMPLE_RATE)
        ctx = ray.get_runtime_context()
        self._actor_id = ctx.get_actor_id() or ""
        self._node_id = ctx.get_node_id() or ""
        threading.Thread(target=self._load, name=f"model-load-{config.name}", daemon=True).start()

    def __repr__(self) -> str:
        # Ray prefixes this actor's log lines (and names it in the dashboard and `ray list actors`)
        # with its repr: the pool's name for it and its device, so a download's progress lines say
        # which actor they belong to and an operator sees where each actor computes.
        on = f"{self.config.name} on {self.spec.device}"
        return f"{on} ({self.gpu_name})" if self.gpu_name else on

    def _load(self) -> None:
        config, spec = self.config, self.spec
        t0 = time.monotonic()
        try:
            if self._load_error is not None:  # the device probe failed: nothing to download or load
                raise self._load_error
            # A model from S3 (or the Hub) lands in the node's model cache first: one download per node.
            cache = ModelCache(config.model_cache_dir, config.transfer)
            engine = load_engine(engine_spec_on_node(spec, config.model, cache, self.loading))
            device = getattr(engine, "device", spec.device)
            if self.gpu_ids and spec.device != "cpu" and device != "cuda":  # a plugin engine that chose the CPU
                raise ModelLoadError(
                    f"reserved GPU {','.join(self.gpu_ids)} but {spec.engine} loaded {spec.model!r} on {device}; "
                    "set device = cpu to run on the CPU on purpose"
                )
            self.compute_type = compute_type_of(engine)
            # An engine that cannot batch (a plugin with transcribe only), or batch_size 1: sequential.
            batch_size = engine.batch_size if is_batch_engine(engine) else 1
            if batch_size > 1:
                self.batcher = Batcher(
                    engine, batch_size, config.batch_wait_ms / 1000.0, config.name, computing=self._note_computing
                )
            self.engine = engine
        except BaseException as exc:  # re-raised by ready(): the pool counts a start-up failure with it
            self._load_error = exc
            log.error(
                "worker %s cannot load %s %s: %s: %s", config.name, spec.engine, spec.model, type(exc).__name__, exc,
                extra={"actor": config.name, "stage": Stage.MODEL_LOAD.value},
            )  # fmt: skip
            return
        finally:
            self._loaded.set()
        log.info(
            "worker %s ready: %s %s on %s, %s, in %.1fs",
            config.name,
            spec.engine,
            spec.model,
            spec.device,
            f"batches of {batch_size} slots" if self.batcher else "sequential",
            time.monotonic() - t0,
            extra={"actor": config.name},
        )

    # --- control lane ---------------------------------------------------------------------------

    def ready(self) -> PingReply:
        """Wait for the model to download and load (its own concurrency group, so pings answer
        meanwhile); raises what stopped it (ModelDownloadError, ModelLoadError, ...)."""
        self._loaded.wait()
        if self._load_error is not None:
            raise self._load_error
        return self.ping()

    def ping(self) -> PingReply:
        now = time.monotonic()
        batcher = self.batcher
        loaded = self._loaded.is_set() and self._load_error is None
        with self._state:
            progress = list(self._running.values())
            done = self._done
            buffered = self._buffered_s
            wants = self._wants_locked() if loaded else 0  # no work before the model is in
        running = tuple(self._running_task(p, now) for p in progress)
        return PingReply(
            name=self.config.name,
            actor_id=self._actor_id,
            node_id=self._node_id,
            pid=os.getpid(),
            gpu_ids=tuple(str(g) for g in ray.get_gpu_ids()),
            engine=self.spec.engine,
            model=self.spec.model,
            device=getattr(self.engine, "device", self.spec.device),  # what "auto" resolved to
            tasks_done=done,
            running=running,
            wants=wants,
            batch_size=batcher.batch_size if batcher else 1,
            batches=batcher.batches if batcher else 0,
            windows_decoded=batcher.windows_decoded if batcher else 0,
            buffered_audio_s=round(buffered, 3),
            loading=None if loaded else self.loading.snapshot(),
            compute_type=self.compute_type,
            gpu_name=self.gpu_name,
        )

    def withdraw(self, leases: Sequence[Lease]) -> None:
        """The driver took these tasks back (their node drains): each stops at its next step, or
        leaves the batcher's queue; one inside a model call finishes it. Their outcomes say released."""
        keys = {(int(t), int(a)) for t, a in leases}
        with self._state:
            self._withdrawn |= keys & self._running.keys()
        if self.batcher is not None:
            for key in keys:
                self.batcher.withdraw(key)

    def _check_withdrawn(self, key: Lease) -> None:
        with self._state:
            if key in self._withdrawn:
                raise Withdrawn("taken back by the driver")

    def _note_computing(self, keys: frozenset[Hashable] | set[Lease], on: bool) -> None:
        """Tasks entering (``on``) or leaving the engine: the set goes out on the results
        stream at once, ahead of any outcome that follows, for the driver to judge a crash by. On the
        way in, wait until it has left: a crash in the engine must find the driver told."""
        with self._state:
            if on:
                self._enter_engine_locked(keys)
                self._computing |= keys  # type: ignore[arg-type]
            else:
                self._computing -= keys  # type: ignore[arg-type]
                self._state.notify_all()
            if not self._streaming:  # driven by process() calls (gpu_check): no driver to tell
                return
            sent = threading.Event() if on else None
            flush = _NOTE_FLUSH_ALONE_S if self._alone & keys else _NOTE_FLUSH_S  # type: ignore[operator]
            self._finished.put(_Note(Computing(frozenset(self._computing)), sent))
        if sent is not None:
            sent.wait(_NOTE_SENT_WAIT_S)
            time.sleep(flush)

    def _enter_engine_locked(self, keys: frozenset[Hashable] | set[Lease]) -> None:
        """A task that runs alone (it crashed a worker before) enters the engine only when nothing
        else is inside, and nothing enters beside it: one preparing while another's batch decodes
        would share its suspicion should the process die. Those waiting for it hold others back."""
        alone = bool(self._alone & keys)  # type: ignore[operator]
        self._alone_waiting += alone
        try:
            while (self._computing & self._alone) or (self._computing if alone else self._alone_waiting):
                self._state.wait()
        finally:
            self._alone_waiting -= alone

    @contextmanager
    def _computing_on(self, key: Lease) -> Iterator[None]:
        self._note_computing({key}, True)
        try:
            yield
        finally:
            self._note_computing({key}, False)

    def _running_task(self, p: _Progress, now: float) -> RunningTask:
        stage, stage_started = p.stage, p.stage_started
        done = total = 0
        if self.batcher is not None and stage is Waiting.BATCHED:
            stage_started = max(stage_started, self.batcher.last_progress)
            done, total = self.batcher.progress((p.task_id, p.attempt))
        return RunningTask(
            p.task_id, p.attempt, stage, now - p.started, max(0.0, now - stage_started), p.audio_duration_s,
            windows_done=done, windows_total=total,
        )

    def _wants_locked(self) -> int:
        """Free pipeline threads, fewer when the audio already held (plus what the tasks not yet
        decoded will likely add, at the mean duration seen so far) nears the memory bound."""
        w = self.config.worker
        room = w.max_tasks_in_hand - len(self._running)
        if self._buffered_s >= w.max_buffered_audio_s:
            return 0
        if self._mean_audio_s:
            undecoded = sum(1 for p in self._running.values() if p.audio_duration_s is None)
            fits = int((w.max_buffered_audio_s - self._buffered_s) / self._mean_audio_s) - undecoded
            room = min(room, fits)
        if not self._running:  # an idle actor always takes one: a file larger than the bound goes alone
            room = max(room, 1)
        return max(0, room)

    # --- pipeline lane --------------------------------------------------------------------------

    def _room_locked(self) -> bool:
        """May one more file be decoded? Yes while the audio held, plus what the files being decoded
        will likely hold (at the mean duration seen), plus this one, fits the bound; always when the
        actor holds and decodes nothing (a file larger than the bound still goes, alone)."""
        limit = self.config.worker.max_buffered_audio_s
        if self._buffered_s == 0 and self._decoding == 0:
            return True
        if self._mean_audio_s is None:  # sizes unknown yet: one decode at a time until one is known
            return self._decoding == 0 and self._buffered_s < limit
        return self._buffered_s + (self._decoding + 1) * self._mean_audio_s <= limit

    def _admit(self, progress: _Progress) -> float:
        """Wait for room to decode, then reserve it; returns the seconds waited for held audio to
        go (0 when the wait was only for a neighbour's decode to tell its size, a few ms)."""
        t0 = time.monotonic()
        with self._state:
            if self._room_locked():
                self._decoding += 1
                return 0.0
            progress.enter(Waiting.BATCHED if self.batcher else Waiting.QUEUED)
            for_audio = False
            while not self._room_locked():
                for_audio = for_audio or self._buffered_s > 0
                self._state.wait()
            self._decoding += 1
        return time.monotonic() - t0 if for_audio else 0.0

    def _decoded(self, seconds: float | None) -> None:
        """A decode ended (``seconds`` of audio now held, or None if it failed): the reservation ends."""
        with self._state:
            self._decoding -= 1
            if seconds is not None:
                self._buffered_s += seconds
                m = self._mean_audio_s
                self._mean_audio_s = seconds if m is None else 0.9 * m + 0.1 * seconds
            self._state.notify_all()

    def _hold(self, seconds: float) -> None:
        """The next piece of a file being transcribed is decoded: held, without waiting (its task is
        already in; it replaces the piece just released)."""
        with self._state:
            self._buffered_s += seconds

    def _release(self, seconds: float) -> None:
        with self._state:
            self._buffered_s = max(0.0, self._buffered_s - seconds)
            self._state.notify_all()

    def take(self, specs: Sequence[TaskSpec]) -> None:
        """Start tasks, each on a pipeline thread of its own; their outcomes come back on :meth:`results`.
        Returns at once: the driver pays one call for many tasks."""
        for spec in specs:
            self._pipeline.submit(self._process_into_results, spec)

    def results(self) -> Iterator[list[Outcome | Computing]]:
        """The outcomes of taken tasks as they finish, for this actor's life (a Ray streaming
        generator: each item reaches the driver when it is yielded, so an outcome survives this
        actor's later death). Each item holds every outcome that finished since the last one, and
        the Computing notes among them (which tasks the engine or decoder holds now).
        One reader: its concurrency group has one thread, which this call keeps."""
        with self._state:
            self._streaming = True
        while True:
            batch = [self._finished.get()]
            if not isinstance(batch[0], _Note):  # notes go at once: a crash may follow
                time.sleep(_RESULTS_GATHER_S)
            while True:
                try:
                    batch.append(self._finished.get_nowait())
                except queue.Empty:
                    break
            yield [item.computing if isinstance(item, _Note) else item for item in batch]
            # Resumed: Ray has handed the item to its RPC to the driver.
            for item in batch:
                if isinstance(item, _Note) and item.sent is not None:
                    item.sent.set()

    def _process_into_results(self, spec: TaskSpec) -> None:
        try:
            outcome = self.process(spec)
        except BaseException as exc:  # process() reports a task's own failure itself: this is the actor's bug
            log.exception(
                "processing failed outside the task's pipeline",
                extra=task_extra(spec.task_id, spec.attempt, Stage.TRANSCRIBE, actor=self.config.name),
            )
            outcome = Outcome(spec.task_id, spec.attempt, failure=Failure.from_exception(exc, Stage.TRANSCRIBE),
                              actor=self.config.name, node_id=self._node_id)
        self._finished.put(outcome)

    def process(self, spec: TaskSpec) -> Outcome:
        """One task through the whole pipeline; its failure comes back as the outcome, never raised."""
        outcome = self._process(spec)
        metrics.observe_stages(outcome.timings)
        return outcome

    def _process(self, spec: TaskSpec) -> Outcome:
        """download -> decode and transcribe (piece by piece) -> render and upload; a failure at any
        stage is the outcome, named by its stage."""
        run = self._begin(spec)
        try:
            self._check_engine(spec)
            downloaded = self._download(run)
            transcript, duration_s = self._transcribe_file(run, downloaded)
            quality = verdict.judge(transcript, self.config.quality)
            if quality.suspect:
                log.info("transcript suspect: %s", ", ".join(quality.reasons), extra=run.extra(Stage.RENDER))
            self._deliver(run, transcript, quality)
            result = TaskResult(
                audio_duration_s=duration_s,
                language=transcript.language,
                outputs=tuple(t.uri for t in spec.outputs),
                text_preview=transcript.text[:200],
                quality=quality,
            )
            log.info("task done: %.1fs of audio in %.2fs", duration_s, time.monotonic() - run.progress.started,
                     extra=run.extra(Stage.UPLOAD))  # fmt: skip
            return run.outcome(result=result)
        except Withdrawn:
            cause = f"taken back from actor {self.config.name} (its node drains)"
            return run.outcome(release=Release(Stage.DISPATCH, cause))
        except Exception as exc:
            at = run.progress.stage
            failure = Failure.from_exception(exc, Stage.TRANSCRIBE if isinstance(at, Waiting) else at)
            log.warning("task failed: %s", failure.message,
                        extra=run.extra(failure.stage, error_class=failure.error_class,
                                        http_status=failure.http_status))  # fmt: skip
            return run.outcome(failure=failure)
        finally:
            self._end(run)

    def _begin(self, spec: TaskSpec) -> _TaskRun:
        now = time.monotonic()
        run = _TaskRun(
            spec=spec,
            progress=_Progress(spec.task_id, spec.attempt, now, stage_started=now),
            tmp=Path(tempfile.mkdtemp(prefix=f"rt-{spec.task_id}-", dir=self.config.scratch_dir)),
            actor=self.config.name,
            node_id=self._node_id,
        )
        with self._state:
            self._running[run.key] = run.progress
            if spec.alone:
                self._alone.add(run.key)
        return run

    def _end(self, run: _TaskRun) -> None:
        shutil.rmtree(run.tmp, ignore_errors=True)
        if run.held_s:
            self._release(run.held_s)
        with self._state:
            self._running.pop(run.key, None)
            self._withdrawn.discard(run.key)
            self._alone.discard(run.key)
            self._done += 1

    def _check_engine(self, spec: TaskSpec) -> None:
        if self.engine is None:  # the pool dispatches only after ready(): not the task's fault
            raise DispatchError(f"actor {self.config.name} has not loaded its model yet")
        if (spec.engine.engine, spec.engine.model) != (self.spec.engine, self.spec.model):
            raise DispatchError(
                f"task wants {spec.engine.engine}/{spec.engine.model}, "
                f"this actor serves {self.spec.engine}/{self.spec.model}"
            )

    def _download(self, run: _TaskRun) -> Downloaded:
        spec = run.spec
        with run.stage(Stage.DOWNLOAD):
            # The temporary file is named after the URI's last segment and keeps its extension,
            # which decoders sniff formats by.
            downloaded = self.transfer.download(
                spec.input_url, run.tmp, name_hint=spec.input_uri, task_id=spec.task_id, attempt=spec.attempt
            )
        self._check_withdrawn(run.key)
        return downloaded

    def _transcribe_file(self, run: _TaskRun, downloaded: Downloaded) -> tuple[Transcript, float]:
        """Decode (in a helper process: a crash there is this file's, not the actor's) and transcribe,
        a piece of at most ``worker.stream_chunk_s`` at a time, holding one piece; the pieces'
        transcripts joined in file time. Returns the transcript and the audio's duration."""
        spec, progress = run.spec, run.progress
        waited = self._admit(progress)
        if waited:  # waited for room under worker.max_buffered_audio_s
            run.timings.append(("memory", round(waited, 4)))
        stream: audio.ChildStream | None = None
        try:
            self._check_withdrawn(run.key)
            with run.stage(Stage.DECODE):
                stream = self._decoders.open(downloaded.path)
                chunks = _Chunks(stream, self._chunk_samples)
                chunk = chunks.next()
        except BaseException:
            self._decoded(None)
            if stream is not None:
                stream.close()
            raise
        with stream:
            run.held_s = chunk.size / SAMPLE_RATE
            info = stream.info
            assert info is not None  # open() read it
            progress.audio_duration_s = run.held_s if chunks.done else (info.declared_s or run.held_s)
            self._decoded(run.held_s)
            parts: list[Transcript] = []
            while True:
                if chunks.done:  # the whole rest is in: the helper and the scratch file can go
                    stream.close()
                    downloaded.path.unlink(missing_ok=True)
                parts.append(self._transcribe(spec, chunk, progress, run.timings, chunks.offset, _language(parts)))
                if chunks.done:
                    break
                del chunk  # the samples of this piece: the next replaces them
                self._release(run.held_s)
                run.held_s = 0.0
                with run.stage(Stage.DECODE):
                    chunk = chunks.next()
                run.held_s = chunk.size / SAMPLE_RATE
                self._hold(run.held_s)
                if chunks.done:
                    progress.audio_duration_s = chunks.total_s
        for warning in stream.warnings:
            log.warning("decoded with a warning: %s", warning, extra=run.extra(Stage.DECODE))
        del chunk  # the samples: the transcript is all that is left to render
        self._release(run.held_s)
        run.held_s = 0.0
        return _joined(parts, spec.options, chunks.total_s), chunks.total_s

    def _deliver(self, run: _TaskRun, transcript: Transcript, quality: verdict.TranscriptQuality) -> None:
        spec = run.spec
        with run.stage(Stage.RENDER):
            bodies = formats.render_all(transcript, [t.format for t in spec.outputs], quality)
        with run.stage(Stage.UPLOAD):
            for target in spec.outputs:
                self.transfer.upload(
                    target.put_url, bodies[target.format], target.content_type,
                    task_id=spec.task_id, attempt=spec.attempt,
                )  # fmt: skip

    def _transcribe(
        self, spec: TaskSpec, samples: np.ndarray, progress: _Progress, timings: list[tuple[str, float]],
        offset: int = 0, language: str | None = None,
    ) -> Transcript:
        """One piece of a file (``offset`` samples into it; all of it for most files), its segments
        in file time. ``language``: the one its first piece settled, for the pieces after it.
        Batched: prepare (windows, language) in this thread, then wait for the batcher. Sequential:
        the compute lock and ``engine.transcribe``. Timings name the wait and the work apart."""
        engine = self.engine
        assert engine is not None  # process() checked it
        key = (spec.task_id, spec.attempt)
        options = spec.options
        if language is not None and options.language is None:
            options = replace(options, language=language)
        offset_s = offset / SAMPLE_RATE
        try:
            if self.batcher is None:
                progress.enter(Waiting.QUEUED)
                queued_at = time.monotonic()
                with self._compute:  # one transcription at a time owns the device
                    # Time spent waiting for the device: the pipelining at work, not overhead.
                    timings.append((Waiting.QUEUED.value, round(time.monotonic() - queued_at, 4)))
                    progress.enter(Stage.TRANSCRIBE)
                    t = time.monotonic()
                    try:
                        with self._computing_on(key):
                            return _shifted(engine.transcribe(samples, options), offset_s)
                    finally:
                        timings.append((Stage.TRANSCRIBE.value, round(time.monotonic() - t, 4)))
            progress.enter(Waiting.QUEUED)
            t = time.monotonic()
            with self._computing_on(key):
                timings.append((Waiting.QUEUED.value, round(time.monotonic() - t, 4)))
                progress.enter(Stage.TRANSCRIBE)
                t = time.monotonic()
                prepared = _prepared_at(engine.prepare(samples, options), offset_s)  # type: ignore[attr-defined]
            timings.append(("prepare", round(time.monotonic() - t, 4)))
            self._check_withdrawn(key)
            progress.enter(Waiting.BATCHED)
            t = time.monotonic()
            transcript, decoding_s = self.batcher.transcribe(key, prepared, options, alone=spec.alone)
            # "batched": waiting for a batch; "transcribe": first window in a batch -> last window done.
            total = time.monotonic() - t
            timings.append((Waiting.BATCHED.value, round(max(0.0, total - decoding_s), 4)))
            timings.append((Stage.TRANSCRIBE.value, round(decoding_s, 4)))
            return transcript
        except (RayTranscribeError, Withdrawn):
            raise
        except Exception as exc:  # an engine bug is still this task's failure
            raise TranscriptionError(f"{type(exc).__name__}: {exc}") from exc


class _Chunks:
    """A file's samples from its decode helper in pieces of at most ``size``: each but the last cut
    at the quietest moment of its last seconds (as a window is), the rest carried into the next."""

    def __init__(self, stream: audio.ChildStream, size: int) -> None:
        self.stream, self.size = stream, size
        self.offset = 0  # where the piece last returned starts in the file, in samples
        self.done = False  # the piece last returned is the file's last
        self._next_offset = 0
        self._carry = np.zeros(0, dtype=np.float32)

    @property
    def total_s(self) -> float:
        return self._next_offset / SAMPLE_RATE

    def next(self) -> np.ndarray:
        fresh = self.stream.read(self.size - self._carry.size)
        piece = np.concatenate([self._carry, fresh]) if self._carry.size else fresh
        self.offset = self._next_offset
        if piece.size < self.size:
            self.done = True
            self._carry = np.zeros(0, dtype=np.float32)
        else:
            cut = piece.size - WINDOW_SAMPLES + quietest_cut(piece[-WINDOW_SAMPLES:])
            self._carry = piece[cut:].copy()  # a copy: a view would keep the whole piece alive
            piece = piece[:cut]
        self._next_offset = self.offset + piece.size
        return piece


def _language(parts: Sequence[Transcript]) -> str | None:
    """The language a file's first pieces settled, for the rest (None until one did)."""
    return next((p.language for p in parts if p.language), None)


def _prepared_at(prepared: PreparedAudio, offset_s: float) -> PreparedAudio:
    """``prepared`` of a piece starting ``offset_s`` into its file, in file time."""
    if not offset_s:
        return prepared
    windows = tuple(
        Window(
            start_s=w.start_s + offset_s,
            samples=w.samples,
            breaks=tuple((bw, bf + offset_s) for bw, bf in w.breaks) if w.breaks else None,
        )
        for w in prepared.windows
    )
    return replace(prepared, windows=windows, duration_s=prepared.duration_s + offset_s)


def _shifted(transcript: Transcript, offset_s: float) -> Transcript:
    """A piece's transcript (the sequential path) in file time."""
    if not offset_s:
        return transcript
    segments = tuple(
        replace(
            s, start=s.start + offset_s, end=s.end + offset_s,
            words=tuple(replace(w, start=w.start + offset_s, end=w.end + offset_s) for w in s.words)
            if s.words is not None else None,
        )  # fmt: skip
        for s in transcript.segments
    )
    return replace(transcript, segments=segments, duration_s=transcript.duration_s + offset_s)


def _joined(parts: Sequence[Transcript], options: TranscribeOptions, duration_s: float) -> Transcript:
    """One transcript of a file's pieces (each already in file time)."""
    if len(parts) == 1:
        return parts[0]
    first = next((p for p in parts if p.language), parts[0])
    speech = [p.speech_s for p in parts if p.speech_s is not None]
    return replace(
        first,
        segments=tuple(s for p in parts for s in p.segments),
        duration_s=duration_s,
        options=options,
        speech_s=round(sum(speech), 3) if speech else None,  # the VAD's seconds over every piece
    )


def _summed(timings: Sequence[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """One entry per stage (a file decoded and transcribed in pieces visits them several times)."""
    total: dict[str, float] = {}
    for name, seconds in timings:
        total[name] = total.get(name, 0.0) + seconds
    return tuple((name, round(seconds, 4)) for name, seconds in total.items())


def transfer_class(path: str) -> type[Transfer]:
    """The class ``worker.transfer_class`` names (``module:Class``): transfer.Transfer, or a plug-in
    with its download and upload."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"worker.transfer_class must be 'module:Class', got {path!r}")
    return getattr(importlib.import_module(module), name)


def worker_actor_class(worker: type[TranscriptionWorker] = TranscriptionWorker):
    """The Ray actor class of ``worker`` (TranscriptionWorker, or a subclass of it). Tasks run on
    the worker's own pipeline threads (``take``); Ray's threads only carry the calls."""
    return ray.remote(
        # ready() waits out the model's download and load in a group of its own: pings still answer.
        # take() and results() have a thread each: neither waits behind pings or the other.
        concurrency_groups={"control": 1, "startup": 1, "inbox": 1, "results": 1},
        max_restarts=0,  # its pool replaces actors itself, and fails their tasks over first
        max_task_retries=0,
    )(worker)


def method_groups() -> None:
    """Bind methods to concurrency groups (done once at import; Ray reads the attributes)."""
    TranscriptionWorker.take = ray.method(concurrency_group="inbox")(TranscriptionWorker.take)
    TranscriptionWorker.results = ray.method(concurrency_group="results", num_returns="streaming")(
        TranscriptionWorker.results
    )
    TranscriptionWorker.ping = ray.method(concurrency_group="control")(TranscriptionWorker.ping)
    TranscriptionWorker.withdraw = ray.method(concurrency_group="control")(TranscriptionWorker.withdraw)
    TranscriptionWorker.ready = ray.method(concurrency_group="startup")(TranscriptionWorker.ready)


method_groups()
