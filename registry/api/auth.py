"""Bearer-token authentication and scope checks of the HTTP API.

Every route names the scope it needs (``read`` for GETs, ``write``, ``publish``, ``admin``);
:func:`caller` authenticates the request's ``Authorization: Bearer`` token through the
registry's use case and hands the route a :class:`Caller`: the token and a view of the registry
that records the token's name as the actor of every change. Without a token only GETs pass, and
only when ``LORADEX_ANONYMOUS_READ=1``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from registry.errors import AuthenticationError, PermissionDeniedError
from registry.service import Registry
from registry.tokens import TokenRow

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
bearer = HTTPBearer(auto_error=False, description="A token from `loradex token create`.")


@dataclass(frozen=True)
class Caller:
    """Who is calling: their token (None when anonymous) and the registry acting as them."""

    token: TokenRow | None
    registry: Registry
    scope: str

    def adapter(self, name: str) -> str:
        """``name``, if the token's prefix covers it (else 403)."""
        if self.token is not None:
            self.token.require(self.scope, name=name)
        return name

    @property
    def prefix(self) -> str | None:
        return self.token.prefix if self.token is not None else None

    def whole_registry(self, what: str) -> None:
        """Refuse (403) a token limited to a name prefix: ``what`` covers every adapter."""
        if self.token is not None and self.token.prefix is not None:
            raise PermissionDeniedError(
                f"token {self.token.id} is limited to adapter names starting with "
                f"{self.token.prefix!r}; {what} covers every adapter",
                scope=self.token.scope,
                needed=self.scope,
            )

    def require(self, scope: str, *, name: str | None = None) -> None:
        """Check a further scope (a route whose need depends on the request)."""
        if self.token is None:
            raise AuthenticationError("this request needs a bearer token (Authorization: Bearer ...)")
        self.token.require(scope, name=name)


def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def caller(scope: str) -> Callable[..., Caller]:
    """A dependency that authenticates the request and checks it has ``scope``."""

    def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> Caller:
        registry = get_registry(request)
        header = request.headers.get("authorization")
        if credentials is None or credentials.scheme.lower() != "bearer":
            if header:
                raise AuthenticationError(
                    "the Authorization header is not 'Bearer TOKEN'; send the token from "
                    "`loradex token create` as Authorization: Bearer TOKEN"
                )
            if scope == "read" and registry.settings.anonymous_read:
                return Caller(
                    token=None,
                    registry=registry.as_actor(ANONYMOUS).with_rights(admin=False),
                    scope=scope,
                )
            raise AuthenticationError(
                "this request needs a bearer token (Authorization: Bearer TOKEN); create one "
                "with `loradex token create`"
            )
        token = registry.authenticate(credentials.credentials)
        if not token.allows(scope):
            token.require(scope)  # raises, naming the scopes
            raise PermissionDeniedError("forbidden")  # not reached
        # Admin rights (protected aliases, policies) only for an admin token.
        view = registry.as_actor(token.name).with_rights(admin=token.allows("admin"))
        return Caller(token=token, registry=view, scope=scope)

    return dependency


ReadCaller = Depends(caller("read"))
WriteCaller = Depends(caller("write"))
AdminCaller = Depends(caller("admin"))
