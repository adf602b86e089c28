"""Use cases of the registry, one transaction each, the journal event in the same transaction.

:class:`Registry` is the one core object the CLI and the API call. It is built from a
:class:`~registry.settings.Settings` (made at the edge) and holds the engine and the blob store.

Register writes the blobs first (temp + fsync + rename), then commits the version, its files,
tags, evals, lineage and journal entry in one transaction. Version numbers come from a counter
row (``adapters.last_version``) incremented in that same transaction, so a register killed at
any point leaves no version behind and numbers stay consecutive; the unique constraints on
``(adapter_id, version)`` and ``(adapter_id, content_sha256)`` are the backstop (roll back, retry).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from mergetools.errors import (
    ConflictError,
    IncompatibleError,
    InvalidInputError,
    NotFoundError,
    OutputExistsError,
)
from registry.blobstore import BlobStore, LocalBlobStore, sha256_file
from registry.db import check_schema, create_registry_engine, is_sqlite, readonly
from registry.models import (
    LINEAGE_RELATIONS,
    RESERVED_ALIASES,
    Adapter,
    AdapterVersion,
    Alias,
    AliasMove,
    BaseModel,
    Checkpoint,
    CheckpointMember,
    EvalScore,
    Event,
    LineageEdge,
    Tag,
    VersionFile,
    VersionModule,
    utcnow,
)
from registry.search import (
    SearchQuery,
    build_search,
    check_limit,
    decode_cursor,
    encode_cursor,
    glob_to_like,
    keyset_after,
)
from registry.settings import Settings

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,199}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,99}$")
SHA_PREFIX_MIN = 12
CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
REGISTER_ATTEMPTS = 8
DEFAULT_GC_GRACE_S = 3600.0


# ------------------------------------------------------------------------------ value objects


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


class _Record:
    """Mixin: ``to_dict()`` for the frozen dataclasses returned by use cases (JSON-able)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]
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

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class EvalRow(_Record):
    id: int
    metric: str
    value: float
    dataset: str | None
    split: str | None
    recorded_at: dt.datetime
    recorded_by: str


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
    relation: str
    method: str | None
    weight: float | None
    seed: int | None
    params: dict[str, Any]


@dataclass(frozen=True)
class LineageView(_Record):
    ref: str
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


@dataclass(frozen=True)
class EventRow(_Record):
    id: int
    at: dt.datetime
    actor: str
    kind: str
    subject: str
    payload: dict[str, Any]


# ------------------------------------------------------------------------------ parsing helpers


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


def _collect_files(folder: Path) -> list[tuple[str, Path]]:
    """Regular files under ``folder`` (hidden names skipped) as (posix relative path, path)."""
    files: list[tuple[str, Path]] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if path.is_file():
                files.append((path.relative_to(folder).as_posix(), path))
    return files


def content_digest(files: Mapping[str, str]) -> str:
    """sha256 over ``adapter_config.json`` and the weights file (paths and their sha256)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        if path == CONFIG_FILE or path in WEIGHT_FILES:
            digest.update(f"{path}\0{files[path]}\n".encode())
    return digest.hexdigest()


def files_digest(files: Mapping[str, str]) -> str:
    """sha256 over every stored file (paths and their sha256): the materialised-folder key."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path}\0{files[path]}\n".encode())
    return digest.hexdigest()


def _journal(
    session: Session,
    *,
    actor: str,
    kind: str,
    subject: str,
    adapter_id: int | None = None,
    version_id: int | None = None,
    payload: Mapping[str, Any] | None = None,
) -> None:
    """Append a journal event in the caller's transaction."""
    session.add(
        Event(
            at=utcnow(),
            actor=actor,
            kind=kind,
            subject=subject,
            adapter_id=adapter_id,
            version_id=version_id,
            payload=_jsonable(dict(payload or {})),
        )
    )
    session.flush()


