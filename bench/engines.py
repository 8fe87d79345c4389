"""Engine benchmark: audio seconds per wall second, cold model load vs resident model.

    .venv/bin/python bench/engines.py                 # CPU: faster-whisper tiny.en int8
    .venv/bin/python bench/engines.py --device cuda   # on a GPU machine

For each engine and each committed speech sample it measures

* cold: build the engine (load the model) and transcribe, per file: what a worker that loaded
  the model per task would pay;
* resident: one engine, loaded once and warmed up, transcribing every file: what our actors do.

openai-whisper runs only where real weights are on disk (``--openai-model`` path, or the name in
the whisper cache); otherwise its row says "skipped: no real weights".
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raytranscribe.audio import decode  # noqa: E402
from raytranscribe.engines import load_engine  # noqa: E402
from raytranscribe.engines.base import EngineSpec, TranscribeOptions  # noqa: E402
from raytranscribe.samples import expected_text, sample_paths  # noqa: E402


@dataclass(frozen=True)
class Row:
    label: str
    audio_s: float
    load_s: float  # mean cold load
    cold_s: float  # sum over files of load + transcribe
    resident_s: float  # sum over files of transcribe with a resident model
    wer: float
    note: str = ""


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower().replace("'", "")).split())


def _wer(ref: str, hyp: str) -> float:
    import jiwer

    return float(jiwer.wer(_norm(ref), _norm(hyp) or ""))


def bench_engine(spec: EngineSpec, options: TranscribeOptions, repeats: int) -> Row:
    clips = [(p.name, decode(p).samples) for p in sample_paths()]
    audio_s = sum(a.size for _, a in clips) / 16000 * repeats

    loads, cold = [], 0.0
    for _ in range(repeats):
        for _, audio in clips:
            t0 = time.perf_counter()
            engine = load_engine(spec)
            t1 = time.perf_counter()
            engine.transcribe(audio, options)
            cold += time.perf_counter() - t0
            loads.append(t1 - t0)
            del engine

    engine = load_engine(spec)
    engine.transcribe(clips[0][1], options)  # warm-up: first call pays allocator / kernel set-up
    resident, errors = 0.0, []
    for _ in range(repeats):
        for name, audio in clips:
            t0 = time.perf_counter()
            transcript = engine.transcribe(audio, options)
            resident += time.perf_counter() - t0
            errors.append(_wer(expected_text(name), transcript.text))
    label = f"{spec.engine} {Path(spec.model).name} {getattr(engine, 'device', spec.device)}"
    if hasattr(engine, "compute_type"):
        label += f" {engine.compute_type}"
    return Row(label, audio_s, statistics.mean(loads), cold, resident, statistics.mean(errors))


def openai_weights(model: str, download_root: str | None) -> Path | None:
    """A real openai-whisper checkpoint on disk for ``model`` (a path or a cached name), else None."""
    path = Path(model).expanduser()
    if path.is_file():
        return path
    root = Path(download_root or Path.home() / ".cache" / "whisper")
    cached = root / f"{model}.pt"
    return cached if cached.is_file() else None


def print_table(rows: list[Row], skipped: list[tuple[str, str]], files: int, repeats: int) -> None:
    head = (
        f"{'engine':38s} {'audio s':>8s} {'load s':>7s} {'cold s':>8s} {'cold x RT':>9s} "
        f"{'resident s':>10s} {'res x RT':>9s} {'speedup':>8s} {'WER':>5s}"
    )
    print(f"{files} files x {repeats} repeat(s); x RT = audio seconds per wall second")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.label:38s} {r.audio_s:8.2f} {r.load_s:7.2f} {r.cold_s:8.2f} {r.audio_s / r.cold_s:9.1f} "
            f"{r.resident_s:10.2f} {r.audio_s / r.resident_s:9.1f} {r.cold_s / r.resident_s:7.2f}x {r.wer:5.2f}"
        )
    for label, why in skipped:
        print(f"{label:38s} {why}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--compute-type", default="default", help="faster-whisper compute type")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: the engine decides)")
    parser.add_argument("--model", default="tiny.en", help="faster-whisper model")
    parser.add_argument("--openai-model", default="tiny.en", help="openai-whisper checkpoint path or cached name")
    parser.add_argument("--download-root", default=None)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    options = TranscribeOptions(beam_size=args.beam_size)
    rows: list[Row] = []
    skipped: list[tuple[str, str]] = []
    rows.append(
        bench_engine(
            EngineSpec(engine="faster-whisper", model=args.model, device=args.device,
                       compute_type=args.compute_type, cpu_threads=args.threads, download_root=args.download_root),
            options, args.repeats,
        )
    )
    weights = openai_weights(args.openai_model, args.download_root)
    if weights is None:
        skipped.append((f"openai-whisper {args.openai_model} {args.device}", "skipped: no real weights"))
    else:
        rows.append(
            bench_engine(
                EngineSpec(engine="openai-whisper", model=str(weights), device=args.device,
                           cpu_threads=args.threads, download_root=args.download_root),
                options, args.repeats,
            )
        )
    print_table(rows, skipped, len(sample_paths()), args.repeats)


if __name__ == "__main__":
    main()
