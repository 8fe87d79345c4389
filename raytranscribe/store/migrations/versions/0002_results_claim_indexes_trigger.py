"""Result summary columns, claim/retry/lease indexes, and the status-transition trigger.

The trigger makes the database itself refuse illegal status changes, whoever issues the UPDATE,
and stamps ``updated_at`` on every change.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# SQLSTATE the store maps to IllegalTransition (class "RT": ours, not a predefined class).
ILLEGAL_TRANSITION_SQLSTATE = "RT001"

GUARD_FUNCTION = f"""
CREATE OR REPLACE FUNCTION tasks_guard_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
           (OLD.status = 'pending'     AND NEW.status IN ('in_progress', 'cancelled'))
        OR (OLD.status = 'in_progress' AND NEW.status IN ('completed', 'failed', 'dead', 'pending', 'cancelled'))
        OR (OLD.status = 'failed'      AND NEW.status IN ('in_progress', 'pending', 'cancelled', 'dead'))
        OR (OLD.status = 'dead'        AND NEW.status = 'pending')
        OR (OLD.status = 'cancelled'   AND NEW.status = 'pending')
    ) THEN
        RAISE EXCEPTION 'illegal task status transition % -> % (task %)', OLD.status, NEW.status, OLD.id
            USING ERRCODE = '{ILLEGAL_TRANSITION_SQLSTATE}';
    END IF;
    -- The attempt number is a fencing token: it may only grow.
    IF NEW.attempt < OLD.attempt THEN
        RAISE EXCEPTION 'attempt of task % may not go back from % to %', OLD.id, OLD.attempt, NEW.attempt
            USING ERRCODE = '{ILLEGAL_TRANSITION_SQLSTATE}';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;
"""


def upgrade() -> None:
    op.add_column("tasks", sa.Column("audio_duration_s", sa.Float(), nullable=True))
    op.add_column("tasks", sa.Column("language", sa.Text(), nullable=True))
    op.add_column("tasks", sa.Column("output_uris", postgresql.JSONB(), nullable=True))
    op.add_column("tasks", sa.Column("text_preview", sa.Text(), nullable=True))
    op.create_index(
        "ix_tasks_claimable",
        "tasks",
        [sa.text("priority DESC"), "created_at", "id"],
        postgresql_where=sa.text("status IN ('pending', 'failed')"),
    )
    op.create_index("ix_tasks_retry_due", "tasks", ["retry_at"], postgresql_where=sa.text("status = 'failed'"))
    op.create_index(
        "ix_tasks_lease_expiry", "tasks", ["lease_expires_at"], postgresql_where=sa.text("status = 'in_progress'")
    )
    op.execute(GUARD_FUNCTION)
    op.execute(
        "CREATE TRIGGER tasks_guard_transition BEFORE UPDATE ON tasks "
        "FOR EACH ROW EXECUTE FUNCTION tasks_guard_transition()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS tasks_guard_transition ON tasks")
    op.execute("DROP FUNCTION IF EXISTS tasks_guard_transition()")
    op.drop_index("ix_tasks_lease_expiry", table_name="tasks")
    op.drop_index("ix_tasks_retry_due", table_name="tasks")
    op.drop_index("ix_tasks_claimable", table_name="tasks")
    for col in ("text_preview", "output_uris", "language", "audio_duration_s"):
        op.drop_column("tasks", col)
