"""The states of a task and of an attempt, and which of them an operator may change: no SQL here.

Statuses (the database enforces the transitions with a trigger, see migrations 0002 and 0004)::

    pending -> in_progress -> completed
                           -> failed (retry_at) -> in_progress ...
                           -> dead (permanent error, or retries exhausted)
    pending/in_progress/failed -> cancelled;  failed/dead/cancelled -> pending (requeue)
    completed -> pending, only while its transcript is suspect (retry --suspect; migration 0010)
"""

from __future__ import annotations

import enum


class TaskStatus(str, enum.Enum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"  # waiting for retry_at
    DEAD = "dead"  # permanent error or retries exhausted
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class AttemptOutcome(str, enum.Enum):
    """``task_attempts.outcome``; NULL while the attempt is running."""

    COMPLETED = "completed"
    FAILED = "failed"  # a retry was scheduled
    DEAD = "dead"
    RELEASED = "released"  # handed back by a stopping orchestrator, not charged
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


# Statuses of a task that is not finished: it runs or may run again, so it may still write its outputs.
UNFINISHED = (TaskStatus.PENDING, TaskStatus.IN_PROGRESS, TaskStatus.FAILED)
REQUEUEABLE = (TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED)
CANCELLABLE = UNFINISHED  # cancelling stops what is not finished; a finished task has nothing to stop
