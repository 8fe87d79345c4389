"""Write one :class:`Transcript` as json, srt, vtt, txt or tsv. Pure: bytes in memory, no I/O.

JSON is the transcript's fields (docs/output.md documents them), with ``schema_version`` first and a
0-based ``id`` on each segment, as faster-whisper numbers them. TSV is Whisper's: a ``start end text``
header, then a line per segment, times in integer milliseconds.

Rules every subtitle format follows:

* timestamps are whole milliseconds, rounded once from seconds (3.0 never becomes 00:00:02,999),
  negatives clamp to 0, an end before its start is moved to the start, hours grow past 99
  (``100:00:00,000``);
* a cue's text is one line: newlines and blank lines collapse to single spaces (a blank line
  ends an SRT/VTT cue) and ``-->`` becomes ``->`` (it would read as a timing line);
* segments with no text are skipped and SRT numbering stays consecutive.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

from raytranscribe.engines.base import Segment, Transcript
from raytranscribe.engines.verdict import TranscriptQuality
from raytranscribe.errors import InvalidInput, Stage
from raytranscribe.names import FORMATS

__all__ = ["CONTENT_TYPES", "FORMATS", "JSON_SCHEMA_VERSION", "render", "render_all", "timestamp"]

CONTENT_TYPES: dict[str, str] = {
    "json": "application/json; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
}
# The JSON output's layout: raised when a field changes meaning or goes away (adding one is not a change).
JSON_SCHEMA_VERSION = 1


def render(transcript: Transcript, fmt: str, quality: TranscriptQuality | None = None) -> bytes:
    """``transcript`` in format ``fmt`` (json | srt | vtt | txt | tsv), UTF-8 encoded; the JSON carries
    ``quality`` (the transcript's measures and verdict) as its ``quality`` object when given."""
    try:
        writer = _WRITERS[fmt]
    except KeyError:
        raise InvalidInput(f"unknown output format {fmt!r}; choose from {list(FORMATS)}", stage=Stage.RENDER) from None
    if fmt == "json" and quality is not None:
        return _json(transcript, quality).encode("utf-8")
    return writer(transcript).encode("utf-8")


def render_all(
    transcript: Transcript, formats: Sequence[str], quality: TranscriptQuality | None = None
) -> dict[str, bytes]:
    return {fmt: render(transcript, fmt, quality) for fmt in formats}


def timestamp(seconds: float, separator: str = ",") -> str:
    """``HH:MM:SS<sep>mmm`` from seconds; ``separator`` is ``,`` for SRT and ``.`` for VTT."""
    if not math.isfinite(seconds) or seconds < 0:
        seconds = 0.0
    ms = round(seconds * 1000)  # one rounding, on the whole value: no 2.999 for 3.0
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def cue_text(text: str) -> str:
    """Text safe inside one cue: a single line, no timing arrow."""
    one_line = " ".join(text.split())
    while "-->" in one_line:  # "--->" would leave "-->" after one pass
        one_line = one_line.replace("-->", "->")
    return one_line


def _cues(transcript: Transcript) -> list[tuple[Segment, str]]:
    return [(s, text) for s in transcript.segments if (text := cue_text(s.text))]


def _timing(segment: Segment, separator: str) -> str:
    start = max(segment.start, 0.0) if math.isfinite(segment.start) else 0.0
    end = segment.end if math.isfinite(segment.end) and segment.end >= start else start
    return f"{timestamp(start, separator)} --> {timestamp(end, separator)}"


def _srt(transcript: Transcript) -> str:
    return "".join(
        f"{number}\n{_timing(segment, ',')}\n{text}\n\n"
        for number, (segment, text) in enumerate(_cues(transcript), start=1)
    )


def _vtt(transcript: Transcript) -> str:
    return "WEBVTT\n\n" + "".join(f"{_timing(segment, '.')}\n{text}\n\n" for segment, text in _cues(transcript))


def _txt(transcript: Transcript) -> str:
    return "".join(f"{text}\n" for _, text in _cues(transcript))


def _tsv(transcript: Transcript) -> str:
    # Whisper's columns; a cue's text is one line, so it holds no tab (cue_text collapses whitespace).
    lines = ["start\tend\ttext\n"]
    for segment, text in _cues(transcript):
        start = max(segment.start, 0.0) if math.isfinite(segment.start) else 0.0
        end = segment.end if math.isfinite(segment.end) and segment.end >= start else start
        lines.append(f"{round(start * 1000)}\t{round(end * 1000)}\t{text}\n")
    return "".join(lines)


def _json(transcript: Transcript, quality: TranscriptQuality | None = None) -> str:
    # Key order is the dataclass field order: stable, and readable top to bottom.
    doc = transcript.to_dict()
    doc["segments"] = [{"id": i, **segment} for i, segment in enumerate(doc["segments"])]
    doc = {"schema_version": JSON_SCHEMA_VERSION, **doc}
    if quality is not None:
        doc["quality"] = quality.to_dict()
    return json.dumps(_finite(doc), ensure_ascii=False, indent=2, allow_nan=False) + "\n"


def _finite(value):
    """NaN/inf (a -inf log-prob) are not JSON: they become null rather than invalid output."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


_WRITERS: dict[str, Callable[[Transcript], str]] = {"json": _json, "srt": _srt, "vtt": _vtt, "txt": _txt, "tsv": _tsv}
assert set(_WRITERS) == set(FORMATS), "every declared format needs a writer"

