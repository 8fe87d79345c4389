"""What each task's worker crashes cost it: ``crashes`` and ``releases``.

A dying actor used to charge a retry to every task it held. Now only the suspects pay (the tasks
inside the engine call, or decoding, when the process died): ``crashes`` counts the crashes a task
was charged for, and ``releases`` the times it was handed back uncharged (its actor or node died
while it only waited, or its node drained). The claim reads both: a task charged for a crash, or
released many times, runs alone next (``retry.alone_after_crashes``, ``retry.alone_after_releases``),
and a task buried by crashes says how many.

Adding a column with a constant default rewrites no rows (PostgreSQL 11+), and no index names
either column, so claim and completion stay HOT updates.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("crashes", sa.Integer, nullable=False, server_default=sa.text("0")))
    op.add_column("tasks", sa.Column("releases", sa.Integer, nullable=False, server_default=sa.text("0")))
    op.create_check_constraint("crashes_nonnegative", "tasks", "crashes >= 0")
    op.create_check_constraint("releases_nonnegative", "tasks", "releases >= 0")


def downgrade() -> None:
    op.drop_constraint("releases_nonnegative", "tasks")
    op.drop_constraint("crashes_nonnegative", "tasks")
    op.drop_column("tasks", "releases")
    op.drop_column("tasks", "crashes")
