"""Base models: fingerprint and register base checkpoints, match adapters to them."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mergetools.errors import (
    ConflictError,
    IncompatibleError,
    InvalidCheckpointError,
    InvalidInputError,
    LoradexError,
    NotFoundError,
)
from mergetools.files import read_json_object
from mergetools.folder import Folder
from registry.blobstore import Progress
from registry.core import RegistryCore, journal
from registry.folders import _folder_matches, build_cache_folder
from registry.inputs import (
    DESCRIPTION_MAX,
    SOURCE_REPO_MAX,
    SOURCE_REVISION_MAX,
    check_name,
    check_text,
    parse_sha256_prefix,
    shown,
)
from registry.models import BaseFile, BaseModel, utcnow
from registry.records import BaseRow, FileRow, _jsonable

logger = logging.getLogger(__name__)

NAME_MAX = 200  # the base_models.name column (registry.models.NAME)
PATH_MAX = 500  # the base_files.path column



class BasesMixin(RegistryCore):
    """Use cases and helpers about base models."""

    def _base_facts(
        self,
        path: Path,
        *,
        known_id: int | None = None,
        progress: Progress | None = None,
        headers_only: bool = False,
    ) -> dict[str, Any]:
        """Fingerprint and signature of the base folder at ``path`` (or its registered row);
        ``progress(done, total)`` follows the bytes fingerprinted (none when cached). With
        ``headers_only`` (a header view of a Hub repo) there is no fingerprint (it needs every
        tensor byte) and no source folder."""
        if known_id is not None:
            with self._read() as session:
                row = session.get(BaseModel, known_id)
                assert row is not None
                return {"id": row.id, "fingerprint": row.fingerprint, "name": row.name}
        from mergetools.fingerprint import fingerprint_checkpoint
        from mergetools.signature import read_signature

        fingerprint = (
            None
            if headers_only
            else fingerprint_checkpoint(path, cache_dir=self.settings.cache_dir, progress=progress)
        )
        signature = read_signature(path)
        return {
            "fingerprint": fingerprint,
            "signature": _jsonable(signature),
            "architectures": [str(a) for a in signature.get("architectures") or []],  # type: ignore[attr-defined]
            "name": _base_name_for(path),
            "source_path": None if headers_only else str(path.resolve()),
        }

    def _check_adapter(self, adapter: Path, base: Path | None) -> list[dict[str, Any]]:
        """:func:`check_adapter_for_register` with this registry's fingerprint cache."""
        return check_adapter_for_register(adapter, base, cache_dir=self.settings.cache_dir)

    def _ensure_base(
        self, session: Session, info: dict[str, Any], *, now: dt.datetime, actor: str
    ) -> int:
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
            created_by=actor,
        )
        session.add(base)
        session.flush()
        journal(
            session,
            actor=actor,
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
        store: bool = False,
        progress: Progress | None = None,
        headers_only: bool = False,
        actor: str | None = None,
    ) -> BaseRow:
        """Register a base checkpoint folder: fingerprint, structural signature, source.

        ``headers_only``: ``path`` is a header view of the Hub repo ``repo`` at commit
        ``revision`` (:func:`registry.hub.base_headers`): the base is registered with its
        signature and source but no fingerprint and no source folder; registering the same
        repo and commit again with its files fills them in.

        ``progress(done, total)`` follows the bytes fingerprinted (none when cached), then the
        bytes stored.

        With ``store``, every file of the folder (weights, index, config, tokenizer, generation
        config; hidden names skipped) is also written to the blob store, streaming, and recorded
        in ``base_files``, so that a machine that never saw the folder can
        :meth:`materialize_base` it. Storing a base registered earlier without its files adds
        them; a base whose files are stored already keeps them.
        """
        actor = self._actor(actor)
        path = Path(path)
        if not path.is_dir():
            raise InvalidInputError(
                f"base path {str(path)!r} is not a folder; expected a Hugging Face checkpoint folder"
            )
        if headers_only and (store or not repo or not revision):
            raise InvalidInputError(
                "a header-only base needs its Hub repo and commit, and has no files to store"
            )
        info = self._base_facts(path, progress=progress, headers_only=headers_only)
        stored = self._store_base_files(path, progress=progress) if store else None
        return self._add_base_info(
            info,
            name=name,
            description=description,
            repo=repo,
            revision=revision,
            stored=stored,
            shown_as=str(path),
            actor=actor,
        )

    def add_base_facts(
        self,
        *,
        name: str | None,
        default_name: str,
        fingerprint: str,
        signature: dict[str, Any],
        source_path: str | None = None,
        description: str = "",
        repo: str | None = None,
        revision: str | None = None,
        files: dict[str, str] | None = None,
        actor: str | None = None,
    ) -> BaseRow:
        """Register a base known by the fingerprint and signature computed where its folder is
        (what :meth:`add_base` computes itself), with optionally its files, already in the blob
        store (relative path -> sha256). The same rules as :meth:`add_base` apply: a known
        fingerprint returns its row (gaining the files when it had none), a taken name is refused.
        ``default_name`` is the name :meth:`add_base` would pick for the folder (used when
        ``name`` is None).
        """
        from registry.blobstore import check_sha256
        from registry.errors import BlobNotUploadedError

        if name is not None:
            check_name(name)
        default_name = re.sub(r"[^A-Za-z0-9._\-]", "-", default_name).strip("-._")[:NAME_MAX] or "base"
        label = name or default_name
        if not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
            raise InvalidInputError(
                f"base fingerprint {shown(fingerprint)} is not a sha256 digest; expected 64 "
                "lowercase hex digits"
            )
        if source_path is not None:
            check_text(source_path, what="base source path", limit=PATH_MAX * 8)
        stored: dict[str, tuple[str, int]] | None = None
        if files is not None:
            if not files:
                raise InvalidCheckpointError(f"base {label!r}: no files given to store")
            stored = {}
            missing: dict[str, str] = {}
            for rel, sha in sorted(files.items()):
                check_sha256(sha)
                if len(rel) > PATH_MAX or not rel or rel.startswith("/") or ".." in rel.split("/"):
                    raise InvalidCheckpointError(
                        f"base {label!r}: file path {rel[:80]!r} is not a relative path of at "
                        f"most {PATH_MAX} characters"
                    )
                size = self.blobs.size_of(sha)
                if size is None:
                    missing[rel] = sha
                else:
                    stored[rel] = (sha, size)
            if missing:
                listed = ", ".join(f"{f} ({sha})" for f, sha in missing.items())
                raise BlobNotUploadedError(
                    f"{len(missing)} file(s) of base {label!r} name blobs that were not uploaded: "
                    f"{listed}; upload them first",
                    missing=missing,
                )
        architectures = signature.get("architectures") or []
        info: dict[str, Any] = {
            "fingerprint": fingerprint,
            "signature": _jsonable(signature),
            "architectures": [str(a) for a in architectures] if isinstance(architectures, list) else [],
            "name": default_name,
            "source_path": source_path,
        }
        return self._add_base_info(
            info,
            name=name,
            description=description,
            repo=repo,
            revision=revision,
            stored=stored,
            shown_as=source_path or label,
            actor=self._actor(actor),
        )

    def _add_base_info(
        self,
        info: dict[str, Any],
        *,
        name: str | None,
        description: str,
        repo: str | None,
        revision: str | None,
        stored: dict[str, tuple[str, int]] | None,
        shown_as: str,
        actor: str,
    ) -> BaseRow:
        info["name"] = check_name(name) if name else info["name"]
        check_text(description, what="description", limit=DESCRIPTION_MAX, empty_ok=True, multiline=True)
        if repo is not None:
            check_text(repo, what="base source repo", limit=SOURCE_REPO_MAX)
        if revision is not None:
            check_text(revision, what="base source revision", limit=SOURCE_REVISION_MAX)
        info.update(description=description, source_repo=repo, source_revision=revision)
        with self._write() as session:
            existing = None
            if info["fingerprint"] is not None:
                existing = session.scalars(
                    select(BaseModel).where(BaseModel.fingerprint == info["fingerprint"])
                ).one_or_none()
            if existing is None and repo is not None and revision is not None:
                existing = self._header_only_base(session, repo, revision, info, actor=actor)
            if existing is not None:
                if name and existing.name != name:
                    same = (
                        f"fingerprint {info['fingerprint'][:12]}..."
                        if info["fingerprint"] is not None
                        else f"source {repo}@{revision}"
                    )
                    raise ConflictError(
                        f"base {shown_as!r} has {same}, already registered as "
                        f"{existing.name!r}; use that name"
                    )
                if stored is not None:
                    self._record_base_files(session, existing, stored, actor=actor)
                return self._base_row(existing, stored=self._stored_size(session, existing.id))
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
            base_id = self._ensure_base(session, info, now=utcnow(), actor=actor)
            row = session.get(BaseModel, base_id)
            assert row is not None
            if stored is not None:
                self._record_base_files(session, row, stored, actor=actor)
            return self._base_row(row, stored=self._stored_size(session, row.id))

    def _header_only_base(
        self,
        session: Session,
        repo: str,
        revision: str,
        info: dict[str, Any],
        *,
        actor: str,
    ) -> BaseModel | None:
        """The base registered from ``repo`` at ``revision`` before, for a registration of the
        same: a header-only one (``info`` without a fingerprint) is that base; one with the
        fingerprint of its files gives it to a base registered from the headers only."""
        row = session.scalars(
            select(BaseModel)
            .where(BaseModel.source_repo == repo, BaseModel.source_revision == revision)
            .order_by(BaseModel.fingerprint.is_(None), BaseModel.id)
            .limit(1)
        ).one_or_none()
        if row is None or info["fingerprint"] is None:
            return row
        if row.fingerprint is not None:
            return None  # other bytes under the same source: the fingerprint decides
        row.fingerprint = info["fingerprint"]
        row.signature = info["signature"]
        row.source_path = info["source_path"]
        session.flush()
        journal(
            session,
            actor=actor,
            kind="base.fingerprinted",
            subject=row.name,
            payload={"fingerprint": row.fingerprint, "repo": repo, "revision": revision},
        )
        return row

    def _store_base_files(
        self, path: Path, *, progress: Progress | None
    ) -> dict[str, tuple[str, int]]:
        """Write every file of the base folder to the blob store; ``{rel: (sha256, size)}``."""
        files = Folder.open(path, error=InvalidCheckpointError).walk()
        if not files:
            raise InvalidCheckpointError(f"base folder {str(path)!r} has no files to store")
        too_long = [rel for rel, _ in files if len(rel) > PATH_MAX]
        if too_long:
            raise InvalidCheckpointError(
                f"base folder {str(path)!r}: file path {too_long[0][:80]!r}... is longer than "
                f"{PATH_MAX} characters; expected the files of a Hugging Face checkpoint",
                fields={"path": str(path), "file": too_long[0], "limit": PATH_MAX},
            )
        total = sum(file.stat().st_size for _, file in files)
        done = 0
        stored: dict[str, tuple[str, int]] = {}
        for rel, file in files:
            blob = self.blobs.put_file(file)
            stored[rel] = (blob.sha256, blob.size)
            done += blob.size
            if progress is not None:
                progress(done, max(total, done))
        logger.info("stored %d files (%d bytes) of base %s", len(stored), done, path)
        return stored

    def _record_base_files(
        self,
        session: Session,
        row: BaseModel,
        stored: dict[str, tuple[str, int]],
        *,
        actor: str,
    ) -> None:
        if session.scalar(select(BaseFile.path).where(BaseFile.base_id == row.id).limit(1)):
            logger.info("base %s has its files stored already; keeping them", row.name)
            return
        session.add_all(
            BaseFile(base_id=row.id, path=rel, sha256=sha, size=size)
            for rel, (sha, size) in sorted(stored.items())
        )
        session.flush()
        journal(
            session,
            actor=actor,
            kind="base.stored",
            subject=row.name,
            payload={"fingerprint": row.fingerprint, "files": len(stored)},
        )

    @staticmethod
    def _stored_size(session: Session, base_id: int) -> tuple[int, int]:
        """(number of stored files, their total size) of a base."""
        count, size = session.execute(
            select(func.count(), func.coalesce(func.sum(BaseFile.size), 0)).where(
                BaseFile.base_id == base_id
            )
        ).one()
        return int(count), int(size)

    def _base_files(self, session: Session, base_id: int) -> dict[str, tuple[str, int]]:
        return {
            f.path: (f.sha256, f.size)
            for f in session.scalars(select(BaseFile).where(BaseFile.base_id == base_id))
        }

    def base_files(self, ref: str) -> list[FileRow]:
        """The stored files of base ``ref`` (empty when its files are not stored)."""
        base = self.get_base(ref, with_signature=False)
        with self._read() as session:
            files = self._base_files(session, base.id)
        return [FileRow(path=rel, sha256=sha, size=size) for rel, (sha, size) in sorted(files.items())]

    def read_base_file(self, ref: str, path: str) -> tuple[FileRow, Iterator[bytes]]:
        """The stored file ``path`` of base ``ref`` and its bytes, verified (never from a
        corrupt blob; see :meth:`registry.blobstore.LocalBlobStore.read_verified`)."""
        rows = self.base_files(ref)
        row = next((r for r in rows if r.path == path), None)
        if row is None:
            raise NotFoundError(
                f"base model {shown(ref)} has no stored file {shown(path)}"
                + ("" if rows else "; its files are not stored")
            )
        return row, self.blobs.read_verified(row.sha256, size=row.size)

    def materialize_base(self, ref: str, *, progress: Progress | None = None) -> Path:
        """A local folder with the stored files of base ``ref``, built once and reused.

        The folder is ``$LORADEX_HOME/cache/bases/<fingerprint>/``: built beside its target from
        verified blobs (sha256 checked while copying, streaming), fsynced and renamed into place,
        so it is whole or absent. Reuse checks the file list and sizes against a manifest written
        when it was built (``<fingerprint>.files.json`` beside it) and re-hashes every file when
        that manifest is missing or disagrees; a tampered folder is rebuilt.
        """
        base = self.get_base(ref, with_signature=False)
        with self._read() as session:
            files = self._base_files(session, base.id)
        if not files:
            raise NotFoundError(
                f"base model {base.name!r} is registered but its files are not stored in the blob "
                f"store at {self._blob_location()}",
                fields={"base": base.name, "fingerprint": base.fingerprint},
                hint="store the base from a machine that has its folder",
                hint_action="store_base",
            )
        key = base.fingerprint or f"id-{base.id}"
        root = self.settings.cache_dir / "bases"
        target = root / key
        manifest = root / f"{key}.files.json"
        if target.is_dir() and _manifest_matches(target, manifest, files):
            return target
        if target.is_dir() and _folder_matches(target, files):
            _write_manifest(target, manifest, files)
            return target
        tampered = target.is_dir()
        if tampered:
            logger.warning("cached base folder %s does not match its files; rebuilding", target)
        build_cache_folder(self.blobs, root, target, files, replace=tampered, progress=progress)
        _write_manifest(target, manifest, files)
        logger.info("materialised base %s (%d files) at %s", base.name, len(files), target)
        return target

    @staticmethod
    def _base_row(
        row: BaseModel, *, with_signature: bool = False, stored: tuple[int, int] = (0, 0)
    ) -> BaseRow:
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
            stored_files=stored[0],
            stored_bytes=stored[1],
        )

    def list_bases(self) -> list[BaseRow]:
        with self._read() as session:
            sizes = {
                int(base_id): (int(count), int(size))
                for base_id, count, size in session.execute(
                    select(BaseFile.base_id, func.count(), func.sum(BaseFile.size)).group_by(
                        BaseFile.base_id
                    )
                )
            }
            return [
                self._base_row(r, stored=sizes.get(r.id, (0, 0)))
                for r in session.scalars(select(BaseModel).order_by(BaseModel.name))
            ]

    def get_base(self, ref: str, *, with_signature: bool = True) -> BaseRow:
        """A registered base by name or by fingerprint (``sha256:<hex>`` prefix or full)."""
        with self._read() as session:
            if ref.startswith("sha256:"):
                prefix = parse_sha256_prefix(
                    ref, what="a base's fingerprint"
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
                    f"base model {shown(ref)} is not registered",
                    fields={"base": ref},
                    hint="list the registered bases, or add this one from its folder",
                    hint_action="base_add",
                )
            if len(rows) > 1:
                raise ConflictError(f"base reference {shown(ref)} is ambiguous; give more hex digits")
            return self._base_row(
                rows[0],
                with_signature=with_signature,
                stored=self._stored_size(session, rows[0].id),
            )


