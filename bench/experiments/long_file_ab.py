"""The long file, in one process, interleaved: faster-whisper's BatchedInferencePipeline (peer, VAD on:
it needs the VAD beyond 30 s) against the cross-file path with VAD on, windows of up to 30 s of
speech (the default before) and of up to 24 s (``CPU_VAD_WINDOW_S``, the default now), and with VAD
off (fixed windows of up to 30 s, cut at quiet moments); wall and process CPU seconds per round,
then min and median per way, and each way's WER against the known text.

    PYTHONPATH=$PWD .venv/bin/python bench/experiments/long_file_ab.py ROUNDS [SEED] [WAYS]

from the repository root (README.md in this folder); WAYS is a comma list of peer, vad30, vad24,
novad (all by default). The 10-minute file is ``bench/engines.py``'s (``build_sets(1, 600.0, SEED)``).
"""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.engines import _mean_wer, _per_file_batched, build_sets  # noqa: E402
from raytranscribe import batching as B  # noqa: E402
from raytranscribe.engines import faster as F  # noqa: E402
from raytranscribe.engines import load_engine  # noqa: E402
from raytranscribe.engines.base import EngineSpec, TranscribeOptions  # noqa: E402

rounds = int(sys.argv[1])
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
ways = sys.argv[3].split(",") if len(sys.argv) > 3 else ["peer", "vad30", "vad24", "novad"]
_, long, source = build_sets(1, 600.0, seed)
ref, audio = long[0]
vad_on, vad_off = TranscribeOptions(beam_size=5, vad_filter=True), TranscribeOptions(beam_size=5, vad_filter=False)
eng = load_engine(EngineSpec(engine="faster-whisper", model="tiny.en", device="cpu", fit_windows=True))
eng.transcribe(audio[: 16000 * 5], vad_on)  # warm-up
default_window_s = F.CPU_VAD_WINDOW_S

print(f"speech from {source}, seed {seed}, {audio.size / 16000:.0f} s; tiny.en int8, beam 5, batch 8", flush=True)
times: dict[str, list[tuple[float, float]]] = {w: [] for w in ways}
wers: dict[str, float] = {}
for rnd in range(rounds):
    for way in ways:
        t, c = time.perf_counter(), time.process_time()
        if way == "peer":
            txt = _per_file_batched(eng, [audio], vad_on, 8)[0]
        else:
            F.CPU_VAD_WINDOW_S = float(way[3:]) if way.startswith("vad") else default_window_s
            txt = B.transcribe_batch(eng, [audio], vad_on if way.startswith("vad") else vad_off, 8)[0].text
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        times[way].append((wall, cpu))
        wers[way] = _mean_wer([ref], [txt])
        print(f"round {rnd} {way:6s} wall {wall:6.2f} cpu {cpu:6.2f} WER {wers[way]:.4f}", flush=True)
F.CPU_VAD_WINDOW_S = default_window_s
for way, v in times.items():
    walls, cpus = [x[0] for x in v], [x[1] for x in v]
    print(f"{way:6s} wall min {min(walls):6.2f} median {statistics.median(walls):6.2f}  "
          f"cpu min {min(cpus):6.2f} median {statistics.median(cpus):6.2f}  WER {wers[way]:.4f}")
if "peer" in times:
    peer_wall, peer_cpu = (statistics.median(x[k] for x in times["peer"]) for k in (0, 1))
    for way, v in times.items():
        if way != "peer":
            print(f"ratio {way}/peer: wall median {peer_wall / statistics.median(x[0] for x in v):.3f}, "
                  f"cpu median {peer_cpu / statistics.median(x[1] for x in v):.3f}")
