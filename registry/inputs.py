"""Inputs to the registry's use cases: name and alias checks, eval/tag specs, references.

The one grammar of what users type (documented in docs/registry.md, "Input grammar"):

- adapter and base **names**: 1-200 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit;
  adapter names are unique regardless of case (``Support`` is taken when ``support`` is);
- **aliases**: a letter, then up to 99 of ``A-Z a-z 0-9 _ -``; ``latest`` is reserved;
- **metric names** and **tag keys** (:data:`KEY_RE`): a letter or ``_``, then up to 199 of
  ``A-Z a-z 0-9 _ . - /`` — no spaces, no ``=``, ``,`` or comparison operators;
- **eval values**: finite decimal numbers (``0.81``, ``-2``, ``1e-3``); NaN, Inf and numbers
  too large for a float (``1e400``) are refused;
- an **eval spec** is ``METRIC=VALUE[,dataset=D][,split=S]``, each key at most once;
- long inputs echoed in messages are cut (:func:`shown`).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from mergetools.errors import InvalidInputError
from mergetools.labels import shorten
from registry.models import RESERVED_ALIASES

logger = logging.getLogger(__name__)


NAME_MAX = 200
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,199}\Z")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,99}\Z")
KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]{0,199}\Z")
"""Metric names and tag keys."""
NUMBER_RE = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
"""A decimal number as users write it (no hex, no underscores, no nan/inf)."""
SHA_PREFIX_MIN = 12
SHA_PREFIX_RE = re.compile(rf"[0-9a-f]{{{SHA_PREFIX_MIN},64}}")
VERSION_RE = re.compile(r"[0-9]+")
VERSION_MAX = 2**31 - 1  # an INTEGER column
# Column limits of registry.models (PostgreSQL enforces them; SQLite would store anything).
TAG_KEY_MAX = 200
TAG_VALUE_MAX = 500
METRIC_MAX = 200
ACTOR_MAX = 200  # who acted: the actor columns are String(200)
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


def shown(value: object) -> str:
    """A user input quoted for a message, cut to about 80 characters (``'abc…' (2000 characters)``)."""
    return shorten(value)


def parse_number(raw: str, *, what: str) -> float:
    """A finite float from ``raw`` (``0.81``, ``-2``, ``1e-3``), else raise naming ``what``."""
    text = raw
    if not NUMBER_RE.match(text) or text != text.strip():
        raise InvalidInputError(
            f"{what}: {shown(raw)} is not a number; expected a finite decimal such as 0.81 or 1e-3"
        )
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInputError(
            f"{what}: {shown(raw)} is too large for a number (the limit is about 1.8e308)"
        )
    if value == 0 and any(d in "123456789" for d in text.lower().split("e")[0]):
        raise InvalidInputError(
            f"{what}: {shown(raw)} is too small for a number: it would be stored as 0 (the "
            "smallest is about 5e-324)"
        )
    return value


def check_key(key: str, *, what: str) -> str:
    """Return ``key`` if it is a valid metric name or tag key (:data:`KEY_RE`), else raise."""
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise InvalidInputError(
            f"{what} {shown(key)} is not valid; expected a letter or '_' then up to 199 letters, "
            "digits, '_', '.', '-' or '/' (no spaces; e.g. accuracy, exact_match, team)"
        )
    return key


DESCRIPTION_MAX = 10_000
REASON_MAX = 2_000
SOURCE_MAX = 2_000

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CONTROL_OR_NEWLINE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_text(
    value: str, *, what: str, limit: int, empty_ok: bool = False, multiline: bool = False
) -> str:
    """Return ``value`` if it fits a column of ``limit`` characters, else raise.

    ``what`` names the value in the message (e.g. ``"tag key 'team'"``). Control characters
    (terminal escapes, bells, NUL — which PostgreSQL cannot store) are refused; so are line
    breaks unless ``multiline`` (a description): one-line values are printed in table rows.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be text, got {type(value).__name__}")
    if not value and not empty_ok:
        raise InvalidInputError(f"{what} is empty; expected 1 to {limit} characters")
    if len(value) > limit:
        raise InvalidInputError(
            f"{what} {shown(value)} is {len(value)} characters long; the limit is {limit} — "
            "shorten it"
        )
    bad = (_CONTROL_RE if multiline else _CONTROL_OR_NEWLINE_RE).search(value)
    if bad is not None:
        char = f"U+{ord(bad.group()):04X}"
        kind = "a line break" if bad.group() in "\n\r" else f"a control character ({char})"
        raise InvalidInputError(
            f"{what} {shown(value)} contains {kind}; expected plain text"
            + ("" if multiline else " on one line")
        )
    return value


