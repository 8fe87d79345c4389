"""Initial tables: tasks and task_attempts, the task_status enum, dedupe and sanity constraints.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = ("pending", "in_progress", "completed", "failed", "dead", "cancelled")


def upgrade() -> None:
    task_status = postgresql.ENUM(*STATUSES, name="task_status", create_type=False)
    task_status.create(op.get_bind(), checkfirst=False)
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "tasks",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("input_uri", sa.Text(), nullable=False),
        sa.Column("output_uri", sa.Text(), nullable=False),
        sa.Column("engine", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("options", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("status", task_status, server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("retries", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("backoff_factor", sa.Float(), nullable=False),
        sa.Column("retry_at", tz, nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", tz, nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", tz, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", tz, server_default=sa.func.now(), nullable=False),
        sa.Column("started_at", tz, nullable=True),
        sa.Column("completed_at", tz, nullable=True),
        sa.Column("dedupe_key", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.UniqueConstraint("dedupe_key", name="uq_tasks_dedupe_key"),
        sa.CheckConstraint("retries >= 0", name="ck_tasks_retries_nonnegative"),
        sa.CheckConstraint("max_retries >= 0", name="ck_tasks_max_retries_nonnegative"),
        sa.CheckConstraint("retries <= max_retries", name="ck_tasks_retries_within_max"),
        sa.CheckConstraint("backoff_factor >= 1", name="ck_tasks_backoff_factor_min"),
        sa.CheckConstraint("attempt >= 0", name="ck_tasks_attempt_nonnegative"),
        sa.CheckConstraint("status <> 'failed' OR retry_at IS NOT NULL", name="ck_tasks_failed_has_retry_at"),
        sa.CheckConstraint(
            "status <> 'in_progress' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name="ck_tasks_in_progress_has_lease",
        ),
    )
    op.create_index("ix_tasks_input_uri", "tasks", ["input_uri"])
    op.create_table(
        "task_attempts",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column("node", sa.Text(), nullable=True),
        sa.Column("started_at", tz, server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", tz, nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("stage", sa.Text(), nullable=True),
        sa.Column("error_class", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("decision", sa.Text(), nullable=True),
        sa.Column("timings", postgresql.JSONB(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_task_attempts"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_task_attempts_task_id_tasks", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("task_id", "attempt", name="uq_task_attempts_task_id_attempt"),
        sa.CheckConstraint(
            "outcome IS NULL OR outcome IN ('completed', 'failed', 'dead', 'released', 'cancelled')",
            name="ck_task_attempts_outcome_known",
        ),
    )


def downgrade() -> None:
    op.drop_table("task_attempts")
    op.drop_table("tasks")
    postgresql.ENUM(name="task_status").drop(op.get_bind(), checkfirst=True)
