"""``POST /api/v1/check``: ``loradex check`` over HTTP, for CI jobs that hold no registry.

The route parses the body, calls the check use case (:func:`registry.checks.check_registered`)
and answers the report exactly as ``loradex check --json`` prints it. The report is the answer
whether or not the adapter passes (``passed``); only a request that cannot be checked (an
unknown reference, a blob not uploaded, a bad profile) is an error. Only what the registry holds
is read: references name registered entries, never folders of the server.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response

from mergetools.report import render_json
from registry.api.auth import Caller, ReadCaller
from registry.api.schemas import CheckIn
from registry.checks import check_registered

logger = logging.getLogger(__name__)

router = APIRouter(tags=["check"])

_NULLABLE_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}
_REPORT = {
    "description": "the report, as `loradex check --json` prints it (passed: the verdict)",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["passed", "strict", "ok", "ok_strict", "adapters", "counts", "findings"],
                "properties": {
                    "passed": {"type": "boolean"},
                    "strict": {"type": "boolean"},
                    "ok": {"type": "boolean"},
                    "ok_strict": {"type": "boolean"},
                    "base": _NULLABLE_STRING,
                    "base_fingerprint": _NULLABLE_STRING,
                    "serving": _NULLABLE_STRING,
                    "adapters": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string"},
                                "path": _NULLABLE_STRING,
                                "reference": _NULLABLE_STRING,
                                "fingerprint": _NULLABLE_STRING,
                            },
                        },
                    },
                    "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "findings": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["code", "severity", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "severity": {"enum": ["error", "warning", "info"]},
                                "adapter": _NULLABLE_STRING,
                                "module": _NULLABLE_STRING,
                                "message": {"type": "string"},
                            },
                        },
                    },
                },
            }
        }
    },
}


@router.post(
    "/check",
    summary="Check an adapter against a base (and a server), like `loradex check --json`",
    response_class=Response,
    responses={200: _REPORT},
)
def check(body: CheckIn, who: Caller = ReadCaller) -> Response:
    outcome = check_registered(
        who.registry,
        adapter=body.adapter,
        files=body.files,
        base=body.base,
        base_signature=body.signature,
        serving=body.serving,
        authorize=who.adapter,
    )
    return Response(render_json(outcome.report, strict=body.strict), media_type="application/json")
