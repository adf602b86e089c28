"""Journal event numbers from a counter row, so the journal reads in commit order

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "journal_counter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_journal_counter_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal_counter")),
    )
    op.execute(
        "INSERT INTO journal_counter (id, last_event_id) "
        "SELECT 1, COALESCE(MAX(id), 0) FROM events"
    )


def downgrade() -> None:
    op.drop_table("journal_counter")
