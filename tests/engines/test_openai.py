"""openai-whisper through a tiny random-weight checkpoint (real weights cannot be downloaded here).

Random weights produce garbage text, so these tests check the contract: the model loads from a
path, stays resident, and a Transcript of the right shape comes back.
"""

from __future__ import annotations


import numpy as np
import pytest
import whisper

from raytranscribe.audio import SAMPLE_RATE, decode
from raytranscribe.engines import Engine, load_engine
from raytranscribe.engines.base import EngineSpec, Segment, Transcript, TranscribeOptions
from raytranscribe.engines.openai import OpenAIWhisperEngine
from raytranscribe.errors import ModelLoadError, Stage
from raytranscribe.samples import sample_path
from tests.support.spy import record_calls

# Temperature 1.0 is the top of the fallback ladder: one decoding pass, not six, on garbage.
ONE_PASS = TranscribeOptions(beam_size=1, temperature=1.0)


@pytest.fixture(scope="module")
def openai_engine(random_whisper_checkpoint):
    return load_engine(EngineSpec(engine="openai-whisper", model=str(random_whisper_checkpoint), device="cpu"))


def test_loads_from_checkpoint_and_stays_resident(openai_engine, random_whisper_checkpoint, monkeypatch):
    assert isinstance(openai_engine, OpenAIWhisperEngine) and isinstance(openai_engine, Engine)
    assert openai_engine.device == "cpu" and openai_engine.fp16 is False
    assert next(openai_engine.model.parameters()).dtype.is_floating_point
    loaded, model = record_calls(monkeypatch, whisper, "load_model"), openai_engine.model
    audio = decode(sample_path("doctor.flac")).samples[: 2 * SAMPLE_RATE]

    first = openai_engine.transcribe(audio, ONE_PASS)
    second = openai_engine.transcribe(audio, ONE_PASS)

    assert loaded == []
    assert openai_engine.model is model
    for t in (first, second):
        assert isinstance(t, Transcript)
        assert (t.engine, t.model, t.language, t.options) == (
            "openai-whisper", str(random_whisper_checkpoint), "en", ONE_PASS,
        )
        assert t.duration_s == 2.0
        assert isinstance(t.segments, tuple) and all(isinstance(s, Segment) for s in t.segments)
        for s in t.segments:
            assert isinstance(s.text, str) and isinstance(s.start, float) and isinstance(s.end, float)
            assert 0.0 <= s.start <= s.end
            assert isinstance(s.avg_logprob, float) and 0.0 <= s.no_speech_prob <= 1.0


def test_each_engine_loads_its_own_model(openai_engine, random_whisper_checkpoint, monkeypatch):
    loaded = record_calls(monkeypatch, whisper, "load_model")
    engine = load_engine(EngineSpec(engine="openai-whisper", model=str(random_whisper_checkpoint), device="cpu"))
    assert loaded == [str(random_whisper_checkpoint)] and engine.model is not openai_engine.model


def test_silence_gives_an_empty_transcript(openai_engine):
    t = openai_engine.transcribe(np.zeros(2 * SAMPLE_RATE, dtype=np.float32), ONE_PASS)
    assert (t.segments, t.text, t.duration_s, t.language) == ((), "", 2.0, "en")


def _load_error(model: str) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        load_engine(EngineSpec(engine="openai-whisper", model=model, device="cpu"))
    assert info.value.transient is False and info.value.stage is Stage.MODEL_LOAD
    return info.value


def test_missing_checkpoint_path(tmp_path):
    missing = tmp_path / "large-v3.pt"
    assert _load_error(str(missing)).message == f"model path {missing} does not exist"


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"this is not a torch checkpoint")
    err = _load_error(str(bad))
    assert err.message.startswith(f"could not load checkpoint {bad}: ")
    assert err.__cause__ is not None


def test_unknown_model_name():
    err = _load_error("gigantic-v9")
    assert err.message.startswith("unknown openai-whisper model 'gigantic-v9' (available: tiny.en, tiny, ")
