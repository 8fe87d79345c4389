"""Golden tests for json / srt / vtt / txt / tsv."""

from __future__ import annotations

import json

import pytest

from raytranscribe.engines.base import Segment, Transcript, TranscribeOptions, Word
from raytranscribe.errors import InvalidInput, Stage
from raytranscribe.formats import render, render_all, timestamp


def _transcript(*segments: Segment, duration: float = 10.0) -> Transcript:
    return Transcript(
        segments=segments,
        language="en",
        duration_s=duration,
        engine="faster-whisper",
        model="tiny.en",
        options=TranscribeOptions(beam_size=1, formats=("srt", "txt")),
        language_probability=1.0,
    )


BASIC = _transcript(
    Segment(start=1.0, end=2.5, text=" Hello there."),
    Segment(start=2.5, end=3.0, text="General Kenobi!"),
)


def test_srt_golden():
    assert render(BASIC, "srt") == (
        b"1\n00:00:01,000 --> 00:00:02,500\nHello there.\n\n"
        b"2\n00:00:02,500 --> 00:00:03,000\nGeneral Kenobi!\n\n"
    )


def test_vtt_golden():
    assert render(BASIC, "vtt") == (
        b"WEBVTT\n\n"
        b"00:00:01.000 --> 00:00:02.500\nHello there.\n\n"
        b"00:00:02.500 --> 00:00:03.000\nGeneral Kenobi!\n\n"
    )


def test_txt_golden():
    assert render(BASIC, "txt") == b"Hello there.\nGeneral Kenobi!\n"


def test_tsv_golden():
    """Whisper's columns: integer milliseconds, one line a segment, no tab inside a text."""
    t = _transcript(
        Segment(start=0.0004, end=1.2346, text=" Hello\tthere,\n friend."),
        Segment(start=2.0, end=3.0, text="   "),  # no text: no line
        Segment(start=-0.5, end=float("nan"), text="Odd times."),
    )
    assert render(BASIC, "tsv") == b"start\tend\ttext\n1000\t2500\tHello there.\n2500\t3000\tGeneral Kenobi!\n"
    assert render(t, "tsv").decode() == "start\tend\ttext\n0\t1235\tHello there, friend.\n0\t0\tOdd times.\n"


def test_json_numbers_segments_from_0():
    doc = json.loads(render(BASIC, "json"))
    assert [s["id"] for s in doc["segments"]] == [0, 1] and doc["schema_version"] == 1
    assert list(doc)[0] == "schema_version"


def test_json_golden():
    t = _transcript(
        Segment(start=0.0, end=1.25, text="Grüße -- ünïcode ✓", words=(Word(0.0, 1.25, " Grüße", 0.5),),
                avg_logprob=-0.25, no_speech_prob=0.125),
        duration=1.5,
    )
    expected = """{
  "schema_version": 1,
  "segments": [
    {
      "id": 0,
      "start": 0.0,
      "end": 1.25,
      "text": "Grüße -- ünïcode ✓",
      "words": [
        {
          "start": 0.0,
          "end": 1.25,
          "word": " Grüße",
          "probability": 0.5
        }
      ],
      "avg_logprob": -0.25,
      "no_speech_prob": 0.125,
      "temperature": null,
      "compression_ratio": null
    }
  ],
  "language": "en",
  "duration_s": 1.5,
  "engine": "faster-whisper",
  "model": "tiny.en",
  "options": {
    "language": null,
    "task": "transcribe",
    "beam_size": 1,
    "vad_filter": true,
    "word_timestamps": false,
    "initial_prompt": null,
    "temperature": 0.0,
    "formats": [
      "srt",
      "txt"
    ]
  },
  "language_probability": 1.0,
  "speech_s": null,
  "text": "Grüße -- ünïcode ✓"
}
"""
    assert render(t, "json").decode("utf-8") == expected
    assert json.loads(render(t, "json"))["options"] == t.options.to_dict()


def test_json_turns_non_finite_numbers_into_null():
    t = _transcript(Segment(start=0.0, end=1.0, text="x", avg_logprob=float("-inf"), no_speech_prob=float("nan")))
    seg = json.loads(render(t, "json"))["segments"][0]
    assert (seg["avg_logprob"], seg["no_speech_prob"]) == (None, None)


@pytest.mark.parametrize(
    "seconds,srt,vtt",
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (3.0, "00:00:03,000", "00:00:03.000"),
        (2.9999999, "00:00:03,000", "00:00:03.000"),  # float noise rounds up, never 02,999
        (0.1 + 0.2, "00:00:00,300", "00:00:00.300"),
        (1.0005, "00:00:01,000", "00:00:01.000"),  # 1000.4999... ms: binary float is just under .5
        (59.9996, "00:01:00,000", "00:01:00.000"),  # carries into minutes
        (3599.9999, "01:00:00,000", "01:00:00.000"),  # and into hours
        (3723.456, "01:02:03,456", "01:02:03.456"),
        (99 * 3600 + 59 * 60 + 59.999, "99:59:59,999", "99:59:59.999"),
        (100 * 3600, "100:00:00,000", "100:00:00.000"),
        (1234 * 3600 + 5.5, "1234:00:05,500", "1234:00:05.500"),
        (-0.5, "00:00:00,000", "00:00:00.000"),
        (float("nan"), "00:00:00,000", "00:00:00.000"),
    ],
)
def test_timestamps(seconds, srt, vtt):
    assert timestamp(seconds) == srt
    assert timestamp(seconds, ".") == vtt


