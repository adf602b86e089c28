"""Base-model fingerprints: one sha256 over a checkpoint's tensors, independent of its layout.

The fingerprint identifies the *weights*, not the files (DESIGN.md §4). It stays the same when
the checkpoint is re-sharded, its files are reordered or renamed, safetensors ``__metadata__``
changes, the base-model name prefix is present or absent (``h.0...`` vs ``transformer.h.0...``),
or a tied ``lm_head`` is written out as a copy of the input embedding; it changes when any byte of
any tensor changes (and when a name, dtype or shape changes).

Algorithm ``loradex.base-fingerprint/1`` (changing any step needs a new version string):

1. Each tensor's bytes are cut into :data:`CHUNK_SIZE` pieces from the tensor's own start (so
   sharding does not move the cuts). ``tensor_sha256 = sha256(sha256(piece_0) || sha256(piece_1)
   || ...)``; an empty tensor hashes no pieces. The pieces are hashed in a thread pool:
   ``hashlib`` releases the GIL on large buffers, so every core is used, and memory stays at one
   piece per worker.
2. Names are canonicalised (:func:`canonical_names`): when every tensor except known output heads
   (``lm_head``, ``score``, ``classifier``...) starts with one shared first component (``model.``,
   ``transformer.``, ``bert.``), that component is dropped.
3. When the config does not say ``tie_word_embeddings: false`` and ``lm_head.weight`` (or
   ``embed_out.weight``) has the input embedding's dtype, shape and ``tensor_sha256``, it is
   left out: it is the materialised copy of a tied weight.
4. ``fingerprint = sha256("loradex.base-fingerprint/1\\n" + for each tensor in sorted canonical
   name order: name NUL dtype NUL shape-as-JSON NUL tensor_sha256-hex LF)``, as 64 hex digits.

Per-file tensor digests are cached in ``cache_dir`` (one small JSON file per weight file, named
by the sha256 of its identity: resolved path, size, ``mtime_ns``, inode), written to a temporary
file and renamed into place, so concurrent runs never see half a file. Only safetensors
checkpoints are hashed without torch; legacy ``.bin`` checkpoints are read with
``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mergetools.checkpoint import (
    OUTPUT_EMBEDDING_NAMES,
    Checkpoint,
    find_input_embedding,
    open_checkpoint,
)
from mergetools.errors import CorruptFileError, LoradexError
from mergetools.files import read_json_object
from mergetools.safetensors_io import pread_exact

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = "loradex.base-fingerprint/1"
CHUNK_SIZE = 4 << 20
"""Bytes per hashed piece of a tensor (part of the algorithm: never change within a version)."""

_FINGERPRINT_RE = re.compile(r"[0-9a-f]{64}")

HEAD_COMPONENTS = frozenset(
    {"lm_head", "embed_out", "score", "classifier", "qa_outputs", "cls", "output", "head"}
)
"""First name components of task heads that sit outside the base-model prefix."""

Progress = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)``, called from the calling thread."""


def is_fingerprint(value: str) -> bool:
    """Whether ``value`` has the form of a fingerprint: 64 lowercase hex digits."""
    return _FINGERPRINT_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class TensorDigest:
    """One tensor's identity: dtype, shape and ``tensor_sha256`` of its bytes."""

    dtype: str
    shape: tuple[int, ...]
    sha256: str


# --- hashing ------------------------------------------------------------------------------


def chunk_sha256(data: bytes | bytearray | memoryview) -> bytes:
    """The raw sha256 of one piece (helper so callers hashing while they read agree with us)."""
    return hashlib.sha256(data).digest()


def tensor_sha256(data: bytes | bytearray | memoryview) -> str:
    """``tensor_sha256`` of a tensor's complete bytes held in memory (step 1 of the algorithm)."""
    hasher = TensorHasher()
    hasher.update(data)
    return hasher.hexdigest()


class TensorHasher:
    """``tensor_sha256`` (step 1) computed from a tensor's bytes fed in order, in pieces of any
    size: a writer hashes what it writes without holding the tensor (one piece's state at a time).
    """

    __slots__ = ("_outer", "_piece", "_piece_bytes", "nbytes")

    def __init__(self) -> None:
        self._outer = hashlib.sha256()
        self._piece: hashlib._Hash | None = None
        self._piece_bytes = 0
        self.nbytes = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes of the tensor."""
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            room = CHUNK_SIZE - self._piece_bytes
            take = min(room, len(view) - done)
            part = view[done : done + take]
            if self._piece is None and take == CHUNK_SIZE:
                self._outer.update(chunk_sha256(part))  # a whole aligned piece: no copy of state
            else:
                if self._piece is None:
                    self._piece = hashlib.sha256()
                self._piece.update(part)
                self._piece_bytes += take
                if self._piece_bytes == CHUNK_SIZE:
                    self._outer.update(self._piece.digest())
                    self._piece, self._piece_bytes = None, 0
            done += take
        self.nbytes += len(view)

    def hexdigest(self) -> str:
        """The tensor's ``tensor_sha256``, once every byte was fed (the hasher is then spent)."""
        if self._piece is not None:
            self._outer.update(self._piece.digest())
            self._piece, self._piece_bytes = None, 0
        return self._outer.hexdigest()


