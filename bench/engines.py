"""Engine benchmark: cross-file batching, and cold model load vs resident model.

    .venv/bin/python bench/engines.py                     # CPU: batching, faster-whisper tiny.en int8
    .venv/bin/python bench/engines.py --quick             # the same, small, to check it runs
    .venv/bin/python bench/engines.py --long-only         # only the 10-minute file, all ways
    .venv/bin/python bench/engines.py --device cuda       # GPU: tiny.en and base at batch 1/8/16/32
    .venv/bin/python bench/engines.py --sweep --quick --sizes 1,8 --gpu-models tiny.en   # the sweep, on a CPU
    .venv/bin/python bench/engines.py --load              # cold load vs resident model
    .venv/bin/python bench/engines.py --vad               # what the VAD costs and saves (tiny.en, CPU)

Batching (the default) runs three ways over the same audio, side by side, in one run:

* sequential: ``engine.transcribe`` one file at a time (``engine.batch_size = 1``);
* per-file batched: faster-whisper's ``BatchedInferencePipeline`` on each file (VAD chunks of one
  file batched together), the best a plain loop gets from faster-whisper;
* cross-file: :func:`raytranscribe.batching.transcribe_batch`, windows of all files decoded in
  batches of ``--batch-size`` slots, one window a slot, each batch encoded at its longest window
  plus a few seconds (``engine.fit_windows``): what a worker actor does by default;
* cross-file 30 s: the same with every window padded to Whisper's 30 s (``fit_windows`` off);
* cross-file packed: the default with ``engine.pack_windows`` on, short windows of several files
  sharing one slot;

on (a) 48 short clips of 2-12 s of espeak-ng speech and (b) one 10-minute file of the same speech
concatenated, and prints audio seconds per wall second, the ratio to sequential and WER, ending with
the headline lines ``ratio cross-file/sequential short``, ``ratio cross-file/per-file-batched short``
and ``ratio cross-file/sequential long`` (and the packed way's two short ratios), then
``ratio cross-file/per-file-batched long``. ``--long-only`` runs the long file alone (about a
third of the run) and prints its two ratios. Without espeak-ng on the PATH the clips are built from
the committed samples instead (the report says which).

The sweep (``--device cuda``, or ``--sweep`` on any device) runs :func:`transcribe_batch` over the
same two sets at each of ``--sizes`` (1 is the sequential path), for each of ``--gpu-models``, with
fitted and with 30 s windows, naming the GPU, and on the long file faster-whisper's per-file batched
pipeline at the largest size; it ends with one line per model, set and window shape,
``ratio batch 32/batch 1 tiny.en short fitted: 4.10``, and per model
``ratio cross-file/per-file-batched batch 32 tiny.en long fitted: ...``.

``--load`` measures, for each engine and each committed speech sample,

* cold: build the engine (load the model) and transcribe, per file: what a worker that loaded
  the model per task would pay;
* resident: one engine, loaded once and warmed up, transcribing every file: what our actors do.

``--vad`` runs the default way (cross-file) with the VAD on and off over the short clips, the long
file, and the real recordings without speech (tests/fixtures/real), and times the Silero VAD alone
(its cost per audio hour). The no-speech gate behind the VAD compares two numbers each decode
already returns (no model call); its cost is inside the "VAD on" figures.

openai-whisper runs only where real weights are on disk (``--openai-model`` path, or the name in
the whisper cache); otherwise its row says "skipped: no real weights".
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

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


# --- batching ---------------------------------------------------------------------------------------

# Sentences the short clips and the long file are spoken from (the samples' and a few more).
_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call the doctor before noon tomorrow.",
    "We walked along the river and watched the boats.",
    "The children played in the park after school.",
    "The library opens early on Monday morning.",
    "Turn off the lights when you leave the room.",
    "The train leaves the station at seven in the evening.",
    "My grandmother grows tomatoes and roses in her garden.",
    "The meeting was moved to Thursday afternoon.",
    "She bought a new bicycle for her daughter.",
    "Heavy rain is expected over the weekend.",
    "Remember to water the plants every morning.",
]
SR = 16000


def _voice_clips() -> tuple[list, str]:
    """(text, samples) per sentence: espeak-ng when installed, else the committed samples."""
    import shutil

    if shutil.which("espeak-ng"):
        from tests.support.tts import speak

        return [(t, speak(t)) for t in _SENTENCES], "espeak-ng"
    from raytranscribe.samples import sample_names, sample_path

    return [(expected_text(n), decode(sample_path(n)).samples) for n in sample_names()], "the committed samples"


def build_sets(n_short: int, long_s: float, seed: int = 0):
    """(short clips, one long file, where the speech came from): lists of (reference text, samples)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    voices, source = _voice_clips()
    short = []
    while len(short) < n_short:
        target = rng.uniform(2.0, 12.0)
        texts, pieces, length = [], [], 0.0
        while True:
            text, audio = voices[int(rng.integers(len(voices)))]
            if pieces and length + audio.size / SR > target:
                break
            texts.append(text)
            pieces += [audio, np.zeros(int(rng.uniform(0.2, 0.8) * SR), np.float32)]
            length += audio.size / SR + 0.5
            if length >= target:
                break
        short.append((" ".join(texts), np.concatenate(pieces[:-1])))
    texts, pieces, length = [], [], 0.0
    while length < long_s:
        text, audio = voices[int(rng.integers(len(voices)))]
        gap = np.zeros(int(rng.uniform(0.3, 1.5) * SR), np.float32)
        texts.append(text)
        pieces += [audio, gap]
        length += (audio.size + gap.size) / SR
    return short, [(" ".join(texts), np.concatenate(pieces))], source


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _mean_wer(refs: list[str], texts: list[str]) -> float:
    return statistics.mean(_wer(r, t) for r, t in zip(refs, texts, strict=True))


