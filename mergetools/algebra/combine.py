"""Combine weighted LoRA adapters into one, and rescale one adapter.

See :mod:`mergetools.algebra.methods` for each method's math. Every output has scale 1
(:mod:`mergetools.algebra.writer`): ``lora_b @ lora_a`` of each module is exactly the delta the
method computed (``cat``), or its best rank-``rank`` approximation (every other method), and the
reported ``rel_error`` is ``||computed - written||_F / ||computed||_F`` (per module and over the
whole adapter).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from mergetools.adapter import Adapter, load_adapter
from mergetools.algebra.factors import Factors, fan_in_fan_out, read_factors, refuse_for_algebra
from mergetools.algebra.lowrank import truncate_dense, truncate_sum
from mergetools.algebra.methods import METHOD_TABLE, dare_masks
from mergetools.algebra.requests import CombineRequest, RescaleRequest
from mergetools.algebra.writer import WrittenAdapter, write_adapter
from mergetools.errors import IncompatibleError, InvalidInputError
from mergetools.inspect import recorded_base_fingerprint
from mergetools.merge import pick_device
from mergetools.outdir import ProtectedPath, check_output_path, input_guards

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class ModuleResult:
    """How one output module came about."""

    rank: int
    kept_energy: float
    rel_error: float
    sources: int  # how many sources have this module


@dataclass
class CombineResult:
    """What :func:`combine_adapters` wrote and how close it is to the computed combination."""

    out: Path
    method: str
    rank: int | None  # the truncation rank (None for cat)
    modules: dict[str, ModuleResult]
    rel_error: float  # over the whole adapter: sqrt(sum of dropped energy / sum of energy)
    max_rel_error: float
    kept_energy: float
    device: str
    seconds: float
    written: WrittenAdapter
    base_fingerprint: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "out": str(self.out),
            "method": self.method,
            "rank": self.rank,
            "modules": len(self.modules),
            "max_module_rank": max((m.rank for m in self.modules.values()), default=0),
            "rel_error": self.rel_error,
            "max_rel_error": self.max_rel_error,
            "kept_energy": self.kept_energy,
            "device": self.device,
            "seconds": round(self.seconds, 3),
            "base_fingerprint": self.base_fingerprint,
            "files": dict(self.written.files),
            "module_errors": {p: m.rel_error for p, m in sorted(self.modules.items())},
            "notes": list(self.notes),
        }


@dataclass
class RescaleResult:
    """What :func:`rescale_adapter` wrote."""

    out: Path
    scale: float
    modules: int
    written: WrittenAdapter
    base_fingerprint: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "out": str(self.out),
            "scale": self.scale,
            "modules": self.modules,
            "base_fingerprint": self.base_fingerprint,
            "files": dict(self.written.files),
        }


def common_base(
    adapters: Sequence[Adapter],
    *,
    labels: Sequence[str],
    fingerprints: Sequence[str | None] | None = None,
) -> tuple[str | None, str | None, list[str]]:
    """(base fingerprint, base_model_name_or_path, notes) shared by ``adapters``.

    Fingerprints (given by the caller, e.g. the registry's, else the ones the adapters record)
    must agree where known: adapters trained on different weights are refused. Different
    ``base_model_name_or_path`` values are only a note (the same base is often named two ways).
    """
    known = list(fingerprints) if fingerprints is not None else [None] * len(adapters)
    prints = [fp or recorded_base_fingerprint(a) for fp, a in zip(known, adapters, strict=True)]
    seen = {fp: label for fp, label in zip(prints, labels, strict=True) if fp}
    if len(seen) > 1:
        listed = ", ".join(f"{label}: {fp[:12]}" for fp, label in seen.items())
        raise IncompatibleError(
            f"the adapters were trained on different bases (base fingerprints {listed}); "
            "combine adapters of one base only"
        )
    names = {str(a.config.get("base_model_name_or_path") or "") for a in adapters} - {""}
    notes = []
    if len(names) > 1:
        notes.append(
            f"the adapters name different bases ({', '.join(sorted(names))}); combined anyway — "
            "they agree on fingerprint or record none"
        )
    base_name = next(iter(sorted(names)), None) if len(names) == 1 else None
    return next(iter(seen), None), base_name, notes


def _task_type(adapters: Sequence[Adapter]) -> str | None:
    types = {a.config.get("task_type") for a in adapters}
    value = types.pop() if len(types) == 1 else None
    return value if isinstance(value, str) else None


def _check_modules(
    factors: Sequence[dict[str, Factors]], labels: Sequence[str]
) -> dict[str, list[int]]:
    """Module path -> indices of the sources that have it; refuse kind or shape disagreements."""
    present: dict[str, list[int]] = {}
    for i, mods in enumerate(factors):
        for path in mods:
            present.setdefault(path, []).append(i)
    for path, idx in sorted(present.items()):
        first = factors[idx[0]][path]
        for j in idx[1:]:
            other = factors[j][path]
            if other.kind != first.kind or other.delta_shape != first.delta_shape:
                raise IncompatibleError(
                    f"module {path!r}: adapter {labels[idx[0]]!r} has a {first.kind} delta of shape "
                    f"{first.delta_shape} but adapter {labels[j]!r} has a {other.kind} delta of shape "
                    f"{other.delta_shape}; were they trained on different bases?"
                )
    return present


def _sum_bias(terms: Sequence[Factors]) -> Tensor | None:
    biases = [t.bias for t in terms if t.bias is not None]
    if not biases:
        return None
    return torch.stack(biases).sum(dim=0)


def _combine_dense(
    path: str,
    terms: Sequence[Factors],
    request: CombineRequest,
    *,
    rank: int,
    device: torch.device,
) -> tuple[Factors, float, float]:
    method = METHOD_TABLE[request.method]
    assert method.dense is not None
    density = float(request.density or 1.0)
    seed = int(request.seed or 0)

    def combine(tensors: list[Tensor], name: str) -> Tensor:
        masks = (
            dare_masks(tensors[0].shape, len(tensors), seed=seed, module=name, density=density)
            if method.random
            else []
        )
        return method.dense(  # type: ignore[misc]
            tensors, density=density, masks=masks, majority_sign=request.majority_sign or "total"
        )

    deltas = [
        (
            t.lora_b.to(device).reshape(t.lora_b.shape[0], t.rank)
            @ t.lora_a.to(device).reshape(t.rank, -1)
        )
        for t in terms
    ]
    first = terms[0]
    combined = combine(deltas, path).reshape(first.delta_shape)
    del deltas
    lora_b, lora_a, kept, rel = truncate_dense(combined, rank)
    bias = None
    biases = [t.bias for t in terms]
    if any(b is not None for b in biases):
        filled = [
            (b if b is not None else torch.zeros(first.delta_shape[0])).to(device) for b in biases
        ]
        bias = combine(filled, f"{path}.bias").cpu()
    return Factors(first.kind, lora_a.cpu(), lora_b.cpu(), bias), kept, rel


def _combine_low_rank(
    terms: Sequence[Factors], request: CombineRequest, *, rank: int
) -> tuple[Factors, float, float]:
    first = terms[0]
    bias = _sum_bias(terms)
    if request.method == "cat":
        lora_a = torch.cat([t.lora_a for t in terms], dim=0)
        lora_b = torch.cat([t.lora_b for t in terms], dim=1)
        return Factors(first.kind, lora_a, lora_b, bias), 1.0, 0.0
    lora_b, lora_a, kept, rel = truncate_sum([(t.lora_b, t.lora_a) for t in terms], rank)
    return Factors(first.kind, lora_a, lora_b, bias), kept, rel


def combine_adapters(
    request: CombineRequest,
    sources: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str],
    labels: Sequence[str] | None = None,
    base_fingerprints: Sequence[str | None] | None = None,
    protected: Sequence[ProtectedPath] = (),
    progress: Progress | None = None,
    fsync: bool = True,
) -> CombineResult:
    """Combine the adapter folders ``sources`` as ``request`` says and write the result to ``out``.

    ``sources`` are the folders of ``request.sources`` (resolved by the caller), ``labels`` how
    messages name them (default: the folders). Nothing is written when anything is refused:
    DoRA / full replacements / trainable tokens, different bases, kind or shape disagreements
    of one module, ``fan_in_fan_out`` disagreement. A module present in only some sources is a
    zero term of the others, for every method.
    """
    start = time.perf_counter()
    paths = [Path(s) for s in sources]
    if len(paths) != len(request.sources):
        raise InvalidInputError(
            f"got {len(paths)} source folders for {len(request.sources)} sources in the request"
        )
    names = list(labels) if labels is not None else [str(p) for p in paths]
    out_path = Path(out)
    check_output_path(out_path, paths, force=request.force, protected=protected)
    device = pick_device(request.device) if request.dense else torch.device("cpu")
    adapters = [load_adapter(p) for p in paths]
    operation = f"combine ({request.method})"
    for adapter in adapters:
        refuse_for_algebra(adapter, operation=operation)
    fifo = fan_in_fan_out(dict(zip(names, adapters, strict=True)))
    base_fp, base_name, notes = common_base(adapters, labels=names, fingerprints=base_fingerprints)
    factors = [
        read_factors(a, weight=w, operation=operation)
        for a, w in zip(adapters, request.weights, strict=True)
    ]
    present = _check_modules(factors, names)
    source_rank = max(f.rank for mods in factors for f in mods.values())
    rank = None if request.method == "cat" else (request.rank or source_rank)
    partial = sorted(p for p, idx in present.items() if len(idx) < len(factors))
    if partial:
        notes.append(
            f"{len(partial)} module(s) are in only some adapters (e.g. {partial[0]}); "
            "a missing module is a zero term"
        )
    modules: dict[str, Factors] = {}
    results: dict[str, ModuleResult] = {}
    dropped = total = 0.0
    items = sorted(present.items())
    for n, (path, idx) in enumerate(items):
        terms = [factors[i][path] for i in idx]
        if request.dense:
            assert rank is not None
            combined, kept, rel = _combine_dense(path, terms, request, rank=rank, device=device)
        else:
            combined, kept, rel = _combine_low_rank(terms, request, rank=rank or 0)
        energy = (
            float(combined.lora_b.double().norm() ** 2) / max(kept, 1e-300) if kept > 0 else 0.0
        )
        # energy of the computed delta, from what was kept: ||kept||^2 / kept_fraction
        total += energy
        dropped += energy * (1.0 - kept)
        modules[path] = combined
        results[path] = ModuleResult(combined.rank, kept, rel, len(idx))
        if progress is not None:
            progress(n + 1, len(items))
    written = write_adapter(
        out_path,
        modules,
        base_model_name_or_path=base_name,
        task_type=_task_type(adapters),
        fan_in_fan_out=fifo,
        force=request.force,
        protected=input_guards(paths, protected),
        fsync=fsync,
        base_fingerprint=base_fp,
    )
    overall = math.sqrt(max(dropped, 0.0) / total) if total > 0 else 0.0
    result = CombineResult(
        out=out_path,
        method=request.method,
        rank=rank,
        modules=results,
        rel_error=overall,
        max_rel_error=max((m.rel_error for m in results.values()), default=0.0),
        kept_energy=1.0 - (dropped / total if total > 0 else 0.0),
        device=str(device),
        seconds=time.perf_counter() - start,
        written=written,
        base_fingerprint=base_fp,
        notes=notes,
    )
    logger.info(
        "combined %d adapters by %s into %s: %d modules, rel error %.3g",
        len(paths),
        request.method,
        out_path,
        len(modules),
        overall,
    )
    return result


def rescale_adapter(
    request: RescaleRequest,
    source: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    base_fingerprint: str | None = None,
    protected: Sequence[ProtectedPath] = (),
    fsync: bool = True,
) -> RescaleResult:
    """Write ``source`` with its delta (and ``lora_bias``) exactly ``request.scale`` times as large.

    The scale, the adapter's own ``alpha / r``, is folded into ``lora_b`` with ``request.scale``;
    ``lora_a`` is stored unchanged. DoRA, full replacements and trainable tokens are refused.
    """
    path = Path(source)
    out_path = Path(out)
    check_output_path(out_path, [path], force=request.force, protected=protected)
    adapter = load_adapter(path)
    modules = read_factors(adapter, weight=request.scale, operation="rescale")
    fingerprint = base_fingerprint or recorded_base_fingerprint(adapter)
    name = adapter.config.get("base_model_name_or_path")
    written = write_adapter(
        out_path,
        modules,
        base_model_name_or_path=name if isinstance(name, str) else None,
        task_type=_task_type([adapter]),
        fan_in_fan_out=bool(adapter.config.get("fan_in_fan_out")),
        force=request.force,
        protected=input_guards([path], protected),
        fsync=fsync,
        base_fingerprint=fingerprint,
    )
    logger.info("rescaled %s by %g into %s", path, request.scale, out_path)
    return RescaleResult(
        out=out_path,
        scale=request.scale,
        modules=len(modules),
        written=written,
        base_fingerprint=fingerprint,
    )
