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
half a file would hand the user a transcript that looks complete and is not. A decode error once
the whole length the file declares is in (a partial last block, as GSM 6.10 WAVs end) is only a
warning: nothing is missing.

Any channel layout and rate FFmpeg reads is mixed down to mono by FFmpeg's resampler.

A worker decodes in helper processes (:class:`Decoders`): a crash inside FFmpeg fails that file
alone (``decoder crashed with SIGSEGV on an 8-channel 48 kHz wav stream``), and the samples come
back in pieces, so no file is held whole. ``decode``/``decode_bytes`` decode whole in this process.

What can be checked depends on the container. A CBR MP3 without a Xing/Info/VBRI header and a
live-written WebM (no Duration element) state no length anywhere, so a cut one just looks shorter.
Ogg states no length either, but its pages carry their own sizes: a file that ends inside a page
was cut.

Pure silence is *not* an error: a valid file of zeros decodes to zeros.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn, Protocol

import av
import numpy as np

from raytranscribe.engines.base import SAMPLE_RATE
from raytranscribe.errors import AudioDecodeError

__all__ = [
    "DEFAULT_DECODER",
    "SAMPLE_RATE",
    "ChildStream",
    "DecodeStream",
    "DecodedAudio",
    "Decoders",
    "StreamInfo",
    "decode",
    "decode_bytes",
    "open_stream",
]

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


@dataclass(frozen=True)
class StreamInfo:
    """What an opened file holds, known before a sample is decoded."""

    source_format: str
    source_rate: int
    source_channels: int
    declared_s: float | None  # the length the file itself states (see _declared_duration), None if none

    def describe(self) -> str:
        """e.g. "an 8-channel 48 kHz wav stream"."""
        what = f"{self.source_channels}-channel {self.source_rate / 1000:g} kHz {self.source_format} stream"
        return f"{'an' if what.startswith(('8', '11-', '18-')) else 'a'} {what}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class DecodeStream(Protocol):
    """An opened audio file decoding on demand (what a ``worker.decoder`` plug-in returns).

    ``pieces`` yields 16 kHz mono float32 arrays in order and raises AudioDecodeError when the file
    turns out corrupt or truncated (checked at its end too); ``warnings`` holds what was forgiven.
    """

    info: StreamInfo
    warnings: list[str]

    def pieces(self) -> Iterator[np.ndarray]: ...

    def close(self) -> None: ...

    def __enter__(self) -> DecodeStream: ...

    def __exit__(self, *exc: object) -> None: ...


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
    """Decode the audio file at ``path`` whole, in this process. Raises AudioDecodeError (permanent)
    when it cannot. Untrusted files in a worker go through :class:`Decoders` instead."""
    with open_stream(path) as stream:
        return _whole(stream)


def decode_bytes(data: bytes, name_hint: str = "input") -> DecodedAudio:
    """Decode audio held in memory (``name_hint`` only appears in logs)."""
    if len(data) == 0:
        raise AudioDecodeError("empty file (0 bytes)")
    with _AvStream(io.BytesIO(data), label=name_hint, head=data[:_HEAD_BYTES], peek=_BytesPeek(data)) as stream:
        return _whole(stream)


def _whole(stream: DecodeStream) -> DecodedAudio:
    chunks = list(stream.pieces())
    samples = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    info = stream.info
    return DecodedAudio(
        samples=samples,
        duration_s=samples.size / SAMPLE_RATE,
        source_format=info.source_format,
        source_rate=info.source_rate,
        source_channels=info.source_channels,
    )


def open_stream(path: Path | str) -> DecodeStream:
    """Open the audio file at ``path`` for decoding piece by piece (the default ``worker.decoder``).
    Raises AudioDecodeError when it is no audio file at all."""
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
    try:
        peek = _FilePeek(fh, size)
        head = peek(0, _HEAD_BYTES)
        return _AvStream(str(path), label=path.name, head=head, peek=peek, owned=fh)
    except OSError as exc:
        fh.close()
        raise AudioDecodeError(f"cannot read {path}: {exc}") from exc
    except BaseException:
        fh.close()
        raise


def _reason(exc: BaseException) -> str:
    """FFmpeg's own words without the errno and the (temporary) file name PyAV appends."""
    if isinstance(exc, av.FFmpegError) and getattr(exc, "strerror", None):
        return str(exc.strerror)
    return str(exc)


