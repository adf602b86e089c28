"""How the API's JSON answers are encoded.

A route returns the record a use case built (``to_dict()``: plain dicts, lists, strings,
numbers). FastAPI would validate that value against the route's return annotation before
encoding it, in a worker thread of its own for a sync route: a second thread hop per request,
about a quarter of a version record's cost. :func:`sent_as_built` encodes the value as it is; the
annotation still documents the answer in the OpenAPI document.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec

import pydantic_core
from fastapi import Response

P = ParamSpec("P")

JSON = "application/json"


def json_response(content: Any, *, status_code: int = 200) -> Response:
    """``content`` as a JSON answer (a NaN or infinity, which JSON cannot hold, becomes null)."""
    return Response(
        pydantic_core.to_json(content, inf_nan_mode="null"),
        status_code=status_code,
        media_type=JSON,
    )


def sent_as_built(endpoint: Callable[P, Any]) -> Callable[P, Response]:
    """Decorate a route that answers 200: its return value is sent as JSON as it is."""

    @functools.wraps(endpoint)
    def route(*args: P.args, **kwargs: P.kwargs) -> Response:
        return json_response(endpoint(*args, **kwargs))

    return route
