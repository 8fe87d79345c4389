"""What recording outcomes will write, decided before any write: a pure function of the outcomes,
the tasks' locked rows and the retry policy. No SQL here (``record`` locks, plans, then writes).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from raytranscribe.contracts import Outcome
from raytranscribe.errors import Stage
from raytranscribe.retry import RetryPolicy, decide
from raytranscribe.store.states import AttemptOutcome, TaskStatus

NO_SUCH_TASK = "no such task"
SUPERSEDED = "fenced: another outcome for this task in the same batch was recorded first"


@dataclass(frozen=True)
class Row:
    """The locked state of a task that an outcome is decided against."""

    id: int
    status: TaskStatus
    attempt: int
    retries: int
    max_retries: int
    backoff_factor: float
    crashes: int
    releases: int


@dataclass(frozen=True)
class Write:
    """What one outcome changes: its task's row and its attempt's row."""

    outcome: Outcome
    status: TaskStatus
    retries: int
    delay_s: float | None  # until the retry (status failed)
    reason: str | None  # failure_reason
    error: str | None  # last_error
    crashes: int
    releases: int
    attempt_outcome: AttemptOutcome
    decision: str | None  # the attempt row's words on what was decided


@dataclass(frozen=True)
class Refusal:
    """An outcome that changes nothing: no such task, or fenced out (another attempt, another status,
    or a second outcome for the task in one batch)."""

    outcome: Outcome
    reason: str


def plan(
    outcomes: Sequence[Outcome],
    rows: Mapping[int, Row],
    policy: RetryPolicy,
    *,
    rand: Callable[[], float] = random.random,
) -> list[Write | Refusal]:
    """One Write or Refusal per outcome, in the order of ``outcomes``.

    Fenced: an outcome changes its task only while the task is in_progress at the outcome's attempt,
    and only the first outcome for a task in ``outcomes`` does.
    """
    planned: list[Write | Refusal] = []
    taken: set[int] = set()
    for o in outcomes:
        row = rows.get(o.task_id)
        if row is None:
            planned.append(Refusal(o, NO_SUCH_TASK))
        elif o.task_id in taken:
            planned.append(Refusal(o, SUPERSEDED))
        elif row.status is not TaskStatus.IN_PROGRESS or row.attempt != o.attempt:
            planned.append(Refusal(o, f"fenced: task is {row.status} at attempt {row.attempt}"))
        else:
            taken.add(o.task_id)
            planned.append(_write(o, row, policy, rand))
    return planned


def _write(o: Outcome, row: Row, policy: RetryPolicy, rand: Callable[[], float]) -> Write:
    f = o.failure
    if o.release is not None:
        # Handed back through no fault of its own: pending again at once, retries unchanged.
        return Write(
            o, TaskStatus.PENDING, row.retries, None, None, None, row.crashes, row.releases + 1,
            AttemptOutcome.RELEASED, f"released: {o.release.cause}",
        )  # fmt: skip
    if f is None:
        return Write(
            o, TaskStatus.COMPLETED, row.retries, None, None, None, row.crashes, row.releases,
            AttemptOutcome.COMPLETED, None,
        )  # fmt: skip
    death = f.stage is Stage.WORKER_DEATH  # the pool charges only a crash's suspects
    crashes = row.crashes + 1 if death else row.crashes
    decision = decide(
        f, row.retries, policy.for_task(row.max_retries, row.backoff_factor), crashes=crashes if death else 0, rand=rand
    )
    error = f"{f.error_class}: {f.message}" + (f" (HTTP {f.http_status})" if f.http_status else "")
    if decision.dead:  # the policy's words: permanent, or retries exhausted
        return Write(
            o, TaskStatus.DEAD, row.retries, None, f"{f.reason} ({decision.reason})", error, crashes, row.releases,
            AttemptOutcome.DEAD, decision.reason,
        )  # fmt: skip
    return Write(
        o, TaskStatus.FAILED, row.retries + 1, decision.delay_s, f.reason, error, crashes, row.releases,
        AttemptOutcome.FAILED, decision.reason,
    )  # fmt: skip
