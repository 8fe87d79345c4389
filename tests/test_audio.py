"""audio.decode on real files: the committed speech samples and files built here with PyAV."""

from __future__ import annotations

import io
import random
import re
import struct
from fractions import Fraction

import av
import numpy as np
import pytest

from raytranscribe.audio import SAMPLE_RATE, DecodedAudio, decode, decode_bytes
from raytranscribe.errors import AudioDecodeError, Failure, Stage
from raytranscribe.samples import sample_path, sample_paths

# name -> (seconds espeak-ng spoke, source rate, source channels, FFmpeg demuxer)
EXPECTED = {
    "children.ogg": (3.6353, 48000, 1, "ogg"),
    "doctor.flac": (3.7112, 44100, 2, "flac"),
    "fox.wav": (4.3197, 22050, 1, "wav"),
    "library.m4a": (3.7088, 44100, 2, "mov,mp4,m4a,3gp,3g2,mj2"),
    "lights.webm": (3.3668, 48000, 2, "matroska,webm"),
    "river.mp3": (4.2504, 24000, 1, "mp3"),
}


def test_every_sample_is_listed():
    assert sorted(p.name for p in sample_paths()) == sorted(EXPECTED)
    total = sum(p.stat().st_size for p in sample_paths())
    assert total < 1_000_000


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_decodes_to_16k_mono_float32(name):
    seconds, rate, channels, fmt = EXPECTED[name]
    audio = decode(sample_path(name))
    assert isinstance(audio, DecodedAudio)
    assert audio.samples.dtype == np.float32
    assert audio.samples.ndim == 1
    assert audio.duration_s == pytest.approx(seconds, abs=0.05)
    assert audio.duration_s == audio.samples.size / SAMPLE_RATE
    assert (audio.source_rate, audio.source_channels, audio.source_format) == (rate, channels, fmt)
    peak = float(np.max(np.abs(audio.samples)))
    assert 0.05 < peak <= 1.0  # speech, not silence and not clipped garbage


def test_decode_bytes_matches_decode_of_the_file():
    path = sample_path("doctor.flac")
    from_file = decode(path)
    from_bytes = decode_bytes(path.read_bytes(), name_hint=path.name)
    assert from_bytes.duration_s == from_file.duration_s
    np.testing.assert_array_equal(from_bytes.samples, from_file.samples)


def _encode_tone(container: str, codec: str, rate: int, layout: str, seconds: float, freq: float) -> bytes:
    """A sine tone (same on every channel), encoded with PyAV."""
    n = int(rate * seconds)
    tone = (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)
    channels = 2 if layout == "stereo" else 1
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        fmt = stream.codec_context.codec.audio_formats[0].name
        frame = av.AudioFrame.from_ndarray(np.tile(tone, (channels, 1)), format="fltp", layout=layout)
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate, frame_size=stream.codec_context.frame_size or None)
        for chunk in (*resampler.resample(frame), *resampler.resample(None)):
            chunk.pts = None
            out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    return buf.getvalue()


@pytest.mark.parametrize(
    "container,codec,rate,layout",
    [("wav", "pcm_s16le", 44100, "stereo"), ("ogg", "libopus", 48000, "stereo"), ("mp3", "libmp3lame", 8000, "mono"), ("flac", "flac", 32000, "stereo")],
)
def test_resampling_keeps_pitch_and_length(container, codec, rate, layout):
    audio = decode_bytes(_encode_tone(container, codec, rate, layout, seconds=2.0, freq=440.0))
    assert audio.duration_s == pytest.approx(2.0, abs=0.05)
    assert audio.source_rate == rate
    assert audio.source_channels == (2 if layout == "stereo" else 1)
    spectrum = np.abs(np.fft.rfft(audio.samples))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / audio.samples.size
    assert peak_hz == pytest.approx(440.0, abs=2.0)
    # Down-mixing identical channels keeps the level (averages, does not sum and clip).
    assert float(np.max(np.abs(audio.samples))) == pytest.approx(0.5, abs=0.06)


