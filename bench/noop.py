"""Stand-ins for the control-plane benchmark: an engine that does no audio work, and a worker that
moves no files.

``NoopEngine`` is used as ``engine="bench.noop:NoopEngine"`` (the repository root on the workers'
PYTHONPATH): no model, an empty transcript. ``NoTransferWorker`` is the production worker actor
(take/results, pipeline threads, pings, start-up) whose per-task pipeline skips what touches files:
no download, no decode, no upload; it runs the engine on 0.1 s of silence and renders the outputs.
On a small machine the actors' file work would otherwise bound the rate long before the driver does,
and the driver's side (claim, presign, dispatch, recording) is what the benchmark is about.
"""

from __future__ import annotations

import numpy as np

from raytranscribe import formats
from raytranscribe.contracts import Outcome, TaskResult, TaskSpec
from raytranscribe.engines.base import EngineSpec, TranscribeOptions, Transcript
from raytranscribe.worker import TranscriptionWorker


class NoopEngine:
    device = "cpu"

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        return Transcript(
            segments=(), language="en", duration_s=len(audio) / 16000.0, engine=self.spec.engine,
            model=self.spec.model, options=options,
        )


class NoTransferWorker(TranscriptionWorker):
    def _process(self, spec: TaskSpec) -> Outcome:
        assert self.engine is not None  # the pool dispatches only after ready()
        transcript = self.engine.transcribe(_SILENCE, spec.options)
        formats.render_all(transcript, [t.format for t in spec.outputs])
        result = TaskResult(
            audio_duration_s=transcript.duration_s,
            language=transcript.language,
            outputs=tuple(t.uri for t in spec.outputs),
        )
        return Outcome(spec.task_id, spec.attempt, result=result, actor=self.config.name, node_id=self._node_id)


_SILENCE = np.zeros(1600, dtype=np.float32)
