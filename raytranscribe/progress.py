"""Progress of ``raytranscribe run`` and ``backfill``, as orchestrator Observers; nothing here writes.

On a terminal, a rich bar: completed / retried / dead, audio hours done, real-time factor, live
actors and breaker state. Off one (``ray job submit`` / ``ray job logs``, a pipe, a file), where a
bar draws nothing, :class:`ProgressLines` logs one line every ``progress_interval_s``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from raytranscribe.breakers import BreakerState
from raytranscribe.store.states import TaskStatus

if TYPE_CHECKING:  # annotations only: `raytranscribe status` formats an age with this module, without Ray or rich
    from rich.console import Console
    from rich.table import Table

    from raytranscribe.contracts import Outcome
    from raytranscribe.orchestrator import Orchestrator, RunSummary
    from raytranscribe.store import RecordResult

log = logging.getLogger("raytranscribe.progress")


class RichProgress:
    def __init__(self, console: Console | None = None, total: int | None = None) -> None:
        # Here, not at import: `raytranscribe status` formats ages with this module, and draws no bar.
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]transcribing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("run", total=total, detail="")
        self.done = 0

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def recorded(self, outcome: Outcome, result: RecordResult) -> None:
        if result.applied and result.status in (TaskStatus.COMPLETED, TaskStatus.DEAD):
            self.done += 1
            self.progress.update(self.task, completed=self.done)
        if result.applied and result.status is TaskStatus.DEAD:
            self.console.print(f"[red]task {result.task_id} dead[/red]: {result.reason}")

    def heartbeat(self, orch: Orchestrator) -> None:
        s = orch.summary
        total = None
        if orch.outstanding is not None:
            total = self.done + orch.outstanding
        states = {stage: b.state for stage, b in orch.breakers.items()}
        breakers = ",".join(f"{k}:{v.value}" for k, v in states.items() if v is not BreakerState.CLOSED) or "ok"
        detail = (
            f"ok {s.completed} retry {s.retried} dead {s.dead} | audio {s.audio_s / 3600:.2f} h "
            f"| {s.rtfx:.1f}x real time | actors {orch.pools.live_count()} | breakers {breakers}"
            + ("" if orch.db_available else " | [red]database unreachable[/red]")
        )
        self.progress.update(self.task, total=total, detail=detail)


class ProgressLines:
    """One log line per ``interval_s`` (checked at each orchestrator heartbeat, the first one included)::

        progress: completed 1200, dead 3, pending 48000, in flight 128 | audio 10.40 h done, 310.2 audio s/s
        | ETA 2h34m | actors 8

    ``pending``: tasks not yet settled (``Orchestrator.outstanding``: pending, waiting for a retry, or
    in progress elsewhere) less this run's in flight. The ETA divides what is left by the rate at which
    this run has settled tasks (completed or dead) so far.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next = -math.inf

    def recorded(self, outcome: Outcome, result: RecordResult) -> None:
        pass

    def heartbeat(self, orch: Orchestrator) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval_s
        log.info("progress: %s", progress_line(orch.summary, orch.outstanding, orch.in_flight, orch.pools.live_count()))


def progress_line(s: RunSummary, outstanding: int | None, in_flight: int, actors: int) -> str:
    settled = s.completed + s.dead
    pending = "?" if outstanding is None else str(max(0, outstanding - in_flight))
    if outstanding is None or s.wall_s <= 0:
        eta = "-"
    elif outstanding == 0:
        eta = "0s"
    elif settled == 0:
        eta = "-"
    else:
        eta = duration_text(outstanding / (settled / s.wall_s))
    return (
        f"completed {s.completed}, dead {s.dead}, pending {pending}, in flight {in_flight} "
        f"| audio {s.audio_s / 3600:.2f} h done, {s.rtfx:.1f} audio s/s | ETA {eta} | actors {actors}"
    )


def duration_text(seconds: float) -> str:
    """``45s``, ``12m05s``, ``3h07m``: an age or an ETA at the precision a person reads it."""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def summary_table(s: RunSummary) -> Table:
    from rich.table import Table

    t = Table(title="run summary")
    t.add_column("completed", justify="right")
    t.add_column("retries scheduled", justify="right")
    t.add_column("dead", justify="right")
    t.add_column("released", justify="right")
    t.add_column("fenced", justify="right")
    t.add_column("audio", justify="right")
    t.add_column("wall", justify="right")
    t.add_column("RTFx (audio s per s)", justify="right")
    t.add_row(
        str(s.completed),
        str(s.retried),
        str(s.dead),
        str(s.released),
        str(s.fenced),
        f"{s.audio_s:.1f} s",
        f"{s.wall_s:.1f} s",
        f"{s.rtfx:.2f}x",
    )
    return t
