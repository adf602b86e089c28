"""Errors only the registry raises (the hierarchy is rooted in :mod:`mergetools.errors`)."""

from __future__ import annotations

import logging

from mergetools.errors import ConflictError, InvalidInputError, LoradexError, NotFoundError

logger = logging.getLogger(__name__)


class BlobMissingError(NotFoundError):
    """The registry names a blob that its blob store does not have (not the same as corrupt)."""

    code = "blob_missing"
    http_status = 500


class RegistryStateError(LoradexError):
    """The database and the blob store do not add up (one of them vanished); nothing is recreated."""

    code = "registry_state"
    http_status = 503


class StorageError(LoradexError):
    """A registry file (blob, database) could not be written: disk full, size limit, read-only."""

    code = "storage"
    http_status = 507


class AliasMovedError(ConflictError):
    """A compare-and-swap alias move found the alias pointing elsewhere than expected."""

    code = "alias_moved"

    def __init__(
        self,
        message: str,
        *,
        adapter: str,
        alias: str,
        expected_version: int | None,
        current_version: int | None,
    ) -> None:
        super().__init__(message)
        self.adapter = adapter
        self.alias = alias
        self.expected_version = expected_version
        self.current_version = current_version


class DigestMismatchError(InvalidInputError):
    """Uploaded bytes do not hash to the sha256 they were sent under; nothing was stored."""

    code = "digest_mismatch"

    def __init__(self, message: str, *, expected_sha256: str, actual_sha256: str) -> None:
        super().__init__(message)
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256


class UploadTooLargeError(InvalidInputError):
    """An upload is larger than the registry accepts (``LORADEX_MAX_UPLOAD_BYTES``)."""

    code = "upload_too_large"

    def __init__(self, message: str, *, max_bytes: int, size: int | None) -> None:
        super().__init__(message)
        self.max_bytes = max_bytes
        self.size = size


class BlobNotUploadedError(InvalidInputError):
    """A register from uploaded blobs names a blob the store does not have."""

    code = "blob_not_uploaded"

    def __init__(self, message: str, *, missing: dict[str, str]) -> None:
        super().__init__(message)
        self.missing = missing


class AuthenticationError(LoradexError):
    """No token, or a token that is unknown, revoked or expired."""

    code = "unauthenticated"


class PermissionDeniedError(LoradexError, PermissionError):
    """A valid token whose scope or name prefix does not cover the request."""

    code = "forbidden"

    def __init__(self, message: str, *, scope: str | None = None, needed: str | None = None) -> None:
        super().__init__(message)
        self.scope = scope
        self.needed = needed
