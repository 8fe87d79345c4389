"""No invented text: audio without speech gives an empty transcript with the default settings, and
real speech keeps the accuracy of a plain faster-whisper loop (issue 24, part 2).

The non-speech recordings are real (tests/fixtures/real/SOURCES.md: a whale, a robin, strings, a
vibraphone, dishes, a tap), most of which Whisper alone fills with "Thank you." and the like; the
noise is generated. The speech is real too: J. F. Kennedy, and the two speakers of a stereo file.
"""

from __future__ import annotations

import wave
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from raytranscribe.audio import SAMPLE_RATE, decode
from raytranscribe.batching import transcribe_batch
from raytranscribe.engines import load_engine, vad
from raytranscribe.engines.base import EngineSpec, TranscribeOptions
from raytranscribe.engines.quality import WindowQuality
from raytranscribe.samples import expected_text, sample_names, sample_path
from tests.support.speech import corpus_wer

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"
NON_SPEECH = (
    "humpback_whale.ogg", "robin.ogg", "string_orchestra.ogg", "vibraphone_jazz.ogg",
    "doing_the_dishes.ogg", "running_tap.ogg",
)  # fmt: skip
DEFAULTS = TranscribeOptions()  # what a task that sets nothing runs with


def _generated() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(24)
    n = 8 * SAMPLE_RATE
    t = np.arange(n) / SAMPLE_RATE
    white = rng.standard_normal(n)
    brown = np.cumsum(white)
    brown -= np.convolve(brown, np.ones(1600) / 1600, mode="same")  # no drift: a rumble, not a ramp
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))
    beeps = np.sin(2 * np.pi * 1000 * t) * ((t % 1.0) < 0.3)  # a phone's ring-back: 0.3 s on, 0.7 s off
    out = {"white noise": white, "brown noise": brown, "a chord": chord, "beeps": beeps}
    return {k: (0.3 * v / np.max(np.abs(v))).astype(np.float32) for k, v in out.items()}


@pytest.fixture(scope="module")
def non_speech() -> dict[str, np.ndarray]:
    clips = {name: decode(REAL / name).samples for name in NON_SPEECH}
    return clips | _generated() | {"silence": np.zeros(3 * SAMPLE_RATE, dtype=np.float32)}


def test_vad_is_on_by_default():
    assert TranscribeOptions().vad_filter and TranscribeOptions.from_dict({}).vad_filter


@pytest.mark.parametrize("batch_size", [8, 1], ids=["batched", "sequential"])
def test_recordings_without_speech_give_empty_transcripts(faster_engine, non_speech, batch_size):
    names = list(non_speech)
    results = transcribe_batch(faster_engine, list(non_speech.values()), DEFAULTS, batch_size=batch_size)
    texts = {name: t.text for name, t in zip(names, results, strict=True)}
    assert texts == dict.fromkeys(names, ""), texts
    for name, t in zip(names, results, strict=True):
        assert t.duration_s == pytest.approx(non_speech[name].size / SAMPLE_RATE)
        # what the VAD kept (each blip it half believed padded by 400 ms a side), never most of the file
        assert t.speech_s is not None and 0.0 <= t.speech_s < 0.5 * t.duration_s, (name, t.speech_s)


def test_speech_is_as_accurate_as_a_plain_faster_whisper_loop(base_engine):
    """Corpus WER of the system's default path (VAD on, batched, fitted windows, no-speech gates)
    within 0.01 of ``WhisperModel.transcribe`` with faster-whisper's defaults (no VAD) on the same
    base, both told the language: the gates cost real speech nothing. Not on tiny.en int8, whose
    words flip with the batch's shape on AVX-512 CPUs (7 errors in 109 words batched, 3 alone)."""
    audios, refs = _real_english_speech()
    system = transcribe_batch(base_engine, audios, replace(DEFAULTS, language="en"), batch_size=8)
    plain = [" ".join(s.text.strip() for s in base_engine.model.transcribe(a, language="en")[0]) for a in audios]
    ours, theirs = corpus_wer(refs, [t.text for t in system]), corpus_wer(refs, plain)
    assert ours <= theirs + 0.01, (ours, theirs, [t.text for t in system], plain)
    for audio, t in zip(audios, system, strict=True):
        assert 0.5 * t.duration_s < t.speech_s <= t.duration_s  # the VAD kept the speech, and said so
        assert t.duration_s == pytest.approx(audio.size / SAMPLE_RATE)
        assert 0 <= t.segments[0].start and t.segments[-1].end <= t.duration_s


def _real_english_speech() -> tuple[list[np.ndarray], list[str]]:
    """J. F. Kennedy; the stereo file's two speakers, a channel each; the shipped samples, and two of
    them in one file with a pause between (timestamps across a VAD cut)."""
    jfk = decode(REAL / "jfk.flac").samples
    with wave.open(str(REAL / "stereo_diarization.wav")) as w:
        assert w.getsampwidth() == 2 and w.getframerate() == SAMPLE_RATE and w.getnchannels() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    left, right = (pcm[:, c].astype(np.float32) / 32768 for c in (0, 1))
    audios = [jfk, np.ascontiguousarray(left), np.ascontiguousarray(right)]
    refs = [
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.",
        "He began a confused complaint against the wizard, who had vanished behind the curtain on the left.",
        "The horizon seems extremely distant.",
    ]
    samples = {n: decode(sample_path(n)).samples for n in sample_names()}
    audios += list(samples.values())
    refs += [expected_text(n) for n in samples]
    pause = np.zeros(3 * SAMPLE_RATE, dtype=np.float32)
    audios.append(np.concatenate([samples["doctor.flac"], pause, samples["fox.wav"]]))
    refs.append(f"{expected_text('doctor.flac')} {expected_text('fox.wav')}")
    return audios, refs


