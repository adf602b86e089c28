"""Read and write safetensors files as raw bytes, validating untrusted headers.

Format (all of it; a file that breaks any MUST is rejected before a tensor is read):

- bytes 0..8: ``N``, the header length, unsigned 64-bit little-endian. MUST be at most
  :data:`MAX_HEADER_SIZE` and at most the file size minus 8.
- bytes 8..8+N: a UTF-8 JSON object, possibly padded with trailing spaces. Keys MUST be unique.
  ``__metadata__`` MAY map str -> str. Every other key names a tensor:
  ``{"dtype": D, "shape": [int, ...], "data_offsets": [begin, end]}`` with ``D`` a known dtype.
- the rest: the tensors' raw little-endian bytes. Offsets are relative to the start of this
  section; sorted by begin, the tensors MUST tile it exactly (no gap, no overlap, no trailing
  bytes) and each ``end - begin`` MUST equal ``prod(shape) * itemsize(dtype)``.

Reading a header imports nothing heavy; only :func:`read_tensor` and :class:`SafetensorsWriter`
touch torch, and they import it when called.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mergetools.errors import CorruptFileError, InvalidInputError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

MAX_HEADER_SIZE = 100_000_000
"""The official loader's cap on the JSON header length, in bytes."""

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}
"""Bytes per element of every dtype loradex reads and writes."""

FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "F8_E5M2", "F8_E4M3"})

_COPY_CHUNK = 1 << 30


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """Where one tensor's bytes lie in its file.

    ``start`` and ``end`` are absolute file offsets (header included), so a reader can
    ``pread(fd, end - start, start)`` directly.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    """The validated header of one safetensors file."""

    path: Path
    tensors: dict[str, TensorInfo]
    """Tensors in the order of their bytes in the file."""
    metadata: dict[str, str] | None
    data_start: int
    file_size: int


_MAX_U64 = 2**64 - 1


def _check_strings(value: object) -> None:
    """Refuse lone surrogates (``"\\ud800"``): valid to Python's json, invalid JSON to the official loader."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _BadJson(f"string {value[:40]!r} holds a lone surrogate escape") from None
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        _check_strings(key)
        _check_strings(value)
        result[key] = value
    return result


def _parse_int(text: str) -> int | float:
    # "-0" is not an unsigned integer to the official loader; a float sentinel fails every int check.
    return -0.0 if text.startswith("-") and int(text) == 0 else int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _BadJson(f"number {text[:40]} is out of range")
    return value


def _parse_constant(text: str) -> float:
    raise _BadJson(f"{text} is not valid JSON")


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _BadJson(Exception):
    pass


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_header(
    raw: bytes, *, file_size: int, source: str = "<bytes>"
) -> tuple[dict[str, TensorInfo], dict[str, str] | None, int]:
    """Validate the first bytes of a safetensors file and return its tensor table.

    ``raw`` holds at least the 8-byte length prefix and the JSON header; ``file_size`` is
    the size of the whole file. Returns ``(tensors, metadata, data_start)``. Raises
    :class:`CorruptFileError` naming ``source`` for every violation of the format.
    """

    def fail(reason: str) -> CorruptFileError:
        return CorruptFileError(f"{source}: not a valid safetensors file: {reason}")

    if file_size < 8 or len(raw) < 8:
        raise fail(f"file is {file_size} bytes, shorter than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", raw[:8])
    if header_len > MAX_HEADER_SIZE:
        raise fail(f"header length {header_len} exceeds the {MAX_HEADER_SIZE}-byte limit")
    if header_len > file_size - 8:
        raise fail(
            f"header length {header_len} runs past the end of the file ({file_size} bytes); "
            "the file is truncated or the length is wrong"
        )
    if header_len < 2:
        raise fail(f"header length {header_len} is too small for a JSON object")
    if len(raw) < 8 + header_len:
        raise fail(f"expected {header_len} header bytes, got {len(raw) - 8}")
    text_bytes = raw[8 : 8 + header_len]
    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.startswith("{"):
        raise fail("header does not start with '{'")
    try:
        header = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except _DuplicateKey as exc:
        raise fail(f"duplicate key {exc.key!r} in the header") from None
    except (ValueError, RecursionError, _BadJson) as exc:
        raise fail(f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")

    metadata: dict[str, str] | None = None
    if "__metadata__" in header:
        raw_meta = header.pop("__metadata__")
        if raw_meta is None:  # the official loader reads null as "no metadata"
            raw_meta = {}
        if not isinstance(raw_meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_meta.items()
        ):
            raise fail("__metadata__ must map strings to strings")
        metadata = dict(raw_meta)

    data_start = 8 + header_len
    data_size = file_size - data_start
    entries: list[TensorInfo] = []
    for name, entry in header.items():
        # Unknown extra keys are ignored, as the official loader does.
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise fail(f"tensor {name!r}: expected keys dtype, shape, data_offsets, got {entry!r}"[:300])
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise fail(
                f"tensor {name!r}: unknown or unsupported dtype {dtype!r}; expected one of {sorted(DTYPE_SIZES)}"[:300]
            )
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise fail(f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}"[:300])
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise fail(f"tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}"[:300])
        begin, end = offsets
        numel = 1
        for dim in shape:  # the official loader multiplies in u64 and refuses an overflow
            numel *= dim
            if numel > _MAX_U64:
                raise fail(f"tensor {name!r}: shape {shape} overflows a 64-bit element count"[:300])
        if end > data_size:
            raise fail(
                f"tensor {name!r}: data_offsets {offsets} run past the data section ({data_size} bytes)"
            )
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != expected:
            raise fail(
                f"tensor {name!r}: {end - begin} bytes for shape {shape} of {dtype}, expected {expected}"
            )
        entries.append(TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end))

    entries.sort(key=lambda info: (info.start, info.end))
    cursor = data_start
    for info in entries:
        if info.start != cursor:
            kind = "overlaps the previous tensor" if info.start < cursor else "leaves a gap before it"
            raise fail(f"tensor {info.name!r} {kind} (starts at {info.start - data_start}, expected {cursor - data_start})")
        cursor = info.end
    if cursor != file_size:
        raise fail(f"{file_size - cursor} trailing bytes after the last tensor")
    return {info.name: info for info in entries}, metadata, data_start


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file at ``path``."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) == 8:
                (header_len,) = struct.unpack("<Q", prefix)
                if header_len <= min(MAX_HEADER_SIZE, file_size - 8):
                    prefix += handle.read(header_len)
    except FileNotFoundError:
        raise CorruptFileError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CorruptFileError(f"{path}: is a directory, expected a safetensors file") from None
    except OSError as exc:
        raise CorruptFileError(f"{path}: cannot read ({exc.strerror})") from None
    tensors, metadata, data_start = parse_header(prefix, file_size=file_size, source=str(path))
    return SafetensorsHeader(path, tensors, metadata, data_start, file_size)


