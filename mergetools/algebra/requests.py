"""Request records of the adapter algebra: what a shell builds, a job carries and lineage stores.

Each is a frozen dataclass that validates itself on construction (so an invalid request never
exists), with ``to_dict()`` / ``from_dict()`` for JSON. Sources are references as the user gave
them (a folder path or a registry reference such as ``NAME@production``); resolving them is the
caller's job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mergetools.errors import InvalidInputError

# Canonical method names (the table with their math lives in mergetools.algebra.methods; kept
# here as plain names so that validating a request needs no torch).
LOW_RANK_METHODS = ("cat", "linear", "svd")
DENSE_METHODS = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
METHODS = (*LOW_RANK_METHODS, *DENSE_METHODS)
METHOD_ALIASES = {f"{m}_svd": m for m in DENSE_METHODS}
SIGN_METHODS = ("total", "frequency")
_USES_SIGN = ("ties", "dare_ties")
_USES_SEED = ("dare_linear", "dare_ties")


def canonical_method(name: str) -> str:
    """``ties_svd`` -> ``ties``; refuse an unknown name, listing the known ones."""
    method = METHOD_ALIASES.get(name, name)
    if method not in METHODS:
        known = ", ".join([*METHODS, *METHOD_ALIASES])
        raise InvalidInputError(f"unknown combine method {name!r}; expected one of {known}")
    return method


def _finite(value: float, *, what: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInputError(f"{what} must be a finite number, got {value!r}")
    return number


def _destination(out: str | None, name: str | None) -> None:
    if (out is None) == (name is None):
        raise InvalidInputError(
            "give exactly one destination: an output folder, or a registry name to register the result as"
        )


@dataclass(frozen=True)
class CombineRequest:
    """Combine ``sources`` (weighted) into one new adapter with ``method``.

    ``weights`` has one entry per source (default 1 each). ``rank`` is the rank the result is
    truncated to (``linear``/``svd``/dense methods; default: the largest source rank, resolved
    when the sources are read); ``cat`` keeps every term and takes no rank. ``density``
    (0, 1] is the fraction kept by TIES / DARE / magnitude pruning (required there, refused
    elsewhere); ``seed`` seeds DARE's masks (default 0); ``majority_sign`` is TIES's sign
    election (``total`` or ``frequency``, default ``total``).
    """

    sources: tuple[str, ...]
    method: str
    weights: tuple[float, ...] = ()
    rank: int | None = None
    density: float | None = None
    seed: int | None = None
    majority_sign: str | None = None
    out: str | None = None
    name: str | None = None
    force: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        sources = tuple(str(s) for s in self.sources)
        if len(sources) < 1:
            raise InvalidInputError("combine needs at least one source adapter")
        method = canonical_method(self.method)
        weights = tuple(_finite(w, what="a weight") for w in self.weights) or (1.0,) * len(sources)
        if len(weights) != len(sources):
            raise InvalidInputError(
                f"got {len(weights)} weights for {len(sources)} source adapters; give one per source, in order"
            )
        rank = self.rank
        if rank is not None:
            if method == "cat":
                raise InvalidInputError(
                    "method 'cat' keeps every term (its rank is the sum of the source ranks) and takes no rank; "
                    "use 'linear' to truncate"
                )
            if int(rank) < 1:
                raise InvalidInputError(f"rank must be at least 1, got {rank}")
            rank = int(rank)
        density = self.density
        if method in DENSE_METHODS:
            if density is None:
                raise InvalidInputError(
                    f"method {method!r} needs a density: the fraction of each delta kept, in (0, 1]"
                )
            density = _finite(density, what="density")
            if not 0.0 < density <= 1.0:
                raise InvalidInputError(f"density must be in (0, 1], got {density}")
        elif density is not None:
            raise InvalidInputError(
                f"method {method!r} takes no density; density applies to {', '.join(DENSE_METHODS)}"
            )
        seed = self.seed
        if method in _USES_SEED:
            seed = 0 if seed is None else int(seed)
        elif seed is not None:
            raise InvalidInputError(
                f"method {method!r} is deterministic and takes no seed; a seed applies to {', '.join(_USES_SEED)}"
            )
        sign = self.majority_sign
        if method in _USES_SIGN:
            sign = sign or "total"
            if sign not in SIGN_METHODS:
                raise InvalidInputError(
                    f"majority sign method {sign!r} is not one of {', '.join(SIGN_METHODS)}"
                )
        elif sign is not None:
            raise InvalidInputError(
                f"method {method!r} elects no sign; a majority sign method applies to {', '.join(_USES_SIGN)}"
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InvalidInputError(f"device {self.device!r} is not one of auto, cpu, cuda")
        _destination(self.out, self.name)
        for attr, value in (
            ("sources", sources),
            ("method", method),
            ("weights", weights),
            ("rank", rank),
            ("density", density),
            ("seed", seed),
            ("majority_sign", sign),
        ):
            object.__setattr__(self, attr, value)

    @property
    def dense(self) -> bool:
        """Whether the method works on full deltas (TIES, DARE, magnitude pruning)."""
        return self.method in DENSE_METHODS

    def params(self) -> dict[str, Any]:
        """The method's parameters, as lineage records them (unset ones left out)."""
        out: dict[str, Any] = {"method": self.method}
        for key in ("rank", "density", "seed", "majority_sign"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "combine",
            "sources": list(self.sources),
            "weights": list(self.weights),
            "method": self.method,
            "rank": self.rank,
            "density": self.density,
            "seed": self.seed,
            "majority_sign": self.majority_sign,
            "out": self.out,
            "name": self.name,
            "force": self.force,
            "device": self.device,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CombineRequest:
        if data.get("kind", "combine") != "combine":
            raise InvalidInputError(f"not a combine request: kind {data.get('kind')!r}")
        return cls(
            sources=tuple(data["sources"]),
            method=str(data["method"]),
            weights=tuple(data.get("weights") or ()),
            rank=data.get("rank"),
            density=data.get("density"),
            seed=data.get("seed"),
            majority_sign=data.get("majority_sign"),
            out=data.get("out"),
            name=data.get("name"),
            force=bool(data.get("force", False)),
            device=str(data.get("device", "auto")),
        )


@dataclass(frozen=True)
class RescaleRequest:
    """Make ``source``'s delta (and its ``lora_bias``) exactly ``scale`` times what it was."""

    source: str
    scale: float
    out: str | None = None
    name: str | None = None
    force: bool = False

    def __post_init__(self) -> None:
        scale = _finite(self.scale, what="scale")
        if scale == 0.0:
            raise InvalidInputError(
                "scale 0 would write an adapter that does nothing; expected a non-zero number"
            )
        _destination(self.out, self.name)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "source", str(self.source))

    def params(self) -> dict[str, Any]:
        return {"method": "rescale", "scale": self.scale}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "rescale",
            "source": self.source,
            "scale": self.scale,
            "out": self.out,
            "name": self.name,
            "force": self.force,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RescaleRequest:
        if data.get("kind", "rescale") != "rescale":
            raise InvalidInputError(f"not a rescale request: kind {data.get('kind')!r}")
        return cls(
            source=str(data["source"]),
            scale=float(data["scale"]),
            out=data.get("out"),
            name=data.get("name"),
            force=bool(data.get("force", False)),
        )
