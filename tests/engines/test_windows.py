"""Cutting a file into windows (numpy only, no model)."""

import numpy as np
import pytest

from raytranscribe.engines.base import SAMPLE_RATE
from raytranscribe.engines.windows import fixed_windows, quietest_cut, speech_windows


@pytest.mark.parametrize(
    ("max_s", "lengths", "starts"),
    [
        (30.0, [30.0, 13.0], [0.0, 40.0]),
        (24.0, [20.0, 23.0], [0.0, 24.0]),
        (12.0, [10.0, 10.0, 10.0, 12.0, 1.0], [0.0, 12.0, 24.0, 40.0, 52.0]),  # a span over max_s is cut
    ],
)
def test_speech_windows_lay_spans_end_to_end_up_to_max_s(max_s, lengths, starts):
    audio = (0.1 * np.random.default_rng(0).standard_normal(60 * SAMPLE_RATE)).astype(np.float32)
    # Six 5 s spans of speech 1 s apart, then one of 13 s.
    spans = [(i * 6 * SAMPLE_RATE, (i * 6 + 5) * SAMPLE_RATE) for i in range(6)]
    spans.append((40 * SAMPLE_RATE, 53 * SAMPLE_RATE))
    windows = speech_windows(audio, spans, max_s)
    assert [w.duration_s for w in windows] == lengths
    assert [w.start_s for w in windows] == starts


def _noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


def test_without_a_vad_a_window_ends_in_the_longest_pause_not_the_latest_silent_frame():
    """A sentence pause (0.3 s of silence) at 27.5 s, and a word gap as silent but 20 ms long at
    29 s: the cut falls in the pause, so the words after it start the next window together."""
    rng = np.random.default_rng(1)
    silence = np.zeros(int(0.3 * SAMPLE_RATE), dtype=np.float32)
    gap = np.zeros(SAMPLE_RATE // 50, dtype=np.float32)
    audio = np.concatenate([_noise(27.5, rng), silence, _noise(1.2, rng), gap, _noise(20.0, rng)])
    cut = quietest_cut(audio[: 30 * SAMPLE_RATE])
    assert 27.5 * SAMPLE_RATE <= cut <= 27.8 * SAMPLE_RATE
    first, second = fixed_windows(audio)
    assert first.duration_s == pytest.approx(cut / SAMPLE_RATE) and second.start_s == first.duration_s


def test_without_a_vad_equal_pauses_keep_the_window_long_and_digital_silence_is_not_decoded():
    rng = np.random.default_rng(2)
    pause = np.zeros(int(0.2 * SAMPLE_RATE), dtype=np.float32)
    audio = np.concatenate([_noise(25.0, rng), pause, _noise(3.0, rng), pause, _noise(10.0, rng),
                            np.zeros(40 * SAMPLE_RATE, dtype=np.float32)])  # fmt: skip
    windows = fixed_windows(audio)
    assert 28.2 < windows[0].duration_s < 28.4  # the later of the two pauses
    assert len(windows) == 2  # what follows the second (digital silence to the end) is no window
