"""Cross-file batched decoding: 30 s windows of many files share one model call.

Pure bookkeeping: no threads, no Ray, no I/O. The worker actor drives a :class:`WindowScheduler`
under its own lock (tasks arrive as :class:`PreparedAudio` from ``BatchEngine.prepare``, batches
leave through :func:`run_batch`); :func:`transcribe_batch` is the same loop for one process
(benchmarks, tests).

Why windows and not files: Whisper's encoder always sees 30 s, so a 4 s clip alone costs a whole
window; a batch of windows from many files keeps every slot of the device busy, and a long file
needs no special path, its windows fill batches by themselves.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from raytranscribe.engines.base import (
    SAMPLE_RATE,
    WINDOW_S,
    BatchEngine,
    Engine,
    EngineSpec,
    PreparedAudio,
    Segment,
    Transcript,
    TranscribeOptions,
    Window,
    WindowJob,
    Word,
)
from raytranscribe.engines.windows import speech_after
from raytranscribe.errors import EngineOutOfMemory, RayTranscribeError, Stage, TranscriptionError

__all__ = [
    "BatchItem",
    "PerWindow",
    "WindowRef",
    "WindowScheduler",
    "is_batch_engine",
    "run_batch",
    "transcribe_batch",
]

log = logging.getLogger(__name__)

# How far past the oldest pending window the scheduler looks for windows to pack and group: wide
# enough to fill slots, narrow enough that no task's windows are overtaken for long.
LOOKAHEAD = 4

# Packing: Whisper's encoder pads every input to 30 s, so a 4 s clip alone in a slot costs a whole
# window. Windows up to PACK_MAX_S share a slot with others of the same prompt, PACK_GAP_S of
# silence apart (a pause Whisper ends a segment at), and their segments are split back by time.
PACK_MAX_S = 20.0
# Unfinished decodes continued per window, at most (each continuation is shorter than the last).
MAX_CONTINUATIONS = 2
PACK_GAP_S = 1.0
PACK_MAX_WINDOWS = 2  # windows sharing one slot: more and a weak model hears the first file in the next
_PACK_GAP = np.zeros(int(PACK_GAP_S * SAMPLE_RATE), dtype=np.float32)

# What an item of a batch comes back as: its segments, or the error that only it caused.
WindowResult = list[Segment] | Exception


@dataclass(frozen=True, eq=False)
class WindowRef:
    """One window of one task."""

    key: Hashable
    index: int  # position of the window within its task
    job: WindowJob
    continuation: int = 0  # how many unfinished decodes led to this window (0: a window from prepare)
    solo: bool = False  # packing lost or mixed up its text once: it gets a slot of its own


@dataclass(frozen=True, eq=False)
class BatchItem:
    """One slot of a batch: one window, or several short ones packed into one (``offsets_s`` apart)."""

    refs: tuple[WindowRef, ...]
    offsets_s: tuple[float, ...]  # where each ref starts inside ``job``'s window
    job: WindowJob

    @classmethod
    def single(cls, ref: WindowRef) -> BatchItem:
        return cls((ref,), (0.0,), ref.job)

    @classmethod
    def packed(cls, refs: Sequence[WindowRef]) -> BatchItem:
        if len(refs) == 1:
            return cls.single(refs[0])
        pieces, offsets, at = [], [], 0.0
        for i, ref in enumerate(refs):
            if i:
                pieces.append(_PACK_GAP)
                at += PACK_GAP_S
            offsets.append(at)
            pieces.append(ref.job.window.samples)
            at += ref.job.window.duration_s
        first = refs[0].job
        window = Window(start_s=0.0, samples=np.concatenate(pieces))
        return cls(tuple(refs), tuple(offsets), WindowJob(window, first.language, first.options))

    @property
    def keys(self) -> tuple[Hashable, ...]:
        return tuple(ref.key for ref in self.refs)


def _pack_key(job: WindowJob) -> tuple:
    """Windows that may share a slot: the same prompt and decoding parameters."""
    o = job.options
    # vad_filter: the engine judges a slot's silence by its first window's options
    return (job.language, o.task, o.beam_size, o.temperature, o.word_timestamps, o.initial_prompt, o.vad_filter)


@dataclass(eq=False)
class _Task:
    prepared: PreparedAudio
    options: TranscribeOptions
    windows: list[Window]  # prepare's windows, then any continuations
    results: list[list[Segment] | None]
    done: int = 0
    failed: bool = False


@dataclass
class WindowScheduler:
    """Windows of waiting tasks, packed into batches; transcripts out when a task's last window is done.

    Not thread-safe: the owner (the worker actor's batcher) serialises calls.
    """

    spec: EngineSpec
    pack: bool | None = None  # short windows share slots (PACK_MAX_S); None: spec.pack_windows
    _tasks: dict[Hashable, _Task] = field(default_factory=dict)
    _pending: list[WindowRef] = field(default_factory=list)  # oldest first
    _alone: set[Hashable] = field(default_factory=set)  # tasks whose windows share no batch with another's

    def __post_init__(self) -> None:
        if self.pack is None:
            self.pack = self.spec.pack_windows

    def add(
        self, key: Hashable, prepared: PreparedAudio, options: TranscribeOptions, *, alone: bool = False
    ) -> Transcript | None:
        """Queue a task's windows. A file with no windows (silence, empty VAD) is done at once:
        its empty transcript comes back here and the scheduler keeps nothing of it. ``alone``: its
        windows go into batches of their own (it may crash the process; no neighbour shares the call)."""
        if key in self._tasks:
            raise ValueError(f"task {key!r} is already scheduled")
        if not prepared.windows:
            return _transcript(self.spec, prepared, options, [])
        self._tasks[key] = _Task(prepared, options, list(prepared.windows), [None] * len(prepared.windows))
        if alone:
            self._alone.add(key)
        for i, window in enumerate(prepared.windows):
            self._pending.append(WindowRef(key, i, WindowJob(window, prepared.language, options)))
        return None

    def pending_windows(self) -> int:
        """Windows not yet handed out."""
        return len(self._pending)

    def pending_slots(self) -> float:
        """About how many batch slots the pending windows would fill, short ones packed: what
        tells the actor's batcher a batch is full (``pending_windows`` overcounts packed clips)."""
        if not self.pack:
            return float(len(self._pending))
        alone = [r for r in self._pending if r.job.window.duration_s > PACK_MAX_S or r.solo]
        packable = len(self._pending) - len(alone)
        packed_s = sum(r.job.window.duration_s + PACK_GAP_S for r in self._pending) - sum(
            r.job.window.duration_s + PACK_GAP_S for r in alone
        )
        return len(alone) + max(packed_s / (WINDOW_S + PACK_GAP_S), packable / PACK_MAX_WINDOWS)

    def tasks(self) -> int:
        return len(self._tasks)

    def next_batch(self, max_items: int) -> list[BatchItem]:
        """Up to ``max_items`` slots of pending windows, taken out of the queue.

        The oldest pending window always goes (no task starves). Within the next ``LOOKAHEAD``
        batches' worth of windows, short windows of the same prompt are packed into shared slots
        (first fit, longest first), and the slots chosen are those closest in length to the oldest:
        a batched decode runs as long as its longest item, and an engine that encodes windows at
        their own length (fitted windows) runs one call per length, so a batch of like lengths
        wastes the least.
        """
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        queue = self._pending
        if not self._alone:
            batch = self._pick(queue, max_items)
        elif queue[0].key in self._alone:  # its turn: a batch of its own windows, one to a slot
            batch = [BatchItem.single(ref) for ref in queue if ref.key == queue[0].key][:max_items]
        else:
            batch = self._pick([ref for ref in queue if ref.key not in self._alone], max_items)
        taken = {id(ref) for item in batch for ref in item.refs}
        self._pending = [ref for ref in queue if id(ref) not in taken]
        return batch

    def _pick(self, queue: Sequence[WindowRef], max_items: int) -> list[BatchItem]:
        pool = queue[: LOOKAHEAD * max_items]
        bins = self._bins(pool)
        oldest = next(b for b in bins if 0 in b)
        target = self._length(pool, oldest)
        rest = sorted(
            (b for b in bins if b is not oldest), key=lambda b: (abs(self._length(pool, b) - target), min(b))
        )
        chosen = [oldest, *rest[: max_items - 1]]
        return [BatchItem.packed([pool[i] for i in sorted(b)]) for b in chosen]

    def _bins(self, pool: Sequence[WindowRef]) -> list[list[int]]:
        """Pool indices grouped into slots: first-fit decreasing within each pack key."""
        bins: list[list[int]] = []
        if not self.pack:
            return [[i] for i in range(len(pool))]
        open_bins: dict[tuple, list[tuple[list[int], float]]] = {}
        order = sorted(range(len(pool)), key=lambda i: -pool[i].job.window.duration_s)
        for i in order:
            d = pool[i].job.window.duration_s
            if d > PACK_MAX_S or pool[i].solo:
                bins.append([i])
                continue
            candidates = open_bins.setdefault(_pack_key(pool[i].job), [])
            for n, (b, used) in enumerate(candidates):
                if used + PACK_GAP_S + d <= WINDOW_S and len(b) < PACK_MAX_WINDOWS:
                    b.append(i)
                    candidates[n] = (b, used + PACK_GAP_S + d)
                    break
            else:
                b = [i]
                bins.append(b)
                candidates.append((b, d))
        return bins

    @staticmethod
    def _length(pool: Sequence[WindowRef], b: list[int]) -> float:
        return sum(pool[i].job.window.duration_s for i in b) + PACK_GAP_S * (len(b) - 1)

    def complete(
        self, batch: Sequence[BatchItem], results: Sequence[WindowResult | PerWindow]
    ) -> list[tuple[Hashable, Transcript | Exception]]:
        """Record a batch's results (one per item); return the tasks that finished with it.

        A task whose window failed finishes at once with that error (its other windows are
        dropped); windows of tasks already failed or removed are ignored.
        """
        if len(batch) != len(results):
            raise ValueError(f"{len(results)} results for a batch of {len(batch)} items")
        finished: list[tuple[Hashable, Transcript | Exception]] = []
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, PerWindow):
                parts = list(result)
            elif isinstance(result, Exception):
                parts = [result] * len(item.refs)
            else:
                parts = _unpack(item, result)
            for ref, part in zip(item.refs, parts, strict=True):
                task = self._tasks.get(ref.key)
                if task is None or task.failed:
                    continue
                if isinstance(part, Exception):
                    self.fail(ref.key)
                    finished.append((ref.key, part))
                    continue
                if part is None:  # its text ran into a neighbour's: decode it again, alone
                    self._pending.insert(0, replace(ref, continuation=ref.continuation + 1, solo=True))
                    continue
                if task.results[ref.index] is None:
                    task.results[ref.index] = part
                    task.done += 1
                    self._continue(task, ref, part, packed=len(item.refs) > 1)
                if task.done == len(task.results):
                    del self._tasks[ref.key]
                    self._alone.discard(ref.key)
                    segments = _file_segments(task)
                    finished.append((ref.key, _transcript(self.spec, task.prepared, task.options, segments)))
        return finished

    def _continue(self, task: _Task, ref: WindowRef, segments: list[Segment], packed: bool) -> None:
        """Queue the rest of a window whose decode stopped before its speech did.

        Sequential Whisper seeks to its last timestamp and decodes on; a batch cannot, so the
        rest becomes a window of its own, queued right after the task's last pending window (first
        in the queue when none is left): the task is done only when all its windows are, so going
        ahead of its own windows gains it nothing, and behind them a long file's full-length
        windows fill whole batches while its rests, a few seconds each, share calls with one
        another instead of splitting every batch. A window that gave nothing when decoded alone is
        taken at its word (no speech); packed, it is decoded again alone.
        """
        window = ref.job.window
        end = max((s.end for s in segments), default=0.0)
        if ref.continuation >= MAX_CONTINUATIONS or (end <= 0.0 and not packed):
            return
        if not speech_after(window.samples, end):
            return
        rest = window.tail(end)
        task.windows.append(rest)
        task.results.append(None)
        job = WindowJob(rest, ref.job.language, ref.job.options)
        lost = packed and end <= 0.0  # packing swallowed its text: it goes alone
        at = max((i + 1 for i, r in enumerate(self._pending) if r.key == ref.key), default=0)
        self._pending.insert(at, WindowRef(ref.key, len(task.windows) - 1, job, ref.continuation + 1, solo=lost))

    def requeue(self, batch: Sequence[BatchItem]) -> None:
        """Put a batch that was not decoded (out of memory) back at the head of the queue."""
        live = [ref for item in batch for ref in item.refs if ref.key in self._tasks]
        self._pending[:0] = live

    def fail(self, key: Hashable) -> None:
        """Drop a task (it failed, or was cancelled): its pending windows are not decoded."""
        task = self._tasks.pop(key, None)
        self._alone.discard(key)
        if task is None:
            return
        task.failed = True
        self._pending = [ref for ref in self._pending if ref.key != key]

    def progress(self, key: Hashable) -> tuple[int, int]:
        """(windows done, windows total) of a scheduled task; (0, 0) when it is not here."""
        task = self._tasks.get(key)
        if task is None:
            return (0, 0)
        return (task.done, len(task.results))


