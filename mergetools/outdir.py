"""Output folders written atomically, and the temp files and folders of killed processes.

Every folder loradex writes for the user (a merged checkpoint, an exported adapter) is built in a
temp folder beside the target, fsynced (files, then folders) and renamed into place:

- nothing appears at the target on failure, and the temp folder is removed;
- an existing target that may be replaced is kept until the new folder is in place: it is renamed
  aside, the new folder renamed in, then the old one deleted (renamed back if the rename fails);
- replacing is refused for anything that is neither an empty folder nor an earlier loradex output
  (a folder carrying :data:`MARKER_FILE`, or a merge's ``loradex.json``), and always for the paths
  the caller protects (the registry home, the inputs, the current folder).

Every output folder carries :data:`MARKER_FILE`, a small JSON file (``kind``, ``loradex_version``,
``created``) that marks it as replaceable by a later run.

Temp names carry their owner, so a process killed mid-write (SIGKILL, OOM, power loss) leaves
something the next writer in the same folder can recognise and remove::

    .<label>.loradex-<role>-<host><boot>-<pid>-<start>-<random>

``host`` and ``boot`` are 8 hex digits of the sha256 of the host name and of
``/proc/sys/kernel/random/boot_id``; ``start`` is the process start time from
``/proc/<pid>/stat`` (clock ticks since boot), so a reused pid is not mistaken for the owner.
``role`` is ``tmp`` (being written) or ``old`` (an output moved aside while being replaced).
An entry whose owner is alive is never touched. One whose owner is dead (same host and boot and
the pid gone or started at another time, or the same host after a reboot) is removed; an ``old``
entry whose target is missing is renamed back instead. Entries of other hosts (a shared folder)
are left alone unless older than :data:`FOREIGN_MAX_AGE_S`. Nothing that does not match this
naming pattern is ever removed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from mergetools import __version__
from mergetools.errors import InvalidInputError, LoradexError, OutputExistsError
from mergetools.files import fsync_path

logger = logging.getLogger(__name__)

MARKER_FILE = ".loradex-output"
"""Marks a folder as written by loradex (so a later run may replace it)."""

PROVENANCE_MARKERS = ("loradex.json",)
"""Provenance files that also mark a loradex output (merges written before the marker existed)."""

FOREIGN_MAX_AGE_S = 7 * 24 * 3600.0
"""Temps of other hosts (a shared folder) are removed only once older than this."""

LEGACY_MAX_AGE_S = 24 * 3600.0
"""Temps named by loradex versions that did not record an owner are removed once older than this."""

_MARKER_MAX_BYTES = 64 * 1024

_TEMP_RE = re.compile(
    r"^\.(?P<label>.+)\.loradex-(?P<role>tmp|old)-"
    r"(?P<host>[0-9a-f]{8})(?P<boot>[0-9a-f]{8})-(?P<pid>[0-9]+)-(?P<start>[0-9]+)-[0-9a-f]{8}$"
)
_LEGACY_RE = re.compile(r"^\..+\.loradex-(?:tmp|old)-[0-9a-f]{12}\Z")
_LABEL_MAX = 100  # keeps temp names well under the 255-byte limit of a file name

Role = Literal["tmp", "old"]


# --- owners -------------------------------------------------------------------------------


def _digest8(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


@functools.cache
def _host_boot() -> tuple[str, str]:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        boot = ""
    return _digest8(socket.gethostname()), _digest8(boot)


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, from ``/proc/<pid>/stat``); None if it is gone.

    Without ``/proc`` (not Linux) a live pid reads as 0: pids are then told apart by liveness only.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces and parentheses.
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def owner_token() -> str:
    """This process as it appears in temp names: ``<host><boot>-<pid>-<start>``."""
    host, boot = _host_boot()
    pid = os.getpid()
    return f"{host}{boot}-{pid}-{process_start_time(pid) or 0}"


OwnerState = Literal["alive", "dead", "foreign"]


def _owner_state(host: str, boot: str, pid: int, start: int) -> OwnerState:
    my_host, my_boot = _host_boot()
    if host != my_host:
        return "foreign"
    if boot != my_boot:
        return "dead"  # this host rebooted since
    actual = process_start_time(pid)
    return "alive" if actual is not None and actual == start else "dead"


def temp_path(folder: Path, label: str, *, role: Role = "tmp") -> Path:
    """A fresh temp name in ``folder`` that records this process as its owner."""
    return folder / f".{label[:_LABEL_MAX]}.loradex-{role}-{owner_token()}-{secrets.token_hex(4)}"


def create_temp_file(folder: Path, label: str) -> tuple[int, Path]:
    """Create an empty temp file (mode 0600) in ``folder``; returns (open fd, path)."""
    while True:
        path = temp_path(folder, label)
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), path
        except FileExistsError:
            continue


def create_temp_folder(folder: Path, label: str) -> Path:
    """Create an empty temp folder in ``folder``."""
    while True:
        path = temp_path(folder, label)
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


# --- leftovers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Leftover:
    """A temp entry of a dead (or long-gone foreign) owner, found by :func:`clean_leftovers`."""

    path: Path
    size: int
    reason: str  # "owner dead", "owner rebooted", "foreign, stale", "unowned, stale"
    action: (
        str  # "removed", "restored" (an old output renamed back), "would remove", "would restore"
    )

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "size": self.size,
            "reason": self.reason,
            "action": self.action,
        }


def _entry_size(path: Path) -> int:
    """Bytes held by a file, or by the files under a folder (links not followed)."""
    try:
        st = path.lstat()
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def remove_entry(path: Path) -> None:
    """Remove a file, a link or a folder tree (whatever is at ``path``; nothing if absent)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_leftovers(folder: Path, *, dry_run: bool = False) -> list[Leftover]:
    """Remove (or with ``dry_run`` only list) the temps of dead owners directly in ``folder``.

    Only names of loradex's temp pattern are considered; live owners' temps are kept, other
    hosts' temps too unless older than :data:`FOREIGN_MAX_AGE_S`. Never raises for a folder
    that cannot be read: there is simply nothing to clean.
    """
    found: list[Leftover] = []
    try:
        with os.scandir(folder) as scan:
            entries = sorted(
                (e for e in scan if e.name.startswith(".") and ".loradex-" in e.name),
                key=lambda e: e.name,
            )
    except OSError:
        return found
    now = time.time()
    for entry in entries:
        if entry.is_symlink():
            continue  # loradex never creates links with these names
        match = _TEMP_RE.match(entry.name)
        if match is None and not _LEGACY_RE.match(entry.name):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if match is None:
            if age <= LEGACY_MAX_AGE_S:
                continue
            reason = "unowned, stale"
            role = "tmp"
        else:
            role = match["role"]
            state = _owner_state(
                match["host"], match["boot"], int(match["pid"]), int(match["start"])
            )
            if state == "alive":
                continue
            if state == "foreign":
                if age <= FOREIGN_MAX_AGE_S:
                    continue
                reason = "foreign, stale"
            else:
                reason = "owner rebooted" if match["boot"] != _host_boot()[1] else "owner dead"
        path = Path(entry.path)
        size = _entry_size(path)
        # An output moved aside by a replace that was killed before the new one was renamed in:
        # put it back (a label cut to _LABEL_MAX characters cannot name its target).
        target = (
            folder / match["label"]
            if match is not None and role == "old" and len(match["label"]) < _LABEL_MAX
            else None
        )
        restore = target is not None and not os.path.lexists(target)
        if dry_run:
            found.append(
                Leftover(path, size, reason, "would restore" if restore else "would remove")
            )
            continue
        if restore and target is not None:
            try:
                os.rename(path, target)
            except OSError:
                restore = False
            else:
                logger.warning("restored %s, left aside by a killed replace, to %s", path, target)
                found.append(Leftover(path, size, reason, "restored"))
                continue
        remove_entry(path)
        if not os.path.lexists(path):
            logger.info("removed %s (%d bytes) left by a killed writer (%s)", path, size, reason)
            found.append(Leftover(path, size, reason, "removed"))
    return found


