"""The worker actor: one resident Whisper model, a download/decode/transcribe/render/upload pipeline.

A worker holds no database connection and no AWS credentials: it sees presigned URLs and returns an
:class:`~raytranscribe.contracts.Outcome`. It never raises for a task's own failure; an exception
that escapes ``process`` means the actor itself is broken.

Pipelining: ``process`` calls run on a thread pool (the ``pipeline`` concurrency group, sized by
``prefetch``), and only the transcription holds the compute lock. While one task owns the GPU, the
next one downloads and decodes and the previous one uploads, so the GPU does not sit idle while
files move. ``ping`` has its own group, so it answers while every pipeline thread is busy.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import ray

from raytranscribe import audio, formats
from raytranscribe.config import TransferSettings
from raytranscribe.contracts import Outcome, TaskResult, TaskSpec
from raytranscribe.engines import load_engine
from raytranscribe.engines.base import EngineSpec
from raytranscribe.errors import DispatchError, Failure, RayTranscribeError, Stage, TranscriptionError
from raytranscribe.logs import task_extra
from raytranscribe.transfer import Transfer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    engine: EngineSpec
    transfer: TransferSettings = TransferSettings()
    scratch_dir: str | None = None  # None: the system temp dir
    log_level: str = "INFO"


QUEUED = "queued"  # waiting for the compute lock behind another task: not hung, just patient


@dataclass(frozen=True)
class RunningTask:
    task_id: int
    attempt: int
    stage: str  # a Stage value, or QUEUED
    running_s: float  # since process() began
    stage_s: float  # in the current stage
    audio_duration_s: float | None


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


@dataclass
class _Progress:
    task_id: int
    attempt: int
    started: float
    stage: str = Stage.DOWNLOAD.value
    stage_started: float = 0.0
    audio_duration_s: float | None = None

    def enter(self, stage: str) -> None:
        self.stage, self.stage_started = stage, time.monotonic()


class TranscriptionWorker:
    """Plain class; :func:`worker_actor_class` wraps it with ``ray.remote`` and concurrency groups."""

    def __init__(self, config: WorkerConfig) -> None:
        from raytranscribe import logs

        logs.configure(config.log_level)
        self.config = config
        spec = config.engine
        if spec.device == "auto" and not ray.get_gpu_ids():
            # No GPU reserved for this actor: never grab one that belongs to a neighbour.
            spec = dataclasses.replace(spec, device="cpu")
        self.spec = spec
        t0 = time.monotonic()
        # Raises ModelLoadError (permanent) when the model cannot load: the actor dies at start-up
        # and the health monitor counts a start failure instead of dispatching to it.
        self.engine = load_engine(spec)
        self.transfer = Transfer(config.transfer)
        self._compute = threading.Lock()
        self._state = threading.Lock()
        self._running: dict[tuple[int, int], _Progress] = {}
        self._done = 0
        ctx = ray.get_runtime_context()
        self._actor_id = ctx.get_actor_id() or ""
        self._node_id = ctx.get_node_id() or ""
        log.info(
            "worker %s ready: %s %s on %s in %.1fs",
            config.name,
            spec.engine,
            spec.model,
            spec.device,
            time.monotonic() - t0,
            extra={"actor": config.name},
        )

    # --- control lane ---------------------------------------------------------------------------

    def ready(self) -> PingReply:
        return self.ping()

    def ping(self) -> PingReply:
        now = time.monotonic()
        with self._state:
            running = tuple(
                RunningTask(p.task_id, p.attempt, p.stage, now - p.started, now - p.stage_started, p.audio_duration_s)
                for p in self._running.values()
            )
            done = self._done
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
        )

    # --- pipeline lane --------------------------------------------------------------------------

    def process(self, spec: TaskSpec) -> Outcome:
        key = (spec.task_id, spec.attempt)
        progress = _Progress(spec.task_id, spec.attempt, time.monotonic(), stage_started=time.monotonic())
        with self._state:
            self._running[key] = progress
        timings: list[tuple[str, float]] = []
        ident = {"actor": self.config.name, "node_id": self._node_id}

        @contextmanager
        def stage(s: Stage):
            progress.enter(s.value)
            t = time.monotonic()
            try:
                yield
            finally:
                timings.append((s.value, round(time.monotonic() - t, 4)))

        tmp = Path(tempfile.mkdtemp(prefix=f"rt-{spec.task_id}-", dir=self.config.scratch_dir))
        try:
            if (spec.engine.engine, spec.engine.model) != (self.spec.engine, self.spec.model):
                raise DispatchError(
                    f"task wants {spec.engine.engine}/{spec.engine.model}, "
                    f"this actor serves {self.spec.engine}/{self.spec.model}"
                )
            name_hint = spec.input_uri.rsplit("/", 1)[-1] or "input"
            with stage(Stage.DOWNLOAD):
                downloaded = self.transfer.download(spec.input_url, tmp, name_hint=name_hint)
            with stage(Stage.DECODE):
                decoded = audio.decode(downloaded.path)
                downloaded.path.unlink(missing_ok=True)  # free scratch space before the long part
                progress.audio_duration_s = decoded.duration_s
            progress.enter(QUEUED)
            queued_at = time.monotonic()
            with self._compute:  # one transcription at a time owns the device
                # Time spent waiting for the device: the pipelining at work, not overhead.
                timings.append((QUEUED, round(time.monotonic() - queued_at, 4)))
                with stage(Stage.TRANSCRIBE):
                    try:
                        transcript = self.engine.transcribe(decoded.samples, spec.options)
                    except RayTranscribeError:
                        raise
                    except Exception as exc:  # an engine bug is still this task's failure
                        raise TranscriptionError(f"{type(exc).__name__}: {exc}") from exc
            with stage(Stage.RENDER):
                bodies = formats.render_all(transcript, [t.format for t in spec.outputs])
            with stage(Stage.UPLOAD):
                for target in spec.outputs:
                    self.transfer.upload(target.put_url, bodies[target.format], target.content_type)
            result = TaskResult(
                audio_duration_s=decoded.duration_s,
                language=transcript.language,
                outputs=tuple(t.uri for t in spec.outputs),
                text_preview=transcript.text[:200],
            )
            log.info(
                "task done: %.1fs of audio in %.2fs",
                decoded.duration_s,
                time.monotonic() - progress.started,
                extra=task_extra(spec.task_id, spec.attempt, Stage.UPLOAD, actor=self.config.name),
            )
            return Outcome(spec.task_id, spec.attempt, result=result, timings=tuple(timings), **ident)
        except Exception as exc:
            failure = Failure.from_exception(exc, Stage(progress.stage) if progress.stage != QUEUED else Stage.TRANSCRIBE)
            log.warning(
                "task failed: %s",
                failure.message,
                extra=task_extra(
                    spec.task_id,
                    spec.attempt,
                    failure.stage,
                    actor=self.config.name,
                    error_class=failure.error_class,
                    http_status=failure.http_status,
                ),
            )
            return Outcome(spec.task_id, spec.attempt, failure=failure, timings=tuple(timings), **ident)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            with self._state:
                self._running.pop(key, None)
                self._done += 1


def worker_actor_class(prefetch: int):
    """The Ray actor class: ``prefetch`` pipeline threads plus one control thread for pings."""
    cls = ray.remote(
        concurrency_groups={"pipeline": max(1, prefetch), "control": 1},
        max_restarts=0,  # the health monitor replaces actors itself, and fails their tasks over first
        max_task_retries=0,
    )(TranscriptionWorker)
    return cls


def method_groups() -> None:
    """Bind methods to concurrency groups (done once at import; Ray reads the attributes)."""
    TranscriptionWorker.process = ray.method(concurrency_group="pipeline")(TranscriptionWorker.process)
    TranscriptionWorker.ping = ray.method(concurrency_group="control")(TranscriptionWorker.ping)
    TranscriptionWorker.ready = ray.method(concurrency_group="control")(TranscriptionWorker.ready)


method_groups()
