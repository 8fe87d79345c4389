"""Reads that stay fast as the table grows: counts kept by the database, and side rows for the rare statuses.

Until 0005 the orchestrator's heartbeat and ``raytranscribe status`` counted ``tasks`` itself
(``count(*) ... GROUP BY status``, ``sum(audio_duration_s)``, the top failure reasons), and
``tasks --status dead`` scanned the table: every read grew with the table's whole history. The
statement triggers of 0005 already see every change of ``tasks`` (transition tables), so they now
also keep, set-based in the same statement (and a second one only for statements that involve a
failed, dead or cancelled task, which claims and completions do not):

* ``task_counts``: tasks and audio seconds per (engine, model, status), as deltas. Many claimers and
  recorders change the same few counts at once, and one row per count would serialise them (each
  waits for the other's commit on the row lock): each count is spread over ``COUNT_SHARDS`` rows,
  and a statement adds to the rows of its own backend's shard (``pg_backend_pid() % COUNT_SHARDS``),
  so concurrent writers almost never touch the same row. Readers sum the shards (a few hundred
  rows at most). A shard row may go negative (a task counted in by one backend and out by
  another); only the sums mean something. Audio seconds are ``numeric``, so adding and taking
  away per statement stays exact (floating-point deltas would drift).
* ``task_failure_counts``: failed and dead tasks per ``failure_reason`` (sharded the same way), for
  ``status``'s top reasons.
* ``task_stopped``: one row per dead or cancelled task, keyed ``(status, task_id)``: what
  ``tasks --status dead`` reads (the claim/complete hot path never changes these statuses).
* ``task_queue.status`` (pending or failed) with two partial indexes: the oldest pending task for
  ``status``, and the failed tasks whose retry is due for the heartbeat's pools. ``tasks`` itself
  gets no index on ``status``: a predicate or key column that changes makes an update non-HOT,
  and claim and completion change ``status`` (see 0005).

Deltas come from the transition tables without joining them: per statement, what the new row
versions add minus what the old ones take away. Every count row of one statement is changed in
key order, and each transaction of the store changes ``tasks`` in one statement (submit's chunks
touch only pending counts), so two of its transactions sharing a shard cannot deadlock on them.
An operator's transaction of several statements can, with the odds of two backends sharing a
shard; the deadlock detector then aborts one of them, and the store re-runs its own. TRUNCATE
empties them all. Existing rows are counted and copied here, with writers kept out (``LOCK
TABLE``) so nothing changes between the backfill and the new triggers.

Revision ID: 0006
Revises: 0005
"""

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COUNT_SHARDS = 32
# The count rows are rewritten by nearly every statement on tasks: vacuum them often (as 0005's side tables).
CHURN_AUTOVACUUM = (
    "autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0"
)
COUNTS_FILLFACTOR = 50  # room for HOT versions of the count rows beside them

SHARD = f"CAST(pg_backend_pid() % {COUNT_SHARDS} AS smallint)"
STOPPED = "('dead', 'cancelled')"
FAILING = "('failed', 'dead')"

# Side rows of queued and leased tasks, as 0005 derives them, now with the queue row's status.
QUEUE_AND_LEASES = """
unqueue AS (
    DELETE FROM task_queue
    WHERE task_id = ANY(ARRAY(SELECT id FROM changed WHERE status NOT IN ('pending', 'failed')))
), enqueue AS (
    INSERT INTO task_queue AS q (task_id, engine, model, priority, created_at, ready_at, status)
    SELECT id, engine, model, priority, created_at,
           CASE WHEN status = 'failed' THEN retry_at ELSE created_at END, status
    FROM changed WHERE status IN ('pending', 'failed')
    ON CONFLICT (task_id) DO UPDATE SET
        engine = EXCLUDED.engine, model = EXCLUDED.model, priority = EXCLUDED.priority,
        created_at = EXCLUDED.created_at, ready_at = EXCLUDED.ready_at, status = EXCLUDED.status
    WHERE (q.engine, q.model, q.priority, q.created_at, q.ready_at, q.status)
          IS DISTINCT FROM (EXCLUDED.engine, EXCLUDED.model, EXCLUDED.priority, EXCLUDED.created_at,
                            EXCLUDED.ready_at, EXCLUDED.status)
), unlease AS (
    DELETE FROM task_leases
    WHERE task_id = ANY(ARRAY(SELECT id FROM changed WHERE status <> 'in_progress'))
)"""

LEASE_UPSERT = """
INSERT INTO task_leases AS l (task_id, attempt, owner, expires_at)
SELECT id, attempt, lease_owner, lease_expires_at FROM changed WHERE status = 'in_progress'
ON CONFLICT (task_id) DO UPDATE SET
    attempt = EXCLUDED.attempt, owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at
WHERE (l.attempt, l.owner, l.expires_at) IS DISTINCT FROM (EXCLUDED.attempt, EXCLUDED.owner, EXCLUDED.expires_at)"""


