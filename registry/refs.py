"""References wherever a path works: a folder path, or a registered adapter / base.

One rule for every adapter and base argument (``merge``, ``check``, ``inspect``):

- an argument that contains a path separator, is absolute, or starts with ``.`` or ``~`` is
  always a folder path (``./x``, ``runs/x``, ``~/x``); a missing one is "does not exist";
- anything else is a registry reference when it names a registered adapter (base): ``NAME``
  (latest ready version), ``NAME@7``, ``NAME@production``, ``sha256:<12+ hex>`` (a unique prefix
  of a version's weights-file digest, or of a base's fingerprint). When a folder of that name
  exists too, the registered one wins and :attr:`ResolvedAdapter.note` says so (use ``./x``
  for the folder); a bare name that is not registered falls back to the folder of that name.

A registered version is materialised once, verified, under ``$LORADEX_HOME/cache/versions/``;
that cache folder is an implementation detail: reports, messages and ``loradex.json`` name the
reference (:attr:`ResolvedAdapter.label`, :meth:`ResolvedAdapter.provenance`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mergetools.errors import InvalidInputError, LoradexError, NotFoundError
from mergetools.labels import folder_labels, relabel_error, shorten

if TYPE_CHECKING:  # imported lazily: `loradex merge PATH ...` on folders never opens a database
    from registry.records import AdapterRow, BaseRow, VersionKey
    from registry.settings import Settings

logger = logging.getLogger(__name__)


class RegistryHandle(Protocol):
    """What resolving a reference needs of an open registry (a :class:`registry.service.Registry`;
    this module never imports that one: the registry's own use cases resolve references)."""

    def resolve(self, ref: str) -> VersionKey: ...

    def materialize(self, key: VersionKey) -> Path: ...

    def get_base(self, ref: str, *, with_signature: bool = True) -> BaseRow: ...

    def list_bases(self) -> list[BaseRow]: ...

    def materialize_base(self, ref: str) -> Path: ...

    def get_adapter(self, name: str) -> AdapterRow: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LazyRegistry:
    """Settings (or a callable building them) and how to open a registry with them: opened only
    when a reference needs it, so plain folders never build settings or touch a database.
    :func:`registry.sources.registry_source` makes one."""

    settings: Settings | Callable[[], Settings]
    open: Callable[[Settings], RegistryHandle]

    def built_settings(self) -> Settings:
        return self.settings() if callable(self.settings) else self.settings


RegistrySource = RegistryHandle | LazyRegistry
"""An open registry, or a :class:`LazyRegistry` that opens one only if a reference needs it."""

_FORMS = "NAME, NAME@7, NAME@production or sha256:<hex>"


@dataclass(frozen=True)
class ResolvedAdapter:
    """A folder that ``merge``/``check`` can read, and the registered version it holds (if any)."""

    ref: str
    path: Path
    version: VersionKey | None = None  # set when it came from the registry
    note: str | None = None  # why a bare name meant the registered adapter and not the folder

    @property
    def registered(self) -> bool:
        return self.version is not None

    @property
    def label(self) -> str:
        """How reports name it: the path as given, ``sts@3``, or ``sts@production -> sts@3``."""
        if self.version is None:
            return self.ref
        return self.version.ref if self.ref == self.version.ref else f"{self.ref} -> {self.version.ref}"

    @property
    def sha256(self) -> str | None:
        """The registered version's weights-file sha256 (None for a plain folder)."""
        return self.version.weights_sha256 if self.version is not None else None

    def provenance(self) -> dict[str, Any] | None:
        """What ``loradex.json`` records instead of the cache folder (None for a plain folder)."""
        if self.version is None:
            return None
        return {
            "ref": self.ref,
            "version": self.version.ref,
            "weights_sha256": self.version.weights_sha256,
        }


@dataclass(frozen=True)
class ResolvedBase:
    """A base checkpoint folder, and its registered row (if any)."""

    ref: str
    path: Path
    base_id: int | None = None
    name: str | None = None
    fingerprint: str | None = None
    note: str | None = None

    @property
    def registered(self) -> bool:
        return self.base_id is not None

    @property
    def label(self) -> str:
        """How reports name it: the path as given, the base's name, or ``sha256:ab12… -> name``."""
        if self.name is None:
            return self.ref
        return self.name if self.ref == self.name else f"{self.ref} -> {self.name}"

    def provenance(self) -> dict[str, Any] | None:
        """What ``loradex.json`` records next to the base's path (None for a plain folder)."""
        if self.name is None:
            return None
        return {"ref": self.ref, "name": self.name, "fingerprint": self.fingerprint}


def _registry(registry_or_settings: RegistrySource) -> tuple[RegistryHandle, bool]:
    """(registry, owned): open one when it is lazy (the caller closes owned ones)."""
    if isinstance(registry_or_settings, LazyRegistry):
        return registry_or_settings.open(registry_or_settings.built_settings()), True
    if not hasattr(registry_or_settings, "resolve"):
        raise TypeError(
            f"expected an open registry or a LazyRegistry, got {type(registry_or_settings).__name__}; "
            "wrap settings with registry.sources.registry_source()"
        )
    return registry_or_settings, False


def is_path_argument(ref: str) -> bool:
    """True when ``ref`` can only mean a folder: a separator, absolute, or a leading ``.``/``~``."""
    return (
        ref.startswith((".", "~"))
        or "/" in ref
        or os.sep in ref
        or (os.altsep is not None and os.altsep in ref)
        or os.path.isabs(ref)
    )


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long for a path, say
        return False


def _folder(ref: str, *, what: str) -> Path:
    """The existing folder a path argument names, else raise (never "not registered")."""
    path = Path(ref).expanduser()
    try:
        exists = path.exists()
    except OSError:
        exists = False
    if not exists:
        raise NotFoundError(f"{what} folder {shorten(ref)} does not exist")
    if not path.is_dir():
        raise InvalidInputError(f"{what} {shorten(ref)} is a file, not a folder; expected {_expected(what)}")
    return path


def _expected(what: str) -> str:
    return {"adapter": "a PEFT adapter folder", "base": "a checkpoint folder"}.get(
        what, "an adapter or checkpoint folder"
    )


def _may_have_registry(registry_or_settings: RegistrySource) -> bool:
    """False only when no registry exists yet (embedded SQLite file absent): nothing is registered."""
    if isinstance(registry_or_settings, LazyRegistry):
        settings = registry_or_settings.built_settings()
        if not settings.database_url and not settings.server:
            return (settings.home / "registry.db").exists()
    return True


def _adapter_name_registered(registry: RegistryHandle, ref: str) -> bool:
    from registry.inputs import parse_ref

    try:
        name = parse_ref(ref).name
    except InvalidInputError:
        return False
    if name is None:
        return False
    try:
        registry.get_adapter(name)
    except NotFoundError:
        return False
    return True


def _both_note(ref: str, what: str, label: str) -> str:
    return f"{ref!r} is the registered {what} {label} (use ./{ref} for the folder)"


def resolve_adapter_ref(registry_or_settings: RegistrySource, ref: str) -> ResolvedAdapter:
    """Turn ``ref`` into a readable adapter folder; see the module docstring for the rule.

    ``registry_or_settings`` is an open :class:`registry.service.Registry` or a
    :class:`LazyRegistry` (the database is opened only when ``ref`` may be a reference).
    """
    if ref.startswith("hf://"):  # a Hub repo, downloaded into the Hub cache (registry/hub.py)
        from registry.hub import resolve_adapter

        return ResolvedAdapter(ref=ref, path=resolve_adapter(ref))
    if is_path_argument(ref):
        return ResolvedAdapter(ref=ref, path=_folder(ref, what="adapter"))
    folder = Path(ref)
    folder_exists = _is_dir(folder)
    if folder_exists and not _may_have_registry(registry_or_settings):
        return ResolvedAdapter(ref=ref, path=folder)
    registry, owned = _registry(registry_or_settings)
    try:
        try:
            key = registry.resolve(ref)
        except (NotFoundError, InvalidInputError):
            if folder_exists and not _adapter_name_registered(registry, ref):
                return ResolvedAdapter(ref=ref, path=folder)
            raise
        path = registry.materialize(key)
    finally:
        if owned:
            registry.close()
    resolved = ResolvedAdapter(
        ref=ref,
        path=path,
        version=key,
        note=_both_note(ref, "adapter", key.ref) if folder_exists else None,
    )
    logger.info("resolved %s to %s (%s)", ref, key.ref, path)
    return resolved


def resolve_adapter_refs(
    registry_or_settings: RegistrySource, refs: Sequence[str]
) -> list[ResolvedAdapter]:
    """:func:`resolve_adapter_ref` for several refs, opening the registry at most once."""
    if all(is_path_argument(r) for r in refs):
        return [resolve_adapter_ref(registry_or_settings, r) for r in refs]
    registry, owned = _registry(registry_or_settings)
    try:
        return [resolve_adapter_ref(registry, r) for r in refs]
    finally:
        if owned:
            registry.close()


def resolve_base_ref(
    registry_or_settings: RegistrySource, ref: str, *, headers_only: bool = False
) -> ResolvedBase:
    """Turn ``ref`` into a base checkpoint folder: a path, or a registered base — its source
    folder when it is here, else its files materialised from the blob store
    (:meth:`~registry.bases.BasesMixin.materialize_base`), else (registered from a Hub commit)
    that commit's files, or with ``headers_only`` (a check) its header view."""
    from registry.hub import hub_base_files, hub_base_header_view, is_commit
    from registry.inputs import NAME_RE

    if ref.startswith("hf://"):  # a Hub repo, downloaded into the Hub cache (registry/hub.py)
        from registry.hub import resolve_base

        snapshot = resolve_base(ref)
        return _hub_base(registry_or_settings, ref, snapshot.path, snapshot.ref.repo, snapshot.commit)
    if is_path_argument(ref):
        return ResolvedBase(ref=ref, path=_folder(ref, what="base"))
    folder = Path(ref)
    folder_exists = _is_dir(folder)
    if folder_exists and not _may_have_registry(registry_or_settings):
        return ResolvedBase(ref=ref, path=folder)
    if not ref.startswith("sha256:") and not NAME_RE.match(ref):
        if folder_exists:
            return ResolvedBase(ref=ref, path=folder)
        raise NotFoundError(
            f"base {shorten(ref)} is neither an existing folder nor a registered base model name",
            fields={"base": ref},
            hint_action="base_list",
        )
    registry, owned = _registry(registry_or_settings)
    try:
        try:
            base = registry.get_base(ref, with_signature=False)
        except NotFoundError:
            if folder_exists:
                return ResolvedBase(ref=ref, path=folder)
            raise
        if base.source_path and Path(base.source_path).is_dir():
            path = Path(base.source_path)
        elif base.stored:
            # The source folder is on another machine (or gone): the blob store has its files.
            path = registry.materialize_base(base.name)
        elif base.source_repo and is_commit(base.source_revision or ""):
            # Registered from a Hub commit (`base add hf://...`): that commit's files.
            cache_dir = getattr(getattr(registry, "settings", None), "cache_dir", None)
            if headers_only and cache_dir is not None:
                path = hub_base_header_view(
                    base.source_repo, str(base.source_revision), cache_dir=cache_dir
                )
            else:
                path = hub_base_files(
                    base.source_repo,
                    str(base.source_revision),
                    fingerprint=base.fingerprint,
                    cache_dir=cache_dir,
                )
        else:
            raise InvalidInputError(
                f"base model {base.name!r} is registered but its source folder "
                f"{base.source_path!r} is not available here and its files are not stored; "
                "give the checkpoint folder path instead",
                fields={"base": base.name, "source_path": base.source_path},
                hint="store the base from a machine that has its folder",
                hint_action="store_base",
            )
    finally:
        if owned:
            registry.close()
    return ResolvedBase(
        ref=ref,
        path=path,
        base_id=base.id,
        name=base.name,
        fingerprint=base.fingerprint,
        note=_both_note(ref, "base model", base.name) if folder_exists else None,
    )


def _hub_base(
    registry_or_settings: RegistrySource, ref: str, path: Path, repo: str, commit: str
) -> ResolvedBase:
    """The Hub snapshot of ``repo`` at ``commit``, as the registered base of that source when
    one was added (``loradex base add hf://...``), so a merge records it."""
    if not _may_have_registry(registry_or_settings):
        return ResolvedBase(ref=ref, path=path)
    registry, owned = _registry(registry_or_settings)
    try:
        rows = [b for b in registry.list_bases() if (b.source_repo, b.source_revision) == (repo, commit)]
    finally:
        if owned:
            registry.close()
    rows.sort(key=lambda b: (b.fingerprint is None, b.id))  # the fingerprinted one first
    if not rows:
        return ResolvedBase(ref=ref, path=path)
    found = (rows[0].id, rows[0].name, rows[0].fingerprint)
    return ResolvedBase(ref=ref, path=path, base_id=found[0], name=found[1], fingerprint=found[2])


def resolve_any_ref(
    registry_or_settings: RegistrySource, ref: str
) -> ResolvedAdapter | ResolvedBase:
    """What ``loradex inspect REF`` reads: a folder, else a registered adapter, else a base."""
    if ref.startswith("hf://"):
        return resolve_adapter_ref(registry_or_settings, ref)
    if is_path_argument(ref):
        return ResolvedAdapter(ref=ref, path=_folder(ref, what="input"))
    if _is_dir(Path(ref)) and not _may_have_registry(registry_or_settings):
        return ResolvedAdapter(ref=ref, path=Path(ref))
    registry, owned = _registry(registry_or_settings)
    try:
        try:
            return resolve_adapter_ref(registry, ref)
        except NotFoundError as adapter_error:
            try:
                return resolve_base_ref(registry, ref)
            except NotFoundError:
                raise adapter_error from None
    finally:
        if owned:
            registry.close()


def reference_labels(resolved: Sequence[ResolvedAdapter | ResolvedBase | None]) -> dict[str, str]:
    """Folder -> label for every input named by a registry reference (for :func:`relabel_text`)."""
    return folder_labels(
        {item.path: item.label for item in resolved if item is not None and item.registered}
    )


@contextlib.contextmanager
def named_by_reference(
    resolved: Sequence[ResolvedAdapter | ResolvedBase | None],
) -> Iterator[None]:
    """Errors raised inside name inputs by their reference, not their (cache) folder.

    ``adapter '/home/u/.loradex/cache/versions/ab12' module 'q_proj': ...`` becomes
    ``adapter 'sts@production -> sts@3' module 'q_proj': ...``.
    """
    labels = reference_labels(resolved)
    try:
        yield
    except LoradexError as exc:
        raise relabel_error(exc, labels) from None
