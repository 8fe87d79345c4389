"""Fault injection for the batched path: the real faster-whisper engine (prepare and batched decode
with the real model), plus failure modes a task asks for through its ``initial_prompt``. Every window
of a task that asks for no fault is decoded by the real engine, in the same batch as the faulty one.

- ``"fault:raise"``: a batch holding this task's window raises (a poison input crashing the kernel);
  alone in a batch it still raises, so bisection can pin it.
- ``"fault:oom:<n>"``: a batch of more than ``n`` windows holding this task's raises
  EngineOutOfMemory (the device is too small for that batch), smaller batches decode normally.
- ``"fault:hang"``: a batch holding this task's window never returns (a wedged GPU kernel).
- ``"fault:crash"``: a batch holding this task's window kills the worker process (a segfault in the
  kernel): every task in that model call dies with it.
- ``"fault:trace:<folder>:<tag>"``: no fault; every engine call that holds this task (prepare, and each
  batch) is logged as it starts and ends, with the time, to ``<folder>/<pid>.log``: after a process
  is killed, its log says what it was computing on (``computing_at_death``). A batch holding a traced
  window also lasts at least ``TRACED_BATCH_S``, as a large model's batch on a GPU does, so a test's
  kills land inside engine calls and not only between them.

Used as ``engine="tests.support.batch_faults:FaultyBatchEngine"``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

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
        with _traced([options.initial_prompt or ""]):
            return self._real.prepare(audio, _clean(options))

    def decode_windows(self, batch: Sequence[WindowJob]) -> list[list[Segment]]:
        prompts = [job.options.initial_prompt or "" for job in batch]
        with _traced(prompts):
            started = time.monotonic()
            out = self._decode_windows(batch, prompts)
            if any(p.startswith(TRACE) for p in prompts):
                time.sleep(max(0.0, TRACED_BATCH_S - (time.monotonic() - started)))
            return out

    def _decode_windows(self, batch: Sequence[WindowJob], prompts: list[str]) -> list[list[Segment]]:
        if "fault:crash" in prompts:
            os._exit(139)
        if "fault:hang" in prompts:
            while True:
                time.sleep(3600)
        if "fault:raise" in prompts:
            raise RuntimeError(f"poison window in a batch of {len(batch)} (injected)")
        for p in prompts:
            if p.startswith("fault:oom:") and len(batch) > int(p.rsplit(":", 1)[1]):
                raise EngineOutOfMemory(f"CUDA out of memory on a batch of {len(batch)} windows (injected)")
        return self._real.decode_windows([replace(job, options=_clean(job.options)) for job in batch])


TRACE = PREFIX + "trace:"
TRACED_BATCH_S = 2.5


def trace_prompt(folder: Path, tag: str) -> str:
    return f"{TRACE}{folder}:{tag}"


@contextmanager
def _traced(prompts: Sequence[str]) -> Iterator[None]:
    traced = [p[len(TRACE):].rsplit(":", 1) for p in prompts if p.startswith(TRACE)]
    if not traced:
        yield
        return
    log = Path(traced[0][0]) / f"{os.getpid()}.log"
    tags = " ".join(tag for _, tag in traced)

    def write(what: str) -> None:
        with open(log, "a") as f:
            f.write(f"{what} {time.time():.6f} {tags}\n")

    write("start")
    try:
        yield
    finally:
        write("end")


def computing_at_death(folder: Path, pid: int, killed_at: float, slack_s: float) -> set[str]:
    """The tags process ``pid`` was computing on when it was killed at ``killed_at`` (time.time()):
    calls that started and never ended, or ended within ``slack_s`` of the kill (the driver hears of
    an end a moment after it: not a false charge)."""
    log = folder / f"{pid}.log"
    if not log.exists():
        return set()
    open_calls: dict[str, int] = {}
    recent: set[str] = set()
    for line in log.read_text().splitlines():
        what, at, *tags = line.split()
        for tag in tags:
            open_calls[tag] = open_calls.get(tag, 0) + (1 if what == "start" else -1)
            if what == "end" and killed_at - float(at) <= slack_s:
                recent.add(tag)
    return {tag for tag, n in open_calls.items() if n > 0} | recent
