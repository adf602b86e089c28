"""Adapters, versions, their files, evals, tags, status and aliases under ``/api/v1/adapters``.

Each route parses the request, checks the caller's scope and name prefix, calls one use case of
:class:`registry.service.Registry` and renders its record; nothing else happens here.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from registry.aliases import UNCONDITIONAL
from registry.api.auth import AdminCaller, Caller, ReadCaller, WriteCaller
from registry.api.encoding import sent_as_built
from registry.api.errors import ApiError
from registry.api.schemas import AliasIn, EvalsIn, RegisterIn, TagsIn, YankIn
from registry.inputs import EvalInput, ParentInput, check_name

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/adapters", tags=["adapters"])

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)\Z")


def version_ref(name: str, ref: str) -> str:
    """``NAME@REF`` for a version number, an alias or ``latest``."""
    check_name(name)
    return name if ref == "latest" else f"{name}@{ref}"


# ------------------------------------------------------------------------------ adapters


@router.get("", summary="Adapters by name (keyset-paginated)")
@sent_as_built
def list_adapters(
    limit: int = Query(50, ge=1, le=1000),
    after: str | None = Query(None, description="next_cursor of the previous page"),
    pattern: str | None = Query(None, max_length=1000, description="name glob, e.g. support-*"),
    who: Caller = ReadCaller,
) -> dict[str, Any]:
    if who.prefix:
        if pattern is None:
            pattern = f"{who.prefix}*"
        elif not pattern.startswith(who.prefix):
            who.adapter(pattern)  # 403: the pattern reaches names outside the token's prefix
    return who.registry.list_adapters(pattern=pattern, limit=limit, after=after).to_dict()


@router.get("/{name}", summary="One adapter")
@sent_as_built
def get_adapter(name: str, who: Caller = ReadCaller) -> dict[str, Any]:
    return who.registry.get_adapter(who.adapter(name)).to_dict()


@router.get("/{name}/versions", summary="Every version of an adapter, newest first")
@sent_as_built
def list_versions(name: str, who: Caller = ReadCaller) -> list[dict[str, Any]]:
    return [v.to_dict() for v in who.registry.versions(who.adapter(name))]


@router.post(
    "/{name}/versions",
    summary="Register a version from uploaded blobs",
    status_code=201,
    responses={200: {"description": "identical content was registered already"}},
)
def register_version(name: str, body: RegisterIn, who: Caller = WriteCaller) -> JSONResponse:
    who.adapter(name)
    for parent in body.parents:  # the token must be able to read each parent
        who.adapter(who.registry.resolve(parent.ref).name)
    result = who.registry.register_uploaded(
        name,
        files=body.files,
        base=body.base,
        evals=[EvalInput(e.metric, e.value, e.dataset, e.split) for e in body.evals],
        tags=body.tags,
        description=body.description,
        source=body.source if body.source is not None else f"upload by {who.registry.actor}",
        parents=[
            ParentInput(
                ref=p.ref,
                relation=p.relation,
                method=p.method,
                weight=p.weight,
                seed=p.seed,
                params=p.params,
            )
            for p in body.parents
        ],
        metadata=body.metadata,
    )
    return JSONResponse(result.to_dict(), status_code=201 if result.created else 200)


@router.get(
    "/{name}/versions/{ref}",
    summary="A version's full record (ref: a number, an alias or latest)",
)
@sent_as_built
def get_version(name: str, ref: str, who: Caller = ReadCaller) -> dict[str, Any]:
    full = version_ref(who.adapter(name), ref)
    record, lineage = who.registry.show_with_lineage(full)
    detail = record.to_dict()
    detail["lineage"] = {k: v for k, v in lineage.to_dict().items() if k != "ref"}
    return detail


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, last) of a single ``bytes=`` range, None to serve the whole file."""
    match = _RANGE_RE.match(header.strip())
    if match is None:
        if "," in header:
            return None  # several ranges: answer with the whole file (RFC 9110 allows it)
        raise ApiError(
            f"Range {header!r} is not a byte range; expected bytes=START-END, bytes=START- or "
            "bytes=-SUFFIX",
            code="bad_range",
        )
    first, second = match.group(1), match.group(2)
    if not first and not second:
        raise ApiError(f"Range {header!r} names no bytes", code="bad_range")
    if not first:
        suffix = int(second)
        if suffix == 0:
            raise ApiError(f"Range {header!r} asks for 0 bytes", code="range_not_satisfiable", size=size)
        return max(0, size - suffix), size - 1
    start = int(first)
    last = int(second) if second else size - 1
    if start >= size:
        raise ApiError(
            f"Range {header!r} starts at or after the end of the {size}-byte file",
            code="range_not_satisfiable",
            size=size,
        )
    if last < start:
        raise ApiError(f"Range {header!r} ends before it starts", code="bad_range")
    return start, min(last, size - 1)


