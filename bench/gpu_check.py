"""GPU check: a worker actor that reserves a GPU through Ray runs its model on that GPU.

    python bench/gpu_check.py                                   # faster-whisper tiny.en, 1 GPU
    python bench/gpu_check.py --engine openai-whisper --model /path/to/checkpoint.pt
    RAY_ADDRESS=auto python bench/gpu_check.py --actors 2      # on a running cluster

It starts (or joins) Ray, starts ``--actors`` production ``TranscriptionWorker`` actors reserving
``--num-gpus`` each, serves the shipped speech samples from a local HTTP server that also takes the
uploads (standing in for presigned S3 URLs: no database, no AWS), processes every sample on every
actor, and prints per actor its GPU ids, the device and compute type its engine resolved and the
GPU's name, and per task the transcribe time and WER. Exit status 1 when an actor with a GPU would
run on the CPU (with ``--device auto``, the default, such an actor refuses to start and this prints
why: a missing libcublas.so.12, no driver), or a task failed. Run it on a new cluster before a
backfill (``ray job submit -- python bench/gpu_check.py``): it checks the CUDA libraries, the model
and Ray's GPU accounting together, in a minute.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from raytranscribe.contracts import OutputTarget, TaskSpec  # noqa: E402
from raytranscribe.engines.base import EngineSpec, TranscribeOptions  # noqa: E402
from raytranscribe.formats import CONTENT_TYPES  # noqa: E402
from raytranscribe.pool import death_cause  # noqa: E402
from raytranscribe.samples import expected_text, sample_paths  # noqa: E402
from raytranscribe.worker import WorkerConfig, worker_actor_class  # noqa: E402


class _Store(BaseHTTPRequestHandler):
    """GET /in/<sample> serves a shipped sample; PUT /out/<key> keeps the body and answers its MD5."""

    files: dict[str, bytes] = {}
    uploads: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def do_PUT(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.uploads[self.path] = body
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.md5(body).hexdigest()}"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _wer(ref: str, hyp: str) -> float:
    import jiwer

    norm = lambda t: " ".join(re.sub(r"[^\w\s]", " ", t.lower().replace("'", "")).split())  # noqa: E731
    return float(jiwer.wer(norm(ref), norm(hyp) or ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="faster-whisper")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--num-gpus", type=float, default=1.0)
    parser.add_argument("--device", default="auto", help="auto (what a backfill uses), cuda or cpu")
    parser.add_argument("--compute-type", default="default")
    parser.add_argument("--start-timeout", type=float, default=1800.0,
                        help="seconds an actor may take to start: on a fresh cluster the autoscaler first boots a "
                             "GPU node and pulls the image")
    parser.add_argument("--host", default="auto",
                        help="address the actors reach this script's HTTP server on; auto: this node's IP as Ray "
                             "sees it (a `ray job` driver on the head, actors on GPU nodes)")
    args = parser.parse_args(argv)
    if args.host == "auto":
        args.host = ray.util.get_node_ip_address()

    _Store.files = {f"/in/{p.name}": p.read_bytes() for p in sample_paths()}
    server = ThreadingHTTPServer((args.host, 0), _Store)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://{args.host}:{server.server_address[1]}"

    ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    print(f"ray: {ray.cluster_resources().get('GPU', 0):g} GPU(s) in the cluster")
    cls = worker_actor_class()
    engine = EngineSpec(engine=args.engine, model=args.model, device=args.device, compute_type=args.compute_type)
    started = [
        cls.options(num_gpus=args.num_gpus, num_cpus=1).remote(WorkerConfig(name=f"gpu-check-{i}", engine=engine))
        for i in range(args.actors)
    ]
    failures = 0
    actors, pings = [], []
    for i, actor in enumerate(started):
        try:
            ping = ray.get(actor.ready.remote(), timeout=args.start_timeout)
        except ray.exceptions.RayError as exc:  # the actor refused to start: say why, once
            failures += 1
            print(f"actor gpu-check-{i}: did not start: {death_cause(exc)}")
            continue
        on_cpu = bool(ping.gpu_ids) and ping.device != "cuda"
        failures += on_cpu
        actors.append(actor)
        pings.append(ping)
        gpu = f" ({ping.gpu_name})" if ping.gpu_name else ""
        print(f"actor {ping.name}: GPU ids {list(ping.gpu_ids)}{gpu}, engine {ping.engine} {ping.model} "
              f"on {ping.device} ({ping.compute_type})"
              + ("   <-- reserved a GPU but runs on the CPU" if on_cpu else ""))  # fmt: skip

    task_id = 0
    for actor, ping in zip(actors, pings):
        for path in sample_paths():
            task_id += 1
            outputs = tuple(
                OutputTarget(fmt, f"{base}/out/{task_id}.{fmt}", f"s3://gpu-check/{task_id}.{fmt}", CONTENT_TYPES[fmt])
                for fmt in ("json", "txt")
            )
            spec = TaskSpec(task_id, 1, f"{base}/in/{path.name}", f"s3://gpu-check/{path.name}", outputs, engine,
                            TranscribeOptions(beam_size=5))  # fmt: skip
            outcome = ray.get(actor.process.remote(spec), timeout=600)
            timings = dict(outcome.timings)
            if outcome.ok:
                text = _Store.uploads[f"/out/{task_id}.txt"].decode()
                print(f"  {ping.name} {path.name:12s} transcribe {timings.get('transcribe', 0):6.3f} s  "
                      f"audio {outcome.result.audio_duration_s:5.1f} s  WER {_wer(expected_text(path.name), text):.2f}")  # fmt: skip
            else:
                failures += 1
                print(f"  {ping.name} {path.name:12s} FAILED at {outcome.failure.stage.value}: {outcome.failure.message}")
    server.shutdown()
    ray.shutdown()
    print("gpu check:", "ok" if failures == 0 else f"{failures} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
