"""Calibration of the transcript verdict (raytranscribe.engines.verdict) on real and espeak speech.

    .venv/bin/python bench/quality_calibration.py                    # tiny.en and base, every way
    .venv/bin/python bench/quality_calibration.py --models tiny.en   # one model
    .venv/bin/python bench/quality_calibration.py --quick            # sequential, no VAD only

Every speech file the repository holds (tests/fixtures/real, see its SOURCES.md; the espeak-ng clips
of tests/fixtures/speech; the samples of raytranscribe/samples) is transcribed by faster-whisper on
the CPU four ways (sequential and cross-file batched, VAD off and on) and judged with the default
``quality.*`` settings. Clean speech is each file in a language the model speaks (English for an
``.en`` model; the German/English multilingual.mp3 only for a multilingual one). The bad inputs
are each clean file played backwards (babble with speech's sound: the model hears words that are not
there, often in loops), generated noise, and for an ``.en`` model the speech in other languages.

It prints one line per file and way (the measures and the verdict), then per model the
false-positive rate (clean transcripts judged suspect) and the share of bad inputs flagged, and a
sweep of ``quality.min_mean_logprob`` (the threshold that moves both most) with the rest at their
defaults.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from raytranscribe.audio import decode  # noqa: E402
from raytranscribe.batching import transcribe_batch  # noqa: E402
from raytranscribe.config import QualitySettings  # noqa: E402
from raytranscribe.engines import load_engine  # noqa: E402
from raytranscribe.engines.base import SAMPLE_RATE, EngineSpec, Transcript, TranscribeOptions  # noqa: E402
from raytranscribe.engines.verdict import TranscriptQuality, judge  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AUDIO = (".flac", ".wav", ".mp3", ".ogg", ".m4a", ".webm")
NOT_ENGLISH = ("de_", "es_", "fr_")
SWEEP = (-0.7, -0.8, -0.9, -1.0, -1.1, -1.2)


@dataclass(frozen=True)
class Clip:
    name: str
    samples: np.ndarray
    clean: bool  # clean speech the model should transcribe; else a bad input


def clips(english_only: bool) -> list[Clip]:
    paths = sorted(
        p for d in ("tests/fixtures/real", "tests/fixtures/speech", "raytranscribe/samples")
        for p in (ROOT / d).iterdir() if p.suffix in AUDIO
    )  # fmt: skip
    out = []
    for p in paths:
        samples = decode(p).samples
        name = str(p.relative_to(ROOT))
        foreign = p.name.startswith(NOT_ENGLISH) or p.name == "multilingual.mp3"
        clean = not (english_only and foreign)
        out.append(Clip(name, samples, clean))
        if clean:
            out.append(Clip(name + " (reversed)", np.ascontiguousarray(samples[::-1]), False))
    rng = np.random.default_rng(0)
    out.append(Clip("white noise 10 s", (0.1 * rng.standard_normal(10 * SAMPLE_RATE)).astype(np.float32), False))
    t = np.arange(8 * SAMPLE_RATE) / SAMPLE_RATE
    out.append(Clip("440 Hz tone 8 s", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), False))
    return out


def line(way: str, clip: Clip, q: TranscriptQuality, text: str) -> str:
    def f(x: float | None, digits: int = 2) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    verdict = ("SUSPECT " + ",".join(q.reasons)) if q.suspect else "ok"
    kind = "clean" if clip.clean else "bad"
    return (
        f"{way:10s} {kind:5s} {clip.name:52s} lp={f(q.mean_logprob):>6s} nsp={f(q.max_no_speech_prob):>5s} "
        f"cr={f(q.max_compression_ratio):>5s} fb={q.fallback_windows}/{q.windows} "
        f"speech={f(q.speech_s, 1):>5s}/{q.audio_s:5.1f}s wps={f(q.words_per_s):>5s}  {verdict:32s} {text[:60]!r}"
    )


def run(model: str, quick: bool) -> None:
    engine = load_engine(EngineSpec(engine="faster-whisper", model=model, device="cpu", compute_type="int8"))
    data = clips(english_only=model.endswith(".en"))
    ways = [("seq", 1, False)] if quick else [("seq", 1, False), ("batched", 8, False),
                                                ("seq+vad", 1, True), ("batch+vad", 8, True)]  # fmt: skip
    settings = QualitySettings()
    judged: list[tuple[Clip, Transcript]] = []
    print(f"== {model}")
    for way, size, vad in ways:
        results = transcribe_batch(engine, [c.samples for c in data], TranscribeOptions(vad_filter=vad), size)
        for clip, t in zip(data, results, strict=True):
            if isinstance(t, Exception):
                print(f"{way:10s} {clip.name}: failed: {t}")
                continue
            judged.append((clip, t))
            print(line(way, clip, judge(t, settings), t.text))

    def rates(s: QualitySettings) -> tuple[int, int, int, int]:
        clean = [judge(t, s).suspect for c, t in judged if c.clean]
        bad = [judge(t, s).suspect for c, t in judged if not c.clean and t.text.strip()]
        return sum(clean), len(clean), sum(bad), len(bad)

    fp, n_clean, flagged, n_bad = rates(settings)
    print(f"{model}: false positives {fp}/{n_clean} clean transcripts ({fp / max(1, n_clean):.1%}); "
          f"bad inputs with text flagged {flagged}/{n_bad} ({flagged / max(1, n_bad):.0%})")  # fmt: skip
    for threshold in SWEEP:
        fp, n_clean, flagged, n_bad = rates(settings.model_copy(update={"min_mean_logprob": threshold}))
        print(f"{model}: min_mean_logprob {threshold:+.1f}: false positives {fp}/{n_clean}, "
              f"bad flagged {flagged}/{n_bad}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny.en,base", help="comma-separated faster-whisper models")
    ap.add_argument("--quick", action="store_true", help="sequential without VAD only")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each line as it is judged, also into a file
    for model in args.models.split(","):
        run(model.strip(), args.quick)


if __name__ == "__main__":
    main()
