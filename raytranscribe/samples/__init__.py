"""Short espeak-ng speech samples of known sentences, shipped as package data.

Regenerate with ``tools/make_samples.py``. ``sentences.json`` maps file name -> exact sentence.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent
_SENTENCES = SAMPLES_DIR / "sentences.json"


@lru_cache(maxsize=1)
def _sentences() -> dict[str, str]:
    return json.loads(_SENTENCES.read_text(encoding="utf-8"))


def sample_names() -> tuple[str, ...]:
    return tuple(sorted(_sentences()))


def sample_paths() -> tuple[Path, ...]:
    """Every sample file, sorted by name."""
    return tuple(SAMPLES_DIR / name for name in sample_names())


def sample_path(name: str) -> Path:
    if name not in _sentences():
        raise KeyError(f"no sample named {name!r}; have {list(sample_names())}")
    return SAMPLES_DIR / name


def expected_text(name: str) -> str:
    """The exact sentence spoken in sample ``name`` (a file name such as ``"fox.wav"``)."""
    try:
        return _sentences()[name]
    except KeyError:
        raise KeyError(f"no sample named {name!r}; have {list(sample_names())}") from None
