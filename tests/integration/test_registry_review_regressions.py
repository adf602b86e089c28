"""Regressions found in review of the registry (SQLite and PostgreSQL, like the other tests).

Each test names the defect it pins; they fail until the registry is fixed.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from mergetools.errors import InvalidInputError, LoradexError
from registry.inputs import EvalInput, ParentInput, parse_ref
from registry.search import SearchQuery, encode_cursor
from registry.service import Registry
from registry.settings import Settings

MakeAdapter = Callable[..., Path]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ export


def test_export_force_into_the_current_folder_does_not_wipe_it(
    registry: Registry,
    make_adapter: MakeAdapter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """export(out=Path('.'), force=True): the temp folder was made inside out (out.parent of '.'
    is '.'), then rmtree('.') deleted everything, including the export, and raised OSError."""
    folder = make_adapter(seed=1)
    registry.register(folder, name="a")
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("precious")
    monkeypatch.chdir(work)
    try:
        registry.export("a@1", Path("."), force=True)
    except LoradexError:
        assert (work / "keep.txt").exists(), "a refused export must not delete the folder"
    else:
        assert sha256_of(work / "adapter_model.safetensors") == sha256_of(
            folder / "adapter_model.safetensors"
        )


# ------------------------------------------------------------------------------ blob store


def test_registering_the_same_bytes_again_repairs_a_corrupt_blob(
    registry: Registry, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    """put_file skipped the write when a blob of the same size existed, without checking its
    bytes: the CorruptBlobError advice 're-register the adapter' could never heal it, and a new
    version under another name was accepted on top of the corrupt blob."""
    folder = make_adapter(seed=1)
    result = registry.register(folder, name="a")
    blob = registry.blobs.path_for(result.weights_sha256)  # type: ignore[attr-defined]
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1  # same size, different bytes
    blob.write_bytes(bytes(data))

    registry.register(folder, name="a")  # the advice of the error message
    registry.register(folder, name="b")
    assert registry.verify() == []
    out = registry.export("b@1", tmp_path / "out")
    assert sha256_of(out / "adapter_model.safetensors") == result.weights_sha256


def _register_during_the_reference_check(
    registry: Registry, other: Registry, folder: Path, name: str
) -> Callable[[], None]:
    """Make a concurrent register of ``folder`` commit while a deletion has moved the blob aside
    and is asking whether it is still referenced: the worst moment for the race."""
    real = registry._blob_referenced

    def referenced_after_a_concurrent_register(sha256: str) -> bool:
        other.register(folder, name=name)
        return real(sha256)

    registry._blob_referenced = referenced_after_a_concurrent_register  # type: ignore[method-assign]

    def undo() -> None:
        registry._blob_referenced = real  # type: ignore[method-assign]

    return undo


def test_purge_racing_a_register_of_the_same_bytes_keeps_the_blob(
    registry: Registry, make_adapter: MakeAdapter, settings: Settings, tmp_path: Path
) -> None:
    """A register of the same bytes that commits while delete --purge removes the blobs must not
    end up naming a removed blob: b@1 stays fetchable."""
    registry.register(make_adapter(seed=1), name="a")
    copy = make_adapter(seed=1)  # identical bytes, another folder
    other = Registry(settings, auto_upgrade=False)
    undo = _register_during_the_reference_check(registry, other, copy, "b")
    try:
        registry.delete("a@1", purge=True)
    finally:
        undo()
        other.close()
    assert registry.verify("b@1") == []
    registry.export("b@1", tmp_path / "out")


def test_gc_racing_a_register_of_the_same_bytes_keeps_the_blob(
    registry: Registry, make_adapter: MakeAdapter, settings: Settings, tmp_path: Path
) -> None:
    """gc must not remove an old orphan blob that a concurrent register starts to reference."""
    folder = make_adapter(seed=1)
    stored = registry.blobs.put_file(folder / "adapter_model.safetensors")
    config = registry.blobs.put_file(folder / "adapter_config.json")
    for sha in (stored.sha256, config.sha256):
        path = registry.blobs.path_for(sha)  # type: ignore[attr-defined]
        os.utime(path, (1_000_000, 1_000_000))  # old orphans, past any grace period
    other = Registry(settings, auto_upgrade=False)
    undo = _register_during_the_reference_check(registry, other, folder, "b")
    try:
        registry.gc(grace_s=3600)
    finally:
        undo()
        other.close()
    assert registry.verify("b@1") == []
    registry.export("b@1", tmp_path / "out")


# ------------------------------------------------------------------------------ register input


def test_duplicate_parent_is_invalid_input_not_a_retried_conflict(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    """Every IntegrityError was retried 8 times and reported as 'conflicted with concurrent
    writers' (ConflictError) — here the lineage unique constraint, which no retry can fix."""
    registry.register(make_adapter(seed=1), name="a")
    with pytest.raises(InvalidInputError):
        registry.register(
            make_adapter(seed=2), name="b", parents=[ParentInput("a@1"), ParentInput("a")]
        )


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_eval_values_are_refused_by_the_service(
    registry: Registry, make_adapter: MakeAdapter, value: float
) -> None:
    """parse_eval_spec refuses nan/inf but the use cases did not: SQLite turned NaN into NULL
    (NOT NULL -> 8 retries -> ConflictError), PostgreSQL stored it (NaN passes accuracy>=0.8)."""
    folder = make_adapter(seed=1)
    with pytest.raises(InvalidInputError):
        registry.register(folder, name="a", evals=[EvalInput("accuracy", value)])
    registry.register(folder, name="a")
    with pytest.raises(InvalidInputError):
        registry.add_evals("a@1", [EvalInput("accuracy", value)])


