"""Use cases: resize an adapter / extract one from a fine-tuned checkpoint, optionally registering it.

Inputs may be folders or registry references (resolved with :mod:`registry.refs`). With ``name``
the result is written to a temporary folder under ``$LORADEX_HOME/cache``, registered with its
lineage, then removed: resize records its source as a ``derived-from`` parent (method
``resize``, rank or energy and the worst error in ``params``); extract records a registered
tuned or base *adapter* as ``extracted-from`` when there is one — checkpoints are not versions,
so their references, fingerprints and the errors go into the version's metadata.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mergetools.algebra.extract import extract_lora
from mergetools.algebra.requests_lowrank import ExtractRequest, ResizeRequest
from mergetools.algebra.resize import resize_adapter
from mergetools.errors import InvalidInputError
from mergetools.outdir import ProtectedPath
from registry.algebra import AlgebraOutcome, scratch_folder
from registry.inputs import ParentInput
from registry.records import RegisterResult
from registry.refs import named_by_reference, resolve_adapter_refs, resolve_base_ref
from registry.settings import Settings
from registry.sources import opened, registry_source

logger = logging.getLogger(__name__)


def _target(out: str | Path | None, name: str | None) -> None:
    if (out is None) == (name is None):
        raise InvalidInputError("give exactly one of an output folder or a name to register the result under")


@contextlib.contextmanager
def _target_folder(settings: Settings, out: str | Path | None) -> Iterator[Path]:
    """``out``, or (to register the result) a scratch folder removed afterwards."""
    if out is not None:
        yield Path(out)
        return
    with scratch_folder(settings) as scratch:
        yield scratch / "adapter"


def resize_and_register(
    settings: Settings,
    request: ResizeRequest,
    *,
    out: str | Path | None = None,
    name: str | None = None,
    force: bool = False,
    protected: Sequence[ProtectedPath] = (),
    progress: Any = None,
    actor: str | None = None,
) -> AlgebraOutcome:
    """Resize ``request.source`` into ``out``, or register the result as ``name``."""
    _target(out, name)
    (source,) = resolve_adapter_refs(registry_source(settings), [request.source])
    with _target_folder(settings, out) as target, named_by_reference([source]):
        result = resize_adapter(
            request, target, source=source.path, force=force if out is not None else False,
            protected=protected if out is not None else (), progress=progress,
        )
        if name is None:
            return AlgebraOutcome(result)
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
        registered = _register(settings, target, name=name, parents=parents, actor=actor, metadata={"resize": {
            "request": request.to_dict(), "source": source.label, **({} if source.registered else params)}})
        return AlgebraOutcome(result, registered)


def extract_and_register(
    settings: Settings,
    request: ExtractRequest,
    *,
    out: str | Path | None = None,
    name: str | None = None,
    force: bool = False,
    protected: Sequence[ProtectedPath] = (),
    progress: Any = None,
    actor: str | None = None,
) -> AlgebraOutcome:
    """Extract ``request.tuned - request.base`` into ``out``, or register it as ``name``."""
    _target(out, name)
    base = resolve_base_ref(registry_source(settings), request.base)
    tuned = resolve_base_ref(registry_source(settings), request.tuned)
    with _target_folder(settings, out) as target, named_by_reference([base, tuned]):
        result = extract_lora(
            request, target, base=base.path, tuned=tuned.path,
            base_model_name_or_path=base.name or request.base,
            force=force if out is not None else False,
            protected=protected if out is not None else (), progress=progress,
        )
        if name is None:
            return AlgebraOutcome(result)
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
            settings, target, name=name, parents=[], metadata=metadata, actor=actor,
            base=base.name if base.registered else None,
        )
        return AlgebraOutcome(result, registered)


def _register(
    settings: Settings,
    path: Path,
    *,
    name: str,
    parents: list[ParentInput],
    metadata: dict[str, Any],
    actor: str | None,
    base: str | None = None,
) -> RegisterResult:
    with opened(settings) as registry:  # a registry server's when LORADEX_SERVER is set
        return registry.register(
            path, name=name, parents=parents, metadata=metadata, base=base, actor=actor
        )
