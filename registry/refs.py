"""References wherever a path works: a folder path, or a registered adapter / base.

Adapters: an existing directory is a path; otherwise ``NAME`` (latest ready version), ``NAME@7``,
``NAME@production`` or ``sha256:<12+ hex>`` (a unique prefix of a version's weights-file digest).
A registered version is materialised once, verified, under ``$LORADEX_HOME/cache/versions/`` and
that folder is returned, with the version's identity so a merge can be recorded.

Bases: an existing directory, or a registered base model (by name or ``sha256:`` fingerprint
prefix) whose source is a local folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetools.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:  # imported lazily: `loradex merge PATH ...` on folders never opens a database
    from typing import TypeAlias

    from registry.records import CheckpointRow, VersionKey
    from registry.service import Registry
    from registry.settings import Settings

    RegistrySource: TypeAlias = Registry | Settings
    """An open registry, or the settings to open one with (only if a reference needs it)."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedAdapter:
    """A folder that ``merge``/``check`` can read, and the registered version it holds (if any)."""

    ref: str
    path: Path
    version: VersionKey | None = None  # set when it came from the registry

    @property
    def registered(self) -> bool:
        return self.version is not None


@dataclass(frozen=True)
class ResolvedBase:
    """A base checkpoint folder, and its registered row (if any)."""

    ref: str
    path: Path
    base_id: int | None = None
    name: str | None = None
    fingerprint: str | None = None


def _registry(registry_or_settings: RegistrySource) -> tuple[Registry, bool]:
    """(registry, owned): open one from settings when needed (the caller closes owned ones)."""
    from registry.service import Registry as _Registry
    from registry.settings import Settings as _Settings

    if isinstance(registry_or_settings, _Registry):
        return registry_or_settings, False
    assert isinstance(registry_or_settings, _Settings)
    return _Registry(registry_or_settings), True


def _is_path(ref: str) -> bool:
    return Path(ref).expanduser().is_dir()


def resolve_adapter_ref(registry_or_settings: RegistrySource, ref: str) -> ResolvedAdapter:
    """Turn ``ref`` into a readable adapter folder; see the module docstring for the forms.

    ``registry_or_settings`` is a :class:`registry.service.Registry` or a
    :class:`registry.settings.Settings` (the database is opened only when ``ref`` is not a path).
    """
    if _is_path(ref):
        return ResolvedAdapter(ref=ref, path=Path(ref).expanduser())
    if "/" in ref or ref.startswith((".", "~")):
        raise NotFoundError(
            f"adapter {ref!r} is neither an existing folder nor a registry reference; expected a "
            "PEFT adapter folder, NAME, NAME@7, NAME@production or sha256:<hex>"
        )
    registry, owned = _registry(registry_or_settings)
    try:
        key = registry.resolve(ref)
        path = registry.materialize(key)
    finally:
        if owned:
            registry.close()
    logger.info("resolved %s to %s (%s)", ref, key.ref, path)
    return ResolvedAdapter(ref=ref, path=path, version=key)


def resolve_adapter_refs(
    registry_or_settings: RegistrySource, refs: Sequence[str]
) -> list[ResolvedAdapter]:
    """:func:`resolve_adapter_ref` for several refs, opening the registry at most once."""
    if all(_is_path(r) for r in refs):
        return [ResolvedAdapter(ref=r, path=Path(r).expanduser()) for r in refs]
    registry, owned = _registry(registry_or_settings)
    try:
        return [resolve_adapter_ref(registry, r) for r in refs]
    finally:
        if owned:
            registry.close()


def resolve_base_ref(registry_or_settings: RegistrySource, ref: str) -> ResolvedBase:
    """Turn ``ref`` into a base checkpoint folder: a path, or a registered base with a local source."""
    if _is_path(ref):
        return ResolvedBase(ref=ref, path=Path(ref).expanduser())
    if "/" in ref and not ref.startswith("sha256:"):
        raise NotFoundError(
            f"base {ref!r} is neither an existing folder nor a registered base model name; "
            "see `loradex base list`"
        )
    registry, owned = _registry(registry_or_settings)
    try:
        base = registry.get_base(ref, with_signature=False)
    finally:
        if owned:
            registry.close()
    if not base.source_path or not Path(base.source_path).is_dir():
        raise InvalidInputError(
            f"base model {base.name!r} is registered but its source folder "
            f"{base.source_path!r} is not available here; pass the checkpoint folder path instead"
        )
    return ResolvedBase(
        ref=ref,
        path=Path(base.source_path),
        base_id=base.id,
        name=base.name,
        fingerprint=base.fingerprint,
    )


def record_merge(
    registry_or_settings: RegistrySource,
    *,
    out: Path,
    adapters: Sequence[ResolvedAdapter],
    weights: Sequence[float] | None = None,
    base: ResolvedBase | None = None,
    fingerprint: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> CheckpointRow | None:
    """Record the checkpoint at ``out`` merged from ``adapters``; None when none is registered.

    Adapters given as plain folders are listed in the checkpoint's metadata (``unregistered``).
    Returns a :class:`registry.records.CheckpointRow`.
    """
    members = [
        (a.version, float(w))
        for a, w in zip(adapters, weights or [1.0] * len(adapters), strict=True)
        if a.version is not None
    ]
    if not members:
        return None
    extra = dict(metadata or {})
    unregistered = [str(a.path) for a in adapters if not a.registered]
    if unregistered:
        extra["unregistered"] = unregistered
    if base is not None:
        extra.setdefault("base_path", str(base.path))
    registry, owned = _registry(registry_or_settings)
    try:
        return registry.record_checkpoint(
            out,
            members=members,
            base_id=base.base_id if base else None,
            base_fingerprint=base.fingerprint if base else None,
            fingerprint=fingerprint,
            metadata=extra,
        )
    finally:
        if owned:
            registry.close()
