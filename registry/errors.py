"""Errors only the registry raises (the hierarchy is rooted in :mod:`mergetools.errors`).

:data:`ERROR_CODES` maps every stable error ``code`` of loradex (core and registry) to its class;
the REST layer maps codes to HTTP statuses, and docs/registry.md "Errors" lists them.
"""

from __future__ import annotations

import logging

from mergetools.errors import LoradexError, NotFoundError

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


class SchemaVersionError(LoradexError):
    """The registry database schema is newer or older than this loradex knows."""

    code = "schema_version"


class DatabaseUnavailableError(LoradexError):
    """The registry database cannot be reached (server down, wrong host or credentials)."""

    code = "database_unavailable"


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