class _AvStream:
    """One file through PyAV: opened (and judged a file of audio) at construction, decoded by ``pieces``."""

    def __init__(
        self, source: str | BinaryIO, label: str, head: bytes, peek: _Peek, owned: BinaryIO | None = None
    ) -> None:
        self.label, self._peek, self._owned = label, peek, owned
        self.warnings: list[str] = []
        try:
            self._container = av.open(source, mode="r")
        except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as exc:
            kind = _sniff(head)
            if kind is not None:
                # A known container signature FFmpeg cannot parse: a cut or damaged file, not a stranger.
                raise AudioDecodeError(
                    f"corrupt or truncated audio: {kind} header could not be read: {_reason(exc)}"
                ) from exc
            raise AudioDecodeError(f"not an audio file: {_reason(exc)}") from exc
        container = self._container
        fmt = container.format.name
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            container.close()
            raise AudioDecodeError(f"no audio stream in {fmt} (streams: {', '.join(kinds)})")
        self._stream = container.streams.audio[0]
        declared = _declared_duration(container, self._stream, head, peek)
        self._what = declared[1] if declared else None
        self.info = StreamInfo(
            source_format=fmt,
            source_rate=int(self._stream.rate or 0),
            source_channels=int(self._stream.channels or 0),
            declared_s=declared[0] if declared else None,
        )

    def __enter__(self) -> _AvStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()
        if self._owned is not None:
            self._owned.close()

    def pieces(self) -> Iterator[np.ndarray]:
        # FFmpeg's resampler mixes down (any layout, any channel count) and resamples; its mix is
        # scaled so that identical channels keep their level (_downmix_gain). Frame by frame keeps
        # memory flat whatever the file's length.
        info = self.info
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        gain: float | None = None
        decoded = 0
        try:
            for frame in self._container.decode(self._stream):
                frame.pts = None  # timestamps from broken muxers must not make the resampler drop audio
                if gain is None:
                    gain = _downmix_gain(frame.layout)
                for out in resampler.resample(frame):
                    piece = _mono(out, gain)
                    decoded += piece.size
                    yield piece
        except (av.FFmpegError, ValueError) as exc:  # ValueError: PyAV on a mid-stream layout change
            at = decoded / SAMPLE_RATE
            if info.declared_s is None or info.declared_s - at > _slack(info.declared_s):
                raise AudioDecodeError(f"corrupt or truncated audio: {_reason(exc)} after {at:.2f} s decoded") from exc
            # The whole declared length is in: what failed is a partial block after it (a GSM WAV's last one).
            self.warnings.append(
                f"ignored a decoder error after the {info.declared_s:.2f} s {self._what} declares "
                f"had been decoded: {_reason(exc)}"
            )
            log.warning("%s: %s", self.label, self.warnings[-1])
        for out in resampler.resample(None):
            piece = _mono(out, gain or 1.0)
            decoded += piece.size
            yield piece
        self._check_end(decoded)

    def _check_end(self, decoded: int) -> None:
        info = self.info
        if decoded == 0:
            raise AudioDecodeError("no audio samples decoded")
        duration_s = decoded / SAMPLE_RATE
        if info.declared_s is not None and info.declared_s - duration_s > _slack(info.declared_s):
            raise AudioDecodeError(
                f"truncated audio: decoded {duration_s:.2f} s of the {info.declared_s:.2f} s {self._what} declares"
            )
        if info.source_format == "ogg":
            cut = _ogg_cut_page(self._peek)
            if cut is not None:
                have, need = cut
                where = f"{have} of its {need} bytes" if need is not None else f"its header cut after {have} bytes"
                raise AudioDecodeError(
                    f"truncated audio: the file ends inside an Ogg page ({where}) after {duration_s:.2f} s decoded"
                )
        log.debug(
            "decoded %s: %s %d Hz x%d -> %.2f s",
            self.label, info.source_format, info.source_rate, info.source_channels, duration_s,
        )  # fmt: skip


def _slack(declared_s: float) -> float:
    return max(_TRUNCATION_SLACK_S, _TRUNCATION_SLACK_RATIO * declared_s)


def _mono(frame: av.AudioFrame, gain: float) -> np.ndarray:
    mono = frame.to_ndarray().reshape(-1)  # packed mono: one plane
    return mono * np.float32(gain) if gain != 1.0 else mono


@functools.lru_cache(maxsize=64)
def _layout_gain(layout: str, channels: int) -> float:
    if channels <= 1:
        return 1.0
    ones = av.AudioFrame.from_ndarray(np.ones((1, 256 * channels), dtype=np.float32), format="flt", layout=layout)
    ones.sample_rate = SAMPLE_RATE
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    out = [f.to_ndarray().reshape(-1) for f in (*resampler.resample(ones), *resampler.resample(None))]
    level = float(np.max(np.concatenate(out))) if out else 0.0
    return 1.0 / level if level > 0 else 1.0


