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
* ``truncated audio: the header declares X s but only Y s could be decoded``
* ``no audio samples decoded``

Partial decodes are errors, never results: if decoding stops early (a decode error part-way, or
fewer samples than the container header promises), the whole file fails. Silently transcribing
half a file would hand the user a transcript that looks complete and is not.

Pure silence is *not* an error: a valid file of zeros decodes to zeros.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
        with path.open("rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as exc:  # a directory, no permission: nothing a retry would change
        raise AudioDecodeError(f"cannot read {path}: {exc}") from exc
    return _decode(str(path), label=path.name, head=head)


def decode_bytes(data: bytes, name_hint: str = "input") -> DecodedAudio:
    """Decode audio held in memory (``name_hint`` only appears in logs)."""
    if len(data) == 0:
        raise AudioDecodeError("empty file (0 bytes)")
    return _decode(io.BytesIO(data), label=name_hint, head=data[:_HEAD_BYTES])


def _reason(exc: BaseException) -> str:
    """FFmpeg's own words without the errno and the (temporary) file name PyAV appends."""
    if isinstance(exc, av.FFmpegError) and getattr(exc, "strerror", None):
        return str(exc.strerror)
    return str(exc)


def _decode(source: str | BinaryIO, label: str, head: bytes) -> DecodedAudio:
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
        declared_s = _declared_duration(container, stream, head)

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
    if declared_s is not None:
        shortfall = declared_s - duration_s
        if shortfall > max(_TRUNCATION_SLACK_S, _TRUNCATION_SLACK_RATIO * declared_s):
            raise AudioDecodeError(
                f"truncated audio: the header declares {declared_s:.2f} s but only {duration_s:.2f} s could be decoded"
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


def _declared_duration(container: av.container.InputContainer, stream: av.AudioStream, head: bytes) -> float | None:
    """Duration the header promises, when it is exact enough to catch truncation.

    Only formats whose header records the real length count: the WAV data chunk size (FFmpeg
    clamps it to the file size, so we read it ourselves), FLAC STREAMINFO, the Matroska/WebM
    Duration element and the MP4 moov box. MP3 and Ogg durations are estimated from bit rate and
    file size, so a cut file there simply looks shorter and cannot be caught this way.
    """
    name = container.format.name
    if name == "wav":
        return _wav_declared_duration(head)
    if name not in ("flac", "matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2"):
        return None
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


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