def bench_batching(spec: EngineSpec, options: TranscribeOptions, batch_size: int, sets: dict) -> dict:
    """Figures for sequential, per-file batched and cross-file on each set, in one process."""
    from raytranscribe.batching import transcribe_batch

    engine = load_engine(replace(spec, fit_windows=True))
    padded = load_engine(replace(spec, fit_windows=False))  # every window padded to 30 s, as Whisper was trained
    warm = next(iter(sets.values()))[0][1]
    engine.transcribe(warm, options)  # warm-up: allocator and kernel set-up
    figures = {}
    for name, clips in sets.items():
        refs = [r for r, _ in clips]
        audios = [a for _, a in clips]
        audio_s = sum(a.size for a in audios) / SR
        seq, seq_s = _timed(lambda: [engine.transcribe(a, options).text for a in audios])
        pfb, pfb_s = _timed(lambda: _per_file_batched(engine, audios, options, batch_size))
        figures[name] = {
            "audio_s": audio_s, "files": len(audios),
            "sequential": (seq_s, _mean_wer(refs, seq)),
            "per-file batched": (pfb_s, _mean_wer(refs, pfb)),
        }
        for way, eng, pack in (("cross-file", engine, False), ("cross-file 30 s", padded, False),
                               ("cross-file packed", engine, True)):
            out, wall = _timed(lambda: transcribe_batch(eng, audios, options, batch_size, pack=pack))
            texts = [t.text for t in out]
            figures[name][way] = (wall, _mean_wer(refs, texts))
    return figures


WAYS = ("sequential", "per-file batched", "cross-file", "cross-file 30 s", "cross-file packed")


def print_batching(figures: dict, label: str, source: str) -> None:
    print(f"{label}; speech from {source}; x RT = audio seconds per wall second")
    head = f"{'set':24s} {'way':18s} {'wall s':>8s} {'x RT':>7s} {'vs seq':>7s} {'WER':>6s}"
    print(head)
    print("-" * len(head))
    for name, f in figures.items():
        seq_s = f["sequential"][0]
        for way in WAYS:
            wall, err = f[way]
            print(f"{name:24s} {way:18s} {wall:8.2f} {f['audio_s'] / wall:7.1f} {seq_s / wall:6.2f}x {err:6.3f}")


def _print_long_ratios(f: dict) -> None:
    print(f"ratio cross-file/sequential long: {f['sequential'][0] / f['cross-file'][0]:.2f}")
    print(f"ratio cross-file/per-file-batched long: {f['per-file batched'][0] / f['cross-file'][0]:.2f}")