def _count_rows(sign: str, rows: str) -> str:
    """(engine, model, status, tasks, audio) of each row of a transition table, counted in or out."""
    return (
        f"SELECT engine, model, status, {sign}1 AS n, {sign}COALESCE(CAST(audio_duration_s AS numeric), 0) AS a "
        f"FROM {rows}"
    )


def _reason_rows(sign: str, rows: str) -> str:
    return f"SELECT failure_reason, {sign}1 AS n FROM {rows} WHERE status IN {FAILING} AND failure_reason IS NOT NULL"


def _recount(parts: list[tuple[str, str]]) -> str:
    """A CTE adding the deltas of ``parts`` ((sign, transition table) pairs) to task_counts."""
    counts = " UNION ALL ".join(_count_rows(sign, rows) for sign, rows in parts)
    # ORDER BY: the rows of one statement are locked in key order (no deadlock between two statements).
    return f"""recount AS (
    INSERT INTO task_counts AS c (engine, model, status, shard, tasks, audio_s)
    SELECT engine, model, status, {SHARD}, sum(n), sum(a) FROM ({counts}) d
    GROUP BY engine, model, status HAVING sum(n) <> 0 OR sum(a) <> 0
    ORDER BY engine, model, status
    ON CONFLICT ON CONSTRAINT pk_task_counts DO UPDATE SET
        tasks = c.tasks + EXCLUDED.tasks, audio_s = c.audio_s + EXCLUDED.audio_s
)"""


def _rereason(parts: list[tuple[str, str]]) -> str:
    """A CTE adding the deltas of ``parts`` to task_failure_counts."""
    reasons = " UNION ALL ".join(_reason_rows(sign, rows) for sign, rows in parts)
    return f"""rereason AS (
    INSERT INTO task_failure_counts AS f (failure_reason, shard, tasks)
    SELECT failure_reason, {SHARD}, sum(n) FROM ({reasons}) d
    GROUP BY failure_reason HAVING sum(n) <> 0
    ORDER BY failure_reason
    ON CONFLICT ON CONSTRAINT pk_task_failure_counts DO UPDATE SET tasks = f.tasks + EXCLUDED.tasks
)"""


# `was` (not `old`: PL/pgSQL would read old.status as its OLD record) holds an UPDATE's old row versions.
UNSTOP = f"""unstop AS (
    DELETE FROM task_stopped
    WHERE status IN {STOPPED} AND task_id = ANY(ARRAY(
        SELECT id FROM (SELECT id, status FROM was WHERE status IN {STOPPED}
                        EXCEPT SELECT id, status FROM changed WHERE status IN {STOPPED}) x))
)"""


def _enstop(before: str | None) -> str:
    """The statement adding the task_stopped rows of tasks that became dead or cancelled."""
    came = f"SELECT status, id FROM changed WHERE status IN {STOPPED}"
    if before is not None:
        came += f" EXCEPT SELECT status, id FROM {before} WHERE status IN {STOPPED}"
    return f"INSERT INTO task_stopped (status, task_id) {came} ON CONFLICT DO NOTHING"


RARE = "('failed', 'dead', 'cancelled')"
INSERTED = [("", "changed")]
UPDATED = [("", "changed"), ("-", "was")]

# Same rules as 0005 (one set-based statement, side tables reached by index probes only:
# `= ANY(ARRAY(...))` and ON CONFLICT), plus the counts. Branches differ in the transition tables
# their trigger provides: INSERT `changed`, UPDATE `was` and `changed`, DELETE `gone`. Claims and
# completions (and submissions) neither start nor end a failed, dead or cancelled task: one check
# of the transition tables spares them the statement for reasons and stopped tasks, whose every
# data-modifying part would cost them an executor start, a lock and an open of each index.
SYNC_FUNCTION = f"""
CREATE OR REPLACE FUNCTION tasks_sync_side_tables() RETURNS trigger
LANGUAGE plpgsql SET enable_seqscan = off AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        WITH unqueue AS (
            DELETE FROM task_queue WHERE task_id = ANY(ARRAY(SELECT id FROM gone))
        ), unlease AS (
            DELETE FROM task_leases WHERE task_id = ANY(ARRAY(SELECT id FROM gone))
        ), {_recount([("-", "gone")])}, {_rereason([("-", "gone")])}
        DELETE FROM task_stopped
        WHERE status IN {STOPPED} AND task_id = ANY(ARRAY(SELECT id FROM gone WHERE status IN {STOPPED}));
    ELSIF TG_OP = 'UPDATE' THEN
        WITH {QUEUE_AND_LEASES.strip()}, {_recount(UPDATED)}
        {LEASE_UPSERT.strip()};
        IF EXISTS (SELECT FROM changed WHERE status IN {RARE}) OR EXISTS (SELECT FROM was WHERE status IN {RARE}) THEN
            WITH {UNSTOP}, {_rereason(UPDATED)}
            {_enstop("was")};
        END IF;
    ELSE
        WITH {QUEUE_AND_LEASES.strip()}, {_recount(INSERTED)}
        {LEASE_UPSERT.strip()};
        IF EXISTS (SELECT FROM changed WHERE status IN {RARE}) THEN
            WITH {_rereason(INSERTED)}
            {_enstop(None)};
        END IF;
    END IF;
    RETURN NULL;
END;
$$;
"""

