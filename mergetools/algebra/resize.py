"""Resize an adapter: the best rank-R (or energy-E) approximation of every module, from its factors.

Each module's delta ``B @ A`` (scale folded in) is decomposed exactly by
:func:`mergetools.algebra.spectral.factored_svd` — QR of B and of A^T, SVD of the (r, r) core —
never by a dense (out, in) SVD. By Eckart-Young the first R singular triplets are the best rank-R
approximation in Frobenius norm; the written module is ``lora_a = Vh_R``, ``lora_b = U_R S_R``
at scale 1. Modules already at or below the target rank are copied exactly (scale folded in).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mergetools.adapter import load_adapter
from mergetools.algebra.factors import Factors, fan_in_fan_out, read_factors
from mergetools.algebra.requests_lowrank import ResizeRequest
from mergetools.algebra.spectral import (
    factored_relative_error,
    factored_svd,
    rank_for_energy,
    truncate,
)
from mergetools.algebra.writer import WrittenAdapter, write_adapter
from mergetools.outdir import ProtectedPath, check_output_path, input_guards

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ModuleResize:
    """What resize did to one module."""

    path: str
    rank_before: int
    rank_after: int
    kept_energy: float
    """``sum(s_kept^2) / sum(s^2)`` of the module's delta."""
    relative_error: float
    """``||dW - dW_r||_F / ||dW||_F``."""

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "rank_before": self.rank_before,
            "rank_after": self.rank_after,
            "kept_energy": self.kept_energy,
            "relative_error": self.relative_error,
        }


@dataclass
class ResizeResult:
    """What :func:`resize_adapter` wrote and the per-module errors."""

    written: WrittenAdapter
    modules: list[ModuleResize]
    seconds: float
    request: ResizeRequest = field(repr=False)

    @property
    def max_relative_error(self) -> float:
        return max((m.relative_error for m in self.modules), default=0.0)

    @property
    def min_kept_energy(self) -> float:
        return min((m.kept_energy for m in self.modules), default=1.0)

    def to_dict(self) -> dict[str, object]:
        return {
            "out": str(self.written.out),
            "request": self.request.to_dict(),
            "max_rank": max(self.written.ranks.values()),
            "max_relative_error": self.max_relative_error,
            "min_kept_energy": self.min_kept_energy,
            "seconds": self.seconds,
            "modules": [m.to_dict() for m in self.modules],
            "files": dict(self.written.files),
        }


def resize_factors(factors: Factors, *, rank: int | None, energy: float | None) -> tuple[Factors, ModuleResize]:
    """One module at rank ``rank`` (or the smallest rank keeping ``energy``); exact when it fits.

    Shapes:
        linear/embedding: lora_a (r, in), lora_b (out, r) -> (k, in), (out, k)
        conv: lora_a (r, in, *k), lora_b (out, r, 1, ...) -> (k, in, *k), (out, k, 1, ...)
    """
    r = factors.rank
    if rank is not None and r <= rank:
        return factors, ModuleResize("", r, r, 1.0, 0.0)
    full = factored_svd(factors.lora_a, factors.lora_b)
    k = rank if rank is not None else rank_for_energy(full.s, float(energy or 1.0))
    if k >= r:
        return factors, ModuleResize("", r, r, 1.0, 0.0)
    cut = truncate(full, k)
    lora_a, lora_b = cut.factors()
    lora_a = lora_a.reshape(k, *factors.lora_a.shape[1:])
    lora_b = lora_b.reshape(factors.lora_b.shape[0], k, *factors.lora_b.shape[2:])
    report = ModuleResize("", r, k, cut.kept_energy, factored_relative_error(full, k))
    return Factors(factors.kind, lora_a, lora_b, factors.bias), report


def resize_adapter(
    request: ResizeRequest,
    out: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    base_model_name_or_path: str | None = None,
    force: bool = False,
    protected: Sequence[ProtectedPath] = (),
    fsync: bool = True,
    progress: Progress | None = None,
    label: str | None = None,
) -> ResizeResult:
    """Resize the adapter folder ``source`` (default ``request.source``) into ``out``.

    The output keeps the source's ``base_model_name_or_path``, ``task_type`` and
    ``fan_in_fan_out``; every module is written at scale 1.
    """
    started = time.perf_counter()
    path = Path(source if source is not None else request.source)
    check_output_path(out, [path], force=force, protected=protected)
    adapter = load_adapter(path)
    modules = read_factors(adapter, operation="resize")
    flip = fan_in_fan_out({str(path): adapter})
    resized: dict[str, Factors] = {}
    reports: list[ModuleResize] = []
    for done, (name, factors) in enumerate(sorted(modules.items()), start=1):
        new, report = resize_factors(factors, rank=request.rank, energy=request.energy)
        resized[name] = new
        reports.append(ModuleResize(name, report.rank_before, report.rank_after, report.kept_energy, report.relative_error))
        if progress is not None:
            progress(done, len(modules))
    base_name = base_model_name_or_path or _str_or_none(adapter.config.get("base_model_name_or_path"))
    written = write_adapter(
        out,
        resized,
        base_model_name_or_path=base_name,
        task_type=_str_or_none(adapter.config.get("task_type")),
        fan_in_fan_out=flip,
        force=force,
        protected=input_guards([path], protected),
        fsync=fsync,
        label=label,
    )
    seconds = time.perf_counter() - started
    logger.info("resized %s into %s in %.2fs", path, written.out, seconds)
    return ResizeResult(written, reports, seconds, request)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