def test_overlong_tag_key_and_metric_are_invalid_input(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    """Tag keys and metric names are VARCHAR(200): PostgreSQL raised a raw DataError (a CLI
    traceback), SQLite stored them; both should refuse with the limit."""
    registry.register(make_adapter(seed=1), name="a")
    with pytest.raises(InvalidInputError):
        registry.set_tags("a@1", set_tags={"k" * 300: "v"})
    with pytest.raises(InvalidInputError):
        registry.add_evals("a@1", [EvalInput("m" * 300, 1.0)])


# ------------------------------------------------------------------------------ references


def test_non_ascii_digit_selector_is_invalid_input() -> None:
    """str.isdigit() is true for '²' and int('²') raises ValueError (a CLI traceback)."""
    with pytest.raises(InvalidInputError):
        parse_ref("a@²")


@pytest.mark.parametrize("ref", ["sha256:", "sha256:%", "sha256:_", "sha256:abc"])
def test_base_sha256_reference_needs_12_hex_digits(
    registry: Registry, tiny_base: Path, ref: str
) -> None:
    """get_base took any text after sha256: into LIKE: '' and '%' matched every base."""
    registry.add_base(tiny_base, name="tb")
    with pytest.raises(InvalidInputError):
        registry.get_base(ref)


# ------------------------------------------------------------------------------ cursors


def test_cursor_values_of_the_wrong_type_are_invalid_input(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    """decode_cursor checked only the length: PostgreSQL raised ProgrammingError, a None value
    raised ArgumentError, a dict could not be bound (CLI tracebacks); SQLite silently
    compared across types."""
    registry.register(make_adapter(seed=1), name="a", evals=[EvalInput("accuracy", 0.5)])
    with pytest.raises(InvalidInputError):
        registry.list_adapters(after=encode_cursor([1]))
    with pytest.raises(InvalidInputError):
        registry.search(SearchQuery(after=encode_cursor(["a", "x"])))
    with pytest.raises(InvalidInputError):
        registry.search(SearchQuery(sort="accuracy", after=encode_cursor([None, None])))
    with pytest.raises(InvalidInputError):
        registry.search(SearchQuery(after=encode_cursor([{"x": 1}, 1])))


# ------------------------------------------------------------------------------ aliases


def test_concurrent_first_set_of_an_alias_does_not_raise_integrity_error(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    """set_alias locks the alias row FOR UPDATE, which locks nothing when the alias is new: on
    PostgreSQL two first sets both insert and one dies with a raw IntegrityError."""
    registry.register(make_adapter(seed=1), name="a")
    registry.register(make_adapter(seed=2), name="a")
    errors: list[BaseException] = []
    for round_ in range(10):
        barrier = threading.Barrier(4)

        def work(
            version: int, alias: str = f"al{round_}", barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            try:
                registry.set_alias(f"a@{version}", alias)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(1 + k % 2,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    for round_ in range(10):
        history = registry.alias_history("a", f"al{round_}")
        assert len(history) == 4 and history[0].from_version is None
        assert all(
            h.from_version == p.to_version for p, h in zip(history, history[1:], strict=False)
        )


# ------------------------------------------------------------------------------ schema guard


def test_unreachable_postgres_is_not_reported_as_an_empty_schema(tmp_path: Path) -> None:
    """current_revision() swallowed every OperationalError, so a server that is down was
    reported as 'has no registry schema yet ... run `loradex db upgrade`'."""
    settings = Settings(
        home=tmp_path / "home",
        database_url="postgresql://postgres@127.0.0.1:1/nowhere",
        user="tester",
    )
    with pytest.raises(LoradexError) as info:
        Registry(settings)
    assert "no registry schema" not in str(info.value)
    assert "db upgrade" not in str(info.value)
