"""Suspect transcripts: counted and listed without scanning ``tasks``, re-transcribed on request.

* ``task_suspects``: one row per completed task whose transcript is suspect (``tasks.suspect``,
  0009). ``status`` counts them and ``tasks --suspect`` lists them from here: ``tasks`` gets no
  index on ``suspect``, which completion sets (an indexed column would make every completion a
  non-HOT update). Kept by the database, like 0005's side tables: statement triggers derive it from
  every INSERT, UPDATE, DELETE or TRUNCATE of ``tasks``, whoever issues it. An UPDATE that neither
  finds nor leaves a suspect among its rows (every claim, nearly every completion) does only one
  scan of its own transition tables.
* ``completed -> pending`` becomes legal for a suspect task (``retry --suspect``): the transition
  guard of 0004, with that one rule more. Any other completed task stays final.
* ``task_attempts.quality``: each completed attempt's measures and verdict, so a suspect task
  re-transcribed keeps the verdict of every earlier attempt in its history.

Revision ID: 0010
Revises: 0009
"""

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SUSPECT = "suspect IS TRUE AND status = 'completed'"

SYNC_FUNCTION = f"""
CREATE OR REPLACE FUNCTION tasks_sync_suspects() RETURNS trigger
LANGUAGE plpgsql SET enable_seqscan = off AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM task_suspects WHERE task_id = ANY(ARRAY(SELECT id FROM gone WHERE {SUSPECT}));
    ELSIF TG_OP = 'UPDATE' THEN
        IF EXISTS (SELECT FROM changed WHERE {SUSPECT}) OR EXISTS (SELECT FROM was WHERE {SUSPECT}) THEN
            WITH unsuspect AS (
                DELETE FROM task_suspects
                WHERE task_id = ANY(ARRAY(SELECT id FROM was WHERE {SUSPECT}
                                          EXCEPT SELECT id FROM changed WHERE {SUSPECT}))
            )
            INSERT INTO task_suspects (task_id)
            SELECT id FROM changed WHERE {SUSPECT} ORDER BY id ON CONFLICT DO NOTHING;
        END IF;
    ELSIF EXISTS (SELECT FROM changed WHERE {SUSPECT}) THEN
        INSERT INTO task_suspects (task_id)
        SELECT id FROM changed WHERE {SUSPECT} ORDER BY id ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;
"""

TRUNCATE_FUNCTION = """
CREATE OR REPLACE FUNCTION tasks_truncate_suspects() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE task_suspects;
    RETURN NULL;
END;
$$;
"""

TRIGGERS = (
    "CREATE TRIGGER tasks_suspects_inserted AFTER INSERT ON tasks REFERENCING NEW TABLE AS changed "
    "FOR EACH STATEMENT EXECUTE FUNCTION tasks_sync_suspects()",
    "CREATE TRIGGER tasks_suspects_updated AFTER UPDATE ON tasks REFERENCING OLD TABLE AS was NEW TABLE AS changed "
    "FOR EACH STATEMENT EXECUTE FUNCTION tasks_sync_suspects()",
    "CREATE TRIGGER tasks_suspects_deleted AFTER DELETE ON tasks REFERENCING OLD TABLE AS gone "
    "FOR EACH STATEMENT EXECUTE FUNCTION tasks_sync_suspects()",
    "CREATE TRIGGER tasks_suspects_truncated AFTER TRUNCATE ON tasks "
    "FOR EACH STATEMENT EXECUTE FUNCTION tasks_truncate_suspects()",
)


def _guard() -> ModuleType:
    """Migration 0004's module (the transition guard), loaded from its file as alembic loads it."""
    path = Path(__file__).with_name("0004_queue_throughput.py")
    spec = importlib.util.spec_from_file_location("raytranscribe_migration_0004", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _legal(previous: str) -> str:
    """0004's rules plus: a completed task whose transcript is suspect may be queued again."""
    rules = previous.rstrip().removesuffix(")")
    return rules + "    OR (OLD.status = 'completed'   AND NEW.status = 'pending' AND OLD.suspect IS TRUE)\n)"


def _guard_sql(legal: str) -> tuple[str, str]:
    """0004's refusing function and guard trigger with ``legal`` for its rules."""
    g = _guard()
    return g.REFUSE_FUNCTION.replace(g.LEGAL, legal), g.GUARD_TRIGGER.replace(g.LEGAL, legal)


def upgrade() -> None:
    op.execute("LOCK TABLE tasks IN EXCLUSIVE MODE")  # nothing changes between the backfill and the triggers
    op.create_table(
        "task_suspects",
        sa.Column("task_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("task_id", name="pk_task_suspects"),
    )
    op.add_column("task_attempts", sa.Column("quality", JSONB, nullable=True))
    op.execute(f"INSERT INTO task_suspects (task_id) SELECT id FROM tasks WHERE {SUSPECT}")
    op.execute(SYNC_FUNCTION)
    op.execute(TRUNCATE_FUNCTION)
    for trigger in TRIGGERS:
        op.execute(trigger)
    function, trigger = _guard_sql(_legal(_guard().LEGAL))
    op.execute("DROP TRIGGER tasks_guard_transition ON tasks")
    op.execute(function)
    op.execute(trigger)


def downgrade() -> None:
    g = _guard()
    op.execute("LOCK TABLE tasks IN EXCLUSIVE MODE")
    op.execute("DROP TRIGGER tasks_guard_transition ON tasks")
    op.execute(g.REFUSE_FUNCTION)
    op.execute(g.GUARD_TRIGGER)
    for name in ("inserted", "updated", "deleted", "truncated"):
        op.execute(f"DROP TRIGGER tasks_suspects_{name} ON tasks")
    op.execute("DROP FUNCTION tasks_truncate_suspects()")
    op.execute("DROP FUNCTION tasks_sync_suspects()")
    op.drop_column("task_attempts", "quality")
    op.drop_table("task_suspects")
