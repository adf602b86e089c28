"""The one error hierarchy of loradex.

Every error a user can cause is a :class:`LoradexError`. Each subclass carries a
stable ``code`` (rendered by the API and the CLI's ``--json`` output) and an
``http_status``, and also subclasses the fitting builtin so callers that only
know Python's exceptions can still catch it.
"""

from __future__ import annotations


class LoradexError(Exception):
    """Root of every error loradex raises on purpose."""

    code: str = "loradex_error"
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInputError(LoradexError, ValueError):
    """An input is malformed or refused (bad file, bad argument value)."""

    code = "invalid_input"
    http_status = 422


class CorruptFileError(InvalidInputError):
    """A file is truncated, has a lying header, or is otherwise unreadable."""

    code = "corrupt_file"


class InvalidAdapterError(InvalidInputError):
    """An adapter folder is not a valid PEFT LoRA adapter."""

    code = "invalid_adapter"


class UnsupportedAdapterError(InvalidAdapterError):
    """A valid adapter of a variant that cannot be merged onto the original base."""

    code = "unsupported_adapter"


class InvalidCheckpointError(InvalidInputError):
    """A base checkpoint folder is missing files, quantized, or inconsistent."""

    code = "invalid_checkpoint"


class IncompatibleError(LoradexError, ValueError):
    """An adapter does not fit a base model (shapes, names, vocabulary...)."""

    code = "incompatible"
    http_status = 422


class NumericalError(LoradexError, ArithmeticError):
    """A computation produced non-finite values or failed numerically."""

    code = "numerical"
    http_status = 422


class NotFoundError(LoradexError, LookupError):
    """A named thing (file, adapter, version, alias) does not exist."""

    code = "not_found"
    http_status = 404


class ConflictError(LoradexError):
    """The request conflicts with existing state (an existing output, a taken name)."""

    code = "conflict"
    http_status = 409


class OutputExistsError(ConflictError, FileExistsError):
    """The output location exists and replacing it was not requested."""

    code = "output_exists"


class SchemaVersionError(LoradexError):
    """The registry database schema is newer or older than this loradex knows."""

    code = "schema_version"
    http_status = 503


class CorruptBlobError(LoradexError):
    """A stored blob's bytes no longer match its sha256; it is never served."""

    code = "corrupt_blob"
    http_status = 500


class DatabaseUnavailableError(LoradexError):
    """The registry database cannot be reached (server down, wrong host or credentials)."""

    code = "database_unavailable"
    http_status = 503
