"""Stand-ins for the control-plane benchmark, plugged in through the worker's public options: an
engine that does no audio work, a file mover that moves no files, and a decoder that reads none.

``NoopEngine`` is used as ``engine.engine="bench.noop:NoopEngine"`` (the repository root on the
workers' PYTHONPATH): no model, an empty transcript. ``NoTransfer`` (``worker.transfer_class``) and
``open_silence`` (``worker.decoder``) leave the production worker (take/results, pipeline threads,
pings, start-up, its per-task pipeline) without what touches files: no download, no upload, 0.1 s
of silence for every input. On a small machine the actors' file work would otherwise bound the rate
long before the driver does, and the driver's side (claim, presign, dispatch, recording) is what the
benchmark is about.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from raytranscribe.audio import StreamInfo
from raytranscribe.config import TransferSettings
from raytranscribe.engines.base import EngineSpec, TranscribeOptions, Transcript
from raytranscribe.transfer import Downloaded

NO_TRANSFER = "bench.noop:NoTransfer"
SILENCE = "bench.noop:open_silence"


class NoopEngine:
    device = "cpu"

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        return Transcript(
            segments=(), language="en", duration_s=len(audio) / 16000.0, engine=self.spec.engine,
            model=self.spec.model, options=options,
        )


class NoTransfer:
    """``worker.transfer_class`` that moves nothing: a download names a file it never writes (the
    silent decoder reads none), an upload is dropped."""

    def __init__(self, settings: TransferSettings, *, connections: int = 8) -> None:
        self.settings = settings

    def download(self, url: str, dest_dir: Path, *, name_hint: str = "input", task_id: int | None = None,
                 attempt: int | None = None) -> Downloaded:  # fmt: skip
        return Downloaded(path=dest_dir / "input.wav", size=0, content_type="audio/wav")

    def upload(self, url: str, body: bytes, content_type: str, *, task_id: int | None = None,
               attempt: int | None = None) -> str:  # fmt: skip
        return '"noop"'

    def close(self) -> None:
        pass


class _Silence:
    """0.1 s of 16 kHz silence, whatever the path (a ``worker.decoder`` plug-in's stream)."""

    def __init__(self) -> None:
        self.info = StreamInfo(source_format="wav", source_rate=16000, source_channels=1, declared_s=0.1)
        self.warnings: list[str] = []

    def pieces(self) -> Iterator[np.ndarray]:
        yield np.zeros(1600, dtype=np.float32)

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silence:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def open_silence(path: Path | str) -> _Silence:
    return _Silence()