# A segment (without word timestamps) that reaches this far into a second packed window ran across
# the gap between two files: its text cannot be split by time, so those windows are decoded alone.
# Whisper's timestamps can be half a second off, so less than that is still one file's.
_CROSSING_S = 0.6


def _unpack(item: BatchItem, segments: Sequence[Segment]) -> list[list[Segment] | None]:
    """A packed slot's segments back to their windows, in window time; None for a window to decode again.

    A segment goes to the window its time overlaps most. With word timestamps each word goes to
    the window holding its middle, so a segment Whisper ran across a gap is split exactly; without
    them such a segment cannot be split, and the windows it touches are decoded again alone.
    """
    if len(item.refs) == 1:
        return [list(segments)]
    spans = [(off, off + ref.job.window.duration_s) for off, ref in zip(item.offsets_s, item.refs, strict=True)]
    out: list[list[Segment] | None] = [[] for _ in item.refs]
    redo: set[int] = set()

    def overlaps(start: float, end: float) -> list[float]:
        return [min(end, hi) - max(start, lo) for lo, hi in spans]

    def owner(start: float, end: float) -> int:
        """The window holding the middle of ``start``-``end`` (timestamps drift at the edges), else the nearest."""
        mid = (start + end) / 2
        return min(range(len(spans)), key=lambda k: max(spans[k][0] - mid, mid - spans[k][1], 0.0))

    for s in segments:
        if s.words:
            groups: dict[int, list[Word]] = {}
            for w in s.words:
                groups.setdefault(owner(w.start, w.end), []).append(w)
            for k, words in groups.items():
                piece = replace(s, start=words[0].start, end=words[-1].end,
                                text="".join(w.word for w in words).strip(), words=tuple(words))  # fmt: skip
                out[k].append(_shift(piece, -spans[k][0]))  # type: ignore[union-attr]
            continue
        k = owner(s.start, s.end)
        touched = [j for j, o in enumerate(overlaps(s.start, s.end)) if j != k and o > _CROSSING_S]
        if touched:
            redo.update([k, *touched])
            continue
        out[k].append(_shift(s, -spans[k][0]))  # type: ignore[union-attr]
    for k in redo:
        out[k] = None
    return out