# --- replacing outputs --------------------------------------------------------------------


@dataclass(frozen=True)
class ProtectedPath:
    """A path an output must never replace: not it, not a folder containing it, and (unless
    ``inside_ok``, as for the current folder) nothing inside it."""

    path: Path
    what: str  # "LORADEX_HOME", "the input folder", "the current folder"
    inside_ok: bool = False


SHOWN_MAX = 200
"""Paths longer than this are cut in messages (the rest says how long the path was)."""


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN_MAX else f"{text[:120]}… ({len(text)} characters)"


def input_guards(
    inputs: Sequence[str | os.PathLike[str]], protected: Sequence[ProtectedPath] = ()
) -> list[ProtectedPath]:
    """``protected`` plus every input folder: an output may never be, contain or lie inside an
    input (replacing it with ``force`` would delete what is being read)."""
    return [*protected, *(ProtectedPath(Path(path), "the input folder") for path in inputs)]


def check_output_path(
    out: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    force: bool,
    protected: Sequence[ProtectedPath] = (),
) -> None:
    """Refuse, before any work, an output that overlaps an input folder or a protected path, or
    that exists and may not be replaced (see :func:`check_output_target`)."""
    check_output_target(
        Path(os.path.abspath(out)),
        force=force,
        protected=input_guards(inputs, protected),
        label=f"output folder {out}",
    )


