"""Errors only the registry raises (the hierarchy is rooted in :mod:`mergetools.errors`).

:data:`ERROR_CODES` maps every stable error ``code`` of loradex (core and registry) to its class;
the REST layer maps codes to HTTP statuses, and docs/registry.md "Errors" lists them.
"""

from __future__ import annotations

import logging
from typing import Any

from mergetools.errors import ConflictError, InvalidInputError, LoradexError, NotFoundError

logger = logging.getLogger(__name__)


class BlobMissingError(NotFoundError):
    """The registry names a blob that its blob store does not have (not the same as corrupt)."""

    code = "blob_missing"


class CorruptBlobError(LoradexError):
    """A stored blob's bytes no longer match its sha256; it is never served."""

    code = "corrupt_blob"


class RegistryStateError(LoradexError):
    """The database and the blob store do not add up (one of them vanished); nothing is recreated."""

    code = "registry_state"


class StorageError(LoradexError):
    """A registry file (blob, database) could not be written: disk full, size limit, read-only."""

    code = "storage"


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
        super().__init__(
            message,
            fields={
                "adapter": adapter,
                "alias": alias,
                "expected_version": expected_version,
                "current_version": current_version,
            },
        )
        self.adapter = adapter
        self.alias = alias
        self.expected_version = expected_version
        self.current_version = current_version


class AliasHasPolicyError(ConflictError):
    """An alias that has a publish policy was to be moved without a publish (a plain set)."""

    code = "alias_has_policy"

    def __init__(self, message: str, *, adapter: str, alias: str) -> None:
        super().__init__(
            message,
            fields={"adapter": adapter, "alias": alias},
            hint="publish to the alias instead, so that its gates run",
            hint_action="publish",
        )
        self.adapter = adapter
        self.alias = alias


class PublishRefusedError(ConflictError):
    """A publish whose gates did not all pass: the alias did not move. ``report`` holds every
    gate with its values."""

    code = "publish_refused"

    def __init__(self, message: str, *, report: dict[str, Any]) -> None:
        super().__init__(message, fields={"report": report})
        self.report = report


class DigestMismatchError(InvalidInputError):
    """Uploaded bytes do not hash to the sha256 they were sent under; nothing was stored."""

    code = "digest_mismatch"

    def __init__(self, message: str, *, expected_sha256: str, actual_sha256: str) -> None:
        super().__init__(
            message, fields={"expected_sha256": expected_sha256, "actual_sha256": actual_sha256}
        )
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256


class UploadTooLargeError(InvalidInputError):
    """An upload is larger than the registry accepts (``LORADEX_MAX_UPLOAD_BYTES``)."""

    code = "upload_too_large"

    def __init__(self, message: str, *, max_bytes: int, size: int | None) -> None:
        super().__init__(message, fields={"max_bytes": max_bytes, "size": size})
        self.max_bytes = max_bytes
        self.size = size


class BlobNotUploadedError(InvalidInputError):
    """A register from uploaded blobs names a blob the store does not have."""

    code = "blob_not_uploaded"

    def __init__(self, message: str, *, missing: dict[str, str]) -> None:
        super().__init__(message, fields={"missing": dict(missing)})
        self.missing = missing


class AuthenticationError(LoradexError):
    """No token, or a token that is unknown, revoked or expired."""

    code = "unauthenticated"


class PermissionDeniedError(LoradexError, PermissionError):
    """A valid token whose scope or name prefix does not cover the request."""

    code = "forbidden"

    def __init__(self, message: str, *, scope: str | None = None, needed: str | None = None) -> None:
        super().__init__(message, fields={"scope": scope, "needed": needed})
        self.scope = scope
        self.needed = needed


class SchemaVersionError(LoradexError):
    """The registry database schema is newer or older than this loradex knows."""

    code = "schema_version"


class DatabaseUnavailableError(LoradexError):
    """The registry database cannot be reached (server down, wrong host or credentials)."""

    code = "database_unavailable"


class HubAccessError(LoradexError, PermissionError):
    """The Hub refused access: no or a wrong token, or a gated repo whose terms are not accepted."""

    code = "hub_access"


class HubUnavailableError(LoradexError, ConnectionError):
    """The Hub could not answer now: offline, unreachable, rate-limited or failing."""

    code = "hub_unavailable"


class ServerUnavailableError(LoradexError, ConnectionError):
    """The registry server (``LORADEX_SERVER``) could not be reached or failed to answer."""

    code = "server_unavailable"


class NotRemoteError(InvalidInputError):
    """A command that works only on a registry of this machine was asked of a registry server."""

    code = "not_remote"


def _all_error_classes() -> list[type[LoradexError]]:
    found: list[type[LoradexError]] = []
    pending: list[type[LoradexError]] = [LoradexError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


ERROR_CODES: dict[str, type[LoradexError]] = {cls.code: cls for cls in _all_error_classes()}
"""Every error code -> its class (the core's and the registry's; all live in these two modules)."""