# --- torch interop (imported lazily) -------------------------------------------------------


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name."""
    import torch

    mapping = {
        "BOOL": torch.bool,
        "U8": torch.uint8,
        "I8": torch.int8,
        "F8_E5M2": torch.float8_e5m2,
        "F8_E4M3": torch.float8_e4m3fn,
        "I16": torch.int16,
        "U16": torch.uint16,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I32": torch.int32,
        "U32": torch.uint32,
        "F32": torch.float32,
        "F64": torch.float64,
        "I64": torch.int64,
        "U64": torch.uint64,
    }
    return mapping[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors dtype name of a torch dtype."""
    for name in DTYPE_SIZES:
        if torch_dtype(name) == dtype:
            return name
    raise InvalidInputError(f"dtype {dtype} cannot be stored in safetensors")


def pread_exact(fd: int, buffer: bytearray | memoryview, offset: int, *, source: str = "") -> None:
    """Fill ``buffer`` with the bytes of ``fd`` starting at ``offset``."""
    view = memoryview(buffer).cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise CorruptFileError(f"{source}: unexpected end of file at byte {offset + done}")
        done += n


def read_tensor(fd: int, info: TensorInfo, *, source: str = "") -> torch.Tensor:
    """Read one tensor's bytes from an open file into a fresh CPU tensor."""
    import torch

    dtype = torch_dtype(info.dtype)
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=dtype)
    buffer = bytearray(info.nbytes)
    pread_exact(fd, buffer, info.start, source=source)
    return torch.frombuffer(buffer, dtype=dtype).reshape(info.shape)


