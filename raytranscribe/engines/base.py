"""The engine contract: pure compute, no Ray, SQL, boto3 or HTTP.

An engine is built once from an :class:`EngineSpec`, keeps its model resident, and turns 16 kHz
mono float32 audio plus :class:`TranscribeOptions` into a :class:`Transcript`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

SAMPLE_RATE = 16_000
FORMATS: tuple[str, ...] = ("json", "srt", "vtt", "txt")
ENGINES: tuple[str, ...] = ("faster-whisper", "openai-whisper")


@dataclass(frozen=True)
class EngineSpec:
    engine: str = "faster-whisper"
    model: str = "tiny.en"
    device: str = "auto"  # auto | cuda | cpu
    compute_type: str = "default"  # default: float16 on CUDA, int8 on CPU (faster-whisper)
    cpu_threads: int = 0
    batch_size: int = 0  # >0: faster-whisper BatchedInferencePipeline
    download_root: str | None = None


@dataclass(frozen=True)
class TranscribeOptions:
    language: str | None = None  # None: detect (multilingual models) or the model's only language
    task: str = "transcribe"  # or "translate"
    beam_size: int = 5
    vad_filter: bool = False
    word_timestamps: bool = False
    initial_prompt: str | None = None
    temperature: float = 0.0
    formats: tuple[str, ...] = FORMATS

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"unknown output format(s) {unknown}; choose from {list(FORMATS)}")
        if not self.formats:
            raise ValueError("at least one output format is required")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["formats"] = list(self.formats)
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> TranscribeOptions:
        d = dict(d or {})
        if "formats" in d and d["formats"] is not None:
            d["formats"] = tuple(d["formats"])
        known = {f for f in cls.__dataclass_fields__}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown transcription option(s): {sorted(extra)}")
        return cls(**{k: v for k, v in d.items() if v is not None or k in ("language", "initial_prompt")})


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float | None = None


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None


@dataclass(frozen=True)
class Transcript:
    segments: tuple[Segment, ...]
    language: str | None
    duration_s: float
    engine: str
    model: str
    options: TranscribeOptions = field(default_factory=TranscribeOptions)
    language_probability: float | None = None

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["options"] = self.options.to_dict()
        d["text"] = self.text
        return d


@runtime_checkable
class Engine(Protocol):
    spec: EngineSpec

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        """``audio``: 1-D float32 at 16 kHz. Raises TranscriptionError on failure."""
        ...
