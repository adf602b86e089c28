"""Adapter folders on disk: the files a version stores, their digests, and export/materialise.

A version's files go back to disk verified, byte for byte: :meth:`FoldersMixin.export` to a
folder the user names, :meth:`FoldersMixin.materialize` once into the cache (and reused). Both
build the folder beside its target and rename it into place (``mergetools.outdir``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from mergetools.checkpoint import TOKENIZER_FILES
from mergetools.errors import InvalidInputError, NotFoundError
from mergetools.files import sha256_file
from mergetools.folder import Folder
from mergetools.outdir import (
    ProtectedPath,
    atomic_output_folder,
    clean_leftovers,
    create_temp_folder,
    fsync_tree,
    replace_folder,
)
from registry.blobstore import BlobStore, Progress, offset_progress
from registry.core import RegistryCore
from registry.models import VersionFile
from registry.records import VersionKey

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


ADAPTER_OWN_FILES = (
    CONFIG_FILE,
    *WEIGHT_FILES,
    *TOKENIZER_FILES,
    "README.md",
    "config.json",
)
"""Files a register stores by default: the adapter's config, weights, tokenizer files, card and
the base ``config.json`` some trainers save beside it — not optimizer state, ``checkpoint-*/``
folders or ``training_args.bin``."""


def _collect_files(folder: Path) -> list[tuple[str, Path]]:
    """Regular files under ``folder`` (hidden names skipped) as (posix relative path, path).

    A link leaving the folder, a broken link or a special file anywhere in it is refused
    (:class:`~mergetools.errors.InvalidInputError`); links to sub-folders are not followed."""
    return Folder.open(folder, error=InvalidInputError).walk()


def select_files(
    files: Sequence[tuple[str, Path]],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> tuple[list[tuple[str, Path]], list[str]]:
    """The files a register stores, and warnings.

    By default the adapter's own files (:data:`ADAPTER_OWN_FILES`, at the top of the folder);
    ``include`` globs add files, ``exclude`` globs remove them (both matched against the posix
    relative path with :func:`fnmatch.fnmatchcase`, where ``*`` also matches ``/``). When both
    weight files are present only ``adapter_model.safetensors`` is stored (it is the one used)
    unless ``adapter_model.bin`` is included by name or glob, and a warning says so."""
    names = {rel for rel, _ in files}
    warnings: list[str] = []
    both = all(w in names for w in WEIGHT_FILES)

    def included(rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, pattern) for pattern in include)

    chosen: list[tuple[str, Path]] = []
    for rel, path in files:
        default = rel in ADAPTER_OWN_FILES and not (both and rel == WEIGHT_FILES[1])
        if (default or included(rel)) and not any(fnmatch.fnmatchcase(rel, p) for p in exclude):
            chosen.append((rel, path))
    if both:
        stored = "stored too" if WEIGHT_FILES[1] in {rel for rel, _ in chosen} else "not stored"
        warnings.append(
            f"the folder has both {WEIGHT_FILES[0]} and {WEIGHT_FILES[1]}; {WEIGHT_FILES[0]} is used "
            f"and {WEIGHT_FILES[1]} is {stored}"
        )
    return chosen, warnings


def content_digest(files: Mapping[str, str]) -> str:
    """sha256 over ``adapter_config.json`` and the weights file (paths and their sha256)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        if path == CONFIG_FILE or path in WEIGHT_FILES:
            digest.update(f"{path}\0{files[path]}\n".encode())
    return digest.hexdigest()


