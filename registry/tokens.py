"""API tokens: create, list, revoke, authenticate (one transaction each).

A token's secret (``ldx_`` + 43 url-safe characters, 256 random bits) is shown once, when it is
created; the database keeps only its sha256, so a leaked database leaks no usable token. Scopes
are ordered (:data:`registry.models.TOKEN_SCOPES`): each one includes the ones before it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, bindparam, select

from mergetools.errors import InvalidInputError, NotFoundError
from registry.core import RegistryCore, journal
from registry.errors import AuthenticationError, PermissionDeniedError
from registry.inputs import NAME_RE
from registry.models import TOKEN_SCOPES, ApiToken, utcnow
from registry.records import _Record

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "ldx_"
_DURATION_RE = re.compile(r"^([0-9]+)([mhdw])\Z")
_DURATION_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_LIFETIME = dt.timedelta(days=3660)  # ten years: far enough, and a datetime cannot overflow
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,199}\Z")
# Every API request runs this lookup: built once (see registry/core.py). No cache in front of it,
# so that a revoked token stops working at once, in every server process.
_TOKENS = ApiToken.__table__
_TOKEN_BY_DIGEST = select(_TOKENS).where(_TOKENS.c.secret_sha256 == bindparam("digest"))


@dataclass(frozen=True)
class TokenRow(_Record):
    """A token as listed (never its secret)."""

    id: int
    name: str
    scope: str
    prefix: str | None
    created_at: dt.datetime
    created_by: str
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and not _expired(self.expires_at, utcnow())

    def allows(self, scope: str) -> bool:
        """True when this token's scope includes ``scope``."""
        return TOKEN_SCOPES.index(self.scope) >= TOKEN_SCOPES.index(scope)

    def covers(self, name: str) -> bool:
        """True when the token may act on the adapter ``name`` (its prefix allows it)."""
        return self.prefix is None or name.startswith(self.prefix)

    def require(self, scope: str, *, name: str | None = None) -> None:
        """Raise :class:`PermissionDeniedError` unless the token covers ``scope`` (and ``name``)."""
        if not self.allows(scope):
            raise PermissionDeniedError(
                f"token {self.id} ({self.name!r}) has scope {self.scope!r}; this needs "
                f"{scope!r} or above ({' < '.join(TOKEN_SCOPES)}) — create a token with that scope",
                scope=self.scope,
                needed=scope,
            )
        if name is not None and not self.covers(name):
            raise PermissionDeniedError(
                f"token {self.id} ({self.name!r}) is limited to adapter names starting with "
                f"{self.prefix!r}; {name!r} does not",
                scope=self.scope,
                needed=scope,
            )


@dataclass(frozen=True)
class CreatedToken(_Record):
    """A new token: its row, and the secret (shown this once, stored nowhere)."""

    token: TokenRow
    secret: str


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes: they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _expired(expires_at: dt.datetime | None, now: dt.datetime) -> bool:
    expires_at = _aware(expires_at)
    return expires_at is not None and expires_at <= now


