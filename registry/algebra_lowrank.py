"""Use cases: resize an adapter / extract one from a fine-tuned checkpoint, optionally registering it.

Inputs may be folders or registry references (resolved with :mod:`registry.refs`). With ``name``
the result is written to a temporary folder under ``$LORADEX_HOME/cache``, registered with its
lineage, then removed: resize records its source as a ``derived-from`` parent (method
``resize``, rank or energy and the worst error in ``params``); extract records a registered
tuned or base *adapter* as ``extracted-from`` when there is one — checkpoints are not versions,
so their references, fingerprints and the errors go into the version's metadata.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergetools.algebra.extract import ExtractResult, extract_lora
from mergetools.algebra.requests_lowrank import ExtractRequest, ResizeRequest
from mergetools.algebra.resize import ResizeResult, resize_adapter
from mergetools.errors import InvalidInputError
from mergetools.outdir import ProtectedPath
from registry.inputs import ParentInput
from registry.refs import named_by_reference, resolve_adapter_refs, resolve_base_ref
from registry.settings import Settings
from registry.sources import registry_source

logger = logging.getLogger(__name__)


@dataclass
class LowRankOutcome:
    """The operation's result, and the registered version when ``name`` was given."""

    result: ResizeResult | ExtractResult
    registered: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = self.result.to_dict()
        if self.registered is not None:
            data["out"] = None
            data["registered"] = self.registered
        return data


def _target(out: str | Path | None, name: str | None) -> None:
    if (out is None) == (name is None):
        raise InvalidInputError("give exactly one of an output folder or a name to register the result under")


def _scratch(settings: Settings) -> Path:
    root = settings.cache_dir / "algebra"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=root, prefix="lowrank-")) / "adapter"


def resize_and_register(
    settings: Settings,
    request: ResizeRequest,
    *,
    out: str | Path | None = None,
    name: str | None = None,
    force: bool = False,
    protected: Sequence[ProtectedPath] = (),
    progress: Any = None,
) -> LowRankOutcome:
    """Resize ``request.source`` into ``out``, or register the result as ``name``."""
    _target(out, name)
    (source,) = resolve_adapter_refs(registry_source(settings), [request.source])
    target = Path(out) if out is not None else _scratch(settings)
    try:
        with named_by_reference([source]):
            result = resize_adapter(
                request, target, source=source.path, force=force if out is not None else False,
                protected=protected if out is not None else (), progress=progress,
            )
        if name is None:
            return LowRankOutcome(result)
        params = {
            "rank": request.rank,
            "energy": request.energy,
            "max_relative_error": result.max_relative_error,
            "min_kept_energy": result.min_kept_energy,
            "modules": {m.path: {"rank": m.rank_after, "relative_error": m.relative_error} for m in result.modules},
        }
        parents = []
        if source.registered:
            parents.append(ParentInput(ref=source.version.ref, relation="derived-from", method="resize", params=params))  # type: ignore[union-attr]
        registered = _register(settings, target, name=name, parents=parents, metadata={"resize": {
            "request": request.to_dict(), "source": source.label, **({} if source.registered else params)}})
        return LowRankOutcome(result, registered)
    finally:
        if out is None:
            shutil.rmtree(target.parent, ignore_errors=True)


def extract_and_register(
    settings: Settings,
    request: ExtractRequest,
    *,
    out: str | Path | None = None,
    name: str | None = None,
    force: bool = False,
    protected: Sequence[ProtectedPath] = (),
    progress: Any = None,
) -> LowRankOutcome:
    """Extract ``request.tuned - request.base`` into ``out``, or register it as ``name``."""
    _target(out, name)
    base = resolve_base_ref(registry_source(settings), request.base)
    tuned = resolve_base_ref(registry_source(settings), request.tuned)
    target = Path(out) if out is not None else _scratch(settings)
    try:
        with named_by_reference([base, tuned]):
            result = extract_lora(
                request, target, base=base.path, tuned=tuned.path,
                base_model_name_or_path=base.name or request.base,
                force=force if out is not None else False,
                protected=protected if out is not None else (), progress=progress,
            )
        if name is None:
            return LowRankOutcome(result)
        metadata = {
            "extract": {
                "request": request.to_dict(),
                "base": base.provenance() or {"ref": base.label},
                "tuned": tuned.provenance() or {"ref": tuned.label},
                "svd": result.svd_method,
                "max_relative_error": result.max_relative_error,
                "verified": [m.to_dict() for m in result.verified()],
                "kept_full": result.kept_full,
                "not_extracted": [t for t, _ in result.not_extracted],
            }
        }
        registered = _register(
            settings, target, name=name, parents=[], metadata=metadata, base=base.name if base.registered else None
        )
        return LowRankOutcome(result, registered)
    finally:
        if out is None:
            shutil.rmtree(target.parent, ignore_errors=True)


def _register(
    settings: Settings,
    path: Path,
    *,
    name: str,
    parents: list[ParentInput],
    metadata: dict[str, Any],
    base: str | None = None,
) -> dict[str, Any]:
    from registry.service import Registry

    registry = Registry(settings)
    try:
        row = registry.register(path, name=name, parents=parents, metadata=metadata, base=base)
    finally:
        registry.close()
    return row.to_dict()
