"""Use cases of the registry, one transaction each, the journal event in the same transaction.

:class:`Registry` is the one core object the CLI and the API call. It is built from a
:class:`~registry.settings.Settings` (made at the edge) and holds the engine and the blob store.

Register writes the blobs first (temp + fsync + rename), then commits the version, its files,
tags, evals, lineage and journal entry in one transaction. Version numbers come from a counter
row (``adapters.last_version``) incremented in that same transaction, so a register killed at
any point leaves no version behind and numbers stay consecutive; the unique constraints on
``(adapter_id, version)`` and ``(adapter_id, content_sha256)`` are the backstop (roll back, retry).

The use cases are grouped by concern: :mod:`registry.core` (transactions, resolution, journal),
:mod:`registry.bases`, :mod:`registry.queries`, :mod:`registry.lineage`, :mod:`registry.folders`,
:mod:`registry.maintenance`; register, evals, tags and aliases live here. Records are in
:mod:`registry.records`, input parsing in :mod:`registry.inputs`: import them from there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from mergetools.errors import ConflictError, InvalidInputError, NotFoundError
from registry.bases import BasesMixin
from registry.blobstore import Progress, offset_progress
from registry.core import journal
from registry.db import is_sqlite
from registry.errors import AliasMovedError
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
    check_alias,
    check_eval,
    check_name,
    check_tag,
    check_text,
)
from registry.lineage import LineageMixin
from registry.maintenance import MaintenanceMixin
from registry.metrics import MetricsMixin
from registry.models import (
    LINEAGE_RELATIONS,
    Adapter,
    AdapterVersion,
    Alias,
    AliasMove,
    EvalScore,
    LineageEdge,
    Tag,
    VersionFile,
    VersionModule,
    utcnow,
)
from registry.queries import QueriesMixin
from registry.records import (
    AliasMoveRow,
    EvalRow,
    RegisterResult,
    _jsonable,
)
from registry.tokens import TokensMixin
from registry.uploads import UploadsMixin

__all__ = ["REGISTER_ATTEMPTS", "UNCONDITIONAL", "Registry", "Unconditional"]

logger = logging.getLogger(__name__)

REGISTER_ATTEMPTS = 8


class Unconditional:
    """The type of :data:`UNCONDITIONAL`: an alias move that checks nothing."""

    def __repr__(self) -> str:
        return "UNCONDITIONAL"


UNCONDITIONAL = Unconditional()

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


class Registry(
    BasesMixin,
    QueriesMixin,
    LineageMixin,
    FoldersMixin,
    MaintenanceMixin,
    MetricsMixin,
    TokensMixin,
    UploadsMixin,
):
    """The registry's use cases over one database and one blob store."""

    # -------------------------------------------------------------------- register

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

            resolved_base = resolve_base_ref(self, base)
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
    ) -> RegisterResult:
        now = utcnow()
        with self._write() as session:
            created_adapter = self._insert_adapter_if_missing(
                session, name=name, now=now, description=description
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
                    actor=self.actor,
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
            base_model_id = self._ensure_base(session, base_info, now=now) if base_info else None
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
                created_by=self.actor,
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
            self._attach_evals(session, vid, evals, now=now)
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
                actor=self.actor,
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
        self, session: Session, *, name: str, now: dt.datetime, description: str
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
            "created_by": self.actor,
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

    def _eval_row(self, version_id: int, spec: EvalInput, now: dt.datetime) -> dict[str, Any]:
        check_eval(spec)
        return {
            "version_id": version_id,
            "metric": spec.metric,
            "value": float(spec.value),
            "dataset": spec.dataset,
            "split": spec.split,
            "recorded_at": now,
            "recorded_by": self.actor,
        }

    def _lock_version(self, session: Session, version_id: int) -> None:
        """Lock a version's row until commit (PostgreSQL; SQLite holds the write lock already),
        so writers that read its evals or tags before adding to them go one at a time."""
        if not is_sqlite(self.engine):
            session.execute(
                select(AdapterVersion.id).where(AdapterVersion.id == version_id).with_for_update()
            )

    def _attach_evals(
        self, session: Session, version_id: int, evals: Sequence[EvalInput], *, now: dt.datetime
    ) -> list[int]:
        """Record the evals of ``evals`` the version does not have yet; return the new rows' ids.

        An eval is the same as a recorded one when metric, value, dataset and split are equal,
        so repeating a call (a retried request) records nothing twice. The caller holds the
        version's lock (:meth:`_lock_version`) or created the version in this transaction.
        """
        if not evals:
            return []
        seen = {
            (m, float(val), d, sp)
            for m, val, d, sp in session.execute(
                select(
                    EvalScore.metric, EvalScore.value, EvalScore.dataset, EvalScore.split
                ).where(EvalScore.version_id == version_id)
            )
        }
        scores = []
        for spec in evals:
            row = self._eval_row(version_id, spec, now)
            key = (row["metric"], row["value"], row["dataset"], row["split"])
            if key in seen:
                continue
            seen.add(key)
            scores.append(EvalScore(**row))
        if scores:
            session.add_all(scores)
            session.flush()
        return [score.id for score in scores]

    def _upsert_tags(
        self, session: Session, version_id: int, tags: Mapping[str, str]
    ) -> dict[str, str]:
        """Set ``tags`` on the version (a new value replaces the key's old one); return the
        tags that were added or changed (unchanged ones are left alone)."""
        if not tags:
            return {}
        current = self._tags_of(session, version_id)
        changed = {k: v for k, v in sorted(tags.items()) if current.get(k) != v}
        new = [{"version_id": version_id, "key": k, "value": v} for k, v in changed.items() if k not in current]
        if new:
            session.execute(insert(Tag), new)
        for key, value in changed.items():
            if key in current:
                session.execute(
                    update(Tag)
                    .where(Tag.version_id == version_id, Tag.key == key)
                    .values(value=value)
                )
        return changed

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
        eval_ids = self._attach_evals(session, version.id, evals, now=now)
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

    # -------------------------------------------------------------------- write use cases

    def add_evals(self, ref: str, evals: Sequence[EvalInput]) -> list[EvalRow]:
        """Record eval scores for a version; returns the rows recorded.

        Scores the version already has (same metric, value, dataset and split) are not recorded
        again, so the result lists only new rows (empty when every score was known).
        """
        if not evals:
            raise InvalidInputError(
                "no eval score given; expected METRIC=VALUE[,dataset=D][,split=S]"
            )
        now = utcnow()
        with self._write() as session:
            adapter, v = self._resolve(session, ref)
            self._lock_version(session, v.id)
            ids = set(self._attach_evals(session, v.id, evals, now=now))
            added = [r for r in self._evals(session, v.id) if r.id in ids]
            if added:
                self._journal_version(
                    session,
                    adapter,
                    v,
                    kind="eval.added",
                    payload={
                        "evals": [
                            {"metric": e.metric, "value": e.value, "dataset": e.dataset, "split": e.split}
                            for e in added
                        ]
                    },
                )
            return added

    def set_tags(
        self, ref: str, *, set_tags: Mapping[str, str] | None = None, remove: Sequence[str] = ()
    ) -> dict[str, str]:
        """Set and remove tags of a version; returns its tags afterwards."""
        for key, value in (set_tags or {}).items():
            check_tag(key, value)
        with self._write() as session:
            adapter, v = self._resolve(session, ref)
            self._lock_version(session, v.id)
            for key in remove:
                session.execute(delete(Tag).where(Tag.version_id == v.id, Tag.key == key))
            self._upsert_tags(session, v.id, set_tags or {})
            self._journal_version(
                session,
                adapter,
                v,
                kind="tags.changed",
                payload={"set": dict(set_tags or {}), "removed": list(remove)},
            )
            return self._tags_of(session, v.id)

    def set_alias(
        self, ref: str, alias: str, *, expected_version: int | None | Unconditional = UNCONDITIONAL
    ) -> AliasMoveRow:
        """Point ``alias`` of the referenced adapter at that version (recorded in the history).

        ``expected_version`` makes the move a compare-and-swap, checked in the same transaction
        with the adapter row locked: the alias must point at that version number (``None``: the
        alias must be unset), else :class:`AliasMovedError` and nothing changes. Left out, the
        move is unconditional.
        """
        check_alias(alias)
        now = utcnow()
        with self._write() as session:
            adapter, v = self._resolve(session, ref)
            # Lock the adapter row: a first-time alias has no row of its own to lock yet.
            self._adapter(session, adapter.name, lock=True)
            if v.status != "ready":
                raise ConflictError(
                    f"{adapter.name}@{v.version} is {v.status} ({v.status_reason}); an alias can "
                    "only point at a ready version"
                )
            stmt = select(Alias).where(Alias.adapter_id == adapter.id, Alias.name == alias)
            if not is_sqlite(self.engine):
                stmt = stmt.with_for_update()
            current = session.scalars(stmt).one_or_none()
            from_id = current.version_id if current else None
            if not isinstance(expected_version, Unconditional):
                current_number = (
                    session.scalar(
                        select(AdapterVersion.version).where(AdapterVersion.id == from_id)
                    )
                    if from_id
                    else None
                )
                if current_number != expected_version:
                    expected = "unset" if expected_version is None else f"@{expected_version}"
                    now_at = "is unset" if current_number is None else f"points at @{current_number}"
                    raise AliasMovedError(
                        f"alias {adapter.name}@{alias} {now_at}, not {expected} as expected; "
                        "it was moved meanwhile — read it again and retry",
                        adapter=adapter.name,
                        alias=alias,
                        expected_version=expected_version,
                        current_version=current_number,
                    )
            if current is None:
                session.add(
                    Alias(
                        adapter_id=adapter.id,
                        name=alias,
                        version_id=v.id,
                        updated_at=now,
                        updated_by=self.actor,
                    )
                )
            else:
                current.version_id, current.updated_at, current.updated_by = v.id, now, self.actor
            session.add(
                AliasMove(
                    adapter_id=adapter.id,
                    alias=alias,
                    from_version_id=from_id,
                    to_version_id=v.id,
                    moved_at=now,
                    moved_by=self.actor,
                )
            )
            from_number = (
                session.scalar(select(AdapterVersion.version).where(AdapterVersion.id == from_id))
                if from_id
                else None
            )
            _journal(
                session,
                actor=self.actor,
                kind="alias.set",
                subject=f"{adapter.name}@{alias}",
                adapter_id=adapter.id,
                version_id=v.id,
                payload={"alias": alias, "from": from_number, "to": v.version},
            )
        return AliasMoveRow(
            alias=alias,
            from_version=from_number,
            to_version=v.version,
            moved_at=now,
            moved_by=self.actor,
        )

    def remove_alias(self, name: str, alias: str) -> AliasMoveRow:
        now = utcnow()
        with self._write() as session:
            adapter = self._adapter(session, name, lock=True)
            current = session.scalars(
                select(Alias).where(Alias.adapter_id == adapter.id, Alias.name == alias)
            ).one_or_none()
            if current is None:
                raise NotFoundError(
                    f"adapter {name!r} has no alias {alias!r}",
                    fields={"adapter": name, "alias": alias},
                    hint="the alias's history shows where it pointed",
                    hint_action="alias_history",
                )
            from_number = session.scalar(
                select(AdapterVersion.version).where(AdapterVersion.id == current.version_id)
            )
            session.add(
                AliasMove(
                    adapter_id=adapter.id,
                    alias=alias,
                    from_version_id=current.version_id,
                    to_version_id=None,
                    moved_at=now,
                    moved_by=self.actor,
                )
            )
            session.delete(current)
            _journal(
                session,
                actor=self.actor,
                kind="alias.removed",
                subject=f"{name}@{alias}",
                adapter_id=adapter.id,
                payload={"alias": alias, "from": from_number},
            )
        return AliasMoveRow(
            alias=alias,
            from_version=from_number,
            to_version=None,
            moved_at=now,
            moved_by=self.actor,
        )