TRUNCATE_FUNCTION = """
CREATE OR REPLACE FUNCTION tasks_truncate_side_tables() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE task_queue, task_leases, task_stopped, task_counts, task_failure_counts;
    RETURN NULL;
END;
$$;
"""

UPDATE_TRIGGER = (
    "CREATE TRIGGER tasks_sync_updated AFTER UPDATE ON tasks REFERENCING OLD TABLE AS was NEW TABLE AS changed "
    "FOR EACH STATEMENT EXECUTE FUNCTION tasks_sync_side_tables()"
)


def _previous() -> ModuleType:
    """Migration 0005's module, for its trigger functions and trigger (the downgrade restores them).
    Loaded from its file: alembic loads revisions by path, not as modules of a package."""
    path = Path(__file__).with_name("0005_side_tables.py")
    spec = importlib.util.spec_from_file_location("raytranscribe_migration_0005", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    # Writers wait until this commits: nothing changes between the backfill and the new triggers.
    op.execute("LOCK TABLE tasks IN EXCLUSIVE MODE")
    task_status = postgresql.ENUM(name="task_status", create_type=False)

    op.add_column("task_queue", sa.Column("status", task_status, nullable=True))
    op.execute("UPDATE task_queue q SET status = t.status FROM tasks t WHERE t.id = q.task_id")
    op.alter_column("task_queue", "status", nullable=False)
    op.create_index(
        "ix_task_queue_created_at", "task_queue", ["created_at"], postgresql_where=sa.text("status = 'pending'")
    )
    op.create_index("ix_task_queue_ready_at", "task_queue", ["ready_at"], postgresql_where=sa.text("status = 'failed'"))

    op.create_table(
        "task_stopped",
        sa.Column("status", task_status, nullable=False),
        sa.Column("task_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("status", "task_id", name="pk_task_stopped"),
    )
    op.create_table(
        "task_counts",
        sa.Column("engine", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("status", task_status, nullable=False),
        sa.Column("shard", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("tasks", sa.BigInteger(), nullable=False),
        sa.Column("audio_s", sa.Numeric(), nullable=False),
        sa.PrimaryKeyConstraint("engine", "model", "status", "shard", name="pk_task_counts"),
    )
    op.create_table(
        "task_failure_counts",
        sa.Column("failure_reason", sa.Text(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("tasks", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("failure_reason", "shard", name="pk_task_failure_counts"),
    )
    for table in ("task_counts", "task_failure_counts"):
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {COUNTS_FILLFACTOR}, {CHURN_AUTOVACUUM})")

    op.execute(f"INSERT INTO task_stopped (status, task_id) SELECT status, id FROM tasks WHERE status IN {STOPPED}")
    op.execute(
        "INSERT INTO task_counts (engine, model, status, shard, tasks, audio_s) "
        "SELECT engine, model, status, 0, count(*), COALESCE(sum(CAST(audio_duration_s AS numeric)), 0) "
        "FROM tasks GROUP BY engine, model, status"
    )
    op.execute(
        "INSERT INTO task_failure_counts (failure_reason, shard, tasks) "
        f"SELECT failure_reason, 0, count(*) FROM tasks WHERE status IN {FAILING} AND failure_reason IS NOT NULL "
        "GROUP BY failure_reason"
    )

    op.execute("DROP TRIGGER tasks_sync_updated ON tasks")
    op.execute(SYNC_FUNCTION)
    op.execute(TRUNCATE_FUNCTION)
    op.execute(UPDATE_TRIGGER)


def downgrade() -> None:
    previous = _previous()
    op.execute("LOCK TABLE tasks IN EXCLUSIVE MODE")
    op.execute("DROP TRIGGER tasks_sync_updated ON tasks")
    op.execute(previous.SYNC_FUNCTION)
    op.execute(previous.TRUNCATE_FUNCTION)
    (update_trigger,) = [t for t in previous.TRIGGERS if "tasks_sync_updated" in t]
    op.execute(update_trigger)
    op.drop_table("task_failure_counts")
    op.drop_table("task_counts")
    op.drop_table("task_stopped")
    op.drop_index("ix_task_queue_ready_at", table_name="task_queue")
    op.drop_index("ix_task_queue_created_at", table_name="task_queue")
    op.drop_column("task_queue", "status")