def test_silence_is_not_an_error():
    silent = np.zeros((1, 2 * 44100), dtype=np.int16)
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=44100, layout="mono")
        frame = av.AudioFrame.from_ndarray(silent, format="s16", layout="mono")
        frame.sample_rate = 44100
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    audio = decode_bytes(buf.getvalue())
    assert audio.duration_s == pytest.approx(2.0, abs=0.001)
    assert float(np.max(np.abs(audio.samples))) == 0.0


def _expect(reason_pattern: str, fn, *args) -> AudioDecodeError:
    with pytest.raises(AudioDecodeError) as info:
        fn(*args)
    err = info.value
    assert re.fullmatch(reason_pattern, err.message), err.message
    assert err.transient is False
    assert err.stage is Stage.DECODE
    failure = Failure.from_exception(err)
    assert (failure.stage, failure.error_class, failure.transient) == (Stage.DECODE, "AudioDecodeError", False)
    return err


def test_zero_byte_file(tmp_path):
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    _expect(r"empty file \(0 bytes\)", decode, empty)
    _expect(r"empty file \(0 bytes\)", decode_bytes, b"")


def test_missing_file(tmp_path):
    err = _expect(r"file not found: .*nope\.wav", decode, tmp_path / "nope.wav")
    assert isinstance(err.__cause__, FileNotFoundError)


def test_directory_is_not_a_file(tmp_path):
    folder = tmp_path / "album.wav"
    folder.mkdir()
    _expect(re.escape(f"{folder} is a directory, not an audio file"), decode, folder)


def test_text_file_is_not_audio(tmp_path):
    notes = tmp_path / "notes.mp3"
    notes.write_text("These are meeting notes, not a recording.\n" * 20)
    err = _expect(r"not an audio file: .*Invalid data found when processing input.*", decode, notes)
    assert isinstance(err.__cause__, av.error.InvalidDataError)


def test_image_has_no_audio_stream():
    buf = io.BytesIO()
    with av.open(buf, "w", format="image2pipe") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "rgb24"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), dtype=np.uint8), format="rgb24")
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    _expect(r"no audio stream in png_pipe \(streams: video\)", decode_bytes, buf.getvalue())


def test_video_only_mp4_has_no_audio_stream(tmp_path):
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            img = np.full((48, 64, 3), i * 40, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    _expect(r"no audio stream in mov,mp4,m4a,3gp,3g2,mj2 \(streams: video\)", decode, path)


def test_truncated_flac_fails_after_partial_decode():
    data = sample_path("doctor.flac").read_bytes()
    err = _expect(
        r"corrupt or truncated audio: .*Invalid data found when processing input.* after 1\.\d\d s decoded",
        decode_bytes, data[: len(data) // 2],
    )
    assert isinstance(err.__cause__, av.FFmpegError)


def test_truncated_wav_is_caught_by_its_header():
    data = sample_path("fox.wav").read_bytes()
    _expect(
        r"truncated audio: the header declares 4\.32 s but only 2\.16 s could be decoded",
        decode_bytes, data[: len(data) // 2],
    )


def test_truncated_webm_is_caught_by_its_header():
    data = sample_path("lights.webm").read_bytes()
    _expect(r"truncated audio: the header declares 3\.3\d s but only \d\.\d\d s could be decoded", decode_bytes, data[: len(data) // 2])


def test_m4a_cut_before_its_index():
    data = sample_path("library.m4a").read_bytes()
    err = _expect(r"corrupt or truncated audio: MP4/M4A header could not be read: .*", decode_bytes, data[: len(data) * 9 // 10])
    assert isinstance(err.__cause__, av.FFmpegError)


def test_corrupt_mp3_fails_mid_stream():
    data = bytearray(sample_path("river.mp3").read_bytes())
    rng = random.Random(0)
    start = len(data) // 3
    data[start : start + 2000] = bytes(rng.randrange(256) for _ in range(2000))
    err = _expect(r"corrupt or truncated audio: .* after \d\.\d\d s decoded", decode_bytes, bytes(data))
    assert isinstance(err.__cause__, av.FFmpegError)


def test_wav_header_without_samples():
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 0)
    header_only = b"RIFF" + struct.pack("<I", len(body)) + body
    _expect(r"no audio samples decoded", decode_bytes, header_only)