def _shift(s: Segment, by: float) -> Segment:
    words = None if s.words is None else tuple(
        Word(w.start + by, w.end + by, w.word, w.probability) for w in s.words
    )
    return replace(s, start=s.start + by, end=s.end + by, words=words)  # the decode's measures travel along


def is_batch_engine(engine: Engine) -> bool:
    return isinstance(engine, BatchEngine)


class PerWindow(tuple):
    """A packed slot's results window by window: what :func:`run_batch` returns for a slot that
    failed packed and was decoded again one window at a time."""


def run_batch(engine: BatchEngine, batch: Sequence[BatchItem]) -> list[WindowResult | PerWindow]:
    """Decode a batch in one engine call; when it fails, find the culprit(s) by halving.

    A window that fails alone is the culprit: its result is the error (a RayTranscribeError,
    stage transcribe, the engine's exception in ``__cause__``), so only its task fails; a packed
    slot that fails alone is unpacked and its windows decoded one by one. A device out of memory
    is not a culprit but a batch too big: EngineOutOfMemory propagates whenever more than one
    window was in the call, for the caller to halve its batch size and :meth:`~WindowScheduler.requeue`.
    """
    if not batch:
        return []
    try:
        results = engine.decode_windows([item.job for item in batch])
    except EngineOutOfMemory as exc:
        if len(batch) > 1 or len(batch[0].refs) > 1:
            raise
        return [exc]
    except Exception as exc:  # whatever broke, the halves will say who
        if len(batch) == 1:
            item = batch[0]
            if len(item.refs) > 1:
                return [PerWindow(run_batch(engine, [BatchItem.single(ref) for ref in item.refs]))]
            return [_as_transcription_error(exc, item.refs[0])]
        log.warning(
            "a batch of %d slots failed (%s: %s); bisecting to find the culprit",
            len(batch), type(exc).__name__, exc, extra={"stage": Stage.TRANSCRIBE.value},
        )
        half = len(batch) // 2
        return run_batch(engine, batch[:half]) + run_batch(engine, batch[half:])
    if len(results) != len(batch):
        error = TranscriptionError(
            f"{engine.spec.engine} returned {len(results)} results for a batch of {len(batch)} windows",
            transient=False,
        )
        return [error] * len(batch)
    return list(results)


