"""The merge request record: what a shell builds, a job carries and ``loradex.json`` records.

A frozen dataclass that validates itself on construction (so an invalid request never exists) and
round-trips through plain JSON (:meth:`MergeRequest.to_dict` / :meth:`MergeRequest.from_dict`,
strict: unknown fields are refused). The base and the adapters are references as the user gave
them (a folder path or a registry reference such as ``NAME@production``); resolving them is the
caller's job (:func:`registry.merges.merge`). No torch: validating a request costs nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mergetools.checkpoint import parse_size
from mergetools.errors import InvalidInputError

logger = logging.getLogger(__name__)

DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")
"""Output dtypes of a merge: ``auto`` keeps the base's dtypes."""

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""Devices of a merge (``cuda:N`` names one GPU)."""

DEFAULT_MAX_SHARD_SIZE = "5GB"

_WHAT = "merge request"


def _text(value: object, *, field: str, expected: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{_WHAT}: {field} {value!r} is not {expected}")
    return value


def _flag(value: object, *, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{_WHAT}: {field} {value!r} is not true or false")
    return value


def _weight(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{_WHAT}: weight {value!r} is not a finite number")
    return float(value)


def _device(value: object) -> str:
    device = _text(value, field="device", expected="one of auto, cpu, cuda, cuda:N")
    index = device.partition(":")[2] if device.startswith("cuda:") else None
    if device not in DEVICE_CHOICES and not (index and index.isdigit()):
        raise InvalidInputError(f"{_WHAT}: device {device!r} is not one of auto, cpu, cuda, cuda:N")
    return device


def _shard_size(value: object) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidInputError(
            f"{_WHAT}: max_shard_size {value!r} is not a size such as 5GB, 500MB, 2GiB or a byte count"
        )
    try:
        parse_size(value)
    except ValueError as exc:
        raise InvalidInputError(f"{_WHAT}: max_shard_size: {exc}") from None
    return value


@dataclass(frozen=True)
class MergeRequest:
    """Fold ``adapters`` (scaled by ``weights``) into ``base`` and write the checkpoint to ``out``.

    ``weights`` has one entry per adapter when given explicitly; None means 1 each (and the
    same adapter given twice is then refused, see :func:`mergetools.plan.refuse_repeated_adapters`).
    ``dtype`` converts the floating tensors of the output (``auto`` keeps the base's);
    ``max_shard_size`` is decimal (``5GB`` = 5e9 bytes) or a byte count; ``force`` replaces an
    empty folder or an earlier loradex output at ``out``; ``fsync=False`` is faster, not crash-safe.
    """

    base: str
    adapters: tuple[str, ...]
    out: str
    weights: tuple[float, ...] | None = None
    dtype: str = "auto"
    device: str = "auto"
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE
    fsync: bool = True
    force: bool = False

    FIELDS = (
        "kind",
        "base",
        "adapters",
        "weights",
        "dtype",
        "device",
        "max_shard_size",
        "fsync",
        "out",
        "force",
    )

    def __post_init__(self) -> None:
        base = _text(
            self.base, field="base", expected="a checkpoint folder or a registered base name"
        )
        if isinstance(self.adapters, str) or not isinstance(self.adapters, Sequence):
            raise InvalidInputError(
                f"{_WHAT}: adapters {self.adapters!r} is not a list of adapter references"
            )
        adapters = tuple(
            _text(a, field="adapter", expected="an adapter folder or registry reference")
            for a in self.adapters
        )
        if not adapters:
            raise InvalidInputError(f"{_WHAT}: adapters is empty; expected at least one adapter")
        weights = self.weights
        if weights is not None:
            if isinstance(weights, str) or not isinstance(weights, Sequence):
                raise InvalidInputError(f"{_WHAT}: weights {weights!r} is not a list of numbers")
            weights = tuple(_weight(w) for w in weights)
            if len(weights) != len(adapters):
                raise InvalidInputError(
                    f"{_WHAT}: got {len(weights)} weights for {len(adapters)} adapters; "
                    "give one per adapter, in order"
                )
        if self.dtype not in DTYPE_CHOICES:
            raise InvalidInputError(
                f"{_WHAT}: dtype {self.dtype!r} is not one of {', '.join(DTYPE_CHOICES)}"
            )
        device = _device(self.device)
        shard = _shard_size(self.max_shard_size)
        out = _text(self.out, field="out", expected="an output folder path")
        _flag(self.fsync, field="fsync")
        _flag(self.force, field="force")
        for attr, value in (
            ("base", base),
            ("adapters", adapters),
            ("weights", weights),
            ("device", device),
            ("max_shard_size", shard),
            ("out", out),
        ):
            object.__setattr__(self, attr, value)

    @property
    def weights_explicit(self) -> bool:
        """Whether the weights were given (the same adapter twice is allowed only then)."""
        return self.weights is not None

    @property
    def effective_weights(self) -> tuple[float, ...]:
        """One weight per adapter: the given ones, or 1 each."""
        return self.weights if self.weights is not None else (1.0,) * len(self.adapters)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "merge",
            "base": self.base,
            "adapters": list(self.adapters),
            "weights": list(self.weights) if self.weights is not None else None,
            "dtype": self.dtype,
            "device": self.device,
            "max_shard_size": self.max_shard_size,
            "fsync": self.fsync,
            "out": self.out,
            "force": self.force,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MergeRequest:
        """The request :meth:`to_dict` wrote; unknown fields and a missing required one are refused."""
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"{_WHAT}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.FIELDS))
        if unknown:
            raise InvalidInputError(
                f"{_WHAT}: unknown field {unknown[0]!r}; expected {', '.join(cls.FIELDS)}"
            )
        if data.get("kind", "merge") != "merge":
            raise InvalidInputError(f"{_WHAT}: kind is {data.get('kind')!r}, expected 'merge'")
        for key in ("base", "adapters", "out"):
            if key not in data:
                raise InvalidInputError(f"{_WHAT}: the record lacks {key!r}")
        adapters = data["adapters"]
        weights = data.get("weights")
        if not isinstance(adapters, list):
            raise InvalidInputError(
                f"{_WHAT}: adapters {adapters!r} is not a list of adapter references"
            )
        if weights is not None and not isinstance(weights, list):
            raise InvalidInputError(f"{_WHAT}: weights {weights!r} is not a list of numbers")
        return cls(
            base=data["base"],
            adapters=tuple(adapters),
            out=data["out"],
            weights=tuple(weights) if weights is not None else None,
            dtype=data.get("dtype", "auto"),
            device=data.get("device", "auto"),
            max_shard_size=data.get("max_shard_size", DEFAULT_MAX_SHARD_SIZE),
            fsync=data.get("fsync", True),
            force=data.get("force", False),
        )
