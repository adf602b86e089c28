"""``loradex db upgrade | current | check``: the registry schema."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy import Engine

from mergetools.errors import InvalidInputError
from registry.db import (
    SCHEMA_HEAD,
    SCHEMA_REVISIONS,
    check_schema,
    create_registry_engine,
    current_revision,
    safe_url,
)
from registry.settings import Settings

logger = logging.getLogger(__name__)


@contextmanager
def open_engine() -> Iterator[Engine]:
    """The registry engine for the environment's settings (built only here); disposed on exit."""
    settings = Settings()
    engine = create_registry_engine(
        settings.effective_database_url, busy_timeout_ms=settings.busy_timeout_ms
    )
    try:
        yield engine
    finally:
        engine.dispose()


@click.group("db")
def db() -> None:
    """The registry database schema (Alembic migrations)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    from alembic.util import CommandError

    from registry.schema import upgrade as run_upgrade

    with open_engine() as engine:
        before = current_revision(engine)
        if before is not None and before not in SCHEMA_REVISIONS:
            check_schema(engine, auto_upgrade=False)  # raises: newer than this loradex
        try:
            run_upgrade(engine, revision)
        except CommandError as exc:
            reason = " ".join(str(exc).split())
            raise InvalidInputError(
                f"cannot upgrade {safe_url(engine)} from {before or '(empty)'} to {revision!r}: "
                f"{reason} — expected head or one of {', '.join(SCHEMA_REVISIONS)} not older "
                "than the current revision"
            ) from None
        click.echo(f"{safe_url(engine)}: {before or '(empty)'} -> {current_revision(engine)}")


@db.command("current")
def current() -> None:
    """Print the database URL and its schema revision."""
    with open_engine() as engine:
        revision = current_revision(engine)
        state = "head" if revision == SCHEMA_HEAD else f"this loradex's head is {SCHEMA_HEAD}"
        click.echo(f"{safe_url(engine)}: {revision or '(empty)'} ({state})")


@db.command("check")
def check() -> None:
    """Exit 1 unless the schema is at head and matches the models exactly."""
    from registry.schema import schema_diff

    with open_engine() as engine:
        check_schema(engine, auto_upgrade=False)
        diff = schema_diff(engine)
    if diff:
        for item in diff:
            click.echo(f"drift: {item}", err=True)
        raise click.exceptions.Exit(1)
    click.echo(f"schema at {SCHEMA_HEAD}, no drift")
