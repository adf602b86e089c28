"""One error shape: ``application/problem+json`` (RFC 9457) for every failure.

The body has ``type``, ``title``, ``status``, ``detail``, a stable ``code`` and the error's
structured fields. HTTP statuses are chosen here, from the error's ``code`` (walking its class
hierarchy, so a subclass inherits its parent's status) and then its class; the core knows no
HTTP. An unexpected exception is logged and answered with a generic 500: no stack trace, no
message of ours or of a library ever reaches the client.
"""

from __future__ import annotations

import http
import logging
import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mergetools.errors import (
    ConflictError,
    IncompatibleError,
    InvalidInputError,
    LoradexError,
    NotFoundError,
    NumericalError,
)

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:loradex:problem:"

# Statuses by error code; looked up along the class hierarchy before STATUS_BY_CLASS.
STATUS_BY_CODE: dict[str, int] = {
    "digest_mismatch": 400,
    "bad_range": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "alias_moved": 409,
    "alias_has_policy": 409,
    "publish_refused": 422,
    "upload_too_large": 413,
    "range_not_satisfiable": 416,
    "blob_not_uploaded": 422,
    "blob_missing": 500,
    "corrupt_blob": 500,
    "registry_state": 503,
    "schema_version": 503,
    "database_unavailable": 503,
    "storage": 507,
    "hub_access": 403,
    "hub_unavailable": 503,
}
STATUS_BY_CLASS: tuple[tuple[type[BaseException], int], ...] = (
    (NotFoundError, 404),
    (ConflictError, 409),
    (InvalidInputError, 422),
    (IncompatibleError, 422),
    (NumericalError, 422),
    (PermissionError, 403),
)
_RESERVED = {"type", "title", "status", "detail", "code", "instance", "message"}


class Problem(BaseModel):
    """An error (RFC 9457 problem details); extra members carry the error's fields."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str


class ApiError(LoradexError):
    """An error only the HTTP layer raises (a bad header, an unsatisfiable range); each instance
    carries its own specific ``code``."""

    code = "http_request"

    def __init__(self, message: str, *, code: str, **fields: Any) -> None:
        super().__init__(message, fields=fields)
        self.code = code  # type: ignore[misc]


def status_for(exc: BaseException) -> int:
    """The HTTP status of a loradex error: by code along its classes, then by class."""
    for cls in type(exc).__mro__:
        code = cls.__dict__.get("code")
        if isinstance(code, str) and code in STATUS_BY_CODE:
            return STATUS_BY_CODE[code]
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in STATUS_BY_CODE:
        return STATUS_BY_CODE[code]
    for cls, status in STATUS_BY_CLASS:
        if isinstance(exc, cls):
            return status
    return 500


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


def error_fields(exc: BaseException) -> dict[str, Any]:
    """The structured fields of an error (:attr:`LoradexError.fields`), and its hint."""
    raw = exc.fields if isinstance(exc, LoradexError) else {}
    fields = {k: _jsonable(v) for k, v in raw.items() if k not in _RESERVED}
    hint = getattr(exc, "hint", None)
    if isinstance(hint, str) and hint:
        fields["hint"] = hint
    action = getattr(exc, "hint_action", None)
    if isinstance(action, str) and action:
        fields["hint_action"] = action
    return fields


def problem(
    status: int, *, code: str, detail: str, headers: Mapping[str, str] | None = None, **fields: Any
) -> JSONResponse:
    """A problem+json response."""
    body = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": http.HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }
    body.update({k: v for k, v in fields.items() if k not in body})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def loradex_problem(exc: LoradexError) -> JSONResponse:
    status = status_for(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status >= 500:
        logger.error("request failed with %s: %s", exc.code, exc)
    return problem(status, code=exc.code, detail=str(exc), headers=headers, **error_fields(exc))


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "upload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def install_error_handlers(app: FastAPI) -> None:
    """Render every error of ``app`` as problem+json."""

    async def on_loradex(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LoradexError)
        return loradex_problem(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        listed = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return problem(
            422, code="invalid_request", detail=f"the request is not valid: {listed}", errors=errors
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        code = _HTTP_CODES.get(status, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else http.HTTPStatus(status).phrase
        if status == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; see /api/v1/openapi.json"
        return problem(status, code=code, detail=detail, headers=exc.headers)

    app.add_exception_handler(LoradexError, on_loradex)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_middleware(CatchAllMiddleware)


class CatchAllMiddleware:
    """Answer any exception that escaped the routes with a generic 500 problem+json (and log it).

    When the response has already started (a download that failed mid-stream) nothing can be
    sent: the exception propagates and the server aborts the connection, so the client sees a
    short body, never a complete wrong one.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                logger.error(
                    "%s %s failed after the response started; aborting the connection: %s",
                    scope.get("method"), scope.get("path"), exc,
                )
                raise
            if isinstance(exc, LoradexError):
                response = loradex_problem(exc)
            else:
                logger.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
                response = problem(
                    500,
                    code="internal",
                    detail="the server failed to answer this request; the error was logged",
                )
            await response(scope, receive, send)
