"""Errors only the registry raises (the hierarchy is rooted in :mod:`mergetools.errors`)."""

from __future__ import annotations

import logging

from mergetools.errors import LoradexError, NotFoundError

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
