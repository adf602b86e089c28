"""Inputs to the registry's use cases: name and alias checks, eval/tag specs, references."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from mergetools.errors import InvalidInputError
from registry.models import RESERVED_ALIASES

logger = logging.getLogger(__name__)


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,199}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,99}$")
SHA_PREFIX_MIN = 12
SHA_PREFIX_RE = re.compile(rf"[0-9a-f]{{{SHA_PREFIX_MIN},64}}")
VERSION_RE = re.compile(r"[0-9]+")
VERSION_MAX = 2**31 - 1  # an INTEGER column
# Column limits of registry.models (PostgreSQL enforces them; SQLite would store anything).
TAG_KEY_MAX = 200
TAG_VALUE_MAX = 500
METRIC_MAX = 200
DATASET_MAX = 200
SPLIT_MAX = 100
SOURCE_REPO_MAX = 300
SOURCE_REVISION_MAX = 100


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


def check_text(value: str, *, what: str, limit: int, empty_ok: bool = False) -> str:
    """Return ``value`` if it fits a column of ``limit`` characters, else raise.

    ``what`` names the value in the message (e.g. ``"tag key 'team'"``). NUL characters are
    refused too: PostgreSQL cannot store them in text columns.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be text, got {type(value).__name__}")
    if not value and not empty_ok:
        raise InvalidInputError(f"{what} is empty; expected 1 to {limit} characters")
    if len(value) > limit:
        raise InvalidInputError(
            f"{what} {value[:40]!r}... is {len(value)} characters long; the limit is {limit} — "
            "shorten it"
        )
    if "\x00" in value:
        raise InvalidInputError(f"{what} {value[:40]!r} contains a NUL character; remove it")
    return value


def check_tag(key: str, value: str) -> tuple[str, str]:
    """Return ``(key, value)`` if the tag fits the registry's limits, else raise.

    Keys are 1-200 characters, values at most 500 (an empty value is allowed).
    """
    check_text(key, what="tag key", limit=TAG_KEY_MAX)
    check_text(value, what=f"tag {key!r} value", limit=TAG_VALUE_MAX, empty_ok=True)
    return key, value


def check_eval(spec: EvalInput) -> EvalInput:
    """Return ``spec`` if it can be recorded, else raise.

    The metric is 1-200 characters, the dataset at most 200, the split at most 100, and the
    value a finite number.
    """
    check_text(spec.metric, what="eval metric name", limit=METRIC_MAX)
    if spec.dataset is not None:
        check_text(spec.dataset, what=f"eval {spec.metric!r} dataset", limit=DATASET_MAX)
    if spec.split is not None:
        check_text(spec.split, what=f"eval {spec.metric!r} split", limit=SPLIT_MAX)
    value = spec.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(
            f"eval {spec.metric!r}: value {value!r} is not a number; expected e.g. 0.81"
        )
    if not math.isfinite(value):
        raise InvalidInputError(
            f"eval {spec.metric!r}: value must be a finite number, got {value!r}"
        )
    return spec


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
    return check_eval(
        EvalInput(
            metric=metric, value=value, dataset=extra.get("dataset"), split=extra.get("split")
        )
    )


def parse_tag_spec(text: str) -> tuple[str, str]:
    """Parse ``key=value``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InvalidInputError(
            f"tag {text!r} is not understood; expected KEY=VALUE (e.g. team=search)"
        )
    return check_tag(key.strip(), value.strip())


@dataclass(frozen=True)
class ParsedRef:
    """A registry reference: ``NAME``, ``NAME@7``, ``NAME@alias`` or ``sha256:<hex>``."""

    name: str | None
    version: int | None = None
    alias: str | None = None
    sha256_prefix: str | None = None


def parse_sha256_prefix(ref: str, *, what: str) -> str:
    """The lowercase hex digits of a ``sha256:<hex>`` reference (12 to 64 of them), else raise.

    ``what`` says whose digest is meant, for the message.
    """
    prefix = ref[len("sha256:") :].lower() if ref.startswith("sha256:") else ""
    if not SHA_PREFIX_RE.fullmatch(prefix):
        raise InvalidInputError(
            f"reference {ref!r}: expected sha256: followed by {SHA_PREFIX_MIN} to 64 hex digits "
            f"of {what}"
        )
    return prefix


def parse_ref(ref: str) -> ParsedRef:
    """Parse a registry reference (not a path)."""
    if ref.startswith("sha256:"):
        prefix = parse_sha256_prefix(
            ref, what="a version's weights-file digest (see `loradex show NAME --json`)"
        )
        return ParsedRef(name=None, sha256_prefix=prefix)
    name, sep, selector = ref.partition("@")
    check_name(name)
    if not sep or selector == "latest":
        return ParsedRef(name=name)
    if VERSION_RE.fullmatch(selector):
        version = int(selector)
        if version > VERSION_MAX:
            raise InvalidInputError(
                f"reference {ref!r}: version {selector} is out of range; versions are 1 to "
                f"{VERSION_MAX} (see `loradex versions {name}`)"
            )
        return ParsedRef(name=name, version=version)
    if not ALIAS_RE.match(selector):
        raise InvalidInputError(
            f"reference {ref!r}: {selector!r} is neither a version number nor an alias; expected "
            "NAME, NAME@7, NAME@production or sha256:<hex>"
        )
    return ParsedRef(name=name, alias=selector)
