"""Alembic, configured in code: ``script_location`` is the installed ``migrations`` package.

Works from an installed wheel as well as from a checkout (no ``alembic.ini`` needed).
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import migrations
from registry.models import Base

logger = logging.getLogger(__name__)


def _safe_url(engine: Engine) -> str:
    """The engine URL with any password hidden (as :func:`registry.db.safe_url`, which imports
    this module lazily to upgrade: no import back)."""
    return engine.url.render_as_string(hide_password=True)


def alembic_config(engine: Engine) -> Config:
    """An Alembic ``Config`` for ``engine``; env.py takes the engine from its attributes."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", _safe_url(engine).replace("%", "%%"))
    config.attributes["engine"] = engine
    return config


def script_revisions() -> list[str]:
    """The revisions of the migration history, oldest first."""
    script = ScriptDirectory.from_config(alembic_config_for_scripts())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def alembic_config_for_scripts() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (default: head) in one transaction."""
    logger.info("alembic upgrade %s on %s", revision, _safe_url(engine))
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the schema to ``revision`` (``base`` drops everything)."""
    logger.info("alembic downgrade %s on %s", revision, _safe_url(engine))
    command.downgrade(alembic_config(engine), revision)


def schema_diff(engine: Engine) -> list[object]:
    """Differences between the ORM models and the database (empty when in sync)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={"compare_type": True, "render_as_batch": engine.dialect.name == "sqlite"},
        )
        diff: list[object] = list(compare_metadata(context, Base.metadata))
        conn.rollback()
    return diff
