"""A verdict on a whole transcript: its quality measures, and whether it is suspect, and why. Pure.

Whisper checks each window as it decodes it (``quality.py``: the temperature fallback, the silence
gate). What survives those checks can still be wrong in ways only the whole transcript shows: the
best of every temperature still loops, the text is unlikely throughout, more words than anyone
says, or words over audio the VAD found silent. These are what a user of a million transcripts
needs to know which to distrust; the thresholds are ``quality.*`` settings (config.py), calibrated
on real speech by ``bench/quality_calibration.py``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raytranscribe.config import QualitySettings
from raytranscribe.engines.base import Segment, Transcript


class Reason(enum.StrEnum):
    REPETITION = "repetition"  # a window loops even at the hottest temperature
    LOW_CONFIDENCE = "low-confidence"  # unlikely text, or most windows needed the fallback
    SPEECH_RATE = "speech-rate"  # more words a second than anyone says
    TEXT_OVER_SILENCE = "text-over-silence"  # words where the VAD, or the model itself, found no speech


@dataclass(frozen=True, slots=True)
class TranscriptQuality:
    """What a transcript's verdict is drawn from, and the verdict. None: nothing to measure (no text)."""

    mean_logprob: float | None  # segments' average token log-probability, weighted by their duration
    max_no_speech_prob: float | None
    max_compression_ratio: float | None
    windows: int  # decodes that produced text (runs of segments sharing one decode's measures)
    fallback_windows: int  # of those, the ones decoded hotter than the task's first temperature
    speech_s: float | None  # what the VAD kept; None: no VAD ran
    audio_s: float
    words: int
    words_per_s: float | None  # per second of speech (the VAD's, else the audio's)
    suspect: bool
    reasons: tuple[Reason, ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the output's ``quality`` object, the task's ``quality`` column)."""
        return {
            "mean_logprob": _round(self.mean_logprob),
            "max_no_speech_prob": _round(self.max_no_speech_prob),
            "max_compression_ratio": _round(self.max_compression_ratio),
            "windows": self.windows,
            "fallback_windows": self.fallback_windows,
            "speech_s": _round(self.speech_s),
            "audio_s": _round(self.audio_s),
            "words": self.words,
            "words_per_s": _round(self.words_per_s),
            "suspect": self.suspect,
            "reasons": [r.value for r in self.reasons],
        }


def judge(transcript: Transcript, settings: QualitySettings) -> TranscriptQuality:
    """The quality measures of ``transcript`` and its verdict under ``settings``' thresholds."""
    segments = [s for s in transcript.segments if s.text.strip()]
    words = len(transcript.text.split())
    decodes = _decodes(segments)
    first = transcript.options.temperature
    fallback = sum(1 for d in decodes if d.temperature is not None and d.temperature > first)
    mean_logprob = _weighted_logprob(segments)
    no_speech = [s.no_speech_prob for s in segments if s.no_speech_prob is not None]
    ratios = [s.compression_ratio for s in segments if s.compression_ratio is not None]
    max_ratio = max(ratios, default=None)
    speech_s = transcript.speech_s
    over = speech_s if speech_s is not None and speech_s > 0 else transcript.duration_s
    rate = words / over if words and over > 0 else (0.0 if not words else None)

    reasons: list[Reason] = []
    if max_ratio is not None and max_ratio > settings.max_compression_ratio:
        reasons.append(Reason.REPETITION)
    if (mean_logprob is not None and mean_logprob < settings.min_mean_logprob) or (
        decodes and fallback > settings.max_fallback_share * len(decodes)
    ):
        reasons.append(Reason.LOW_CONFIDENCE)
    if rate is not None and rate > settings.max_words_per_s:
        reasons.append(Reason.SPEECH_RATE)
    silent_vad = speech_s is not None and speech_s < settings.min_speech_s
    silent_model = bool(no_speech) and max(no_speech) > settings.max_no_speech_prob
    if words and (silent_vad or silent_model):
        reasons.append(Reason.TEXT_OVER_SILENCE)
    return TranscriptQuality(
        mean_logprob=mean_logprob,
        max_no_speech_prob=max(no_speech, default=None),
        max_compression_ratio=max_ratio,
        windows=len(decodes),
        fallback_windows=fallback,
        speech_s=speech_s,
        audio_s=transcript.duration_s,
        words=words,
        words_per_s=rate,
        suspect=bool(reasons),
        reasons=tuple(reasons),
    )


def _decodes(segments: Sequence[Segment]) -> list[Segment]:
    """The first segment of each decode: both engines give every segment of one window's decode
    that decode's measures, so a change of them starts the next window."""
    out: list[Segment] = []
    key = None
    for s in segments:
        k = (s.avg_logprob, s.no_speech_prob, s.temperature, s.compression_ratio)
        if k != key:
            out.append(s)
            key = k
    return out


def _weighted_logprob(segments: Sequence[Segment]) -> float | None:
    scored = [
        (max(s.end - s.start, 0.01), s.avg_logprob)
        for s in segments
        if s.avg_logprob is not None and math.isfinite(s.avg_logprob)
    ]
    total = sum(w for w, _ in scored)
    if not scored or total <= 0:
        return None
    return sum(w * lp for w, lp in scored) / total


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)