def test_timestamps_behind_the_vad_are_in_file_time(faster_engine):
    """Three seconds of a running tap before J. F. Kennedy: the VAD cuts the tap out, the words
    still land where they were said."""
    tap = decode(REAL / "running_tap.ogg").samples[: 3 * SAMPLE_RATE]
    jfk = decode(REAL / "jfk.flac").samples
    (alone, after_tap) = transcribe_batch(faster_engine, [jfk, np.concatenate([tap, jfk])], DEFAULTS, batch_size=8)
    assert after_tap.text == alone.text
    assert after_tap.segments[0].start == pytest.approx(alone.segments[0].start + 3.0, abs=0.3)
    assert after_tap.speech_s == pytest.approx(alone.speech_s, abs=0.5)


def test_the_gate_behind_the_vad_is_lower_than_whispers():
    """The blips that got through the VAD in the recordings above, as tiny.en and base decoded them
    ("Oh", "You"): Whisper's own gate keeps them, the gate behind the VAD does not; speech stays."""
    blips = [(0.592, -0.909), (0.575, -1.050), (0.918, -0.949), (0.889, -0.933)]
    for no_speech_prob, avg_logprob in blips:
        q = WindowQuality(avg_logprob, no_speech_prob, 1.0)
        assert not q.silent(vad=False) and q.silent(vad=True)
    # the least sure real English speech windows measured (espeak's garden clip; JFK; a German clip in tiny.en)
    for no_speech_prob, avg_logprob in [(0.356, -0.556), (0.048, -0.315), (0.032, -0.807)]:
        assert not WindowQuality(avg_logprob, no_speech_prob, 1.0).silent(vad=True)


def test_speech_seconds_and_the_joined_speech_map_back_to_file_time():
    audio = np.zeros(10 * SAMPLE_RATE, dtype=np.float32)
    spans = [(SAMPLE_RATE, 3 * SAMPLE_RATE), (6 * SAMPLE_RATE, 7 * SAMPLE_RATE)]
    assert vad.speech_seconds(spans) == 3.0
    joined = vad.joined(audio, spans)
    assert joined is not None and joined.duration_s == 3.0
    assert [joined.file_time(t) for t in (0.0, 1.5, 2.0, 2.5)] == [1.0, 2.5, 6.0, 6.5]
    assert joined.file_time(2.0, end=True) == 3.0  # an end on the cut belongs to the speech before it
    assert vad.joined(audio, []) is None


# --- openai-whisper: the same VAD in front (its weights here are random: the cut, not the text) ---


@pytest.fixture(scope="module")
def openai_engine(random_whisper_checkpoint):
    return load_engine(EngineSpec(engine="openai-whisper", model=str(random_whisper_checkpoint), device="cpu"))


def test_openai_whisper_decodes_only_what_the_vad_kept(openai_engine, faster_engine, non_speech):
    jfk = decode(REAL / "jfk.flac").samples
    ours, theirs = openai_engine.prepare(jfk, DEFAULTS), faster_engine.prepare(jfk, DEFAULTS)
    assert [(w.start_s, w.duration_s, w.breaks) for w in ours.windows] == [
        (w.start_s, w.duration_s, w.breaks) for w in theirs.windows
    ]
    assert ours.speech_s == theirs.speech_s and 5.0 < ours.speech_s < jfk.size / SAMPLE_RATE
    for name in ("running_tap.ogg", "string_orchestra.ogg", "white noise"):
        prepared = openai_engine.prepare(non_speech[name], DEFAULTS)
        assert prepared.windows == () and prepared.speech_s == 0.0, name
        t = openai_engine.transcribe(non_speech[name], DEFAULTS)  # the sequential path
        assert (t.text, t.speech_s) == ("", 0.0), name
    off = openai_engine.prepare(non_speech["running_tap.ogg"], TranscribeOptions(vad_filter=False))
    assert off.windows and off.speech_s is None  # without the VAD the tap is decoded: the VAD did it


def test_openai_whisper_sequential_times_come_back_in_file_time(openai_engine):
    lead = np.zeros(4 * SAMPLE_RATE, dtype=np.float32)
    jfk = decode(REAL / "jfk.flac").samples
    options = TranscribeOptions(beam_size=1, temperature=1.0)  # one pass: random weights decode garbage
    t = openai_engine.transcribe(np.concatenate([lead, jfk]), options)
    assert t.speech_s is not None and 5.0 < t.speech_s < 11.5
    for s in t.segments:  # the joined speech's times, moved past the silence the VAD cut
        assert 4.0 - 0.41 <= s.start <= s.end <= t.duration_s