def read_tensor_from(path: Path, info: TensorInfo) -> torch.Tensor:
    """Open ``path``, read one tensor into a fresh CPU tensor, close."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_tensor(fd, info, source=str(path))
    finally:
        os.close(fd)


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor, without copying when contiguous."""
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    array = flat.view(torch.uint8).numpy()
    return memoryview(array.data).cast("B")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor to be written: its name, safetensors dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def build_header(
    specs: Iterable[TensorSpec], metadata: Mapping[str, str] | None
) -> tuple[bytes, dict[str, TensorInfo]]:
    """Lay out tensors in the given order; return the header bytes and each tensor's place."""
    specs = list(specs)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    relative: list[tuple[TensorSpec, int, int]] = []
    for spec in specs:
        if spec.name in header or spec.name == "__metadata__":
            raise InvalidInputError(f"tensor name {spec.name!r} appears twice")
        header[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        relative.append((spec, offset, offset + spec.nbytes))
        offset += spec.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    data_start = 8 + len(text)
    places = {
        spec.name: TensorInfo(spec.name, spec.dtype, spec.shape, data_start + begin, data_start + end)
        for spec, begin, end in relative
    }
    return struct.pack("<Q", len(text)) + text, places


class SafetensorsWriter:
    """Write a safetensors file whose layout is fixed up front, tensor bytes in any order.

    The header is written first; each tensor's bytes are then placed with ``pwrite`` or
    copied from another file with ``copy_file_range`` (no decoding), from any number of
    threads (one thread per tensor at a time). Use as a context manager; :meth:`close` checks
    that every byte was written.

    ``write_behind`` starts the kernel's write-back of each written range at once
    (:class:`mergetools.syncio.WriteBehind`), so ``close(fsync=True)`` waits for little.

    ``digests`` hashes the file while it is written: as soon as the tensors before one are
    complete, its bytes are read back once from the page cache (just written, so no disk read)
    in :data:`mergetools.fingerprint.CHUNK_SIZE` pieces and fed to the file's sha256 and to the
    tensor's ``tensor_sha256``. Tensors may complete in any order and be written in any order
    of their parts: bytes are hashed in file order, only once complete. After :meth:`close`,
    :attr:`sha256` is the hex sha256 of the whole file (what ``sha256_file`` gives) and
    :attr:`tensor_sha256` maps each tensor to its fingerprint digest. A tensor copied with a
    digest already known (:meth:`copy_from` ``tensor_sha256=``, e.g. the base's cached one) only
    feeds the file's sha256: one hash pass over its bytes instead of two.

    :attr:`seconds` sums, over threads, the time spent in :meth:`write` (``write``: ``pwrite``
    and write-back requests) and in hashing (``hash``); :meth:`thread_seconds` is the same for
    the calling thread only (callers subtract it to time their own work).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        specs: Iterable[TensorSpec],
        *,
        metadata: Mapping[str, str] | None = None,
        digests: bool = False,
        write_behind: bool = False,
    ) -> None:
        from mergetools.syncio import WriteBehind

        self.path = Path(path)
        header, self.places = build_header(specs, metadata)
        self.size = len(header) + sum(p.nbytes for p in self.places.values())
        self._written = dict.fromkeys(self.places, 0)
        self._order = list(self.places)  # layout order
        self._complete = {n for n, p in self.places.items() if p.nbytes == 0}
        self._lock = threading.Lock()
        self._cursor = 0
        self._hashing = False
        self._hash_failed = False
        self._local = threading.local()
        self._file_sha = hashlib.sha256(header) if digests else None
        self.tensor_sha256: dict[str, str] = {}
        self._known_sha256: dict[str, str] = {}
        self.sha256: str | None = None
        self.seconds = {"write": 0.0, "hash": 0.0}
        flags = (os.O_RDWR if digests else os.O_WRONLY) | os.O_CREAT | os.O_TRUNC
        self.fd = os.open(self.path, flags, 0o644)
        try:
            self._pwrite(memoryview(header), 0)
            os.ftruncate(self.fd, self.size)
            self.behind = WriteBehind(self.fd, enabled=write_behind)
            self.behind.written(0, len(header), stream="header")
            self.behind.finish("header")
        except BaseException:
            os.close(self.fd)
            raise

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            self.close()
        else:
            self.abort()

    def thread_seconds(self) -> tuple[float, float]:
        """(write, hash) seconds spent so far by the calling thread in this writer."""
        spent = getattr(self._local, "seconds", None)
        return (spent[0], spent[1]) if spent is not None else (0.0, 0.0)

    def _spend(self, key: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        spent = getattr(self._local, "seconds", None)
        if spent is None:
            spent = self._local.seconds = [0.0, 0.0]
        spent[0 if key == "write" else 1] += elapsed
        with self._lock:
            self.seconds[key] += elapsed

    def _pwrite(self, data: memoryview, offset: int) -> None:
        done = 0
        while done < len(data):
            done += os.pwrite(self.fd, data[done:], offset + done)

    def _wrote(self, name: str, nbytes: int) -> None:
        """Count ``nbytes`` more of tensor ``name``; when it is complete, hash what is ready."""
        place = self.places[name]
        with self._lock:
            self._written[name] += nbytes
            complete = self._written[name] == place.nbytes and name not in self._complete
            if complete:
                self._complete.add(name)
        if complete:
            self.behind.finish(name)
            if self._file_sha is not None:
                self._hash_ready()

    def write(self, name: str, data: memoryview | bytes, *, offset: int = 0) -> None:
        """Write ``data`` into tensor ``name`` starting ``offset`` bytes into its storage."""
        place = self.places[name]
        data = memoryview(data).cast("B")
        if offset + len(data) > place.nbytes:
            raise ValueError(f"{name}: write of {len(data)} bytes at {offset} overflows {place.nbytes}")
        started = time.perf_counter()
        self._pwrite(data, place.start + offset)
        self.behind.written(place.start + offset, len(data), stream=name)
        self._spend("write", started)
        self._wrote(name, len(data))

    def write_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Write a whole CPU tensor (its dtype and shape must match the layout)."""
        self.write(name, tensor_bytes(tensor))

    def copy_from(
        self, name: str, src_fd: int, src_offset: int, *, tensor_sha256: str | None = None
    ) -> None:
        """Copy tensor ``name``'s bytes from ``src_fd`` at ``src_offset`` without decoding.

        ``tensor_sha256``: the copied bytes' fingerprint digest when the caller knows it (the
        source's cached digest); it is then reported as is and not computed again."""
        place = self.places[name]
        if tensor_sha256 is not None:
            with self._lock:
                self._known_sha256[name] = tensor_sha256
        remaining, src, dst = place.nbytes, src_offset, place.start
        try:
            while remaining:
                n = os.copy_file_range(src_fd, self.fd, min(remaining, _COPY_CHUNK), src, dst)
                if n == 0:
                    raise CorruptFileError(f"{name}: source ended early while copying")
                self.behind.written(dst, n, stream=name)
                remaining, src, dst = remaining - n, src + n, dst + n
        except OSError:
            # Different file systems or no kernel support: fall back to plain reads.
            while remaining:
                chunk = memoryview(bytearray(min(remaining, 64 << 20)))
                pread_exact(src_fd, chunk, src)
                self._pwrite(chunk, dst)
                self.behind.written(dst, len(chunk), stream=name)
                remaining, src, dst = remaining - len(chunk), src + len(chunk), dst + len(chunk)
        self._wrote(name, place.nbytes)

    # --- hashing in file order ------------------------------------------------------------

    def _hash_ready(self) -> None:
        """Hash every complete tensor at the hashing cursor; one thread at a time does it,
        the others only mark their tensors complete and carry on writing."""
        with self._lock:
            if self._hashing or self._hash_failed:
                return
            self._hashing = True
        try:
            while True:
                with self._lock:
                    if self._cursor < len(self._order) and self._order[self._cursor] in self._complete:
                        name = self._order[self._cursor]
                        self._cursor += 1
                    else:
                        self._hashing = False
                        return
                self._hash_tensor(name)
        except BaseException:
            with self._lock:
                self._hash_failed = True
                self._hashing = False
            raise

    def _hash_tensor(self, name: str) -> None:
        from mergetools.fingerprint import CHUNK_SIZE, TensorHasher

        assert self._file_sha is not None
        started = time.perf_counter()
        place = self.places[name]
        with self._lock:
            known = self._known_sha256.get(name)
        hasher = TensorHasher() if known is None else None
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = memoryview(bytearray(CHUNK_SIZE))
        for offset in range(place.start, place.end, CHUNK_SIZE):
            view = buffer[: min(CHUNK_SIZE, place.end - offset)]
            pread_exact(self.fd, view, offset, source=str(self.path))
            self._file_sha.update(view)
            if hasher is not None:
                hasher.update(view)
        self.tensor_sha256[name] = hasher.hexdigest() if hasher is not None else str(known)
        self._spend("hash", started)

    # --- finishing ------------------------------------------------------------------------

    def abort(self) -> None:
        """Close the file without checking it (the caller removes it)."""
        os.close(self.fd)

    def close(self, *, fsync: bool = False) -> None:
        """Check completeness, optionally make the file durable (``fdatasync``), and close it."""
        from mergetools.syncio import fdatasync

        try:
            missing = [n for n, p in self.places.items() if self._written[n] != p.nbytes]
            if missing:
                raise RuntimeError(f"{self.path}: tensors not fully written: {missing[:5]}")
            self.behind.flush_all()
            if self._file_sha is not None:
                self._hash_ready()  # tensors of no bytes at the end are complete from the start
                if self._cursor != len(self._order):
                    raise RuntimeError(f"{self.path}: hashing stopped at tensor {self._cursor}")
                self.sha256 = self._file_sha.hexdigest()
            if fsync:
                fdatasync(self.fd)
        finally:
            os.close(self.fd)


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
    fsync: bool = False,
) -> None:
    """Write CPU tensors to one safetensors file (metadata gets ``format: pt``)."""
    meta = {"format": "pt", **(metadata or {})}
    specs = [TensorSpec(n, dtype_name(t.dtype), tuple(t.shape)) for n, t in tensors.items()]
    writer = SafetensorsWriter(path, specs, metadata=meta)
    try:
        for name, tensor in tensors.items():
            writer.write_tensor(name, tensor.cpu())
    except BaseException:
        writer.abort()
        raise
    writer.close(fsync=fsync)
