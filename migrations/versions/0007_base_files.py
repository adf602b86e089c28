"""Base checkpoints stored in the blob store: one row per file of a base

Revision ID: 0007
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "base_files",
        sa.Column("base_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("size >= 0", name=op.f("ck_base_files_size_nonnegative")),
        sa.ForeignKeyConstraint(
            ["base_id"],
            ["base_models.id"],
            name=op.f("fk_base_files_base_id_base_models"),
        ),
        sa.PrimaryKeyConstraint("base_id", "path", name=op.f("pk_base_files")),
    )
    op.create_index("ix_base_files_sha256", "base_files", ["sha256"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_base_files_sha256", table_name="base_files")
    op.drop_table("base_files")
