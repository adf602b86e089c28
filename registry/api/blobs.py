"""Content-addressed uploads, like an OCI registry: ``HEAD`` / ``PUT /api/v1/blobs/{sha256}``.

The body of a PUT is the file's raw bytes. It is streamed to a temp file in the blob store
(never held in memory), hashed as it arrives and stored under its name only when the digest
matches. A declared ``Content-Length`` above ``LORADEX_MAX_UPLOAD_BYTES`` is refused (413)
before any byte of the body is read; a body without one is cut off at the limit. A body that
brings less than :data:`MIN_PROGRESS_BYTES` in ``LORADEX_UPLOAD_IDLE_TIMEOUT`` seconds (a stalled
or trickling client holding a connection open) is cut off with 408 ``upload_stalled``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from mergetools.errors import NotFoundError
from registry.api.auth import Caller, ReadCaller, WriteCaller
from registry.api.errors import ApiError
from registry.blobstore import check_sha256
from registry.errors import UploadTooLargeError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/blobs", tags=["blobs"])

_WRITE_BATCH = 1 << 20  # bytes gathered before one write in the thread pool
MIN_PROGRESS_BYTES = 1024
"""The least an upload's body must bring per ``LORADEX_UPLOAD_IDLE_TIMEOUT`` seconds."""

_BINARY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.head(
    "/{sha256}",
    summary="Whether a blob is stored",
    responses={200: {"description": "stored; Content-Length is its size"}},
)
def head_blob(sha256: str, who: Caller = ReadCaller) -> Response:
    check_sha256(sha256)
    size = who.registry.blobs.size_of(sha256)
    if size is None:
        raise NotFoundError(f"blob {sha256} is not stored; upload it with PUT /api/v1/blobs/{sha256}")
    return Response(
        status_code=200,
        headers={"Content-Length": str(size), "ETag": f'"{sha256}"'},
        media_type="application/octet-stream",
    )


def _declared_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ApiError(
            f"Content-Length {raw!r} is not a number of bytes", code="bad_request_header"
        )
    return value


async def body_chunks(request: Request, *, idle_timeout_s: float) -> AsyncIterator[bytes]:
    """The request body's chunks as they arrive; raises 408 ``upload_stalled`` when a span of
    ``idle_timeout_s`` seconds brings fewer than :data:`MIN_PROGRESS_BYTES` (none, or a trickle).

    One receive is awaited at a time and never cancelled while the span still has time, so no
    message is lost between spans.
    """
    loop = asyncio.get_running_loop()
    span_end = loop.time() + idle_timeout_s
    span_bytes = 0
    pending: asyncio.Future[dict[str, object]] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(request.receive())  # type: ignore[arg-type]
            done, _ = await asyncio.wait({pending}, timeout=max(0.0, span_end - loop.time()))
            if not done:
                if span_bytes < MIN_PROGRESS_BYTES:
                    raise ApiError(
                        f"the upload brought {span_bytes} bytes in {idle_timeout_s:g} s, less than "
                        f"{MIN_PROGRESS_BYTES}; it was cut off and nothing was stored "
                        "(LORADEX_UPLOAD_IDLE_TIMEOUT)",
                        code="upload_stalled",
                        idle_timeout_s=idle_timeout_s,
                        received_bytes=span_bytes,
                    )
                span_end, span_bytes = loop.time() + idle_timeout_s, 0
                continue
            message = pending.result()
            pending = None
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            body = message.get("body", b"")
            if isinstance(body, bytes) and body:
                span_bytes += len(body)
                yield body
            if not message.get("more_body", False):
                return
            if loop.time() >= span_end:
                if span_bytes < MIN_PROGRESS_BYTES:
                    continue  # the check above answers at the next wait (timeout 0)
                span_end, span_bytes = loop.time() + idle_timeout_s, 0
    finally:
        if pending is not None:
            pending.cancel()


@router.put(
    "/{sha256}",
    summary="Upload a blob (the body is its raw bytes)",
    status_code=201,
    responses={200: {"description": "already stored"}, 201: {"description": "stored"}},
    openapi_extra=_BINARY_BODY,
)
async def put_blob(sha256: str, request: Request, who: Caller = WriteCaller) -> JSONResponse:
    check_sha256(sha256)
    limit = who.registry.settings.max_upload_bytes
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise UploadTooLargeError(
            f"upload of blob {sha256} declares {declared} bytes, more than the {limit} bytes the "
            "registry accepts (LORADEX_MAX_UPLOAD_BYTES); nothing was read or stored",
            max_bytes=limit,
            size=declared,
        )
    writer = await run_in_threadpool(
        who.registry.blobs.open_writer, expected_sha256=sha256, max_bytes=limit
    )
    try:
        pending: list[bytes] = []
        pending_size = 0
        idle = who.registry.settings.upload_idle_timeout_s
        async for chunk in body_chunks(request, idle_timeout_s=idle):
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= _WRITE_BATCH:
                await run_in_threadpool(writer.write, b"".join(pending))
                pending, pending_size = [], 0
        if pending:
            await run_in_threadpool(writer.write, b"".join(pending))
        stored = await run_in_threadpool(writer.commit)
    finally:
        writer.abort()  # a no-op after commit; removes the temp file otherwise
    logger.info("blob %s uploaded by %s (%d bytes)", sha256, who.registry.actor, stored.size)
    return JSONResponse(
        {"sha256": stored.sha256, "size": stored.size, "created": stored.created},
        status_code=201 if stored.created else 200,
        headers={"ETag": f'"{stored.sha256}"'},
    )
