"""Pull adapters from and push them to the Hugging Face Hub: the use cases behind ``loradex pull``
and ``loradex push`` (downloads, cards and references are :mod:`registry.hub`'s)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetools.errors import InvalidInputError
from mergetools.folder import Folder
from registry.hub import (
    CARD_FILE,
    CONFIG_FILE,
    HubRef,
    HubSnapshot,
    base_headers,
    base_model_of,
    download_adapter,
    download_base,
    hub_errors,
    is_local_path,
    parse_hub_ref,
    render_card,
)

if TYPE_CHECKING:
    from registry.blobstore import Progress
    from registry.records import BaseRow, RegisterResult, VersionDetail
    from registry.service import Registry

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ use cases


@dataclass(frozen=True)
class PullResult:
    """A pulled adapter: the registered version and where it came from."""

    registered: RegisterResult
    snapshot: HubSnapshot
    base_model: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.registered.to_dict(),
            "source": self.snapshot.source,
            "hub": self.snapshot.hub_metadata(),
            "files": list(self.snapshot.files),
            "base_model": self.base_model,
        }


def default_name(repo: str) -> str:
    """A registry name for a pulled repo: its last component, cleaned."""
    leaf = repo.rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._\-]", "-", leaf).strip("-.") or "adapter"


def pull_adapter(
    registry: Registry, ref: str, *, name: str | None = None, subfolder: str | None = None
) -> PullResult:
    """Download the adapter ``ref`` names (or find it offline) and register it as a version.

    The source recorded is ``hf://repo@<commit>``; version metadata ``{"hub": {repo, revision,
    commit, subfolder}}``. A registered base whose source repo is the card's ``base_model`` is
    linked to the version.
    """
    hub_ref = parse_hub_ref(ref, subfolder=subfolder)
    snapshot = download_adapter(hub_ref)
    root = snapshot.path.parents[len(Path(hub_ref.subfolder).parts) - 1] if hub_ref.subfolder else None
    base_model = base_model_of(snapshot.path, card_folders=[root] if root else [])
    base = None
    if base_model:
        base = next((b.name for b in registry.list_bases() if b.source_repo == base_model), None)
    metadata: dict[str, Any] = {"hub": snapshot.hub_metadata()}
    if base_model:
        metadata["base_model"] = base_model
    result = registry.register(
        snapshot.path,
        name=name or default_name(hub_ref.repo),
        base=base,
        source=snapshot.source,
        metadata=metadata,
    )
    return PullResult(registered=result, snapshot=snapshot, base_model=base_model)


def add_hub_base(
    registry: Registry,
    ref: str,
    *,
    name: str | None = None,
    description: str = "",
    store: bool = False,
    progress: Progress | None = None,
) -> BaseRow:
    """Register the Hub checkpoint ``ref`` as a base, with ``source_repo`` its repo and
    ``source_revision`` the resolved commit.

    Without ``store`` only its headers are read (config, index, safetensors headers: HTTP
    Range requests, :func:`registry.hub.base_headers`): the base gets its signature but no
    fingerprint, and a merge that names it downloads the files of that commit. With ``store``
    the weights are downloaded (or found in the local Hub cache offline), fingerprinted and
    written to the blob store.
    """
    hub_ref = parse_hub_ref(ref)

    def chosen(commit: str) -> str:  # a base added from this commit before keeps its name
        same = [b for b in registry.list_bases() if (b.source_repo, b.source_revision) == (hub_ref.repo, commit)]
        return name or (same[0].name if same else default_name(hub_ref.repo))

    if store:
        snapshot = download_base(hub_ref)
        return registry.add_base(
            snapshot.path,
            name=chosen(snapshot.commit),
            description=description,
            repo=hub_ref.repo,
            revision=snapshot.commit,
            store=True,
            progress=progress,
        )
    view = base_headers(hub_ref, cache_dir=registry.settings.cache_dir)
    return registry.add_base(
        view.path,
        name=chosen(view.commit),
        description=description,
        repo=hub_ref.repo,
        revision=view.commit,
        headers_only=True,
    )


@dataclass(frozen=True)
class PushResult:
    """A pushed version: the repo, branch and commit it now is on the Hub."""

    ref: str
    name: str
    version: int
    repo: str
    revision: str
    commit: str
    commit_url: str
    parent_commit: str | None
    base_model: str | None
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _base_model_for_push(detail: VersionDetail) -> tuple[str | None, str]:
    """(base_model, which field it came from)."""
    base = detail.base or {}
    repo = base.get("source_repo")
    if isinstance(repo, str) and repo:
        return repo, f"the registered base {base.get('name')!r} source repo"
    hub_base = (detail.metadata or {}).get("base_model")
    if isinstance(hub_base, str) and hub_base:
        return hub_base, "the version's metadata base_model"
    if detail.base_name_or_path:
        return detail.base_name_or_path, f"{CONFIG_FILE} base_model_name_or_path"
    return None, ""


def push_adapter(
    registry: Registry,
    ref: str,
    *,
    to: str,
    private: bool = False,
    revision: str | None = None,
) -> PushResult:
    """Upload version ``ref``'s stored files and a generated card to ``to`` in ONE commit.

    The branch head is read first and sent as the commit's parent, so a concurrent push fails
    instead of interleaving. The pushed commit is recorded as tags ``hub.repo``,
    ``hub.revision`` and ``hub.commit`` (a journal event in the same transaction).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    target = parse_hub_ref(to)
    if revision is not None and target.revision is not None and revision != target.revision:
        raise InvalidInputError(
            f"{to} names revision {target.revision!r} but {revision!r} was asked for; give one"
        )
    branch = revision or target.revision or "main"
    target = HubRef(repo=target.repo, revision=branch)
    key = registry.resolve(ref)
    detail = registry.show(key.ref)
    base_model, field_name = _base_model_for_push(detail)
    warnings: list[str] = []
    if base_model is not None and is_local_path(base_model):
        raise InvalidInputError(
            f"{key.ref}: base_model would be the local path {base_model!r} (from {field_name}); "
            "the Hub card needs a Hub model id — register the base with its Hub repo "
            "(loradex base add hf://ORG/MODEL) and link the adapter to it"
        )
    if base_model is None:
        warnings.append(f"{key.ref} records no base model: the card carries no base_model")
    folder = registry.materialize(key)
    lineage = _lineage_lines(registry, key.ref)
    card = render_card(detail, base_model=base_model, lineage=lineage)
    files = [rel for rel, _ in Folder.open(folder).walk() if rel != CARD_FILE]
    operations = [
        CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel)) for rel in files
    ]
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode()))
    api = HfApi()
    with hub_errors(target, what="write"):
        api.create_repo(target.repo, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(target.repo, branch=branch, exist_ok=True)
        head = api.model_info(target.repo, revision=branch).sha
        info = api.create_commit(
            target.repo,
            operations,
            commit_message=f"loradex push {key.ref}",
            commit_description=f"{detail.name} version {detail.version}, "
            f"weights sha256 {detail.weights_sha256}",
            revision=branch,
            parent_commit=head,
        )
    commit = str(info.oid)
    registry.set_tags(
        key.ref,
        set_tags={"hub.repo": target.repo, "hub.revision": branch, "hub.commit": commit},
    )
    return PushResult(
        ref=key.ref,
        name=key.name,
        version=key.version,
        repo=target.repo,
        revision=branch,
        commit=commit,
        commit_url=str(info.commit_url),
        parent_commit=head,
        base_model=base_model,
        files=[*files, CARD_FILE],
        warnings=warnings,
    )


def _lineage_lines(registry: Registry, ref: str) -> list[str]:
    view = registry.lineage(ref).to_dict()
    lines = []
    for parent in view.get("parents") or []:
        if isinstance(parent, Mapping):
            what = ", ".join(
                f"{k}={parent[k]}" for k in ("relation", "method", "weight") if parent.get(k) is not None
            )
            lines.append(f"- parent {parent.get('ref') or parent.get('name')}" + (f" ({what})" if what else ""))
    return lines


