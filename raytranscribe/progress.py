"""A rich progress display for ``raytranscribe run``: completed / retried / dead, audio hours done,
real-time factor, live actors and breaker state. It is an orchestrator Observer; nothing here writes."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from raytranscribe.breakers import BreakerState
from raytranscribe.contracts import Outcome
from raytranscribe.orchestrator import Orchestrator, RunSummary
from raytranscribe.store import RecordResult, TaskStatus


class RichProgress:
    def __init__(self, console: Console | None = None, total: int | None = None) -> None:
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
            f"| {s.real_time_factor:.1f}x real time | actors {orch.pools.live_count()} | breakers {breakers}"
            + ("" if orch.db_available else " | [red]database unreachable[/red]")
        )
        self.progress.update(self.task, total=total, detail=detail)


def summary_table(s: RunSummary) -> Table:
    t = Table(title="run summary")
    t.add_column("completed", justify="right")
    t.add_column("retries scheduled", justify="right")
    t.add_column("dead", justify="right")
    t.add_column("released", justify="right")
    t.add_column("fenced", justify="right")
    t.add_column("audio", justify="right")
    t.add_column("wall", justify="right")
    t.add_column("real-time factor", justify="right")
    t.add_row(
        str(s.completed),
        str(s.retried),
        str(s.dead),
        str(s.released),
        str(s.fenced),
        f"{s.audio_s:.1f} s",
        f"{s.wall_s:.1f} s",
        f"{s.real_time_factor:.2f}x",
    )
    return t
