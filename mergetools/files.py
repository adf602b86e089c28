"""Small file helpers shared by every module that reads or writes loradex's files.

Every JSON or text file loradex parses is read through :func:`read_json_object` or
:func:`read_text_limited`, each with a size limit per kind of file (:data:`SIZE_LIMITS`), as
the safetensors header already has one: a file over its limit is refused before it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from mergetools.errors import CorruptFileError, LoradexError

CHUNK = 1 << 20

FileKind = Literal["config", "adapter_config", "index", "tokenizer", "card", "signature", "cache"]

SIZE_LIMITS: dict[str, int] = {
    "config": 16 << 20,
    "adapter_config": 16 << 20,
    "index": 64 << 20,
    "tokenizer": 256 << 20,
    "card": 16 << 20,
    "signature": 256 << 20,
    "cache": 256 << 20,
}
"""The most bytes loradex parses per kind of file: ``config`` (a model's ``config.json``,
``generation_config.json``) and ``adapter_config`` 16 MiB; ``index`` (shard indexes) 64 MiB;
``tokenizer`` (``tokenizer.json``, vocabularies, merges, tokenizer configs) 256 MiB; ``card``
(``README.md``) 16 MiB; ``signature`` and ``cache`` (loradex's own files) 256 MiB."""


def read_limited(
    path: Path,
    *,
    what: str,
    kind: FileKind,
    missing: type[LoradexError] = CorruptFileError,
    invalid: type[LoradexError] = CorruptFileError,
    hint: str = "",
) -> bytes:
    """The bytes of ``path``, refused with ``invalid`` when larger than ``SIZE_LIMITS[kind]``."""
    limit = SIZE_LIMITS[kind]
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise invalid(f"{path}: {what} is {size} bytes, more than the limit of {limit} bytes")
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise missing(f"{path}: {what} not found{hint}") from None
    except IsADirectoryError:
        raise invalid(f"{path}: {what} is a folder, expected a file") from None
    except OSError as exc:
        raise invalid(f"{path}: {what} cannot be read ({exc.strerror or exc})") from None
    if len(data) > limit:  # grew while being read
        raise invalid(f"{path}: {what} is more than the limit of {limit} bytes")
    return data


def read_text_limited(
    path: Path,
    *,
    what: str,
    kind: FileKind,
    missing: type[LoradexError] = CorruptFileError,
    invalid: type[LoradexError] = CorruptFileError,
) -> str:
    """The UTF-8 text of ``path`` (size-limited like :func:`read_limited`)."""
    data = read_limited(path, what=what, kind=kind, missing=missing, invalid=invalid)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_json_object(
    path: Path,
    *,
    what: str,
    kind: FileKind = "config",
    missing: type[LoradexError] = CorruptFileError,
    invalid: type[LoradexError] = CorruptFileError,
    hint: str = "",
) -> dict[str, object]:
    """Read a JSON object from ``path`` (at most ``SIZE_LIMITS[kind]`` bytes); raise
    ``missing``/``invalid`` with a one-line message."""
    raw = read_limited(path, what=what, kind=kind, missing=missing, invalid=invalid, hint=hint)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise invalid(f"{path}: {what} is not valid JSON ({str(exc)[:200]})") from None
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
