"""The FastAPI application, built by :func:`create_app` (never at import time)."""

from __future__ import annotations

import gc
import importlib
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import APIRouter, FastAPI

from registry.api import adapters, blobs, catalog, checkpoints, checks, publish, tokens
from registry.api.errors import PROBLEM_JSON, Problem, install_error_handlers
from registry.service import Registry
from registry.settings import Settings

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
SWITCH_INTERVAL_S = 0.0005
ROUTERS: tuple[APIRouter, ...] = (
    blobs.router,
    adapters.router,
    publish.router,
    catalog.router,
    checkpoints.router,
    checks.router,
    tokens.router,
)

_PROBLEM = {"content": {PROBLEM_JSON: {"schema": Problem.model_json_schema()}}}
PROBLEM_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {**_PROBLEM, "description": description}
    for status, description in (
        (400, "bad request (e.g. digest_mismatch)"),
        (401, "no token, or an unknown, revoked or expired one"),
        (403, "the token's scope or name prefix does not cover this"),
        (404, "not found"),
        (408, "upload_stalled: the body stopped coming (LORADEX_UPLOAD_IDLE_TIMEOUT)"),
        (409, "conflict (e.g. alias_moved)"),
        (413, "upload too large"),
        (422, "invalid request or refused input"),
        (500, "server error (generic detail; logged)"),
    )
}


def create_app(settings: Settings, *, registry: Registry | None = None) -> FastAPI:
    """The API over the registry ``settings`` name (or over ``registry``, which the caller then
    owns and closes)."""
    owned = registry is None
    reg = registry if registry is not None else Registry(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Requests run in a few threads, each with its own pooled connection: more threads than
        # cores only contend for the interpreter and open connections the pool cannot keep.
        anyio.to_thread.current_default_thread_limiter().total_tokens = (
            reg.settings.server_threads
        )
        try:
            yield
        finally:
            if owned:
                reg.close()

    app = FastAPI(
        title="loradex registry",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        responses=PROBLEM_RESPONSES,
        lifespan=lifespan,
    )
    app.state.registry = reg
    api = APIRouter(prefix=API_PREFIX)
    for router in ROUTERS:
        api.include_router(router)
    app.include_router(api)
    install_error_handlers(app)
    return app


def app_from_environment() -> FastAPI:
    """``create_app`` over the settings of the ``LORADEX_`` environment (for ``loradex serve``,
    which hands uvicorn this factory so that every worker builds its own).

    The worker process also hands the interpreter lock over more often (every 0.5 ms instead
    of 5): a request thread that waited on the database otherwise waits up to 5 ms for the lock
    after each query whenever another thread computes (a register hashing and checking
    files), which multiplied read latency under a write stream. And the objects of start-up
    (FastAPI's routes and models, SQLAlchemy's mappers: most of the heap) are frozen out of the
    garbage collector's reach, so that its full collections, which ran in the middle of
    requests, walk only what requests allocate. The first register does not pay for imports
    either."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app = create_app(Settings())
    # What a register imports on first use (the tensor scan), imported before the first request.
    importlib.import_module("numpy")
    gc.collect()
    gc.freeze()
    return app
