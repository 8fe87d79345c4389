"""faster-whisper (CTranslate2) engine: the model is loaded once, in ``__init__``, and kept."""

from __future__ import annotations

import logging
import threading
from typing import ClassVar

import numpy as np

from raytranscribe.engines import (
    empty_transcript,
    install_hint,
    is_silence,
    prepare_audio,
    resolve_device,
    temperature_schedule,
)
from raytranscribe.engines.base import SAMPLE_RATE, EngineSpec, Segment, Transcript, TranscribeOptions, Word
from raytranscribe.engines.models import resolve_faster_whisper_model
from raytranscribe.errors import ModelLoadError, Stage, TranscriptionError

log = logging.getLogger(__name__)

ENGINE_NAME = "faster-whisper"


def default_compute_type(device: str) -> str:
    """float16 on GPU (tensor cores, half the memory), int8 on CPU (fastest there)."""
    return "float16" if device == "cuda" else "int8"



def transcribe_kwargs(options: TranscribeOptions) -> dict:
    """``WhisperModel.transcribe`` keyword arguments for these options (benchmarks reuse them)."""
    return dict(
        language=options.language,
        task=options.task,
        beam_size=options.beam_size,
        vad_filter=options.vad_filter,
        word_timestamps=options.word_timestamps,
        initial_prompt=options.initial_prompt,
        temperature=list(temperature_schedule(options.temperature)),
    )

class FasterWhisperEngine:
    # How many WhisperModels this process has built: lets tests prove a model stays resident.
    loads: ClassVar[int] = 0
    _loads_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, spec: EngineSpec) -> None:
        try:
            from faster_whisper import BatchedInferencePipeline, WhisperModel
        except ImportError as exc:
            raise ModelLoadError(f"faster-whisper is not installed: {install_hint(ENGINE_NAME)}") from exc
        self.spec = spec
        self.device = resolve_device(spec.device, ENGINE_NAME)
        self.compute_type = default_compute_type(self.device) if spec.compute_type == "default" else spec.compute_type
        self.model_path = resolve_faster_whisper_model(spec.model, download_root=spec.download_root)
        try:
            self.model = WhisperModel(
                self.model_path,
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=spec.cpu_threads,
                download_root=spec.download_root,
                local_files_only=True,  # resolve_faster_whisper_model already fetched anything remote
            )
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for bad files, devices, types
            raise ModelLoadError(
                f"faster-whisper could not load model {spec.model!r} from {self.model_path} "
                f"on {self.device} ({self.compute_type}): {type(exc).__name__}: {exc}"
            ) from exc
        with FasterWhisperEngine._loads_lock:
            FasterWhisperEngine.loads += 1
        # The batched pipeline wraps the same resident model: no second copy in memory.
        self.pipeline = BatchedInferencePipeline(self.model) if spec.batch_size > 0 else None
        log.info(
            "faster-whisper %r resident on %s (%s)", spec.model, self.device, self.compute_type,
            extra={"stage": Stage.MODEL_LOAD.value},
        )

    @property
    def multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        audio = prepare_audio(audio, ENGINE_NAME)
        default_language = None if self.multilingual else "en"
        if is_silence(audio):
            return empty_transcript(audio, self.spec, options, options.language or default_language)
        kwargs = transcribe_kwargs(options)
        try:
            if self.pipeline is not None:
                segments_iter, info = self.pipeline.transcribe(audio, batch_size=self.spec.batch_size, **kwargs)
            else:
                segments_iter, info = self.model.transcribe(audio, **kwargs)
            # The generator does the decoding: consume it here so its errors are ours to wrap.
            segments = tuple(_segment(s) for s in segments_iter)
        except Exception as exc:
            raise TranscriptionError(
                f"faster-whisper failed on {audio.size / SAMPLE_RATE:.2f} s of audio: {type(exc).__name__}: {exc}"
            ) from exc
        return Transcript(
            segments=segments,
            language=info.language,
            duration_s=audio.size / SAMPLE_RATE,
            engine=self.spec.engine,
            model=self.spec.model,
            options=options,
            language_probability=info.language_probability,
        )


def _segment(s) -> Segment:
    words = None
    if s.words is not None:
        words = tuple(Word(start=w.start, end=w.end, word=w.word, probability=w.probability) for w in s.words)
    return Segment(
        start=float(s.start),
        end=float(s.end),
        text=s.text.strip(),
        words=words,
        avg_logprob=s.avg_logprob,
        no_speech_prob=s.no_speech_prob,
    )
