"""Inputs to the registry's use cases: name and alias checks, eval/tag specs, references."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from mergetools.errors import InvalidInputError
from registry.models import RESERVED_ALIASES

logger = logging.getLogger(__name__)


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,199}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,99}$")
SHA_PREFIX_MIN = 12


@dataclass(frozen=True)
class EvalInput:
    """An eval score to record: ``accuracy=0.81,dataset=mmlu,split=test``."""

    metric: str
    value: float
    dataset: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class ParentInput:
    """A lineage parent of a new version (for combine / rescale / extract)."""

    ref: str
    relation: str = "derived-from"
    method: str | None = None
    weight: float | None = None
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid adapter or base name, else raise."""
    if not NAME_RE.match(name):
        raise InvalidInputError(
            f"name {name!r} is not valid; expected 1-200 characters from letters, digits, '.', "
            "'_' and '-', starting with a letter or digit (e.g. support-bot)"
        )
    return name


def check_alias(alias: str) -> str:
    if alias in RESERVED_ALIASES:
        raise InvalidInputError(
            f"alias {alias!r} is reserved: 'latest' always means the newest ready version and "
            "cannot be set; pick another name (e.g. production)"
        )
    if not ALIAS_RE.match(alias):
        raise InvalidInputError(
            f"alias {alias!r} is not valid; expected a letter then letters, digits, '_' or '-' "
            "(e.g. production, staging)"
        )
    return alias


def parse_eval_spec(text: str) -> EvalInput:
    """Parse ``METRIC=VALUE[,dataset=D][,split=S]``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or "=" not in parts[0]:
        raise InvalidInputError(
            f"eval {text!r} is not understood; expected METRIC=VALUE[,dataset=D][,split=S] "
            "(e.g. accuracy=0.81,dataset=mmlu,split=test)"
        )
    metric, _, raw = parts[0].partition("=")
    metric = metric.strip()
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInputError(
            f"eval {text!r}: value {raw!r} of {metric!r} is not a number"
        ) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidInputError(f"eval {text!r}: value must be finite, got {raw!r}")
    extra: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, val = part.partition("=")
        if not sep or key.strip() not in ("dataset", "split"):
            raise InvalidInputError(f"eval {text!r}: {part!r} is not dataset=D or split=S")
        extra[key.strip()] = val.strip()
    if not metric:
        raise InvalidInputError(f"eval {text!r} has an empty metric name")
    return EvalInput(
        metric=metric, value=value, dataset=extra.get("dataset"), split=extra.get("split")
    )


def parse_tag_spec(text: str) -> tuple[str, str]:
    """Parse ``key=value``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InvalidInputError(
            f"tag {text!r} is not understood; expected KEY=VALUE (e.g. team=search)"
        )
    return key.strip(), value.strip()


@dataclass(frozen=True)
class ParsedRef:
    """A registry reference: ``NAME``, ``NAME@7``, ``NAME@alias`` or ``sha256:<hex>``."""

    name: str | None
    version: int | None = None
    alias: str | None = None
    sha256_prefix: str | None = None


def parse_ref(ref: str) -> ParsedRef:
    """Parse a registry reference (not a path)."""
    if ref.startswith("sha256:"):
        prefix = ref[len("sha256:") :].lower()
        if (
            len(prefix) < SHA_PREFIX_MIN
            or not re.fullmatch(r"[0-9a-f]+", prefix)
            or len(prefix) > 64
        ):
            raise InvalidInputError(
                f"reference {ref!r}: expected sha256: followed by {SHA_PREFIX_MIN} to 64 hex digits "
                "of a version's weights-file digest (see `loradex show NAME --json`)"
            )
        return ParsedRef(name=None, sha256_prefix=prefix)
    name, sep, selector = ref.partition("@")
    check_name(name)
    if not sep or selector == "latest":
        return ParsedRef(name=name)
    if selector.isdigit():
        return ParsedRef(name=name, version=int(selector))
    if not ALIAS_RE.match(selector):
        raise InvalidInputError(
            f"reference {ref!r}: {selector!r} is neither a version number nor an alias; expected "
            "NAME, NAME@7, NAME@production or sha256:<hex>"
        )
    return ParsedRef(name=name, alias=selector)
