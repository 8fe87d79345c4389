"""Ray metrics (``ray.util.metrics``): exported on each node's metrics endpoint, scraped by the
Ray dashboard's Prometheus/Grafana setup. Names carry the ``raytranscribe_`` prefix.

Metric objects are created lazily, once per process, because they need a connected Ray.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ray.util import metrics as m

_STAGE_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900]


@dataclass
class Metrics:
    tasks_finished: m.Counter
    stage_seconds: m.Histogram
    queue_depth: m.Gauge
    in_flight: m.Gauge
    live_actors: m.Gauge
    audio_seconds: m.Counter
    rtfx: m.Gauge
    breaker_open: m.Gauge
    database_up: m.Gauge
    store_transient_errors: m.Counter
    suspect_transcripts: m.Counter


_lock = threading.Lock()
_metrics: Metrics | None = None


def get() -> Metrics:
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics(
                tasks_finished=m.Counter(
                    "raytranscribe_tasks_finished",
                    "Task attempts finished, by outcome (completed|retry|dead|fenced|released) and stage",
                    tag_keys=("outcome", "stage"),
                ),
                stage_seconds=m.Histogram(
                    "raytranscribe_stage_seconds",
                    "Wall time of each pipeline stage, recorded by the workers themselves",
                    boundaries=_STAGE_BUCKETS,
                    tag_keys=("stage",),
                ),
                queue_depth=m.Gauge("raytranscribe_queue_depth", "Tasks by status", tag_keys=("status",)),
                in_flight=m.Gauge("raytranscribe_tasks_in_flight", "Tasks dispatched and not yet recorded"),
                live_actors=m.Gauge(
                    "raytranscribe_live_actors",
                    "Worker actors answering pings, by pool and where they compute (device, compute type)",
                    tag_keys=("pool", "device", "compute_type"),
                ),
                audio_seconds=m.Counter("raytranscribe_audio_seconds", "Audio seconds transcribed"),
                # RTFx, as ASR benchmarks call it: audio seconds per wall second (higher is faster).
                # Its inverse, wall seconds per audio second, is what they call the real-time factor.
                rtfx=m.Gauge(
                    "raytranscribe_rtfx",
                    "RTFx: audio seconds transcribed per wall second since the run started (1/RTF)",
                ),
                breaker_open=m.Gauge(
                    "raytranscribe_circuit_open", "1 while a circuit breaker pauses dispatch", tag_keys=("stage",)
                ),
                database_up=m.Gauge(
                    "raytranscribe_database_up", "1 while the driver reaches PostgreSQL, 0 while it waits it out"
                ),
                store_transient_errors=m.Counter(
                    "raytranscribe_store_transient_errors",
                    "Transient database errors (dropped connections, failovers, deadlocks) the driver's store met: "
                    "it re-runs the operation a few times, then the driver waits the outage out",
                ),
                suspect_transcripts=m.Counter(
                    "raytranscribe_suspect_transcripts",
                    "Completed transcripts judged suspect (a repetition loop, low confidence, an implausible "
                    "speech rate, text over audio the VAD found silent): `tasks --suspect` lists them",
                ),
            )
        return _metrics


def observe_stages(timings: Sequence[tuple[str, float]]) -> None:
    """One task's stage times into the stage histogram: called by the worker that measured them, so
    the driver spends nothing on them."""
    histogram = get().stage_seconds
    for stage, seconds in timings:
        histogram.observe(seconds, tags={"stage": stage})


_live_seen: set[tuple[str, str, str]] = set()


def set_live_actors(counts: dict[tuple[str, str, str], int]) -> None:
    """Live actors by (pool, device, compute type); a combination seen before and gone now reads 0
    (a gauge keeps its last value otherwise, and a retired pool would look alive forever)."""
    gauge = get().live_actors
    with _lock:
        keys = _live_seen | set(counts)
        _live_seen.update(counts)
    for pool, device, compute_type in keys:
        tags = {"pool": pool, "device": device, "compute_type": compute_type}
        gauge.set(counts.get((pool, device, compute_type), 0), tags=tags)