def _nvidia_smi(query: str) -> str | None:
    """The first GPU's answer to ``nvidia-smi --query-gpu=<query>``; None without a readable one."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def device_name(device: str) -> str:
    """What the sweep ran on, for docs/benchmarks.md: the GPU's name and memory (MiB), or the CPU's name."""
    import platform

    if device == "cuda":
        return _nvidia_smi("name,memory.total") or "a GPU nvidia-smi did not name"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} CPU"
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def _gpu_used_mib() -> int | None:
    used = _nvidia_smi("memory.used")
    return int(used) if used is not None and used.isdigit() else None


class GpuMemoryPeak:
    """The most GPU memory in use (MiB, as nvidia-smi reads it every 0.1 s) while the block runs: what
    a batch size costs on top of the resident models. ``peak`` stays None off a GPU."""

    def __init__(self, enabled: bool) -> None:
        import threading

        self.enabled = enabled
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while True:
            used = _gpu_used_mib()
            if used is not None:
                self.peak = max(self.peak or 0, used)
            if self._stop.wait(0.1):
                return

    def __enter__(self) -> Self:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()

    def __str__(self) -> str:
        return "-" if self.peak is None else str(self.peak)


def bench_sweep(device: str, models: list[str], sizes: list[int], sets: dict, source: str,
                options: TranscribeOptions, threads: int) -> list[tuple[str, float]]:
    """RTFx at each batch size (1 is the sequential path) and its ratio to batch 1, per model and set,
    with fitted windows (the default) and with every window padded to 30 s, and on a GPU the peak
    memory in use (both window shapes' models are resident throughout). Returns the headline
    ratios: the largest batch size against batch 1, per model, set and window shape."""
    import ctranslate2
    import faster_whisper

    from raytranscribe.batching import transcribe_batch

    print(f"batch-size sweep on {device_name(device)}; faster-whisper {faster_whisper.__version__}, "
          f"CTranslate2 {ctranslate2.__version__}, beam {options.beam_size}, VAD on; speech from {source}; "
          "RTFx = audio s per wall s")
    head = (f"{'model':10s} {'type':>13s} {'set':24s} {'windows':>8s} {'batch':>5s} {'wall s':>8s} {'RTFx':>8s} "
            f"{'vs 1':>6s} {'WER':>6s} {'GPU MiB':>8s}")
    print(head)
    print("-" * len(head))
    ratios = []
    for model in models:
        # Batch 1 is the sequential path, the same whatever the window shape: timed once per set.
        engines = {shape: load_engine(EngineSpec(model=model, device=device, fit_windows=fit, cpu_threads=threads))
                   for shape, fit in (("fitted", True), ("30 s", False))}
        for engine in engines.values():
            engine.transcribe(next(iter(sets.values()))[0][1], options)  # warm-up: allocator, kernels
        for name, clips in sets.items():
            refs, audios = [r for r, _ in clips], [a for _, a in clips]
            audio_s = sum(a.size for a in audios) / SR
            base = None
            for shape, engine in engines.items():
                for size in sizes:
                    if size == 1 and base is not None:
                        continue
                    with GpuMemoryPeak(device == "cuda") as memory:
                        out, wall = _timed(lambda: transcribe_batch(engine, audios, options, size))
                    base = base or wall
                    err = _mean_wer(refs, [t.text if not isinstance(t, Exception) else "" for t in out])
                    print(f"{model:10s} {engine.compute_type:>13s} {name:24s} {'-' if size == 1 else shape:>8s} "
                          f"{size:5d} {wall:8.2f} {audio_s / wall:8.1f} {base / wall:5.2f}x {err:6.3f} {memory!s:>8s}",
                          flush=True)
                ratios.append((f"batch {sizes[-1]}/batch {sizes[0]} {model} {name.split()[0]} {shape}", base / wall))
                if shape == "fitted":
                    fitted_wall = wall
            if name.startswith("long") and sizes[-1] > 1:
                # The peer on the long file: faster-whisper's own batched pipeline at the largest size.
                size, engine = sizes[-1], engines["fitted"]
                with GpuMemoryPeak(device == "cuda") as memory:
                    texts, wall = _timed(lambda: _per_file_batched(engine, audios, options, size))
                print(f"{model:10s} {engine.compute_type:>13s} {name:24s} {'per-file':>8s} "
                      f"{size:5d} {wall:8.2f} {audio_s / wall:8.1f} {base / wall:5.2f}x "
                      f"{_mean_wer(refs, texts):6.3f} {memory!s:>8s}", flush=True)
                ratios.append((f"cross-file/per-file-batched batch {size} {model} long fitted", wall / fitted_wall))
    return ratios


def _per_file_batched(engine, audios: list, options: TranscribeOptions, batch_size: int) -> list[str]:
    """faster-whisper's ``BatchedInferencePipeline`` on each file in turn: the texts."""
    from faster_whisper import BatchedInferencePipeline

    from raytranscribe.engines.faster import transcribe_kwargs

    pipeline = BatchedInferencePipeline(engine.model)
    kwargs = transcribe_kwargs(options) | {"vad_filter": True}  # the pipeline needs VAD beyond 30 s
    out = []
    for a in audios:
        segments, _ = pipeline.transcribe(a, batch_size=batch_size, **kwargs)
        out.append(" ".join(s.text.strip() for s in segments))
    return out


NON_SPEECH = ("humpback_whale.ogg", "robin.ogg", "string_orchestra.ogg", "vibraphone_jazz.ogg",
              "doing_the_dishes.ogg", "running_tap.ogg")


def bench_vad(spec: EngineSpec, options: TranscribeOptions, batch_size: int, sets: dict) -> None:
    """The default way with the VAD on and off, per set; the VAD alone; words written over non-speech."""
    from raytranscribe.batching import transcribe_batch
    from raytranscribe.engines import vad

    real = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "real"
    sets = dict(sets) | {f"non-speech {len(NON_SPEECH)} clips": [("", decode(real / n).samples) for n in NON_SPEECH]}
    engine = load_engine(spec)
    engine.transcribe(next(iter(sets.values()))[0][1], options)  # warm-up
    head = f"{'set':24s} {'VAD':4s} {'wall s':>8s} {'x RT':>7s} {'WER':>6s} {'words':>6s} {'VAD alone s':>11s}"
    print(f"faster-whisper {spec.model} {spec.device}, batch {batch_size}, cross-file; x RT = audio s per wall s")
    print(head)
    print("-" * len(head))
    for name, clips in sets.items():
        refs, audios = [r for r, _ in clips], [a for _, a in clips]
        audio_s = sum(a.size for a in audios) / SR
        _, vad_s = _timed(lambda: [vad.speech_spans(a) for a in audios])
        for on in (True, False):
            opts = replace(options, vad_filter=on)
            out, wall = _timed(lambda: transcribe_batch(engine, audios, opts, batch_size))
            texts = [t.text for t in out]
            words = sum(len(t.split()) for t in texts)
            err = _mean_wer(refs, texts) if any(refs) else float("nan")
            print(f"{name:24s} {'on' if on else 'off':4s} {wall:8.2f} {audio_s / wall:7.1f} {err:6.3f} {words:6d} "
                  f"{vad_s if on else 0.0:11.2f}")
        print(f"VAD alone {name}: {vad_s / audio_s * 3600:.0f} s per audio hour")


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
    parser.add_argument("--load", action="store_true", help="cold load vs resident model instead of batching")
    parser.add_argument("--vad", action="store_true", help="the default way with the VAD on and off")
    parser.add_argument("--batch-size", type=int, default=8, help="slots per batch for the batched ways (CPU)")
    parser.add_argument("--quick", action="store_true", help="12 clips and a 2-minute file: checks that it runs")
    parser.add_argument("--long-only", action="store_true", help="batching on the long file only")
    parser.add_argument("--sweep", action="store_true",
                        help="batch-size sweep (the default on cuda; on a CPU it checks the sweep runs)")
    parser.add_argument("--sizes", default="1,8,16,32", help="sweep batch sizes, the first being the baseline")
    parser.add_argument("--gpu-models", default="tiny.en,base", help="sweep models")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"1(,[1-9][0-9]*)*", args.sizes):
        parser.error(f"--sizes must be batch sizes starting with 1, the sequential baseline, not {args.sizes!r}")
    if not args.load:
        short, long, source = build_sets(12 if args.quick else 48, 120.0 if args.quick else 600.0)
        sets = {f"short {len(short)} clips": short, f"long {long[0][1].size / SR / 60:.0f} min": long}
        if args.long_only:
            sets = dict(list(sets.items())[1:])
        options = TranscribeOptions(beam_size=args.beam_size, vad_filter=True)
        if args.vad:
            spec = EngineSpec(engine="faster-whisper", model=args.model, device=args.device,
                              compute_type=args.compute_type, cpu_threads=args.threads,
                              download_root=args.download_root)
            bench_vad(spec, options, args.batch_size, sets)
            return
        if args.sweep or args.device == "cuda":
            sizes = [int(x) for x in args.sizes.split(",")]
            ratios = bench_sweep(args.device, args.gpu_models.split(","), sizes, sets, source, options, args.threads)
            for label, ratio in ratios:
                print(f"ratio {label}: {ratio:.2f}")
            return
        spec = EngineSpec(engine="faster-whisper", model=args.model, device=args.device,
                          compute_type=args.compute_type, cpu_threads=args.threads, download_root=args.download_root)
        figures = bench_batching(spec, options, args.batch_size, sets)
        print_batching(figures, f"faster-whisper {args.model} {args.device}, beam {args.beam_size}, "
                                f"VAD on, batch {args.batch_size}", source)
        short_f, long_f = figures[next(iter(figures))], figures[list(figures)[-1]]
        # WER of the default way minus sequential's, the worse of the two sets (the target: <= 0.02).
        gap = max(f["cross-file"][1] - f["sequential"][1] for f in figures.values())
        print(f"WER cross-file - sequential, worst set: {gap:+.3f}")
        if args.long_only:
            _print_long_ratios(long_f)
            return
        # Secondary: 30 s windows (fit_windows off) and packing (pack_windows on).
        print(f"ratio cross-file 30 s/sequential short: {short_f['sequential'][0] / short_f['cross-file 30 s'][0]:.2f}")
        print(f"ratio cross-file packed/sequential short: "
              f"{short_f['sequential'][0] / short_f['cross-file packed'][0]:.2f}")
        print(f"ratio cross-file/sequential short: {short_f['sequential'][0] / short_f['cross-file'][0]:.2f}")
        print(f"ratio cross-file/per-file-batched short: "
              f"{short_f['per-file batched'][0] / short_f['cross-file'][0]:.2f}")
        _print_long_ratios(long_f)
        return

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
