"""loradex's safetensors header validation accepts exactly what the official loader accepts.

Each handcrafted file goes through ``safetensors.safe_open`` (header validation only: open and
list the keys) and through :func:`mergetools.safetensors_io.read_header`. Where loradex is
deliberately stricter, the case is listed in ``STRICTER`` with the reason; everything else must
agree both ways.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from safetensors import safe_open

from mergetools.errors import CorruptFileError
from mergetools.safetensors_io import read_header

E = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def _file(header: bytes, data: bytes, *, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def _j(obj: object) -> bytes:
    return json.dumps(obj).encode()


CASES: dict[str, bytes] = {
    "valid": _file(_j({"a": E}), b"\0" * 8),
    "valid_with_metadata": _file(_j({"__metadata__": {"format": "pt"}, "a": E}), b"\0" * 8),
    "empty_header": _file(b"{}", b""),
    "scalar_tensor": _file(
        _j({"a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}), b"\0" * 4
    ),
    "zero_size_tensors": _file(
        _j({"z": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, "a": E}), b"\0" * 8
    ),
    "padded_with_spaces": _file(_j({"a": E}) + b"    ", b"\0" * 8),
    "padded_with_json_whitespace": _file(_j({"a": E}) + b"\t\r\n ", b"\0" * 8),
    "metadata_null": _file(_j({"__metadata__": None, "a": E}), b"\0" * 8),
    "extra_entry_key": _file(_j({"a": {**E, "note": "x"}}), b"\0" * 8),
    "surrogate_pair_name": _file(b'{"\\ud83d\\ude00":' + _j(E) + b"}", b"\0" * 8),
    "two_tensors": _file(
        _j({"b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]}, "a": E}), b"\0" * 16
    ),
    # invalid
    "too_short": b"\x02\x00\x00",
    "length_past_end": _file(_j({"a": E}), b"\0" * 8, length=10_000),
    "length_above_cap": _file(_j({"a": E}), b"\0" * 8, length=100_000_001),
    "length_zero": _file(b"", b"{}"),
    "truncated_data": _file(_j({"a": E}), b"\0" * 7),
    "trailing_bytes": _file(_j({"a": E}), b"\0" * 9),
    "gap_before_tensor": _file(_j({"a": {**E, "data_offsets": [4, 12]}}), b"\0" * 12),
    "overlapping_tensors": _file(_j({"a": E, "b": E}), b"\0" * 8),
    "offsets_reversed": _file(_j({"a": {**E, "data_offsets": [8, 0]}}), b"\0" * 8),
    "offsets_three": _file(_j({"a": {**E, "data_offsets": [0, 8, 8]}}), b"\0" * 8),
    "offsets_float": _file(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}}', b"\0" * 8),
    "size_disagrees_with_shape": _file(_j({"a": {**E, "shape": [3]}}), b"\0" * 8),
    "negative_dim": _file(_j({"a": {**E, "shape": [-2]}}), b"\0" * 8),
    "negative_zero_dim": _file(b'{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}', b""),
    "bool_dim": _file(_j({"a": {**E, "shape": [True, 2]}}), b"\0" * 8),
    "dim_above_u64": _file(_j({"a": {**E, "shape": [2**70]}}), b"\0" * 8),
    "element_count_overflow": _file(
        _j({"a": {"dtype": "F32", "shape": [2**40, 2**40, 0], "data_offsets": [0, 0]}}), b""
    ),
    "unknown_dtype": _file(_j({"a": {**E, "dtype": "F33"}}), b"\0" * 8),
    "lowercase_dtype": _file(_j({"a": {**E, "dtype": "f32"}}), b"\0" * 8),
    "missing_dtype": _file(_j({"a": {"shape": [2], "data_offsets": [0, 8]}}), b"\0" * 8),
    "null_entry": _file(_j({"a": None}), b""),
    "metadata_int_value": _file(_j({"__metadata__": {"x": 1}, "a": E}), b"\0" * 8),
    "metadata_list": _file(_j({"__metadata__": ["x"]}), b""),
    "metadata_is_a_tensor": _file(_j({"__metadata__": E}), b"\0" * 8),
    "not_json": _file(b"{abc", b""),
    "json_array": _file(b"[1, 2]", b""),
    "trailing_json": _file(_j({"a": E}) + b"{}", b"\0" * 8),
    "nul_padding": _file(_j({"a": E}) + b"\0\0", b"\0" * 8),
    "nan_literal": _file(b'{"__metadata__":{"x":NaN}}', b""),
    "nan_in_extra_key": _file(
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":NaN}}', b"\0" * 8
    ),
    "huge_float_in_extra_key": _file(
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1e400}}', b"\0" * 8
    ),
    "lone_surrogate_name": _file(b'{"\\ud800":' + _j(E) + b"}", b"\0" * 8),
    "lone_surrogate_metadata": _file(b'{"__metadata__":{"x":"\\udc00"}}', b""),
    "invalid_utf8": _file(b'{"\xff":' + _j(E) + b"}", b"\0" * 8),
    "utf8_bom": _file(b"\xef\xbb\xbf" + _j({"a": E}), b"\0" * 8),
    "deeply_nested": _file(
        b'{"__metadata__":{"x":"y"},"z":' + b"[" * 5000 + b"]" * 5000 + b"}", b""
    ),
    "duplicate_inside_entry_dtype": _file(
        b'{"a":{"dtype":"F16","dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8
    ),
}

STRICTER: dict[str, str] = {
    # The official loader keeps one of the duplicates; Python's json keeps the last. A file that
    # reads differently in two parsers is refused (DESIGN.md §3).
    "duplicate_tensor": "duplicate keys",
    "duplicate_metadata_key": "duplicate keys",
    "duplicate_unknown_entry_key": "duplicate keys",
    # The format spec says the header MUST begin with '{'; safetensors' own check is disabled.
    "leading_space": "header must start with '{'",
    "leading_newline": "header must start with '{'",
    # Dtypes the format knows but loradex cannot fold or write (complex, sub-byte, e8m0 scales).
    "dtype_c64": "unsupported dtype",
    "dtype_f8_e8m0": "unsupported dtype",
    "dtype_f4": "unsupported dtype",
}

STRICT_CASES: dict[str, bytes] = {
    "duplicate_tensor": _file(b'{"a":' + _j(E) + b',"a":' + _j(E) + b"}", b"\0" * 8),
    "duplicate_metadata_key": _file(
        b'{"__metadata__":{"x":"1","x":"2"},"a":' + _j(E) + b"}", b"\0" * 8
    ),
    "duplicate_unknown_entry_key": _file(
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1,"x":2}}', b"\0" * 8
    ),
    "leading_space": _file(b" " + _j({"a": E}), b"\0" * 8),
    "leading_newline": _file(b"\n" + _j({"a": E}), b"\0" * 8),
    "dtype_c64": _file(_j({"a": {**E, "dtype": "C64", "shape": [1]}}), b"\0" * 8),
    "dtype_f8_e8m0": _file(_j({"a": {**E, "dtype": "F8_E8M0", "shape": [8]}}), b"\0" * 8),
    "dtype_f4": _file(_j({"a": {**E, "dtype": "F4", "shape": [16]}}), b"\0" * 8),
}


def official_accepts(path: Path) -> bool:
    try:
        with safe_open(str(path), "np") as handle:
            list(handle.keys())
    except Exception:
        return False
    return True


def loradex_accepts(path: Path) -> bool:
    try:
        read_header(path)
    except CorruptFileError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_verdict_as_the_official_loader(tmp_path: Path, name: str) -> None:
    path = tmp_path / "f.safetensors"
    path.write_bytes(CASES[name])
    assert loradex_accepts(path) == official_accepts(path), name


@pytest.mark.parametrize("name", sorted(STRICT_CASES))
def test_deliberately_stricter_than_the_official_loader(tmp_path: Path, name: str) -> None:
    path = tmp_path / "f.safetensors"
    path.write_bytes(STRICT_CASES[name])
    assert official_accepts(path), f"{name}: the official loader now refuses it; move it to CASES"
    with pytest.raises(CorruptFileError) as info:
        read_header(path)
    reason = STRICTER[name]
    words = {"duplicate keys": "duplicate key", "header must start with '{'": "start with '{'"}
    assert words.get(reason, "dtype") in str(info.value)


def test_both_sides_are_exercised() -> None:
    verdicts = []
    for name, blob in CASES.items():
        try:
            from mergetools.safetensors_io import parse_header

            parse_header(blob, file_size=len(blob), source=name)
            verdicts.append(True)
        except CorruptFileError:
            verdicts.append(False)
    assert sum(verdicts) >= 10 and verdicts.count(False) >= 30


def test_error_messages_name_the_problem(tmp_path: Path) -> None:
    cases = {
        "duplicate": (STRICT_CASES["duplicate_tensor"], "duplicate key 'a'"),
        "gap": (CASES["gap_before_tensor"], "leaves a gap"),
        "overlap": (CASES["overlapping_tensors"], "overlaps the previous tensor"),
        "trailing": (CASES["trailing_bytes"], "1 trailing bytes"),
        "length": (CASES["length_past_end"], "runs past the end of the file"),
        "cap": (CASES["length_above_cap"], "exceeds the 100000000-byte limit"),
        "size": (CASES["size_disagrees_with_shape"], "8 bytes for shape [3] of F32, expected 12"),
        "dtype": (CASES["unknown_dtype"], "dtype 'F33'"),
        "metadata": (CASES["metadata_int_value"], "__metadata__ must map strings to strings"),
        "surrogate": (CASES["lone_surrogate_name"], "lone surrogate"),
    }
    for name, (blob, text) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(blob)
        with pytest.raises(CorruptFileError) as info:
            read_header(path)
        assert text in str(info.value), (name, str(info.value))
        assert str(path) in str(info.value)


def test_missing_file_and_folder_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CorruptFileError, match="file not found"):
        read_header(tmp_path / "absent.safetensors")
    with pytest.raises(CorruptFileError, match="is a directory"):
        read_header(tmp_path)
