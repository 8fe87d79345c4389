"""Control-plane benchmark: how many tasks per second the driver moves, and its CPU per task, beside
Ray's own ceiling on this machine (a bare actor-call loop with the same number of actors).

    .venv/bin/python bench/control_plane.py                   # 4,000 tasks, 8 actors, both system runs
    .venv/bin/python bench/control_plane.py --tasks 600       # a quick check that it runs
    .venv/bin/python bench/control_plane.py --transfers http  # only the run with HTTP transfers

(a) the system: a fresh PostgreSQL database (the real store), a local Ray with ``--actors`` logical
    GPUs, one worker actor per logical GPU with a no-op engine (``bench.noop:NoopEngine``: no
    model, no audio work), N submitted tasks and an :class:`Orchestrator` run until drained.
    Presigning is the real ``S3Storage`` (botocore's signer), five URLs a task. Two runs of the
    production worker: ``none``: its files moved by nobody, through its public plug-in options
    (``worker.transfer_class = bench.noop:NoTransfer``, ``worker.decoder = bench.noop:open_silence``:
    no download, no upload, 0.1 s of silence decoded; what the driver can move); ``http``: its tiny
    transfers (a 0.1 s WAV in, four small outputs out) going to a minimal local HTTP server in its
    own process (``sink``), which answers like S3 without checking signatures, so S3's own speed
    (moto spends milliseconds a request) stays out.
(b) bare Ray: the same number of plain actors, a driver loop that keeps as many calls in flight per
    actor as the system does, each call taking one small payload and returning one.

Figures: tasks/s over the steady window (first claim -> last outcome written; for bare Ray, first
call -> last result) and the driver process's CPU (all its threads: orchestrator loop, Ray's core
worker threads, database driver) divided by the tasks. The store, the HTTP server and the actors
run in other processes and are not counted as driver CPU. Headlines, last: ``tasks/s``, ``driver
ms/task`` and ``ratio system/bare-ray`` (tasks/s), of the first system run (``none`` by default).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import logging
import multiprocessing
import os
import socket
import sys
import threading
import time
import uuid
import wave
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from raytranscribe.config import EngineSettings, S3Settings, Settings, WorkerSettings  # noqa: E402
from raytranscribe.contracts import Outcome  # noqa: E402
from raytranscribe.engines.base import TranscribeOptions  # noqa: E402
from raytranscribe.store import NewTask, RecordResult, Store, TaskStatus  # noqa: E402
from raytranscribe.store.admin import create_database, drop_database, scratch_server_url  # noqa: E402

from bench.noop import NO_TRANSFER, SILENCE  # noqa: E402

ENGINE = "bench.noop:NoopEngine"
TARGET_RATE = 1000.0
TARGET_DRIVER_MS = 1.0


def tiny_wav(seconds: float = 0.1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x01\x00" * int(16000 * seconds))
    return buf.getvalue()


# --- the HTTP sink: S3-shaped answers, no storage, no signature checks ---------------------------


async def _serve(conn_r: asyncio.StreamReader, conn_w: asyncio.StreamWriter, body: bytes) -> None:
    try:
        while True:
            head = await conn_r.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method = lines[0].split(" ", 1)[0]
            length = 0
            for line in lines[1:]:
                if line[:15].lower() == "content-length:":
                    length = int(line[15:].strip())
            data = await conn_r.readexactly(length) if length else b""
            if method == "PUT":
                etag = hashlib.md5(data).hexdigest()
                conn_w.write(f'HTTP/1.1 200 OK\r\nETag: "{etag}"\r\nContent-Length: 0\r\n\r\n'.encode())
            else:
                head = b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: %d\r\n\r\n" % len(body)
                conn_w.write(head + body)
            await conn_w.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        conn_w.close()


def _sink_main(sock: socket.socket, body: bytes) -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: _serve(r, w, body), sock=sock)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def start_sink(processes: int) -> tuple[str, list[multiprocessing.Process]]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_sink_main, args=(sock, tiny_wav()), daemon=True) for _ in range(processes)]
    for p in procs:
        p.start()
    host, port = sock.getsockname()
    return f"http://{host}:{port}", procs


# --- driver CPU ----------------------------------------------------------------------------------


def driver_cpu_s() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


@dataclass(frozen=True)
class Result:
    name: str
    tasks: int
    wall_s: float
    driver_cpu_s: float

    @property
    def rate(self) -> float:
        return self.tasks / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def driver_ms(self) -> float:
        return 1000.0 * self.driver_cpu_s / self.tasks if self.tasks else 0.0


class Window:
    """Orchestrator observer and store wrapper notes: steady window from the first claim to the
    last outcome written, and the driver's CPU at both ends."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.start: tuple[float, float] | None = None
        self.end: tuple[float, float] | None = None

    def claimed(self) -> None:
        if self.start is None:
            self.start = (time.perf_counter(), driver_cpu_s())

    def recorded(self, outcome: Outcome, result: RecordResult) -> None:
        self.count += 1
        if self.count == self.expected:
            self.end = (time.perf_counter(), driver_cpu_s())

    def heartbeat(self, orchestrator) -> None:
        pass


