"""Eval scores, merged checkpoints and lineage

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("base_model_id", sa.Integer(), nullable=True),
        sa.Column("base_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
            name=op.f("fk_checkpoints_base_model_id_base_models"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
    )
    op.create_index("ix_checkpoints_created_at", "checkpoints", ["created_at"], unique=False)
    op.create_index("ix_checkpoints_fingerprint", "checkpoints", ["fingerprint"], unique=False)
    op.create_table(
        "checkpoint_members",
        sa.Column("checkpoint_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["checkpoints.id"],
            name=op.f("fk_checkpoint_members_checkpoint_id_checkpoints"),
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_checkpoint_members_version_id_adapter_versions"),
        ),
        sa.PrimaryKeyConstraint("checkpoint_id", "position", name=op.f("pk_checkpoint_members")),
    )
    op.create_index(
        "ix_checkpoint_members_version_id", "checkpoint_members", ["version_id"], unique=False
    )
    op.create_table(
        "eval_scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("dataset", sa.String(length=200), nullable=True),
        sa.Column("split", sa.String(length=100), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_by", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_eval_scores_version_id_adapter_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_scores")),
    )
    op.create_index("ix_eval_scores_metric_value", "eval_scores", ["metric", "value"], unique=False)
    op.create_index(
        "ix_eval_scores_metric_version_id",
        "eval_scores",
        ["metric", "version_id", "value"],
        unique=False,
    )
    op.create_index(
        "ix_eval_scores_version_id", "eval_scores", ["version_id", "metric", "value"], unique=False
    )
    op.create_table(
        "lineage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("child_version_id", sa.Integer(), nullable=False),
        sa.Column("parent_version_id", sa.Integer(), nullable=False),
        sa.Column("relation", sa.String(length=32), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=True),
        sa.Column("weight", sa.Float(), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "relation IN ('combined-from', 'rescaled-from', 'extracted-from', 'derived-from')",
            name=op.f("ck_lineage_relation_known"),
        ),
        sa.ForeignKeyConstraint(
            ["child_version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_lineage_child_version_id_adapter_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["parent_version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_lineage_parent_version_id_adapter_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lineage")),
        sa.UniqueConstraint(
            "child_version_id",
            "parent_version_id",
            "relation",
            name=op.f("uq_lineage_child_version_id_parent_version_id_relation"),
        ),
    )
    op.create_index("ix_lineage_parent_version_id", "lineage", ["parent_version_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_lineage_parent_version_id", table_name="lineage")
    op.drop_table("lineage")
    op.drop_index("ix_eval_scores_version_id", table_name="eval_scores")
    op.drop_index("ix_eval_scores_metric_version_id", table_name="eval_scores")
    op.drop_index("ix_eval_scores_metric_value", table_name="eval_scores")
    op.drop_table("eval_scores")
    op.drop_index("ix_checkpoint_members_version_id", table_name="checkpoint_members")
    op.drop_table("checkpoint_members")
    op.drop_index("ix_checkpoints_fingerprint", table_name="checkpoints")
    op.drop_index("ix_checkpoints_created_at", table_name="checkpoints")
    op.drop_table("checkpoints")