def _downmix_gain(layout: av.AudioLayout) -> float:
    """What scales FFmpeg's mono mix of ``layout`` so identical channels keep their level: its matrix
    sums them at -3 dB per pair (a full-scale stereo file would peak at 1.41, a 7.1 one at 4.4).
    Measured by mixing a frame of ones, once per layout."""
    return _layout_gain(layout.name, len(layout.channels))


# --- decoding in a child process ------------------------------------------------------------------
#
# FFmpeg is C: a decoder bug on a hostile file is a signal, not an exception, and would kill the
# process with every task it holds. A worker decodes untrusted files in helper processes instead:
# each is started once (``python -m raytranscribe.audio <decoder>``), takes one request at a time
# on its stdin (a JSON line naming the file) and answers on its stdout with frames: the stream's
# info, its PCM (16 kHz mono float32) in pieces as it decodes, warnings, then done or an error.
# The worker reads the PCM as it needs it (a pipe: the helper waits while the worker transcribes),
# so no file is ever held whole. A helper that dies mid-answer fails that file alone.

DEFAULT_DECODER = "raytranscribe.audio:open_stream"
_FRAME = struct.Struct("<cI")  # kind, payload length
_INFO, _PCM, _WARNING, _DONE, _ERROR = b"I", b"P", b"W", b"D", b"E"
_PIPE_PIECE = SAMPLE_RATE * 4  # samples per PCM frame: 4 s of audio, 256 KB


def _resolve(decoder: str) -> Callable[[Path], DecodeStream]:
    module, _, name = decoder.partition(":")
    if not module or not name:
        raise ValueError(f"worker.decoder must be 'module:function', got {decoder!r}")
    return getattr(importlib.import_module(module), name)