class WindowStore(Store):
    window: Window | None = None

    def claim(self, *args, **kwargs):
        claimed = super().claim(*args, **kwargs)
        if claimed and self.window is not None:
            self.window.claimed()
        return claimed


def run_system(database_url: str, endpoint: str, tasks: int, actors: int, prefetch: int, transfers: str) -> Result:
    """The whole system on ``tasks`` fresh tasks; ``transfers``: "http" (the production worker, its
    transfers to the sink) or "none" (the production worker with bench.noop's stand-ins for its file work)."""
    from raytranscribe.orchestrator import Orchestrator, RunOptions
    from raytranscribe.storage import S3Storage

    stand_ins = {"transfer_class": NO_TRANSFER, "decoder": SILENCE} if transfers == "none" else {}
    settings = Settings(
        database_url=database_url,
        s3=S3Settings(endpoint_url=endpoint),
        engine=EngineSettings(engine=ENGINE, model="noop", device="cpu", cpu_threads=1),
        worker=WorkerSettings(min_actors=actors, max_actors=actors, num_gpus=1, num_cpus=0, prefetch=prefetch,
                              **stand_ins),
        namespace=f"rt-bench-{uuid.uuid4().hex[:6]}",
        log_level="WARNING",
    )
    store = WindowStore(database_url, settings=settings)
    try:
        store.upgrade()
        bucket = "bench-in"
        batch = [
            NewTask(f"s3://{bucket}/in/{i:06d}.wav", f"s3://bench-out/out/{i:06d}", engine=ENGINE, model="noop",
                    options=TranscribeOptions())
            for i in range(tasks)
        ]
        report = store.submit(batch)
        if len(report.inserted) != tasks:
            raise RuntimeError(f"submitted {len(report.inserted)} of {tasks}")
        window = Window(tasks)
        store.window = window
        options = RunOptions(until_drained=True, idle_poll_s=0.2)
        orch = Orchestrator(settings, store, S3Storage(settings.s3), options=options, observer=window)
        box: dict[str, object] = {}

        def go() -> None:
            try:
                box["summary"] = orch.run()
            except BaseException as exc:  # re-raised below
                box["error"] = exc

        runner = threading.Thread(target=go, name="orchestrator", daemon=True)
        runner.start()
        runner.join(900)
        if runner.is_alive():
            orch.request_stop()
            runner.join(30)
            raise RuntimeError("the system run did not drain within 900 s")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        counts = store.count_by_status(report.inserted)
        if counts[TaskStatus.COMPLETED] != tasks:
            raise RuntimeError(f"not every task completed: {counts}")
        assert window.start and window.end
        name = "system, no transfers" if transfers == "none" else "system, HTTP transfers"
        return Result(name, tasks, window.end[0] - window.start[0], window.end[1] - window.start[1])
    finally:
        store.close()