def test_long_durations_and_clamping_in_cues():
    t = _transcript(
        Segment(start=-1.0, end=0.5, text="starts before zero"),
        Segment(start=360000.0, end=360001.5, text="a hundred hours in"),
        Segment(start=5.0, end=4.0, text="ends before it starts"),
        duration=360002.0,
    )
    assert render(t, "srt") == (
        b"1\n00:00:00,000 --> 00:00:00,500\nstarts before zero\n\n"
        b"2\n100:00:00,000 --> 100:00:01,500\na hundred hours in\n\n"
        b"3\n00:00:05,000 --> 00:00:05,000\nends before it starts\n\n"
    )


AWKWARD = _transcript(
    Segment(start=0.0, end=1.0, text="  leading and trailing  "),
    Segment(start=1.0, end=2.0, text="   "),  # empty after stripping: skipped
    Segment(start=2.0, end=3.0, text="arrows --> inside ---> here"),
    Segment(start=3.0, end=4.0, text="first line\n\nsecond after a blank line\r\nthird"),
    Segment(start=4.0, end=5.0, text=""),  # empty: skipped, numbering stays consecutive
    Segment(start=5.0, end=6.0, text="日本語 and emoji 🎤"),
)


def test_awkward_text_srt():
    assert render(AWKWARD, "srt").decode("utf-8") == (
        "1\n00:00:00,000 --> 00:00:01,000\nleading and trailing\n\n"
        "2\n00:00:02,000 --> 00:00:03,000\narrows -> inside -> here\n\n"
        "3\n00:00:03,000 --> 00:00:04,000\nfirst line second after a blank line third\n\n"
        "4\n00:00:05,000 --> 00:00:06,000\n日本語 and emoji 🎤\n\n"
    )


def test_awkward_text_vtt():
    out = render(AWKWARD, "vtt").decode("utf-8")
    assert out == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.000\nleading and trailing\n\n"
        "00:00:02.000 --> 00:00:03.000\narrows -> inside -> here\n\n"
        "00:00:03.000 --> 00:00:04.000\nfirst line second after a blank line third\n\n"
        "00:00:05.000 --> 00:00:06.000\n日本語 and emoji 🎤\n\n"
    )
    # Every cue is exactly one timing line plus one text line.
    cues = out.split("\n\n")[1:-1]
    assert [len(c.split("\n")) for c in cues] == [2, 2, 2, 2]
    assert all(c.split("\n")[1].count("-->") == 0 for c in cues)


def test_awkward_text_txt():
    assert render(AWKWARD, "txt").decode("utf-8") == (
        "leading and trailing\narrows -> inside -> here\nfirst line second after a blank line third\n日本語 and emoji 🎤\n"
    )


def test_empty_transcript():
    t = _transcript(duration=2.0)
    assert render_all(t, ("srt", "vtt", "txt", "tsv")) == {
        "srt": b"", "vtt": b"WEBVTT\n\n", "txt": b"", "tsv": b"start\tend\ttext\n"}  # fmt: skip
    assert json.loads(render(t, "json"))["segments"] == []
    assert json.loads(render(t, "json"))["text"] == ""


def test_render_all_and_unknown_format():
    out = render_all(BASIC, ["txt", "srt"])
    assert list(out) == ["txt", "srt"]
    assert out["txt"] == b"Hello there.\nGeneral Kenobi!\n"
    with pytest.raises(InvalidInput) as info:
        render(BASIC, "docx")
    assert info.value.message == "unknown output format 'docx'; choose from ['json', 'srt', 'vtt', 'txt', 'tsv']"
    assert info.value.stage is Stage.RENDER and info.value.transient is False


def test_json_carries_the_quality_object_when_given():
    from raytranscribe.config import QualitySettings
    from raytranscribe.engines.verdict import judge

    t = _transcript(Segment(0.0, 2.0, "Hello there.", avg_logprob=-0.2, no_speech_prob=0.1, temperature=0.0,
                            compression_ratio=1.1))  # fmt: skip
    quality = judge(t, QualitySettings())
    doc = json.loads(render(t, "json", quality))
    assert doc["quality"] == quality.to_dict() and doc["quality"]["suspect"] is False
    assert doc["segments"][0]["temperature"] == 0.0 and doc["segments"][0]["compression_ratio"] == 1.1
    assert "quality" not in json.loads(render(t, "json"))
    assert render_all(t, ["srt", "txt"], quality) == render_all(t, ["srt", "txt"])  # only the JSON carries it
