"""Publish gates: alias policies, protected aliases, the kind and report of each alias move

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("alias_moves") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("report", sa.JSON(), nullable=True))
    op.create_table(
        "alias_policies",
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=100), nullable=False),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapters.id"], name=op.f("fk_alias_policies_adapter_id_adapters")
        ),
        sa.PrimaryKeyConstraint("adapter_id", "alias", name=op.f("pk_alias_policies")),
    )
    op.create_table(
        "alias_protections",
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=100), nullable=False),
        sa.Column("protected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("protected_by", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapters.id"], name=op.f("fk_alias_protections_adapter_id_adapters")
        ),
        sa.PrimaryKeyConstraint("adapter_id", "alias", name=op.f("pk_alias_protections")),
    )


def downgrade() -> None:
    op.drop_table("alias_protections")
    op.drop_table("alias_policies")
    with op.batch_alter_table("alias_moves") as batch:
        batch.drop_column("report")
        batch.drop_column("kind")
