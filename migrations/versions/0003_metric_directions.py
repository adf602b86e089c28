"""Declared metric directions (higher or lower is better)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "metric_directions",
        sa.Column("metric", sa.String(length=200), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("declared_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("declared_by", sa.String(length=200), nullable=False),
        sa.CheckConstraint(
            "direction IN ('higher', 'lower')",
            name=op.f("ck_metric_directions_direction_known"),
        ),
        sa.PrimaryKeyConstraint("metric", name=op.f("pk_metric_directions")),
    )


def downgrade() -> None:
    op.drop_table("metric_directions")
