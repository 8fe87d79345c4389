"""Cutting a file into windows of at most 30 s for batched decoding (engine-agnostic, numpy only).

Sequential Whisper moves its 30 s window by the last timestamp it decoded, so a word cut by a
window edge is decoded again whole. A batch cannot wait for that: every cut is chosen up front, so
it must fall where nobody is speaking. With a VAD the cuts fall between speech chunks; without
one, each cut falls at the quietest moment of the window's last seconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from raytranscribe.engines.base import SAMPLE_RATE, WINDOW_SAMPLES, Window

# Without a VAD a window ends in the longest quiet stretch of its last CUT_SEARCH_S seconds: long
# enough to hold a pause between sentences in ordinary speech, short enough to keep windows near 30 s.
CUT_SEARCH_S = 6.0
_FRAME = SAMPLE_RATE // 50  # 20 ms: Whisper's timestamp resolution
# A frame is quiet when its energy is within this factor of the quietest frame's (plus a floor for
# digital silence, whose energy is zero).
_QUIET_FACTOR = 2.0
_QUIET_FLOOR = 1e-8

# Windows whose peak is at or below this are digital silence: not decoded (Whisper hallucinates on
# zeros); engines.SILENCE_PEAK, repeated here to keep this module free of the package's imports.
SILENCE_PEAK = 1e-4


def fixed_windows(audio: np.ndarray) -> tuple[Window, ...]:
    """Consecutive windows covering ``audio``, each at most 30 s, cut at quiet moments."""
    windows: list[Window] = []
    start = 0
    n = audio.size
    while start < n:
        end = n if n - start <= WINDOW_SAMPLES else start + quietest_cut(audio[start : start + WINDOW_SAMPLES])
        piece = audio[start:end]
        if piece.size and float(np.max(np.abs(piece))) > SILENCE_PEAK:
            windows.append(Window(start_s=start / SAMPLE_RATE, samples=piece))
        start = end
    return tuple(windows)


def quietest_cut(window: np.ndarray) -> int:
    """Sample offset in the last CUT_SEARCH_S of ``window`` where to end it: the middle of its longest
    run of quiet 20 ms frames (the latest of equally long ones, to keep windows long). The longest,
    not merely the quietest frame: the gap between two words can be as silent as the pause between
    sentences, and a cut there leaves the first word alone at the end of a window, where Whisper
    drops it."""
    search = int(CUT_SEARCH_S * SAMPLE_RATE)
    lo = window.size - search
    frames = window[lo:].reshape(-1, _FRAME)
    energy = np.einsum("ij,ij->i", frames, frames)
    quiet = (energy <= float(energy.min()) * _QUIET_FACTOR + _QUIET_FLOOR).astype(np.int8)
    edges = np.diff(quiet, prepend=0, append=0)  # +1 where a quiet run starts, -1 after it ends
    starts, lengths = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    longest = len(lengths) - 1 - int(np.argmax(lengths[::-1]))  # the latest of the longest
    middle = int(starts[longest] + lengths[longest] // 2)
    return lo + middle * _FRAME + _FRAME // 2


def speech_windows(
    audio: np.ndarray, spans: Sequence[tuple[int, int]], max_s: float = WINDOW_SAMPLES / SAMPLE_RATE
) -> tuple[Window, ...]:
    """Windows of the VAD's speech ``spans`` (sample ranges, each at most ``max_s``, in order).

    As faster-whisper's VAD filter does, the spans are laid end to end and the silence between
    them is left out, so a window holds up to ``max_s`` (at most 30 s) of speech; ``Window.breaks``
    maps its time back to file time.
    """
    windows: list[Window] = []
    group: list[tuple[int, int]] = []
    length = 0
    most = min(WINDOW_SAMPLES, int(max_s * SAMPLE_RATE))

    def flush() -> None:
        nonlocal length
        if group:
            samples = np.concatenate([audio[a:b] for a, b in group])
            breaks, at = [], 0
            for a, b in group:
                breaks.append((at / SAMPLE_RATE, a / SAMPLE_RATE))
                at += b - a
            if float(np.max(np.abs(samples))) > SILENCE_PEAK:
                windows.append(Window(start_s=group[0][0] / SAMPLE_RATE, samples=samples, breaks=tuple(breaks)))
        group.clear()
        length = 0

    for a, b in spans:
        a, b = max(0, int(a)), min(audio.size, int(b))
        while b - a > most:  # a VAD told to cap chunks at max_s never does this; be safe
            flush()
            group.append((a, a + most))
            flush()
            a += most
        if b <= a:
            continue
        if length + (b - a) > most:
            flush()
        group.append((a, b))
        length += b - a
    flush()
    return tuple(windows)


# A window's decode counts as unfinished when, after its last decoded segment, at least this much
# audio is as loud as speech (a tenth of the window's loud frames' level): batched decoding cannot
# seek like sequential Whisper does, so the rest is decoded again as a window of its own.
UNFINISHED_ACTIVE_S = 0.5
_TAIL_GRACE_S = 0.3  # a segment's last syllable often rings on past its end timestamp


def speech_after(samples: np.ndarray, end_s: float) -> bool:
    """Whether ``samples`` hold speech-level audio after ``end_s`` (window time)."""
    n = samples.size // _FRAME
    if n == 0:
        return False
    frames = samples[: n * _FRAME].reshape(n, _FRAME)
    rms = np.sqrt(np.einsum("ij,ij->i", frames, frames) / _FRAME)
    loud = rms[rms > SILENCE_PEAK]
    if loud.size == 0:
        return False
    level = 0.1 * float(np.percentile(loud, 90))
    first = int((end_s + _TAIL_GRACE_S) * SAMPLE_RATE) // _FRAME
    active = int(np.count_nonzero(rms[first:] > level))
    return active * _FRAME / SAMPLE_RATE >= UNFINISHED_ACTIVE_S
