"""The engines sweep (bench/engines.py's ``bench_sweep``) over pre-decoded speech: no synthesiser.

    python3 bench/device/sweep.py --device cuda --sets /tmp/rt-devpack/x/sets.npz   # the GPU run
    python bench/device/sweep.py --quick --sets sets.npz                           # on a CPU: it runs
    python3 bench/device/sweep.py --check --sets sets.npz   # tiny.en on cuda against the CPU, 4 clips
    python3 bench/device/sweep.py --report                  # CTranslate2's CUDA devices, missing libraries

The speech is what bench/device/pack.py synthesised (espeak-ng) and stored as 16-bit samples: the
full sets (48 clips of 2-12 s, one 10-minute file) or, with ``--quick``, 12 clips and 2 minutes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def load_sets(path: Path, which: str) -> tuple[dict[str, list], str]:
    """{set label: [(reference text, float32 samples)]}, as bench/engines.py names its sets."""
    import numpy as np

    data = np.load(path)
    sets: dict[str, list] = {}
    for kind in ("short", "long"):
        refs = [str(r) for r in data[f"{which}_{kind}_refs"]]
        items = [(ref, data[f"{which}_{kind}_{i}"].astype(np.float32) / 32767.0) for i, ref in enumerate(refs)]
        label = f"short {len(items)} clips" if kind == "short" else f"long {items[0][1].size / 16000 / 60:.0f} min"
        sets[label] = items
    return sets, f"{data['source']} (pre-decoded)"


def check(sets: dict[str, list]) -> int:
    """tiny.en on CUDA and on the CPU, the same clips: the GPU path works and says the same."""
    from bench.engines import _wer
    from raytranscribe.engines import load_engine
    from raytranscribe.engines.base import EngineSpec, TranscribeOptions

    clips = next(iter(sets.values()))[:4]
    options = TranscribeOptions(beam_size=5)
    engines = {d: load_engine(EngineSpec(model="tiny.en", device=d, batch_size=1)) for d in ("cuda", "cpu")}
    for ref, audio in clips:
        texts = {d: e.transcribe(audio, options).text.strip() for d, e in engines.items()}
        print(f"cuda WER {_wer(ref, texts['cuda']):.2f} | cpu WER {_wer(ref, texts['cpu']):.2f} | "
              f"cuda: {texts['cuda'][:70]!r}", flush=True)  # fmt: skip
    return 0


def report() -> int:
    import ctranslate2
    import faster_whisper

    from raytranscribe.engines import cuda_missing

    print(f"CTranslate2 {ctranslate2.__version__}, faster-whisper {faster_whisper.__version__}: "
          f"{ctranslate2.get_cuda_device_count()} CUDA device(s); missing: {cuda_missing('faster-whisper') or 'none'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=Path, help="sets.npz from bench/device/pack.py")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="12 clips and 2 minutes, batch 1/8, tiny.en")
    parser.add_argument("--check", action="store_true", help="tiny.en on cuda against the CPU, then stop")
    parser.add_argument("--sizes", default=None, help="default: 1,8,16,32 (1,8 with --quick)")
    parser.add_argument("--models", default=None, help="default: tiny.en,base (tiny.en with --quick)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--report", action="store_true", help="CTranslate2's view of CUDA, then stop")
    args = parser.parse_args(argv)
    if args.report:
        return report()
    if args.sets is None:
        parser.error("--sets is required")
    sets, source = load_sets(args.sets, "quick" if args.quick or args.check else "full")
    if args.check:
        return check(sets)
    from bench.engines import bench_sweep
    from raytranscribe.engines.base import TranscribeOptions

    sizes = [int(x) for x in (args.sizes or ("1,8" if args.quick else "1,8,16,32")).split(",")]
    models = (args.models or ("tiny.en" if args.quick else "tiny.en,base")).split(",")
    options = TranscribeOptions(beam_size=5, vad_filter=True)
    for label, ratio in bench_sweep(args.device, models, sizes, sets, source, options, args.threads):
        print(f"ratio {label}: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