def parse_duration(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` -> a timedelta (> 0)."""
    match = _DURATION_RE.match(text.strip()[:40])
    if not match or int(match.group(1)) == 0:
        raise InvalidInputError(
            f"token lifetime {text!r} is not a duration; expected a positive number and a unit "
            "m (minutes), h (hours), d (days) or w (weeks), e.g. 30d"
        )
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds > MAX_LIFETIME.total_seconds():
        raise InvalidInputError(
            f"token lifetime {text!r} is longer than {MAX_LIFETIME.days} days; give a shorter one "
            "or none (a token without a lifetime lasts until it is revoked)"
        )
    return dt.timedelta(seconds=seconds)


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _row(token: ApiToken | Row[Any]) -> TokenRow:
    return TokenRow(
        id=token.id,
        name=token.name,
        scope=token.scope,
        prefix=token.prefix,
        created_at=_aware(token.created_at) or token.created_at,
        created_by=token.created_by,
        expires_at=_aware(token.expires_at),
        revoked_at=_aware(token.revoked_at),
    )


class TokensMixin(RegistryCore):
    """Use cases over API tokens."""

    def create_token(
        self,
        *,
        scope: str,
        name: str | None = None,
        prefix: str | None = None,
        expires_in: dt.timedelta | None = None,
        actor: str | None = None,
    ) -> CreatedToken:
        """Create a token; its secret is in the result and nowhere else.

        ``name`` (default: the actor creating it) is recorded as the actor of every change
        the token makes.
        """
        actor = self._actor(actor)
        if scope not in TOKEN_SCOPES:
            raise InvalidInputError(
                f"token scope {scope!r} is not one of {', '.join(TOKEN_SCOPES)}"
            )
        label = actor if name is None else name
        if not NAME_RE.match(label):
            raise InvalidInputError(
                f"token name {label!r} is not valid; expected 1-200 characters from letters, "
                "digits, '.', '_' and '-', starting with a letter or digit (e.g. ci-publisher)"
            )
        if prefix is not None and not _PREFIX_RE.match(prefix):
            raise InvalidInputError(
                f"token prefix {prefix!r} is not the start of an adapter name; expected letters, "
                "digits, '.', '_' and '-', starting with a letter or digit (e.g. support-)"
            )
        if expires_in is not None and not dt.timedelta(0) < expires_in <= MAX_LIFETIME:
            raise InvalidInputError(
                f"token lifetime {expires_in} is not positive and at most {MAX_LIFETIME.days} days"
            )
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        with self._write() as session:
            token = ApiToken(
                name=label,
                secret_sha256=secret_sha256(secret),
                scope=scope,
                prefix=prefix,
                created_at=now,
                created_by=actor,
                expires_at=now + expires_in if expires_in is not None else None,
            )
            session.add(token)
            session.flush()
            journal(
                session,
                actor=actor,
                kind="token.created",
                subject=f"token {token.id}",
                payload={"id": token.id, "name": label, "scope": scope, "prefix": prefix},
            )
            row = _row(token)
        logger.info("created token %d (%s, scope %s)", row.id, label, scope)
        return CreatedToken(token=row, secret=secret)

    def list_tokens(self) -> list[TokenRow]:
        """Every token, oldest first (revoked and expired ones included)."""
        with self._read() as session:
            return [_row(t) for t in session.scalars(select(ApiToken).order_by(ApiToken.id))]

    def revoke_token(self, token_id: int, *, actor: str | None = None) -> TokenRow:
        """Revoke a token (it stops working at once); revoking it again changes nothing."""
        actor = self._actor(actor)
        now = utcnow()
        with self._write() as session:
            token = session.get(ApiToken, token_id, with_for_update=True)
            if token is None:
                raise NotFoundError(
                    f"there is no API token {token_id}",
                    fields={"token": token_id},
                    hint_action="token_list",
                )
            if token.revoked_at is None:
                token.revoked_at, token.revoked_by = now, actor
                session.flush()
                journal(
                    session,
                    actor=actor,
                    kind="token.revoked",
                    subject=f"token {token.id}",
                    payload={"id": token.id, "name": token.name},
                )
            return _row(token)

    def authenticate(self, secret: str) -> TokenRow:
        """The active token whose secret is ``secret``; else :class:`AuthenticationError`."""
        digest = secret_sha256(secret)
        # A Core query on a plain connection: the ORM session would double the lookup's cost.
        with self.read_engine.connect() as conn:
            token = conn.execute(_TOKEN_BY_DIGEST, {"digest": digest}).one_or_none()
        # The lookup is by digest, never by the secret; compare in constant time anyway.
        if token is None or not hmac.compare_digest(token.secret_sha256, digest):
            raise AuthenticationError("the bearer token is not a token of this registry")
        row = _row(token)
        if row.revoked_at is not None:
            raise AuthenticationError(f"token {row.id} ({row.name!r}) was revoked")
        if _expired(row.expires_at, utcnow()):
            raise AuthenticationError(
                f"token {row.id} ({row.name!r}) expired at {row.expires_at:%Y-%m-%d %H:%M} UTC"
            )
        return row