def canonical_names(names: Iterable[str]) -> dict[str, str]:
    """Map each stored name to its canonical name (step 2): drop a shared base-model prefix.

    The prefix is the first component that every tensor outside :data:`HEAD_COMPONENTS` has,
    and only when each such name has more than one component. Names are kept when dropping it
    would make two names collide.
    """
    names = list(names)
    body = [n for n in names if n.split(".", 1)[0] not in HEAD_COMPONENTS]
    firsts = {n.split(".", 1)[0] for n in body}
    if len(firsts) != 1 or not all("." in n for n in body):
        return {n: n for n in names}
    prefix = next(iter(firsts)) + "."
    mapping = {n: n[len(prefix) :] if n.startswith(prefix) else n for n in names}
    if len(set(mapping.values())) != len(mapping):
        return {n: n for n in names}
    return mapping


def combine_digests(digests: Mapping[str, TensorDigest], config: Mapping[str, object]) -> str:
    """Steps 2-4: the fingerprint of stored-name -> digest, under ``config`` (``config.json``)."""
    canonical = canonical_names(digests)
    by_name = {canonical[name]: digest for name, digest in digests.items()}
    if _tie_flag(config) is not False:
        embedding = find_input_embedding(by_name)
        if embedding is not None:
            for head in OUTPUT_EMBEDDING_NAMES:
                if head in by_name and by_name[head] == by_name[embedding]:
                    logger.debug("fingerprint: leaving out %s, a copy of tied %s", head, embedding)
                    del by_name[head]
    outer = hashlib.sha256(FINGERPRINT_VERSION.encode() + b"\n")
    for name in sorted(by_name):
        digest = by_name[name]
        shape = json.dumps(list(digest.shape), separators=(",", ":"))
        line = f"{name}\0{digest.dtype}\0{shape}\0{digest.sha256}\n"
        outer.update(line.encode("utf-8", "surrogatepass"))
    return outer.hexdigest()


def _tie_flag(config: Mapping[str, object]) -> bool | None:
    value = config.get("tie_word_embeddings")
    text_config = config.get("text_config")
    if value is None and isinstance(text_config, dict):
        value = text_config.get("tie_word_embeddings")
    return None if value is None else bool(value)


# --- cache --------------------------------------------------------------------------------


def _file_identity(path: Path) -> dict[str, object]:
    stat = os.stat(path)
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "inode": stat.st_ino,
    }


def _cache_file(cache_dir: Path, identity: Mapping[str, object]) -> Path:
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8", "surrogatepass"))
    return cache_dir / "fingerprints" / f"{key.hexdigest()}.json"


