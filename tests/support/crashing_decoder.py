"""A ``worker.decoder`` plug-in for tests: the real decoder (``audio.open_stream``), except that a
file whose name contains ``segv`` kills the decode helper with SIGSEGV after its first piece of
audio, as a decoder bug inside FFmpeg would on a hostile file. Nothing else differs.

Used as ``WorkerSettings(decoder="tests.support.crashing_decoder:open_stream")``; the actor's
runtime_env puts the repository on PYTHONPATH, and its decode helpers inherit the actor's path.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from raytranscribe import audio


class _Crashing:
    def __init__(self, real: audio.DecodeStream) -> None:
        self._real = real
        self.info = real.info
        self.warnings = real.warnings

    def __enter__(self) -> _Crashing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._real.close()

    def pieces(self) -> Iterator[np.ndarray]:
        for piece in self._real.pieces():
            yield piece
            os.kill(os.getpid(), signal.SIGSEGV)


def open_stream(path: Path) -> audio.DecodeStream:
    real = audio.open_stream(path)
    return _Crashing(real) if "segv" in Path(path).name else real
