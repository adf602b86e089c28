"""Lifecycle and upkeep: yank, unyank, delete (purge), verify stored blobs, gc."""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import time
from typing import Any

from sqlalchemy import delete, select

from mergetools.errors import ConflictError, InvalidInputError, JSONValue
from mergetools.outdir import Leftover, clean_leftovers
from registry.blobstore import LocalBlobStore, Progress
from registry.core import RegistryCore
from registry.inputs import REASON_MAX, check_text
from registry.models import Adapter, AdapterVersion, Alias, BaseFile, VersionFile
from registry.records import GcResult, VersionKey

TMP_MIN_AGE_S = 3600
"""Unowned temp files (older versions named none) younger than this are never collected."""

logger = logging.getLogger(__name__)

DEFAULT_GC_GRACE_S = 3600.0


class MaintenanceMixin(RegistryCore):
    """Use cases that change a version's status or the blob store."""

    def yank(self, ref: str, *, reason: str, actor: str | None = None) -> VersionKey:
        """Hide a version from ``latest`` and aliases; it stays fetchable as ``NAME@N``."""
        if not reason.strip():
            raise InvalidInputError(
                "yank needs a reason, e.g. 'regressed on mmlu'",
                fields={"ref": ref, "missing": "reason"},
                hint="give the reason the version is hidden",
            )
        check_text(reason, what="yank reason", limit=REASON_MAX)
        return self._set_status(
            ref,
            status="yanked",
            reason=reason,
            expect=("ready", "yanked"),
            kind="version.yanked",
            actor=self._actor(actor),
        )

    def unyank(self, ref: str, *, actor: str | None = None) -> VersionKey:
        """Make a yanked version ready again."""
        return self._set_status(
            ref,
            status="ready",
            reason=None,
            expect=("yanked",),
            kind="version.unyanked",
            actor=self._actor(actor),
        )

    def _set_status(
        self,
        ref: str,
        *,
        status: str,
        reason: str | None,
        expect: tuple[str, ...],
        kind: str,
        actor: str,
    ) -> VersionKey:
        with self._write() as session:
            adapter, v = self._resolve(session, ref)
            if v.status not in expect:
                raise ConflictError(
                    f"{adapter.name}@{v.version} is {v.status}; expected {' or '.join(expect)}"
                )
            v.status, v.status_reason = status, reason
            session.flush()
            self._journal_version(
                session, adapter, v, kind=kind, payload={"reason": reason}, actor=actor
            )
            return self._key(adapter, v)

    def delete(self, ref: str, *, purge: bool, actor: str | None = None) -> VersionKey:
        """Delete a version and purge its files; its number stays retired."""
        actor = self._actor(actor)
        if not purge:
            raise InvalidInputError(
                f"delete of {ref!r} was not confirmed: it removes the version's files for good",
                fields={"ref": ref, "missing": "purge"},
                hint="confirm the purge, or yank the version instead to hide it and keep the files",
                hint_action="purge",
            )
        with self._write() as session:
            adapter, v = self._resolve(session, ref)
            aliases = list(session.scalars(select(Alias.name).where(Alias.version_id == v.id)))
            if aliases:
                raise ConflictError(
                    f"{adapter.name}@{v.version} is the target of alias(es) {', '.join(aliases)}; "
                    "move or remove them first",
                    fields={
                        "adapter": adapter.name,
                        "version": v.version,
                        "aliases": list[JSONValue](aliases),
                    },
                    hint_action="alias_rm",
                )
            shas = list(
                session.scalars(select(VersionFile.sha256).where(VersionFile.version_id == v.id))
            )
            session.execute(delete(VersionFile).where(VersionFile.version_id == v.id))
            v.status, v.status_reason, v.content_sha256 = "deleted", "purged", None
            session.flush()
            self._journal_version(
                session, adapter, v, kind="version.deleted", payload={"blobs": shas}, actor=actor
            )
            key = self._key(adapter, v)
        for sha in set(shas):
            self.blobs.delete_unless(sha, keep=functools.partial(self._blob_referenced, sha))
        return key

    def _clean_cache_tmp(self, *, older_than_s: float, dry_run: bool) -> list[Leftover]:
        """Temp folders of killed writers under the cache — materialisations in ``cache/versions``
        and ``cache/bases``, algebra results in ``cache/algebra`` — once their recorded owner is dead; unowned
        ones left by older versions in ``cache/versions`` once past the age."""
        found: list[Leftover] = []
        for scratch in ("algebra", "uploads"):  # results being registered, uploads being checked
            folder = self.settings.cache_dir / scratch
            if folder.is_dir():
                found.extend(clean_leftovers(folder, dry_run=dry_run))
        versions = self.settings.cache_dir / "versions"
        bases = self.settings.cache_dir / "bases"
        if bases.is_dir():
            found.extend(clean_leftovers(bases, dry_run=dry_run))
        if not versions.is_dir():
            return found
        found.extend(clean_leftovers(versions, dry_run=dry_run))
        cutoff = time.time() - older_than_s
        for entry in sorted(versions.glob(".tmp-*")):
            with contextlib.suppress(OSError):
                if entry.is_symlink() or entry.lstat().st_mtime >= cutoff:
                    continue
                size = sum(f.lstat().st_size for f in entry.rglob("*") if f.is_file())
                if not dry_run:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                found.append(
                    Leftover(entry, size, "unowned, stale", "would remove" if dry_run else "removed")
                )
        return found

    def _blob_referenced(self, sha256: str) -> bool:
        with self._read() as session:
            return (
                session.scalar(
                    select(VersionFile.sha256).where(VersionFile.sha256 == sha256).limit(1)
                )
                is not None
                or session.scalar(
                    select(BaseFile.sha256).where(BaseFile.sha256 == sha256).limit(1)
                )
                is not None
            )

    def verify(
        self, ref: str | None = None, *, progress: Progress | None = None
    ) -> list[dict[str, Any]]:
        """Re-hash stored blobs (of one version, or all); returns the bad ones.

        Each bad file is ``{"ref", "name", "version", "path", "sha256", "problem"}`` with
        ``problem`` either ``"missing"`` (the store does not have the blob) or ``"corrupt"`` (its
        bytes changed). ``progress(done, total)`` follows the bytes of distinct blobs re-hashed.
        """
        with self._read() as session:
            stmt = (
                select(
                    VersionFile.sha256,
                    VersionFile.path,
                    Adapter.name,
                    AdapterVersion.version,
                    VersionFile.size,
                )
                .join(AdapterVersion, AdapterVersion.id == VersionFile.version_id)
                .join(Adapter, Adapter.id == AdapterVersion.adapter_id)
            )
            if ref is not None:
                _, v = self._resolve(session, ref)
                stmt = stmt.where(VersionFile.version_id == v.id)
            rows = session.execute(stmt).all()
        bad = []
        checked: dict[str, str | None] = {}
        total = sum({sha: size for sha, _, _, _, size in rows}.values())
        done = 0
        for sha, rel, name, number, size in rows:
            if sha not in checked:
                ok = self.blobs.verify(sha)
                checked[sha] = None if ok else "corrupt" if self.blobs.exists(sha) else "missing"
                done += size
                if progress is not None:
                    progress(done, max(total, done))
            if checked[sha] is not None:
                bad.append(
                    {
                        "ref": f"{name}@{number}",
                        "name": name,
                        "version": number,
                        "path": rel,
                        "sha256": sha,
                        "problem": checked[sha],
                    }
                )
        return bad

    def gc(
        self,
        *,
        grace_s: float = DEFAULT_GC_GRACE_S,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> GcResult:
        """Remove blobs no version (nor stored base) references, once older than ``grace_s`` seconds, and the temp
        files and folders of killed writers in the blob store and the cache (``temps``).

        ``progress(done, total)`` follows the bytes of the blobs scanned."""
        with self._read() as session:
            referenced = set(session.scalars(select(VersionFile.sha256).distinct()))
            referenced |= set(session.scalars(select(BaseFile.sha256).distinct()))
        cutoff = time.time() - grace_s
        removed: list[str] = []
        kept = scanned = freed = 0
        blobs = list(self.blobs.iter_blobs())
        total = sum(b.size for b in blobs)
        done = 0
        for blob in blobs:
            scanned += 1
            done += blob.size
            if progress is not None:
                progress(done, max(total, done))
            if blob.sha256 in referenced:
                continue
            if blob.mtime > cutoff:
                kept += 1
                continue
            if not dry_run and not self.blobs.delete_unless(
                blob.sha256,
                keep=functools.partial(self._blob_referenced, blob.sha256),
                newer_than=cutoff,
            ):
                kept += 1
                continue
            removed.append(blob.sha256)
            freed += blob.size
        # Temps of killed writers: as soon as their owner is dead; unowned ones (older
        # versions) never younger than an hour, whatever the grace.
        tmp_age = max(grace_s, TMP_MIN_AGE_S)
        leftovers: list[Leftover] = []
        if isinstance(self.blobs, LocalBlobStore):
            leftovers += self.blobs.clean_tmp(older_than_s=tmp_age, dry_run=dry_run)
        leftovers += self._clean_cache_tmp(older_than_s=tmp_age, dry_run=dry_run)
        logger.info(
            "gc: %d blobs scanned, %d removed, %d in grace; %d temp leftovers",
            scanned,
            len(removed),
            kept,
            len(leftovers),
        )
        return GcResult(
            scanned=scanned,
            removed=removed,
            kept_in_grace=kept,
            bytes_freed=freed,
            dry_run=dry_run,
            temps=[t.to_dict() for t in leftovers],
            temp_bytes_freed=sum(t.size for t in leftovers),
        )
