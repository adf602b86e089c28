"""Initial registry schema: bases, adapters, versions, files, tags, aliases, journal

Revision ID: 0001
Revises: None
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.CheckConstraint("last_version >= 0", name=op.f("ck_adapters_last_version_nonnegative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapters")),
        sa.UniqueConstraint("name", name=op.f("uq_adapters_name")),
    )
    op.create_table(
        "base_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("architectures", sa.JSON(), nullable=False),
        sa.Column("signature", sa.JSON(), nullable=True),
        sa.Column("source_path", sa.Text(), nullable=True),
        sa.Column("source_repo", sa.String(length=300), nullable=True),
        sa.Column("source_revision", sa.String(length=100), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_base_models")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_base_models_fingerprint")),
        sa.UniqueConstraint("name", name=op.f("uq_base_models_name")),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("version_id", sa.Integer(), nullable=True),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_adapter_id", "events", ["adapter_id", "id"], unique=False)
    op.create_index("ix_events_kind", "events", ["kind", "id"], unique=False)
    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("content_sha256", sa.String(length=64), nullable=True),
        sa.Column("weights_sha256", sa.String(length=64), nullable=False),
        sa.Column("weights_path", sa.String(length=500), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=True),
        sa.Column("base_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("base_name_or_path", sa.Text(), nullable=True),
        sa.Column("max_rank", sa.Integer(), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("use_dora", sa.Boolean(), nullable=False),
        sa.Column("use_rslora", sa.Boolean(), nullable=False),
        sa.Column("dtype", sa.String(length=32), nullable=False),
        sa.Column("param_count", sa.BigInteger(), nullable=False),
        sa.Column("nbytes", sa.BigInteger(), nullable=False),
        sa.Column("adapter_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("target_modules", sa.JSON(), nullable=False),
        sa.Column("ranks", sa.JSON(), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.CheckConstraint(
            "status IN ('ready', 'yanked', 'deleted')",
            name=op.f("ck_adapter_versions_status_known"),
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_adapter_versions_version_positive")),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapters.id"], name=op.f("fk_adapter_versions_adapter_id_adapters")
        ),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
            name=op.f("fk_adapter_versions_base_model_id_base_models"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapter_versions")),
        sa.UniqueConstraint(
            "adapter_id",
            "content_sha256",
            name=op.f("uq_adapter_versions_adapter_id_content_sha256"),
        ),
        sa.UniqueConstraint(
            "adapter_id", "version", name=op.f("uq_adapter_versions_adapter_id_version")
        ),
    )
    op.create_index(
        "ix_adapter_versions_adapter_fingerprint",
        "adapter_versions",
        ["adapter_fingerprint"],
        unique=False,
    )
    op.create_index(
        "ix_adapter_versions_base_fingerprint",
        "adapter_versions",
        ["base_fingerprint"],
        unique=False,
    )
    op.create_index(
        "ix_adapter_versions_base_model_id", "adapter_versions", ["base_model_id"], unique=False
    )
    op.create_index(
        "ix_adapter_versions_created_at", "adapter_versions", ["created_at"], unique=False
    )
    op.create_index("ix_adapter_versions_max_rank", "adapter_versions", ["max_rank"], unique=False)
    op.create_index(
        "ix_adapter_versions_status_adapter_id",
        "adapter_versions",
        ["status", "adapter_id", "version"],
        unique=False,
    )
    op.create_index(
        "ix_adapter_versions_weights_sha256", "adapter_versions", ["weights_sha256"], unique=False
    )
    op.create_table(
        "alias_moves",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=100), nullable=False),
        sa.Column("from_version_id", sa.Integer(), nullable=True),
        sa.Column("to_version_id", sa.Integer(), nullable=True),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("moved_by", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapters.id"], name=op.f("fk_alias_moves_adapter_id_adapters")
        ),
        sa.ForeignKeyConstraint(
            ["from_version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_alias_moves_from_version_id_adapter_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["to_version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_alias_moves_to_version_id_adapter_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_moves")),
    )
    op.create_index(
        "ix_alias_moves_adapter_id_alias",
        "alias_moves",
        ["adapter_id", "alias", "id"],
        unique=False,
    )
    op.create_table(
        "aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.CheckConstraint("name <> 'latest'", name=op.f("ck_aliases_name_not_reserved")),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapters.id"], name=op.f("fk_aliases_adapter_id_adapters")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_aliases_version_id_adapter_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aliases")),
        sa.UniqueConstraint("adapter_id", "name", name=op.f("uq_aliases_adapter_id_name")),
    )
    op.create_index("ix_aliases_version_id", "aliases", ["version_id"], unique=False)
    op.create_table(
        "tags",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("value", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_tags_version_id_adapter_versions"),
        ),
        sa.PrimaryKeyConstraint("version_id", "key", name=op.f("pk_tags")),
    )
    op.create_index("ix_tags_key_value", "tags", ["key", "value", "version_id"], unique=False)
    op.create_table(
        "version_files",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("size >= 0", name=op.f("ck_version_files_size_nonnegative")),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_version_files_version_id_adapter_versions"),
        ),
        sa.PrimaryKeyConstraint("version_id", "path", name=op.f("pk_version_files")),
    )
    op.create_index("ix_version_files_sha256", "version_files", ["sha256"], unique=False)
    op.create_table(
        "version_modules",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("module", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_version_modules_version_id_adapter_versions"),
        ),
        sa.PrimaryKeyConstraint("version_id", "module", name=op.f("pk_version_modules")),
    )
    op.create_index(
        "ix_version_modules_module", "version_modules", ["module", "version_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_version_modules_module", table_name="version_modules")
    op.drop_table("version_modules")
    op.drop_index("ix_version_files_sha256", table_name="version_files")
    op.drop_table("version_files")
    op.drop_index("ix_tags_key_value", table_name="tags")
    op.drop_table("tags")
    op.drop_index("ix_aliases_version_id", table_name="aliases")
    op.drop_table("aliases")
    op.drop_index("ix_alias_moves_adapter_id_alias", table_name="alias_moves")
    op.drop_table("alias_moves")
    op.drop_index("ix_adapter_versions_weights_sha256", table_name="adapter_versions")
    op.drop_index("ix_adapter_versions_status_adapter_id", table_name="adapter_versions")
    op.drop_index("ix_adapter_versions_max_rank", table_name="adapter_versions")
    op.drop_index("ix_adapter_versions_created_at", table_name="adapter_versions")
    op.drop_index("ix_adapter_versions_base_model_id", table_name="adapter_versions")
    op.drop_index("ix_adapter_versions_base_fingerprint", table_name="adapter_versions")
    op.drop_index("ix_adapter_versions_adapter_fingerprint", table_name="adapter_versions")
    op.drop_table("adapter_versions")
    op.drop_index("ix_events_kind", table_name="events")
    op.drop_index("ix_events_adapter_id", table_name="events")
    op.drop_table("events")
    op.drop_table("base_models")
    op.drop_table("adapters")
