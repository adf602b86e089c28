"""Adapter names unique regardless of case

Revision ID: 0004
Revises: 0002

``Support`` and ``support`` are one name to the people who type them: a unique index on
``lower(name)`` makes the database refuse the second. Names that already collide are listed,
with what to do, instead of failing on an IntegrityError halfway through.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mergetools.errors import ConflictError

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

INDEX = "uq_adapters_name_casefold"


def colliding_names(connection: sa.Connection) -> list[list[str]]:
    """Groups of adapter names equal but for case, each sorted; groups sorted."""
    rows = connection.execute(
        sa.text(
            "SELECT name FROM adapters WHERE lower(name) IN ("
            " SELECT lower(name) FROM adapters GROUP BY lower(name) HAVING count(*) > 1"
            ") ORDER BY lower(name), name"
        )
    ).scalars()
    groups: dict[str, list[str]] = {}
    for name in rows:
        groups.setdefault(name.lower(), []).append(name)
    return list(groups.values())


def upgrade() -> None:
    groups = colliding_names(op.get_bind())
    if groups:
        listed = "; ".join(" and ".join(repr(n) for n in group) for group in groups[:20])
        more = f" (and {len(groups) - 20} more groups)" if len(groups) > 20 else ""
        raise ConflictError(
            f"cannot make adapter names unique regardless of case: {listed}{more} differ only "
            "in case; rename all but one of each group in the database (UPDATE adapters SET "
            "name = 'NEW' WHERE name = 'OLD'), then upgrade again"
        )
    op.create_index(INDEX, "adapters", [sa.text("lower(name)")], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="adapters")