def _read_marker(path: Path) -> bool:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _MARKER_MAX_BYTES:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and isinstance(data.get("loradex_version"), str)


def is_loradex_output(folder: Path) -> bool:
    """True when ``folder`` carries loradex's output marker or a merge's provenance file."""
    return any(_read_marker(folder / name) for name in (MARKER_FILE, *PROVENANCE_MARKERS))


def check_output_target(
    out: Path,
    *,
    force: bool,
    protected: Sequence[ProtectedPath] = (),
    empty_ok: bool = False,
    label: str | None = None,
    replace_hint: str = "choose another folder",
) -> None:
    """Refuse to write ``out`` when it overlaps a protected path, or exists and may not be replaced.

    An existing ``out`` may be replaced only with ``force`` (or, with ``empty_ok``, when it is an
    empty folder), and only when it is an empty folder or an earlier loradex output.
    """
    shown = _shown(label or str(out))
    out = Path(os.path.abspath(out))  # "." and ".." name their folders
    try:
        _check_target(out, shown, force=force, protected=protected, empty_ok=empty_ok, replace_hint=replace_hint)
    except OSError as exc:  # a name too long for the filesystem, a component that is a file...
        if isinstance(exc, LoradexError):  # OutputExistsError is a FileExistsError too
            raise
        raise InvalidInputError(f"{shown}: cannot be used as an output folder ({exc.strerror or exc})") from None


def _check_target(
    out: Path,
    shown: str,
    *,
    force: bool,
    protected: Sequence[ProtectedPath],
    empty_ok: bool,
    replace_hint: str,
) -> None:
    entry = out.parent.resolve() / out.name  # what a rename would move
    pointed = out.resolve()
    for guard in protected:
        real = guard.path.resolve()
        for where in dict.fromkeys((entry, pointed)):
            if where == real:
                raise InvalidInputError(
                    f"{shown} is {guard.what} ({real}); refusing to write an output there — choose another folder"
                )
            if where in real.parents:
                raise InvalidInputError(
                    f"{shown} contains {guard.what} {real}; replacing it would delete it — choose another folder"
                )
            if real in where.parents and not guard.inside_ok:
                raise InvalidInputError(
                    f"{shown} lies inside {guard.what} {real}; choose a folder outside it"
                )
    if not os.path.lexists(out):
        return
    if out.is_symlink():
        raise OutputExistsError(
            f"{shown} is a symbolic link; refusing to replace it, even when asked to — choose "
            "another folder"
        )
    if not out.is_dir():
        raise OutputExistsError(
            f"{shown} exists and is not a folder; refusing to replace it, even when asked to — "
            "choose another folder"
        )
    try:
        empty = not any(out.iterdir())
    except OSError as exc:
        raise InvalidInputError(f"{shown}: cannot read it ({exc.strerror or exc})") from None
    if empty and empty_ok:
        return
    if not force:
        state = "already exists" if empty else "exists and is not empty"
        raise OutputExistsError(
            f"{shown} {state}",
            fields={"path": str(out)},
            hint=f"{replace_hint}, or allow replacing it",
            hint_action="force",
        )
    if not empty and not is_loradex_output(out):
        raise OutputExistsError(
            f"{shown} exists and is not an earlier loradex output (it has no {MARKER_FILE} or "
            f"{PROVENANCE_MARKERS[0]}); refusing to replace it — remove it yourself or choose another folder"
        )