def after_out_of_memory(
    engine: BatchEngine, batch: Sequence[BatchItem], size: int
) -> tuple[list[WindowResult | PerWindow] | None, int]:
    """What a device out of memory on ``batch`` (tried at ``size`` slots) comes to; the one rule for
    every batcher. A batch of one packed slot is too much already: its windows are decoded one at a
    time (the results). A bigger batch is to be put back in the queue (None) and tried again at half
    the size it had, which the batcher keeps from then on (the new size)."""
    if len(batch) == 1:
        return [PerWindow(run_batch(engine, [BatchItem.single(ref)])[0] for ref in batch[0].refs)], size
    return None, max(1, min(size, len(batch)) // 2)


def _as_transcription_error(exc: Exception, ref: WindowRef) -> RayTranscribeError:
    if isinstance(exc, RayTranscribeError):
        return exc
    window = ref.job.window
    error = TranscriptionError(
        f"decoding the window at {window.start_s:.2f} s ({window.duration_s:.2f} s) failed: "
        f"{type(exc).__name__}: {exc}"
    )
    error.__cause__ = exc
    return error


def transcribe_batch(
    engine: Engine,
    audios: Sequence[np.ndarray],
    options: TranscribeOptions | Sequence[TranscribeOptions],
    batch_size: int,
    *,
    pack: bool | None = None,
) -> list[Transcript | Exception]:
    """Transcribe many files, their windows decoded ``batch_size`` at a time across files.

    One result per file, in order: its Transcript, or the error that failed it alone.
    ``batch_size == 1`` (or an engine without ``decode_windows``) is the sequential path:
    ``engine.transcribe`` one file at a time.
    """
    per_file = [options] * len(audios) if isinstance(options, TranscribeOptions) else list(options)
    if len(per_file) != len(audios):
        raise ValueError(f"{len(per_file)} option sets for {len(audios)} files")
    out: list[Transcript | Exception | None] = [None] * len(audios)
    if batch_size <= 1 or not is_batch_engine(engine):
        for i, (audio, opts) in enumerate(zip(audios, per_file, strict=True)):
            try:
                out[i] = engine.transcribe(audio, opts)
            except Exception as exc:
                out[i] = exc
        return out  # type: ignore[return-value]
    scheduler = WindowScheduler(engine.spec, pack=pack)
    for i, (audio, opts) in enumerate(zip(audios, per_file, strict=True)):
        try:
            done = scheduler.add(i, engine.prepare(audio, opts), opts)
        except Exception as exc:
            out[i] = exc
            continue
        if done is not None:
            out[i] = done
    size = batch_size
    while scheduler.pending_windows():
        batch = scheduler.next_batch(size)
        try:
            results: list[WindowResult | PerWindow] | None = run_batch(engine, batch)
        except EngineOutOfMemory:
            tried = size
            results, size = after_out_of_memory(engine, batch, size)
            if results is None:
                scheduler.requeue(batch)
                log.warning("out of memory at %d slots a batch; now %d", tried, size)
                continue
        for key, result in scheduler.complete(batch, results):
            out[key] = result  # type: ignore[index]
    return out  # type: ignore[return-value]


def _file_segments(task: _Task) -> list[Segment]:
    """Window-relative segments shifted to file time, kept inside their window and in order."""
    segments: list[Segment] = []
    last_end = 0.0
    duration = task.prepared.duration_s
    last_ms = math.floor(duration * 1000) / 1000

    def ms(t: float) -> float:  # to the millisecond, never past the audio's end (8.3858 s is not 8.386)
        return min(round(t, 3), last_ms)

    for window, window_segments in sorted(zip(task.windows, task.results, strict=True), key=lambda p: p[0].start_s):
        lo = window.start_s
        hi = min(window.file_time(window.duration_s, end=True), duration)
        for s in window_segments or ():
            start = _clamp(window.file_time(s.start), max(lo, last_end), hi)
            end = _clamp(window.file_time(s.end, end=True), start, hi)
            words = None
            if s.words is not None:
                # rounded as the segment's times are (rounding keeps order), so no word ends after its segment
                words = tuple(
                    Word(
                        start=ms(ws := _clamp(window.file_time(w.start), start, end)),
                        end=ms(_clamp(window.file_time(w.end, end=True), ws, end)),
                        word=w.word,
                        probability=w.probability,
                    )
                    for w in s.words
                )
            segments.append(replace(s, start=ms(start), end=ms(end), words=words))
            last_end = end
    return segments


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), max(lo, hi))


def _transcript(
    spec: EngineSpec, prepared: PreparedAudio, options: TranscribeOptions, segments: Sequence[Segment]
) -> Transcript:
    return Transcript(
        segments=tuple(segments),
        language=prepared.language,
        duration_s=prepared.duration_s,
        engine=spec.engine,
        model=spec.model,
        options=options,
        language_probability=prepared.language_probability,
        speech_s=prepared.speech_s,
    )
