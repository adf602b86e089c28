"""Inspect-by-reference: what is this adapter or base (a folder or a registered entry)?

The use case behind ``loradex inspect`` (and any other shell's): resolve the reference
(:mod:`registry.refs`), then summarise the adapter (:func:`mergetools.inspect.summarize_adapter`),
summarise the base checkpoint (:func:`mergetools.inspect.summarize_checkpoint`), or build the
base's structural signature (:func:`mergetools.signature.signature_of_checkpoint`). A registered
entry is named by its reference and carries its provenance, never its cache folder.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mergetools.errors import InvalidInputError
from registry.refs import named_by_reference, resolve_any_ref
from registry.sources import registry_source

if TYPE_CHECKING:
    from registry.sources import RegistryOrSettings

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

InspectKind = Literal["adapter", "checkpoint", "signature"]


@dataclass
class InspectOutcome:
    """What ``ref`` is: an adapter summary, a checkpoint summary, or a base signature."""

    kind: InspectKind
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    """Which of a same-named folder and registered entry was used."""


def inspect(
    registry_or_settings: RegistryOrSettings,
    ref: str,
    *,
    signature: bool = False,
    fingerprint: bool = False,
    cache_dir: Path | None | Callable[[], Path | None] = None,
    name_or_path: str | None = None,
    revision: str | None = None,
    progress: Progress | None = None,
) -> InspectOutcome:
    """Summarise the adapter or base checkpoint ``ref`` names, or give a base's signature.

    ``signature`` builds the base's structural signature (with its weights' fingerprint when
    ``fingerprint``; ``name_or_path`` and ``revision`` override what it records); without it a
    base is summarised, fingerprinted when ``fingerprint``. ``cache_dir`` is the fingerprint
    cache (or a callable giving it, called only when a fingerprint is computed). ``progress``
    follows the bytes fingerprinted. Signatures and fingerprints are of bases: asking them of
    an adapter is refused.
    """
    if (name_or_path is not None or revision is not None) and not signature:
        raise InvalidInputError(
            "a recorded name or revision only applies to a base signature",
            fields={"ref": ref},
        )
    resolved = resolve_any_ref(registry_source(registry_or_settings), ref)
    notes = [resolved.note] if resolved.note else []
    with named_by_reference([resolved]):
        from mergetools.adapter import CONFIG_FILE

        path = resolved.path
        if (path / CONFIG_FILE).is_file():
            if signature or fingerprint:
                raise InvalidInputError(
                    f"{resolved.label} is an adapter; a signature or a fingerprint is of a base "
                    "checkpoint",
                    fields={"ref": ref},
                )
            from mergetools.inspect import summarize_adapter

            data = summarize_adapter(path).to_dict()
            data["name"] = resolved.label
            provenance = resolved.provenance()
            if provenance is not None:  # a registered version: its cache folder is no one's business
                data["path"] = None
                data.update(provenance)
            return InspectOutcome("adapter", data, notes)
        cache = (cache_dir() if callable(cache_dir) else cache_dir) if fingerprint else None
        if signature:
            from mergetools.checkpoint import open_checkpoint
            from mergetools.signature import signature_of_checkpoint

            checkpoint = open_checkpoint(path)
            fp: str | None = None
            if fingerprint:
                from mergetools.fingerprint import fingerprint_checkpoint

                fp = fingerprint_checkpoint(checkpoint, cache_dir=cache, progress=progress)
            sig = signature_of_checkpoint(checkpoint, fingerprint=fp)
            if name_or_path or revision:
                sig = dataclasses.replace(
                    sig,
                    name_or_path=name_or_path or sig.name_or_path,
                    revision=revision or sig.revision,
                )
            return InspectOutcome("signature", sig.to_dict(), notes)
        from mergetools.inspect import summarize_checkpoint

        summary = summarize_checkpoint(
            path, fingerprint=fingerprint, cache_dir=cache, progress=progress
        )
        data = summary.to_dict()
        data["name"] = resolved.label
        provenance = resolved.provenance()
        if provenance is not None:
            data.update(provenance)
        return InspectOutcome("checkpoint", data, notes)
