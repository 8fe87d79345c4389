"""Decode any audio PyAV can read into 16 kHz mono float32 samples.

Pure compute on a local file or bytes: no Ray, no store, no network.

Every failure is a permanent :class:`~raytranscribe.errors.AudioDecodeError` (stage ``decode``)
whose message names what was wrong:

* ``file not found: <path>`` / ``<path> is a directory, not an audio file`` / ``cannot read <path>: ...``
* ``empty file (0 bytes)``
* ``not an audio file: <av error>`` (FFmpeg cannot identify the container)
* ``no audio stream in <container> (streams: video)``
* ``corrupt or truncated audio: <av error> after N s decoded``
* ``corrupt or truncated audio: <kind> header could not be read: <av error>`` (a WAV/FLAC/Ogg/
  MP3/WebM/MP4 signature FFmpeg cannot parse, e.g. an M4A cut before its moov box)
* ``truncated audio: decoded Y s of the X s <what> declares`` (what: the MP3's Xing, Info or VBRI
  header, FLAC STREAMINFO, the WAV data chunk, the WebM Duration element, the MP4 header)
* ``truncated audio: the file ends inside an Ogg page (N of its M bytes) after Y s decoded``
* ``no audio samples decoded``

Partial decodes are errors, never results: if decoding stops early (a decode error part-way, or
fewer samples than the container header promises), the whole file fails. Silently transcribing
half a file would hand the user a transcript that looks complete and is not.

What can be checked depends on the container. A CBR MP3 without a Xing/Info/VBRI header and a
live-written WebM (no Duration element) state no length anywhere, so a cut one just looks shorter.
Ogg states no length either, but its pages carry their own sizes: a file that ends inside a page
was cut.

Pure silence is *not* an error: a valid file of zeros decodes to zeros.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import av
import numpy as np

from raytranscribe.engines.base import SAMPLE_RATE
from raytranscribe.errors import AudioDecodeError

__all__ = ["SAMPLE_RATE", "DecodedAudio", "decode", "decode_bytes"]

log = logging.getLogger(__name__)

# How far short of the header's declared duration a decode may end before we call the file
# truncated. Codec priming/padding (AAC, MP3, Opus) legitimately moves the end by tens of ms.
_TRUNCATION_SLACK_S = 0.2
_TRUNCATION_SLACK_RATIO = 0.03


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, mono, SAMPLE_RATE, 1-D
    duration_s: float
    source_format: str  # FFmpeg demuxer name(s), e.g. "wav", "mov,mp4,m4a,3gp,3g2,mj2"
    source_rate: int
    source_channels: int


class _Peek(Protocol):
    """Random reads of the raw file, for the headers we parse ourselves (FFmpeg hides or estimates them)."""

    @property
    def size(self) -> int: ...

    def __call__(self, offset: int, n: int) -> bytes: ...


@dataclass(frozen=True)
class _BytesPeek:
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def __call__(self, offset: int, n: int) -> bytes:
        return self.data[max(offset, 0) : max(offset, 0) + n]


@dataclass(frozen=True)
class _FilePeek:
    fh: BinaryIO
    size: int

    def __call__(self, offset: int, n: int) -> bytes:
        self.fh.seek(max(offset, 0))
        return self.fh.read(n)


def decode(path: Path | str) -> DecodedAudio:
    """Decode the audio file at ``path``. Raises AudioDecodeError (permanent) when it cannot."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise AudioDecodeError(f"file not found: {path}") from exc
    if path.is_dir():
        raise AudioDecodeError(f"{path} is a directory, not an audio file")
    if size == 0:
        raise AudioDecodeError("empty file (0 bytes)")
    try:
        fh = path.open("rb")
    except OSError as exc:  # no permission: nothing a retry would change
        raise AudioDecodeError(f"cannot read {path}: {exc}") from exc
    with fh:
        try:
            peek = _FilePeek(fh, size)
            head = peek(0, _HEAD_BYTES)
        except OSError as exc:
            raise AudioDecodeError(f"cannot read {path}: {exc}") from exc
        return _decode(str(path), label=path.name, head=head, peek=peek)