@router.get("/{name}/versions/{ref}/lineage", summary="Parents, children and merged checkpoints")
@sent_as_built
def lineage(name: str, ref: str, who: Caller = ReadCaller) -> dict[str, Any]:
    return who.registry.lineage(version_ref(who.adapter(name), ref)).to_dict()


@router.get(
    "/{name}/versions/{ref}/files/{filename:path}",
    summary="Download a stored file (Range requests supported)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the file"},
        206: {"content": {"application/octet-stream": {}}, "description": "a byte range"},
        304: {"description": "If-None-Match matched"},
    },
)
def download_file(
    name: str, ref: str, filename: str, request: Request, who: Caller = ReadCaller
) -> Response:
    full = version_ref(who.adapter(name), ref)
    row = who.registry.version_file(full, filename)
    etag = f'"{row.sha256}"'
    if request.headers.get("if-none-match") in (etag, "*"):
        return Response(status_code=304, headers={"ETag": etag})
    span = None
    header = request.headers.get("range")
    if header and row.size > 0:
        if_range = request.headers.get("if-range")
        if if_range is None or if_range == etag:
            span = _parse_range(header, row.size)
    start, last = span if span is not None else (0, row.size - 1)
    chunks = who.registry.read_stored(row, start=start, end=last)
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Length": str(last - start + 1),
        "Content-Disposition": f'attachment; filename="{row.path}"',
    }
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{last}/{row.size}"
    return StreamingResponse(
        chunks,
        status_code=206 if span is not None else 200,
        headers=headers,
        media_type="application/octet-stream",
    )


# ------------------------------------------------------------------------------ facts, status


@router.post("/{name}/versions/{ref}/evals", summary="Record eval scores", status_code=201)
def add_evals(name: str, ref: str, body: EvalsIn, who: Caller = WriteCaller) -> list[dict[str, Any]]:
    full = version_ref(who.adapter(name), ref)
    rows = who.registry.add_evals(
        full, [EvalInput(e.metric, e.value, e.dataset, e.split) for e in body.evals]
    )
    return [r.to_dict() for r in rows]


@router.get("/{name}/versions/{ref}/evals", summary="A version's eval scores")
@sent_as_built
def list_evals(name: str, ref: str, who: Caller = ReadCaller) -> list[dict[str, Any]]:
    return [r.to_dict() for r in who.registry.list_evals(version_ref(who.adapter(name), ref))]


@router.patch("/{name}/versions/{ref}/tags", summary="Set and remove tags")
def set_tags(name: str, ref: str, body: TagsIn, who: Caller = WriteCaller) -> dict[str, str]:
    full = version_ref(who.adapter(name), ref)
    return who.registry.set_tags(full, set_tags=body.set, remove=body.remove)


@router.post("/{name}/versions/{ref}/yank", summary="Hide a version from latest and aliases")
def yank(name: str, ref: str, body: YankIn, who: Caller = WriteCaller) -> dict[str, Any]:
    return who.registry.yank(version_ref(who.adapter(name), ref), reason=body.reason).to_dict()


@router.post("/{name}/versions/{ref}/unyank", summary="Make a yanked version ready again")
def unyank(name: str, ref: str, who: Caller = WriteCaller) -> dict[str, Any]:
    return who.registry.unyank(version_ref(who.adapter(name), ref)).to_dict()


@router.delete("/{name}/versions/{ref}", summary="Delete a version and purge its files (admin)")
def delete_version(
    name: str,
    ref: str,
    purge: bool = Query(True, description="false: refused (the confirmation is missing)"),
    who: Caller = AdminCaller,
) -> dict[str, Any]:
    return who.registry.delete(version_ref(who.adapter(name), ref), purge=purge).to_dict()


# ------------------------------------------------------------------------------ aliases


@router.put(
    "/{name}/aliases/{alias}",
    summary="Point an alias at a version (compare-and-swap with expected_version)",
)
def set_alias(name: str, alias: str, body: AliasIn, who: Caller = WriteCaller) -> dict[str, Any]:
    who.adapter(name)
    expected = (
        body.expected_version if "expected_version" in body.model_fields_set else UNCONDITIONAL
    )
    return who.registry.set_alias(
        version_ref(name, str(body.version)), alias, expected_version=expected
    ).to_dict()


@router.delete("/{name}/aliases/{alias}", summary="Remove an alias")
def remove_alias(name: str, alias: str, who: Caller = WriteCaller) -> dict[str, Any]:
    return who.registry.remove_alias(who.adapter(name), alias).to_dict()


@router.get("/{name}/alias-history", summary="Every move of all the adapter's aliases, oldest first")
@sent_as_built
def all_alias_history(name: str, who: Caller = ReadCaller) -> list[dict[str, Any]]:
    return [m.to_dict() for m in who.registry.alias_history(who.adapter(name))]


@router.get("/{name}/aliases/{alias}/history", summary="Every move of an alias, oldest first")
@sent_as_built
def alias_history(name: str, alias: str, who: Caller = ReadCaller) -> list[dict[str, Any]]:
    return [m.to_dict() for m in who.registry.alias_history(who.adapter(name), alias)]
