"""Fault injection for the batched path: the real faster-whisper engine (prepare and batched decode
with the real model), plus failure modes a task asks for through its ``initial_prompt``. Every window
of a task that asks for no fault is decoded by the real engine, in the same batch as the faulty one.

- ``"fault:raise"``: a batch holding this task's window raises (a poison input crashing the kernel);
  alone in a batch it still raises, so bisection can pin it.
- ``"fault:oom:<n>"``: a batch of more than ``n`` windows holding this task's raises
  EngineOutOfMemory (the device is too small for that batch), smaller batches decode normally.
- ``"fault:hang"``: a batch holding this task's window never returns (a wedged GPU kernel).

Used as ``engine="tests.support.batch_faults:FaultyBatchEngine"``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from raytranscribe.engines.base import EngineSpec, PreparedAudio, Segment, TranscribeOptions, Transcript, WindowJob
from raytranscribe.errors import EngineOutOfMemory

PREFIX = "fault:"


def _clean(options: TranscribeOptions) -> TranscribeOptions:
    prompt = options.initial_prompt or ""
    return replace(options, initial_prompt=None) if prompt.startswith(PREFIX) else options


class FaultyBatchEngine:
    def __init__(self, spec: EngineSpec) -> None:
        from raytranscribe.engines.faster import FasterWhisperEngine

        self.spec = spec
        self._real = FasterWhisperEngine(replace(spec, engine="faster-whisper"))
        self.device = self._real.device
        self.batch_size = self._real.batch_size

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcript:
        t = self._real.transcribe(audio, _clean(options))
        return replace(t, engine=self.spec.engine, options=options)

    def prepare(self, audio: np.ndarray, options: TranscribeOptions) -> PreparedAudio:
        return self._real.prepare(audio, _clean(options))

    def decode_windows(self, batch: Sequence[WindowJob]) -> list[list[Segment]]:
        prompts = [job.options.initial_prompt or "" for job in batch]
        if "fault:hang" in prompts:
            while True:
                time.sleep(3600)
        if "fault:raise" in prompts:
            raise RuntimeError(f"poison window in a batch of {len(batch)} (injected)")
        for p in prompts:
            if p.startswith("fault:oom:") and len(batch) > int(p.rsplit(":", 1)[1]):
                raise EngineOutOfMemory(f"CUDA out of memory on a batch of {len(batch)} windows (injected)")
        return self._real.decode_windows([replace(job, options=_clean(job.options)) for job in batch])
