"""Request records of the low-rank operations: what the CLI builds, a job carries and lineage stores.

Frozen dataclasses that validate themselves on construction and round-trip through plain JSON
(:meth:`to_dict` / :meth:`from_dict`). Sources are kept as the user named them (a folder or a
registry reference such as ``NAME@production``); resolving them is the caller's job.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from mergetools.errors import InvalidInputError

logger = logging.getLogger(__name__)

KEEP_FULL_CHOICES = ("norm", "bias")
"""Kinds of tensors extract can keep as full replacements (they cannot be decomposed)."""

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def _check_target(rank: int | None, energy: float | None, *, what: str) -> None:
    if (rank is None) == (energy is None):
        raise InvalidInputError(f"{what}: give exactly one of a rank or an energy fraction")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise InvalidInputError(f"{what}: rank {rank!r} must be a whole number >= 1")
    if energy is not None:
        if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not math.isfinite(energy):
            raise InvalidInputError(f"{what}: energy {energy!r} must be a number in (0, 1]")
        if not 0.0 < float(energy) <= 1.0:
            raise InvalidInputError(f"{what}: energy {energy} must be in (0, 1], e.g. 0.99")


def _get(data: Mapping[str, object], key: str, *, what: str, required: bool = True) -> object:
    if key not in data:
        if required:
            raise InvalidInputError(f"{what}: the record lacks {key!r}")
        return None
    return data[key]


def _known(data: Mapping[str, object], keys: tuple[str, ...], *, what: str) -> None:
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise InvalidInputError(f"{what}: unknown field {unknown[0]!r}; expected {', '.join(keys)}")


@dataclass(frozen=True)
class ResizeRequest:
    """Resize ``source`` to ``rank`` per module, or to the smallest ranks keeping ``energy``."""

    source: str
    rank: int | None = None
    energy: float | None = None

    FIELDS = ("operation", "source", "rank", "energy")

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise InvalidInputError("resize request: source must be a non-empty folder or reference")
        _check_target(self.rank, self.energy, what="resize request")
        if self.energy is not None:
            object.__setattr__(self, "energy", float(self.energy))

    def to_dict(self) -> dict[str, object]:
        return {"operation": "resize", "source": self.source, "rank": self.rank, "energy": self.energy}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ResizeRequest:
        what = "resize request"
        _known(data, cls.FIELDS, what=what)
        if data.get("operation", "resize") != "resize":
            raise InvalidInputError(f"{what}: operation is {data.get('operation')!r}, expected 'resize'")
        return cls(
            source=_get(data, "source", what=what),  # type: ignore[arg-type]
            rank=_get(data, "rank", what=what, required=False),  # type: ignore[arg-type]
            energy=_get(data, "energy", what=what, required=False),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class ExtractRequest:
    """Extract a LoRA of ``tuned - base`` at ``rank`` per module (or keeping ``energy``).

    ``keep_full`` names tensor kinds kept as full replacements (``norm``, ``bias``);
    ``verify_modules`` is how many modules are also decomposed by an exact dense SVD to report
    the randomized SVD's error against the optimum; ``oversample``, ``power_iters`` and ``seed``
    tune the randomized range finder.
    """

    base: str
    tuned: str
    rank: int | None = None
    energy: float | None = None
    keep_full: tuple[str, ...] = ()
    device: str = "auto"
    verify_modules: int = 2
    oversample: int = 16
    power_iters: int = 3
    seed: int = 0

    FIELDS = (
        "operation", "base", "tuned", "rank", "energy", "keep_full", "device",
        "verify_modules", "oversample", "power_iters", "seed",
    )

    def __post_init__(self) -> None:
        what = "extract request"
        for name in ("base", "tuned"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidInputError(f"{what}: {name} must be a non-empty folder or reference")
        _check_target(self.rank, self.energy, what=what)
        if self.energy is not None:
            object.__setattr__(self, "energy", float(self.energy))
        keep = tuple(self.keep_full)
        for kind in keep:
            if kind not in KEEP_FULL_CHOICES:
                raise InvalidInputError(
                    f"{what}: cannot keep {kind!r} tensors in full; expected a subset of {', '.join(KEEP_FULL_CHOICES)}"
                )
        object.__setattr__(self, "keep_full", tuple(sorted(set(keep))))
        if self.device not in DEVICE_CHOICES and not str(self.device).startswith("cuda:"):
            raise InvalidInputError(f"{what}: device {self.device!r} is not one of {', '.join(DEVICE_CHOICES)}")
        for name, low in (("verify_modules", 0), ("oversample", 0), ("power_iters", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(f"{what}: {name} {value!r} must be a whole number >= {low}")

    def to_dict(self) -> dict[str, object]:
        return {
            "operation": "extract",
            "base": self.base,
            "tuned": self.tuned,
            "rank": self.rank,
            "energy": self.energy,
            "keep_full": list(self.keep_full),
            "device": self.device,
            "verify_modules": self.verify_modules,
            "oversample": self.oversample,
            "power_iters": self.power_iters,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ExtractRequest:
        what = "extract request"
        _known(data, cls.FIELDS, what=what)
        if data.get("operation", "extract") != "extract":
            raise InvalidInputError(f"{what}: operation is {data.get('operation')!r}, expected 'extract'")
        keep = data.get("keep_full", ())
        if not isinstance(keep, (list, tuple)):
            raise InvalidInputError(f"{what}: keep_full must be a list, got {keep!r}")
        defaults = cls.__dataclass_fields__
        kwargs: dict[str, object] = {}
        for name in ("device", "verify_modules", "oversample", "power_iters", "seed"):
            kwargs[name] = data.get(name, defaults[name].default)
        return cls(
            base=_get(data, "base", what=what),  # type: ignore[arg-type]
            tuned=_get(data, "tuned", what=what),  # type: ignore[arg-type]
            rank=data.get("rank"),  # type: ignore[arg-type]
            energy=data.get("energy"),  # type: ignore[arg-type]
            keep_full=tuple(str(k) for k in keep),
            **kwargs,  # type: ignore[arg-type]
        )
