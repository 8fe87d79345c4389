"""Whisper's quality checks, shared by both engines: pure, so tested without a model."""

from __future__ import annotations

from raytranscribe.engines.quality import WindowQuality, compression_ratio, loop_ratio

TS = 1000  # a tokenizer's first timestamp token: text tokens are below it
WORDS = {1: "thank", 2: "you", 3: "for", 4: "watching", 5: "the", 6: "quick", 7: "brown", 8: "fox"}


def decode(tokens: list[int]) -> str:
    return " ".join(WORDS[t] for t in tokens)


def test_silence_needs_both_a_likely_no_speech_and_an_unlikely_decode():
    assert WindowQuality(avg_logprob=-1.5, no_speech_prob=0.9, compression_ratio=1.0).no_speech
    assert not WindowQuality(avg_logprob=-0.2, no_speech_prob=0.9, compression_ratio=1.0).no_speech
    assert not WindowQuality(avg_logprob=-1.5, no_speech_prob=0.3, compression_ratio=1.0).no_speech


def test_a_repetitive_or_unlikely_decode_falls_back_unless_it_is_silence():
    assert WindowQuality(-0.3, 0.1, 2.6).needs_fallback  # a loop
    assert WindowQuality(-1.2, 0.1, 1.2).needs_fallback  # unlikely text
    assert not WindowQuality(-0.3, 0.1, 1.2).needs_fallback
    assert not WindowQuality(-1.2, 0.9, 2.6).needs_fallback  # silence: nothing to retry


def test_when_every_temperature_fails_the_least_repetitive_then_likeliest_decode_wins():
    loop, unlikely, likely = WindowQuality(-0.1, 0.0, 3.0), WindowQuality(-1.4, 0.0, 1.1), WindowQuality(-1.2, 0.0, 1.1)
    assert max([loop, unlikely, likely], key=lambda q: q.rank) is likely


def test_a_loop_shows_inside_one_segment_not_across_segments_that_say_the_same():
    looping = [TS, *[1, 2, 3, 4] * 12, TS + 50]
    assert loop_ratio(looping, TS, decode) > 2.4
    # Several files in one packed slot saying the same short sentence: each segment is fine.
    same_sentence = [tok for _ in range(12) for tok in (TS, 1, 2, 3, 4, TS + 50)]
    assert loop_ratio(same_sentence, TS, decode) < 2.4
    assert compression_ratio("the quick brown fox") < 2.4 and compression_ratio("") == 0.0
