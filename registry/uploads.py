"""Register from uploaded blobs, and read a version's stored files (what the HTTP API serves).

An upload is two steps, like an OCI registry: the files' bytes go to the blob store one by one
(:meth:`~registry.blobstore.BlobStore.put_stream`, digest verified), then
:meth:`UploadsMixin.register_uploaded` names them. It copies the named blobs (verified) into a
temp folder under ``$LORADEX_HOME/cache`` and runs exactly the local register on it, so an
upload is checked like ``loradex register``; the folder is removed afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import bindparam, select

from mergetools.errors import InvalidInputError, NotFoundError
from mergetools.outdir import clean_leftovers, create_temp_folder
from registry.blobstore import check_sha256
from registry.core import RegistryCore
from registry.errors import BlobNotUploadedError
from registry.inputs import EvalInput, ParentInput
from registry.models import VersionFile
from registry.records import FileRow, RegisterResult


class _Registers(Protocol):
    """The part of :class:`registry.service.Registry` this mixin calls (named here, not
    imported: the service module is built from this one)."""

    def register(
        self,
        path: Path,
        *,
        name: str,
        base: str | None = ...,
        evals: Sequence[EvalInput] = ...,
        tags: Mapping[str, str] | None = ...,
        description: str = ...,
        source: str | None = ...,
        actor: str | None = ...,
        metadata: Mapping[str, Any] | None = ...,
        parents: Sequence[ParentInput] = ...,
        include: Sequence[str] = ...,
    ) -> RegisterResult: ...

logger = logging.getLogger(__name__)

MAX_UPLOAD_FILES = 1000

_FILES = VersionFile.__table__.c
_FILES_OF_VERSION = (  # built once, over the table (see registry/core.py)
    select(_FILES.path, _FILES.sha256, _FILES.size)
    .where(_FILES.version_id == bindparam("version_id"))
    .order_by(_FILES.path)
)


def check_file_path(path: str) -> str:
    """Return ``path`` if it is a relative posix path of plain names (``tokenizer/vocab.json``),
    else raise; each part is checked by :func:`check_file_name`."""
    if not path or len(path) > 500 or path.startswith("/") or path.endswith("/"):
        raise InvalidInputError(
            f"file path {path[:200]!r} is not a relative path of plain names; expected e.g. "
            "adapter_model.safetensors or tokenizer/vocab.json"
        )
    for part in path.split("/"):
        check_file_name(part)
    return path


def _glob_literal(path: str) -> str:
    """A :mod:`fnmatch` pattern that matches exactly ``path``."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)


def check_file_name(name: str) -> str:
    """Return ``name`` if it is a plain file name (no folder, no ``..``), else raise."""
    if (
        not name
        or name in (".", "..")
        or ".." in name
        or "/" in name
        or "\\" in name
        or "\0" in name
        or len(name) > 255
    ):
        raise InvalidInputError(
            f"file name {name!r} is not a plain file name; expected a name without '/', '\\' "
            "or '..' (e.g. adapter_model.safetensors)"
        )
    return name


@contextlib.contextmanager
def uploaded_folder(registry: RegistryCore, files: Mapping[str, str], *, label: str) -> Iterator[Path]:
    """A temp folder under ``$LORADEX_HOME/cache/uploads`` holding the uploaded blobs ``files``
    (file name -> sha256) copied and verified under their names; removed on exit.

    Raises :class:`BlobNotUploadedError` naming every file whose blob is not stored.
    """
    if not files:
        raise InvalidInputError(
            "no files given; expected adapter_config.json and adapter_model.safetensors "
            "mapped to the sha256 of their uploaded bytes"
        )
    if len(files) > MAX_UPLOAD_FILES:
        raise InvalidInputError(
            f"{len(files)} files given; an adapter has at most {MAX_UPLOAD_FILES}"
        )
    for file_name, sha256 in files.items():
        check_file_path(file_name)
        check_sha256(sha256)
    missing = {f: sha for f, sha in sorted(files.items()) if not registry.blobs.exists(sha)}
    if missing:
        listed = ", ".join(f"{f} ({sha})" for f, sha in missing.items())
        raise BlobNotUploadedError(
            f"{len(missing)} file(s) name blobs that were not uploaded: {listed}; upload "
            "them first (PUT /api/v1/blobs/SHA256)",
            missing=missing,
        )
    uploads = registry.settings.cache_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    clean_leftovers(uploads)
    folder = create_temp_folder(uploads, label)
    try:
        for file_name, sha256 in files.items():
            registry.blobs.copy_to(sha256, folder / file_name)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class UploadsMixin(RegistryCore):
    """Register from the blob store; stream a version's files out of it, verified."""

    def register_uploaded(
        self,
        name: str,
        *,
        files: Mapping[str, str],
        base: str | None = None,
        evals: Sequence[EvalInput] = (),
        tags: Mapping[str, str] | None = None,
        description: str = "",
        source: str = "upload",
        actor: str | None = None,
        parents: Sequence[ParentInput] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> RegisterResult:
        """Register the adapter whose files (relative path -> sha256) are already in the blob
        store; every named file is stored (the client chose them), ``parents`` are recorded as
        lineage as a local register records them.

        Raises :class:`BlobNotUploadedError` naming every file whose blob is not stored; then
        everything a local register raises (the same checks run on the same bytes).
        """
        with uploaded_folder(self, files, label="register") as folder:
            registry = cast(_Registers, self)
            return registry.register(
                folder,
                name=name,
                base=base,
                evals=evals,
                tags=tags,
                description=description,
                source=source,
                actor=actor,
                metadata=metadata,
                parents=parents,
                include=[_glob_literal(f) for f in files],
            )

    def version_file(self, ref: str, filename: str) -> FileRow:
        """The stored file ``filename`` of the version ``ref`` names (its sha256 and size)."""
        check_file_path(filename)
        with self._read() as session:
            adapter, version = self._resolve(session, ref, allow_deleted=True)
            shown_ref = f"{adapter.name}@{version.version}"
            if version.status == "deleted":
                raise NotFoundError(
                    f"{shown_ref} was deleted and its files purged; use another version"
                )
            rows = session.execute(_FILES_OF_VERSION, {"version_id": version.id}).all()
        for path, sha256, size in rows:
            if path == filename:
                return FileRow(path=path, sha256=sha256, size=size)
        names = ", ".join(path for path, _, _ in rows)
        raise NotFoundError(f"{shown_ref} has no file {filename!r}; its files are {names}")

    def read_file(
        self, ref: str, filename: str, *, start: int = 0, end: int | None = None
    ) -> tuple[FileRow, Iterator[bytes]]:
        """The file row and its bytes ``start..end`` (inclusive), never from a corrupt blob
        (see :meth:`registry.blobstore.LocalBlobStore.read_verified`)."""
        row = self.version_file(ref, filename)
        return row, self.read_stored(row, start=start, end=end)

    def read_stored(
        self, row: FileRow, *, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """The bytes ``start..end`` (inclusive) of the stored file ``row`` (from
        :meth:`version_file`), verified like :meth:`read_file`'s."""
        return self.blobs.read_verified(row.sha256, size=row.size, start=start, end=end)