def fsync_tree(folder: Path) -> None:
    """fsync every regular file under ``folder``, then every folder (deepest first)."""
    folders: list[str] = []
    for root, _dirs, files in os.walk(folder):
        folders.append(root)
        for name in files:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                fsync_path(path)
    for root in reversed(folders):
        fsync_path(Path(root))


def write_marker(folder: Path, kind: str) -> None:
    """Write :data:`MARKER_FILE` into ``folder``."""
    data = {
        "kind": kind,
        "loradex_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (folder / MARKER_FILE).write_text(json.dumps(data, sort_keys=True) + "\n", encoding="utf-8")


def replace_folder(tmp: Path, out: Path, *, fsync: bool = True) -> None:
    """Rename the finished folder ``tmp`` to ``out``; an existing ``out`` is kept until the new
    folder is in place (renamed aside, then deleted; renamed back if the rename fails)."""
    old: Path | None = None
    if os.path.lexists(out) and not (
        out.is_dir() and not out.is_symlink() and not any(out.iterdir())
    ):
        old = temp_path(out.parent, out.name, role="old")
        os.rename(out, old)
    try:
        os.rename(tmp, out)  # onto an empty folder, or where nothing is now
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if fsync:
        fsync_path(out.parent)
    if old is not None:
        remove_entry(old)  # killed here: the next writer in this folder removes it


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove folders created for the output (deepest first) if they are still empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def atomic_output_folder(
    out: str | os.PathLike[str],
    *,
    kind: str,
    force: bool = False,
    protected: Sequence[ProtectedPath] = (),
    fsync: bool = True,
    empty_ok: bool = False,
    label: str | None = None,
    replace_hint: str = "choose another folder",
    timings: dict[str, float] | None = None,
) -> Iterator[Path]:
    """Yield a temp folder beside ``out``; when the block succeeds, move it into place as ``out``.

    ``out`` is checked first (:func:`check_output_target`) and again just before the rename (it
    may have appeared meanwhile). The temps of dead owners beside ``out`` are removed before
    writing. The output gets :data:`MARKER_FILE` with ``kind``. On any error the temp folder and
    the parents created for it are removed and nothing is left at ``out``; an ``OSError`` comes
    back as :class:`InvalidInputError` naming ``out``. ``timings``, when given, receives the
    seconds of the final ``fsync`` (marker, every file, every folder) and of the ``rename``.
    """
    shown = _shown(label or str(out))
    out = Path(os.path.abspath(out))  # "." and ".." name their folders
    check = functools.partial(
        check_output_target,
        out,
        force=force,
        protected=protected,
        empty_ok=empty_ok,
        label=shown,
        replace_hint=replace_hint,
    )
    check()
    parent = out.parent
    created: list[Path] = []
    try:
        created = [p for p in reversed(parent.parents) if not p.exists()]
        if not parent.exists():
            created.append(parent)
        parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(parent)
        tmp = create_temp_folder(parent, out.name)
    except OSError as exc:
        _remove_empty(created)
        raise InvalidInputError(
            f"{shown}: cannot create the output folder ({exc.strerror or exc})"
        ) from None
    try:
        yield tmp
        finishing = time.perf_counter()
        write_marker(tmp, kind)
        if fsync:
            fsync_tree(tmp)
        synced = time.perf_counter()
        check()
        replace_folder(tmp, parent / out.name, fsync=fsync)
        if timings is not None:
            timings.update(fsync=synced - finishing, rename=time.perf_counter() - synced)
    except BaseException as exc:
        remove_entry(tmp)
        _remove_empty(created)
        if isinstance(exc, OSError) and not isinstance(exc, LoradexError):
            raise InvalidInputError(
                f"{shown}: writing the output failed ({exc.strerror or exc}); nothing was written"
            ) from None
        raise
