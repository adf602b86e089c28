"""Merged checkpoints under ``/api/v1/checkpoints``: list them, record one merged elsewhere.

A merge runs where its inputs and output are (a GPU machine, a laptop); it records the
checkpoint here afterwards, naming the registered versions it was made from.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Query

from registry.api.auth import Caller, ReadCaller, WriteCaller
from registry.api.encoding import sent_as_built
from registry.api.schemas import CheckpointIn

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/checkpoints", tags=["checkpoints"])


@router.get("", summary="Merged checkpoints, newest first (ref: those that contain a version)")
@sent_as_built
def list_checkpoints(
    ref: str | None = Query(None, description="a version reference, e.g. support@3"),
    limit: int = Query(50, ge=1, le=1000),
    after: int | None = Query(None, ge=0, description="the last checkpoint id of the previous page"),
    who: Caller = ReadCaller,
) -> dict[str, Any]:
    if ref is not None:
        who.adapter(who.registry.resolve(ref).name)
    else:
        who.whole_registry("the checkpoint list without ref=")
    return who.registry.list_checkpoints(ref=ref, limit=limit, after=after).to_dict()


@router.post("", summary="Record a checkpoint merged from registered versions", status_code=201)
def record_checkpoint(body: CheckpointIn, who: Caller = WriteCaller) -> dict[str, Any]:
    members = []
    for member in body.members:
        key = who.registry.resolve(member.ref)
        who.adapter(key.name)
        members.append((key, member.weight))
    base_id = who.registry.get_base(body.base, with_signature=False).id if body.base else None
    row = who.registry.record_checkpoint(
        body.location,
        members=members,
        base_id=base_id,
        base_fingerprint=body.base_fingerprint,
        fingerprint=body.fingerprint,
        metadata=body.metadata,
    )
    return row.to_dict()
