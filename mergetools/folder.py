"""Read a folder loradex was given, and nothing outside it.

Every folder loradex reads (an adapter, a base checkpoint, a Hub snapshot) goes through
:class:`Folder`. An entry is usable when it is a regular file, or a symbolic link whose target
resolves to a regular file inside the folder. A link whose target leaves the folder, a broken
link and a special file (fifo, socket, device) are refused with a one-line error naming the
entry, before anything of it is opened. A Hub cache snapshot (``models--ORG--REPO/snapshots/REV``)
may link into its own repo's ``blobs/`` folder: that folder is allowed too, and callers can
name further ``extra_roots``.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mergetools.errors import InvalidInputError, LoradexError

logger = logging.getLogger(__name__)

_HUB_SNAPSHOT_RE = re.compile(
    r"^(?P<repo>.*/(?:models|datasets|spaces)--[^/]+)/snapshots/[^/]+(?:/[^/]+)*$"
)  # a snapshot, or a subfolder of one (a repo holding an adapter in ``sub/``)


def hub_blobs_root(folder: Path) -> Path | None:
    """The ``blobs/`` folder of the Hub cache repo whose snapshot (or a subfolder of one)
    ``folder`` is, if it is one."""
    match = _HUB_SNAPSHOT_RE.match(folder.resolve().as_posix())
    return Path(match["repo"]) / "blobs" if match else None


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclass(frozen=True)
class Folder:
    """A folder read safely: entries are checked before they are opened.

    ``error`` is the error class raised for a refused entry (``InvalidAdapterError`` for an
    adapter, ``InvalidCheckpointError`` for a base).
    """

    path: Path
    roots: tuple[Path, ...]
    error: type[LoradexError] = InvalidInputError

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        error: type[LoradexError] = InvalidInputError,
        extra_roots: Sequence[Path] = (),
    ) -> Folder:
        """The folder at ``path`` (resolved once; links inside it may point only into it,
        into its Hub cache repo's ``blobs/`` folder or into ``extra_roots``)."""
        folder = Path(path)
        root = folder.resolve()
        roots = [root]
        blobs = hub_blobs_root(folder)
        if blobs is not None:
            roots.append(blobs.resolve())
        roots.extend(Path(r).resolve() for r in extra_roots)
        return cls(folder, tuple(roots), error)

    def _check(self, rel: str, path: Path) -> bool:
        """True when ``path`` (entry ``rel``) is a usable regular file; False when absent or a folder;
        raise ``error`` when it is a link leaving the folder, a broken link or a special file."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self.error(f"{path}: cannot be read ({exc.strerror or exc})") from None
        if stat.S_ISLNK(mode):
            target = self._link_target(path)
            if not any(_within(target, root) for root in self.roots):
                raise self.error(
                    f"{path}: is a link to {target}, outside the folder {self.path}; "
                    "loradex reads nothing outside the folder it is given — copy the file in instead"
                )
            try:
                mode = os.stat(path).st_mode
            except OSError:
                raise self.error(
                    f"{path}: is a broken link (its target {target} does not exist)"
                ) from None
        if stat.S_ISDIR(mode):
            return False
        if not stat.S_ISREG(mode):
            raise self.error(
                f"{path}: is a special file ({_kind(mode)}), not a regular file; refusing to read it"
            )
        return True

    def _link_target(self, path: Path) -> Path:
        """Where the link ``path`` leads; a loop of links is refused, not followed forever."""
        try:
            return path.resolve()
        except (RuntimeError, OSError) as exc:  # Python raises RuntimeError for a loop
            raise self.error(
                f"{path}: is a link that loops back on itself (or through too many links) "
                f"({exc}); remove it"
            ) from None

    def file(self, name: str) -> Path | None:
        """``path / name`` when it is a usable file; None when absent (or a folder)."""
        return self.path / name if self._check(name, self.path / name) else None

    def has(self, name: str) -> bool:
        """Whether ``name`` is a usable file of the folder (raises for a refused entry)."""
        return self.file(name) is not None

    def is_dir(self, name: str) -> bool:
        """Whether ``name`` is a sub-folder (a link to a folder counts only when it stays inside)."""
        path = self.path / name
        if path.is_symlink():
            target = self._link_target(path)
            if not any(_within(target, root) for root in self.roots):
                raise self.error(f"{path}: is a link to {target}, outside the folder {self.path}")
        return path.is_dir()

    def entries(self) -> list[Path]:
        """The usable files directly in the folder, sorted by name (hidden names included);
        refuses the whole folder when one entry is refused."""
        files: list[Path] = []
        try:
            children = sorted(os.scandir(self.path), key=lambda e: e.name)
        except OSError as exc:
            raise self.error(
                f"{self.path}: cannot list the folder ({exc.strerror or exc})"
            ) from None
        for entry in children:
            path = self.path / entry.name
            if entry.is_symlink() and self.is_dir(entry.name):
                continue
            if self._check(entry.name, path):
                files.append(path)
        return files

    def walk(self) -> list[tuple[str, Path]]:
        """Every usable file under the folder as (posix relative path, path), sorted; hidden names
        (starting with ``.``) are skipped, links to sub-folders are not followed."""
        files: list[tuple[str, Path]] = []
        for top, dirs, names in os.walk(self.path):
            base = Path(top)
            kept = []
            for name in sorted(dirs):
                if name.startswith("."):
                    continue
                path = base / name
                if path.is_symlink():
                    target = self._link_target(path)
                    if not any(_within(target, root) for root in self.roots):
                        raise self.error(
                            f"{path}: is a link to {target}, outside the folder {self.path}; "
                            "loradex reads nothing outside the folder it is given"
                        )
                    logger.debug("not following the folder link %s", path)
                    continue
                kept.append(name)
            dirs[:] = kept
            for name in sorted(names):
                if name.startswith("."):
                    continue
                path = base / name
                if self._check(name, path):
                    files.append((path.relative_to(self.path).as_posix(), path))
        return files


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"
