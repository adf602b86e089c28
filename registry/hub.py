"""The Hugging Face Hub: ``hf://org/repo[@revision]`` references, downloads, header-only reads,
model cards (the pull and push use cases are in :mod:`registry.hub_sync`).

Everything goes through the installed ``huggingface_hub`` (pinned in ``constraints.txt``: 2.4.0),
which reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``/``HF_HOME`` and ``HF_TOKEN``
itself; loradex never overrides them. The endpoints used (see ``docs/hub.md``):

- ``GET  /api/models/{repo}/revision/{rev}``: model info (the commit a branch points at, files);
- ``HEAD /{repo}/resolve/{rev}/{file}`` then ``GET``: a file into the Hub cache
  (``X-Repo-Commit``, ``X-Linked-Etag``/``ETag``, ``X-Linked-Size``/``Content-Length``);
- ``GET  /{repo}/resolve/{commit}/{file}`` with ``Range: bytes=0-7`` and then the header's range:
  the header of a safetensors file, for header-only checks (a full download when the server
  ignores ``Range``);
- ``POST /api/repos/create``, ``POST /api/models/{repo}/preupload/{rev}``,
  ``POST /api/models/{repo}/commit/{rev}`` (NDJSON, ``parentCommit``): a push, in one commit.

A pulled snapshot is read with :class:`mergetools.folder.Folder`, which allows the snapshot's
links into its own repo's ``blobs/`` folder and nothing else. Errors from the Hub become one-line
:class:`LoradexError` s that name the repo and what to do (:func:`hub_errors`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetools.checkpoint import TOKENIZER_FILES
from mergetools.errors import ConflictError, InvalidInputError, LoradexError, NotFoundError
from mergetools.files import SIZE_LIMITS, read_json_object
from mergetools.folder import Folder
from registry.errors import HubAccessError, HubUnavailableError

if TYPE_CHECKING:
    from registry.records import CheckpointRow, VersionDetail

logger = logging.getLogger(__name__)

SCHEME = "hf://"
CONFIG_FILE = "adapter_config.json"
SAFETENSORS_WEIGHTS = "adapter_model.safetensors"
BIN_WEIGHTS = "adapter_model.bin"
CARD_FILE = "README.md"
OPTIONAL_ADAPTER_FILES = (*TOKENIZER_FILES, CARD_FILE)
"""What a pull takes besides config and weights: tokenizer files and the model card."""

BASE_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors header cap loradex reads
MAX_CARD_BYTES = SIZE_LIMITS["card"]
"""A model card larger than this is neither downloaded nor read (it is informative only)."""
MAX_OPTIONAL_BYTES = SIZE_LIMITS["tokenizer"]
"""A tokenizer file larger than this is not downloaded with an adapter."""

_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?\Z")
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/\-]{0,199}\Z")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}\Z")
_SNAPSHOT_RE = re.compile(r"/snapshots/(?P<commit>[0-9a-f]{40})(/|$)")
_SHARD_RE = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors\Z")
_SHARD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,199}\.safetensors\Z")
FORMS = "hf://ORG/REPO or hf://ORG/REPO@REVISION (a branch, tag or commit)"


# ------------------------------------------------------------------------------ references


@dataclass(frozen=True)
class HubRef:
    """``hf://repo@revision`` (``revision`` None: the default branch), optionally a subfolder."""

    repo: str
    revision: str | None = None
    subfolder: str | None = None

    def __str__(self) -> str:
        return f"{SCHEME}{self.repo}" + (f"@{self.revision}" if self.revision else "")


def is_hub_ref(ref: str) -> bool:
    """Whether ``ref`` is meant as a Hub reference (starts with ``hf://``)."""
    return ref.startswith(SCHEME)


def parse_hub_ref(ref: str, *, subfolder: str | None = None) -> HubRef:
    """``hf://org/repo[@revision]`` as a :class:`HubRef`; raise for anything else."""
    if not is_hub_ref(ref):
        raise InvalidInputError(f"{ref!r} is not a Hub reference; expected {FORMS}")
    body = ref[len(SCHEME) :]
    repo, sep, revision = body.partition("@")
    if not _REPO_RE.match(repo) or ".." in repo or (sep and not _revision_ok(revision)):
        raise InvalidInputError(f"Hub reference {ref[:200]!r} is malformed; expected {FORMS}")
    if subfolder is not None:
        parts = Path(subfolder).parts
        if not subfolder.strip("/") or Path(subfolder).is_absolute() or ".." in parts:
            raise InvalidInputError(
                f"subfolder {subfolder!r} of {ref} must be a relative folder inside the repo"
            )
        subfolder = Path(subfolder).as_posix().strip("/")
    return HubRef(repo=repo, revision=revision or None, subfolder=subfolder or None)


