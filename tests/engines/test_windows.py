"""Cutting a file into windows (numpy only, no model)."""

import numpy as np
import pytest

from raytranscribe.engines.base import SAMPLE_RATE
from raytranscribe.engines.windows import speech_windows


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
