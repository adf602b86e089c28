"""Alembic environment: takes the engine from ``config.attributes`` (see ``registry.schema``)."""

from __future__ import annotations

import logging

from alembic import context
from sqlalchemy import create_engine

logger = logging.getLogger(__name__)

config = context.config


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:  # plain `alembic` command line against sqlalchemy.url
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=None,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            transaction_per_migration=False,
        )
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run `loradex db upgrade`")
run_migrations_online()
