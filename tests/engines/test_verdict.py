"""The verdict on a whole transcript (engines/verdict.py) on real engine output: tiny.en on the CPU,
sequential and cross-file batched, on clean speech and on speech played backwards (babble)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raytranscribe.audio import decode
from raytranscribe.batching import transcribe_batch
from raytranscribe.config import QualitySettings
from raytranscribe.engines.base import Segment, Transcript, TranscribeOptions
from raytranscribe.engines.verdict import Reason, judge
from raytranscribe.samples import sample_names, sample_path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DEFAULTS = QualitySettings()


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    clean = {n: decode(sample_path(n)).samples for n in sample_names()}
    clean["jfk.flac"] = decode(FIXTURES / "real" / "jfk.flac").samples
    return clean


@pytest.fixture(scope="module")
def babble() -> np.ndarray:
    """An espeak sentence played backwards: speech's sound, no words; tiny.en hears some anyway."""
    return np.ascontiguousarray(decode(FIXTURES / "speech" / "en_station.flac").samples[::-1])


@pytest.mark.parametrize("batch_size", [1, 8], ids=["sequential", "batched"])
def test_clean_speech_is_not_suspect_and_babble_is(faster_engine, clips, babble, batch_size):
    audios = [*clips.values(), babble]
    *clean, babbled = transcribe_batch(faster_engine, audios, TranscribeOptions(), batch_size)
    for name, t in zip(clips, clean, strict=True):
        q = judge(t, DEFAULTS)
        assert not q.suspect, (name, t.text, q)
        # Both engines' paths fill every measure the verdict reads.
        assert all(s.temperature is not None and s.compression_ratio is not None for s in t.segments), name
        assert q.mean_logprob is not None and q.windows >= 1 and q.fallback_windows == 0
        assert 0.5 < q.words_per_s < 5.0 and q.audio_s == t.duration_s
    q = judge(babbled, DEFAULTS)
    # Low confidence, or more words than anyone says in the time: which gives it away depends on the
    # CPU's arithmetic (on AVX-512, batched, tiny.en is surer of its babble, and faster).
    assert babbled.text.strip() and q.suspect, (babbled.text, q)
    assert {Reason.LOW_CONFIDENCE, Reason.SPEECH_RATE} & set(q.reasons), (babbled.text, q)
    assert q.to_dict()["reasons"] == [r.value for r in q.reasons] and q.to_dict()["suspect"] is True


def test_the_thresholds_are_the_settings(faster_engine, clips):
    (t,) = transcribe_batch(faster_engine, [clips["jfk.flac"]], TranscribeOptions(), 1)
    q = judge(t, DEFAULTS)
    strict = judge(t, DEFAULTS.model_copy(update={"min_mean_logprob": q.mean_logprob / 2}))
    assert not q.suspect and strict.reasons == (Reason.LOW_CONFIDENCE,)
    fast = judge(t, DEFAULTS.model_copy(update={"max_words_per_s": q.words_per_s / 2}))
    assert fast.reasons == (Reason.SPEECH_RATE,)


def _transcript(*segments: Segment, duration: float = 10.0, speech_s: float | None = None) -> Transcript:
    return Transcript(segments=segments, language="en", duration_s=duration, engine="faster-whisper",
                      model="tiny.en", speech_s=speech_s)  # fmt: skip


def _segment(start: float, end: float, text: str, lp: float = -0.3, t: float = 0.0, cr: float = 1.2) -> Segment:
    return Segment(start, end, text, avg_logprob=lp, no_speech_prob=0.1, temperature=t, compression_ratio=cr)


def test_each_rule_gives_its_reason():
    fine = _transcript(_segment(0, 4, "the quick brown fox jumps"), _segment(4, 8, "over the lazy dog", lp=-0.5))
    assert not judge(fine, DEFAULTS).suspect
    assert judge(fine, DEFAULTS).mean_logprob == pytest.approx(-0.4)
    loop = _transcript(_segment(0, 30, "thank you " * 40, cr=6.0))
    assert judge(loop, DEFAULTS).reasons == (Reason.REPETITION, Reason.SPEECH_RATE)
    # Two windows (a change of decode measures starts the next), the second decoded hotter.
    hot = _transcript(_segment(0, 4, "the quick brown fox"), _segment(4, 8, "jumps over", lp=-0.6, t=0.4),
                      _segment(8, 9, "the dog", lp=-0.6, t=0.4))  # fmt: skip
    q = judge(hot, DEFAULTS)
    assert (q.windows, q.fallback_windows, q.suspect) == (2, 1, False)  # half: not more than the share
    hotter = _transcript(_segment(0, 4, "the quick brown fox", t=0.2), _segment(4, 8, "jumps over", t=0.4))
    assert judge(hotter, DEFAULTS).reasons == (Reason.LOW_CONFIDENCE,)
    silent = _transcript(_segment(0, 2, "thank you for watching"), speech_s=0.2)
    assert judge(silent, DEFAULTS).reasons == (Reason.SPEECH_RATE, Reason.TEXT_OVER_SILENCE)
    unheard = _transcript(Segment(0, 3, "2,5kg 2,5kg", avg_logprob=-0.5, no_speech_prob=0.76, temperature=0.0,
                                  compression_ratio=1.7))  # base on white noise  # fmt: skip
    assert judge(unheard, DEFAULTS).reasons == (Reason.TEXT_OVER_SILENCE,)
    nothing = _transcript(speech_s=0.0)
    q = judge(nothing, DEFAULTS)
    assert (q.suspect, q.words, q.words_per_s, q.mean_logprob, q.windows) == (False, 0, 0.0, None, 0)