def _revision_ok(revision: str) -> bool:
    """A branch, tag or commit as git allows it: no empty, ``.`` or ``..`` component, no
    component ending in ``.`` or ``.lock`` (huggingface_hub joins it into cache paths)."""
    if not _REVISION_RE.match(revision):
        return False
    return all(
        part and part not in (".", "..") and not part.endswith((".", ".lock"))
        for part in revision.split("/")
    ) and ".." not in revision


def checked_commit(ref: HubRef, sha: object) -> str:
    """The commit id the Hub answered, refused unless it is 40 hex digits (it names cache
    folders)."""
    if not isinstance(sha, str) or not _COMMIT_RE.match(sha):
        raise HubUnavailableError(
            f"{ref}: the Hub answered a malformed commit id {str(sha)[:60]!r}; check that "
            "HF_ENDPOINT is a Hugging Face Hub"
        )
    return sha


# ------------------------------------------------------------------------------ errors


@contextlib.contextmanager
def hub_errors(ref: HubRef, *, what: str = "read") -> Iterator[None]:
    """Turn huggingface_hub's errors inside into one-line errors naming ``ref`` and the fix."""
    from huggingface_hub import errors as hf

    try:
        with _no_hub_progress():
            yield
    except LoradexError:
        raise
    except hf.GatedRepoError:
        raise HubAccessError(
            f"{ref}: the repo is gated and this token has not been granted access; accept its "
            "terms on the Hub website, then set HF_TOKEN to a token of that account"
        ) from None
    except hf.RevisionNotFoundError:
        raise NotFoundError(
            f"{ref}: revision {ref.revision!r} does not exist in {ref.repo}; check the branch, "
            "tag or commit"
        ) from None
    except hf.RepositoryNotFoundError as exc:
        status = _status(exc)
        if status == 401:
            raise HubAccessError(
                f"{ref}: the Hub refused the request (401 unauthorized); set HF_TOKEN to a "
                f"token that may {what} {ref.repo}, or check the repo name"
            ) from None
        raise NotFoundError(
            f"{ref}: repo {ref.repo!r} does not exist or is private; check the name, or set "
            "HF_TOKEN to a token that can see it"
        ) from None
    except hf.LocalEntryNotFoundError as exc:
        if not offline():  # the Hub was asked, and its answer for a file was unusable
            cause = exc.__cause__ or exc.__context__ or exc
            raise HubUnavailableError(
                f"{ref}: a file could not be downloaded and is not in the local Hub cache "
                f"({type(cause).__name__}: {_first_sentence(cause)}); check the network or "
                "that HF_ENDPOINT is a Hugging Face Hub, or retry later"
            ) from None
        raise HubUnavailableError(
            f"{ref}: not in the local Hub cache and the Hub cannot be asked (HF_HUB_OFFLINE "
            "is set or the Hub is unreachable); unset HF_HUB_OFFLINE, or pull it once online"
        ) from None
    except hf.EntryNotFoundError as exc:
        raise NotFoundError(f"{ref}: a file is missing in {ref.repo} ({_first_line(exc)})") from None
    except hf.OfflineModeIsEnabled:
        raise HubUnavailableError(
            f"{ref}: HF_HUB_OFFLINE is set, so the Hub cannot be asked; unset HF_HUB_OFFLINE, "
            "or use what is already in the local Hub cache"
        ) from None
    except hf.HfHubHTTPError as exc:
        status = _status(exc)
        if status == 401:
            raise HubAccessError(
                f"{ref}: the Hub refused the request (401 unauthorized); set HF_TOKEN to a "
                f"token that may {what} {ref.repo}"
            ) from None
        if status == 403:
            raise HubAccessError(
                f"{ref}: the Hub forbids this (403); set HF_TOKEN to a token with write access "
                f"to {ref.repo}" if what == "write" else
                f"{ref}: the Hub forbids this (403); set HF_TOKEN to a token that may read {ref.repo}"
            ) from None
        if status == 412:
            raise ConflictError(
                f"{ref}: the branch moved while pushing (another commit landed first); "
                "nothing was committed — retry the push"
            ) from None
        if status == 429:
            raise HubUnavailableError(
                f"{ref}: the Hub is rate-limiting these requests (429); retry later"
            ) from None
        raise HubUnavailableError(
            f"{ref}: the Hub answered {status or 'an error'} ({_first_line(exc)}); retry later"
        ) from None
    except (ConnectionError, TimeoutError) as exc:
        raise HubUnavailableError(
            f"{ref}: cannot reach the Hub ({_first_line(exc)}); check the network or HF_ENDPOINT, "
            "or set HF_HUB_OFFLINE=1 to use the local Hub cache"
        ) from None
    except Exception as exc:
        import httpx2

        if isinstance(exc, httpx2.TransportError):
            raise HubUnavailableError(
                f"{ref}: cannot reach the Hub ({_first_line(exc)}); check the network or "
                "HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the local Hub cache"
            ) from None
        if isinstance(exc, (ValueError, TypeError, KeyError, AttributeError)) and _from_hub_client(exc):
            raise HubUnavailableError(
                f"{ref}: the Hub sent an answer huggingface_hub cannot read "
                f"({type(exc).__name__}: {_first_line(exc)[:120]}); check that HF_ENDPOINT is a "
                "Hugging Face Hub, or retry later"
            ) from None
        raise


