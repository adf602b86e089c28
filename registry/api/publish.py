"""Publishing under ``/api/v1/adapters/{name}``: gated alias moves, alias policies, protection.

- ``POST /{name}/publish`` (scope ``publish``; ``write`` for a dry run): the gates of :func:`registry.publish.publish`
  (or, with ``rollback``, :func:`registry.publish.rollback`); 200 with the report when every
  gate passed (the alias moved, or would have with ``dry_run``), else 422 problem+json
  ``publish_refused`` carrying the same report. ``?format=text|junit|github`` renders it as
  ``loradex publish --format`` does. A protected alias without a policy needs an admin token.
- ``GET /{name}/aliases`` (``read``): every alias with its version, policy and last move.
- ``PUT|GET|DELETE /{name}/aliases/{alias}/policy``: the alias's gates (changing them: ``admin``).
- ``PUT|DELETE /{name}/aliases/{alias}/protect`` (``admin``): protect or unprotect.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from mergetools.errors import InvalidInputError
from registry import publish as use_case
from registry.api.auth import AdminCaller, Caller, ReadCaller, WriteCaller
from registry.api.encoding import sent_as_built
from registry.api.errors import PROBLEM_JSON, Problem
from registry.api.schemas import PolicyIn, PublishIn
from registry.inputs import NAME_RE, check_name, shown

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/adapters", tags=["publish"])

_MEDIA = {"text": "text/plain", "github": "text/plain", "junit": "application/xml"}


@router.post(
    "/{name}/publish",
    summary="Move an alias only when every gate passes (publish scope)",
    responses={
        422: {
            "content": {PROBLEM_JSON: {"schema": Problem.model_json_schema()}},
            "description": "publish_refused: a gate failed (its field report holds every gate)",
        }
    },
)
def publish(
    name: str,
    body: PublishIn,
    format: str = Query("json", pattern="^(text|json|junit|github)$"),
    who: Caller = WriteCaller,
) -> Response:
    who.adapter(check_name(name))
    if not body.dry_run:
        who.require("publish", name=name)  # a dry run moves nothing: write is enough
    if body.base is not None and not NAME_RE.match(body.base):
        # Never a folder of the server's, nor a download it would make on the caller's behalf.
        raise InvalidInputError(
            f"base {shown(body.base)}: over the API a base is a registered base model name, or "
            "a base signature document"
        )
    if body.rollback:
        if body.version is not None or body.require or body.no_regress:
            raise InvalidInputError(
                "a rollback names no version and runs the compatibility and serving gates only; "
                "drop version, require and no_regress"
            )
        report = use_case.rollback(
            who.registry,
            name,
            alias=body.alias,
            serving=body.serving,
            base=body.base,
            base_signature=body.base_signature,
            dry_run=body.dry_run,
        )
    else:
        if body.version is None:
            raise InvalidInputError("give the version to publish (a number, an alias or latest)")
        ref = name if body.version == "latest" else f"{name}@{body.version}"
        report = use_case.publish(
            who.registry,
            ref,
            alias=body.alias,
            require=body.require,
            no_regress=body.no_regress,
            serving=body.serving,
            base=body.base,
            base_signature=body.base_signature,
            dry_run=body.dry_run,
        )
    if format != "json":
        return PlainTextResponse(
            use_case.render(report, format),
            status_code=200 if report.passed else 422,
            media_type=_MEDIA[format],
        )
    if not report.passed:
        raise use_case.refused_error(report)
    return JSONResponse(report.to_dict())


@router.get("/{name}/aliases", summary="Every alias of an adapter: version, policy, last move")
@sent_as_built
def list_aliases(name: str, who: Caller = ReadCaller) -> list[dict[str, Any]]:
    return [row.to_dict() for row in who.registry.list_aliases(who.adapter(name))]


@router.put(
    "/{name}/aliases/{alias}/policy", summary="Set the gates every publish to an alias runs (admin)"
)
def set_policy(name: str, alias: str, body: PolicyIn, who: Caller = AdminCaller) -> dict[str, Any]:
    return who.registry.set_alias_policy(
        who.adapter(name),
        alias,
        require=body.require,
        no_regress=body.no_regress,
        serving=body.serving,
    ).to_dict()


@router.get("/{name}/aliases/{alias}/policy", summary="The gates of an alias")
@sent_as_built
def get_policy(name: str, alias: str, who: Caller = ReadCaller) -> dict[str, Any]:
    return who.registry.alias_policy(who.adapter(name), alias).to_dict()


@router.delete("/{name}/aliases/{alias}/policy", summary="Remove the policy of an alias (admin)")
def remove_policy(name: str, alias: str, who: Caller = AdminCaller) -> dict[str, Any]:
    return who.registry.remove_alias_policy(who.adapter(name), alias).to_dict()


@router.put(
    "/{name}/aliases/{alias}/protect", summary="Protect an alias: only admins move it (admin)"
)
def protect(name: str, alias: str, who: Caller = AdminCaller) -> dict[str, Any]:
    return who.registry.protect_alias(who.adapter(name), alias, protect=True).to_dict()


@router.delete("/{name}/aliases/{alias}/protect", summary="Lift the protection of an alias (admin)")
def unprotect(name: str, alias: str, who: Caller = AdminCaller) -> dict[str, Any]:
    return who.registry.protect_alias(who.adapter(name), alias, protect=False).to_dict()
