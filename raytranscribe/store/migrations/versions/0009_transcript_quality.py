"""Each completed transcript's quality: ``quality`` (the measures, JSONB) and ``suspect``.

``quality`` holds what the verdict was drawn from (mean log-probability, highest no-speech
probability, highest compression ratio, windows that needed the temperature fallback, speech and
audio seconds, words per second) and its reasons; ``suspect`` is the verdict itself. Both are NULL
until a task completes, and for tasks completed before this migration.

Adding nullable columns rewrites no rows, and no index names either column, so completion stays a
HOT update.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("quality", JSONB, nullable=True))
    op.add_column("tasks", sa.Column("suspect", sa.Boolean, nullable=True))


def downgrade() -> None:
    op.drop_column("tasks", "suspect")
    op.drop_column("tasks", "quality")
