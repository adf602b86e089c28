"""Version scores: each version's best score per metric, backfilled from eval_scores

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None

# The default direction rule of registry.metrics as of this revision (migrations never import
# the application): lower is better when a word of the lower-cased name is one of these.
_LOWER_IS_BETTER_WORDS = frozenset(
    [
        "loss",
        "nll",
        "perplexity",
        "ppl",
        "bpc",
        "bpb",
        "error",
        "err",
        "wer",
        "cer",
        "ter",
        "mer",
        "eer",
        "mae",
        "mse",
        "rmse",
        "msle",
        "rmsle",
        "mape",
        "smape",
    ]
)
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")


def _default_direction(metric: str) -> str:
    words = _WORD_SPLIT.split(metric.lower())
    return "lower" if _LOWER_IS_BETTER_WORDS.intersection(words) else "higher"


def upgrade() -> None:
    op.create_table(
        "version_scores",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name=op.f("fk_version_scores_version_id_adapter_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "metric", name=op.f("pk_version_scores")),
    )
    op.create_index(
        "ix_version_scores_metric_value",
        "version_scores",
        ["metric", "value", "version_id"],
        unique=False,
    )
    # Backfill: the best value per (version, metric) by the metric's direction (declared, else
    # the default rule), one INSERT ... SELECT per direction.
    conn = op.get_bind()
    declared = dict(conn.execute(sa.text("SELECT metric, direction FROM metric_directions")).all())
    metrics = [row[0] for row in conn.execute(sa.text("SELECT DISTINCT metric FROM eval_scores"))]
    by_direction: dict[str, list[str]] = {"higher": [], "lower": []}
    for metric in metrics:
        by_direction[declared.get(metric) or _default_direction(metric)].append(metric)
    for direction, names in by_direction.items():
        if not names:
            continue
        aggregate = "MIN" if direction == "lower" else "MAX"
        conn.execute(
            sa.text(
                "INSERT INTO version_scores (version_id, metric, value) "
                f"SELECT version_id, metric, {aggregate}(value) FROM eval_scores "
                "WHERE metric IN :names GROUP BY version_id, metric"
            ).bindparams(sa.bindparam("names", expanding=True)),
            {"names": names},
        )


def downgrade() -> None:
    op.drop_index("ix_version_scores_metric_value", table_name="version_scores")
    op.drop_table("version_scores")
