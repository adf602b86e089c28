"""Lineage and merged checkpoints: where a version came from and what it was merged into."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, bindparam, insert, select
from sqlalchemy.orm import Session

from mergetools.errors import InvalidInputError, NotFoundError
from registry.core import RegistryCore, journal
from registry.models import (
    Adapter,
    AdapterVersion,
    BaseModel,
    Checkpoint,
    CheckpointMember,
    LineageEdge,
    utcnow,
)
from registry.records import (
    CheckpointRow,
    LineageEdgeRow,
    LineageView,
    Page,
    VersionKey,
    _jsonable,
)
from registry.search import check_limit, encode_cursor, keyset_after

logger = logging.getLogger(__name__)


class LineageMixin(RegistryCore):
    """Use cases about lineage edges and merged checkpoints."""

    def lineage(self, ref: str) -> LineageView:
        """Parents, children and merged checkpoints of a version."""
        with self._read() as session:
            adapter, v = self._resolve(session, ref, allow_deleted=True)
            return lineage_of(session, adapter, v)

    def record_checkpoint(
        self,
        location: Path | str,
        *,
        members: Sequence[tuple[VersionKey, float]],
        base_id: int | None = None,
        base_fingerprint: str | None = None,
        fingerprint: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        actor: str | None = None,
    ) -> CheckpointRow:
        """Record a merged checkpoint made from registered versions (with their weights)."""
        actor = self._actor(actor)
        if not members:
            raise InvalidInputError("a checkpoint record needs at least one registered version")
        now = utcnow()
        location_text = (
            str(Path(location).resolve())
            if not str(location).startswith(("s3://", "hf://"))
            else str(location)
        )
        with self._write() as session:
            ids = [key.version_id for key, _ in members]
            found = set(
                session.scalars(select(AdapterVersion.id).where(AdapterVersion.id.in_(ids)))
            )
            missing = [key.ref for key, _ in members if key.version_id not in found]
            if missing:
                raise NotFoundError(
                    f"checkpoint members {', '.join(missing)} are not in this registry"
                )
            base_name = None
            if base_id is not None:
                base = session.get(BaseModel, base_id)
                if base is None:
                    raise NotFoundError(f"base model id {base_id} is not in this registry")
                base_name = base.name
                base_fingerprint = base_fingerprint or base.fingerprint
            checkpoint = Checkpoint(
                location=location_text,
                fingerprint=fingerprint,
                base_model_id=base_id,
                base_fingerprint=base_fingerprint,
                meta=_jsonable(dict(metadata or {})),
                created_at=now,
                created_by=actor,
            )
            session.add(checkpoint)
            session.flush()
            session.execute(
                insert(CheckpointMember),
                [
                    {
                        "checkpoint_id": checkpoint.id,
                        "position": i,
                        "version_id": key.version_id,
                        "weight": float(weight),
                    }
                    for i, (key, weight) in enumerate(members)
                ],
            )
            journal(
                session,
                actor=actor,
                kind="checkpoint.recorded",
                subject=location_text[-300:],
                payload={
                    "checkpoint_id": checkpoint.id,
                    "members": [[k.ref, w] for k, w in members],
                    "fingerprint": fingerprint,
                },
            )
            cid = checkpoint.id
        return CheckpointRow(
            id=cid,
            location=location_text,
            fingerprint=fingerprint,
            base=base_name,
            base_fingerprint=base_fingerprint,
            members=[
                {"ref": k.ref, "name": k.name, "version": k.version, "weight": float(w)}
                for k, w in members
            ],
            metadata=_jsonable(dict(metadata or {})),
            created_at=now,
            created_by=actor,
        )

    def list_checkpoints(
        self, *, ref: str | None = None, limit: int = 50, after: int | None = None
    ) -> Page:
        """Merged checkpoints, newest first; with ``ref``, those that contain that version."""
        check_limit(limit)
        with self._read() as session:
            stmt = select(Checkpoint, BaseModel.name).outerjoin(
                BaseModel, BaseModel.id == Checkpoint.base_model_id
            )
            if ref is not None:
                _, v = self._resolve(session, ref, allow_deleted=True)
                stmt = stmt.where(
                    Checkpoint.id.in_(
                        select(CheckpointMember.checkpoint_id).where(
                            CheckpointMember.version_id == v.id
                        )
                    )
                )
            if after is not None:
                stmt = stmt.where(keyset_after([(Checkpoint.id, True)], [after]))
            rows = session.execute(stmt.order_by(Checkpoint.id.desc()).limit(limit + 1)).all()
            page = rows[:limit]
            members: dict[int, list[dict[str, Any]]] = {}
            if page:
                for cid, name, number, weight in session.execute(
                    select(
                        CheckpointMember.checkpoint_id,
                        Adapter.name,
                        AdapterVersion.version,
                        CheckpointMember.weight,
                    )
                    .join(AdapterVersion, AdapterVersion.id == CheckpointMember.version_id)
                    .join(Adapter, Adapter.id == AdapterVersion.adapter_id)
                    .where(CheckpointMember.checkpoint_id.in_([c.id for c, _ in page]))
                    .order_by(CheckpointMember.checkpoint_id, CheckpointMember.position)
                ):
                    members.setdefault(cid, []).append(
                        {"ref": f"{name}@{number}", "name": name, "version": number, "weight": weight}
                    )
        items = [
            CheckpointRow(
                id=c.id,
                location=c.location,
                fingerprint=c.fingerprint,
                base=base_name,
                base_fingerprint=c.base_fingerprint,
                members=members.get(c.id, []),
                metadata=dict(c.meta),
                created_at=c.created_at,
                created_by=c.created_by,
            )
            for c, base_name in page
        ]
        cursor = encode_cursor([items[-1].id]) if len(rows) > limit else None
        return Page(items=items, next_cursor=cursor)


# Built once (building a SELECT costs more CPU than running it), over the tables rather than the
# ORM classes (plain rows: half the per-query cost); see registry/core.py.
_EDGES, _VERSIONS, _ADAPTERS = (m.__table__.c for m in (LineageEdge, AdapterVersion, Adapter))
_CHECKPOINTS, _MEMBERS = Checkpoint.__table__.c, CheckpointMember.__table__.c


def _edges_query(*, own: ColumnElement[int], other: ColumnElement[int]) -> Select[Any]:
    """Edges whose ``own`` end is the version ``:version_id``, with the name and number at their
    ``other`` end."""
    e = _EDGES
    return (
        select(e.relation, e.method, e.weight, e.seed, e.params, _ADAPTERS.name, _VERSIONS.version)
        .select_from(LineageEdge.__table__)
        .join(AdapterVersion.__table__, _VERSIONS.id == other)
        .join(Adapter.__table__, _ADAPTERS.id == _VERSIONS.adapter_id)
        .where(own == bindparam("version_id"))
        .order_by(e.id)
    )


_PARENTS = _edges_query(own=_EDGES.child_version_id, other=_EDGES.parent_version_id)
_CHILDREN = _edges_query(own=_EDGES.parent_version_id, other=_EDGES.child_version_id)
_CHECKPOINTS_OF_VERSION = (
    select(_CHECKPOINTS.id, _CHECKPOINTS.location, _CHECKPOINTS.created_at, _MEMBERS.weight)
    .select_from(Checkpoint.__table__)
    .join(CheckpointMember.__table__, _MEMBERS.checkpoint_id == _CHECKPOINTS.id)
    .where(_MEMBERS.version_id == bindparam("version_id"))
    .order_by(_CHECKPOINTS.id)
)


def lineage_of(session: Session, adapter: Adapter, v: AdapterVersion) -> LineageView:
    """The lineage of the resolved version ``v`` of ``adapter``, read in the caller's transaction."""
    key = {"version_id": v.id}
    parents = session.execute(_PARENTS, key).all()
    children = session.execute(_CHILDREN, key).all()
    checkpoints = session.execute(_CHECKPOINTS_OF_VERSION, key).all()

    def edge(e: Row[Any]) -> LineageEdgeRow:
        return LineageEdgeRow(
            ref=f"{e.name}@{e.version}",
            name=e.name,
            version=e.version,
            relation=e.relation,
            method=e.method,
            weight=e.weight,
            seed=e.seed,
            params=dict(e.params),
        )

    return LineageView(
        ref=f"{adapter.name}@{v.version}",
        name=adapter.name,
        version=v.version,
        parents=[edge(row) for row in parents],
        children=[edge(row) for row in children],
        checkpoints=[
            {
                "id": cid,
                "location": loc,
                "created_at": _jsonable(at),
                "weight": w,
                "relation": "merged-into",
            }
            for cid, loc, at, w in checkpoints
        ],
    )
