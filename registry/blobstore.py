"""Content-addressed blob store: files named by the sha256 of their bytes.

A blob lives at ``sha[:2]/sha[2:4]/sha``. Writes go to a temporary file in the store, are
fsynced and renamed into place (then the folder is fsynced), always before the database row
that names the blob is committed. Every read is verified: a blob whose bytes no longer hash to
its name raises :class:`CorruptBlobError` and its bytes are never handed out.

:class:`BlobStore` is the interface; :class:`LocalBlobStore` implements it on a local
filesystem. An S3-compatible store can implement the same methods later.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

from mergetools.errors import InvalidInputError, LoradexError
from mergetools.files import CHUNK, fsync_path, sha256_file
from mergetools.outdir import Leftover, clean_leftovers, create_temp_file
from registry.errors import (
    BlobMissingError,
    CorruptBlobError,
    DigestMismatchError,
    StorageError,
    UploadTooLargeError,
)

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)`` of one long operation, called from the calling thread."""


def offset_progress(progress: Progress | None, before: int, total: int) -> Progress | None:
    """A per-file ``progress`` reported as part of ``total`` bytes of which ``before`` are done."""
    if progress is None:
        return None
    report_to = progress

    def report(done: int, _file_total: int) -> None:
        report_to(before + done, max(total, before + done))

    return report

_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
_LEGACY_TMP_RE = re.compile(r"^put-[a-z0-9_]{8}\Z")  # tempfile.mkstemp names of older versions


@dataclass(frozen=True)
class StoredBlob:
    """A blob as written by :meth:`BlobStore.put_file`."""

    sha256: str
    size: int
    created: bool  # False when identical bytes were already stored


@dataclass(frozen=True)
class BlobInfo:
    """A blob found in the store (for ``gc``)."""

    sha256: str
    size: int
    mtime: float


