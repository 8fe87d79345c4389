"""The long file, in one process, interleaved: faster-whisper's BatchedInferencePipeline (peer), the
cross-file path with rests queued first (before) and behind their file's own windows (after), wall
and process CPU seconds; ``python bench/experiments/long_file_ab.py ROUNDS`` from the repository root
(README.md in this folder). The "before" placement is put back by moving each new rest to the front."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.engines import _mean_wer, _per_file_batched, build_sets  # noqa: E402
from raytranscribe import batching as B  # noqa: E402
from raytranscribe.engines import load_engine  # noqa: E402
from raytranscribe.engines.base import EngineSpec, TranscribeOptions  # noqa: E402

_, long, source = build_sets(1, 600.0)
ref, audio = long[0]
options = TranscribeOptions(beam_size=5, vad_filter=True)
eng = load_engine(EngineSpec(engine="faster-whisper", model="tiny.en", device="cpu", fit_windows=True))
eng.transcribe(audio[: 16000 * 5], options)  # warm-up
new_continue = B.WindowScheduler._continue


def old_continue(self, task, ref, segments, packed):
    n = len(task.windows)
    new_continue(self, task, ref, segments, packed)
    if len(task.windows) > n:  # move the rest just queued to the front, as before
        i = next(i for i, r in enumerate(self._pending) if r.key == ref.key and r.index == n)
        self._pending.insert(0, self._pending.pop(i))


print(f"speech from {source}")
for rnd in range(int(sys.argv[1])):
    for way in ("peer", "before", "after"):
        t, c = time.perf_counter(), time.process_time()
        if way == "peer":
            txt = _per_file_batched(eng, [audio], options, 8)[0]
        else:
            B.WindowScheduler._continue = old_continue if way == "before" else new_continue
            txt = B.transcribe_batch(eng, [audio], options, 8)[0].text
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        print(f"round {rnd} {way:7s} wall {wall:6.2f} cpu {cpu:6.2f} WER {_mean_wer([ref], [txt]):.4f}", flush=True)
