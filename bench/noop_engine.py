"""A no-op engine for the control-plane benchmark: no model, no audio work, an empty transcript.

Used as ``engine="bench.noop_engine:NoopEngine"`` (the repository root on the workers' PYTHONPATH),
so what the benchmark measures is everything around the engine: claim, presign, dispatch, the
worker's transfers and pipeline, recording.
"""

from __future__ import annotations

import numpy as np

from raytranscribe.engines.base import EngineSpec, TranscribeOptions, Transcript


class NoopEngine:
    device = "cpu"

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        return Transcript(
            segments=(), language="en", duration_s=len(audio) / 16000.0, engine=self.spec.engine,
            model=self.spec.model, options=options,
        )
