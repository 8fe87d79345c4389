"""What crosses the wire between the orchestrator and a worker actor: plain, picklable data.

A worker sees only presigned URLs: no task row, no credentials.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from raytranscribe.engines.base import EngineSpec, TranscribeOptions
from raytranscribe.engines.verdict import TranscriptQuality
from raytranscribe.errors import Failure, ModelNotFound, Stage


@dataclass(frozen=True)
class OutputTarget:
    format: str  # json | srt | vtt | txt
    put_url: str  # presigned PUT
    uri: str  # s3://bucket/key, for the record
    content_type: str


@dataclass(frozen=True)
class TaskSpec:
    task_id: int
    attempt: int
    input_url: str  # presigned GET
    input_uri: str  # s3://bucket/key, for names and logs
    outputs: tuple[OutputTarget, ...]
    engine: EngineSpec
    options: TranscribeOptions = field(default_factory=TranscribeOptions)
    # Run in a batch of its own: it was charged for a worker crash (or handed back many times), so
    # should it kill the process again, no neighbour is inside the same engine call.
    alone: bool = False


@dataclass(frozen=True)
class TaskResult:
    audio_duration_s: float
    language: str | None
    outputs: tuple[str, ...]  # URIs written
    text_preview: str = ""
    quality: TranscriptQuality | None = None  # the transcript's measures and verdict (engines.verdict)


@dataclass(frozen=True)
class Release:
    """An attempt handed back uncharged: what ended it was not the task's doing (its actor or node
    died while the task only waited, the node is draining, the orchestrator stops)."""

    stage: Stage  # worker-death, dispatch (moved off a draining node) or shutdown
    cause: str


@dataclass(frozen=True)
class Outcome:
    task_id: int
    attempt: int
    result: TaskResult | None = None
    failure: Failure | None = None
    release: Release | None = None  # neither result nor failure: back to pending, retries unchanged
    actor: str | None = None
    node_id: str | None = None
    timings: tuple[tuple[str, float], ...] = ()  # (stage, seconds) in order

    @property
    def ok(self) -> bool:
        return self.failure is None and self.release is None


@dataclass(frozen=True)
class Computing:
    """An item of a worker's results stream besides outcomes: the attempts its process is computing
    on now (inside the engine), sent whenever that set changes. Should the process die,
    these are the suspects, charged for the crash; whatever else it held only waited, and goes back
    uncharged."""

    leases: frozenset[tuple[int, int]]


# --- models from S3 (the driver lists and presigns, the worker downloads into its node's cache) -----


class ModelLayout(str, enum.Enum):
    """How a model's files look, which decides the files it needs."""

    CTRANSLATE2 = "ctranslate2"  # a folder: model.bin, config.json, tokenizer.json, vocabulary.*
    CHECKPOINT = "checkpoint"  # one openai-whisper .pt file

    @classmethod
    def for_engine(cls, engine: str) -> ModelLayout | None:
        """The layout a built-in engine loads; None (detect from the files) for a plugin engine."""
        return {"faster-whisper": cls.CTRANSLATE2, "openai-whisper": cls.CHECKPOINT}.get(engine)


# tokenizer.json is required although faster-whisper can fetch one from the Hub: workers may have no
# internet, and a model that silently needs it would fail on the cluster only.
CT2_REQUIRED: tuple[str, ...] = ("model.bin", "config.json", "tokenizer.json")
CT2_VOCABULARY: tuple[str, ...] = ("vocabulary.json", "vocabulary.txt")  # one of them
CT2_OPTIONAL: tuple[str, ...] = ("preprocessor_config.json",)  # large-v3 and later need it when present


def pick_model_files(
    names: Iterable[str], layout: ModelLayout | None, where: str
) -> tuple[ModelLayout, tuple[str, ...]]:
    """The layout and the file names (among ``names``, a folder's direct children) a model needs.

    Pure, so the driver's listing and the worker's cache agree on it. Raises :class:`ModelNotFound`
    naming the first missing file, or the ambiguity.
    """
    present = set(names)
    if layout is None:
        if "model.bin" in present:
            layout = ModelLayout.CTRANSLATE2
        elif any(n.endswith(".pt") for n in present):
            layout = ModelLayout.CHECKPOINT
        else:
            raise ModelNotFound(
                f"model {where} holds no model: neither model.bin (CTranslate2) nor a .pt checkpoint (openai-whisper)"
            )
    if layout is ModelLayout.CHECKPOINT:
        checkpoints = sorted(n for n in present if n.endswith(".pt"))
        if not checkpoints:
            raise ModelNotFound(f"model {where} has no .pt checkpoint (openai-whisper needs exactly one)")
        if len(checkpoints) > 1:
            raise ModelNotFound(
                f"model {where} holds {len(checkpoints)} .pt checkpoints ({', '.join(checkpoints)}): "
                "name one of them as the model"
            )
        return layout, (checkpoints[0],)
    for name in CT2_REQUIRED:
        if name not in present:
            raise ModelNotFound(
                f"model {where} has no {name} (a CTranslate2 model needs {', '.join(CT2_REQUIRED)} "
                f"and {' or '.join(CT2_VOCABULARY)})"
            )
    vocabulary = [n for n in CT2_VOCABULARY if n in present]
    if not vocabulary:
        raise ModelNotFound(f"model {where} has no {' or '.join(CT2_VOCABULARY)} (CTranslate2 needs its vocabulary)")
    optional = [n for n in CT2_OPTIONAL if n in present]
    return layout, (*CT2_REQUIRED, *vocabulary, *optional)


@dataclass(frozen=True)
class ModelFile:
    name: str  # file name inside the model folder
    url: str  # presigned GET
    size: int  # bytes, as listed
    etag: str  # S3's ETag, unquoted: part of the cache key, so a changed object is a new cache entry
    md5: str | None = None  # hex MD5 of the content when the ETag is one (single-part, not SSE-KMS/SSE-C)


@dataclass(frozen=True)
class ModelManifest:
    """A model stored in S3, as a worker may fetch it: presigned URLs, sizes and ETags, no credentials."""

    uri: str  # s3://bucket/prefix/ (or s3://bucket/key.pt), for names, logs and the cache key
    layout: ModelLayout
    files: tuple[ModelFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def load_name(self) -> str | None:
        """The file the engine opens inside the folder (a checkpoint), or None: the folder itself."""
        return self.files[0].name if self.layout is ModelLayout.CHECKPOINT else None


class LoadPhase(str, enum.Enum):
    """Where a model's download into the node cache is (``modelcache.LoadProgress``)."""

    WAITING = "waiting"  # another process on this node holds the entry's lock (downloading it)
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"  # MD5 of a downloaded file
    READY = "ready"  # the folder is published (or was already: a cache hit)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ModelLoadState:
    """How far an actor's model download is, as its ping reports it (``modelcache.LoadProgress.snapshot``)."""

    phase: LoadPhase | None  # None before the download starts, and throughout for a model not from S3
    bytes_done: int
    total_bytes: int
    cache_hit: bool | None = None  # known once ready

    def describe(self) -> str:
        """One line for logs and ``raytranscribe status``: ``downloading 12.0 of 75.5 MB``."""
        if self.phase is None:
            return "loading the model"
        if self.phase is LoadPhase.READY:  # the files are on the node; the engine loads them now
            return "loading the model (cached)" if self.cache_hit else "loading the model (downloaded)"
        return f"{self.phase.value} {self.bytes_done / 1e6:.1f} of {self.total_bytes / 1e6:.1f} MB"