def _child_main(decoder: str) -> None:
    """The helper's loop (runs in the child). Its stdout carries frames only: anything else that
    writes to fd 1 (a print, FFmpeg) is sent to stderr."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    logging.getLogger("raytranscribe").setLevel(logging.ERROR)  # warnings travel as frames, logged by the reader
    open_fn = _resolve(decoder)
    try:
        _serve(open_fn, out)
    except BrokenPipeError:  # the reader is gone (its actor died): so is the work
        pass


def _serve(open_fn: Callable[[Path], DecodeStream], out: BinaryIO) -> None:
    def send(kind: bytes, payload: bytes = b"") -> None:
        out.write(_FRAME.pack(kind, len(payload)))
        out.write(payload)

    for line in sys.stdin.buffer:
        path = Path(json.loads(line)["path"])
        try:
            with open_fn(path) as stream:
                send(_INFO, json.dumps(stream.info.to_dict()).encode())
                out.flush()
                held: list[np.ndarray] = []
                n = 0
                for piece in stream.pieces():
                    held.append(piece)
                    n += piece.size
                    if n >= _PIPE_PIECE:
                        send(_PCM, np.concatenate(held).astype("<f4", copy=False).tobytes())
                        held, n = [], 0
                if held:
                    send(_PCM, np.concatenate(held).astype("<f4", copy=False).tobytes())
                for warning in stream.warnings:
                    send(_WARNING, warning.encode())
            send(_DONE)
        except AudioDecodeError as exc:
            send(_ERROR, exc.message.encode())
        except Exception as exc:  # a decoder plug-in's bug: this file's failure, the helper goes on
            send(_ERROR, f"decoder failed: {type(exc).__name__}: {exc}".encode())
        out.flush()


class _Helper:
    """One helper process and its pipes."""

    def __init__(self, decoder: str) -> None:
        env = dict(os.environ)
        # The helper imports what this process imports (a plug-in from the actor's runtime_env too).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "raytranscribe.audio", decoder],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class Decoders:
    """Helper processes that decode for this process: ``open(path)`` lends one for a file.

    Helpers are reused (starting one costs an interpreter and PyAV, a few hundred ms): up to
    ``slots`` decode at once (decoding is CPU work: more than the cores gain nothing, and a burst of
    short files must not start a helper each), and as many are kept idle; one is started at
    construction so the first file does not wait. A long file's helper waits, paused by the pipe,
    while its reader transcribes a piece: from its first piece on it holds no slot.
    """

    def __init__(self, decoder: str = DEFAULT_DECODER, slots: int | None = None) -> None:
        _resolve(decoder)  # a plug-in that cannot be imported is the worker's error, at start-up
        self.decoder = decoder
        self.slots = slots or max(2, min(8, os.cpu_count() or 2))
        self._free = threading.BoundedSemaphore(self.slots)
        self._lock = threading.Lock()
        self._idle: list[_Helper] = [_Helper(decoder)]
        self._closed = False

    def open(self, path: Path) -> ChildStream:
        """Start decoding ``path``: its info is read before this returns. Raises AudioDecodeError
        (the file's own, or a crash of the helper on it)."""
        request = (json.dumps({"path": str(path)}) + "\n").encode()
        self._free.acquire()
        try:
            for attempt in (0, 1):
                helper = self._lend()
                try:
                    assert helper.proc.stdin is not None
                    helper.proc.stdin.write(request)
                    helper.proc.stdin.flush()
                except OSError:  # an idle helper that died meanwhile: not this file's doing
                    helper.stop()
                    if attempt:
                        raise
                    continue
                break
        except BaseException:
            self._free.release()
            raise
        return ChildStream(self, helper, path)  # it holds the slot now, and frees it

    def _slot_done(self) -> None:
        self._free.release()

    def _lend(self) -> _Helper:
        with self._lock:
            while self._idle:
                helper = self._idle.pop()
                if helper.alive():
                    return helper
                helper.stop()
        return _Helper(self.decoder)

    def _give_back(self, helper: _Helper) -> None:
        with self._lock:
            if not self._closed and helper.alive() and len(self._idle) < self.slots:
                self._idle.append(helper)
                return
        helper.stop()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for helper in idle:
            helper.stop()


class ChildStream:
    """A file decoding in a helper: ``info`` at once, then its samples ``read`` in chunks.

    ``close`` gives the helper back when the answer was read to its end; otherwise (the reader
    stopped early) the helper is stopped, since it is still writing a file nobody wants.
    """

    def __init__(self, owner: Decoders, helper: _Helper, path: Path) -> None:
        self._owner, self._helper, self._path = owner, helper, path
        self.warnings: list[str] = []
        self._pending: list[np.ndarray] = []  # PCM received and not yet read
        self._pending_n = 0
        self._ended = False  # the helper said done (or failed): nothing more will come
        self._closed = False
        self._slot = True  # holds one of the owner's decode slots (until its first piece or its end)
        self.decoded_samples = 0
        self.info: StreamInfo | None = None
        try:
            kind, payload = self._frame()
            if kind == _INFO:
                self.info = StreamInfo(**json.loads(payload))
            else:
                self._unexpected(kind, payload)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> ChildStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def exhausted(self) -> bool:
        return self._ended and self._pending_n == 0

    def read(self, n: int) -> np.ndarray:
        """Up to ``n`` samples (fewer only at the end; empty after it). Raises AudioDecodeError."""
        while self._pending_n < n and not self._ended:
            kind, payload = self._frame()
            if kind == _PCM:
                piece = np.frombuffer(payload, dtype="<f4")
                self._pending.append(piece)
                self._pending_n += piece.size
                self.decoded_samples += piece.size
            elif kind == _WARNING:
                self.warnings.append(payload.decode())
            elif kind == _DONE:
                self._ended = True
            else:
                self._unexpected(kind, payload)
        take = min(n, self._pending_n)
        out = np.empty(take, dtype=np.float32)
        at = 0
        while at < take:
            piece = self._pending[0]
            k = min(piece.size, take - at)
            out[at : at + k] = piece[:k]
            at += k
            if k == piece.size:
                self._pending.pop(0)
            else:
                self._pending[0] = piece[k:]
        self._pending_n -= take
        self._free_slot()  # done, or paused by the pipe until the next read: no longer decoding
        return out

    def _free_slot(self) -> None:
        if self._slot:
            self._slot = False
            self._owner._slot_done()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._free_slot()
        self._pending.clear()
        if self._ended:
            self._owner._give_back(self._helper)
        else:
            self._helper.stop()

    def _unexpected(self, kind: bytes, payload: bytes) -> NoReturn:
        self._ended = True
        if kind == _ERROR:
            raise AudioDecodeError(payload.decode())
        self._helper.stop()
        raise AudioDecodeError(f"decoder sent an unknown frame {kind!r} on {self._what()}")

    def _what(self) -> str:
        return self.info.describe() if self.info is not None else f"{self._path.name}"

    def _frame(self) -> tuple[bytes, bytes]:
        pipe = self._helper.proc.stdout
        assert pipe is not None
        head = pipe.read(_FRAME.size)
        if len(head) == _FRAME.size:
            kind, size = _FRAME.unpack(head)
            payload = pipe.read(size)
            if len(payload) == size:
                return kind, payload
        # The helper died mid-answer: a signal inside FFmpeg, the OOM killer, a plug-in's exit.
        self._ended = False  # nothing to give back
        self._helper.stop()
        code = self._helper.proc.returncode
        if code is not None and code < 0:
            how = f"crashed with {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        after = f" after {self.decoded_samples / SAMPLE_RATE:.2f} s decoded" if self.info is not None else ""
        raise AudioDecodeError(f"decoder {how} on {self._what()}{after}")


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


if __name__ == "__main__":  # a decode helper: python -m raytranscribe.audio <module:function>
    _child_main(sys.argv[1])
