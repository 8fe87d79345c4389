"""Real audio files of any layout, rate and codec for decode tests: encoded by PyAV (FFmpeg) or sox.

Every channel of a file carries the same signal, so a correct mix-down keeps the signal's level.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import av
import numpy as np

from raytranscribe.engines.base import SAMPLE_RATE


def encode(path: Path, mono: np.ndarray, *, rate: int, layout: str, codec: str,
           source_rate: int = SAMPLE_RATE) -> Path:
    """``mono`` (float32 at ``source_rate``) on every channel of ``layout``, resampled to ``rate``,
    encoded with ``codec`` in the container ``path``'s suffix names."""
    channels = len(av.AudioLayout(layout).channels)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        fmt = stream.codec_context.codec.audio_formats[0].name
        frame_size = stream.codec_context.frame_size or None
        to_file = av.AudioResampler(format=fmt, layout=layout, rate=rate, frame_size=frame_size)
        step = source_rate * 10  # ten seconds a frame: memory stays flat for long files
        for at in range(0, mono.size, step):
            piece = np.ascontiguousarray(mono[at : at + step], dtype=np.float32)
            # packed float: one plane of interleaved channels, whatever their number
            frame = av.AudioFrame.from_ndarray(np.repeat(piece, channels)[None, :], format="flt", layout=layout)
            frame.sample_rate = source_rate
            for chunk in to_file.resample(frame):
                chunk.pts = None
                out.mux(stream.encode(chunk))
        for chunk in to_file.resample(None):
            chunk.pts = None
            out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    return path


def tone(seconds: float, freq: float = 440.0, level: float = 0.5, rate: int = SAMPLE_RATE) -> np.ndarray:
    return (level * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def wav16(path: Path, mono: np.ndarray) -> Path:
    """16-bit mono WAV at 16 kHz."""
    pcm = (np.clip(mono, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return path


def gsm_wav(path: Path, mono: np.ndarray) -> Path:
    """A GSM 6.10 WAV (8 kHz mono, the call-centre format), made by sox (FFmpeg has no GSM encoder)."""
    sox = shutil.which("sox")
    assert sox, "sox is not installed (apt-get install sox): GSM 6.10 files are made with it"
    with tempfile.TemporaryDirectory() as tmp:
        src = wav16(Path(tmp) / "src.wav", mono)
        subprocess.run([sox, str(src), "-r", "8000", "-c", "1", "-e", "gsm-full-rate", str(path)],
                       check=True, capture_output=True)  # fmt: skip
    return path


def silent_flac(path: Path, seconds: int, rate: int = SAMPLE_RATE) -> Path:
    """``seconds`` of digital silence as a mono FLAC, written a minute at a time (fastest settings)."""
    with av.open(str(path), "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        stream.codec_context.format = "s16"
        # blocks of 65535 samples (FLAC's largest): 14 times fewer frames to write and decode
        stream.codec_context.options = {"compression_level": "0", "frame_size": "65535"}
        minute = np.zeros((1, rate * 60), dtype=np.int16)
        left = seconds
        while left > 0:
            n = min(left, 60) * rate
            frame = av.AudioFrame.from_ndarray(minute[:, :n], format="s16", layout="mono")
            frame.sample_rate = rate
            out.mux(stream.encode(frame))
            left -= 60
        out.mux(stream.encode(None))
    return path