def _is_retryable(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    message = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    return any(s in message for s in ("database is locked", "deadlock", "could not serialize"))


class _AlreadyRegistered(Exception):
    """Raised inside the register transaction to roll it back and return the existing version."""

    def __init__(self, result: RegisterResult) -> None:
        super().__init__(result.ref)
        self.result = result


# ------------------------------------------------------------------------------ the registry


class Registry:
    """The registry's use cases over one database and one blob store."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        blobstore: BlobStore | None = None,
        auto_upgrade: bool | None = None,
        check: bool = True,
    ) -> None:
        self.settings = settings
        self.engine = engine or create_registry_engine(
            settings.effective_database_url, busy_timeout_ms=settings.busy_timeout_ms
        )
        self.read_engine = readonly(self.engine)
        self.blobs: BlobStore = blobstore or LocalBlobStore(settings.blob_dir)
        self.actor = settings.actor
        if check:
            upgrade = is_sqlite(self.engine) if auto_upgrade is None else auto_upgrade
            check_schema(self.engine, auto_upgrade=upgrade)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextlib.contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.read_engine, expire_on_commit=False) as session, session.begin():
            yield session

    # -------------------------------------------------------------------- resolution

    def _adapter(self, session: Session, name: str, *, lock: bool = False) -> Adapter:
        stmt = select(Adapter).where(Adapter.name == name)
        if lock and not is_sqlite(self.engine):
            stmt = stmt.with_for_update()
        adapter = session.scalars(stmt).one_or_none()
        if adapter is None:
            raise NotFoundError(
                f"adapter {name!r} is not registered; see `loradex list` for the names, or "
                f"register it with `loradex register PATH --name {name}`"
            )
        return adapter

    def _resolve(
        self, session: Session, ref: str, *, allow_deleted: bool = False
    ) -> tuple[Adapter, AdapterVersion]:
        parsed = parse_ref(ref)
        if parsed.sha256_prefix is not None:
            rows = session.execute(
                select(Adapter, AdapterVersion)
                .join(AdapterVersion, AdapterVersion.adapter_id == Adapter.id)
                .where(
                    AdapterVersion.weights_sha256.like(parsed.sha256_prefix + "%"),
                    AdapterVersion.status != "deleted",
                )
                .order_by(Adapter.name, AdapterVersion.version)
                .limit(10)
            ).all()
            if not rows:
                raise NotFoundError(
                    f"reference {ref!r}: no registered version has a weights file whose sha256 "
                    "starts with that; check the digest (`loradex show NAME --json`)"
                )
            if len(rows) > 1:
                refs = ", ".join(f"{a.name}@{v.version}" for a, v in rows)
                raise ConflictError(
                    f"reference {ref!r} is ambiguous: it matches {refs}; give more hex digits or "
                    "use NAME@VERSION"
                )
            return rows[0][0], rows[0][1]
        assert parsed.name is not None
        adapter = self._adapter(session, parsed.name)
        if parsed.version is not None:
            version = session.scalars(
                select(AdapterVersion).where(
                    AdapterVersion.adapter_id == adapter.id,
                    AdapterVersion.version == parsed.version,
                )
            ).one_or_none()
            if version is None:
                raise NotFoundError(
                    f"adapter {adapter.name!r} has no version {parsed.version} (its versions are "
                    f"1..{adapter.last_version}); see `loradex versions {adapter.name}`"
                )
            if version.status == "deleted" and not allow_deleted:
                raise NotFoundError(
                    f"{adapter.name}@{version.version} was deleted and its files purged; the "
                    "number stays retired — use another version"
                )
            if version.status == "yanked":
                logger.warning(
                    "%s@%d is yanked (%s)", adapter.name, version.version, version.status_reason
                )
            return adapter, version
        if parsed.alias is not None:
            row = session.execute(
                select(Alias, AdapterVersion)
                .join(AdapterVersion, AdapterVersion.id == Alias.version_id)
                .where(Alias.adapter_id == adapter.id, Alias.name == parsed.alias)
            ).one_or_none()
            if row is None:
                raise NotFoundError(
                    f"adapter {adapter.name!r} has no alias {parsed.alias!r}; set it with "
                    f"`loradex alias set {adapter.name}@VERSION {parsed.alias}`"
                )
            version = row[1]
            if version.status != "ready":
                raise NotFoundError(
                    f"alias {adapter.name}@{parsed.alias} points to {adapter.name}@{version.version}"
                    f", which is {version.status} ({version.status_reason or 'no reason given'}); "
                    f"move it with `loradex alias set {adapter.name}@VERSION {parsed.alias}`"
                )
            return adapter, version
        version = session.scalars(
            select(AdapterVersion)
            .where(AdapterVersion.adapter_id == adapter.id, AdapterVersion.status == "ready")
            .order_by(AdapterVersion.version.desc())
            .limit(1)
        ).one_or_none()
        if version is None:
            raise NotFoundError(
                f"adapter {adapter.name!r} has no ready version (all are yanked or deleted); "
                f"name one explicitly, e.g. {adapter.name}@{adapter.last_version}, or unyank one"
            )
        return adapter, version

    @staticmethod
    def _key(adapter: Adapter, version: AdapterVersion) -> VersionKey:
        return VersionKey(
            name=adapter.name,
            version=version.version,
            version_id=version.id,
            status=version.status,
            weights_sha256=version.weights_sha256,
        )

    def resolve(self, ref: str) -> VersionKey:
        """The version a registry reference names (``NAME``, ``NAME@7``, ``NAME@alias``, ``sha256:``)."""
        with self._read() as session:
            return self._key(*self._resolve(session, ref))

    # -------------------------------------------------------------------- register

    def register(
        self,
        path: Path,
        *,
        name: str,
        base: str | None = None,
        evals: Sequence[EvalInput] = (),
        tags: Mapping[str, str] | None = None,
        description: str = "",
        source: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        parents: Sequence[ParentInput] = (),
    ) -> RegisterResult:
        """Parse and check the adapter folder at ``path``, store its files, record a new version.

        Byte-identical content (same sha256 of config and weights) already registered under
        ``name`` returns that version (``created=False``) instead of a new one.
        """
        from mergetools.inspect import summarize_adapter

        check_name(name)
        path = Path(path)
        if not path.is_dir():
            raise InvalidInputError(
                f"adapter path {str(path)!r} is not a folder; expected a PEFT adapter folder "
                f"with {CONFIG_FILE} and {WEIGHT_FILES[0]}"
            )
        summary = summarize_adapter(path)
        summary_dict = summary.to_dict()
        base_info: dict[str, Any] | None = None
        base_path: Path | None = None
        if base is not None:
            from registry.refs import resolve_base_ref

            resolved_base = resolve_base_ref(self, base)
            base_path = resolved_base.path
            base_info = self._base_facts(base_path, known_id=resolved_base.base_id)
        findings = self._check_adapter(path, base_path)

        files = _collect_files(path)
        names = {rel for rel, _ in files}
        if CONFIG_FILE not in names or not names.intersection(WEIGHT_FILES):
            raise InvalidInputError(
                f"adapter folder {str(path)!r} lacks {CONFIG_FILE} or {WEIGHT_FILES[0]}"
            )
        weights_rel = next(w for w in WEIGHT_FILES if w in names)
        stored: dict[str, tuple[str, int]] = {}
        for rel, file_path in files:  # blobs first, before any row names them
            blob = self.blobs.put_file(file_path)
            stored[rel] = (blob.sha256, blob.size)
        shas = {rel: sha for rel, (sha, _) in stored.items()}
        content_sha = content_digest(shas)
        weights_sha = shas[weights_rel]

        parent_refs = list(parents)
        for parent in parent_refs:
            if parent.relation not in LINEAGE_RELATIONS:
                raise InvalidInputError(
                    f"lineage relation {parent.relation!r} is not one of {', '.join(LINEAGE_RELATIONS)}"
                )

        tag_items = dict(tags or {})
        last_error: Exception | None = None
        for attempt in range(REGISTER_ATTEMPTS):
            try:
                result = self._register_tx(
                    name=name,
                    summary=summary_dict,
                    base_info=base_info,
                    stored=stored,
                    content_sha=content_sha,
                    weights_sha=weights_sha,
                    weights_rel=weights_rel,
                    evals=evals,
                    tags=tag_items,
                    description=description,
                    source=source if source is not None else str(path.resolve()),
                    metadata=dict(metadata or {}),
                    parents=parent_refs,
                    findings=findings,
                )
            except _AlreadyRegistered as exc:
                return exc.result
            except (IntegrityError, OperationalError) as exc:
                if not _is_retryable(exc):
                    raise
                last_error = exc
                logger.info(
                    "register %s: attempt %d conflicted (%s); retrying", name, attempt + 1, exc.orig
                )
                time.sleep(0.01 * (attempt + 1))
                continue
            # A concurrent purge may have removed a blob we reuse: store it again.
            for rel, file_path in files:
                if not self.blobs.exists(stored[rel][0]):
                    self.blobs.put_file(file_path)
            return result
        raise ConflictError(
            f"registering {name!r} conflicted with concurrent writers {REGISTER_ATTEMPTS} times "
            f"(last: {last_error}); retry the command"
        )

    def _register_tx(
        self,
        *,
        name: str,
        summary: dict[str, Any],
        base_info: dict[str, Any] | None,
        stored: Mapping[str, tuple[str, int]],
        content_sha: str,
        weights_sha: str,
        weights_rel: str,
        evals: Sequence[EvalInput],
        tags: Mapping[str, str],
        description: str,
        source: str,
        metadata: dict[str, Any],
        parents: Sequence[ParentInput],
        findings: list[dict[str, Any]],
    ) -> RegisterResult:
        now = utcnow()
        with self._write() as session:
            created_adapter = self._insert_adapter_if_missing(
                session, name=name, now=now, description=description
            )
            # The counter row: incremented in this transaction, so a rollback returns the number.
            row = session.execute(
                update(Adapter)
                .where(Adapter.name == name)
                .values(last_version=Adapter.last_version + 1)
                .returning(Adapter.id, Adapter.last_version)
            ).one()
            adapter_id, number = int(row[0]), int(row[1])
            existing = session.scalars(
                select(AdapterVersion).where(
                    AdapterVersion.adapter_id == adapter_id,
                    AdapterVersion.content_sha256 == content_sha,
                )
            ).one_or_none()
            if existing is not None:
                logger.info("%s@%d already holds this content", name, existing.version)
                raise _AlreadyRegistered(
                    RegisterResult(
                        name=name,
                        version=existing.version,
                        version_id=existing.id,
                        created=False,
                        status=existing.status,
                        content_sha256=content_sha,
                        weights_sha256=existing.weights_sha256,
                        findings=findings,
                    )
                )  # rolls the counter increment back
            if created_adapter:
                _journal(
                    session,
                    actor=self.actor,
                    kind="adapter.created",
                    subject=name,
                    adapter_id=adapter_id,
                )
            parent_versions = [self._resolve(session, p.ref)[1] for p in parents]
            base_model_id = self._ensure_base(session, base_info, now=now) if base_info else None
            base_fingerprint = summary.get("base_fingerprint")
            if base_info and base_info.get("fingerprint"):
                base_fingerprint = base_info["fingerprint"]
            if base_model_id is None:
                base_model_id = self._match_base(
                    session, base_fingerprint, summary.get("base_model_name_or_path")
                )
            version = AdapterVersion(
                adapter_id=adapter_id,
                version=number,
                status="ready",
                content_sha256=content_sha,
                weights_sha256=weights_sha,
                weights_path=weights_rel,
                base_model_id=base_model_id,
                base_fingerprint=base_fingerprint,
                base_name_or_path=summary.get("base_model_name_or_path"),
                max_rank=int(summary["max_rank"]),
                alpha=float(summary["alpha"]),
                use_dora=bool(summary["use_dora"]),
                use_rslora=bool(summary["use_rslora"]),
                dtype=str(summary["dtype"]),
                param_count=int(summary["param_count"]),
                nbytes=int(summary["nbytes"]),
                adapter_fingerprint=summary.get("adapter_fingerprint"),
                target_modules=list(summary["target_modules"]),
                ranks=dict(summary["ranks"]),
                flags=dict(summary.get("flags") or {}),
                summary=_jsonable(summary),
                source=source,
                meta=_jsonable(metadata),
                description=description,
                created_at=now,
                created_by=self.actor,
            )
            session.add(version)
            session.flush()
            vid = version.id
            session.execute(
                insert(VersionFile),
                [
                    {"version_id": vid, "path": rel, "sha256": sha, "size": size}
                    for rel, (sha, size) in sorted(stored.items())
                ],
            )
            modules = sorted(set(version.target_modules))
            if modules:
                session.execute(
                    insert(VersionModule), [{"version_id": vid, "module": m} for m in modules]
                )
            if tags:
                session.execute(
                    insert(Tag),
                    [{"version_id": vid, "key": k, "value": v} for k, v in sorted(tags.items())],
                )
            if evals:
                session.execute(insert(EvalScore), [self._eval_row(vid, e, now) for e in evals])
            if parents:
                session.execute(
                    insert(LineageEdge),
                    [
                        {
                            "child_version_id": vid,
                            "parent_version_id": pv.id,
                            "relation": p.relation,
                            "method": p.method,
                            "weight": p.weight,
                            "seed": p.seed,
                            "params": _jsonable(dict(p.params)),
                        }
                        for p, pv in zip(parents, parent_versions, strict=True)
                    ],
                )
            _journal(
                session,
                actor=self.actor,
                kind="version.registered",
                subject=f"{name}@{number}",
                adapter_id=adapter_id,
                version_id=vid,
                payload={
                    "content_sha256": content_sha,
                    "weights_sha256": weights_sha,
                    "source": source,
                },
            )
        logger.info("registered %s@%d", name, number)
        return RegisterResult(
            name=name,
            version=number,
            version_id=vid,
            created=True,
            status="ready",
            content_sha256=content_sha,
            weights_sha256=weights_sha,
            findings=findings,
        )

    def _insert_adapter_if_missing(
        self, session: Session, *, name: str, now: dt.datetime, description: str
    ) -> bool:
        values = {
            "name": name,
            "description": description,
            "last_version": 0,
            "created_at": now,
            "created_by": self.actor,
        }
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        dialect_insert = sqlite_insert if is_sqlite(self.engine) else pg_insert
        result = session.execute(
            dialect_insert(Adapter).values(**values).on_conflict_do_nothing(index_elements=["name"])  # type: ignore[operator]
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def _eval_row(self, version_id: int, spec: EvalInput, now: dt.datetime) -> dict[str, Any]:
        if not spec.metric:
            raise InvalidInputError("an eval score needs a metric name")
        return {
            "version_id": version_id,
            "metric": spec.metric,
            "value": float(spec.value),
            "dataset": spec.dataset,
            "split": spec.split,
            "recorded_at": now,
            "recorded_by": self.actor,
        }

    # -------------------------------------------------------------------- bases

    def _base_facts(self, path: Path, *, known_id: int | None = None) -> dict[str, Any]:
        """Fingerprint and signature of the base folder at ``path`` (or its registered row)."""
        if known_id is not None:
            with self._read() as session:
                row = session.get(BaseModel, known_id)
                assert row is not None
                return {"id": row.id, "fingerprint": row.fingerprint, "name": row.name}
        from mergetools.fingerprint import fingerprint_checkpoint
        from mergetools.signature import read_signature

        fingerprint = fingerprint_checkpoint(path, cache_dir=self.settings.cache_dir)
        signature = read_signature(path)
        return {
            "fingerprint": fingerprint,
            "signature": _jsonable(signature),
            "architectures": [str(a) for a in signature.get("architectures") or []],  # type: ignore[attr-defined]
            "name": _base_name_for(path),
            "source_path": str(path.resolve()),
        }

    def _check_adapter(self, adapter: Path, base: Path | None) -> list[dict[str, Any]]:
        """``mergetools.check`` on the adapter (against ``base`` when given).

        Error findings refuse the register (:class:`IncompatibleError`); warnings and notes are
        returned so the shells can show them.
        """
        from mergetools.check import check_adapters

        report = check_adapters([adapter], base=base, cache_dir=self.settings.cache_dir)
        errors = [f.message for f in report.errors]
        if errors:
            against = f" against base {str(base)!r}" if base is not None else ""
            raise IncompatibleError(
                f"adapter {str(adapter)!r} failed its check{against}: "
                + "; ".join(errors)
                + " — fix the adapter or pick the base it was trained on"
            )
        return [f.to_dict() for f in report.findings]

    def _ensure_base(self, session: Session, info: dict[str, Any], *, now: dt.datetime) -> int:
        if "id" in info:
            return int(info["id"])
        existing = session.scalars(
            select(BaseModel.id).where(BaseModel.fingerprint == info["fingerprint"])
        ).one_or_none()
        if existing is not None:
            return int(existing)
        name = info["name"]
        if (
            session.scalars(select(BaseModel.id).where(BaseModel.name == name)).one_or_none()
            is not None
        ):
            name = f"{name}-{info['fingerprint'][:12]}"
        base = BaseModel(
            name=name,
            fingerprint=info["fingerprint"],
            architectures=info["architectures"],
            signature=info["signature"],
            source_path=info.get("source_path"),
            source_repo=info.get("source_repo"),
            source_revision=info.get("source_revision"),
            description=info.get("description", ""),
            created_at=now,
            created_by=self.actor,
        )
        session.add(base)
        session.flush()
        _journal(
            session,
            actor=self.actor,
            kind="base.added",
            subject=name,
            payload={"fingerprint": info["fingerprint"]},
        )
        return base.id

    @staticmethod
    def _match_base(
        session: Session, fingerprint: str | None, name_or_path: str | None
    ) -> int | None:
        if fingerprint:
            found = session.scalars(
                select(BaseModel.id).where(BaseModel.fingerprint == fingerprint)
            ).one_or_none()
            if found is not None:
                return int(found)
        if name_or_path:
            found = session.scalars(
                select(BaseModel.id).where(BaseModel.name == name_or_path)
            ).one_or_none()
            if found is not None:
                return int(found)
        return None

    def add_base(
        self,
        path: Path,
        *,
        name: str | None = None,
        description: str = "",
        repo: str | None = None,
        revision: str | None = None,
    ) -> BaseRow:
        """Register a base checkpoint folder: fingerprint, structural signature, source."""
        path = Path(path)
        if not path.is_dir():
            raise InvalidInputError(
                f"base path {str(path)!r} is not a folder; expected a Hugging Face checkpoint folder"
            )
        info = self._base_facts(path)
        info["name"] = check_name(name) if name else info["name"]
        info.update(description=description, source_repo=repo, source_revision=revision)
        with self._write() as session:
            existing = session.scalars(
                select(BaseModel).where(BaseModel.fingerprint == info["fingerprint"])
            ).one_or_none()
            if existing is not None:
                if name and existing.name != name:
                    raise ConflictError(
                        f"base {str(path)!r} has fingerprint {info['fingerprint'][:12]}..., already "
                        f"registered as {existing.name!r}; use that name"
                    )
                return self._base_row(existing)
            if session.scalars(
                select(BaseModel.id).where(BaseModel.name == info["name"])
            ).one_or_none():
                raise ConflictError(
                    f"base name {info['name']!r} is taken by another checkpoint (different "
                    "fingerprint); pass --name with another name"
                )
            base_id = self._ensure_base(session, info, now=utcnow())
            row = session.get(BaseModel, base_id)
            assert row is not None
            return self._base_row(row)

    @staticmethod
    def _base_row(row: BaseModel, *, with_signature: bool = False) -> BaseRow:
        return BaseRow(
            id=row.id,
            name=row.name,
            fingerprint=row.fingerprint,
            architectures=list(row.architectures or []),
            source_path=row.source_path,
            source_repo=row.source_repo,
            source_revision=row.source_revision,
            description=row.description,
            created_at=row.created_at,
            created_by=row.created_by,
            signature=row.signature if with_signature else None,
        )

    def list_bases(self) -> list[BaseRow]:
        with self._read() as session:
            return [
                self._base_row(r)
                for r in session.scalars(select(BaseModel).order_by(BaseModel.name))
            ]

    def get_base(self, ref: str, *, with_signature: bool = True) -> BaseRow:
        """A registered base by name or by fingerprint (``sha256:<hex>`` prefix or full)."""
        with self._read() as session:
            if ref.startswith("sha256:"):
                prefix = ref[len("sha256:") :].lower()
                rows = list(
                    session.scalars(
                        select(BaseModel).where(BaseModel.fingerprint.like(prefix + "%")).limit(2)
                    )
                )
            else:
                rows = list(session.scalars(select(BaseModel).where(BaseModel.name == ref)))
            if not rows:
                raise NotFoundError(
                    f"base model {ref!r} is not registered; see `loradex base list`, or add it "
                    "with `loradex base add PATH`"
                )
            if len(rows) > 1:
                raise ConflictError(f"base reference {ref!r} is ambiguous; give more hex digits")
            return self._base_row(rows[0], with_signature=with_signature)

    # -------------------------------------------------------------------- read use cases

    def list_adapters(
        self, *, pattern: str | None = None, limit: int = 50, after: str | None = None
    ) -> Page:
        """Adapters by name with their latest ready version (keyset-paginated by name)."""
        check_limit(limit)
        latest = (
            select(func.max(AdapterVersion.version))
            .where(AdapterVersion.adapter_id == Adapter.id, AdapterVersion.status == "ready")
            .correlate(Adapter)
            .scalar_subquery()
        )
        stmt = select(Adapter, latest.label("latest")).order_by(Adapter.name).limit(limit + 1)
        if pattern:
            stmt = stmt.where(Adapter.name.like(glob_to_like(pattern), escape="\\"))
        if after:
            stmt = stmt.where(Adapter.name > decode_cursor(after, size=1)[0])
        with self._read() as session:
            rows = session.execute(stmt).all()
        items = [
            AdapterRow(
                name=a.name,
                description=a.description,
                latest=lt,
                versions=a.last_version,
                created_at=a.created_at,
                created_by=a.created_by,
            )
            for a, lt in rows[:limit]
        ]
        cursor = encode_cursor([items[-1].name]) if len(rows) > limit else None
        return Page(items=items, next_cursor=cursor)

    def search(self, query: SearchQuery) -> Page:
        """Versions matching ``query`` (one SQL query plus one for their aliases)."""
        stmt, _keys, metric_names = build_search(query)
        with self._read() as session:
            rows = session.execute(stmt).all()
            page = rows[: query.limit]
            aliases = self._aliases_of(session, [r.id for r in page])
        items = [
            VersionRow(
                ref=f"{r.name}@{r.version}",
                name=r.name,
                version=r.version,
                status=r.status,
                max_rank=r.max_rank,
                alpha=r.alpha,
                target_modules=list(r.target_modules),
                base=r.base_name,
                base_fingerprint=r.base_fingerprint,
                weights_sha256=r.weights_sha256,
                created_at=r.created_at,
                created_by=r.created_by,
                aliases=aliases.get(r.id, []),
                scores={m: getattr(r, f"metric_{i}") for i, m in enumerate(metric_names)},
            )
            for r in page
        ]
        cursor = None
        if len(rows) > query.limit:
            last = page[-1]
            if query.sort:
                metric = query.sort.lstrip("+-")
                cursor = encode_cursor(
                    [getattr(last, f"metric_{metric_names.index(metric)}"), last.id]
                )
            else:
                cursor = encode_cursor([last.name, last.version])
        return Page(items=items, next_cursor=cursor)

    @staticmethod
    def _aliases_of(session: Session, version_ids: Sequence[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        if not version_ids:
            return out
        for vid, alias in session.execute(
            select(Alias.version_id, Alias.name)
            .where(Alias.version_id.in_(version_ids))
            .order_by(Alias.name)
        ):
            out.setdefault(vid, []).append(alias)
        return out

    def show(self, ref: str) -> VersionDetail:
        """Everything about one version: summary, files, tags, evals, aliases, base."""
        with self._read() as session:
            adapter, v = self._resolve(session, ref, allow_deleted=True)
            files = [
                FileRow(path=f.path, sha256=f.sha256, size=f.size)
                for f in session.scalars(
                    select(VersionFile)
                    .where(VersionFile.version_id == v.id)
                    .order_by(VersionFile.path)
                )
            ]
            tags = dict(
                session.execute(
                    select(Tag.key, Tag.value).where(Tag.version_id == v.id).order_by(Tag.key)
                ).all()
            )
            evals = self._evals(session, v.id)
            aliases = self._aliases_of(session, [v.id]).get(v.id, [])
            latest = session.scalar(
                select(func.max(AdapterVersion.version)).where(
                    AdapterVersion.adapter_id == adapter.id, AdapterVersion.status == "ready"
                )
            )
            base = None
            if v.base_model_id is not None:
                b = session.get(BaseModel, v.base_model_id)
                if b is not None:
                    base = {
                        "name": b.name,
                        "fingerprint": b.fingerprint,
                        "architectures": b.architectures,
                    }
        return VersionDetail(
            ref=f"{adapter.name}@{v.version}",
            name=adapter.name,
            version=v.version,
            status=v.status,
            status_reason=v.status_reason,
            latest=latest == v.version,
            description=v.description,
            created_at=v.created_at,
            created_by=v.created_by,
            base=base,
            base_fingerprint=v.base_fingerprint,
            base_name_or_path=v.base_name_or_path,
            target_modules=list(v.target_modules),
            ranks=dict(v.ranks),
            max_rank=v.max_rank,
            alpha=v.alpha,
            use_dora=v.use_dora,
            use_rslora=v.use_rslora,
            flags=dict(v.flags),
            dtype=v.dtype,
            param_count=v.param_count,
            nbytes=v.nbytes,
            adapter_fingerprint=v.adapter_fingerprint,
            content_sha256=v.content_sha256,
            weights_sha256=v.weights_sha256,
            source=v.source,
            metadata=dict(v.meta),
            files=files,
            tags=tags,
            aliases=aliases,
            evals=evals,
        )

    @staticmethod
    def _evals(session: Session, version_id: int) -> list[EvalRow]:
        return [
            EvalRow(
                id=e.id,
                metric=e.metric,
                value=e.value,
                dataset=e.dataset,
                split=e.split,
                recorded_at=e.recorded_at,
                recorded_by=e.recorded_by,
            )
            for e in session.scalars(
                select(EvalScore)
                .where(EvalScore.version_id == version_id)
                .order_by(EvalScore.metric, EvalScore.id)
            )
        ]

    def versions(self, name: str) -> list[VersionRow]:
        """Every version of an adapter, newest first, deleted ones included."""
        with self._read() as session:
            adapter = self._adapter(session, name)
            rows = session.execute(
                select(AdapterVersion, BaseModel.name)
                .outerjoin(BaseModel, BaseModel.id == AdapterVersion.base_model_id)
                .where(AdapterVersion.adapter_id == adapter.id)
                .order_by(AdapterVersion.version.desc())
            ).all()
            aliases = self._aliases_of(session, [v.id for v, _ in rows])
        return [
            VersionRow(
                ref=f"{name}@{v.version}",
                name=name,
                version=v.version,
                status=v.status,
                max_rank=v.max_rank,
                alpha=v.alpha,
                target_modules=list(v.target_modules),
                base=base_name,
                base_fingerprint=v.base_fingerprint,
                weights_sha256=v.weights_sha256,
                created_at=v.created_at,
                created_by=v.created_by,
                aliases=aliases.get(v.id, []),
            )
            for v, base_name in rows
        ]

    def list_evals(self, ref: str) -> list[EvalRow]:
        with self._read() as session:
            _, v = self._resolve(session, ref, allow_deleted=True)
            return self._evals(session, v.id)

    def events(
        self, *, name: str | None = None, limit: int = 100, before: int | None = None
    ) -> list[EventRow]:
        """The journal, newest first (optionally for one adapter)."""
        check_limit(limit)
        with self._read() as session:
            stmt = select(Event).order_by(Event.id.desc()).limit(limit)
            if name is not None:
                stmt = stmt.where(Event.adapter_id == self._adapter(session, name).id)
            if before is not None:
                stmt = stmt.where(Event.id < before)
            return [
                EventRow(
                    id=e.id,
                    at=e.at,
                    actor=e.actor,
                    kind=e.kind,
                    subject=e.subject,
                    payload=dict(e.payload),
                )
                for e in session.scalars(stmt)
            ]

    # -------------------------------------------------------------------- write use cases

    def add_evals(self, ref: str, evals: Sequence[EvalInput]) -> list[EvalRow]:
        """Record eval scores for a version."""
        if not evals:
            raise InvalidInputError(
                "no eval score given; expected METRIC=VALUE[,dataset=D][,split=S]"
            )
        now = utcnow()
        with self._write() as session:
            adapter, v = self._resolve(session, ref)
            ids = []
            for spec in evals:
                score = EvalScore(**self._eval_row(v.id, spec, now))
                session.add(score)
                session.flush()
                ids.append(score.id)
            _journal(
                session,
                actor=self.actor,
                kind="eval.added",
                subject=f"{adapter.name}@{v.version}",
                adapter_id=adapter.id,
                version_id=v.id,
                payload={"evals": [dataclasses.asdict(e) for e in evals]},
            )
            return [r for r in self._evals(session, v.id) if r.id in ids]

    def set_tags(
        self, ref: str, *, set_tags: Mapping[str, str] | None = None, remove: Sequence[str] = ()
    ) -> dict[str, str]:
        """Set and remove tags of a version; returns its tags afterwards."""
        with self._write() as session:
            adapter, v = self._resolve(session, ref)
            for key in remove:
                session.execute(delete(Tag).where(Tag.version_id == v.id, Tag.key == key))
            for key, value in (set_tags or {}).items():
                if not key:
                    raise InvalidInputError("a tag needs a key; expected KEY=VALUE")
                current = session.get(Tag, (v.id, key))
                if current is None:
                    session.add(Tag(version_id=v.id, key=key, value=value))
                else:
                    current.value = value
            session.flush()
            _journal(
                session,
                actor=self.actor,
                kind="tags.changed",
                subject=f"{adapter.name}@{v.version}",
                adapter_id=adapter.id,
                version_id=v.id,
                payload={"set": dict(set_tags or {}), "removed": list(remove)},
            )
            return dict(
                session.execute(
                    select(Tag.key, Tag.value).where(Tag.version_id == v.id).order_by(Tag.key)
                ).all()
            )

    def set_alias(self, ref: str, alias: str) -> AliasMoveRow:
        """Point ``alias`` of the referenced adapter at that version (recorded in the history)."""
        check_alias(alias)
        now = utcnow()
        with self._write() as session:
            adapter, v = self._resolve(session, ref)
            if v.status != "ready":
                raise ConflictError(
                    f"{adapter.name}@{v.version} is {v.status} ({v.status_reason}); an alias can "
                    "only point at a ready version"
                )
            stmt = select(Alias).where(Alias.adapter_id == adapter.id, Alias.name == alias)
            if not is_sqlite(self.engine):
                stmt = stmt.with_for_update()
            current = session.scalars(stmt).one_or_none()
            from_id = current.version_id if current else None
            if current is None:
                session.add(
                    Alias(
                        adapter_id=adapter.id,
                        name=alias,
                        version_id=v.id,
                        updated_at=now,
                        updated_by=self.actor,
                    )
                )
            else:
                current.version_id, current.updated_at, current.updated_by = v.id, now, self.actor
            session.add(
                AliasMove(
                    adapter_id=adapter.id,
                    alias=alias,
                    from_version_id=from_id,
                    to_version_id=v.id,
                    moved_at=now,
                    moved_by=self.actor,
                )
            )
            from_number = (
                session.scalar(select(AdapterVersion.version).where(AdapterVersion.id == from_id))
                if from_id
                else None
            )
            _journal(
                session,
                actor=self.actor,
                kind="alias.set",
                subject=f"{adapter.name}@{alias}",
                adapter_id=adapter.id,
                version_id=v.id,
                payload={"alias": alias, "from": from_number, "to": v.version},
            )
        return AliasMoveRow(
            alias=alias,
            from_version=from_number,
            to_version=v.version,
            moved_at=now,
            moved_by=self.actor,
        )

    def remove_alias(self, name: str, alias: str) -> AliasMoveRow:
        now = utcnow()
        with self._write() as session:
            adapter = self._adapter(session, name)
            current = session.scalars(
                select(Alias).where(Alias.adapter_id == adapter.id, Alias.name == alias)
            ).one_or_none()
            if current is None:
                raise NotFoundError(
                    f"adapter {name!r} has no alias {alias!r}; see `loradex alias history {name}`"
                )
            from_number = session.scalar(
                select(AdapterVersion.version).where(AdapterVersion.id == current.version_id)
            )
            session.add(
                AliasMove(
                    adapter_id=adapter.id,
                    alias=alias,
                    from_version_id=current.version_id,
                    to_version_id=None,
                    moved_at=now,
                    moved_by=self.actor,
                )
            )
            session.delete(current)
            _journal(
                session,
                actor=self.actor,
                kind="alias.removed",
                subject=f"{name}@{alias}",
                adapter_id=adapter.id,
                payload={"alias": alias, "from": from_number},
            )
        return AliasMoveRow(
            alias=alias,
            from_version=from_number,
            to_version=None,
            moved_at=now,
            moved_by=self.actor,
        )

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMoveRow]:
        """Every move of the adapter's aliases (or of one alias), oldest first."""
        with self._read() as session:
            adapter = self._adapter(session, name)
            numbers = dict(
                session.execute(
                    select(AdapterVersion.id, AdapterVersion.version).where(
                        AdapterVersion.adapter_id == adapter.id
                    )
                ).all()
            )
            stmt = (
                select(AliasMove).where(AliasMove.adapter_id == adapter.id).order_by(AliasMove.id)
            )
            if alias is not None:
                stmt = stmt.where(AliasMove.alias == alias)
            return [
                AliasMoveRow(
                    alias=m.alias,
                    from_version=numbers.get(m.from_version_id) if m.from_version_id else None,
                    to_version=numbers.get(m.to_version_id) if m.to_version_id else None,
                    moved_at=m.moved_at,
                    moved_by=m.moved_by,
                )
                for m in session.scalars(stmt)
            ]

    def yank(self, ref: str, *, reason: str) -> VersionKey:
        """Hide a version from ``latest`` and aliases; it stays fetchable as ``NAME@N``."""
        if not reason.strip():
            raise InvalidInputError("yank needs a reason (--reason), e.g. 'regressed on mmlu'")
        return self._set_status(
            ref, status="yanked", reason=reason, expect=("ready", "yanked"), kind="version.yanked"
        )

    def unyank(self, ref: str) -> VersionKey:
        return self._set_status(
            ref, status="ready", reason=None, expect=("yanked",), kind="version.unyanked"
        )

    def _set_status(
        self, ref: str, *, status: str, reason: str | None, expect: tuple[str, ...], kind: str
    ) -> VersionKey:
        with self._write() as session:
            adapter, v = self._resolve(session, ref)
            if v.status not in expect:
                raise ConflictError(
                    f"{adapter.name}@{v.version} is {v.status}; expected {' or '.join(expect)}"
                )
            v.status, v.status_reason = status, reason
            session.flush()
            _journal(
                session,
                actor=self.actor,
                kind=kind,
                subject=f"{adapter.name}@{v.version}",
                adapter_id=adapter.id,
                version_id=v.id,
                payload={"reason": reason},
            )
            return self._key(adapter, v)

    def delete(self, ref: str, *, purge: bool) -> VersionKey:
        """Delete a version and purge its files; its number stays retired."""
        if not purge:
            raise InvalidInputError(
                "delete removes the version's files for good; pass --purge to confirm, or use "
                "`loradex yank REF --reason ...` to hide it and keep the files"
            )
        with self._write() as session:
            adapter, v = self._resolve(session, ref)
            aliases = list(session.scalars(select(Alias.name).where(Alias.version_id == v.id)))
            if aliases:
                raise ConflictError(
                    f"{adapter.name}@{v.version} is the target of alias(es) {', '.join(aliases)}; "
                    f"move or remove them first (`loradex alias rm {adapter.name} ALIAS`)"
                )
            shas = list(
                session.scalars(select(VersionFile.sha256).where(VersionFile.version_id == v.id))
            )
            session.execute(delete(VersionFile).where(VersionFile.version_id == v.id))
            v.status, v.status_reason, v.content_sha256 = "deleted", "purged", None
            session.flush()
            _journal(
                session,
                actor=self.actor,
                kind="version.deleted",
                subject=f"{adapter.name}@{v.version}",
                adapter_id=adapter.id,
                version_id=v.id,
                payload={"blobs": shas},
            )
            key = self._key(adapter, v)
        with self._read() as session:
            still = set(
                session.scalars(select(VersionFile.sha256).where(VersionFile.sha256.in_(shas)))
            )
        for sha in set(shas) - still:
            self.blobs.delete(sha)
        return key

    # -------------------------------------------------------------------- lineage & checkpoints

    def lineage(self, ref: str) -> LineageView:
        """Parents, children and merged checkpoints of a version."""
        with self._read() as session:
            adapter, v = self._resolve(session, ref, allow_deleted=True)
            parents = session.execute(
                select(LineageEdge, Adapter.name, AdapterVersion.version)
                .join(AdapterVersion, AdapterVersion.id == LineageEdge.parent_version_id)
                .join(Adapter, Adapter.id == AdapterVersion.adapter_id)
                .where(LineageEdge.child_version_id == v.id)
                .order_by(LineageEdge.id)
            ).all()
            children = session.execute(
                select(LineageEdge, Adapter.name, AdapterVersion.version)
                .join(AdapterVersion, AdapterVersion.id == LineageEdge.child_version_id)
                .join(Adapter, Adapter.id == AdapterVersion.adapter_id)
                .where(LineageEdge.parent_version_id == v.id)
                .order_by(LineageEdge.id)
            ).all()
            checkpoints = session.execute(
                select(
                    Checkpoint.id,
                    Checkpoint.location,
                    Checkpoint.created_at,
                    CheckpointMember.weight,
                )
                .join(CheckpointMember, CheckpointMember.checkpoint_id == Checkpoint.id)
                .where(CheckpointMember.version_id == v.id)
                .order_by(Checkpoint.id)
            ).all()

        def edge(e: LineageEdge, name: str, number: int) -> LineageEdgeRow:
            return LineageEdgeRow(
                ref=f"{name}@{number}",
                relation=e.relation,
                method=e.method,
                weight=e.weight,
                seed=e.seed,
                params=dict(e.params),
            )

        return LineageView(
            ref=f"{adapter.name}@{v.version}",
            parents=[edge(*row) for row in parents],
            children=[edge(*row) for row in children],
            checkpoints=[
                {
                    "id": cid,
                    "location": loc,
                    "created_at": _jsonable(at),
                    "weight": w,
                    "relation": "merged-into",
                }
                for cid, loc, at, w in checkpoints
            ],
        )

    def record_checkpoint(
        self,
        location: Path | str,
        *,
        members: Sequence[tuple[VersionKey, float]],
        base_id: int | None = None,
        base_fingerprint: str | None = None,
        fingerprint: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CheckpointRow:
        """Record a merged checkpoint made from registered versions (with their weights)."""
        if not members:
            raise InvalidInputError("a checkpoint record needs at least one registered version")
        now = utcnow()
        location_text = (
            str(Path(location).resolve())
            if not str(location).startswith(("s3://", "hf://"))
            else str(location)
        )
        with self._write() as session:
            ids = [key.version_id for key, _ in members]
            found = set(
                session.scalars(select(AdapterVersion.id).where(AdapterVersion.id.in_(ids)))
            )
            missing = [key.ref for key, _ in members if key.version_id not in found]
            if missing:
                raise NotFoundError(
                    f"checkpoint members {', '.join(missing)} are not in this registry"
                )
            base_name = None
            if base_id is not None:
                base = session.get(BaseModel, base_id)
                if base is None:
                    raise NotFoundError(f"base model id {base_id} is not in this registry")
                base_name = base.name
                base_fingerprint = base_fingerprint or base.fingerprint
            checkpoint = Checkpoint(
                location=location_text,
                fingerprint=fingerprint,
                base_model_id=base_id,
                base_fingerprint=base_fingerprint,
                meta=_jsonable(dict(metadata or {})),
                created_at=now,
                created_by=self.actor,
            )
            session.add(checkpoint)
            session.flush()
            session.execute(
                insert(CheckpointMember),
                [
                    {
                        "checkpoint_id": checkpoint.id,
                        "position": i,
                        "version_id": key.version_id,
                        "weight": float(weight),
                    }
                    for i, (key, weight) in enumerate(members)
                ],
            )
            _journal(
                session,
                actor=self.actor,
                kind="checkpoint.recorded",
                subject=location_text[-300:],
                payload={
                    "checkpoint_id": checkpoint.id,
                    "members": [[k.ref, w] for k, w in members],
                    "fingerprint": fingerprint,
                },
            )
            cid = checkpoint.id
        return CheckpointRow(
            id=cid,
            location=location_text,
            fingerprint=fingerprint,
            base=base_name,
            base_fingerprint=base_fingerprint,
            members=[{"ref": k.ref, "weight": float(w)} for k, w in members],
            metadata=_jsonable(dict(metadata or {})),
            created_at=now,
            created_by=self.actor,
        )

    def list_checkpoints(
        self, *, ref: str | None = None, limit: int = 50, after: int | None = None
    ) -> Page:
        """Merged checkpoints, newest first; with ``ref``, those that contain that version."""
        check_limit(limit)
        with self._read() as session:
            stmt = select(Checkpoint, BaseModel.name).outerjoin(
                BaseModel, BaseModel.id == Checkpoint.base_model_id
            )
            if ref is not None:
                _, v = self._resolve(session, ref, allow_deleted=True)
                stmt = stmt.where(
                    Checkpoint.id.in_(
                        select(CheckpointMember.checkpoint_id).where(
                            CheckpointMember.version_id == v.id
                        )
                    )
                )
            if after is not None:
                stmt = stmt.where(keyset_after([(Checkpoint.id, True)], [after]))
            rows = session.execute(stmt.order_by(Checkpoint.id.desc()).limit(limit + 1)).all()
            page = rows[:limit]
            members: dict[int, list[dict[str, Any]]] = {}
            if page:
                for cid, name, number, weight in session.execute(
                    select(
                        CheckpointMember.checkpoint_id,
                        Adapter.name,
                        AdapterVersion.version,
                        CheckpointMember.weight,
                    )
                    .join(AdapterVersion, AdapterVersion.id == CheckpointMember.version_id)
                    .join(Adapter, Adapter.id == AdapterVersion.adapter_id)
                    .where(CheckpointMember.checkpoint_id.in_([c.id for c, _ in page]))
                    .order_by(CheckpointMember.checkpoint_id, CheckpointMember.position)
                ):
                    members.setdefault(cid, []).append(
                        {"ref": f"{name}@{number}", "weight": weight}
                    )
        items = [
            CheckpointRow(
                id=c.id,
                location=c.location,
                fingerprint=c.fingerprint,
                base=base_name,
                base_fingerprint=c.base_fingerprint,
                members=members.get(c.id, []),
                metadata=dict(c.meta),
                created_at=c.created_at,
                created_by=c.created_by,
            )
            for c, base_name in page
        ]
        cursor = encode_cursor([items[-1].id]) if len(rows) > limit else None
        return Page(items=items, next_cursor=cursor)

    # -------------------------------------------------------------------- files

    def _files(self, session: Session, version_id: int) -> dict[str, tuple[str, int]]:
        return {
            f.path: (f.sha256, f.size)
            for f in session.scalars(
                select(VersionFile).where(VersionFile.version_id == version_id)
            )
        }

    def export(self, ref: str, out: Path, *, force: bool = False) -> Path:
        """Write the version's stored files, byte for byte and verified, to folder ``out``."""
        out = Path(out)
        with self._read() as session:
            adapter, v = self._resolve(session, ref)
            files = self._files(session, v.id)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
            raise OutputExistsError(
                f"export target {str(out)!r} exists and is not empty; choose another --out or pass --force"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        try:
            for rel, (sha, size) in sorted(files.items()):
                self.blobs.copy_to(sha, tmp / rel, size=size)
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("exported %s@%d to %s", adapter.name, v.version, out)
        return out

    def materialize(self, key: VersionKey) -> Path:
        """A local folder with the version's verified files, built once under the cache and reused.

        The folder is ``$LORADEX_HOME/cache/versions/<digest>``, where the digest covers every
        stored file (paths and sha256). Reuse re-verifies the files; a tampered folder is rebuilt.
        """
        with self._read() as session:
            files = self._files(session, key.version_id)
        if not files:
            raise NotFoundError(f"{key.ref} has no stored files (deleted and purged?)")
        digest = files_digest({p: s for p, (s, _) in files.items()})
        root = self.settings.cache_dir / "versions"
        target = root / digest
        if target.is_dir():
            if _folder_matches(target, files):
                return target
            logger.warning("cached folder %s does not match its files; rebuilding", target)
            shutil.rmtree(target, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        try:
            for rel, (sha, size) in sorted(files.items()):
                self.blobs.copy_to(sha, tmp / rel, size=size)
            try:
                os.rename(tmp, target)
            except OSError:  # another process materialised it first
                shutil.rmtree(tmp, ignore_errors=True)
                if not _folder_matches(target, files):
                    raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def verify(self, ref: str | None = None) -> list[dict[str, Any]]:
        """Re-hash stored blobs (of one version, or all); returns the bad ones."""
        with self._read() as session:
            stmt = (
                select(VersionFile.sha256, VersionFile.path, Adapter.name, AdapterVersion.version)
                .join(AdapterVersion, AdapterVersion.id == VersionFile.version_id)
                .join(Adapter, Adapter.id == AdapterVersion.adapter_id)
            )
            if ref is not None:
                _, v = self._resolve(session, ref)
                stmt = stmt.where(VersionFile.version_id == v.id)
            rows = session.execute(stmt).all()
        bad = []
        checked: dict[str, bool] = {}
        for sha, rel, name, number in rows:
            if sha not in checked:
                checked[sha] = self.blobs.verify(sha)
            if not checked[sha]:
                bad.append({"ref": f"{name}@{number}", "path": rel, "sha256": sha})
        return bad

    def gc(self, *, grace_s: float = DEFAULT_GC_GRACE_S, dry_run: bool = False) -> GcResult:
        """Remove blobs no version references, once older than ``grace_s`` seconds."""
        with self._read() as session:
            referenced = set(session.scalars(select(VersionFile.sha256).distinct()))
        cutoff = time.time() - grace_s
        removed: list[str] = []
        kept = scanned = freed = 0
        for blob in self.blobs.iter_blobs():
            scanned += 1
            if blob.sha256 in referenced:
                continue
            if blob.mtime > cutoff:
                kept += 1
                continue
            if not dry_run:
                # Re-check just before deleting: a register may have committed meanwhile.
                with self._read() as session:
                    if session.scalar(
                        select(VersionFile.sha256).where(VersionFile.sha256 == blob.sha256).limit(1)
                    ):
                        continue
                self.blobs.delete(blob.sha256)
            removed.append(blob.sha256)
            freed += blob.size
        if not dry_run and isinstance(self.blobs, LocalBlobStore):
            self.blobs.clean_tmp(older_than_s=grace_s)
        logger.info("gc: %d blobs scanned, %d removed, %d in grace", scanned, len(removed), kept)
        return GcResult(
            scanned=scanned, removed=removed, kept_in_grace=kept, bytes_freed=freed, dry_run=dry_run
        )


def _folder_matches(folder: Path, files: Mapping[str, tuple[str, int]]) -> bool:
    present = {rel for rel, _ in _collect_files(folder)}
    if present != set(files):
        return False
    return all(
        (folder / rel).stat().st_size == size and sha256_file(folder / rel) == sha
        for rel, (sha, size) in files.items()
    )


def _base_name_for(path: Path) -> str:
    """A name for an auto-registered base: config ``_name_or_path`` leaf, else the folder name."""
    name = path.resolve().name
    config = path / "config.json"
    if config.is_file():
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(config.read_text())
            candidate = str(data.get("_name_or_path") or "")
            if candidate and not os.path.isabs(candidate):
                name = candidate.replace("/", "--")
    cleaned = re.sub(r"[^A-Za-z0-9._\-]", "-", name).strip("-.") or "base"
    return cleaned[:200]
