"""Small file helpers shared by every module that reads or writes loradex's files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mergetools.errors import CorruptFileError, LoradexError

CHUNK = 1 << 20


def read_json_object(
    path: Path,
    *,
    what: str,
    missing: type[LoradexError] = CorruptFileError,
    invalid: type[LoradexError] = CorruptFileError,
    hint: str = "",
) -> dict[str, object]:
    """Read a JSON object from ``path``; raise ``missing``/``invalid`` with a one-line message."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise missing(f"{path}: {what} not found{hint}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise invalid(f"{path}: {what} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise invalid(f"{path}: {what} must be a JSON object, got {type(data).__name__}")
    return data


def write_json(path: Path, data: object) -> None:
    """Write ``data`` as indented, key-sorted JSON with a trailing newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
