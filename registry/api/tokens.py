"""API tokens under ``/api/v1/tokens`` (admin): create, list, revoke — ``loradex token`` over HTTP.

Tokens govern the whole registry, so these routes need an admin token that no name prefix
limits; a prefixed admin token could otherwise mint an unprefixed one.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Path
from fastapi.responses import Response

from registry.api.auth import AdminCaller, Caller
from registry.api.encoding import json_response, sent_as_built
from registry.api.schemas import MAX_INTEGER, TokenIn
from registry.tokens import parse_duration

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.get("", summary="Every token, oldest first (never a secret)")
@sent_as_built
def list_tokens(who: Caller = AdminCaller) -> list[dict[str, Any]]:
    who.whole_registry("the token list")
    return [t.to_dict() for t in who.registry.list_tokens()]


@router.post(
    "",
    summary="Create a token; its secret is in this answer and nowhere else",
    status_code=201,
    response_model=dict[str, Any],
)
def create_token(body: TokenIn, who: Caller = AdminCaller) -> Response:
    who.whole_registry("creating a token")
    created = who.registry.create_token(
        scope=body.scope,
        name=body.name,
        prefix=body.prefix,
        expires_in=parse_duration(body.expires) if body.expires is not None else None,
    )
    return json_response(created.to_dict(), status_code=201)


@router.delete("/{token_id}", summary="Revoke a token (it stops working at once)")
@sent_as_built
def revoke_token(
    token_id: int = Path(ge=1, le=MAX_INTEGER), who: Caller = AdminCaller
) -> dict[str, Any]:
    who.whole_registry("revoking a token")
    return who.registry.revoke_token(token_id).to_dict()