def _cache_read(cache_dir: Path, identity: Mapping[str, object]) -> dict[str, TensorDigest] | None:
    path = _cache_file(cache_dir, identity)
    try:
        data = read_json_object(path, what="fingerprint cache entry", kind="cache")
        if data.get("version") != FINGERPRINT_VERSION or data.get("identity") != identity:
            return None
        tensors = data["tensors"]
        if not isinstance(tensors, dict):
            return None
        return {
            str(name): TensorDigest(str(dtype), tuple(int(d) for d in shape), str(sha))
            for name, (dtype, shape, sha) in tensors.items()
        }
    except (LoradexError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _cache_write(
    cache_dir: Path, identity: Mapping[str, object], digests: Mapping[str, TensorDigest]
) -> None:
    path = _cache_file(cache_dir, identity)
    data = {
        "version": FINGERPRINT_VERSION,
        "identity": dict(identity),
        "tensors": {n: [d.dtype, list(d.shape), d.sha256] for n, d in digests.items()},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:  # a cache that cannot be written only costs time
        logger.warning("fingerprint cache %s not written: %s", path, exc)


# --- checkpoints --------------------------------------------------------------------------


def _hash_safetensors_files(
    checkpoint: Checkpoint,
    files: list[Path],
    *,
    workers: int,
    progress: Progress | None,
) -> dict[Path, dict[str, TensorDigest]]:
    """tensor_sha256 of every tensor of ``files``, all pieces hashed in one thread pool."""
    per_file: dict[Path, list[tuple[str, str, tuple[int, ...], int, int]]] = {f: [] for f in files}
    for tensor in checkpoint.tensors.values():
        if tensor.file in per_file and tensor.info is not None:
            info = tensor.info
            per_file[tensor.file].append(
                (tensor.name, info.dtype, info.shape, info.start, info.end)
            )
    jobs: list[tuple[int, int, int]] = []  # (fd, offset, length)
    slots: dict[tuple[Path, str], slice] = {}
    fds: dict[Path, int] = {}
    local = threading.local()
    total = 0
    try:
        for file in files:
            try:
                fds[file] = os.open(file, os.O_RDONLY)
            except OSError as exc:
                raise CorruptFileError(f"{file}: cannot read ({exc.strerror})") from None
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fds[file], 0, 0, os.POSIX_FADV_SEQUENTIAL)
            for name, _dtype, _shape, start, end in per_file[file]:
                first = len(jobs)
                for offset in range(start, end, CHUNK_SIZE):
                    jobs.append((fds[file], offset, min(CHUNK_SIZE, end - offset)))
                slots[(file, name)] = slice(first, len(jobs))
                total += end - start

        def run(job: tuple[int, int, int]) -> bytes:
            fd, offset, length = job
            buffer = getattr(local, "buffer", None)
            if buffer is None:
                buffer = local.buffer = memoryview(bytearray(CHUNK_SIZE))
            view = buffer[:length]
            pread_exact(fd, view, offset, source="checkpoint shard")
            return hashlib.sha256(view).digest()

        pieces: list[bytes] = []
        done = 0
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fingerprint") as pool:
            for (_, _, length), piece in zip(jobs, pool.map(run, jobs), strict=True):
                pieces.append(piece)
                done += length
                if progress is not None:
                    progress(done, total)
    finally:
        for fd in fds.values():
            os.close(fd)
    result: dict[Path, dict[str, TensorDigest]] = {}
    for file in files:
        digests: dict[str, TensorDigest] = {}
        for name, dtype, shape, _start, _end in per_file[file]:
            outer = hashlib.sha256()
            for piece in pieces[slots[(file, name)]]:
                outer.update(piece)
            digests[name] = TensorDigest(dtype, shape, outer.hexdigest())
        result[file] = digests
    return result


def _hash_bin_file(checkpoint: Checkpoint, file: Path) -> dict[str, TensorDigest]:
    from mergetools.safetensors_io import tensor_bytes

    digests: dict[str, TensorDigest] = {}
    for tensor in checkpoint.tensors.values():
        if tensor.file == file:
            data = tensor_bytes(checkpoint.load(tensor.name))
            digests[tensor.name] = TensorDigest(tensor.dtype, tensor.shape, tensor_sha256(data))
    return digests


def default_workers() -> int:
    """Threads used for hashing: the cores this process may run on, at most 16."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 16))


def cached_tensor_digests(checkpoint: Checkpoint, cache_dir: Path) -> dict[str, TensorDigest]:
    """Stored name -> :class:`TensorDigest` of the tensors whose file has a valid cache entry in
    ``cache_dir`` (same identity, same names, dtypes and shapes); reads no tensor data and hashes
    nothing. A merge copying a tensor byte for byte reuses its digest from here."""
    digests: dict[str, TensorDigest] = {}
    for file in checkpoint.files:
        try:
            identity = _file_identity(file)
        except OSError:
            continue
        cached = _cache_read(cache_dir, identity)
        expected = {n: (t.dtype, t.shape) for n, t in checkpoint.tensors.items() if t.file == file}
        if cached is not None and {n: (d.dtype, d.shape) for n, d in cached.items()} == expected:
            digests.update(cached)
    return digests


def tensor_digests(
    checkpoint: Checkpoint,
    *,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> dict[str, TensorDigest]:
    """Stored name -> :class:`TensorDigest` for every tensor of an opened checkpoint."""
    digests: dict[str, TensorDigest] = {}
    identities: dict[Path, dict[str, object]] = {}
    missing: list[Path] = []
    for file in checkpoint.files:
        try:
            identities[file] = _file_identity(file)
        except OSError as exc:
            raise CorruptFileError(f"{file}: cannot read ({exc.strerror})") from None
        cached = _cache_read(cache_dir, identities[file]) if cache_dir is not None else None
        expected = {n: (t.dtype, t.shape) for n, t in checkpoint.tensors.items() if t.file == file}
        if cached is not None and {n: (d.dtype, d.shape) for n, d in cached.items()} == expected:
            digests.update(cached)
        else:
            missing.append(file)
    if missing:
        logger.info(
            "fingerprinting %d of %d files of %s",
            len(missing),
            len(checkpoint.files),
            checkpoint.path,
        )
        if checkpoint.format == "safetensors":
            fresh = _hash_safetensors_files(
                checkpoint, missing, workers=workers or default_workers(), progress=progress
            )
        else:
            fresh = {file: _hash_bin_file(checkpoint, file) for file in missing}
        for file, file_digests in fresh.items():
            digests.update(file_digests)
            if cache_dir is not None:
                _cache_write(cache_dir, identities[file], file_digests)
    return digests


def fingerprint_checkpoint(
    path: Path | Checkpoint,
    *,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> str:
    """The base fingerprint of a checkpoint folder (or an opened :class:`Checkpoint`), 64 hex digits.

    Reads every tensor byte once (streaming, one :data:`CHUNK_SIZE` buffer per worker thread)
    unless ``cache_dir`` holds digests for files whose identity has not changed.
    """
    checkpoint = path if isinstance(path, Checkpoint) else open_checkpoint(path)
    digests = tensor_digests(checkpoint, cache_dir=cache_dir, progress=progress)
    return combine_digests(digests, checkpoint.config)