class BlobStore(Protocol):
    """What the registry needs from a blob store."""

    def put_file(self, path: Path, *, progress: Progress | None = None) -> StoredBlob: ...

    def copy_to(
        self,
        sha256: str,
        dest: Path,
        *,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> None: ...

    def verify(self, sha256: str) -> bool: ...

    def exists(self, sha256: str) -> bool: ...

    def iter_blobs(self) -> Iterator[BlobInfo]: ...

    def delete(self, sha256: str) -> bool: ...

    def delete_unless(
        self, sha256: str, *, keep: Callable[[], bool], newer_than: float | None = None
    ) -> bool: ...

    def touch(self, sha256: str) -> None: ...

    def put_stream(
        self, chunks: Iterable[bytes], *, expected_sha256: str, max_bytes: int | None = None
    ) -> StoredBlob: ...

    def open_writer(self, *, expected_sha256: str, max_bytes: int | None = None) -> BlobWriter: ...

    def size_of(self, sha256: str) -> int | None: ...

    def read_verified(
        self, sha256: str, *, size: int, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]: ...


@functools.cache
def _file_mode() -> int:
    """The mode a new file gets under this process's umask (0644 under the usual 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def check_sha256(sha256: str) -> str:
    """Return ``sha256`` if it is 64 lowercase hex digits, else raise."""
    if not _SHA256_RE.match(sha256):
        raise InvalidInputError(
            f"blob name {sha256!r} is not a sha256 digest; expected 64 lowercase hex digits"
        )
    return sha256


def _copy_hashing(
    src: BinaryIO,
    out: BinaryIO,
    *,
    fsync: bool,
    progress: Progress | None = None,
    total: int = 0,
) -> tuple[str, int]:
    """Copy ``src`` to ``out`` in chunks (then flush, and fsync when asked); (sha256, size).

    ``progress(done, total)`` is called after each chunk (``total``: the expected size)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        out.write(chunk)
        size += len(chunk)
        if progress is not None:
            progress(size, max(total, size))
    out.flush()
    if fsync:
        os.fsync(out.fileno())
    return digest.hexdigest(), size


def _hash_handle(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _read_range(handle: BinaryIO, *, start: int, last: int) -> Iterator[bytes]:
    with handle:
        remaining = last - start + 1
        while remaining > 0:
            chunk = handle.read(min(CHUNK, remaining))
            if not chunk:
                raise CorruptBlobError(f"blob {handle.name} shrank while it was read")
            remaining -= len(chunk)
            yield chunk


def _read_hashing(
    handle: BinaryIO, *, sha256: str, size: int, store: LocalBlobStore
) -> Iterator[bytes]:
    with handle:
        digest = hashlib.sha256()
        held: bytes | None = None
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if held is not None:
                yield held
            held = chunk
        actual = digest.hexdigest()
        if actual != sha256:
            raise store._corrupt(sha256, actual, size)
        if held is not None:
            yield held


_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_R = TypeVar("_R")


def _storage_errors(
    method: Callable[..., _R],
) -> Callable[..., _R]:
    """Turn an OS failure while storing ``path`` (full disk, size limit, read-only store) into a
    :class:`StorageError` naming the file, the store and the reason."""

    @functools.wraps(method)
    def wrapper(self: LocalBlobStore, path: Path, **kwargs: object) -> _R:
        try:
            return method(self, path, **kwargs)
        except OSError as exc:
            if isinstance(exc, LoradexError):
                raise
            reason = exc.strerror or str(exc)
            if exc.filename is not None and Path(exc.filename) == Path(path):
                raise StorageError(f"cannot read {path} to store it: {reason}") from exc
            if exc.errno in _FULL_ERRNOS:
                why = "the disk holding it is full or a file size limit was hit; free space there"
            else:
                why = "check that it is a folder loradex can write"
            raise StorageError(
                f"cannot store {path} in the blob store at {self.location}: {reason} — {why} "
                "and retry (nothing was recorded)"
            ) from exc

    return wrapper


VERIFY_BEFORE_SERVING_BYTES = 64 << 20
"""Files up to this size are verified before their first byte is handed out; larger ones are
verified while they stream, and their last chunk is held back until the digest matched."""


class BlobWriter:
    """A blob being received in chunks: a temp file in the store, hashed as it is written.

    :meth:`commit` checks the digest and the size, then renames the temp file into place;
    :meth:`abort` (also on any error, and on leaving a ``with`` block without a commit)
    removes it. Nothing is ever stored under a name its bytes do not hash to.
    """

    def __init__(
        self, store: LocalBlobStore, *, expected_sha256: str, max_bytes: int | None = None
    ) -> None:
        self.store = store
        self.expected_sha256 = check_sha256(expected_sha256)
        self.max_bytes = max_bytes
        self.size = 0
        self._digest = hashlib.sha256()
        tmp_dir = store._tmp_dir()
        clean_leftovers(tmp_dir)
        fd, self._tmp = create_temp_file(tmp_dir, "put")
        self._out: BinaryIO | None = os.fdopen(fd, "wb")

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def write(self, chunk: bytes) -> None:
        if self._out is None:
            raise ValueError("blob writer is closed")
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            self.abort()
            raise UploadTooLargeError(
                f"upload of blob {self.expected_sha256} is larger than the "
                f"{self.max_bytes} bytes the registry accepts (LORADEX_MAX_UPLOAD_BYTES); "
                "nothing was stored",
                max_bytes=self.max_bytes,
                size=None,
            )
        self._digest.update(chunk)
        try:
            self._out.write(chunk)
        except OSError as exc:
            self.abort()
            raise StorageError(
                f"cannot store blob {self.expected_sha256} in the blob store at "
                f"{self.store.location}: {exc.strerror or exc} — free space there and retry "
                "(nothing was recorded)"
            ) from exc

    def commit(self) -> StoredBlob:
        """Verify the digest and move the blob into place; the writer is closed after."""
        if self._out is None:
            raise ValueError("blob writer is closed")
        try:
            self._out.flush()
            if self.store.fsync:
                os.fsync(self._out.fileno())
            self._out.close()
            self._out = None
            actual = self._digest.hexdigest()
            if actual != self.expected_sha256:
                raise DigestMismatchError(
                    f"uploaded bytes ({self.size} bytes) hash to {actual}, not to "
                    f"{self.expected_sha256} they were sent as; nothing was stored — check the "
                    "file and upload it again",
                    expected_sha256=self.expected_sha256,
                    actual_sha256=actual,
                )
            final = self.store.path_for(actual)
            existed = final.is_file()
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(self._tmp, 0o444)
            os.replace(self._tmp, final)
            if self.store.fsync:
                fsync_path(final.parent)
        except BaseException:
            self.abort()
            raise
        logger.debug("stored uploaded blob %s (%d bytes)", actual, self.size)
        return StoredBlob(sha256=actual, size=self.size, created=not existed)

    def abort(self) -> None:
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


class LocalBlobStore:
    """Blobs on a local filesystem under ``root`` (``$LORADEX_HOME/blobs`` or ``LORADEX_BLOB_URL``).

    ``location`` is how messages name the store (its folder and the setting that chose it).
    """

    def __init__(self, root: Path, *, fsync: bool = True, location: str | None = None) -> None:
        self.root = root
        self.fsync = fsync
        self.location = location or str(root)

    def path_for(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def _tmp_dir(self) -> Path:
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    @_storage_errors
    def put_file(self, path: Path, *, progress: Progress | None = None) -> StoredBlob:
        """Store the bytes of ``path``; identical bytes are stored once.

        ``progress(done, total)`` follows the bytes copied.

        The temp file's name records this process (``mergetools.outdir``); temp files of
        writers that were killed are removed first.
        """
        tmp_dir = self._tmp_dir()
        clean_leftovers(tmp_dir)
        fd, tmp = create_temp_file(tmp_dir, "put")
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                total = os.fstat(src.fileno()).st_size
                sha256, size = _copy_hashing(
                    src, out, fsync=self.fsync, progress=progress, total=total
                )
            final = self.path_for(sha256)
            existed = final.is_file()
            # Always replace: the temp file's bytes were hashed as they were written, so this
            # also repairs a stored blob that rotted, and the fresh mtime keeps gc's grace
            # period from collecting it mid-register.
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
            if self.fsync:
                fsync_path(final.parent)
            logger.debug("stored blob %s (%d bytes, %s)", sha256, size, "replaced" if existed else "new")
            return StoredBlob(sha256=sha256, size=size, created=not existed)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def open_writer(self, *, expected_sha256: str, max_bytes: int | None = None) -> BlobWriter:
        """A writer for a blob received in chunks (see :class:`BlobWriter`)."""
        return BlobWriter(self, expected_sha256=expected_sha256, max_bytes=max_bytes)

    def put_stream(
        self, chunks: Iterable[bytes], *, expected_sha256: str, max_bytes: int | None = None
    ) -> StoredBlob:
        """Store the bytes of ``chunks`` (never all in memory) under ``expected_sha256``.

        Raises :class:`DigestMismatchError` when they hash to something else and
        :class:`UploadTooLargeError` past ``max_bytes``; nothing is stored then.
        """
        with self.open_writer(expected_sha256=expected_sha256, max_bytes=max_bytes) as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def size_of(self, sha256: str) -> int | None:
        """The stored blob's size in bytes, or None when it is not stored."""
        try:
            return self.path_for(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def _corrupt(self, sha256: str, actual: str, size: int) -> CorruptBlobError:
        logger.error("corrupt blob %s: bytes hash to %s", sha256, actual)
        return CorruptBlobError(
            f"blob {sha256} at {self.path_for(sha256)} is corrupt: its {size} bytes hash to "
            f"{actual} — it is not served; restore it from a backup or re-register the adapter"
        )

    def read_verified(
        self, sha256: str, *, size: int, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """The blob's bytes ``start..end`` (inclusive; ``end`` None: to the end), verified.

        Checked before this returns (so a caller can still answer with an error): the blob
        exists, has ``size`` bytes, and — when it is at most
        :data:`VERIFY_BEFORE_SERVING_BYTES` or only a range is asked for — hashes to its name.
        A larger whole file is hashed while it is read and its last chunk is held back until
        the digest matched: the iterator raises :class:`CorruptBlobError` instead of yielding
        it, so a reader never receives a complete corrupt file.
        """
        path = self.path_for(sha256)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise BlobMissingError(
                f"blob {sha256} is missing from the blob store at {self.location}: the "
                "registry names it but the store does not have it — restore the store from a "
                "backup"
            ) from None
        try:
            actual_size = os.fstat(handle.fileno()).st_size
            if actual_size != size:
                raise CorruptBlobError(
                    f"blob {sha256} at {path} is corrupt: it holds {actual_size} bytes, the "
                    f"registry recorded {size} — it is not served; restore it from a backup"
                )
            last = size - 1 if end is None else min(end, size - 1)
            whole = start == 0 and last == size - 1
            if not whole or size <= VERIFY_BEFORE_SERVING_BYTES:
                actual = _hash_handle(handle)
                if actual != sha256:
                    raise self._corrupt(sha256, actual, size)
                handle.seek(start)
                return _read_range(handle, start=start, last=last)
            return _read_hashing(handle, sha256=sha256, size=size, store=self)
        except BaseException:
            handle.close()
            raise

    def touch(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path_for(sha256))

    def verify(self, sha256: str) -> bool:
        """True when the blob exists and its bytes hash to its name."""
        path = self.path_for(sha256)
        try:
            return sha256_file(path) == sha256
        except FileNotFoundError:
            return False

    def copy_to(
        self,
        sha256: str,
        dest: Path,
        *,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        """Write the blob's bytes to ``dest``, verifying them; ``dest`` appears only if intact.

        ``progress(done, total)`` follows the bytes copied.

        Raises :class:`BlobMissingError` when the blob is missing and :class:`CorruptBlobError` when
        its bytes no longer match ``sha256`` (``dest`` is then not created).
        """
        src_path = self.path_for(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        tmp = Path(tmp_name)
        try:
            try:
                src = open(src_path, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                raise BlobMissingError(
                    f"blob {sha256} is missing from the blob store at {self.location}: the "
                    "registry names it but the store does not have it — if the registry is "
                    "shared, set LORADEX_BLOB_URL to the team's store on every machine; "
                    "otherwise restore the store from a backup"
                ) from None
            with src, os.fdopen(fd, "wb") as out:
                actual, written = _copy_hashing(
                    src, out, fsync=self.fsync, progress=progress, total=size or 0
                )
            if actual != sha256 or (size is not None and written != size):
                logger.error("corrupt blob %s: bytes hash to %s", sha256, actual)
                raise CorruptBlobError(
                    f"blob {sha256} at {src_path} is corrupt: its {written} bytes hash to "
                    f"{actual}"
                    + (f" (expected {size} bytes)" if size is not None else "")
                    + " — it is not served; restore it from a backup or re-register the adapter"
                )
            os.chmod(tmp, _file_mode())  # temp files are 0600; a copy gets the usual mode
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Every blob in the store (temporary files excluded)."""
        if not self.root.is_dir():
            return
        for first in sorted(self.root.iterdir()):
            if len(first.name) != 2 or not first.is_dir():
                continue
            for second in sorted(first.iterdir()):
                if not second.is_dir():
                    continue
                for blob in second.iterdir():
                    if _SHA256_RE.match(blob.name):
                        stat = blob.stat()
                        yield BlobInfo(sha256=blob.name, size=stat.st_size, mtime=stat.st_mtime)

    def delete(self, sha256: str) -> bool:
        """Remove a blob; False when it was not there."""
        try:
            self.path_for(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def delete_unless(
        self, sha256: str, *, keep: Callable[[], bool], newer_than: float | None = None
    ) -> bool:
        """Remove a blob unless ``keep()`` (asked after the blob is moved aside) says otherwise.

        Moving the file aside first closes the race with a register of the same bytes: either
        ``keep()`` already sees its committed row, or the register, which checks after its
        commit that every blob it references exists, finds the blob gone and stores it again.
        A blob written again after ``newer_than`` (a register's fresh copy) is kept too.
        """
        final = self.path_for(sha256)
        aside = self._tmp_dir() / f"aside-{sha256}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            return False
        try:
            restore = (newer_than is not None and aside.stat().st_mtime > newer_than) or keep()
        except BaseException:
            os.replace(aside, final)
            raise
        if restore:
            os.replace(aside, final)
            return False
        aside.unlink()
        return True

    def clean_tmp(self, *, older_than_s: float, dry_run: bool = False) -> list[Leftover]:
        """Remove (or list) temp files left by killed writers.

        Temps that record their owner go as soon as the owner is dead (see
        :func:`mergetools.outdir.clean_leftovers`); unowned ones (written by older versions)
        once older than ``older_than_s``.
        """
        tmp = self.root / "tmp"
        if not tmp.is_dir():
            return []
        found = clean_leftovers(tmp, dry_run=dry_run)
        cutoff = time.time() - older_than_s
        for entry in sorted(tmp.iterdir()):
            if not _LEGACY_TMP_RE.match(entry.name):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = entry.lstat()
                if st.st_mtime >= cutoff:
                    continue
                if not dry_run:
                    entry.unlink()
                found.append(
                    Leftover(
                        entry, st.st_size, "unowned, stale", "would remove" if dry_run else "removed"
                    )
                )
        return found
