"""openai-whisper engine: ``whisper.load_model`` once in ``__init__``, the model kept resident.

Audio arrives as a numpy array, so openai-whisper never shells out to an ``ffmpeg`` binary.
openai-whisper has no VAD: ``TranscribeOptions.vad_filter`` has no effect here.
"""

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
from raytranscribe.engines.models import looks_like_path, resolve_openai_whisper_model
from raytranscribe.errors import ModelLoadError, Stage, TranscriptionError

log = logging.getLogger(__name__)

ENGINE_NAME = "openai-whisper"


class OpenAIWhisperEngine:
    # How many models this process has loaded: lets tests prove a model stays resident.
    loads: ClassVar[int] = 0
    _loads_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, spec: EngineSpec) -> None:
        try:
            import whisper
        except ImportError as exc:
            raise ModelLoadError(f"openai-whisper is not installed: {install_hint(ENGINE_NAME)}") from exc
        self._whisper = whisper
        self.spec = spec
        self.device = resolve_device(spec.device, ENGINE_NAME)
        self.fp16 = self.device == "cuda"  # fp32 on CPU: torch has no fast half-precision CPU kernels
        source = resolve_openai_whisper_model(spec.model)
        try:
            self.model = whisper.load_model(source, device=self.device, download_root=spec.download_root)
        except Exception as exc:  # RuntimeError (unknown name, bad checkpoint), URLError (offline), OSError ...
            if looks_like_path(source):
                reason = f"could not load checkpoint {source}"
            elif source in whisper.available_models():
                reason = f"model {source!r} is not available locally and could not be downloaded"
            else:
                reason = f"unknown openai-whisper model {source!r} (available: {', '.join(whisper.available_models())})"
            raise ModelLoadError(f"{reason}: {type(exc).__name__}: {exc}") from exc
        self.model.eval()
        with OpenAIWhisperEngine._loads_lock:
            OpenAIWhisperEngine.loads += 1
        log.info(
            "openai-whisper %r resident on %s (fp16=%s)", spec.model, self.device, self.fp16,
            extra={"stage": Stage.MODEL_LOAD.value},
        )

    @property
    def multilingual(self) -> bool:
        return bool(self.model.is_multilingual)

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        audio = prepare_audio(audio, ENGINE_NAME)
        default_language = None if self.multilingual else "en"
        if is_silence(audio):
            return empty_transcript(audio, self.spec, options, options.language or default_language)
        try:
            result = self._whisper.transcribe(
                self.model,
                audio,
                verbose=None,  # no printing from a worker
                temperature=temperature_schedule(options.temperature),
                initial_prompt=options.initial_prompt,
                word_timestamps=options.word_timestamps,
                language=options.language or default_language,
                task=options.task,
                beam_size=options.beam_size if options.beam_size > 1 else None,  # None = greedy
                fp16=self.fp16,
            )
        except Exception as exc:
            raise TranscriptionError(
                f"openai-whisper failed on {audio.size / SAMPLE_RATE:.2f} s of audio: {type(exc).__name__}: {exc}"
            ) from exc
        return Transcript(
            segments=tuple(_segment(s) for s in result["segments"]),
            language=result.get("language"),
            duration_s=audio.size / SAMPLE_RATE,
            engine=self.spec.engine,
            model=self.spec.model,
            options=options,
        )


def _segment(s: dict) -> Segment:
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
        avg_logprob=float(s["avg_logprob"]),
        no_speech_prob=float(s["no_speech_prob"]),
    )
