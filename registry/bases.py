"""Base models: fingerprint and register base checkpoints, match adapters to them."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mergetools.errors import (
    ConflictError,
    IncompatibleError,
    InvalidInputError,
    LoradexError,
    NotFoundError,
)
from mergetools.files import read_json_object
from mergetools.folder import Folder
from registry.core import RegistryCore, journal
from registry.inputs import (
    SOURCE_REPO_MAX,
    SOURCE_REVISION_MAX,
    check_name,
    check_text,
    parse_sha256_prefix,
)
from registry.models import BaseModel, utcnow
from registry.records import BaseRow, _jsonable

logger = logging.getLogger(__name__)

NAME_MAX = 200  # the base_models.name column (registry.models.NAME)


class BasesMixin(RegistryCore):
    """Use cases and helpers about base models."""

    def _base_facts(self, path: Path, *, known_id: int | None = None) -> dict[str, Any]:
        """Fingerprint and signature of the base folder at ``path`` (or its registered row)."""
        if known_id is not None:
            with self._read() as session:
                row = session.get(BaseModel, known_id)
                assert row is not None
                return {"id": row.id, "fingerprint": row.fingerprint, "name": row.name}
        from mergetools.fingerprint import fingerprint_checkpoint
        from mergetools.signature import read_signature

        fingerprint = fingerprint_checkpoint(path, cache_dir=self.settings.cache_dir)
        signature = read_signature(path)
        return {
            "fingerprint": fingerprint,
            "signature": _jsonable(signature),
            "architectures": [str(a) for a in signature.get("architectures") or []],  # type: ignore[attr-defined]
            "name": _base_name_for(path),
            "source_path": str(path.resolve()),
        }

    def _check_adapter(self, adapter: Path, base: Path | None) -> list[dict[str, Any]]:
        """``mergetools.check`` on the adapter (against ``base`` when given).

        Error findings refuse the register (:class:`IncompatibleError`); warnings and notes are
        returned so the shells can show them.
        """
        from mergetools.check import check_adapters

        report = check_adapters([adapter], base=base, cache_dir=self.settings.cache_dir)
        errors = [f.message for f in report.errors]
        if errors:
            against = f" against base {str(base)!r}" if base is not None else ""
            raise IncompatibleError(
                f"adapter {str(adapter)!r} failed its check{against}: "
                + "; ".join(errors)
                + " — fix the adapter or pick the base it was trained on"
            )
        return [f.to_dict() for f in report.findings]

    def _ensure_base(self, session: Session, info: dict[str, Any], *, now: dt.datetime) -> int:
        if "id" in info:
            return int(info["id"])
        existing = session.scalars(
            select(BaseModel.id).where(BaseModel.fingerprint == info["fingerprint"])
        ).one_or_none()
        if existing is not None:
            return int(existing)
        name = info["name"]
        if (
            session.scalars(select(BaseModel.id).where(BaseModel.name == name)).one_or_none()
            is not None
        ):
            name = _renamed_base(name, info["fingerprint"])
        base = BaseModel(
            name=name,
            fingerprint=info["fingerprint"],
            architectures=info["architectures"],
            signature=info["signature"],
            source_path=info.get("source_path"),
            source_repo=info.get("source_repo"),
            source_revision=info.get("source_revision"),
            description=info.get("description", ""),
            created_at=now,
            created_by=self.actor,
        )
        session.add(base)
        session.flush()
        journal(
            session,
            actor=self.actor,
            kind="base.added",
            subject=name,
            payload={"fingerprint": info["fingerprint"]},
        )
        return base.id

    @staticmethod
    def _match_base(
        session: Session, fingerprint: str | None, name_or_path: str | None
    ) -> int | None:
        if fingerprint:
            found = session.scalars(
                select(BaseModel.id).where(BaseModel.fingerprint == fingerprint)
            ).one_or_none()
            if found is not None:
                return int(found)
        if name_or_path:
            found = session.scalars(
                select(BaseModel.id).where(BaseModel.name == name_or_path)
            ).one_or_none()
            if found is not None:
                return int(found)
        return None

    def add_base(
        self,
        path: Path,
        *,
        name: str | None = None,
        description: str = "",
        repo: str | None = None,
        revision: str | None = None,
    ) -> BaseRow:
        """Register a base checkpoint folder: fingerprint, structural signature, source."""
        path = Path(path)
        if not path.is_dir():
            raise InvalidInputError(
                f"base path {str(path)!r} is not a folder; expected a Hugging Face checkpoint folder"
            )
        info = self._base_facts(path)
        info["name"] = check_name(name) if name else info["name"]
        if repo is not None:
            check_text(repo, what="base source repo", limit=SOURCE_REPO_MAX)
        if revision is not None:
            check_text(revision, what="base source revision", limit=SOURCE_REVISION_MAX)
        info.update(description=description, source_repo=repo, source_revision=revision)
        with self._write() as session:
            existing = session.scalars(
                select(BaseModel).where(BaseModel.fingerprint == info["fingerprint"])
            ).one_or_none()
            if existing is not None:
                if name and existing.name != name:
                    raise ConflictError(
                        f"base {str(path)!r} has fingerprint {info['fingerprint'][:12]}..., already "
                        f"registered as {existing.name!r}; use that name"
                    )
                return self._base_row(existing)
            if session.scalars(
                select(BaseModel.id).where(BaseModel.name == info["name"])
            ).one_or_none():
                raise ConflictError(
                    f"base name {info['name']!r} is taken by another checkpoint (different "
                    "fingerprint)",
                    fields={"name": info["name"], "fingerprint": info["fingerprint"]},
                    hint="register this checkpoint under another name",
                    hint_action="rename",
                )
            base_id = self._ensure_base(session, info, now=utcnow())
            row = session.get(BaseModel, base_id)
            assert row is not None
            return self._base_row(row)

    @staticmethod
    def _base_row(row: BaseModel, *, with_signature: bool = False) -> BaseRow:
        return BaseRow(
            id=row.id,
            name=row.name,
            fingerprint=row.fingerprint,
            architectures=list(row.architectures or []),
            source_path=row.source_path,
            source_repo=row.source_repo,
            source_revision=row.source_revision,
            description=row.description,
            created_at=row.created_at,
            created_by=row.created_by,
            signature=row.signature if with_signature else None,
        )

    def list_bases(self) -> list[BaseRow]:
        with self._read() as session:
            return [
                self._base_row(r)
                for r in session.scalars(select(BaseModel).order_by(BaseModel.name))
            ]

    def get_base(self, ref: str, *, with_signature: bool = True) -> BaseRow:
        """A registered base by name or by fingerprint (``sha256:<hex>`` prefix or full)."""
        with self._read() as session:
            if ref.startswith("sha256:"):
                prefix = parse_sha256_prefix(
                    ref, what="a base's fingerprint (see `loradex base list`)"
                )
                rows = list(
                    session.scalars(
                        select(BaseModel)
                        .where(BaseModel.fingerprint.startswith(prefix, autoescape=True))
                        .limit(2)
                    )
                )
            else:
                rows = list(session.scalars(select(BaseModel).where(BaseModel.name == ref)))
            if not rows:
                raise NotFoundError(
                    f"base model {ref!r} is not registered; see `loradex base list`, or add it "
                    "with `loradex base add PATH`"
                )
            if len(rows) > 1:
                raise ConflictError(f"base reference {ref!r} is ambiguous; give more hex digits")
            return self._base_row(rows[0], with_signature=with_signature)


def _renamed_base(name: str, fingerprint: str) -> str:
    """``name-<12 hex of fingerprint>`` for a base whose name is taken, within the name limit."""
    suffix = f"-{fingerprint[:12]}"
    return name[: NAME_MAX - len(suffix)].rstrip("-.") + suffix


def _base_name_for(path: Path) -> str:
    """A name for an auto-registered base: config ``_name_or_path`` leaf, else the folder name."""
    name = path.resolve().name
    with contextlib.suppress(LoradexError, OSError, ValueError):
        config = Folder.open(path).file("config.json")
        if config is not None:
            data = read_json_object(config, what="config.json", kind="config")
            candidate = str(data.get("_name_or_path") or "")
            if candidate and not os.path.isabs(candidate):
                name = candidate.replace("/", "--")
    cleaned = re.sub(r"[^A-Za-z0-9._\-]", "-", name).strip("-._") or "base"
    return cleaned[:NAME_MAX]