def check_adapter_for_register(
    adapter: Path, base: Path | None, *, cache_dir: Path
) -> list[dict[str, Any]]:
    """``mergetools.check`` on the adapter (against ``base`` when given), as a register runs it.

    Error findings refuse the register (:class:`IncompatibleError`); warnings and notes are
    returned so the shells can show them.
    """
    from mergetools.check import check_adapters

    report = check_adapters([adapter], base=base, cache_dir=cache_dir)
    errors = [f.message for f in report.errors]
    if errors:
        against = f" against base {str(base)!r}" if base is not None else ""
        refusal = IncompatibleError(
            f"adapter {str(adapter)!r} failed its check{against}: "
            + "; ".join(errors)
            + " — fix the adapter or pick the base it was trained on"
        )
        refusal.findings = [f.to_dict() for f in report.findings]  # type: ignore[attr-defined]
        raise refusal
    return [f.to_dict() for f in report.findings]


def _file_state(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _manifest_matches(folder: Path, manifest: Path, files: dict[str, tuple[str, int]]) -> bool:
    """Whether the folder still holds the files recorded (sha256, size, mtime, inode) when it was
    built; any doubt (no manifest, another file list, a changed file) says no."""
    try:
        recorded = json.loads(manifest.read_text())
        if {rel: entry[0] for rel, entry in recorded.items()} != {
            rel: sha for rel, (sha, _) in files.items()
        }:
            return False
        present = {rel for rel, _ in Folder.open(folder).walk()}
        return present == set(files) and all(
            _file_state(folder / rel) == recorded[rel][1:] and recorded[rel][1] == files[rel][1]
            for rel in files
        )
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, LoradexError):
        return False


def _write_manifest(folder: Path, manifest: Path, files: dict[str, tuple[str, int]]) -> None:
    """Record what the verified folder holds, beside it (temp then rename)."""
    data = {rel: [sha, *_file_state(folder / rel)] for rel, (sha, _) in sorted(files.items())}
    tmp = manifest.with_name(f".{manifest.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, manifest)


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
