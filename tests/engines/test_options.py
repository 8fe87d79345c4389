"""Whisper's options through the batched path, on real speech: translate, word timestamps and
prompts per file, in batches shared with files that ask for none of them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from raytranscribe.audio import decode
from raytranscribe.batching import transcribe_batch
from raytranscribe.engines import load_engine
from raytranscribe.engines.base import EngineSpec, TranscribeOptions, WindowJob
from raytranscribe.errors import TranscriptionError
from raytranscribe.samples import sample_path
from tests.support.speech import normalize, wer
from tests.support.spy import record_calls

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"
JFK = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
# The German clip's licence (tests/fixtures/real/SOURCES.md) in base's loose English: "Each one of
# these software and the available documentation data will be divided into the application with
# the software ...". Not the licence's wording, but English, with the licence's subject in it.
ENGLISH_WORDS = {"the", "and", "of", "to", "with", "is", "be", "will", "this", "these", "a", "for"}
GERMAN_WORDS = {"der", "die", "und", "diese", "dazugehorigen", "erhalt", "wird", "genehmigung", "erteilt", "mit"}


def _english(text: str) -> bool:
    words = set(normalize(text).split())
    return "software" in words and len(words & ENGLISH_WORDS) >= 3 and not words & GERMAN_WORDS


def _groups(engine, monkeypatch) -> list[list[WindowJob]]:
    """The jobs of each group of windows the engine decodes in one generate call, as they come."""
    return record_calls(monkeypatch, engine, "_decode_group")


@pytest.fixture(scope="module")
def padded_base(base_engine):
    """base with Whisper's 30 s input: every window one shape, so one batch is one generate call."""
    return load_engine(replace(base_engine.spec, fit_windows=False))


def test_german_translated_to_english_in_a_batch_shared_with_an_english_file(padded_base, monkeypatch, caplog):
    german, jfk = decode(REAL / "multilingual_de.flac").samples, decode(REAL / "jfk.flac").samples
    translate = TranscribeOptions(task="translate")
    calls = _groups(padded_base, monkeypatch)
    de, en = transcribe_batch(padded_base, [german, jfk], [translate, TranscribeOptions()], batch_size=8)
    # one generate call held both files: the task is each window's own
    assert [sorted(job.options.task for job in jobs) for jobs in calls] == [["transcribe", "translate"]]
    assert "bisecting" not in caplog.text
    assert _english(de.text), de.text
    assert de.language == "de" and de.options.task == "translate"  # the language spoken, as Whisper reports it
    assert wer(JFK, en.text) <= 0.1, en.text  # its neighbour still transcribes
    # the sequential path translates too
    (alone,) = transcribe_batch(padded_base, [german], translate, batch_size=1)
    assert _english(alone.text), alone.text


def test_word_timestamps_and_prompts_in_a_batch_shared_with_files_without(faster_engine, monkeypatch, caplog):
    padded = load_engine(replace(faster_engine.spec, fit_windows=False))
    names = ["doctor.flac", "fox.wav", "children.ogg"]
    audios = [decode(sample_path(n)).samples for n in names]
    words = TranscribeOptions(word_timestamps=True, beam_size=2)
    options = [words, TranscribeOptions(beam_size=2), replace(words, initial_prompt="Doctor, children.")]
    calls = _groups(padded, monkeypatch)
    timed, plain, prompted = transcribe_batch(padded, audios, options, batch_size=8, pack=False)
    # Words and no words share a generate call; a prompt moves <|startoftranscript|>, which CTranslate2
    # needs at one position in a call: the prompted file has its own, and no batch fails for it.
    groups = sorted(([job.options.initial_prompt for job in jobs] for jobs in calls), key=len)
    assert groups == [["Doctor, children."], [None, None]]
    assert "bisecting" not in caplog.text
    assert plain.segments and all(s.words is None for s in plain.segments)
    for t in (timed, prompted):
        assert t.segments
        for s in t.segments:
            assert s.words, s
            starts = [w.start for w in s.words]
            assert starts == sorted(starts), s
            assert all(s.start <= w.start <= w.end <= s.end for w in s.words), s
            assert normalize("".join(w.word for w in s.words)) == normalize(s.text)


def test_an_english_only_model_refuses_to_translate(faster_engine):
    audio = decode(sample_path("fox.wav")).samples
    for run in (faster_engine.prepare, faster_engine.transcribe):
        with pytest.raises(TranscriptionError, match="task translate needs a multilingual model") as info:
            run(audio, TranscribeOptions(task="translate"))
        assert info.value.transient is False


# --- openai-whisper (a random-weight checkpoint: structure, not text) ------------------------------


@pytest.fixture(scope="module")
def openai_engine(random_whisper_checkpoint):
    return load_engine(EngineSpec(engine="openai-whisper", model=str(random_whisper_checkpoint), device="cpu"))


def test_openai_decodes_files_with_and_without_word_timestamps_in_one_call(openai_engine):
    """Words are aligned window by window after the decode, so only what whisper.decode takes per call
    (language, task, prompt, beam size, temperature) splits a batch. (A decode of this checkpoint's
    babble takes minutes on a busy CI machine: the call's grouping is checked, not run.)"""
    from raytranscribe.engines.openai import _group_key

    clip = decode(sample_path("doctor.flac")).samples[: 2 * 16_000]
    (window,) = openai_engine.prepare(clip, TranscribeOptions()).windows
    plain = TranscribeOptions()
    same_call = [plain, replace(plain, word_timestamps=True), replace(plain, formats=("tsv",))]
    own_call = [replace(plain, task="translate"), replace(plain, initial_prompt="Hi."), replace(plain, beam_size=1)]
    assert len({_group_key(WindowJob(window, "en", o)) for o in same_call}) == 1
    assert len({_group_key(WindowJob(window, "en", o)) for o in [plain, *own_call]}) == 4
    with pytest.raises(TranscriptionError, match="needs a multilingual model") as info:  # its vocabulary is English-only
        openai_engine.prepare(clip, replace(plain, task="translate"))
    assert info.value.transient is False
