"""Property-based tests: random and mutated headers never escape as anything but CorruptFileError.

Also a differential property: for structurally plausible random headers, loradex's verdict equals
the official loader's (outside the documented stricter cases: duplicates, leading whitespace and
dtypes loradex does not support, which these strategies do not generate).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from mergetools.errors import CorruptFileError, LoradexError
from mergetools.safetensors_io import DTYPE_SIZES, MAX_HEADER_SIZE, parse_header, read_header

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_file(
    names_shapes: list[tuple[str, str, list[int]]], metadata: dict[str, str] | None
) -> bytes:
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in names_shapes:
        size = DTYPE_SIZES[dtype]
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"\x01" * offset


names = st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__")
tensors = st.lists(
    st.tuples(names, st.sampled_from(sorted(DTYPE_SIZES)), st.lists(st.integers(0, 4), max_size=3)),
    max_size=4,
    unique_by=lambda t: t[0],
)
metadata = st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)


def _parse(blob: bytes) -> bool:
    try:
        parse_header(blob, file_size=len(blob), source="fuzz")
    except CorruptFileError:
        return False
    return True


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes(blob: bytes) -> None:
    _parse(blob)


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 2**64 - 1), st.binary(max_size=64))
def test_random_header_text_with_any_length(text: bytes, length: int, tail: bytes) -> None:
    blob = struct.pack("<Q", length) + text + tail
    _parse(blob)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**65), 2**65)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5), st.integers(0, 64))
def test_random_json_objects(header: dict[str, object], data_len: int) -> None:
    text = json.dumps(header).encode()
    _parse(struct.pack("<Q", len(text)) + text + b"\0" * data_len)


@FUZZ
@given(tensors, metadata, st.data())
def test_mutated_valid_files(
    entries: list[tuple[str, str, list[int]]], meta: dict[str, str] | None, data: st.DataObject
) -> None:
    blob = bytearray(_valid_file(entries, meta))
    assert _parse(bytes(blob))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "length"]))
        if kind == "flip" and blob:
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            del blob[data.draw(st.integers(0, len(blob))) :]
        elif kind == "insert":
            i = data.draw(st.integers(0, len(blob)))
            blob[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and blob:
            i = data.draw(st.integers(0, len(blob) - 1))
            del blob[i : i + data.draw(st.integers(1, 8))]
        elif kind == "length" and len(blob) >= 8:
            blob[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    _parse(bytes(blob))


def _official(blob: bytes) -> bool:
    fd, path = tempfile.mkstemp(suffix=".safetensors")
    try:
        os.write(fd, blob)
        os.close(fd)
        try:
            with safe_open(path, "np") as handle:
                list(handle.keys())
        except Exception:
            return False
        return True
    finally:
        os.unlink(path)


@settings(max_examples=200, deadline=None)
@given(tensors, metadata, st.data())
def test_same_verdict_as_official_loader_on_plausible_headers(
    entries: list[tuple[str, str, list[int]]], meta: dict[str, str] | None, data: st.DataObject
) -> None:
    blob = bytearray(_valid_file(entries, meta))
    # Plausible corruptions: data length, one shape dim, one offset, the length prefix.
    kind = data.draw(st.sampled_from(["none", "data", "shape", "offset", "length"]))
    if kind == "data":
        if data.draw(st.booleans()):
            blob += b"\0" * data.draw(st.integers(1, 5))
        else:
            del blob[len(blob) - data.draw(st.integers(0, 5)) :]
    elif kind in ("shape", "offset") and entries:
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(bytes(blob[8 : 8 + n]))
        name = data.draw(st.sampled_from([e[0] for e in entries]))
        if kind == "shape":
            header[name]["shape"] = data.draw(st.lists(st.integers(0, 5), max_size=3))
        else:
            header[name]["data_offsets"][data.draw(st.integers(0, 1))] += data.draw(
                st.integers(-3, 3)
            )
            header[name]["data_offsets"] = [max(0, o) for o in header[name]["data_offsets"]]
        text = json.dumps(header).encode()
        blob = bytearray(struct.pack("<Q", len(text)) + text + bytes(blob[8 + n :]))
    elif kind == "length":
        (n,) = struct.unpack("<Q", blob[:8])
        blob[:8] = struct.pack("<Q", max(0, n + data.draw(st.integers(-3, 3))))
    assert _parse(bytes(blob)) == _official(bytes(blob))


def test_lying_length_does_not_allocate(tmp_path) -> None:
    path = tmp_path / "liar.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_SIZE) + b"{}")
    tracemalloc.start()
    try:
        with contextlib.suppress(LoradexError):
            read_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