def decode_bytes(data: bytes, name_hint: str = "input") -> DecodedAudio:
    """Decode audio held in memory (``name_hint`` only appears in logs)."""
    if len(data) == 0:
        raise AudioDecodeError("empty file (0 bytes)")
    return _decode(io.BytesIO(data), label=name_hint, head=data[:_HEAD_BYTES], peek=_BytesPeek(data))


def _reason(exc: BaseException) -> str:
    """FFmpeg's own words without the errno and the (temporary) file name PyAV appends."""
    if isinstance(exc, av.FFmpegError) and getattr(exc, "strerror", None):
        return str(exc.strerror)
    return str(exc)


def _decode(source: str | BinaryIO, label: str, head: bytes, peek: _Peek) -> DecodedAudio:
    try:
        container = av.open(source, mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as exc:
        kind = _sniff(head)
        if kind is not None:
            # A known container signature FFmpeg cannot parse: a cut or damaged file, not a stranger.
            raise AudioDecodeError(
                f"corrupt or truncated audio: {kind} header could not be read: {_reason(exc)}"
            ) from exc
        raise AudioDecodeError(f"not an audio file: {_reason(exc)}") from exc

    with container:
        fmt = container.format.name
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise AudioDecodeError(f"no audio stream in {fmt} (streams: {', '.join(kinds)})")
        stream = container.streams.audio[0]
        source_rate = int(stream.rate or 0)
        source_channels = int(stream.channels or 0)
        declared = _declared_duration(container, stream, head, peek)

        # The resampler converts sample format and rate, keeping the channels; we average them
        # ourselves because FFmpeg's stereo->mono mix sums at -3 dB (a full-scale stereo file
        # would peak at 1.41). Frame by frame keeps memory flat.
        resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        decoded = 0
        try:
            for frame in container.decode(stream):
                frame.pts = None  # timestamps from broken muxers must not make the resampler drop audio
                for out in resampler.resample(frame):
                    decoded += _append_mono(chunks, out)
            for out in resampler.resample(None):
                decoded += _append_mono(chunks, out)
        except (av.FFmpegError, ValueError) as exc:  # ValueError: PyAV on a mid-stream layout change
            raise AudioDecodeError(
                f"corrupt or truncated audio: {_reason(exc)} after {decoded / SAMPLE_RATE:.2f} s decoded"
            ) from exc

    if decoded == 0:
        raise AudioDecodeError("no audio samples decoded")
    samples = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    duration_s = samples.size / SAMPLE_RATE
    if declared is not None:
        declared_s, what = declared
        if declared_s - duration_s > max(_TRUNCATION_SLACK_S, _TRUNCATION_SLACK_RATIO * declared_s):
            raise AudioDecodeError(
                f"truncated audio: decoded {duration_s:.2f} s of the {declared_s:.2f} s {what} declares"
            )
    if fmt == "ogg":
        cut = _ogg_cut_page(peek)
        if cut is not None:
            have, need = cut
            where = f"{have} of its {need} bytes" if need is not None else f"its header cut after {have} bytes"
            raise AudioDecodeError(
                f"truncated audio: the file ends inside an Ogg page ({where}) after {duration_s:.2f} s decoded"
            )
    log.debug(
        "decoded %s: %s %d Hz x%d -> %.2f s", label, fmt, source_rate, source_channels, duration_s,
    )
    return DecodedAudio(
        samples=samples,
        duration_s=duration_s,
        source_format=fmt,
        source_rate=source_rate,
        source_channels=source_channels,
    )


def _append_mono(chunks: list[np.ndarray], frame: av.AudioFrame) -> int:
    planes = frame.to_ndarray()  # (channels, samples) for planar formats
    mono = planes[0] if planes.shape[0] == 1 else planes.mean(axis=0, dtype=np.float32)
    chunks.append(mono)
    return mono.size


def _declared_duration(
    container: av.container.InputContainer, stream: av.AudioStream, head: bytes, peek: _Peek
) -> tuple[float, str] | None:
    """(seconds, what declares them) when the file states its own length exactly enough to catch
    truncation; None when it states none.

    Only what the file itself records counts, never FFmpeg's estimate from bit rate and file size
    (a cut file simply looks shorter to that): the MP3 Xing/Info/VBRI frame count, FLAC STREAMINFO
    and the WAV data chunk size, read here because FFmpeg does not say whether a duration came
    from them (and clamps the WAV one to the file size); the Matroska/WebM Duration element and
    the MP4 header through PyAV (Matroska without Duration leaves it None).
    """
    name = container.format.name
    if name == "wav":
        return _labelled(_wav_declared_duration(head), "the WAV data chunk")
    if name == "mp3":
        return _mp3_declared_duration(peek)
    if name == "flac":
        return _labelled(_flac_declared_duration(peek), "FLAC STREAMINFO")
    what = {"matroska,webm": "the WebM Duration element", "mov,mp4,m4a,3gp,3g2,mj2": "the MP4 header"}.get(name)
    if what is None:
        return None
    if stream.duration is not None and stream.time_base is not None:
        return _labelled(float(stream.duration * stream.time_base), what)
    if container.duration is not None:
        return _labelled(container.duration / av.time_base, what)
    return None


def _labelled(seconds: float | None, what: str) -> tuple[float, str] | None:
    return (seconds, what) if seconds else None


_HEAD_BYTES = 64 * 1024

# Leading bytes of containers that carry audio: used only to word an error better.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"RIFF", "WAV"),
    (0, b"fLaC", "FLAC"),
    (0, b"OggS", "Ogg"),
    (0, b"ID3", "MP3"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (4, b"ftyp", "MP4/M4A"),
)


def _sniff(head: bytes) -> str | None:
    for offset, magic, kind in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return kind
    return None


def _wav_declared_duration(head: bytes) -> float | None:
    """Seconds the RIFF ``data`` chunk claims, or None when unknown (streamed WAVs write 0 or -1)."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, None
    while pos + 8 <= len(head):
        chunk_id = head[pos : pos + 4]
        size = int.from_bytes(head[pos + 4 : pos + 8], "little")
        if chunk_id == b"fmt " and pos + 16 <= len(head):
            byte_rate = int.from_bytes(head[pos + 16 : pos + 20], "little")
        elif chunk_id == b"data":
            if not byte_rate or size in (0, 0xFFFFFFFF):
                return None
            return size / byte_rate
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    return None


def _skip_id3v2(peek: _Peek) -> int:
    """Offset after any ID3v2 tags (several may be stacked; cover art can make one megabytes long)."""
    pos = 0
    for _ in range(16):
        tag = peek(pos, 10)
        if len(tag) < 10 or tag[:3] != b"ID3" or any(b & 0x80 for b in tag[6:10]):
            break
        size = (tag[6] << 21) | (tag[7] << 14) | (tag[8] << 7) | tag[9]  # "syncsafe": 7 bits a byte
        pos += 10 + size + (10 if tag[5] & 0x10 else 0)  # flag 0x10: a footer follows
    return pos


# MPEG audio: sample rates by version bits (0: MPEG-2.5, 2: MPEG-2, 3: MPEG-1; 1 is reserved).
_MP3_RATES = {0: (11025, 12000, 8000), 2: (22050, 24000, 16000), 3: (44100, 48000, 32000)}


def _mp3_declared_duration(peek: _Peek) -> tuple[float, str] | None:
    """Seconds the first frame's Xing/Info (LAME, FFmpeg) or VBRI (Fraunhofer) header declares.

    The frame count times the samples per frame, less the encoder delay and padding of a LAME
    tag (FFmpeg drops those samples when decoding). None without such a header (plain CBR files).
    """
    base = _skip_id3v2(peek)
    buf = peek(base, _HEAD_BYTES)
    for i in range(len(buf) - 3):
        b1, b2, b3 = buf[i + 1], buf[i + 2], buf[i + 3]
        if buf[i] != 0xFF or b1 & 0xE0 != 0xE0:
            continue
        version, layer = (b1 >> 3) & 3, (b1 >> 1) & 3
        rate_index, bitrate_index = (b2 >> 2) & 3, b2 >> 4
        if version == 1 or layer == 0 or rate_index == 3 or bitrate_index == 15:
            continue  # not a frame header: a stray 0xFF in junk before the audio
        break
    else:
        return None
    if layer != 1:  # Layer I/II files carry no Xing header
        return None
    rate = _MP3_RATES[version][rate_index]
    mono = b3 >> 6 == 3
    per_frame = 1152 if version == 3 else 576
    side_info = (17 if mono else 32) if version == 3 else (9 if mono else 17)
    xing = i + 4 + side_info
    tag = buf[xing : xing + 4]
    if tag in (b"Xing", b"Info"):
        flags = int.from_bytes(buf[xing + 4 : xing + 8], "big")
        if not flags & 1:  # no frame count
            return None
        frames = int.from_bytes(buf[xing + 8 : xing + 12], "big")
        # Optional fields (byte count, TOC, quality), then LAME's tag with delay and padding at +21.
        lame = xing + 8 + 4 + (4 if flags & 2 else 0) + (100 if flags & 4 else 0) + (4 if flags & 8 else 0)
        trim = 0
        if buf[lame : lame + 4] in (b"LAME", b"Lavf", b"Lavc"):
            packed = int.from_bytes(buf[lame + 21 : lame + 24], "big")
            trim = (packed >> 12) + (packed & 0xFFF)
        what = f"the MP3's {tag.decode()} header"
    elif buf[i + 36 : i + 40] == b"VBRI":  # always 32 bytes after the frame header
        frames = int.from_bytes(buf[i + 50 : i + 54], "big")
        trim = 0
        what = "the MP3's VBRI header"
    else:
        return None
    samples = frames * per_frame - trim
    return (samples / rate, what) if frames and samples > 0 else None


def _flac_declared_duration(peek: _Peek) -> float | None:
    """Seconds of FLAC STREAMINFO's total-samples field (0: unknown, as a streaming encoder writes)."""
    base = _skip_id3v2(peek)
    head = peek(base, 26)
    if len(head) < 26 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:  # STREAMINFO is always the first block
        return None
    packed = int.from_bytes(head[18:26], "big")  # rate (20 bits), channels (3), bits (5), total samples (36)
    rate, total = packed >> 44, packed & ((1 << 36) - 1)
    return total / rate if rate and total else None


# An Ogg page is at most 27 + 255 + 255 * 255 bytes: a tail of this size holds a whole page
# before any page the file ends inside.
_OGG_MAX_PAGE = 27 + 255 + 255 * 255
_OGG_TAIL = 2 * _OGG_MAX_PAGE + 27


def _ogg_crc_table() -> tuple[int, ...]:
    table = []
    for n in range(256):  # CRC-32, polynomial 0x04C11DB7, not reflected (RFC 3533)
        c = n << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) if c & 0x80000000 else c << 1
        table.append(c & 0xFFFFFFFF)
    return tuple(table)


