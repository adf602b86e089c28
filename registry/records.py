"""The frozen records the registry's use cases return (each JSON-able through ``to_dict()``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """``_jsonable(dataclasses.asdict(value))`` in one pass: dataclasses (nested ones too) become
    dicts of their fields, datetimes ISO strings, paths strings, tuples lists. Containers are
    rebuilt, so the result shares no dict or list with the record; other values (str, int,
    float, bool, None) are immutable and kept as they are. (``asdict`` deep-copies every value
    first, which cost more than the queries behind a version record.)"""
    names = _FIELD_NAMES.get(type(value))
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES[type(value)] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return _jsonable(value)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


class _Record:
    """Mixin: ``to_dict()`` for the frozen dataclasses returned by use cases (JSON-able)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _plain(self)
        return out


@dataclass(frozen=True)
class VersionKey(_Record):
    """The identity of a registered version."""

    name: str
    version: int
    version_id: int
    status: str
    weights_sha256: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, **super().to_dict()}


@dataclass(frozen=True)
class RegisterResult(_Record):
    name: str
    version: int
    version_id: int
    created: bool  # False: byte-identical content was already registered under this name
    status: str
    content_sha256: str
    weights_sha256: str
    findings: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # What a register of already-registered content added to that version (created=False):
    # evals it did not have yet, tags new or with a new value, a new description.
    attached_evals: list[EvalRow] = field(default_factory=list)
    attached_tags: dict[str, str] = field(default_factory=dict)
    attached_description: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, **super().to_dict()}

    @property
    def attached_anything(self) -> bool:
        return bool(self.attached_evals or self.attached_tags or self.attached_description is not None)


@dataclass(frozen=True)
class EvalRow(_Record):
    id: int
    metric: str
    value: float
    dataset: str | None
    split: str | None
    recorded_at: dt.datetime
    recorded_by: str
    direction: str = "higher"  # of the metric: "higher" or "lower" is better
    best: bool = False  # the version's best value of this metric on this dataset and split


@dataclass(frozen=True)
class MetricRow(_Record):
    """A metric's direction: ``declared`` in the registry, else the default rule's."""

    metric: str
    direction: str
    declared: bool
    declared_at: dt.datetime | None = None
    declared_by: str | None = None


@dataclass(frozen=True)
class FileRow(_Record):
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class VersionRow(_Record):
    ref: str
    name: str
    version: int
    status: str
    max_rank: int
    alpha: float
    target_modules: list[str]
    base: str | None
    base_fingerprint: str | None
    weights_sha256: str
    created_at: dt.datetime
    created_by: str
    aliases: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Page(_Record):
    items: list[Any]
    next_cursor: str | None


@dataclass(frozen=True)
class AdapterRow(_Record):
    name: str
    description: str
    latest: int | None
    versions: int
    created_at: dt.datetime
    created_by: str


@dataclass(frozen=True)
class VersionDetail(_Record):
    ref: str
    name: str
    version: int
    status: str
    status_reason: str | None
    latest: bool
    description: str
    created_at: dt.datetime
    created_by: str
    base: dict[str, Any] | None
    base_fingerprint: str | None
    base_name_or_path: str | None
    target_modules: list[str]
    ranks: dict[str, int]
    max_rank: int
    alpha: float
    use_dora: bool
    use_rslora: bool
    flags: dict[str, bool]
    dtype: str
    param_count: int
    nbytes: int
    adapter_fingerprint: str | None
    content_sha256: str | None
    weights_sha256: str
    source: str | None
    metadata: dict[str, Any]
    files: list[FileRow]
    tags: dict[str, str]
    aliases: list[str]
    evals: list[EvalRow]


@dataclass(frozen=True)
class AliasMoveRow(_Record):
    alias: str
    from_version: int | None
    to_version: int | None
    moved_at: dt.datetime
    moved_by: str
    kind: str | None = None
    """How it moved: ``set``, ``removed``, ``publish`` or ``rollback`` (see revision 0008)."""
    report: dict[str, Any] | None = None
    """For a publish or a rollback: the report of the gates it passed."""


@dataclass(frozen=True)
class BaseRow(_Record):
    id: int
    name: str
    fingerprint: str | None
    architectures: list[str]
    source_path: str | None
    source_repo: str | None
    source_revision: str | None
    description: str
    created_at: dt.datetime
    created_by: str
    signature: dict[str, Any] | None = None
    stored_files: int = 0
    """Files of the base kept in the blob store (0: not stored; see ``loradex base add --store``)."""
    stored_bytes: int = 0

    @property
    def stored(self) -> bool:
        return self.stored_files > 0


@dataclass(frozen=True)
class CheckpointRow(_Record):
    id: int
    location: str
    fingerprint: str | None
    base: str | None
    base_fingerprint: str | None
    members: list[dict[str, Any]]
    metadata: dict[str, Any]
    created_at: dt.datetime
    created_by: str


@dataclass(frozen=True)
class LineageEdgeRow(_Record):
    ref: str
    name: str
    version: int
    relation: str
    method: str | None
    weight: float | None
    seed: int | None
    params: dict[str, Any]


@dataclass(frozen=True)
class LineageView(_Record):
    ref: str
    name: str
    version: int
    parents: list[LineageEdgeRow]
    children: list[LineageEdgeRow]
    checkpoints: list[dict[str, Any]]


@dataclass(frozen=True)
class GcResult(_Record):
    scanned: int
    removed: list[str]
    kept_in_grace: int
    bytes_freed: int
    dry_run: bool
    temps: list[dict[str, Any]] = field(default_factory=list)  # leftovers of killed writers
    temp_bytes_freed: int = 0


@dataclass(frozen=True)
class EventRow(_Record):
    id: int
    at: dt.datetime
    actor: str
    kind: str
    subject: str
    payload: dict[str, Any]
