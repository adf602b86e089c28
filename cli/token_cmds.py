"""``loradex token create|list|revoke``: bearer tokens of the HTTP API (``loradex serve``)."""

from __future__ import annotations

import logging

import click

from cli.main import CliState, pass_state
from cli.render import echo_json, echo_table, json_option, short_time
from registry.models import TOKEN_SCOPES
from registry.tokens import TokenRow, parse_duration

logger = logging.getLogger(__name__)


@click.group("token")
def token() -> None:
    """Bearer tokens of the HTTP API (scopes: read < write < publish < admin)."""


def _state(row: TokenRow) -> str:
    if row.revoked_at is not None:
        return "revoked"
    return "active" if row.active else "expired"


@token.command("create")
@click.option(
    "--scope", required=True, type=click.Choice(TOKEN_SCOPES), help="What the token may do."
)
@click.option(
    "--prefix", metavar="NAME-PREFIX", help="Limit it to adapter names starting with this."
)
@click.option("--expires", metavar="DURATION", help="Lifetime, e.g. 30d, 12h, 2w (default: never).")
@click.option(
    "--name", "label", metavar="LABEL", help="Recorded as the actor of its changes (default: you)."
)
@json_option
@pass_state
def token_create(
    state: CliState,
    scope: str,
    prefix: str | None,
    expires: str | None,
    label: str | None,
    as_json: bool,
) -> None:
    """Create a token; its secret is printed this once and stored only as a hash."""
    lifetime = parse_duration(expires) if expires is not None else None
    with state.open_registry() as registry:
        created = registry.create_token(scope=scope, name=label, prefix=prefix, expires_in=lifetime)
    if as_json:
        echo_json({**created.token.to_dict(), "secret": created.secret})
        return
    row = created.token
    limits = f", names starting with {row.prefix!r}" if row.prefix else ""
    until = f", expires {short_time(row.to_dict()['expires_at'])} UTC" if row.expires_at else ""
    click.echo(f"token {row.id} ({row.name}, scope {row.scope}{limits}{until}):")
    click.echo(created.secret)
    click.echo(
        "store it now: it is not shown again (send it as Authorization: Bearer ...)", err=True
    )


@token.command("list")
@json_option
@pass_state
def token_list(state: CliState, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    with state.open_registry() as registry:
        rows = registry.list_tokens()
    if as_json:
        echo_json([{**r.to_dict(), "state": _state(r)} for r in rows])
        return
    echo_table(
        ["id", "name", "scope", "prefix", "state", "created", "expires"],
        [
            [
                str(r.id),
                r.name,
                r.scope,
                r.prefix or "",
                _state(r),
                short_time(r.to_dict()["created_at"]),
                short_time(r.to_dict()["expires_at"]),
            ]
            for r in rows
        ],
    )


@token.command("revoke")
@click.argument("token_id", metavar="ID", type=int)
@json_option
@pass_state
def token_revoke(state: CliState, token_id: int, as_json: bool) -> None:
    """Revoke token ID; it stops working at once."""
    with state.open_registry() as registry:
        row = registry.revoke_token(token_id)
    if as_json:
        echo_json({**row.to_dict(), "state": _state(row)})
        return
    click.echo(f"revoked token {row.id} ({row.name})")
