"""``loradex db upgrade | current | check``: the registry schema."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy import Engine

from cli.main import CliState, pass_state
from cli.render import echo_json, json_option
from mergetools.errors import InvalidInputError
from registry.db import (
    SCHEMA_HEAD,
    SCHEMA_REVISIONS,
    check_schema,
    create_registry_engine,
    current_revision,
    safe_url,
)

logger = logging.getLogger(__name__)


@contextmanager
def open_engine(state: CliState) -> Iterator[Engine]:
    """The registry engine for the root group's settings; disposed on exit."""
    state.require_local("loradex db")
    settings = state.settings
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
@json_option
@pass_state
def upgrade(state: CliState, revision: str, as_json: bool) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    from alembic.util import CommandError

    from registry.schema import upgrade as run_upgrade

    with open_engine(state) as engine:
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
        after = current_revision(engine)
        if as_json:
            echo_json({"database": safe_url(engine), "from_revision": before, "revision": after})
            return
        click.echo(f"{safe_url(engine)}: {before or '(empty)'} -> {after}")


@db.command("current")
@json_option
@pass_state
def current(state: CliState, as_json: bool) -> None:
    """Print the database URL and its schema revision."""
    with open_engine(state) as engine:
        revision = current_revision(engine)
        url = safe_url(engine)
    if as_json:
        echo_json(
            {"database": url, "revision": revision, "head": SCHEMA_HEAD, "at_head": revision == SCHEMA_HEAD}
        )
        return
    where = "head" if revision == SCHEMA_HEAD else f"this loradex's head is {SCHEMA_HEAD}"
    click.echo(f"{url}: {revision or '(empty)'} ({where})")


@db.command("check")
@json_option
@pass_state
def check(state: CliState, as_json: bool) -> None:
    """Exit 1 unless the schema is at head and matches the models exactly."""
    from registry.schema import schema_diff

    with open_engine(state) as engine:
        check_schema(engine, auto_upgrade=False)
        diff = schema_diff(engine)
        url = safe_url(engine)
    if as_json:
        echo_json(
            {"database": url, "revision": SCHEMA_HEAD, "ok": not diff, "drift": [str(d) for d in diff]}
        )
        if diff:
            raise click.exceptions.Exit(1)
        return
    if diff:
        for item in diff:
            click.echo(f"drift: {item}", err=True)
        raise click.exceptions.Exit(1)
    click.echo(f"schema at {SCHEMA_HEAD}, no drift")
