"""Read-side use cases: adapters, versions, search, details, evals, alias history, the journal."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from mergetools.errors import InvalidInputError
from registry.core import RegistryCore
from registry.metrics import better, directions_for
from registry.models import (
    Adapter,
    AdapterVersion,
    Alias,
    AliasMove,
    BaseModel,
    EvalScore,
    Event,
    Tag,
    VersionFile,
)
from registry.records import (
    AdapterRow,
    AliasMoveRow,
    EvalRow,
    EventRow,
    FileRow,
    Page,
    VersionDetail,
    VersionRow,
)
from registry.search import (
    SearchQuery,
    build_search,
    check_limit,
    decode_cursor,
    encode_cursor,
    glob_to_like,
    parse_sort,
    query_metrics,
    validate_search,
)

logger = logging.getLogger(__name__)


class QueriesMixin(RegistryCore):
    """Use cases that only read (one read-only transaction each)."""

    def list_adapters(
        self, *, pattern: str | None = None, limit: int = 50, after: str | None = None
    ) -> Page:
        """Adapters by name with their latest ready version (keyset-paginated by name)."""
        check_limit(limit)
        latest = (
            select(func.max(AdapterVersion.version))
            .where(AdapterVersion.adapter_id == Adapter.id, AdapterVersion.status == "ready")
            .correlate(Adapter)
            .scalar_subquery()
        )
        stmt = select(Adapter, latest.label("latest")).order_by(Adapter.name).limit(limit + 1)
        if pattern:
            stmt = stmt.where(Adapter.name.like(glob_to_like(pattern), escape="\\"))
        if after:
            stmt = stmt.where(Adapter.name > decode_cursor(after, kinds=["str"])[0])
        with self._read() as session:
            rows = session.execute(stmt).all()
        items = [
            AdapterRow(
                name=a.name,
                description=a.description,
                latest=lt,
                versions=a.last_version,
                created_at=a.created_at,
                created_by=a.created_by,
            )
            for a, lt in rows[:limit]
        ]
        cursor = encode_cursor([items[-1].name]) if len(rows) > limit else None
        return Page(items=items, next_cursor=cursor)

    def get_adapter(self, name: str) -> AdapterRow:
        """One adapter by its exact name, with its latest ready version."""
        with self._read() as session:
            adapter = self._adapter(session, name)
            latest = session.scalar(
                select(func.max(AdapterVersion.version)).where(
                    AdapterVersion.adapter_id == adapter.id, AdapterVersion.status == "ready"
                )
            )
        return AdapterRow(
            name=adapter.name,
            description=adapter.description,
            latest=latest,
            versions=adapter.last_version,
            created_at=adapter.created_at,
            created_by=adapter.created_by,
        )

    def search(self, query: SearchQuery) -> Page:
        """Versions matching ``query`` (one SQL query, plus one for the directions of its
        metrics and one for the aliases of the page).

        A filter that names nothing (an unknown base, metric, module or tag key) raises
        :class:`NotFoundError` (see :func:`registry.search.validate_search`).
        """
        with self._read() as session:
            query = validate_search(session, query)
            directions = directions_for(session, query_metrics(query))
            stmt, _keys, metric_names = build_search(query, directions=directions)
            rows = session.execute(stmt).all()
            page = rows[: query.limit]
            aliases = self._aliases_of(session, [r.id for r in page])
        items = [
            _version_row(
                r,
                name=r.name,
                base=r.base_name,
                aliases=aliases.get(r.id, []),
                scores={m: getattr(r, f"metric_{i}") for i, m in enumerate(metric_names)},
            )
            for r in page
        ]
        cursor = None
        if len(rows) > query.limit:
            last = page[-1]
            if query.sort:
                metric = parse_sort(query.sort)[0]
                cursor = encode_cursor(
                    [getattr(last, f"metric_{metric_names.index(metric)}"), last.id]
                )
            else:
                cursor = encode_cursor([last.name, last.version])
        return Page(items=items, next_cursor=cursor)

    @staticmethod
    def _aliases_of(session: Session, version_ids: Sequence[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        if not version_ids:
            return out
        for vid, alias in session.execute(
            select(Alias.version_id, Alias.name)
            .where(Alias.version_id.in_(version_ids))
            .order_by(Alias.name)
        ):
            out.setdefault(vid, []).append(alias)
        return out

    def show(self, ref: str) -> VersionDetail:
        """Everything about one version: summary, files, tags, evals, aliases, base."""
        with self._read() as session:
            adapter, v = self._resolve(session, ref, allow_deleted=True)
            files = [
                FileRow(path=f.path, sha256=f.sha256, size=f.size)
                for f in session.scalars(
                    select(VersionFile)
                    .where(VersionFile.version_id == v.id)
                    .order_by(VersionFile.path)
                )
            ]
            tags = self._tags_of(session, v.id)
            evals = self._evals(session, v.id)
            aliases = self._aliases_of(session, [v.id]).get(v.id, [])
            latest = session.scalar(
                select(func.max(AdapterVersion.version)).where(
                    AdapterVersion.adapter_id == adapter.id, AdapterVersion.status == "ready"
                )
            )
            base = None
            if v.base_model_id is not None:
                b = session.get(BaseModel, v.base_model_id)
                if b is not None:
                    base = {
                        "name": b.name,
                        "fingerprint": b.fingerprint,
                        "architectures": b.architectures,
                    }
        return VersionDetail(
            ref=f"{adapter.name}@{v.version}",
            name=adapter.name,
            version=v.version,
            status=v.status,
            status_reason=v.status_reason,
            latest=latest == v.version,
            description=v.description,
            created_at=v.created_at,
            created_by=v.created_by,
            base=base,
            base_fingerprint=v.base_fingerprint,
            base_name_or_path=v.base_name_or_path,
            target_modules=list(v.target_modules),
            ranks=dict(v.ranks),
            max_rank=v.max_rank,
            alpha=v.alpha,
            use_dora=v.use_dora,
            use_rslora=v.use_rslora,
            flags=dict(v.flags),
            dtype=v.dtype,
            param_count=v.param_count,
            nbytes=v.nbytes,
            adapter_fingerprint=v.adapter_fingerprint,
            content_sha256=v.content_sha256,
            weights_sha256=v.weights_sha256,
            source=v.source,
            metadata=dict(v.meta),
            files=files,
            tags=tags,
            aliases=aliases,
            evals=evals,
        )

    @staticmethod
    def _tags_of(session: Session, version_id: int) -> dict[str, str]:
        return dict(
            session.execute(
                select(Tag.key, Tag.value).where(Tag.version_id == version_id).order_by(Tag.key)
            ).all()
        )

    @staticmethod
    def _evals(session: Session, version_id: int) -> list[EvalRow]:
        """The version's eval rows, each with its metric's direction and whether it is the best
        value of that metric on its dataset and split (ties: the first recorded)."""
        scores = list(
            session.scalars(
                select(EvalScore)
                .where(EvalScore.version_id == version_id)
                .order_by(EvalScore.metric, EvalScore.id)
            )
        )
        directions = directions_for(session, [e.metric for e in scores])
        best: dict[tuple[str, str | None, str | None], EvalScore] = {}
        for e in scores:
            key = (e.metric, e.dataset, e.split)
            if key not in best or better(directions[e.metric], e.value, best[key].value):
                best[key] = e
        best_ids = {e.id for e in best.values()}
        return [
            EvalRow(
                id=e.id,
                metric=e.metric,
                value=e.value,
                dataset=e.dataset,
                split=e.split,
                recorded_at=e.recorded_at,
                recorded_by=e.recorded_by,
                direction=directions[e.metric],
                best=e.id in best_ids,
            )
            for e in scores
        ]

    def versions(self, name: str) -> list[VersionRow]:
        """Every version of an adapter, newest first, deleted ones included."""
        with self._read() as session:
            adapter = self._adapter(session, name)
            rows = session.execute(
                select(AdapterVersion, BaseModel.name)
                .outerjoin(BaseModel, BaseModel.id == AdapterVersion.base_model_id)
                .where(AdapterVersion.adapter_id == adapter.id)
                .order_by(AdapterVersion.version.desc())
            ).all()
            aliases = self._aliases_of(session, [v.id for v, _ in rows])
        return [
            _version_row(v, name=name, base=base_name, aliases=aliases.get(v.id, []))
            for v, base_name in rows
        ]

    def list_evals(self, ref: str) -> list[EvalRow]:
        with self._read() as session:
            _, v = self._resolve(session, ref, allow_deleted=True)
            return self._evals(session, v.id)

    def events(
        self,
        *,
        name: str | None = None,
        limit: int = 100,
        before: int | None = None,
        after: int | None = None,
    ) -> list[EventRow]:
        """The journal, newest first (optionally for one adapter); with ``after``, the events
        numbered above it, oldest first — what a follower polls. Numbers are in commit order
        (:func:`registry.core.journal`), so following ``after`` never skips an event."""
        check_limit(limit)
        for value, what in ((before, "before"), (after, "after")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvalidInputError(f"journal {what}={value!r} is not an event number; expected an integer >= 0")
        with self._read() as session:
            order = Event.id.asc() if after is not None else Event.id.desc()
            stmt = select(Event).order_by(order).limit(limit)
            if name is not None:
                stmt = stmt.where(Event.adapter_id == self._adapter(session, name).id)
            if before is not None:
                stmt = stmt.where(Event.id < before)
            if after is not None:
                stmt = stmt.where(Event.id > after)
            return [
                EventRow(
                    id=e.id,
                    at=e.at,
                    actor=e.actor,
                    kind=e.kind,
                    subject=e.subject,
                    payload=dict(e.payload),
                )
                for e in session.scalars(stmt)
            ]

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMoveRow]:
        """Every move of the adapter's aliases (or of one alias), oldest first."""
        with self._read() as session:
            adapter = self._adapter(session, name)
            numbers = dict(
                session.execute(
                    select(AdapterVersion.id, AdapterVersion.version).where(
                        AdapterVersion.adapter_id == adapter.id
                    )
                ).all()
            )
            stmt = (
                select(AliasMove).where(AliasMove.adapter_id == adapter.id).order_by(AliasMove.id)
            )
            if alias is not None:
                stmt = stmt.where(AliasMove.alias == alias)
            return [
                AliasMoveRow(
                    alias=m.alias,
                    from_version=numbers.get(m.from_version_id) if m.from_version_id else None,
                    to_version=numbers.get(m.to_version_id) if m.to_version_id else None,
                    moved_at=m.moved_at,
                    moved_by=m.moved_by,
                    kind=m.kind or ("set" if m.to_version_id else "removed"),
                    report=m.report,
                )
                for m in session.scalars(stmt)
            ]


def _version_row(
    v: AdapterVersion | Row[Any],
    *,
    name: str,
    base: str | None,
    aliases: list[str],
    scores: dict[str, float] | None = None,
) -> VersionRow:
    """A version's list row, from its ORM object or a search result row of the same columns."""
    return VersionRow(
        ref=f"{name}@{v.version}",
        name=name,
        version=v.version,
        status=v.status,
        max_rank=v.max_rank,
        alpha=v.alpha,
        target_modules=list(v.target_modules),
        base=base,
        base_fingerprint=v.base_fingerprint,
        weights_sha256=v.weights_sha256,
        created_at=v.created_at,
        created_by=v.created_by,
        aliases=aliases,
        scores=scores or {},
    )