def files_digest(files: Mapping[str, str]) -> str:
    """sha256 over every stored file (paths and their sha256): the materialised-folder key."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path}\0{files[path]}\n".encode())
    return digest.hexdigest()


def _folder_matches(folder: Path, files: Mapping[str, tuple[str, int]]) -> bool:
    present = {rel for rel, _ in _collect_files(folder)}
    if present != set(files):
        return False
    return all(
        (folder / rel).stat().st_size == size and sha256_file(folder / rel) == sha
        for rel, (sha, size) in files.items()
    )


def build_cache_folder(
    blobs: BlobStore,
    root: Path,
    target: Path,
    files: Mapping[str, tuple[str, int]],
    *,
    replace: bool,
    progress: Progress | None = None,
) -> None:
    """Build ``target`` (in the cache folder ``root``) from verified blobs: in a temp folder
    that records its owner, fsynced, then renamed into place — or swapped in for a tampered
    ``target`` (``replace``). When another process built it first, its copy is kept if it
    matches. ``progress(done, total)`` follows the bytes copied."""
    root.mkdir(parents=True, exist_ok=True)
    clean_leftovers(root)
    tmp = create_temp_folder(root, target.name)
    fsync = getattr(blobs, "fsync", True)
    total = sum(size for _, size in files.values())
    done = 0
    try:
        for rel, (sha, size) in sorted(files.items()):
            blobs.copy_to(sha, tmp / rel, size=size)
            done += size
            if progress is not None:
                progress(done, total)
        if fsync:
            fsync_tree(tmp)
        if replace:
            replace_folder(tmp, target, fsync=fsync)
        else:
            try:
                os.rename(tmp, target)
            except OSError:  # another process materialised it first
                if not _folder_matches(target, files):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class FoldersMixin(RegistryCore):
    """Use cases that write a version's stored files back to disk."""

    def _files(self, session: Session, version_id: int) -> dict[str, tuple[str, int]]:
        return {
            f.path: (f.sha256, f.size)
            for f in session.scalars(
                select(VersionFile).where(VersionFile.version_id == version_id)
            )
        }

    def export(
        self, ref: str, out: Path, *, force: bool = False, progress: Progress | None = None
    ) -> Path:
        """Write the version's stored files, byte for byte and verified, to folder ``out``.

        ``progress(done, total)`` follows the bytes written, over the sum of the files' sizes.

        ``out`` must be new or an empty folder; ``force`` also replaces an earlier loradex output
        (never anything else, nor LORADEX_HOME, the current folder or a folder above it).
        """
        shown = out
        out = Path(out).absolute()
        with self._read() as session:
            adapter, v = self._resolve(session, ref)
            files = self._files(session, v.id)
        output = atomic_output_folder(
            out,
            kind="export",
            force=force,
            protected=[
                ProtectedPath(self.settings.home, "LORADEX_HOME"),
                ProtectedPath(Path.cwd(), "the current folder", inside_ok=True),
            ],
            fsync=getattr(self.blobs, "fsync", True),
            empty_ok=True,
            label=f"export target {str(shown)!r}",
        )
        total = sum(size for _, size in files.values())
        done = 0
        with output as tmp:
            for rel, (sha, size) in sorted(files.items()):
                self.blobs.copy_to(sha, tmp / rel, size=size, progress=offset_progress(progress, done, total))
                done += size
                if progress is not None:
                    progress(done, max(total, done))
        logger.info("exported %s@%d to %s", adapter.name, v.version, out)
        return out

    def materialize(self, key: VersionKey) -> Path:
        """A local folder with the version's verified files, built once under the cache and reused.

        The folder is ``$LORADEX_HOME/cache/versions/<digest>``, where the digest covers every
        stored file (paths and sha256). Reuse re-verifies the files; a tampered folder is rebuilt
        (the tampered one stays in place until the rebuilt one replaces it).
        """
        with self._read() as session:
            files = self._files(session, key.version_id)
        if not files:
            raise NotFoundError(f"{key.ref} has no stored files (deleted and purged?)")
        digest = files_digest({p: s for p, (s, _) in files.items()})
        root = self.settings.cache_dir / "versions"
        target = root / digest
        tampered = target.is_dir() and not _folder_matches(target, files)
        if target.is_dir() and not tampered:
            return target
        if tampered:
            logger.warning("cached folder %s does not match its files; rebuilding", target)
        build_cache_folder(self.blobs, root, target, files, replace=tampered)
        return target