def run_bare_ray(tasks: int, actors: int, in_flight_per_actor: int) -> Result:
    import ray

    @ray.remote(num_gpus=1, num_cpus=0)
    class Bare:
        def work(self, payload: tuple[int, str]) -> tuple[int, str]:
            return payload

    pool = [Bare.remote() for _ in range(actors)]
    ray.get([a.work.remote((0, "warm")) for a in pool])
    payload_url = "http://127.0.0.1:1/bench-in/in/000000.wav?" + "X" * 400  # about a presigned URL's size
    refs: dict[ray.ObjectRef, int] = {}
    sent = done = 0
    t0, c0 = time.perf_counter(), driver_cpu_s()
    load = [0] * actors
    while done < tasks:
        for i, actor in enumerate(pool):
            while load[i] < in_flight_per_actor and sent < tasks:
                refs[actor.work.remote((sent, payload_url))] = i
                load[i] += 1
                sent += 1
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
        if ready:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for value, ref in zip(ray.get(ready), ready):
            load[refs.pop(ref)] -= 1
            done += 1
    result = Result("bare ray", tasks, time.perf_counter() - t0, driver_cpu_s() - c0)
    for a in pool:
        ray.kill(a)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=4000)
    p.add_argument("--actors", type=int, default=8)
    p.add_argument("--prefetch", type=int, default=WorkerSettings().prefetch, help="tasks in flight per actor")
    p.add_argument("--transfers", default="none,http",
                   help="system runs: none (bench.noop's stand-ins: no file work), http (to the local sink), or both")
    p.add_argument("--sink-processes", type=int, default=max(1, min(4, (os.cpu_count() or 2) // 4)))
    p.add_argument("--database-url", default=None, help="server to create the bench databases on")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.transfers.split(",") if m.strip()]
    if not modes or set(modes) - {"none", "http"}:
        p.error(f"--transfers takes none, http or both, got {args.transfers!r}")
    logging.basicConfig(level=logging.WARNING)

    import ray

    endpoint, sink = start_sink(args.sink_processes)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    admin = scratch_server_url(args.database_url or os.environ.get("RAYTRANSCRIBE_DATABASE_URL"))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(
        address="local",
        num_cpus=os.cpu_count() or 2,
        num_gpus=args.actors,  # logical GPUs: one per actor, as in production
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    systems: list[Result] = []
    try:
        bare = run_bare_ray(args.tasks, args.actors, args.prefetch)
        for mode in modes:
            database_url = create_database(admin, prefix="rt_bench_cp")
            try:
                systems.append(run_system(database_url, endpoint, args.tasks, args.actors, args.prefetch, mode))
            finally:
                drop_database(database_url)
    finally:
        ray.shutdown()
        for proc in sink:
            proc.kill()

    print(f"control plane: {args.tasks} tasks, {args.actors} actors on logical GPUs, "
          f"{args.prefetch} in flight per actor, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{'':24} {'tasks/s':>9} {'driver ms/task':>15} {'wall s':>8} {'vs bare ray':>12}")
    for r in (*systems, bare):
        print(f"{r.name:24} {r.rate:9.0f} {r.driver_ms:15.3f} {r.wall_s:8.2f} {r.rate / bare.rate:11.2f}x")
    print(f"targets: >= {TARGET_RATE:.0f} tasks/s, <= {TARGET_DRIVER_MS:.1f} driver ms/task")
    # The headlines are the first system run's: without transfers unless --transfers says otherwise
    # (the actors' own HTTP work bounds the other run on a small machine, not the driver).
    head = systems[0]
    print(f"tasks/s: {head.rate:.0f}")
    print(f"driver ms/task: {head.driver_ms:.3f}")
    print(f"ratio system/bare-ray: {head.rate / bare.rate:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
