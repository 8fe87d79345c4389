"""Whisper's quality checks on one window's decode, shared by both engines.

Sequential Whisper applies them per 30 s window (``transcribe()``'s defaults); the batched paths
apply the same ones per window: a window judged silent gives no text, a repetitive or unlikely
decode is tried again hotter (the temperature fallback), and when every temperature fails the best
decode is kept.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# openai-whisper's and faster-whisper's transcribe() defaults.
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6

# Behind the VAD (options.vad_filter) a window holds only what the VAD heard as speech, and starts
# where that speech does, so Whisper's no-speech probability (read at the window's start) speaks of
# the audio itself, not of a leading pause: a lower bar. What still gets through to Whisper there is a
# blip the VAD half believed (a whale's moan, a note of a vibraphone), which Whisper turns into "Oh"
# or "You" at no-speech 0.57-0.92 and log-probability -0.9 to -1.05 (tiny.en and base); the real
# speech windows measured (tests/fixtures/real, the samples, the espeak clips) stay under 0.47 and
# above -0.8 unless they are a language the model does not speak (docs/benchmarks.md, "No invented text").
VAD_NO_SPEECH_THRESHOLD = 0.5
VAD_LOG_PROB_THRESHOLD = -0.8


@dataclass(frozen=True, slots=True)
class WindowQuality:
    """One window's decode at one temperature, as Whisper's checks see it."""

    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float  # the worst segment's (loop_ratio)

    @property
    def no_speech(self) -> bool:
        """Whisper's silence verdict: probably no speech, and what it decoded is unlikely too."""
        return self.no_speech_prob > NO_SPEECH_THRESHOLD and self.avg_logprob < LOG_PROB_THRESHOLD

    def silent(self, vad: bool) -> bool:
        """Whether the window gives no text: Whisper's verdict, or behind a VAD (``vad``) the lower bar."""
        return self.no_speech or (vad and no_speech_behind_vad(self.no_speech_prob, self.avg_logprob))

    @property
    def needs_fallback(self) -> bool:
        bad = self.compression_ratio > COMPRESSION_RATIO_THRESHOLD or self.avg_logprob < LOG_PROB_THRESHOLD
        return bad and not self.no_speech

    @property
    def rank(self) -> tuple[bool, float]:
        """Which decode to keep when every temperature failed: not repetitive first, then likeliest."""
        return (self.compression_ratio <= COMPRESSION_RATIO_THRESHOLD, self.avg_logprob)


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def loop_ratio(tokens: Sequence[int], timestamp_begin: int, decode: Callable[[list[int]], str]) -> float:
    """Whisper's repetition check, per segment (the text between timestamp tokens), worst one.

    Sequential Whisper gzips a whole window of one file. A batched slot may hold several files,
    and files saying the same sentence (a call centre's greeting) would read as a loop there; a
    decoding loop shows inside one segment. ``decode`` turns a segment's text tokens into text.
    """
    worst, piece = 0.0, []
    for token in [*tokens, timestamp_begin]:
        if token >= timestamp_begin:
            if piece:
                worst = max(worst, compression_ratio(decode(piece).strip()))
            piece = []
        else:
            piece.append(token)
    return worst


def no_speech_behind_vad(no_speech_prob: float | None, avg_logprob: float | None) -> bool:
    """The no-speech gate for a decode of audio the VAD kept (see VAD_NO_SPEECH_THRESHOLD)."""
    if no_speech_prob is None or avg_logprob is None:
        return False
    return no_speech_prob > VAD_NO_SPEECH_THRESHOLD and avg_logprob < VAD_LOG_PROB_THRESHOLD
