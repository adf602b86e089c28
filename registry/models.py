"""ORM models of the registry (SQLAlchemy 2.0 typed declarative). No logic lives here.

Invariants the database enforces: one adapter per name; version numbers unique per adapter
(``uq_adapter_versions_adapter_id_version``); byte-identical content registered once per adapter
(``uq_adapter_versions_adapter_id_content_sha256``); aliases point at real versions and
``latest`` is never stored; status values are checked.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

VERSION_STATUSES = ("ready", "yanked", "deleted")
LINEAGE_RELATIONS = ("combined-from", "rescaled-from", "extracted-from", "derived-from")
RESERVED_ALIASES = ("latest",)

SHA256 = String(64)
NAME = String(200)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class BaseModel(Base):
    """A base checkpoint adapters are trained on, identified by its tensor fingerprint."""

    __tablename__ = "base_models"
    __table_args__ = (
        UniqueConstraint("name"),
        UniqueConstraint("fingerprint"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NAME)
    fingerprint: Mapped[str | None] = mapped_column(SHA256)
    architectures: Mapped[list[str]] = mapped_column(JSON)
    signature: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    source_path: Mapped[str | None] = mapped_column(Text)
    source_repo: Mapped[str | None] = mapped_column(String(300))
    source_revision: Mapped[str | None] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(NAME)


class BaseFile(Base):
    """A file of a base checkpoint stored in the blob store (``loradex base add --store``)."""

    __tablename__ = "base_files"
    __table_args__ = (
        PrimaryKeyConstraint("base_id", "path"),
        Index("ix_base_files_sha256", "sha256"),
        CheckConstraint("size >= 0", name="size_nonnegative"),
    )

    base_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    path: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(SHA256)
    size: Mapped[int] = mapped_column(BigInteger)


class Adapter(Base):
    """A named adapter; ``last_version`` is the counter versions are allocated from."""

    __tablename__ = "adapters"
    __table_args__ = (
        UniqueConstraint("name"),
        # Names are unique regardless of case too (revision 0004): `Support` is `support`.
        Index("uq_adapters_name_casefold", func.lower(text("name")), unique=True),
        CheckConstraint("last_version >= 0", name="last_version_nonnegative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NAME)
    description: Mapped[str] = mapped_column(Text)
    last_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(NAME)

    versions: Mapped[list[AdapterVersion]] = relationship(back_populates="adapter", lazy="raise")


class AdapterVersion(Base):
    """One immutable registered version of an adapter, with its ``inspect`` summary."""

    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("adapter_id", "version"),
        UniqueConstraint("adapter_id", "content_sha256"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint(
            "status IN ('ready', 'yanked', 'deleted')",
            name="status_known",
        ),
        Index("ix_adapter_versions_status_adapter_id", "status", "adapter_id", "version"),
        Index("ix_adapter_versions_weights_sha256", "weights_sha256"),
        Index("ix_adapter_versions_base_model_id", "base_model_id"),
        Index("ix_adapter_versions_base_fingerprint", "base_fingerprint"),
        Index("ix_adapter_versions_max_rank", "max_rank"),
        Index("ix_adapter_versions_created_at", "created_at"),
        Index("ix_adapter_versions_adapter_fingerprint", "adapter_fingerprint"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(Text)
    content_sha256: Mapped[str | None] = mapped_column(SHA256)
    weights_sha256: Mapped[str] = mapped_column(SHA256)
    weights_path: Mapped[str] = mapped_column(String(500))
    base_model_id: Mapped[int | None] = mapped_column(ForeignKey("base_models.id"))
    base_fingerprint: Mapped[str | None] = mapped_column(SHA256)
    base_name_or_path: Mapped[str | None] = mapped_column(Text)
    max_rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)
    use_dora: Mapped[bool] = mapped_column(Boolean)
    use_rslora: Mapped[bool] = mapped_column(Boolean)
    dtype: Mapped[str] = mapped_column(String(32))
    param_count: Mapped[int] = mapped_column(BigInteger)
    nbytes: Mapped[int] = mapped_column(BigInteger)
    adapter_fingerprint: Mapped[str | None] = mapped_column(SHA256)
    target_modules: Mapped[list[str]] = mapped_column(JSON)
    ranks: Mapped[dict[str, int]] = mapped_column(JSON)
    flags: Mapped[dict[str, bool]] = mapped_column(JSON)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    description: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(NAME)

    adapter: Mapped[Adapter] = relationship(back_populates="versions", lazy="raise")


class VersionModule(Base):
    """A target module (leaf name) of a version, one row each so the filter is indexed."""

    __tablename__ = "version_modules"
    __table_args__ = (
        PrimaryKeyConstraint("version_id", "module"),
        Index("ix_version_modules_module", "module", "version_id"),
    )

    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"))
    module: Mapped[str] = mapped_column(NAME)


class VersionFile(Base):
    """A file of a version: its relative path and the blob holding its bytes."""

    __tablename__ = "version_files"
    __table_args__ = (
        PrimaryKeyConstraint("version_id", "path"),
        Index("ix_version_files_sha256", "sha256"),
        CheckConstraint("size >= 0", name="size_nonnegative"),
    )

    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"))
    path: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(SHA256)
    size: Mapped[int] = mapped_column(BigInteger)


class Tag(Base):
    """A ``key=value`` tag on a version."""

    __tablename__ = "tags"
    __table_args__ = (
        PrimaryKeyConstraint("version_id", "key"),
        Index("ix_tags_key_value", "key", "value", "version_id"),
    )

    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"))
    key: Mapped[str] = mapped_column(NAME)
    value: Mapped[str] = mapped_column(String(500))


class Alias(Base):
    """A movable pointer (``production``, ``staging``) to a version of one adapter."""

    __tablename__ = "aliases"
    __table_args__ = (
        UniqueConstraint("adapter_id", "name"),
        CheckConstraint("name <> 'latest'", name="name_not_reserved"),
        Index("ix_aliases_version_id", "version_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    name: Mapped[str] = mapped_column(String(100))
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str] = mapped_column(NAME)


class AliasMove(Base):
    """History of every alias move: who, when, from which version, to which (None: removed)."""

    __tablename__ = "alias_moves"
    __table_args__ = (Index("ix_alias_moves_adapter_id_alias", "adapter_id", "alias", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    alias: Mapped[str] = mapped_column(String(100))
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"))
    to_version_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"))
    moved_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    moved_by: Mapped[str] = mapped_column(NAME)
    # revision 0008: how the alias moved (None on older rows: a plain set or remove) and, for a
    # publish or a rollback, the report of the gates it passed.
    kind: Mapped[str | None] = mapped_column(String(16))
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Event(Base):
    """The append-only journal, written in the same transaction as each change."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_adapter_id", "adapter_id", "id"),
        Index("ix_events_kind", "kind", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(NAME)
    kind: Mapped[str] = mapped_column(String(64))
    adapter_id: Mapped[int | None] = mapped_column(Integer)
    version_id: Mapped[int | None] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(String(300))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class JournalCounter(Base):
    """The one row that numbers journal events (revision 0005).

    Each writing transaction takes its event numbers by incrementing ``last_event_id``; the row
    lock it takes is held until commit, so numbers are handed out in commit order and a reader
    following ``after=N`` never skips an event that commits late.
    """

    __tablename__ = "journal_counter"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_event_id: Mapped[int] = mapped_column(BigInteger)


# --- revision 0002 -------------------------------------------------------------------------


class EvalScore(Base):
    """One evaluation result of a version: metric, value, dataset, split, time."""

    __tablename__ = "eval_scores"
    __table_args__ = (
        Index("ix_eval_scores_metric_version_id", "metric", "version_id", "value"),
        Index("ix_eval_scores_metric_value", "metric", "value"),
        Index("ix_eval_scores_version_id", "version_id", "metric", "value"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"))
    metric: Mapped[str] = mapped_column(NAME)
    value: Mapped[float] = mapped_column(Float)
    dataset: Mapped[str | None] = mapped_column(NAME)
    split: Mapped[str | None] = mapped_column(String(100))
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    recorded_by: Mapped[str] = mapped_column(NAME)


class VersionScore(Base):
    """A version's best score per metric over all its eval scores (revision 0009).

    The highest value, or the lowest for a lower-is-better metric (see :mod:`registry.metrics`).
    Kept exact by every write of eval scores and by a change of a metric's direction, so a
    search without a dataset or split filter reads one row per version and metric, and a sort
    by a metric walks ``ix_version_scores_metric_value`` instead of aggregating every score.
    """

    __tablename__ = "version_scores"
    __table_args__ = (
        PrimaryKeyConstraint("version_id", "metric"),
        Index("ix_version_scores_metric_value", "metric", "value", "version_id"),
    )

    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE")
    )
    metric: Mapped[str] = mapped_column(NAME)
    value: Mapped[float] = mapped_column(Float)


class Checkpoint(Base):
    """A merged checkpoint produced by ``loradex merge`` from registered versions."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        Index("ix_checkpoints_fingerprint", "fingerprint"),
        Index("ix_checkpoints_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    location: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str | None] = mapped_column(SHA256)
    base_model_id: Mapped[int | None] = mapped_column(ForeignKey("base_models.id"))
    base_fingerprint: Mapped[str | None] = mapped_column(SHA256)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(NAME)


class CheckpointMember(Base):
    """A version merged into a checkpoint, with its weight, in merge order."""

    __tablename__ = "checkpoint_members"
    __table_args__ = (
        PrimaryKeyConstraint("checkpoint_id", "position"),
        Index("ix_checkpoint_members_version_id", "version_id"),
    )

    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))
    position: Mapped[int] = mapped_column(Integer)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"))
    weight: Mapped[float] = mapped_column(Float)


class LineageEdge(Base):
    """A parent of a version: how the child was made from it (method, weight, seed)."""

    __tablename__ = "lineage"
    __table_args__ = (
        UniqueConstraint("child_version_id", "parent_version_id", "relation"),
        CheckConstraint(
            "relation IN ('combined-from', 'rescaled-from', 'extracted-from', 'derived-from')",
            name="relation_known",
        ),
        Index("ix_lineage_parent_version_id", "parent_version_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    child_version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"))
    parent_version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"))
    relation: Mapped[str] = mapped_column(String(32))
    method: Mapped[str | None] = mapped_column(String(64))
    weight: Mapped[float | None] = mapped_column(Float)
    seed: Mapped[int | None] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)


# --- revision 0003 -------------------------------------------------------------------------


class MetricDirection(Base):
    """A metric whose direction was declared (registry-wide); others follow the default rule."""

    __tablename__ = "metric_directions"
    __table_args__ = (
        PrimaryKeyConstraint("metric"),
        CheckConstraint("direction IN ('higher', 'lower')", name="direction_known"),
    )

    metric: Mapped[str] = mapped_column(NAME)
    direction: Mapped[str] = mapped_column(String(8))
    declared_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    declared_by: Mapped[str] = mapped_column(NAME)


# --- revision 0006 -------------------------------------------------------------------------

TOKEN_SCOPES = ("read", "write", "publish", "admin")


class ApiToken(Base):
    """A bearer token of the HTTP API: only the sha256 of its secret is stored.

    ``scope`` is one of :data:`TOKEN_SCOPES` (each includes the ones before it); ``prefix``
    limits the token to adapter names that start with it; ``name`` is the actor recorded for
    every change the token makes.
    """

    __tablename__ = "api_tokens"
    __table_args__ = (
        UniqueConstraint("secret_sha256"),
        CheckConstraint(
            "scope IN ('read', 'write', 'publish', 'admin')", name="scope_known"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NAME)
    secret_sha256: Mapped[str] = mapped_column(SHA256)
    scope: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str | None] = mapped_column(NAME)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(NAME)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[str | None] = mapped_column(NAME)


# --- revision 0008 -------------------------------------------------------------------------

ALIAS_MOVE_KINDS = ("set", "removed", "publish", "rollback")


class AliasPolicy(Base):
    """The gates every publish to one alias runs (``loradex alias policy set``).

    ``gates`` holds the gate specs as written (``{"require": [...], "no_regress": [...],
    "serving": [...]}``); they are parsed again by :mod:`registry.policies` when used. An alias
    with a policy moves only through a publish.
    """

    __tablename__ = "alias_policies"
    __table_args__ = (PrimaryKeyConstraint("adapter_id", "alias"),)

    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    alias: Mapped[str] = mapped_column(String(100))
    gates: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str] = mapped_column(NAME)


class AliasProtection(Base):
    """A protected alias (``loradex alias protect``): only an admin moves it (or a publish
    through its policy)."""

    __tablename__ = "alias_protections"
    __table_args__ = (PrimaryKeyConstraint("adapter_id", "alias"),)

    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    alias: Mapped[str] = mapped_column(String(100))
    protected_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    protected_by: Mapped[str] = mapped_column(NAME)
