"""Views across adapters: the journal, search, reference resolution, bases."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from registry.api.auth import AdminCaller, Caller, ReadCaller, WriteCaller
from registry.api.encoding import sent_as_built
from registry.api.schemas import MAX_INTEGER, BaseIn, MetricDirectionIn
from registry.inputs import parse_ref, parse_tag_spec
from registry.search import SearchQuery, parse_metric_filter

logger = logging.getLogger(__name__)

router = APIRouter()


@router.get("/events", tags=["journal"], summary="The journal; with after=N, the events after N")
@sent_as_built
def events(
    after: int | None = Query(None, ge=0, le=MAX_INTEGER, description="the last event number seen"),
    before: int | None = Query(None, ge=0, le=MAX_INTEGER),
    name: str | None = Query(None, description="only events of this adapter"),
    limit: int = Query(100, ge=1, le=1000),
    who: Caller = ReadCaller,
) -> list[dict[str, Any]]:
    if name is None:
        who.whole_registry("the journal")
    else:
        who.adapter(name)
    rows = who.registry.events(name=name, limit=limit, before=before, after=after)
    return [e.to_dict() for e in rows]


@router.get("/search", tags=["search"], summary="Versions by metric, tag, base, module, rank")
@sent_as_built
def search(
    filter: list[str] = Query([], description="METRIC>=VALUE (repeatable), e.g. accuracy>=0.8"),
    tag: list[str] = Query([], description="KEY=VALUE (repeatable), e.g. team=cx"),
    name: str | None = Query(None, description="adapter name glob, e.g. support-*"),
    base: str | None = Query(None),
    module: str | None = Query(None, description="target module leaf name, e.g. q_proj"),
    max_rank: int | None = Query(None, ge=1, le=MAX_INTEGER),
    dataset: str | None = Query(None),
    split: str | None = Query(None),
    sort: str | None = Query(None, description="METRIC (best first), +METRIC or -METRIC"),
    all: bool = Query(False, description="include yanked versions"),
    limit: int = Query(50, ge=1, le=1000),
    after: str | None = Query(None, description="next_cursor of the previous page"),
    who: Caller = ReadCaller,
) -> dict[str, Any]:
    if who.prefix is not None and not (name or "").startswith(who.prefix):
        who.whole_registry(f"a search without name={who.prefix}...")
    query = SearchQuery(
        name=name,
        base=base,
        target_module=module,
        max_rank=max_rank,
        tags=dict(parse_tag_spec(t) for t in tag),
        metrics=tuple(parse_metric_filter(f) for f in filter),
        sort=sort,
        dataset=dataset,
        split=split,
        include_yanked=all,
        limit=limit,
        after=after,
    )
    return who.registry.search(query).to_dict()


@router.get("/refs/{ref}", tags=["adapters"], summary="The version a reference names")
@sent_as_built
def resolve_ref(ref: str, who: Caller = ReadCaller) -> dict[str, Any]:
    """``NAME``, ``NAME@7``, ``NAME@production`` or ``sha256:<hex>`` -> the version's key."""
    if not ref.startswith("sha256:"):
        who.adapter(parse_ref(ref).name or "")
    key = who.registry.resolve(ref)
    who.adapter(key.name)
    return key.to_dict()


@router.get("/bases", tags=["bases"], summary="Registered base models")
@sent_as_built
def list_bases(who: Caller = ReadCaller) -> list[dict[str, Any]]:
    return [b.to_dict() for b in who.registry.list_bases()]


@router.get("/bases/{ref}", tags=["bases"], summary="One base (name or sha256:fingerprint)")
@sent_as_built
def get_base(ref: str, who: Caller = ReadCaller) -> dict[str, Any]:
    return who.registry.get_base(ref).to_dict()


@router.post(
    "/bases",
    tags=["bases"],
    summary="Register a base by fingerprint and signature (files: uploaded blobs)",
    status_code=201,
)
def add_base(body: BaseIn, who: Caller = WriteCaller) -> dict[str, Any]:
    row = who.registry.add_base_facts(
        name=body.name if body.name_given else None,
        default_name=body.name,
        fingerprint=body.fingerprint,
        signature=body.signature,
        source_path=body.source_path,
        description=body.description,
        repo=body.repo,
        revision=body.revision,
        files=body.files,
    )
    return row.to_dict()


@router.get("/bases/{ref}/files", tags=["bases"], summary="A base's stored files")
@sent_as_built
def list_base_files(ref: str, who: Caller = ReadCaller) -> list[dict[str, Any]]:
    return [f.to_dict() for f in who.registry.base_files(ref)]


@router.get(
    "/bases/{ref}/files/{path:path}",
    tags=["bases"],
    summary="Download a base's stored file",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the file"}},
)
def download_base_file(ref: str, path: str, who: Caller = ReadCaller) -> Response:
    row, chunks = who.registry.read_base_file(ref, path)
    return StreamingResponse(
        chunks,
        headers={"ETag": f'"{row.sha256}"', "Content-Length": str(row.size)},
        media_type="application/octet-stream",
    )


@router.get("/metrics", tags=["metrics"], summary="Every metric: recorded or declared, and its direction")
@sent_as_built
def list_metrics(who: Caller = ReadCaller) -> list[dict[str, Any]]:
    return [m.to_dict() for m in who.registry.list_metrics()]


@router.put(
    "/metrics/{metric:path}",  # a metric name may hold "/" (eval/loss)
    tags=["metrics"],
    summary="Declare whether a higher or a lower value is better (admin; registry-wide)",
)
@sent_as_built
def set_metric_direction(
    metric: str, body: MetricDirectionIn, who: Caller = AdminCaller
) -> dict[str, Any]:
    who.whole_registry("a metric's direction")
    return who.registry.set_metric_direction(metric, body.direction).to_dict()


@router.get("/aliases", tags=["aliases"], summary="Every alias of every adapter: version, policy, last move")
@sent_as_built
def list_all_aliases(who: Caller = ReadCaller) -> list[dict[str, Any]]:
    who.whole_registry("the list of every alias")
    return [row.to_dict() for row in who.registry.list_aliases()]
