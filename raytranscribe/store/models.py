"""SQLAlchemy 2 typed models of the task store, and the Postgres enum ``task_status``.

The migrations in ``migrations/versions`` create exactly this metadata (a test compares them); what
metadata cannot express (the transition guard, the triggers that keep ``task_queue``,
``task_leases``, ``task_stopped`` and the counts in step with ``tasks``, storage parameters) lives
only in the migrations.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from raytranscribe.store.states import TaskStatus

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# values_callable: the database stores "in_progress", not the member name "IN_PROGRESS".
task_status_enum = sa.Enum(
    TaskStatus,
    name="task_status",
    values_callable=lambda e: [m.value for m in e],
    validate_strings=True,
)

TZ = sa.DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=True)
    input_uri: Mapped[str] = mapped_column(sa.Text)
    output_uri: Mapped[str] = mapped_column(sa.Text)  # output stem; files are f"{output_uri}.{fmt}"
    engine: Mapped[str] = mapped_column(sa.Text)
    model: Mapped[str] = mapped_column(sa.Text)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    priority: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("0"))
    status: Mapped[TaskStatus] = mapped_column(task_status_enum, server_default=sa.text("'pending'"))
    attempt: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("0"))  # fencing token
    retries: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("0"))  # retries granted
    # Worker crashes charged to it, and hand-backs that were not its doing (migration 0008).
    crashes: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("0"))
    releases: Mapped[int] = mapped_column(sa.Integer, server_default=sa.text("0"))
    max_retries: Mapped[int] = mapped_column(sa.Integer)
    backoff_factor: Mapped[float] = mapped_column(sa.Float)
    retry_at: Mapped[datetime | None] = mapped_column(TZ)
    lease_owner: Mapped[str | None] = mapped_column(sa.Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(TZ)
    failure_reason: Mapped[str | None] = mapped_column(sa.Text)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=sa.func.now())
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=sa.func.now())
    started_at: Mapped[datetime | None] = mapped_column(TZ)  # start of the latest attempt
    completed_at: Mapped[datetime | None] = mapped_column(TZ)  # reached completed, dead or cancelled
    # A sha256 hex digest: bytewise collation keeps its unique-index upkeep cheap (migration 0004).
    dedupe_key: Mapped[str] = mapped_column(sa.Text(collation="C"))
    # Result summary (migration 0002).
    audio_duration_s: Mapped[float | None] = mapped_column(sa.Float)
    language: Mapped[str | None] = mapped_column(sa.Text)
    output_uris: Mapped[list[str] | None] = mapped_column(JSONB)
    text_preview: Mapped[str | None] = mapped_column(sa.Text)
    # The transcript's quality measures and verdict (migration 0009); NULL until completed.
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    suspect: Mapped[bool | None] = mapped_column(sa.Boolean)

    __table_args__ = (
        sa.UniqueConstraint("dedupe_key"),
        sa.CheckConstraint("retries >= 0", name="retries_nonnegative"),
        sa.CheckConstraint("max_retries >= 0", name="max_retries_nonnegative"),
        sa.CheckConstraint("retries <= max_retries", name="retries_within_max"),
        sa.CheckConstraint("backoff_factor >= 1", name="backoff_factor_min"),
        sa.CheckConstraint("attempt >= 0", name="attempt_nonnegative"),
        sa.CheckConstraint("crashes >= 0", name="crashes_nonnegative"),
        sa.CheckConstraint("releases >= 0", name="releases_nonnegative"),
        sa.CheckConstraint("status <> 'failed' OR retry_at IS NOT NULL", name="failed_has_retry_at"),
        sa.CheckConstraint(
            "status <> 'in_progress' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name="in_progress_has_lease",
        ),
        # Equality look-ups only (submitted_inputs): a hash index is cheaper to keep up (migration 0004).
        # No index names a column that claim, completion or renewal changes (status, attempt, lease,
        # retry_at, timestamps, results), so those updates stay HOT and write no index entry; claim
        # order and lease expiry are served by task_queue and task_leases (migration 0005).
        sa.Index("ix_tasks_input_uri", "input_uri", postgresql_using="hash"),
        # The unfinished tasks of an output stem, which submit refuses to share (migration 0007).
        sa.Index("ix_tasks_output_uri", "output_uri", postgresql_using="hash"),
    )


class TaskQueue(Base):
    """One row per claimable task: pending, or failed and waiting for ``ready_at`` (its retry_at).

    Kept by the database: statement triggers on ``tasks`` insert, update and delete these rows from
    the rows each statement changed (migration 0005); the application never writes here.
    ``engine``, ``model``, ``priority`` and ``created_at`` are copies, so the claim's ordered scan
    and its pool filter read only this narrow table.
    """

    __tablename__ = "task_queue"

    task_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    engine: Mapped[str] = mapped_column(sa.Text)
    model: Mapped[str] = mapped_column(sa.Text)
    priority: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(TZ)
    ready_at: Mapped[datetime] = mapped_column(TZ)  # created_at when pending, retry_at when failed
    status: Mapped[TaskStatus] = mapped_column(task_status_enum)  # pending or failed (migration 0006)

    __table_args__ = (
        # Claim order: highest priority, then oldest; ready_at is checked on the row.
        sa.Index("ix_task_queue_claim_order", sa.text("priority DESC"), "created_at", "task_id"),
        # The oldest pending task (`status`), and failed tasks whose retry is due (the heartbeat's pools).
        sa.Index("ix_task_queue_created_at", "created_at", postgresql_where=sa.text("status = 'pending'")),
        sa.Index("ix_task_queue_ready_at", "ready_at", postgresql_where=sa.text("status = 'failed'")),
    )


class TaskLease(Base):
    """One row per in_progress task: the lease the reaper checks. Kept by the database like TaskQueue.

    Deliberately no index on ``expires_at``: the table holds only in-flight tasks (bounded by the
    workers, not by the backlog), so the reaper's scan is short and a renewal stays a HOT update.
    """

    __tablename__ = "task_leases"

    task_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    attempt: Mapped[int] = mapped_column(sa.Integer)
    owner: Mapped[str] = mapped_column(sa.Text)
    expires_at: Mapped[datetime] = mapped_column(TZ)


class TaskStopped(Base):
    """One row per dead or cancelled task: what ``tasks --status dead`` reads instead of scanning ``tasks``.

    Kept by the database like TaskQueue (migration 0006). Claim and completion never enter or leave
    these statuses, so the hot path never writes here.
    """

    __tablename__ = "task_stopped"

    status: Mapped[TaskStatus] = mapped_column(task_status_enum, primary_key=True)
    task_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)


class TaskSuspect(Base):
    """One row per completed task whose transcript is suspect: what ``status`` counts and ``tasks
    --suspect`` lists, so ``tasks`` needs no index on ``suspect`` (completion sets it; an indexed
    column would make completions non-HOT). Kept by the database like TaskQueue (migration 0010)."""

    __tablename__ = "task_suspects"

    task_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)


class TaskCount(Base):
    """Tasks and audio seconds per (engine, model, status), kept by the database (migration 0006).

    Each count is spread over shard rows (a statement adds to its backend's shard) so concurrent
    writers do not queue on one row lock; a count is the sum of its shards, which alone may be negative.
    """

    __tablename__ = "task_counts"

    engine: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    model: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    status: Mapped[TaskStatus] = mapped_column(task_status_enum, primary_key=True)
    shard: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, autoincrement=False)
    tasks: Mapped[int] = mapped_column(sa.BigInteger)
    audio_s: Mapped[Decimal] = mapped_column(sa.Numeric)  # exact sums: added and taken away per statement


class TaskFailureCount(Base):
    """Failed and dead tasks per failure_reason, sharded like TaskCount (migration 0006)."""

    __tablename__ = "task_failure_counts"

    failure_reason: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    shard: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, autoincrement=False)
    tasks: Mapped[int] = mapped_column(sa.BigInteger)


class TaskAttempt(Base):
    """One row per claim of a task: who ran it, where, how it ended, and at which stage it failed."""

    __tablename__ = "task_attempts"

    # (task_id, attempt) is the key (migration 0005): one index, no sequence, per claim.
    task_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    attempt: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    worker: Mapped[str] = mapped_column(sa.Text)  # the lease owner that claimed it
    actor: Mapped[str | None] = mapped_column(sa.Text)
    node: Mapped[str | None] = mapped_column(sa.Text)
    started_at: Mapped[datetime] = mapped_column(TZ, server_default=sa.func.now())
    finished_at: Mapped[datetime | None] = mapped_column(TZ)
    outcome: Mapped[str | None] = mapped_column(sa.Text)
    stage: Mapped[str | None] = mapped_column(sa.Text)
    error_class: Mapped[str | None] = mapped_column(sa.Text)
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    http_status: Mapped[int | None] = mapped_column(sa.Integer)
    decision: Mapped[str | None] = mapped_column(sa.Text)  # what the retry policy decided, in words
    timings: Mapped[list[Any] | None] = mapped_column(JSONB)  # [[stage, seconds], ...] in order
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # a completed attempt's verdict (migration 0010)

    __table_args__ = (
        sa.CheckConstraint(
            "outcome IS NULL OR outcome IN ('completed', 'failed', 'dead', 'released', 'cancelled')",
            name="outcome_known",
        ),
    )


class OrchestratorState(Base):
    """What each running orchestrator last published: its actors and circuit breakers, for ``status``.

    Rows are upserted on every heartbeat and expire on their own when a driver dies (migration 0003).
    """

    __tablename__ = "orchestrators"

    owner: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSONB)
    started_at: Mapped[datetime] = mapped_column(TZ, server_default=sa.func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(TZ, server_default=sa.func.now())
    expires_at: Mapped[datetime] = mapped_column(TZ)
