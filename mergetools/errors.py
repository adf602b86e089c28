"""The one error hierarchy of loradex.

Every error a user can cause is a :class:`LoradexError`. Each carries

- a ``message``: what failed, where, what was expected (never a CLI flag: the core serves the
  CLI, the REST API and job workers alike);
- a stable ``code``, unique per class (the API maps it to an HTTP status in ``registry/api/``;
  docs/registry.md "Errors" lists every code);
- structured ``fields``: JSON-able values naming the parts of the message (``ref``, ``module``,
  ``expected``, ``got``...), for API clients;
- an optional ``hint``: a neutral sentence on how to fix it, and/or a ``hint_action``, a machine
  key from :data:`HINT_ACTIONS` that each shell renders its own way (the CLI as "pass --force").

Each class also subclasses the fitting builtin so callers that only know Python's exceptions can
still catch it. Registry-only errors live in :mod:`registry.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

JSONValue = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]

HINT_ACTIONS: dict[str, str] = {
    "force": "the request may replace the existing output (it must be empty or an earlier loradex output)",
    "purge": "the request confirms that the version's files are deleted for good",
    "device_cpu": "run the computation on the CPU",
    "db_upgrade": "upgrade the registry database schema",
    "upgrade_loradex": "install a newer loradex",
    "rename": "register it under another name",
    "register": "register the adapter under that name first",
    "write_signature": "write a base signature file from the base folder",
    "write_signature_fingerprint": "write a base signature file with the weights' fingerprint",
    "base_folder": "name the base folder itself instead of a signature file",
    "verify_weights": "verify the base weights (compare fingerprints)",
    "alias_history": "look at the alias's history",
    "show_digest": "look up the version's weights-file digest",
    "store_base": "store the base's files in the blob store from a machine that has its folder",
    "base_list": "list the registered base models",
    "base_add": "register the base model from its folder",
    "versions": "list the adapter's versions",
    "alias_set": "point the alias at a ready version",
    "alias_rm": "remove the aliases",
    "token_list": "list the API tokens and their ids",
    "check_report": "check the adapters against the base for the full report",
    "publish": "publish to the alias, so that its gates run",
}
"""Every ``hint_action`` the core may set, with a neutral description (shells map the keys)."""


class LoradexError(Exception):
    """Root of every error loradex raises on purpose."""

    code: ClassVar[str] = "loradex_error"

    def __init__(
        self,
        message: str,
        *,
        fields: Mapping[str, JSONValue] | None = None,
        hint: str | None = None,
        hint_action: str | None = None,
    ) -> None:
        super().__init__(message)
        if hint_action is not None and hint_action not in HINT_ACTIONS:
            raise ValueError(f"unknown hint_action {hint_action!r}; add it to HINT_ACTIONS")
        self.message = message
        self.fields: dict[str, JSONValue] = dict(fields or {})
        self.hint = hint
        self.hint_action = hint_action

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, JSONValue]:
        """The error as JSON-able data: ``code``, ``message``, ``fields``, ``hint``, ``hint_action``."""
        return {
            "code": self.code,
            "message": self.message,
            "fields": dict(self.fields),
            "hint": self.hint,
            "hint_action": self.hint_action,
        }


class InvalidInputError(LoradexError, ValueError):
    """An input is malformed or refused (bad file, bad argument value)."""

    code = "invalid_input"


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


class NumericalError(LoradexError, ArithmeticError):
    """A computation produced non-finite values or failed numerically."""

    code = "numerical"


class NotFoundError(LoradexError, LookupError):
    """A named thing (file, adapter, version, alias) does not exist."""

    code = "not_found"


class ConflictError(LoradexError):
    """The request conflicts with existing state (an existing output, a taken name)."""

    code = "conflict"


class OutputExistsError(ConflictError, FileExistsError):
    """The output location exists and replacing it was not requested."""

    code = "output_exists"