_OGG_CRC = _ogg_crc_table()


def _ogg_page_length(buf: bytes, pos: int) -> int | None:
    """Length of the page whose header starts at ``pos``, or None if its header is not all in ``buf``."""
    if len(buf) < pos + 27:
        return None
    count = buf[pos + 26]
    if len(buf) < pos + 27 + count:
        return None
    return 27 + count + sum(buf[pos + 27 : pos + 27 + count])


def _ogg_page_valid(buf: bytes, pos: int) -> bool:
    length = _ogg_page_length(buf, pos)
    if buf[pos + 4 : pos + 5] != b"\x00" or length is None or pos + length > len(buf):
        return False
    page = buf[pos : pos + 22] + b"\x00\x00\x00\x00" + buf[pos + 26 : pos + length]
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[(crc >> 24) ^ byte]
    return crc == int.from_bytes(buf[pos + 22 : pos + 26], "little")


def _ogg_cut_page(peek: _Peek) -> tuple[int, int | None] | None:
    """(bytes present, bytes needed) when the file ends inside an Ogg page, else None.

    From the first page of the tail that checks out (its CRC: "OggS" also occurs inside packets),
    walk page by page: an intact file ends exactly where its last page does. Bytes that are not a
    page at all (a trailing tag, junk) are not ours to judge.
    """
    start = max(peek.size - _OGG_TAIL, 0)
    tail = peek(start, _OGG_TAIL)
    pos = tail.find(b"OggS")
    while pos != -1 and not _ogg_page_valid(tail, pos):
        pos = tail.find(b"OggS", pos + 1)
    if pos == -1:
        return None
    while True:
        pos += _ogg_page_length(tail, pos) or 0
        rest = tail[pos:]
        if not rest or not (rest[:4] == b"OggS" or b"OggS".startswith(rest)):
            return None
        length = _ogg_page_length(tail, pos)
        if length is None or pos + length > len(tail):
            return len(rest), length  # needed: unknown while the header itself is cut
