"""The engine contract: pure compute, no Ray, SQL, boto3 or HTTP.

An engine is built once from an :class:`EngineSpec`, keeps its model resident, and turns 16 kHz
mono float32 audio plus :class:`TranscribeOptions` into a :class:`Transcript`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from raytranscribe.config import EngineSettings
from raytranscribe.errors import EngineOutOfMemory, RayTranscribeError, TranscriptionError
from raytranscribe.names import DEFAULT_FORMATS, FORMATS, TASKS

if TYPE_CHECKING:  # arrays are the engines' business: options and specs import without numpy
    import numpy as np

_ENGINE_DEFAULTS = EngineSettings()  # the engine group's defaults live in config.py, once
DEFAULT_ENGINE: str = _ENGINE_DEFAULTS.engine  # what a task or spec that names none runs
DEFAULT_MODEL: str = _ENGINE_DEFAULTS.model

SAMPLE_RATE = 16_000
# Whisper reads at most 223 prompt tokens (half its text context) and drops the rest; a few
# thousand characters is more than that in any language, and more than that is a mistake.
MAX_INITIAL_PROMPT_CHARS = 2000


@dataclass(frozen=True)
class EngineSpec:
    engine: str = DEFAULT_ENGINE
    model: str = DEFAULT_MODEL
    device: str = _ENGINE_DEFAULTS.device  # auto | cuda | cpu
    compute_type: str = _ENGINE_DEFAULTS.compute_type  # default: float16 on CUDA, int8 on CPU (faster-whisper)
    cpu_threads: int = _ENGINE_DEFAULTS.cpu_threads
    # 30 s windows per batched decode across files (raytranscribe.batching); 0: the device's
    # default below; 1: the sequential path, Engine.transcribe one file at a time.
    batch_size: int = _ENGINE_DEFAULTS.batch_size
    cpu_batch_size: int = _ENGINE_DEFAULTS.cpu_batch_size
    cuda_batch_size: int = _ENGINE_DEFAULTS.cuda_batch_size
    pack_windows: bool = _ENGINE_DEFAULTS.pack_windows  # short windows of several files share a slot
    fit_windows: bool = _ENGINE_DEFAULTS.fit_windows  # encode short windows short, not padded to 30 s
    download_root: str | None = None

    @classmethod
    def from_settings(cls, settings: EngineSettings, engine: str | None = None, model: str | None = None) -> EngineSpec:
        """The spec of ``settings`` (every field of the engine group), for ``engine``/``model`` when given."""
        return cls(
            engine=engine or settings.engine,
            model=model or settings.model,
            device=settings.device,
            compute_type=settings.compute_type,
            cpu_threads=settings.cpu_threads,
            batch_size=settings.batch_size,
            cpu_batch_size=settings.cpu_batch_size,
            cuda_batch_size=settings.cuda_batch_size,
            pack_windows=settings.pack_windows,
            fit_windows=settings.fit_windows,
        )


@dataclass(frozen=True)
class TranscribeOptions:
    language: str | None = None  # None: detect (multilingual models) or the model's only language
    task: str = "transcribe"  # or "translate"
    beam_size: int = 5
    # Silero VAD in front of Whisper (engines/vad.py): audio without speech (noise, music, an animal)
    # is never decoded, where Whisper alone writes sentences nobody said over it.
    vad_filter: bool = True
    word_timestamps: bool = False
    initial_prompt: str | None = None
    temperature: float = 0.0
    formats: tuple[str, ...] = DEFAULT_FORMATS

    def __post_init__(self) -> None:
        """The one check of every option, whoever builds them (flags, manifest lines, the Python API):
        a ValueError naming the field and what it must be."""
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"unknown output format(s) {unknown}; choose from {list(FORMATS)}")
        if not self.formats:
            raise ValueError("at least one output format is required")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {_shown(self.task)}")
        if isinstance(self.beam_size, bool) or not isinstance(self.beam_size, int) or self.beam_size < 1:
            raise ValueError(f"beam_size must be an integer >= 1, got {_shown(self.beam_size)}")
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, (int, float))
            or not 0.0 <= self.temperature <= 1.0  # also refuses NaN
        ):
            raise ValueError(f"temperature must be a number from 0 to 1, got {_shown(self.temperature)}")
        # 0 and 0.0 are one temperature: one spelling, so one dedupe key
        object.__setattr__(self, "temperature", float(self.temperature))
        for name, public in (("word_timestamps", "word_timestamps"), ("vad_filter", "vad")):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{public} must be true or false, got {_shown(getattr(self, name))}")
        prompt = self.initial_prompt
        if prompt is not None:
            if not isinstance(prompt, str):
                raise ValueError(f"initial_prompt must be a string, got {_shown(prompt)}")
            if len(prompt) > MAX_INITIAL_PROMPT_CHARS:
                raise ValueError(f"initial_prompt must be at most {MAX_INITIAL_PROMPT_CHARS} characters, got {len(prompt)}")
            if "\x00" in prompt:  # PostgreSQL's jsonb cannot hold it
                raise ValueError("initial_prompt must not contain a NUL character")

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


# The options a user sets by name (flags --task ... --vad, manifest fields): the name -> the
# TranscribeOptions field it sets. ``vad`` is vad_filter's public name.
OPTION_FIELDS: dict[str, str] = {
    "task": "task",
    "word_timestamps": "word_timestamps",
    "initial_prompt": "initial_prompt",
    "beam_size": "beam_size",
    "temperature": "temperature",
    "vad": "vad_filter",
}


def _shown(value: object) -> str:
    """A refused value as the user wrote it: JSON where it is JSON (true, null, "x"), else repr."""
    import json

    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def options_with(base: TranscribeOptions, changes: Mapping[str, object], *, none_is_unset: bool = True) -> TranscribeOptions:
    """``base`` with the options ``changes`` names (public names: ``vad``, not ``vad_filter``), checked.

    With ``none_is_unset`` a change of None leaves the option as ``base`` has it (a flag left unset:
    the default stays where it lives), except ``initial_prompt`` and ``language``, whose None is a
    value ("no prompt", "detect"); without it, None is the value given (a manifest's null), refused
    where it is none."""
    fields = {}
    for name, value in changes.items():
        field_name = OPTION_FIELDS.get(name, name)
        if value is None and none_is_unset and field_name not in ("initial_prompt", "language"):
            continue
        fields[field_name] = value
    return replace(base, **fields) if fields else base


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
    temperature: float | None = None  # the temperature of the decode this segment came from
    compression_ratio: float | None = None  # its window's, as Whisper's repetition check measured it


@dataclass(frozen=True)
class Transcript:
    segments: tuple[Segment, ...]
    language: str | None
    duration_s: float
    engine: str
    model: str
    options: TranscribeOptions = field(default_factory=TranscribeOptions)
    language_probability: float | None = None
    speech_s: float | None = None  # seconds the VAD kept as speech; None when no VAD ran

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


# --- batched decoding (raytranscribe.batching drives these) -------------------------------------

WINDOW_S = 30.0  # Whisper's receptive field: the encoder pads or cuts every input to 30 s
WINDOW_SAMPLES = int(WINDOW_S * SAMPLE_RATE)


@dataclass(frozen=True, eq=False)
class Window:
    """One piece of one file, at most 30 s long, decoded as one item of a batch."""

    start_s: float  # where it starts in file time
    samples: np.ndarray  # float32, 16 kHz mono, at most WINDOW_SAMPLES
    # When the VAD cut silences out: (window time, file time) where each kept stretch starts, the
    # first (0.0, start_s). None: the window is one unbroken stretch of the file.
    breaks: tuple[tuple[float, float], ...] | None = None

    @property
    def duration_s(self) -> float:
        return self.samples.size / SAMPLE_RATE

    def file_time(self, t: float, *, end: bool = False) -> float:
        """File time of window time ``t``; an ``end`` on a break belongs to the stretch before it."""
        if not self.breaks:
            return self.start_s + t
        w, f = self.breaks[0]
        for bw, bf in self.breaks[1:]:
            if bw < t or (bw == t and not end):
                w, f = bw, bf
            else:
                break
        return f + (t - w)

    def tail(self, t: float) -> Window:
        """The window after window time ``t`` (what is left to decode), as a window of its own."""
        cut = min(max(0, int(round(t * SAMPLE_RATE))), self.samples.size)
        t = cut / SAMPLE_RATE
        breaks = None
        if self.breaks:
            breaks = ((0.0, self.file_time(t)),) + tuple((bw - t, bf) for bw, bf in self.breaks if bw > t)
        return Window(start_s=self.file_time(t), samples=self.samples[cut:], breaks=breaks)


@dataclass(frozen=True, eq=False)
class PreparedAudio:
    """A file cut into windows, its language settled: what the batcher needs from ``prepare``."""

    windows: tuple[Window, ...]  # empty for silence, sub-second clips with no speech, empty VAD results
    language: str | None  # forced (options.language), detected from the first speech windows, or the model's only one
    duration_s: float
    language_probability: float | None = None
    speech_s: float | None = None  # seconds the VAD kept as speech; None when no VAD ran


@dataclass(frozen=True, eq=False)
class WindowJob:
    """One window with what its decoding needs: its file's language and the task's options."""

    window: Window
    language: str | None
    options: TranscribeOptions


@runtime_checkable
class BatchEngine(Engine, Protocol):
    """An engine that decodes windows of many files in one model call.

    ``prepare`` is per file (VAD, language detection) and may run in any thread; ``decode_windows``
    is the one call that should own the device.
    """

    batch_size: int  # resolved for the engine's device: windows per decode_windows call

    def prepare(self, audio: np.ndarray, options: TranscribeOptions) -> PreparedAudio:
        """Cut ``audio`` into windows (Silero VAD when ``options.vad_filter``, fixed 30 s steps
        otherwise) and settle its language. Raises TranscriptionError on failure."""
        ...

    def decode_windows(self, batch: Sequence[WindowJob]) -> list[list[Segment]]:
        """ONE batched model call over windows of any files and languages: one segment list per
        job, in order, times relative to the window's start. Raises on failure of the batch
        (TranscriptionError; a device out of memory raises EngineOutOfMemory)."""
        ...


def out_of_memory(exc: BaseException) -> bool:
    """A device (or host) allocation failure, as CUDA, CTranslate2 and PyTorch word it."""
    text = str(exc).lower()
    return "out of memory" in text or "bad_alloc" in text or "alloc_failed" in text


def decode_in_groups(
    batch: Sequence[WindowJob],
    key: Callable[[WindowJob], Hashable],
    decode_group: Callable[[Sequence[WindowJob]], list[list[Segment]]],
    engine_name: str,
) -> list[list[Segment]]:
    """One ``decode_group`` call per group of jobs that must share decoding parameters, results back
    in batch order; a failure of any group is the batch's TranscriptionError (EngineOutOfMemory for
    an allocation failure, so the caller halves the batch)."""
    results: list[list[Segment] | None] = [None] * len(batch)
    groups: dict[Hashable, list[int]] = {}
    for i, job in enumerate(batch):
        groups.setdefault(key(job), []).append(i)
    try:
        for indices in groups.values():
            for i, segments in zip(indices, decode_group([batch[i] for i in indices]), strict=True):
                results[i] = segments
    except RayTranscribeError:
        raise
    except Exception as exc:
        seconds = sum(j.window.duration_s for j in batch)
        message = (
            f"{engine_name} failed on a batch of {len(batch)} windows ({seconds:.1f} s of audio): "
            f"{type(exc).__name__}: {exc}"
        )
        if out_of_memory(exc):
            raise EngineOutOfMemory(message) from exc
        raise TranscriptionError(message) from exc
    return results  # type: ignore[return-value]


def segment_from_dict(
    s: dict,
    avg_logprob: float,
    no_speech_prob: float,
    temperature: float | None = None,
    compression_ratio: float | None = None,
) -> Segment:
    """A Segment from the dict form both Whisper libraries produce (words under "words"), with its
    window's decode measures (what the transcript's quality verdict reads)."""
    words = None
    if "words" in s:
        words = tuple(
            Word(start=float(w["start"]), end=float(w["end"]), word=w["word"], probability=float(w["probability"]))
            for w in s["words"]
        )
    return Segment(
        start=float(s["start"]),
        end=float(s["end"]),
        text=s["text"].strip(),
        words=words,
        avg_logprob=float(avg_logprob),
        no_speech_prob=float(no_speech_prob),
        temperature=None if temperature is None else float(temperature),
        compression_ratio=None if compression_ratio is None else float(compression_ratio),
    )
