"""Use cases of the adapter algebra: combine or rescale adapters, then write or register the result.

Sources are :class:`registry.refs.ResolvedAdapter` (folders or registered versions). The bases
of registered sources are compared by the fingerprints the registry knows; a result registered
with ``name`` carries lineage: one ``combined-from`` / ``rescaled-from`` edge per registered
source, with its weight, the method, its parameters and the errors reported. Sources given as
plain folders cannot be lineage parents and are listed in the version's metadata instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mergetools.algebra.combine import (
    combine_adapters,
    rescale_adapter,
)
from mergetools.algebra.requests import CombineRequest, RescaleRequest
from mergetools.outdir import ProtectedPath, clean_leftovers, create_temp_folder, remove_entry
from registry.inputs import ParentInput
from registry.records import RegisterResult
from registry.refs import ResolvedAdapter, named_by_reference
from registry.service import Registry
from registry.settings import Settings

logger = logging.getLogger(__name__)


class _Result(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class AlgebraOutcome:
    """The written result (combine, rescale, resize, extract), and the version it was registered
    as (with ``name``)."""

    result: _Result
    registered: RegisterResult | None = None

    def to_dict(self) -> dict[str, Any]:
        data = self.result.to_dict()
        if self.registered is not None:
            data["out"] = None
            data["registered"] = self.registered.to_dict()
        return data


def _fingerprints(
    registry: Registry | None, sources: Sequence[ResolvedAdapter]
) -> list[str | None]:
    out: list[str | None] = []
    for source in sources:
        fingerprint = None
        if registry is not None and source.version is not None:
            fingerprint = registry.show(source.version.ref).base_fingerprint
        out.append(fingerprint)
    return out


@contextlib.contextmanager
def scratch_folder(settings: Settings) -> Iterator[Path]:
    """A temp folder under ``$LORADEX_HOME/cache/algebra`` to write a result into before it is
    registered; removed afterwards. Its name records this process (:mod:`mergetools.outdir`), and
    the folders of killed processes are removed first."""
    root = settings.cache_dir / "algebra"
    root.mkdir(parents=True, exist_ok=True)
    clean_leftovers(root)
    folder = create_temp_folder(root, "result")
    try:
        yield folder
    finally:
        remove_entry(folder)


def _parents(
    sources: Sequence[ResolvedAdapter],
    weights: Sequence[float | None],
    *,
    relation: str,
    params: dict[str, Any],
    seed: int | None,
) -> list[ParentInput]:
    by_version: dict[str, ParentInput] = {}
    for source, weight in zip(sources, weights, strict=True):
        if source.version is None:
            continue
        ref = source.version.ref
        if ref in by_version:  # the same version twice: one edge, every weight listed
            edge = by_version[ref]
            edge.params["weights"] = [*edge.params.get("weights", [edge.weight]), weight]
            continue
        by_version[ref] = ParentInput(
            ref=ref,
            relation=relation,
            method=str(params["method"]),
            weight=weight,
            seed=seed,
            params={**params, "source": source.ref},
        )
    return list(by_version.values())


def _register(
    registry: Registry,
    folder: Path,
    *,
    name: str,
    sources: Sequence[ResolvedAdapter],
    parents: list[ParentInput],
    request: dict[str, Any],
    actor: str | None,
) -> RegisterResult:
    unregistered = [str(s.path) for s in sources if not s.registered]
    metadata: dict[str, Any] = {"request": request}
    if unregistered:
        metadata["unregistered_sources"] = unregistered
    return registry.register(folder, name=name, parents=parents, metadata=metadata, actor=actor)


def combine(
    registry: Registry | None,
    request: CombineRequest,
    sources: Sequence[ResolvedAdapter],
    *,
    protected: Sequence[ProtectedPath] = (),
    progress: Callable[[int, int], None] | None = None,
    fsync: bool = True,
    actor: str | None = None,
) -> AlgebraOutcome:
    """Combine ``sources`` (the resolved ``request.sources``) and write ``request.out``, or
    register the result as ``request.name`` with ``combined-from`` lineage (needs ``registry``)."""
    fingerprints = _fingerprints(registry, sources)
    labels = [s.label for s in sources]
    paths = [s.path for s in sources]
    with named_by_reference(list(sources)):
        if request.name is None:
            assert request.out is not None
            result = combine_adapters(
                request,
                paths,
                out=request.out,
                labels=labels,
                base_fingerprints=fingerprints,
                protected=protected,
                progress=progress,
                fsync=fsync,
            )
            return AlgebraOutcome(result)
        if registry is None:
            raise ValueError("registering a combination needs a registry")
        with scratch_folder(registry.settings) as scratch:
            out = scratch / "adapter"
            result = combine_adapters(
                request,
                paths,
                out=out,
                labels=labels,
                base_fingerprints=fingerprints,
                progress=progress,
                fsync=fsync,
            )
            params = {
                **request.params(),
                "rel_error": result.rel_error,
                "max_rel_error": result.max_rel_error,
                "kept_energy": result.kept_energy,
            }
            parents = _parents(
                sources,
                list(request.weights),
                relation="combined-from",
                params=params,
                seed=request.seed,
            )
            registered = _register(
                registry,
                out,
                name=request.name,
                sources=sources,
                parents=parents,
                request={**request.to_dict(), **params},
                actor=actor,
            )
    return AlgebraOutcome(result, registered)


def rescale(
    registry: Registry | None,
    request: RescaleRequest,
    source: ResolvedAdapter,
    *,
    protected: Sequence[ProtectedPath] = (),
    fsync: bool = True,
    actor: str | None = None,
) -> AlgebraOutcome:
    """Rescale ``source`` and write ``request.out``, or register it as ``request.name`` with a
    ``rescaled-from`` edge (needs ``registry``)."""
    fingerprint = _fingerprints(registry, [source])[0]
    with named_by_reference([source]):
        if request.name is None:
            assert request.out is not None
            result = rescale_adapter(
                request,
                source.path,
                out=request.out,
                base_fingerprint=fingerprint,
                protected=protected,
                fsync=fsync,
            )
            return AlgebraOutcome(result)
        if registry is None:
            raise ValueError("registering a rescaled adapter needs a registry")
        with scratch_folder(registry.settings) as scratch:
            out = scratch / "adapter"
            result = rescale_adapter(
                request, source.path, out=out, base_fingerprint=fingerprint, fsync=fsync
            )
            parents = _parents(
                [source],
                [request.scale],
                relation="rescaled-from",
                params=request.params(),
                seed=None,
            )
            registered = _register(
                registry,
                out,
                name=request.name,
                sources=[source],
                parents=parents,
                request=request.to_dict(),
                actor=actor,
            )
    return AlgebraOutcome(result, registered)
