"""Adapters and their versions: register (one transaction), list, show, search.

Register writes the blobs first (temp + fsync + rename), then commits the version, its files,
tags, evals, lineage and journal entry in one transaction. Version numbers come from a counter
row (``adapters.last_version``) incremented in that same transaction, so a register killed at
any point leaves no version behind and numbers stay consecutive; the unique constraints on
``(adapter_id, version)`` and ``(adapter_id, content_sha256)`` are the backstop (roll back, retry).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Row, bindparam, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from mergetools.errors import ConflictError, InvalidInputError
from registry.aliases import AliasesMixin
from registry.bases import BasesMixin
from registry.blobstore import Progress, offset_progress
from registry.core import journal
from registry.db import is_sqlite
from registry.evals import EvalsMixin
from registry.folders import (
    CONFIG_FILE,
    WEIGHT_FILES,
    FoldersMixin,
    _collect_files,
    content_digest,
    select_files,
)
from registry.inputs import (
    DESCRIPTION_MAX,
    SOURCE_MAX,
    EvalInput,
    ParentInput,
    check_eval,
    check_name,
    check_tag,
    check_text,
)
from registry.lineage import lineage_of
from registry.metrics import directions_for
from registry.models import (
    LINEAGE_RELATIONS,
    Adapter,
    AdapterVersion,
    BaseModel,
    LineageEdge,
    VersionFile,
    VersionModule,
    utcnow,
)
from registry.records import (
    AdapterRow,
    FileRow,
    LineageView,
    Page,
    RegisterResult,
    VersionDetail,
    VersionRow,
    _jsonable,
)
from registry.search import (
    SearchQuery,
    built_search,
    check_limit,
    decode_cursor,
    encode_cursor,
    glob_to_like,
    parse_sort,
    query_metrics,
    validate_search,
)

logger = logging.getLogger(__name__)

# The reads of a version record, built once (building a SELECT costs more CPU than running it;
# see registry/core.py).
# Over the tables rather than the ORM classes: plain rows, half the per-query cost.
_FILES, _VERSIONS, _BASES = (m.__table__.c for m in (VersionFile, AdapterVersion, BaseModel))
_FILES_OF_VERSION = (
    select(_FILES.path, _FILES.sha256, _FILES.size)
    .where(_FILES.version_id == bindparam("version_id"))
    .order_by(_FILES.path)
)
_LATEST_READY_NUMBER = select(func.max(_VERSIONS.version)).where(
    _VERSIONS.adapter_id == bindparam("adapter_id"), _VERSIONS.status == "ready"
)
_BASE_SUMMARY = select(_BASES.name, _BASES.fingerprint, _BASES.architectures).where(
    _BASES.id == bindparam("base_id")
)

REGISTER_ATTEMPTS = 8


# A module-level name, looked up at call time, so a test can intercept the register's journal write.
_journal = journal


# Unique constraints that concurrent registers race for (SQLite names the table.columns,
# PostgreSQL the constraint): losing such a race means "retry", any other violation is a bug
# in the request and is reported, not retried.
_RACED_CONSTRAINTS = (
    "adapters.name",
    "uq_adapters_name",
    "adapter_versions.adapter_id",
    "uq_adapter_versions_",
    "base_models.",
    "uq_base_models_",
)


def _is_retryable(exc: DBAPIError) -> bool:
    message = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    if isinstance(exc, IntegrityError):
        return any(name in message for name in _RACED_CONSTRAINTS)
    return any(s in message for s in ("database is locked", "deadlock", "could not serialize"))




class AdaptersMixin(EvalsMixin, AliasesMixin, BasesMixin, FoldersMixin):
    """Use cases of adapters and versions (a register reads bases, records evals and tags)."""

    def register(
        self,
        path: Path,
        *,
        name: str,
        base: str | None = None,
        evals: Sequence[EvalInput] = (),
        tags: Mapping[str, str] | None = None,
        description: str = "",
        source: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        parents: Sequence[ParentInput] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        progress: Progress | None = None,
        actor: str | None = None,
    ) -> RegisterResult:
        """Parse and check the adapter folder at ``path``, store its files, record a new version.

        Only the adapter's own files are stored (:func:`registry.folders.select_files`):
        ``include`` / ``exclude`` globs add or remove files by posix relative path.
        Byte-identical content (same sha256 of config and weights) already registered under
        ``name`` returns that version (``created=False``) instead of a new one, with what the
        call brings that the version lacks attached to it in the same committed transaction:
        evals not recorded yet (same metric, value, dataset and split: recorded once), tags
        (a new value for a key replaces the old one) and a new description. Lineage of an
        existing version cannot change: parents it does not have are refused. A retried
        register therefore never duplicates anything.

        ``progress(done, total)`` follows the bytes read: fingerprinting a base folder (one
        pass), then storing the files (a second pass over the sum of their sizes).
        """
        from mergetools.inspect import summarize_adapter

        actor = self._actor(actor)
        check_name(name)
        check_text(description, what="description", limit=DESCRIPTION_MAX, empty_ok=True, multiline=True)
        if source is not None:
            check_text(source, what="source", limit=SOURCE_MAX)
        path = Path(path)
        if not path.is_dir():
            raise InvalidInputError(
                f"adapter path {str(path)!r} is not a folder; expected a PEFT adapter folder "
                f"with {CONFIG_FILE} and {WEIGHT_FILES[0]}"
            )
        summary = summarize_adapter(path)
        summary_dict = summary.to_dict()
        base_info: dict[str, Any] | None = None
        base_path: Path | None = None
        if base is not None:
            from registry.refs import resolve_base_ref

            resolved_base = resolve_base_ref(self, base, headers_only=True)
            base_path = resolved_base.path
            base_info = self._base_facts(
                base_path, known_id=resolved_base.base_id, progress=progress
            )
        findings = self._check_adapter(path, base_path)

        files, warnings = select_files(_collect_files(path), include=include, exclude=exclude)
        for warning in warnings:
            logger.warning("register %s: %s", name, warning)
        names = {rel for rel, _ in files}
        if CONFIG_FILE not in names or not names.intersection(WEIGHT_FILES):
            raise InvalidInputError(
                f"adapter folder {str(path)!r} lacks {CONFIG_FILE} or {WEIGHT_FILES[0]}"
            )
        weights_rel = next(w for w in WEIGHT_FILES if w in names)
        stored: dict[str, tuple[str, int]] = {}
        total = sum(file_path.stat().st_size for _, file_path in files)
        done = 0
        for rel, file_path in files:  # blobs first, before any row names them
            blob = self.blobs.put_file(file_path, progress=offset_progress(progress, done, total))
            stored[rel] = (blob.sha256, blob.size)
            done += blob.size
            if progress is not None:
                progress(done, max(total, done))
        shas = {rel: sha for rel, (sha, _) in stored.items()}
        content_sha = content_digest(shas)
        weights_sha = shas[weights_rel]

        parent_refs = list(parents)
        for parent in parent_refs:
            if parent.relation not in LINEAGE_RELATIONS:
                raise InvalidInputError(
                    f"lineage relation {parent.relation!r} is not one of {', '.join(LINEAGE_RELATIONS)}"
                )

        tag_items = dict(tags or {})
        for key, value in tag_items.items():
            check_tag(key, value)
        for spec in evals or ():
            check_eval(spec)
        last_error: Exception | None = None
        for attempt in range(REGISTER_ATTEMPTS):
            try:
                result = self._register_tx(
                    actor=actor,
                    name=name,
                    summary=summary_dict,
                    base_info=base_info,
                    stored=stored,
                    content_sha=content_sha,
                    weights_sha=weights_sha,
                    weights_rel=weights_rel,
                    evals=evals,
                    tags=tag_items,
                    description=description,
                    source=source if source is not None else str(path.resolve()),
                    metadata=dict(metadata or {}),
                    parents=parent_refs,
                    findings=findings,
                )
            except (IntegrityError, OperationalError) as exc:
                if not _is_retryable(exc):
                    if isinstance(exc, IntegrityError):
                        first = str(exc.orig or exc).strip().splitlines()[0]
                        raise ConflictError(f"registering {name!r} was refused by the database: {first}") from None
                    raise
                last_error = exc
                logger.info(
                    "register %s: attempt %d conflicted (%s); retrying", name, attempt + 1, exc.orig
                )
                time.sleep(0.01 * (attempt + 1))
                continue
            # A concurrent purge may have removed a blob we reuse: store it again.
            for rel, file_path in files:
                if not self.blobs.exists(stored[rel][0]):
                    self.blobs.put_file(file_path)
            return dataclasses.replace(result, warnings=warnings)
        raise ConflictError(
            f"registering {name!r} conflicted with concurrent writers {REGISTER_ATTEMPTS} times "
            f"(last: {last_error}); retry the command"
        )

    def _register_tx(
        self,
        *,
        name: str,
        summary: dict[str, Any],
        base_info: dict[str, Any] | None,
        stored: Mapping[str, tuple[str, int]],
        content_sha: str,
        weights_sha: str,
        weights_rel: str,
        evals: Sequence[EvalInput],
        tags: Mapping[str, str],
        description: str,
        source: str,
        metadata: dict[str, Any],
        parents: Sequence[ParentInput],
        findings: list[dict[str, Any]],
        actor: str,
    ) -> RegisterResult:
        now = utcnow()
        with self._write() as session:
            created_adapter = self._insert_adapter_if_missing(
                session, name=name, now=now, description=description, actor=actor
            )
            # Lock the adapter row (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises
            # writers): a concurrent register of the same content waits here, then sees ours.
            adapter = self._adapter(session, name, lock=True)
            existing = session.scalars(
                select(AdapterVersion).where(
                    AdapterVersion.adapter_id == adapter.id,
                    AdapterVersion.content_sha256 == content_sha,
                )
            ).one_or_none()
            if existing is not None:
                return self._attach_to_existing(
                    session,
                    adapter,
                    existing,
                    evals=evals,
                    tags=tags,
                    description=description,
                    parents=parents,
                    findings=findings,
                    content_sha=content_sha,
                    now=now,
                    actor=actor,
                )
            # The counter row: incremented in this transaction, so a rollback returns the number.
            row = session.execute(
                update(Adapter)
                .where(Adapter.id == adapter.id)
                .values(last_version=Adapter.last_version + 1)
                .returning(Adapter.id, Adapter.last_version)
            ).one()
            adapter_id, number = int(row[0]), int(row[1])
            if created_adapter:
                _journal(
                    session,
                    actor=actor,
                    kind="adapter.created",
                    subject=name,
                    adapter_id=adapter_id,
                )
            parent_versions = [self._resolve(session, p.ref)[1] for p in parents]
            edges = [(pv.id, p.relation) for p, pv in zip(parents, parent_versions, strict=True)]
            if len(set(edges)) != len(edges):
                listed = ", ".join(p.ref for p in parents)
                raise InvalidInputError(
                    f"parents {listed} name the same version twice with the same relation; list each once"
                )
            base_model_id = (
                self._ensure_base(session, base_info, now=now, actor=actor) if base_info else None
            )
            base_fingerprint = summary.get("base_fingerprint")
            if base_info and base_info.get("fingerprint"):
                base_fingerprint = base_info["fingerprint"]
            if base_model_id is None:
                base_model_id = self._match_base(
                    session, base_fingerprint, summary.get("base_model_name_or_path")
                )
            version = AdapterVersion(
                adapter_id=adapter_id,
                version=number,
                status="ready",
                content_sha256=content_sha,
                weights_sha256=weights_sha,
                weights_path=weights_rel,
                base_model_id=base_model_id,
                base_fingerprint=base_fingerprint,
                base_name_or_path=summary.get("base_model_name_or_path"),
                max_rank=int(summary["max_rank"]),
                alpha=float(summary["alpha"]),
                use_dora=bool(summary["use_dora"]),
                use_rslora=bool(summary["use_rslora"]),
                dtype=str(summary["dtype"]),
                param_count=int(summary["param_count"]),
                nbytes=int(summary["nbytes"]),
                adapter_fingerprint=summary.get("adapter_fingerprint"),
                target_modules=list(summary["target_modules"]),
                ranks=dict(summary["ranks"]),
                flags=dict(summary.get("flags") or {}),
                summary=_jsonable(summary),
                source=source,
                meta=_jsonable(metadata),
                description=description,
                created_at=now,
                created_by=actor,
            )
            session.add(version)
            session.flush()
            vid = version.id
            session.execute(
                insert(VersionFile),
                [
                    {"version_id": vid, "path": rel, "sha256": sha, "size": size}
                    for rel, (sha, size) in sorted(stored.items())
                ],
            )
            modules = sorted(set(version.target_modules))
            if modules:
                session.execute(
                    insert(VersionModule), [{"version_id": vid, "module": m} for m in modules]
                )
            self._upsert_tags(session, vid, tags)
            self._attach_evals(session, vid, evals, now=now, actor=actor)
            if parents:
                session.execute(
                    insert(LineageEdge),
                    [
                        {
                            "child_version_id": vid,
                            "parent_version_id": pv.id,
                            "relation": p.relation,
                            "method": p.method,
                            "weight": p.weight,
                            "seed": p.seed,
                            "params": _jsonable(dict(p.params)),
                        }
                        for p, pv in zip(parents, parent_versions, strict=True)
                    ],
                )
            _journal(
                session,
                actor=actor,
                kind="version.registered",
                subject=f"{name}@{number}",
                adapter_id=adapter_id,
                version_id=vid,
                payload={
                    "content_sha256": content_sha,
                    "weights_sha256": weights_sha,
                    "source": source,
                },
            )
        logger.info("registered %s@%d", name, number)
        return RegisterResult(
            name=name,
            version=number,
            version_id=vid,
            created=True,
            status="ready",
            content_sha256=content_sha,
            weights_sha256=weights_sha,
            findings=findings,
        )

    def _insert_adapter_if_missing(
        self, session: Session, *, name: str, now: dt.datetime, description: str, actor: str
    ) -> bool:
        taken = session.scalar(
            select(Adapter.name).where(func.lower(Adapter.name) == name.lower(), Adapter.name != name)
        )
        if taken is not None:
            raise ConflictError(
                f"adapter name {name!r} differs only in case from the registered {taken!r}; "
                f"names are unique regardless of case — register it as {taken!r} or pick another name"
            )
        values = {
            "name": name,
            "description": description,
            "last_version": 0,
            "created_at": now,
            "created_by": actor,
        }
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        dialect_insert = sqlite_insert if is_sqlite(self.engine) else pg_insert
        # RETURNING says whether a row was inserted: psycopg reports rowcount -1 for an INSERT
        # ... ON CONFLICT DO NOTHING, which journaled "adapter.created" for every version.
        inserted = session.execute(
            dialect_insert(Adapter)  # type: ignore[operator]
            .values(**values)
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(Adapter.id)
        ).first()
        return inserted is not None

    def _attach_to_existing(
        self,
        session: Session,
        adapter: Adapter,
        version: AdapterVersion,
        *,
        evals: Sequence[EvalInput],
        tags: Mapping[str, str],
        description: str,
        parents: Sequence[ParentInput],
        findings: list[dict[str, Any]],
        content_sha: str,
        now: dt.datetime,
        actor: str,
    ) -> RegisterResult:
        """The register of content ``version`` already holds: attach what is new, journal it."""
        ref = f"{adapter.name}@{version.version}"
        logger.info("%s already holds this content", ref)
        self._lock_version(session, version.id)
        if parents:
            recorded = set(
                session.execute(
                    select(LineageEdge.parent_version_id, LineageEdge.relation).where(
                        LineageEdge.child_version_id == version.id
                    )
                ).all()
            )
            for parent in parents:
                _, pv = self._resolve(session, parent.ref)
                if (pv.id, parent.relation) not in recorded:
                    raise ConflictError(
                        f"identical content is already registered as {ref}, which has no parent "
                        f"{parent.ref!r} ({parent.relation}); the lineage of a registered version "
                        "cannot change — register without that parent, or register the new "
                        "content under another name"
                    )
        new_tags = self._upsert_tags(session, version.id, tags)
        eval_ids = self._attach_evals(session, version.id, evals, now=now, actor=actor)
        new_description = description if description and description != version.description else None
        if new_description is not None:
            version.description = new_description
            session.flush()
        attached_evals = [r for r in self._evals(session, version.id) if r.id in set(eval_ids)]
        if attached_evals or new_tags or new_description is not None:
            self._journal_version(
                session,
                adapter,
                version,
                kind="version.facts_attached",
                actor=actor,
                payload={
                    "evals": [
                        {"metric": e.metric, "value": e.value, "dataset": e.dataset, "split": e.split}
                        for e in attached_evals
                    ],
                    "tags": new_tags,
                    "description": new_description,
                },
            )
        return RegisterResult(
            name=adapter.name,
            version=version.version,
            version_id=version.id,
            created=False,
            status=version.status,
            content_sha256=content_sha,
            weights_sha256=version.weights_sha256,
            findings=findings,
            attached_evals=attached_evals,
            attached_tags=new_tags,
            attached_description=new_description,
        )

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
            stmt, _keys, metric_names = built_search(query, directions=directions)
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

    def show(self, ref: str) -> VersionDetail:
        """Everything about one version: summary, files, tags, evals, aliases, base."""
        with self._read() as session:
            adapter, v = self._resolve(session, ref, allow_deleted=True)
            return self._detail(session, adapter, v)

    def show_with_lineage(self, ref: str) -> tuple[VersionDetail, LineageView]:
        """:meth:`show` and :meth:`~registry.lineage.LineageMixin.lineage` of one version, read
        in one transaction with one resolution of ``ref`` (what the API's version record is)."""
        with self._read() as session:
            adapter, v = self._resolve(session, ref, allow_deleted=True)
            return self._detail(session, adapter, v), lineage_of(session, adapter, v)

    def _detail(self, session: Session, adapter: Adapter, v: AdapterVersion) -> VersionDetail:
        """The record of the resolved version ``v`` of ``adapter``, read in ``session``."""
        files = [
            FileRow(path=path, sha256=sha256, size=size)
            for path, sha256, size in session.execute(_FILES_OF_VERSION, {"version_id": v.id})
        ]
        tags = self._tags_of(session, v.id)
        evals = self._evals(session, v.id)
        aliases = self._aliases_of(session, [v.id]).get(v.id, [])
        latest = session.scalar(_LATEST_READY_NUMBER, {"adapter_id": adapter.id})
        base = None
        if v.base_model_id is not None:
            row = session.execute(_BASE_SUMMARY, {"base_id": v.base_model_id}).one_or_none()
            if row is not None:
                base = {"name": row[0], "fingerprint": row[1], "architectures": row[2]}
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
