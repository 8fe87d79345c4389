"""Voice-activity detection for both engines: where a file holds speech, before Whisper hears it.

Whisper writes sentences nobody said over audio without speech ("Thank you for watching." over
street noise or music): its no-speech gate alone lets them through. A VAD in front keeps the model
from hearing what is not speech at all. Both engines use the Silero VAD that faster-whisper ships
(an ONNX model run by onnxruntime), so a file is cut the same way whichever engine decodes it.

Pure compute (numpy and the ONNX model); imported lazily by the engines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from raytranscribe.engines.base import SAMPLE_RATE, WINDOW_S, Window
from raytranscribe.errors import TranscriptionError

# Pauses of 160 ms split speech (faster-whisper's batched pipeline's setting), so windows carry
# speech and little silence; chunks are capped at one window.
MIN_SILENCE_MS = 160
# faster-whisper's 0, not Silero's 250: a quarter-second chunk can be a real word (J. F. Kennedy's
# "ask", after three seconds of a running tap), so blips are left to the no-speech gate behind the VAD
# (engines/quality.py), which hears what they hold.
MIN_SPEECH_MS = 0

Span = tuple[int, int]  # sample range [start, end) of one speech chunk


def speech_spans(audio: np.ndarray, *, max_chunk_s: float = WINDOW_S) -> list[Span]:
    """The speech chunks of 16 kHz mono ``audio`` (sample ranges, in order, each padded by the VAD's
    400 ms and at most ``max_chunk_s`` long). Raises TranscriptionError (permanent) when the VAD
    cannot run (faster-whisper, which ships it, not installed)."""
    try:
        from faster_whisper.vad import VadOptions, get_speech_timestamps
    except ImportError as exc:
        raise TranscriptionError(
            "voice-activity detection needs faster-whisper's Silero VAD: pip install 'raytranscribe[vad]' "
            "(or transcribe with vad_filter off)",
            transient=False,
        ) from exc
    options = VadOptions(
        max_speech_duration_s=max_chunk_s, min_silence_duration_ms=MIN_SILENCE_MS,
        min_speech_duration_ms=MIN_SPEECH_MS,
    )  # fmt: skip
    return [(int(c["start"]), int(c["end"])) for c in get_speech_timestamps(audio, options)]


def speech_seconds(spans: Sequence[Span]) -> float:
    """Seconds of audio the VAD kept."""
    return round(sum(b - a for a, b in spans) / SAMPLE_RATE, 3)


def joined(audio: np.ndarray, spans: Sequence[Span]) -> Window | None:
    """The speech of ``audio`` laid end to end, of any length, its ``breaks`` mapping its time back
    to file time (as faster-whisper's VAD filter does for its sequential path); None without speech."""
    spans = [(a, b) for a, b in spans if b > a]
    if not spans:
        return None
    breaks, at = [], 0
    for a, b in spans:
        breaks.append((at / SAMPLE_RATE, a / SAMPLE_RATE))
        at += b - a
    samples = np.concatenate([audio[a:b] for a, b in spans])
    return Window(start_s=spans[0][0] / SAMPLE_RATE, samples=samples, breaks=tuple(breaks))