def _from_hub_client(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside huggingface_hub (reading what the Hub answered), not
    by loradex's own code."""
    tb = exc.__traceback__
    while tb is not None:
        if f"{os.sep}huggingface_hub{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text.split(". ", 1)[0] or type(exc).__name__)[:160]


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[-200:] or type(exc).__name__


@contextlib.contextmanager
def _no_hub_progress() -> Iterator[None]:
    """huggingface_hub's own progress bars off (they would write to stderr around loradex's
    one-line errors and its own progress bar); restored after."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was:
            enable_progress_bars()


def offline() -> bool:
    """Whether huggingface_hub runs offline (``HF_HUB_OFFLINE``, read by huggingface_hub)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


# ------------------------------------------------------------------------------ downloads


@dataclass(frozen=True)
class HubSnapshot:
    """Files of one commit of a Hub repo, in the local Hub cache."""

    ref: HubRef
    commit: str
    path: Path  # the snapshot folder (its subfolder when the ref names one)
    files: tuple[str, ...]  # relative to path

    @property
    def source(self) -> str:
        """``hf://org/repo@<commit>`` (what the registry records as the source)."""
        return f"{SCHEME}{self.ref.repo}@{self.commit}"

    def hub_metadata(self) -> dict[str, Any]:
        return {
            "repo": self.ref.repo,
            "revision": self.ref.revision,
            "commit": self.commit,
            "subfolder": self.ref.subfolder,
        }


def _in_folder(name: str, subfolder: str | None) -> str | None:
    """``name`` relative to ``subfolder`` when it lies directly in it, else None."""
    prefix = f"{subfolder}/" if subfolder else ""
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    return rest if rest and "/" not in rest else None


def adapter_files(names: Sequence[str], *, subfolder: str | None = None) -> list[str]:
    """The files of a repo listing that a pull downloads (repo paths): the adapter's own files
    directly in ``subfolder``; the ``.bin`` weights only when there are no safetensors."""
    present = {rel: name for name in names if (rel := _in_folder(name, subfolder)) is not None}
    wanted = [CONFIG_FILE]
    wanted.append(SAFETENSORS_WEIGHTS if SAFETENSORS_WEIGHTS in present else BIN_WEIGHTS)
    wanted.extend(OPTIONAL_ADAPTER_FILES)
    return [present[rel] for rel in wanted if rel in present]


def _small_enough(ref: HubRef, name: str, sizes: dict[str, int | None]) -> bool:
    """Whether to download the optional file ``name`` (card, tokenizer): the required files are
    always taken; an optional one the Hub says is over its cap is skipped, with a warning."""
    if Path(name).name in (CONFIG_FILE, SAFETENSORS_WEIGHTS, BIN_WEIGHTS):
        return True
    cap = MAX_CARD_BYTES if Path(name).name == CARD_FILE else MAX_OPTIONAL_BYTES
    size = sizes.get(name)
    if isinstance(size, int) and size > cap:
        logger.warning("%s: %s is %d bytes (over %d); not downloaded", ref, name, size, cap)
        return False
    return True


def _remember_revision(ref: HubRef, commit: str) -> None:
    """Write ``refs/<branch>`` = ``commit`` in the repo's Hub cache folder, as huggingface_hub
    does when it downloads by branch: loradex downloads by commit (so that every file is of the
    one commit resolved first), and an offline run later resolves the branch through it."""
    from huggingface_hub import constants

    revision = ref.revision or "main"
    if _COMMIT_RE.match(revision):
        return
    refs = Path(constants.HF_HUB_CACHE) / ("models--" + ref.repo.replace("/", "--")) / "refs"
    target = refs / revision
    try:
        if target.is_file() and target.read_text(encoding="utf-8") == commit:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(commit, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:  # a read-only cache: offline runs then need the commit
        logger.warning("%s: cannot record %s -> %s in the Hub cache (%s)", ref, revision, commit, exc)


def _commit_of(path: str | Path) -> str:
    match = _SNAPSHOT_RE.search(Path(path).as_posix())
    if match is None:  # huggingface_hub always answers a snapshot path; be explicit anyway
        raise InvalidInputError(f"{path}: not inside a Hub cache snapshot folder")
    return match["commit"]


def _join(subfolder: str | None, name: str) -> str:
    return f"{subfolder}/{name}" if subfolder else name


def _missing(ref: HubRef, missing: Sequence[str], *, cached: bool) -> LoradexError:
    where = f" (subfolder {ref.subfolder!r})" if ref.subfolder else ""
    names = ", ".join(missing)
    if cached:
        return NotFoundError(
            f"{ref}: the local Hub cache holds a partial snapshot{where}, missing {names}; "
            "pull it once online (unset HF_HUB_OFFLINE)"
        )
    return NotFoundError(
        f"{ref}: the repo has no {names}{where}; expected a PEFT adapter (check the repo name "
        "or the subfolder)"
    )


def download_adapter(ref: HubRef) -> HubSnapshot:
    """Download (or find in the Hub cache, offline) the adapter's own files of ``ref``."""
    from huggingface_hub import HfApi, hf_hub_download

    sub = ref.subfolder
    with hub_errors(ref):
        if not offline():
            info = HfApi().model_info(ref.repo, revision=ref.revision, files_metadata=True)
            commit = checked_commit(ref, info.sha)
            names = [s.rfilename for s in info.siblings or []]
            sizes = {s.rfilename: s.size for s in info.siblings or []}
            files = [f for f in adapter_files(names, subfolder=sub) if _small_enough(ref, f, sizes)]
            rels = [_in_folder(f, sub) or f for f in files]
            missing = [CONFIG_FILE] if CONFIG_FILE not in rels else []
            if not set(rels) & {SAFETENSORS_WEIGHTS, BIN_WEIGHTS}:
                missing.append(SAFETENSORS_WEIGHTS)
            if missing:
                raise _missing(ref, missing, cached=False)
            paths = [hf_hub_download(ref.repo, f, revision=commit) for f in files]
            _remember_revision(ref, commit)
            if sub and CARD_FILE in names and CARD_FILE not in rels and _small_enough(ref, CARD_FILE, sizes):
                hf_hub_download(ref.repo, CARD_FILE, revision=commit)  # the repo's card
        else:
            paths, missing = _cached_adapter(ref)
            if missing:
                raise _missing(ref, missing, cached=True)
            commit = _commit_of(paths[0])
    folder = Path(paths[0]).parent
    present = tuple(Path(p).name for p in paths)
    checked = Folder.open(folder, error=InvalidInputError)
    for rel in present:
        if not checked.has(rel):
            raise _missing(ref, [rel], cached=True)
    logger.info("%s: commit %s in %s", ref, commit, folder)
    return HubSnapshot(ref=ref, commit=commit, path=folder, files=present)


def _cached_adapter(ref: HubRef) -> tuple[list[str], list[str]]:
    """(paths found, required names missing) in the Hub cache, offline."""
    from huggingface_hub import errors as hf
    from huggingface_hub import hf_hub_download

    def get(name: str) -> str | None:
        try:
            return str(hf_hub_download(ref.repo, _join(ref.subfolder, name), revision=ref.revision))
        except hf.LocalEntryNotFoundError:
            return None

    config = get(CONFIG_FILE)
    if config is None:
        return [], [CONFIG_FILE]
    weights = get(SAFETENSORS_WEIGHTS) or get(BIN_WEIGHTS)
    if weights is None:
        return [config], [SAFETENSORS_WEIGHTS]
    found = [config, weights]
    found.extend(p for name in OPTIONAL_ADAPTER_FILES if (p := get(name)) is not None)
    return found, []


def download_base(ref: HubRef) -> HubSnapshot:
    """Download a base checkpoint's config, index, weights (safetensors) and tokenizer files
    (offline: find them in the local Hub cache); a snapshot without every shard the index
    names is refused with the missing files."""
    from huggingface_hub import snapshot_download

    patterns = [*BASE_FILES, "model*.safetensors", *TOKENIZER_FILES]
    with hub_errors(ref):
        if offline():
            folder = _local_snapshot(ref)
        else:
            folder = Path(snapshot_download(ref.repo, revision=ref.revision, allow_patterns=patterns))
    commit = _commit_of(folder)
    missing = base_missing(ref, folder)
    if missing:
        raise _missing_base(ref, missing, cached=offline())
    files = tuple(rel for rel, _ in Folder.open(folder, error=InvalidInputError).walk())
    return HubSnapshot(ref=ref, commit=commit, path=folder, files=files)


def base_missing(ref: HubRef, folder: Path) -> list[str]:
    """The files a base checkpoint needs that ``folder`` lacks: ``config.json``, and every
    shard its index names (or ``model.safetensors`` without an index)."""
    checked = Folder.open(folder, error=InvalidInputError)
    missing = [] if checked.has("config.json") else ["config.json"]
    index = checked.file("model.safetensors.index.json")
    if index is None:
        shards = sorted(rel for rel, _ in checked.walk() if _SHARD_RE.match(rel))
        return missing + ([] if shards else ["model.safetensors"])
    data = read_json_object(index, what=f"{ref} model.safetensors.index.json", kind="index")
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidInputError(f"{ref}: model.safetensors.index.json has no weight_map")
    names = sorted({str(v) for v in weight_map.values()})
    bad = [n for n in names if not _SHARD_NAME_RE.match(n)]
    if bad:
        raise InvalidInputError(
            f"{ref}: model.safetensors.index.json names the shard {bad[0][:80]!r}; expected a "
            "safetensors file name in the repo's top folder"
        )
    return missing + [n for n in names if not checked.has(n)]


def _missing_base(ref: HubRef, missing: Sequence[str], *, cached: bool) -> LoradexError:
    names = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    if cached:
        return NotFoundError(
            f"{ref}: the local Hub cache holds a partial snapshot, missing {names}; download it "
            "once online (unset HF_HUB_OFFLINE)"
        )
    return NotFoundError(
        f"{ref}: the repo has no {names}; expected a Hugging Face checkpoint in safetensors"
    )


def _local_snapshot(ref: HubRef) -> Path:
    """The snapshot folder of ``ref`` in the local Hub cache (``refs/<branch>`` names the commit
    of a branch or tag); raise when it is not there."""
    from huggingface_hub import constants

    storage = Path(constants.HF_HUB_CACHE) / ("models--" + ref.repo.replace("/", "--"))
    revision = ref.revision or "main"
    commit: str | None = revision if _COMMIT_RE.match(revision) else None
    if commit is None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = (storage / "refs" / revision).read_text(encoding="utf-8").strip()
            commit = text if _COMMIT_RE.match(text) else None
    folder = storage / "snapshots" / commit if commit else None
    if folder is None or not folder.is_dir() or folder.is_symlink():
        raise HubUnavailableError(
            f"{ref}: not in the local Hub cache and the Hub cannot be asked (HF_HUB_OFFLINE "
            "is set); unset HF_HUB_OFFLINE, or download it once online"
        )
    return folder


def download_base_headers(ref: HubRef, *, into: Path) -> HubSnapshot:
    """A header-only view of a base checkpoint, in ``into`` (a folder loradex owns).

    Downloads ``config.json`` and the index through the Hub cache, and of each safetensors file
    only the 8-byte length and the JSON header (HTTP Range requests through huggingface_hub's
    session). Each file in ``into`` is that header followed by a hole up to the file's real size
    (sparse: it takes no disk space), so header readers see the real file table. A server that
    ignores ``Range`` sends the whole file, which is then kept in full.
    """
    from huggingface_hub import HfApi, hf_hub_download

    with hub_errors(ref):
        info = HfApi().model_info(ref.repo, revision=ref.revision, files_metadata=True)
        commit = checked_commit(ref, info.sha)
        names = [s.rfilename for s in info.siblings or []]
        sizes = {s.rfilename: s.size for s in info.siblings or []}
        into.mkdir(parents=True, exist_ok=True)
        for name in BASE_FILES:
            limit = SIZE_LIMITS["index" if name.endswith(".index.json") else "config"]
            size = sizes.get(name)
            if isinstance(size, int) and size > limit:
                raise InvalidInputError(
                    f"{ref}: {name} is {size} bytes, over the {limit} bytes loradex reads; "
                    "expected a Hugging Face checkpoint"
                )
            if name in names:
                src = Path(hf_hub_download(ref.repo, name, revision=commit))
                (into / name).write_bytes(src.read_bytes())
        if "config.json" not in names:
            raise NotFoundError(f"{ref}: the repo has no config.json; expected a checkpoint")
        shards = sorted(n for n in names if _SHARD_RE.match(n))
        if not shards:
            raise NotFoundError(
                f"{ref}: the repo has no model*.safetensors; header-only checks need safetensors"
            )
        for name in shards:
            _fetch_header(ref, name, commit=commit, target=into / name)
        _remember_revision(ref, commit)
    return HubSnapshot(ref=ref, commit=commit, path=into, files=tuple(sorted(os.listdir(into))))


def _fetch_header(ref: HubRef, name: str, *, commit: str, target: Path) -> None:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = hf_hub_url(ref.repo, name, revision=commit)
    headers = build_hf_headers()
    session = get_session()

    def get(start: int, end: int) -> tuple[bytes, int | None, bool]:
        response = session.get(
            url,
            headers={**headers, "Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"},
            follow_redirects=True,
        )
        hf_raise_for_status(response)
        total = None
        content_range = response.headers.get("Content-Range", "")
        if response.status_code == 206 and "/" in content_range:
            tail = content_range.rsplit("/", 1)[1]
            total = int(tail) if tail.isdigit() else None
        return response.content, total, response.status_code == 206

    first, total, partial = get(0, 7)
    if not partial:  # the server ignored Range: it sent the whole file
        _write_sparse(target, first, size=len(first))
        return
    if len(first) < 8 or total is None:
        raise InvalidInputError(f"{ref} {name}: the Hub sent no safetensors length prefix")
    (length,) = struct.unpack("<Q", first[:8])
    if length > min(MAX_HEADER_BYTES, total - 8):
        raise InvalidInputError(
            f"{ref} {name}: not a valid safetensors file: header length {length} exceeds the "
            f"file ({total} bytes) or the {MAX_HEADER_BYTES} byte cap"
        )
    header, _, _ = get(8, 8 + length - 1)
    _write_sparse(target, first[:8] + header[:length], size=total)


def _write_sparse(target: Path, head: bytes, *, size: int) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(head)
        handle.truncate(max(size, len(head)))
    os.replace(tmp, target)


# ------------------------------------------------------------------------------ model cards


def card_metadata(path: Path) -> dict[str, Any]:
    """The YAML front matter of the model card at ``path`` ({} when it has none)."""
    from huggingface_hub.repocard import metadata_load

    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            logger.warning("%s: the card is over %d bytes; not read", path, MAX_CARD_BYTES)
            return {}
        data = metadata_load(path)
    except Exception as exc:  # malformed YAML: the card is informative, not required
        logger.warning("%s: cannot read the card's YAML front matter (%s)", path, exc)
        return {}
    return dict(data or {})


def base_model_of(folder: Path, *, card_folders: Sequence[Path] = ()) -> str | None:
    """The adapter's base model: the card's ``base_model`` (the folder's card, else the first
    of ``card_folders`` that has one), else the config's ``base_model_name_or_path``."""
    checked = Folder.open(folder)
    card = checked.file(CARD_FILE)
    for other in card_folders:
        if card is None:
            card = Folder.open(other).file(CARD_FILE)
    if card is not None:
        base = card_metadata(card).get("base_model")
        if isinstance(base, list) and base:
            base = base[0]
        if isinstance(base, str) and base:
            return base
    config = checked.file(CONFIG_FILE)
    if config is not None:
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) and value else None
    return None


def is_local_path(value: str) -> bool:
    """Whether a base model name is a filesystem path rather than a Hub id ``org/name``."""
    return (
        value.startswith((".", "~", "/", "\\"))
        or os.path.isabs(value)
        or (len(value) > 1 and value[1] == ":")
        or value.count("/") > 1
        or "\\" in value
        or not _REPO_RE.match(value)
    )


def render_card(detail: VersionDetail, *, base_model: str | None, lineage: Sequence[str]) -> str:
    """The model card of a pushed version: YAML (``base_model``, ``library_name: peft``,
    ``tags``, evals as ``model-index``) and a body with lineage, fingerprints and sha256s."""
    from huggingface_hub import ModelCardData
    from huggingface_hub.repocard_data import EvalResult

    evals = [
        EvalResult(
            task_type="text-generation",
            dataset_type=e.dataset or "custom",
            dataset_name=e.dataset or "custom",
            dataset_split=e.split,
            metric_type=e.metric,
            metric_name=e.metric,
            metric_value=e.value,
        )
        for e in detail.evals
    ]
    tags = ["loradex", "lora", "peft", *sorted(f"{k}:{v}" if v else k for k, v in detail.tags.items())]
    data = ModelCardData(
        base_model=base_model,
        library_name="peft",
        tags=list(dict.fromkeys(tags)),
        model_name=detail.name,
        eval_results=evals or None,
    )
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {detail.name} (loradex {detail.ref})",
        "",
        detail.description or "A LoRA adapter published from a loradex registry.",
        "",
        "## Base model",
        "",
        f"- base_model: {base_model or '(not recorded)'}",
        f"- base fingerprint: {detail.base_fingerprint or '(not recorded)'}",
        "",
        "## Adapter",
        "",
        f"- rank: {detail.max_rank}, alpha: {detail.alpha:g}, target modules: "
        f"{', '.join(detail.target_modules)}",
        f"- adapter fingerprint: {detail.adapter_fingerprint or '(not recorded)'}",
        f"- content sha256: {detail.content_sha256}",
        f"- weights sha256: {detail.weights_sha256}",
        "",
        "## Lineage",
        "",
        *(lineage or ["- (none: trained, not derived)"]),
        "",
        "## Files",
        "",
        "| file | sha256 | bytes |",
        "|---|---|---|",
        *(f"| {f.path} | {f.sha256} | {f.size} |" for f in detail.files if f.path != CARD_FILE),
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ references


def resolve_adapter(ref: str) -> Path:
    """The snapshot folder of the Hub adapter ``ref`` (downloaded into the Hub cache)."""
    return download_adapter(parse_hub_ref(ref)).path


def resolve_base_headers(ref: str, *, cache_dir: Path) -> Path:
    """A header-only view of the Hub base ``ref`` (:func:`base_headers`); named by ``ref`` in
    reports."""
    return base_headers(parse_hub_ref(ref), cache_dir=cache_dir).path


def base_headers(ref: HubRef, *, cache_dir: Path) -> HubSnapshot:
    """A header-only view of the Hub base ``ref`` (:func:`download_base_headers`), kept under
    ``cache_dir/hub-headers/ORG--MODEL/<commit>/``. Offline, that view of the commit the ref
    names (a commit, or a branch the local Hub cache knows), else the whole snapshot in the
    local Hub cache; a partial one is refused with the missing files."""
    import shutil
    import tempfile

    root = cache_dir / "hub-headers" / ref.repo.replace("/", "--")
    if offline():
        by_branch = ref.revision is None or not _COMMIT_RE.match(ref.revision)
        folder = _local_snapshot(ref) if by_branch else None
        commit = _commit_of(folder) if folder is not None else str(ref.revision)
        view = root / commit
        if view.is_dir() and not view.is_symlink():
            return HubSnapshot(ref=ref, commit=commit, path=view, files=tuple(sorted(os.listdir(view))))
        local = folder or _local_snapshot(ref)
        missing = base_missing(ref, local)
        if missing:
            raise _missing_base(ref, missing, cached=True)
        files = tuple(rel for rel, _ in Folder.open(local, error=InvalidInputError).walk())
        return HubSnapshot(ref=ref, commit=commit, path=local, files=files)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch(root)
    scratch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        snapshot = download_base_headers(ref, into=scratch)
        final = root / snapshot.commit
        if not final.is_dir():
            try:
                os.replace(scratch, final)
            except OSError:  # another fetch of the same commit renamed its view in first
                if not final.is_dir():
                    raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return HubSnapshot(ref=ref, commit=snapshot.commit, path=final, files=snapshot.files)


STALE_SCRATCH_SECONDS = 24 * 3600


def _remove_stale_scratch(root: Path) -> None:
    """Remove the ``.fetch-*`` folders of header fetches killed a day ago or more (a live fetch
    is never that old; its folder is renamed into place or removed when it ends)."""
    import shutil
    import time

    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if not entry.name.startswith(".fetch-") or entry.is_symlink() or not entry.is_dir():
                continue
            with contextlib.suppress(OSError):
                if time.time() - entry.stat().st_mtime > STALE_SCRATCH_SECONDS:
                    shutil.rmtree(entry)


def is_commit(revision: str) -> bool:
    """Whether ``revision`` is a full commit id (40 hex digits)."""
    return _COMMIT_RE.match(revision) is not None


def hub_base_files(
    repo: str, commit: str, *, fingerprint: str | None, cache_dir: Path | None
) -> Path:
    """The files of the registered base that came from ``repo`` at ``commit``
    (:func:`download_base`); with a recorded ``fingerprint``, the download must have it."""
    ref = HubRef(repo=repo, revision=commit)
    folder = download_base(ref).path
    if fingerprint is not None:
        from mergetools.fingerprint import fingerprint_checkpoint

        found = fingerprint_checkpoint(folder, cache_dir=cache_dir)
        if found != fingerprint:
            raise ConflictError(
                f"{ref}: the files downloaded have fingerprint {found[:12]}..., not the "
                f"{fingerprint[:12]}... registered; the Hub repo does not hold the registered "
                "weights any more — give the checkpoint folder path instead"
            )
    return folder


def hub_base_header_view(repo: str, commit: str, *, cache_dir: Path) -> Path:
    """The header view of the registered base that came from ``repo`` at ``commit``
    (:func:`base_headers`), for checks that read headers only."""
    return base_headers(HubRef(repo=repo, revision=commit), cache_dir=cache_dir).path


def resolve_base(ref: str) -> HubSnapshot:
    """The snapshot folder of the Hub base ``ref`` (downloaded into the Hub cache)."""
    return download_base(parse_hub_ref(ref))


def render_checkpoint_card(
    checkpoint: CheckpointRow,
    *,
    members: Sequence[VersionDetail],
    weights: Sequence[float],
    lineage: Mapping[str, Sequence[str]],
    base_model: str | None,
    fingerprint: str,
) -> str:
    """The model card of a pushed merged checkpoint: YAML (``base_model``, ``library_name:
    transformers``, ``tags``) and a body with the adapters merged (versions, weights, sha256s,
    fingerprints), their lineage and the checkpoint's fingerprints."""
    from huggingface_hub import ModelCardData

    tags = ["loradex", "lora", "merge", *(f"merged:{m.ref}" for m in members)]
    data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        tags=list(dict.fromkeys(tags)),
        model_name=f"checkpoint {checkpoint.id}",
    )
    merged = " + ".join(f"{m.ref} x {w:g}" for m, w in zip(members, weights, strict=True))
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# Merged checkpoint {checkpoint.id} (loradex)",
        "",
        f"{base_model or 'The base model'} with LoRA adapters folded into its weights: {merged}.",
        "",
        "## Base model",
        "",
        f"- base_model: {base_model or '(not recorded)'}",
        f"- registered base: {checkpoint.base or '(not registered)'}",
        f"- base fingerprint: {checkpoint.base_fingerprint or '(not recorded)'}",
        "",
        "## Adapters merged",
        "",
        "| adapter | weight | weights sha256 | adapter fingerprint | rank | alpha |",
        "|---|---|---|---|---|---|",
        *(
            f"| {m.ref} | {w:g} | {m.weights_sha256} | {m.adapter_fingerprint or '-'} | "
            f"{m.max_rank} | {m.alpha:g} |"
            for m, w in zip(members, weights, strict=True)
        ),
        "",
        "## Lineage",
        "",
        *(
            line
            for m in members
            for line in [f"- {m.ref} (source: {m.source or 'registered'})", *("  " + p for p in lineage.get(m.ref, []))]
        ),
        "",
        "## Fingerprints",
        "",
        f"- checkpoint fingerprint (loradex.base-fingerprint/1): {fingerprint}",
        f"- recorded when merged: {checkpoint.fingerprint or '(not recorded)'}",
        "",
    ]
    return "\n".join(lines)
