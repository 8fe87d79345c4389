"""Fault injection for worker tests: the real faster-whisper engine, plus failure modes a test can
ask for through the task's ``initial_prompt``. Nothing here stands in for a component: every task
that does not ask for a fault is transcribed by the real engine with the real model.

- ``"fault:crash"``: the worker process dies at once (as on a segfault or the OOM killer).
- ``"fault:hang"``: the transcription never returns (a wedged GPU kernel).
- ``"fault:slow:<seconds>"``: transcribe, but first sleep (to catch a task mid-flight).
- ``"fault:raise"``: the engine raises an unexpected exception (as a CUDA out-of-memory would).

Used as ``engine="tests.support.faulty_engine:FaultyEngine"``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from raytranscribe.engines.base import EngineSpec, TranscribeOptions, Transcript


class FaultyEngine:
    def __init__(self, spec: EngineSpec) -> None:
        from raytranscribe.engines.faster import FasterWhisperEngine

        self.spec = spec
        self._real = FasterWhisperEngine(EngineSpec(**{**spec.__dict__, "engine": "faster-whisper"}))

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        prompt = options.initial_prompt or ""
        if prompt == "fault:crash":
            os._exit(137)
        if prompt == "fault:hang":
            while True:
                time.sleep(3600)
        if prompt == "fault:raise":
            raise RuntimeError("CUDA error: out of memory (injected)")
        if prompt.startswith("fault:slow:"):
            time.sleep(float(prompt.rsplit(":", 1)[1]))
        clean = TranscribeOptions(**{**options.__dict__, "initial_prompt": None})
        t = self._real.transcribe(audio, clean)
        return Transcript(
            segments=t.segments,
            language=t.language,
            duration_s=t.duration_s,
            engine=self.spec.engine,
            model=self.spec.model,
            options=options,
            language_probability=t.language_probability,
        )
