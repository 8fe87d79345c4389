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

from raytranscribe.audio import SAMPLE_RATE, DecodedAudio, Decoders, decode, decode_bytes
from raytranscribe.errors import AudioDecodeError, Failure, Stage
from raytranscribe.samples import sample_path, sample_paths
from tests.support import media

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
        r"truncated audio: decoded 2\.16 s of the 4\.32 s the WAV data chunk declares",
        decode_bytes, data[: len(data) // 2],
    )


def test_truncated_webm_is_caught_by_its_header():
    data = sample_path("lights.webm").read_bytes()
    _expect(r"truncated audio: decoded 1\.\d\d s of the 3\.38 s the WebM Duration element declares",
            decode_bytes, data[: len(data) // 2])  # fmt: skip


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


# --- truncation: what each container declares about its own length ----------------------------------

# Every shipped sample cut to a third: each fails, naming what gave the cut away.
THIRD_CUT = {
    "river.mp3": r"truncated audio: decoded 1\.37 s of the 4\.25 s the MP3's Info header declares",
    "doctor.flac": r"corrupt or truncated audio: .*Invalid data found when processing input.* after 0\.\d\d s decoded",
    "fox.wav": r"truncated audio: decoded 1\.44 s of the 4\.32 s the WAV data chunk declares",
    "children.ogg": r"truncated audio: the file ends inside an Ogg page \(\d+ of its \d+ bytes\) after 0\.99 s decoded",
    "library.m4a": r"corrupt or truncated audio: MP4/M4A header could not be read: .*",
    "lights.webm": r"truncated audio: decoded 0\.99 s of the 3\.38 s the WebM Duration element declares",
}


def test_every_sample_has_a_third_cut_case():
    assert sorted(THIRD_CUT) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(THIRD_CUT))
def test_sample_cut_to_a_third_fails(name, tmp_path):
    data = sample_path(name).read_bytes()
    cut = data[: len(data) // 3]
    _expect(THIRD_CUT[name], decode_bytes, cut)
    path = tmp_path / name  # the file path reads its headers from disk: same verdict
    path.write_bytes(cut)
    _expect(THIRD_CUT[name], decode, path)


def _encode_speechlike(container: str, codec: str, rate: int, *, seconds: float = 4.0,
                       codec_options: dict[str, str] | None = None, container_options: dict[str, str] | None = None,
                       path=None) -> bytes:
    """A gated, wobbling tone (bursts and gaps, so VBR encoders vary their frames), mono."""
    t = np.arange(int(rate * seconds)) / rate
    signal = 0.3 * np.sin(2 * np.pi * (200 + 150 * np.sin(np.pi * t)) * t) * (np.sin(2 * np.pi * 1.3 * t) > 0)
    target = str(path) if path is not None else io.BytesIO()
    with av.open(target, "w", format=container, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        if codec_options:
            stream.codec_context.options = codec_options
        fmt = stream.codec_context.codec.audio_formats[0].name
        frame = av.AudioFrame.from_ndarray(signal.astype(np.float32)[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        frame_size = stream.codec_context.frame_size or None
        resampler = av.AudioResampler(format=fmt, layout="mono", rate=rate, frame_size=frame_size)
        for chunk in (*resampler.resample(frame), *resampler.resample(None)):
            chunk.pts = None
            out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    return path.read_bytes() if path is not None else target.getvalue()


# libmp3lame through PyAV: FFmpeg's mp3 muxer writes a LAME "Info" (CBR) or "Xing" (VBR) frame
# unless write_xing=0; VBR is what `ffmpeg -q:a 4` asks for (qscale, quality 4 x FF_QP2LAMBDA).
VBR = {"flags": "+qscale", "global_quality": str(4 * 118)}
NO_XING = {"write_xing": "0"}


@pytest.mark.parametrize(
    "rate,codec_options,container_options,tag",
    [
        (44100, None, None, "Info"),  # CBR, MPEG-1
        (44100, VBR, None, "Xing"),  # VBR, MPEG-1
        (8000, None, None, "Info"),  # MPEG-2.5: 576 samples a frame, 9-byte side info
        (44100, None, NO_XING, None),  # CBR without any header: nothing declared
        (44100, VBR, NO_XING, None),  # VBR without a header: FFmpeg's estimate is 1% off; not ours to trust
    ],
    ids=["cbr-info", "vbr-xing", "mpeg2.5-info", "cbr-no-header", "vbr-no-header"],
)
def test_intact_mp3s_decode_and_cut_ones_with_a_header_fail(rate, codec_options, container_options, tag):
    data = _encode_speechlike("mp3", "libmp3lame", rate, codec_options=codec_options,
                              container_options=container_options)  # fmt: skip
    assert (data.find(b"Xing") != -1, data.find(b"Info") != -1) == (tag == "Xing", tag == "Info")
    audio = decode_bytes(data)
    assert audio.duration_s == pytest.approx(4.0, abs=0.06)
    if tag is not None:
        _expect(rf"truncated audio: decoded 1\.\d\d s of the 4\.00 s the MP3's {tag} header declares",
                decode_bytes, data[: len(data) // 3])  # fmt: skip


_MP3_BITRATES_V1_L3 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)


def test_mp3_with_a_vbri_header():
    """Fraunhofer's VBRI header (always 32 bytes after the first frame's header), built by hand
    in front of a header-less CBR file: a frame FFmpeg reads as the header, not as audio."""
    body = _encode_speechlike("mp3", "libmp3lame", 44100, container_options=NO_XING)
    start = body.find(b"\xff\xfb")
    assert start != -1
    b2 = body[start + 2]
    length = 144 * _MP3_BITRATES_V1_L3[b2 >> 4] * 1000 // 44100 + ((b2 >> 1) & 1)
    frames = (len(body) - start) // length
    vbri = bytearray(length)
    vbri[:4] = body[start : start + 4]
    vbri[36:54] = b"VBRI" + struct.pack(">HHHII", 1, 0, 75, len(body) - start, frames)
    data = body[:start] + bytes(vbri) + body[start:]
    full = decode_bytes(data)
    assert full.duration_s == pytest.approx(frames * 1152 / 44100, abs=0.06)
    _expect(rf"truncated audio: decoded 1\.\d\d s of the {frames * 1152 / 44100:.2f} s the MP3's VBRI header declares",
            decode_bytes, data[: len(data) // 3])  # fmt: skip


def test_mp3_behind_a_large_id3_tag(tmp_path):
    """Cover art can make the ID3v2 tag longer than any fixed head: the Info frame is found behind it."""
    data = sample_path("river.mp3").read_bytes()
    size = 200_000
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    padded = b"ID3\x04\x00\x00" + syncsafe + bytes(size) + data  # an ID3 tag of padding, then the file as it was
    path = tmp_path / "art.mp3"
    path.write_bytes(padded)
    assert decode(path).duration_s == pytest.approx(4.25, abs=0.01)
    path.write_bytes(padded[: size + len(data) // 3])
    _expect(r"truncated audio: decoded 1\.\d\d s of the 4\.25 s the MP3's Info header declares", decode, path)


def _flac_frame_boundary(data: bytes, after: int) -> int:
    """Offset of the first FLAC frame header (sync 0xFFF8, fixed block size) at or after ``after``."""
    pos = data.find(b"\xff\xf8", after)
    assert pos != -1
    return pos


def test_flac_cut_between_frames_is_caught_by_streaminfo():
    """Cut exactly where a frame starts, FFmpeg reports no error: only STREAMINFO's total gives it away."""
    data = sample_path("doctor.flac").read_bytes()
    cut = data[: _flac_frame_boundary(data, len(data) // 2)]
    _expect(r"truncated audio: decoded \d\.\d\d s of the 3\.71 s FLAC STREAMINFO declares", decode_bytes, cut)


def test_flac_without_a_total_sample_count_decodes():
    """A streaming encoder writes total samples 0 (unknown): nothing is declared, nothing is refused."""
    data = bytearray(sample_path("doctor.flac").read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first
    packed = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
    data[18:26] = packed.to_bytes(8, "big")
    assert decode_bytes(bytes(data)).duration_s == pytest.approx(3.7112, abs=0.01)


def test_ogg_ending_on_a_page_boundary_is_not_a_cut_page():
    """Pages are whole: the check says nothing (an Ogg file states no length), no false alarm."""
    data = sample_path("children.ogg").read_bytes()
    last = data.rfind(b"OggS")
    audio = decode_bytes(data[:last])  # every page but the last, each complete
    assert 0 < audio.duration_s < EXPECTED["children.ogg"][0]


def test_intact_opus_in_ogg_decodes():
    data = _encode_speechlike("ogg", "libopus", 48000)
    assert decode_bytes(data).duration_s == pytest.approx(4.0, abs=0.06)
    _expect(r"truncated audio: the file ends inside an Ogg page \(\d+ of its \d+ bytes\) after 0\.99 s decoded",
            decode_bytes, data[: len(data) // 3])  # fmt: skip
    last = data.rfind(b"OggS")  # cut inside the last page's own header
    _expect(r"truncated audio: the file ends inside an Ogg page \(its header cut after 12 bytes\) after 3\.\d\d s "
            r"decoded",
            decode_bytes, data[: last + 12])  # fmt: skip


def test_long_ogg_is_judged_from_its_tail_by_real_pages():
    """The check reads the last two pages' worth of bytes and starts at the first real page there:
    "OggS" inside packet data (here forged near the start of that window) is no page (its CRC fails)."""
    from raytranscribe.audio import _OGG_TAIL

    data = _encode_speechlike("ogg", "libopus", 48000, seconds=40.0)
    assert len(data) > 2 * _OGG_TAIL
    assert decode_bytes(data).duration_s == pytest.approx(40.0, abs=0.06)
    fake_at = len(data) - _OGG_TAIL + 10  # a "page" of 44 bytes, followed by no page
    forged = data[:fake_at] + b"OggS\x00\x00" + bytes(20) + b"\x01\x10" + data[fake_at + 28 :]
    _expect(r"truncated audio: the file ends inside an Ogg page \(\d+ of its \d+ bytes\) after 3\d\.\d\d s decoded",
            decode_bytes, forged[:-500])  # fmt: skip


def test_webm_written_live_has_no_duration_and_decodes():
    """A live-written WebM (MediaRecorder, `-live 1`) has no Duration element: nothing to compare."""
    data = _encode_speechlike("webm", "libopus", 48000, container_options={"live": "1"})
    with av.open(io.BytesIO(data)) as container:
        assert container.duration is None
    assert decode_bytes(data).duration_s == pytest.approx(4.0, abs=0.06)


def test_m4a_with_its_index_first_cut_to_a_third(tmp_path):
    """moov before mdat (faststart): the index opens, the samples it lists are missing."""
    data = _encode_speechlike("ipod", "aac", 44100, container_options={"movflags": "+faststart"},
                              path=tmp_path / "a.m4a")  # fmt: skip
    assert data.find(b"moov") < data.find(b"mdat")
    assert decode_bytes(data).duration_s == pytest.approx(4.0, abs=0.06)
    _expect(r"corrupt or truncated audio: .*Invalid data found when processing input.* after 1\.\d\d s decoded",
            decode_bytes, data[: len(data) // 3])  # fmt: skip


# --- any layout, any rate ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix,codec", [(".wav", "pcm_s16le"), (".flac", "flac")])
@pytest.mark.parametrize("layout", ["stereo", "5.1", "7.1"])
@pytest.mark.parametrize("rate", [8000, 44100, 48000, 96000])
def test_every_layout_and_rate_mixes_down_at_its_level(tmp_path, suffix, codec, layout, rate):
    """2, 6 and 8 channels (8 used to crash the process in the mix-down), WAV and FLAC, 8 to 96 kHz:
    one 16 kHz mono tone at the level each channel had."""
    path = media.encode(tmp_path / f"tone{suffix}", media.tone(1.0, rate=rate), rate=rate, layout=layout,
                        codec=codec, source_rate=rate)  # fmt: skip
    audio = decode(path)
    assert (audio.source_rate, audio.source_channels) == (rate, len(av.AudioLayout(layout).channels))
    assert audio.duration_s == pytest.approx(1.0, abs=0.01)
    spectrum = np.abs(np.fft.rfft(audio.samples))
    assert np.argmax(spectrum) * SAMPLE_RATE / audio.samples.size == pytest.approx(440.0, abs=2.0)
    assert float(np.max(np.abs(audio.samples))) == pytest.approx(0.5, abs=0.03)


def test_sixteen_channels_without_a_layout_decode(tmp_path):
    path = tmp_path / "sixteen.wav"
    _sox("-n", "-r", "44100", "-c", "16", str(path), "synth", "1", "sine", "440")
    audio = decode(path)
    assert audio.source_channels == 16 and audio.duration_s == pytest.approx(1.0, abs=0.01)
    assert 0.1 < float(np.max(np.abs(audio.samples))) <= 1.0


def _sox(*args: str) -> None:
    import shutil
    import subprocess

    sox = shutil.which("sox")
    assert sox, "sox is not installed (apt-get install sox)"
    subprocess.run([sox, *args], check=True, capture_output=True)


def test_gsm_wav_decodes_whole_despite_the_complaint_about_its_last_block(tmp_path, caplog):
    """FFmpeg fails a GSM 6.10 WAV's last, partial block after every declared sample is decoded:
    a warning, not a refusal."""
    path = media.gsm_wav(tmp_path / "call.wav", media.tone(4.68))
    with caplog.at_level("WARNING", logger="raytranscribe.audio"):
        audio = decode(path)
    assert (audio.source_format, audio.source_rate, audio.source_channels) == ("wav", 8000, 1)
    assert audio.duration_s == pytest.approx(4.68, abs=0.01)
    assert any("ignored a decoder error after the 4.68 s the WAV data chunk declares" in r.message
               for r in caplog.records), caplog.records  # fmt: skip


def test_gsm_wav_cut_short_is_still_truncated(tmp_path):
    data = media.gsm_wav(tmp_path / "call.wav", media.tone(4.68)).read_bytes()
    _expect(r"(truncated audio: decoded 2\.\d\d s of the 4\.68 s the WAV data chunk declares"
            r"|corrupt or truncated audio: .* after 2\.\d\d s decoded)",
            decode_bytes, data[: len(data) // 2])  # fmt: skip


# --- in a helper process -------------------------------------------------------------------------


@pytest.fixture
def decoders():
    helpers = Decoders("tests.support.crashing_decoder:open_stream")
    yield helpers
    helpers.close()


def _read_all(stream, piece: int = SAMPLE_RATE) -> np.ndarray:
    parts = []
    while (part := stream.read(piece)).size:
        parts.append(part)
    return np.concatenate(parts)


def test_a_helper_decodes_what_this_process_decodes(decoders, tmp_path):
    gsm = media.gsm_wav(tmp_path / "call.wav", media.tone(4.68))
    for path in [*sample_paths(), gsm]:
        with decoders.open(path) as stream:
            got = _read_all(stream, 12_345)  # pieces that cut across the helper's frames
            assert stream.exhausted
        np.testing.assert_array_equal(got, decode(path).samples)
    assert stream.warnings and "ignored a decoder error" in stream.warnings[0]  # the GSM file's


def test_a_crash_in_the_helper_fails_that_file_and_the_next_decodes(decoders, tmp_path):
    fox = sample_path("fox.wav")
    segv = media.encode(tmp_path / "segv.wav", media.tone(5.0), rate=48000, layout="7.1", codec="pcm_s16le")
    with pytest.raises(AudioDecodeError) as info:
        with decoders.open(segv) as stream:
            _read_all(stream)
    assert re.fullmatch(
        r"decoder crashed with SIGSEGV on an 8-channel 48 kHz wav stream after \d+\.\d\d s decoded", info.value.message
    ), info.value.message
    assert info.value.transient is False and info.value.stage is Stage.DECODE
    with decoders.open(fox) as stream:
        np.testing.assert_array_equal(_read_all(stream), decode(fox).samples)


def test_a_bad_file_is_the_helpers_answer_not_its_end(decoders, tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 100)
    for _ in range(2):
        with pytest.raises(AudioDecodeError, match="WAV header could not be read|not an audio file"):
            decoders.open(junk)
    with decoders.open(sample_path("doctor.flac")) as stream:
        assert stream.info.source_channels == 2 and _read_all(stream).size > SAMPLE_RATE


def test_a_reader_that_stops_early_does_not_get_the_rest_later(decoders, tmp_path):
    """A task that fails mid-file leaves its helper mid-answer: that helper is stopped, and the
    next file gets its own samples, not the rest of the last one's."""
    long = media.encode(tmp_path / "long.flac", media.tone(30.0), rate=16000, layout="mono", codec="flac")
    with decoders.open(long) as stream:
        assert stream.read(SAMPLE_RATE).size == SAMPLE_RATE
    fox = sample_path("fox.wav")
    with decoders.open(fox) as stream:
        np.testing.assert_array_equal(_read_all(stream), decode(fox).samples)


def test_a_long_file_paused_between_pieces_leaves_room_for_others(tmp_path):
    """One decode slot: a long file read one piece at a time (its helper paused by the pipe) does
    not hold it, so short files decode meanwhile; each gets its own samples, in order."""
    helpers = Decoders(slots=1)
    try:
        long = media.encode(tmp_path / "long.flac", media.tone(90.0), rate=48000, layout="5.1", codec="flac")
        fox = sample_path("fox.wav")
        parts = []
        with helpers.open(long) as slow:
            while (part := slow.read(20 * SAMPLE_RATE)).size:
                parts.append(part)
                with helpers.open(fox) as quick:  # would wait forever were the slot still held
                    np.testing.assert_array_equal(_read_all(quick), decode(fox).samples)
        assert len(parts) == 5
        np.testing.assert_array_equal(np.concatenate(parts), decode(long).samples)
    finally:
        helpers.close()
