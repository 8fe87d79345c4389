"""faster-whisper is pinned to the releases whose private API the engine was checked against.

The engine calls ``WhisperModel._split_segments_by_timestamps`` (and ``add_word_timestamps``,
``encode``, ``get_suppressed_tokens``); 1.0.x lacks the first, 1.1.0 to 1.2.1 share these
signatures. A new release joins CHECKED only after its signatures were read and this suite passed.
"""

from __future__ import annotations

import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

CHECKED = ("1.1.0", "1.1.1", "1.2.0", "1.2.1")
ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_faster_whisper_is_a_checked_release():
    assert version("faster-whisper") in CHECKED, f"faster-whisper {version('faster-whisper')} is not one of {CHECKED}"


def test_pyproject_admits_exactly_the_checked_releases():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # one pin, in the extra both engines pull in for the VAD
    (req,) = [Requirement(r) for r in extras["vad"] if r.startswith("faster-whisper")]
    elsewhere = [name for name, reqs in extras.items() if name != "vad" for r in reqs if r.startswith("faster-whisper")]
    assert not elsewhere, elsewhere
    releases = ("1.0.0", "1.0.3", *CHECKED, "1.2.2", "1.3.0", "2.0.0")
    assert tuple(req.specifier.filter(releases)) == CHECKED, req


def test_the_private_method_the_engine_calls_has_the_signature_it_passes():
    from faster_whisper import WhisperModel

    params = list(inspect.signature(WhisperModel._split_segments_by_timestamps).parameters)
    assert params == ["self", "tokenizer", "tokens", "time_offset", "segment_size", "segment_duration", "seek"]
