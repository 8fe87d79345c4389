"""Find tasks by output stem: submit refuses a stem that an unfinished task may still write.

Two tasks writing one stem overwrite each other's outputs (issue 11), so ``Store.submit`` looks up
the unfinished tasks of every stem it is about to insert. Without an index that is a scan of the
whole table's history per submit. A hash index, like ``ix_tasks_input_uri`` (0004): equality
look-ups only, one hash per insert. ``output_uri`` never changes after the insert, so claim,
completion and renewal stay HOT updates that write no index entry.

Building it reads the table once and blocks writes to ``tasks`` meanwhile (seconds per million
rows); alembic runs it in the upgrade's transaction, so it cannot be built CONCURRENTLY here.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_output_uri", "tasks", ["output_uri"], postgresql_using="hash")


def downgrade() -> None:
    op.drop_index("ix_tasks_output_uri", table_name="tasks")
