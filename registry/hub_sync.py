"""Pull adapters from and push them to the Hugging Face Hub: the use cases behind ``loradex pull``
and ``loradex push`` (downloads, cards and references are :mod:`registry.hub`'s)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetools.errors import ConflictError, InvalidInputError, NotFoundError
from mergetools.folder import Folder
from registry.hub import (
    CARD_FILE,
    CONFIG_FILE,
    HubRef,
    HubSnapshot,
    base_headers,
    base_model_of,
    checked_commit,
    download_adapter,
    download_base,
    hub_errors,
    is_local_path,
    parse_hub_ref,
    render_card,
    render_checkpoint_card,
)

if TYPE_CHECKING:
    from registry.blobstore import Progress
    from registry.records import BaseRow, CheckpointRow, RegisterResult, VersionDetail
    from registry.service import Registry

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint:"
"""``checkpoint:ID``: a recorded merged checkpoint (the ids ``loradex checkpoints`` lists)."""
MERGE_RECORD = "loradex.json"


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
    registry: Registry,
    ref: str,
    *,
    name: str | None = None,
    subfolder: str | None = None,
    actor: str | None = None,
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
        actor=actor,
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
    actor: str | None = None,
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
            actor=actor,
        )
    view = base_headers(hub_ref, cache_dir=registry.settings.cache_dir)
    return registry.add_base(
        view.path,
        name=chosen(view.commit),
        description=description,
        repo=hub_ref.repo,
        revision=view.commit,
        headers_only=True,
        actor=actor,
    )


@dataclass(frozen=True)
class PushResult:
    """A pushed version: the repo, branch and commit it now is on the Hub."""

    ref: str
    name: str | None
    version: int | None
    repo: str
    revision: str
    commit: str
    commit_url: str
    parent_commit: str | None
    base_model: str | None
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checkpoint: int | None = None
    """The checkpoint pushed (``checkpoint:ID``); None for an adapter version."""
    recorded_checkpoint: int | None = None
    """The checkpoint recorded for the Hub copy (location ``hf://repo@commit``)."""

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
    actor: str | None = None,
) -> PushResult:
    """Upload version ``ref``'s stored files and a generated card to ``to`` in ONE commit.

    The branch head is read first and sent as the commit's parent, so a concurrent push fails
    instead of interleaving. The pushed commit is recorded as tags ``hub.repo``,
    ``hub.revision`` and ``hub.commit`` (a journal event in the same transaction).
    """
    from huggingface_hub import CommitOperationAdd

    target = _target(to, revision)
    branch = str(target.revision)
    key = registry.resolve(ref)
    detail = registry.show(key.ref)
    base_model, field_name = _base_model_for_push(detail)
    warnings: list[str] = []
    if base_model is not None and is_local_path(base_model):
        raise InvalidInputError(
            f"{key.ref}: base_model would be the local path {base_model!r} (from {field_name}); "
            "the Hub card needs a Hub model id — register the base from its Hub repo "
            "(hf://ORG/MODEL) and link the adapter to it",
            fields={"ref": key.ref, "base_model": base_model},
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
    head, commit, commit_url = _commit(
        target,
        operations,
        private=private,
        message=f"loradex push {key.ref}",
        description=f"{detail.name} version {detail.version}, weights sha256 {detail.weights_sha256}",
    )
    registry.set_tags(
        key.ref,
        set_tags={"hub.repo": target.repo, "hub.revision": branch, "hub.commit": commit},
        actor=actor,
    )
    return PushResult(
        ref=key.ref,
        name=key.name,
        version=key.version,
        repo=target.repo,
        revision=branch,
        commit=commit,
        commit_url=commit_url,
        parent_commit=head,
        base_model=base_model,
        files=[*files, CARD_FILE],
        warnings=warnings,
    )


def _target(to: str, revision: str | None) -> HubRef:
    """The repo and branch a push goes to (``--to hf://repo@branch`` or ``revision``)."""
    target = parse_hub_ref(to)
    if revision is not None and target.revision is not None and revision != target.revision:
        raise InvalidInputError(
            f"{to} names revision {target.revision!r} but {revision!r} was asked for; give one"
        )
    return HubRef(repo=target.repo, revision=revision or target.revision or "main")


def _commit(
    target: HubRef, operations: list[Any], *, private: bool, message: str, description: str
) -> tuple[str | None, str, str]:
    """Create the repo (and branch) when missing, then ONE commit whose parent is the branch
    head read just before: ``(parent, commit, commit_url)``. A branch that moves in between
    fails the commit (412) instead of interleaving."""
    from huggingface_hub import HfApi

    branch = str(target.revision)
    api = HfApi()
    with hub_errors(target, what="write"):
        api.create_repo(target.repo, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(target.repo, branch=branch, exist_ok=True)
        head = api.model_info(target.repo, revision=branch).sha
        info = api.create_commit(
            target.repo,
            operations,
            commit_message=message,
            commit_description=description,
            revision=branch,
            parent_commit=head,
        )
        commit = checked_commit(target, info.oid)
    return head, commit, str(info.commit_url)


def push(
    registry: Registry,
    ref: str,
    *,
    to: str,
    private: bool = False,
    revision: str | None = None,
    actor: str | None = None,
) -> PushResult:
    """Push an adapter version (``NAME@N``, an alias...) or a recorded merged checkpoint
    (``checkpoint:ID``, the id ``loradex checkpoints`` lists)."""
    if ref.startswith(CHECKPOINT_PREFIX):
        return push_checkpoint(registry, ref, to=to, private=private, revision=revision, actor=actor)
    return push_adapter(registry, ref, to=to, private=private, revision=revision, actor=actor)


def _checkpoint(registry: Registry, ref: str) -> CheckpointRow:
    number = ref[len(CHECKPOINT_PREFIX) :]
    if not number.isdigit() or len(number) > 18:
        raise InvalidInputError(
            f"checkpoint reference {ref[:60]!r} is malformed; expected checkpoint:ID with the "
            "id of a recorded checkpoint"
        )
    cid = int(number)
    # Newest first, so the page after id+1 starts at the checkpoint itself when it exists.
    page = registry.list_checkpoints(limit=1, after=cid + 1)
    if not page.items or page.items[0].id != cid:
        raise NotFoundError(
            f"checkpoint {cid} is not recorded in this registry",
            hint="list the recorded checkpoints",
        )
    return page.items[0]


def push_checkpoint(
    registry: Registry,
    ref: str,
    *,
    to: str,
    private: bool = False,
    revision: str | None = None,
    actor: str | None = None,
) -> PushResult:
    """Upload the files of a recorded merged checkpoint with a generated card in ONE commit,
    and record the Hub copy as a checkpoint of the same members (location ``hf://repo@commit``).

    The folder must still hold what the merge wrote: its fingerprint is computed again and
    compared with the recorded one before anything is sent. ``loradex.json`` (the merge
    record, which names local paths) is not uploaded: the card carries its facts.
    """
    from huggingface_hub import CommitOperationAdd

    from mergetools.fingerprint import fingerprint_checkpoint

    target = _target(to, revision)
    row = _checkpoint(registry, ref)
    label = f"checkpoint {row.id}"
    if row.location.startswith(("hf://", "s3://")):
        raise InvalidInputError(
            f"{label} is at {row.location}, not in a local folder; push the checkpoint that "
            "the merge wrote on this machine"
        )
    folder = Path(row.location)
    if not folder.is_dir():
        raise NotFoundError(
            f"{label}: its folder {row.location} does not exist any more; merge again to "
            "recreate it, then push that checkpoint"
        )
    files = [
        rel
        for rel, _ in Folder.open(folder, error=InvalidInputError).walk()
        if rel not in (CARD_FILE, MERGE_RECORD)
    ]
    if "config.json" not in files or not any(f.endswith(".safetensors") for f in files):
        raise InvalidInputError(
            f"{label}: {row.location} has no config.json or safetensors weights; expected the "
            "merged checkpoint"
        )
    found = fingerprint_checkpoint(folder, cache_dir=registry.settings.cache_dir)
    if row.fingerprint is not None and found != row.fingerprint:
        raise ConflictError(
            f"{label}: the folder {row.location} has fingerprint {found[:12]}..., not the "
            f"{row.fingerprint[:12]}... recorded when it was merged; its files changed — merge "
            "again and push the new checkpoint"
        )
    warnings: list[str] = []
    base_model, base_id = _checkpoint_base(registry, row, warnings)
    members = [registry.show(str(m["ref"])) for m in row.members]
    card = render_checkpoint_card(
        row,
        members=members,
        weights=[float(m["weight"]) for m in row.members],
        lineage={m.ref: _lineage_lines(registry, m.ref) for m in members},
        base_model=base_model,
        fingerprint=found,
    )
    operations = [
        CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel)) for rel in files
    ]
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode()))
    head, commit, commit_url = _commit(
        target,
        operations,
        private=private,
        message=f"loradex push {label}",
        description="merged from "
        + ", ".join(f"{m['ref']} (weight {float(m['weight']):g})" for m in row.members),
    )
    recorded = registry.record_checkpoint(
        f"hf://{target.repo}@{commit}",
        members=[(registry.resolve(str(m["ref"])), float(m["weight"])) for m in row.members],
        base_id=base_id,
        base_fingerprint=row.base_fingerprint,
        fingerprint=found,
        actor=actor,
        metadata={
            "pushed_from": row.id,
            "hub": {"repo": target.repo, "revision": target.revision, "commit": commit},
        },
    )
    return PushResult(
        ref=ref,
        name=None,
        version=None,
        repo=target.repo,
        revision=str(target.revision),
        commit=commit,
        commit_url=commit_url,
        parent_commit=head,
        base_model=base_model,
        files=[*files, CARD_FILE],
        warnings=warnings,
        checkpoint=row.id,
        recorded_checkpoint=recorded.id,
    )


def _checkpoint_base(
    registry: Registry, row: CheckpointRow, warnings: list[str]
) -> tuple[str | None, int | None]:
    """(the card's base_model, the registered base's id) of a checkpoint: the registered base's
    Hub repo, else the merge's ``hf://`` base; never a local path."""
    base_id = None
    if row.base:
        base = registry.get_base(row.base, with_signature=False)
        base_id = base.id
        if base.source_repo and not is_local_path(base.source_repo):
            return base.source_repo, base_id
    request = row.metadata.get("request")
    named = request.get("base") if isinstance(request, Mapping) else None
    if isinstance(named, str) and named.startswith("hf://"):
        return parse_hub_ref(named).repo, base_id
    warnings.append(
        f"checkpoint {row.id}: its base has no Hub repo recorded, so the card carries no "
        "base_model (register the base from the Hub to have one)"
    )
    return None, base_id


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


