"""Claim and completion stop writing index entries into ``tasks``: queue order and leases move to
narrow side tables that the database keeps in step with ``tasks`` itself.

Until 0004 every claim and every completion changed ``status``, which the partial claim, retry and
lease indexes of 0002 name, so no update of ``tasks`` could be HOT: each one wrote a new entry into
every index of the table. This revision drops those three indexes, so the hot path's updates of
``tasks`` touch no indexed column and stay on their page (HOT, given room: fillfactor), and serves
the look-ups they served from two narrow tables:

* ``task_queue``: exactly one row per claimable task (pending, or failed and waiting for its
  ``retry_at``, kept as ``ready_at``), with copies of the columns the claim orders and filters by.
  Claim reads it in index order and locks the *task* rows (SKIP LOCKED); it never locks a queue row.
* ``task_leases``: exactly one row per in_progress task (attempt, owner, expiry): what the reaper
  scans. It holds only in-flight tasks, so it needs no index on the expiry, and renewing a lease is
  a HOT update there too.

Nothing in the application writes these tables. Statement-level AFTER triggers on ``tasks`` derive
them from the rows each INSERT, UPDATE or DELETE changed (transition tables: one set-based
statement per statement on ``tasks``, not one function call per row), and TRUNCATE empties them.
So "queued iff claimable" and "leased iff in progress" hold whoever changes ``tasks``: the store,
an operator in psql, or a future migration. Every writer locks the task row before the trigger
touches its side rows, so side rows never add a lock-order of their own.

``task_attempts`` is keyed by ``(task_id, attempt)``, which was already unique: the surrogate id,
its sequence and one index per claim go.

Existing rows are copied into the side tables. ``tasks`` gets fillfactor 45 (a claimed and a
completed version of every row of a page must fit beside the original for the updates to stay HOT);
it applies to pages written from now on, and ``VACUUM FULL tasks`` rewrites the old ones when the
operator chooses (it locks the table).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TASKS_FILLFACTOR = 45
LEASES_FILLFACTOR = 70  # every renewal rewrites each lease: room for HOT versions
# Both side tables churn (every claim deletes a queue row, every completion a lease), and a claim's
# ordered scan steps over the dead entries until a vacuum removes them: vacuum them after a
# thousand dead rows rather than after a fifth of the table, and without cost-based pauses.
CHURN_AUTOVACUUM = (
    "autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0"
)

TZ = sa.DateTime(timezone=True)

# Derive the side rows of every task a statement inserted or updated (transition table `changed`),
# or drop those of the tasks it deleted (`gone`). One statement: one executor start per call.
# PL/pgSQL plans a statement without parameters once per session, so every access to a side table
# must stay an index probe whatever the tables looked like then: deletes go through
# `= ANY(ARRAY(...))` (an index scan of the primary key) and inserts through ON CONFLICT (an index
# probe by construction); a join against a side table could be planned as a scan of it, and between
# two vacuums a busy side table's heap is mostly dead rows.
SYNC_FUNCTION = """
CREATE OR REPLACE FUNCTION tasks_sync_side_tables() RETURNS trigger
LANGUAGE plpgsql SET enable_seqscan = off AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM task_queue WHERE task_id = ANY(ARRAY(SELECT id FROM gone));
        DELETE FROM task_leases WHERE task_id = ANY(ARRAY(SELECT id FROM gone));
        RETURN NULL;
    END IF;
    WITH unqueue AS (
        DELETE FROM task_queue
        WHERE task_id = ANY(ARRAY(SELECT id FROM changed WHERE status NOT IN ('pending', 'failed')))
    ), enqueue AS (
        INSERT INTO task_queue AS q (task_id, engine, model, priority, created_at, ready_at)
        SELECT id, engine, model, priority, created_at,
               CASE WHEN status = 'failed' THEN retry_at ELSE created_at END
        FROM changed WHERE status IN ('pending', 'failed')
        ON CONFLICT (task_id) DO UPDATE SET
            engine = EXCLUDED.engine, model = EXCLUDED.model, priority = EXCLUDED.priority,
            created_at = EXCLUDED.created_at, ready_at = EXCLUDED.ready_at
        WHERE (q.engine, q.model, q.priority, q.created_at, q.ready_at)
              IS DISTINCT FROM (EXCLUDED.engine, EXCLUDED.model, EXCLUDED.priority, EXCLUDED.created_at,
                                EXCLUDED.ready_at)
    ), unlease AS (
        DELETE FROM task_leases
        WHERE task_id = ANY(ARRAY(SELECT id FROM changed WHERE status <> 'in_progress'))
    )
    -- A claim inserts the lease, a renewal (or any change of a leased task's lease columns) updates it.
    INSERT INTO task_leases AS l (task_id, attempt, owner, expires_at)
    SELECT id, attempt, lease_owner, lease_expires_at FROM changed WHERE status = 'in_progress'
    ON CONFLICT (task_id) DO UPDATE SET
        attempt = EXCLUDED.attempt, owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at
    WHERE (l.attempt, l.owner, l.expires_at) IS DISTINCT FROM (EXCLUDED.attempt, EXCLUDED.owner, EXCLUDED.expires_at);
    RETURN NULL;
END;
$$;
"""

TRUNCATE_FUNCTION = """
CREATE OR REPLACE FUNCTION tasks_truncate_side_tables() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE task_queue, task_leases;
    RETURN NULL;
END;
$$;
"""

TRIGGERS = (
    (
        "CREATE TRIGGER tasks_sync_inserted AFTER INSERT ON tasks REFERENCING NEW TABLE AS changed "
        "FOR EACH STATEMENT EXECUTE FUNCTION tasks_sync_side_tables()"
    ),
    (
        "CREATE TRIGGER tasks_sync_updated AFTER UPDATE ON tasks REFERENCING NEW TABLE AS changed "
        "FOR EACH STATEMENT EXECUTE FUNCTION tasks_sync_side_tables()"
    ),
    (
        "CREATE TRIGGER tasks_sync_deleted AFTER DELETE ON tasks REFERENCING OLD TABLE AS gone "
        "FOR EACH STATEMENT EXECUTE FUNCTION tasks_sync_side_tables()"
    ),
    "CREATE TRIGGER tasks_sync_truncated AFTER TRUNCATE ON tasks FOR EACH STATEMENT EXECUTE FUNCTION tasks_truncate_side_tables()",
)


def upgrade() -> None:
    op.drop_index("ix_tasks_claimable", table_name="tasks")
    op.drop_index("ix_tasks_retry_due", table_name="tasks")
    op.drop_index("ix_tasks_lease_expiry", table_name="tasks")
    op.execute(f"ALTER TABLE tasks SET (fillfactor = {TASKS_FILLFACTOR})")

    op.create_table(
        "task_queue",
        sa.Column("task_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("engine", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("ready_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("task_id", name="pk_task_queue"),
    )
    op.create_index("ix_task_queue_claim_order", "task_queue", [sa.text("priority DESC"), "created_at", "task_id"])
    op.create_table(
        "task_leases",
        sa.Column("task_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("task_id", name="pk_task_leases"),
    )
    op.execute(f"ALTER TABLE task_leases SET (fillfactor = {LEASES_FILLFACTOR}, {CHURN_AUTOVACUUM})")
    op.execute(f"ALTER TABLE task_queue SET ({CHURN_AUTOVACUUM})")
    op.execute(
        "INSERT INTO task_queue (task_id, engine, model, priority, created_at, ready_at) "
        "SELECT id, engine, model, priority, created_at, CASE WHEN status = 'failed' THEN retry_at ELSE created_at END "
        "FROM tasks WHERE status IN ('pending', 'failed')"
    )
    op.execute(
        "INSERT INTO task_leases (task_id, attempt, owner, expires_at) "
        "SELECT id, attempt, lease_owner, lease_expires_at FROM tasks WHERE status = 'in_progress'"
    )
    op.execute(SYNC_FUNCTION)
    op.execute(TRUNCATE_FUNCTION)
    for trigger in TRIGGERS:
        op.execute(trigger)

    op.drop_constraint("uq_task_attempts_task_id_attempt", "task_attempts", type_="unique")
    op.drop_constraint("pk_task_attempts", "task_attempts", type_="primary")
    op.drop_column("task_attempts", "id")  # drops its sequence too
    op.create_primary_key("pk_task_attempts", "task_attempts", ["task_id", "attempt"])


def downgrade() -> None:
    op.drop_constraint("pk_task_attempts", "task_attempts", type_="primary")
    op.add_column("task_attempts", sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False))
    op.create_primary_key("pk_task_attempts", "task_attempts", ["id"])
    op.create_unique_constraint("uq_task_attempts_task_id_attempt", "task_attempts", ["task_id", "attempt"])
    for name in ("tasks_sync_inserted", "tasks_sync_updated", "tasks_sync_deleted", "tasks_sync_truncated"):
        op.execute(f"DROP TRIGGER {name} ON tasks")
    op.execute("DROP FUNCTION tasks_sync_side_tables()")
    op.execute("DROP FUNCTION tasks_truncate_side_tables()")
    op.drop_table("task_leases")
    op.drop_table("task_queue")
    op.execute("ALTER TABLE tasks RESET (fillfactor)")
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