def check_tag(key: str, value: str) -> tuple[str, str]:
    """Return ``(key, value)`` if the tag fits the registry's limits, else raise.

    Keys follow :data:`KEY_RE`, values are at most 500 characters (an empty value is allowed).
    """
    check_text(key, what="tag key", limit=TAG_KEY_MAX)
    check_key(key, what="tag key")
    check_text(value, what=f"tag {key!r} value", limit=TAG_VALUE_MAX, empty_ok=True)
    return key, value


def check_eval(spec: EvalInput) -> EvalInput:
    """Return ``spec`` if it can be recorded, else raise.

    The metric follows :data:`KEY_RE`, the dataset is at most 200 characters, the split at
    most 100, and the value a finite number.
    """
    check_text(spec.metric, what="eval metric name", limit=METRIC_MAX)
    check_key(spec.metric, what="eval metric name")
    if spec.dataset is not None:
        check_text(spec.dataset, what=f"eval {spec.metric!r} dataset", limit=DATASET_MAX)
    if spec.split is not None:
        check_text(spec.split, what=f"eval {spec.metric!r} split", limit=SPLIT_MAX)
    value = spec.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(
            f"eval {spec.metric!r}: value {shown(value)} is not a number; expected e.g. 0.81"
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
            f"name {shown(name)} is not valid; expected 1-200 characters from letters, digits, '.', "
            "'_' and '-', starting with a letter or digit (e.g. support-bot)"
        )
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str):
        raise InvalidInputError(f"alias must be text, got {type(alias).__name__}")
    if alias in RESERVED_ALIASES:
        raise InvalidInputError(
            f"alias {alias!r} is reserved: 'latest' always means the newest ready version and "
            "cannot be set; pick another name (e.g. production)"
        )
    if not ALIAS_RE.match(alias):
        raise InvalidInputError(
            f"alias {shown(alias)} is not valid; expected a letter then letters, digits, '_' or '-' "
            "(e.g. production, staging)"
        )
    return alias


def parse_eval_spec(text: str) -> EvalInput:
    """Parse ``METRIC=VALUE[,dataset=D][,split=S]`` (each key at most once)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or "=" not in parts[0]:
        raise InvalidInputError(
            f"eval {shown(text)} is not understood; expected METRIC=VALUE[,dataset=D][,split=S] "
            "(e.g. accuracy=0.81,dataset=mmlu,split=test)"
        )
    metric, _, raw = parts[0].partition("=")
    metric = metric.strip()
    if not metric:
        raise InvalidInputError(f"eval {shown(text)} has an empty metric name")
    check_key(metric, what="eval metric name")
    value = parse_number(raw, what=f"eval {metric!r} value")
    extra: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, val = part.partition("=")
        key = key.strip()
        if not sep or key not in ("dataset", "split"):
            raise InvalidInputError(
                f"eval {shown(text)}: {shown(part)} is not dataset=D or split=S"
            )
        if key in extra:
            raise InvalidInputError(
                f"eval {shown(text)}: {key} is given twice ({shown(extra[key])} and {shown(val.strip())}); "
                "give it once (record one eval per dataset)"
            )
        extra[key] = val.strip()
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
            f"tag {shown(text)} is not understood; expected KEY=VALUE (e.g. team=search)"
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
            f"reference {shown(ref)}: expected sha256: followed by {SHA_PREFIX_MIN} to 64 hex digits "
            f"of {what}"
        )
    return prefix


def parse_ref(ref: str) -> ParsedRef:
    """Parse a registry reference (not a path)."""
    if ref.startswith("sha256:"):
        prefix = parse_sha256_prefix(
            ref, what="a version's weights-file digest"
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
                f"reference {shown(ref)}: version {shown(selector)} is out of range; versions are 1 to "
                f"{VERSION_MAX}"
            )
        return ParsedRef(name=name, version=version)
    if not ALIAS_RE.match(selector):
        raise InvalidInputError(
            f"reference {shown(ref)}: {shown(selector)} is neither a version number nor an alias; expected "
            "NAME, NAME@7, NAME@production or sha256:<hex>"
        )
    return ParsedRef(name=name, alias=selector)
