"""Merge-and-record: fold adapters (folders or registered versions) into a base, record the result.

The use case the CLI's ``loradex merge``, the API and a merge job all call with a
:class:`mergetools.requests.MergeRequest`: resolve the base and adapter references
(:mod:`registry.refs`), merge (:func:`mergetools.merge.merge_adapters`, which records the request
in ``loradex.json``), and, when registered versions were merged, record the checkpoint so that
"which deployed checkpoint contains this adapter?" has an answer. The merge hashed its output as
it wrote it (tensors copied from a fingerprinted base take their cached digests): recording
reads nothing again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetools.merge import InputName, MergeResult, Progress, merge_adapters, preload_torch
from mergetools.outdir import ProtectedPath
from mergetools.requests import MergeRequest
from registry.records import CheckpointRow
from registry.refs import (
    ResolvedAdapter,
    ResolvedBase,
    named_by_reference,
    resolve_adapter_refs,
    resolve_base_ref,
)
from registry.settings import Settings
from registry.sources import opened, registry_source

if TYPE_CHECKING:
    from registry.sources import RegistryOrSettings

logger = logging.getLogger(__name__)


@dataclass
class MergeOutcome:
    """What :func:`merge` did: the request, the resolved inputs, the merge and its record."""

    request: MergeRequest
    base: ResolvedBase
    adapters: list[ResolvedAdapter]
    result: MergeResult
    checkpoint: CheckpointRow | None = None
    notes: list[str] = field(default_factory=list)
    """Which of a same-named folder and registered entry was used (one per such input)."""

    @property
    def recorded(self) -> bool:
        """Whether registered versions were merged (and so the checkpoint was recorded)."""
        return any(a.registered for a in self.adapters)

    def to_dict(self) -> dict[str, Any]:
        """The merge's summary; ``recorded_checkpoint`` when registered versions were merged."""
        data = self.result.to_dict()
        if self.recorded:
            data["recorded_checkpoint"] = (
                self.checkpoint.to_dict() if self.checkpoint is not None else None
            )
        return data


def merge(
    registry_or_settings: RegistryOrSettings,
    request: MergeRequest,
    *,
    protected: Sequence[ProtectedPath] = (),
    progress: Progress | None = None,
    notify: Callable[[str], None] | None = None,
    actor: str | None = None,
) -> MergeOutcome:
    """Resolve ``request``'s references, merge, and record the checkpoint of registered versions.

    ``registry_or_settings`` is an open registry or the settings to open one with (only when a
    reference names something registered). ``protected`` paths are never replaced by the output
    (the caller names the registry home, the current folder). ``notify`` is told, as soon as the
    references are resolved, when a bare name meant a registered entry and not the folder of
    that name (the notes are in the outcome too).
    """
    preload_torch()  # imports torch while the references are resolved and the merge plans
    source = registry_source(registry_or_settings)
    base = resolve_base_ref(source, request.base)
    adapters = resolve_adapter_refs(source, list(request.adapters))
    notes = [base.note] if base.note else []
    notes += [a.note for a in adapters if a.note]
    if notify is not None:
        for note in notes:
            notify(note)
    names = [InputName(a.label, a.provenance() or {}) if a.registered else None for a in adapters]
    base_fields = base.provenance()
    registered = any(a.registered for a in adapters)
    with named_by_reference([base, *adapters]):
        result = merge_adapters(
            base.path,
            [a.path for a in adapters],
            request.out,
            weights=list(request.weights) if request.weights is not None else None,
            weights_explicit=request.weights_explicit,
            labels=list(request.adapters),
            device=request.device,
            dtype=request.dtype,
            max_shard_size=request.max_shard_size,
            force=request.force,
            protected=protected,
            fsync=request.fsync,
            digests=registered,  # hashed while written, for the record
            digest_cache=_cache_dir(registry_or_settings) if registered else None,
            progress=progress,
            names=names,
            base_name=InputName(base.label, base_fields) if base_fields else None,
            request=request.to_dict(),
        )
    checkpoint = None
    if registered:
        checkpoint = record_merge(
            registry_or_settings,
            out=result.out,
            adapters=adapters,
            weights=request.weights,
            base=base,
            fingerprint=result.fingerprint,
            metadata={"request": request.to_dict()},
            actor=actor,
        )
    return MergeOutcome(request, base, adapters, result, checkpoint, notes)


def _cache_dir(registry_or_settings: RegistryOrSettings) -> Path | None:
    """The registry's cache folder (fingerprint digests of registered bases), if known."""
    settings = getattr(registry_or_settings, "settings", registry_or_settings)
    if not isinstance(settings, Settings) and callable(settings):
        settings = settings()
    return settings.cache_dir if isinstance(settings, Settings) else None


def record_merge(
    registry_or_settings: RegistryOrSettings,
    *,
    out: Path,
    adapters: Sequence[ResolvedAdapter],
    weights: Sequence[float] | None = None,
    base: ResolvedBase | None = None,
    fingerprint: str | None = None,
    metadata: dict[str, Any] | None = None,
    actor: str | None = None,
) -> CheckpointRow | None:
    """Record the checkpoint at ``out`` merged from ``adapters``; None when none is registered.

    Adapters given as plain folders are listed in the checkpoint's metadata (``unregistered``).
    """
    members = [
        (a.version, float(w))
        for a, w in zip(adapters, weights or [1.0] * len(adapters), strict=True)
        if a.version is not None
    ]
    if not members:
        return None
    extra = dict(metadata or {})
    unregistered = [str(a.path) for a in adapters if not a.registered]
    if unregistered:
        extra["unregistered"] = unregistered
    if base is not None:
        extra.setdefault("base_path", str(base.path))
    with opened(registry_or_settings) as registry:
        return registry.record_checkpoint(
            out,
            members=members,
            base_id=base.base_id if base else None,
            base_fingerprint=base.fingerprint if base else None,
            fingerprint=fingerprint,
            metadata=extra,
            actor=actor,
        )
