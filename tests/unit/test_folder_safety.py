"""Nothing outside a folder is read: links leaving it and special files are refused, everywhere
a folder is read (register, check, inspect, merge — adapters and bases); JSON and text files
have size limits."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from mergetools import files as files_module
from mergetools.errors import InvalidAdapterError, InvalidCheckpointError, InvalidInputError
from mergetools.folder import Folder

MakeAdapter = Callable[..., Path]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result: Result, *needles: str) -> str:
    assert result.exit_code == 1, (result.output, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_text("TOP SECRET\n")
    return path


# --- the helper ---------------------------------------------------------------------------------


def test_folder_refuses_links_leaving_it_and_special_files(tmp_path: Path, secret: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "real.json").write_text("{}")
    (folder / "inside").symlink_to("real.json")
    (folder / "outside").symlink_to(secret)
    (folder / "dotdot").symlink_to("../outside/secret.txt")
    (folder / "broken").symlink_to("missing.json")
    os.mkfifo(folder / "fifo")
    safe = Folder.open(folder, error=InvalidAdapterError)
    assert safe.file("real.json") == folder / "real.json"
    assert safe.file("inside") == folder / "inside"
    assert safe.file("absent") is None
    for name in ("outside", "dotdot"):
        with pytest.raises(
            InvalidAdapterError, match=rf"{name}: is a link to .*secret.txt, outside the folder"
        ):
            safe.file(name)
    with pytest.raises(InvalidAdapterError, match="broken link"):
        safe.file("broken")
    with pytest.raises(InvalidAdapterError, match="special file \\(a fifo\\)"):
        safe.file("fifo")
    with pytest.raises(InvalidAdapterError, match="broken: is a broken link"):
        safe.walk()  # the first refused entry, in name order


def test_walk_does_not_follow_folder_links_and_refuses_ones_leaving(
    tmp_path: Path, secret: Path
) -> None:
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_text("a")
    (folder / ".hidden").write_text("h")
    (folder / "loop").symlink_to(folder / "sub", target_is_directory=True)
    assert [rel for rel, _ in Folder.open(folder).walk()] == ["sub/a.txt"]
    (folder / "away").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(InvalidInputError, match="away: is a link to"):
        Folder.open(folder).walk()


def test_hub_snapshot_may_link_into_its_own_blobs(tmp_path: Path, secret: Path) -> None:
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc123").write_text("{}")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").symlink_to("../../blobs/abc123")
    (snapshot / "leak.txt").symlink_to(secret)
    safe = Folder.open(snapshot)
    assert safe.file("config.json") == snapshot / "config.json"
    with pytest.raises(InvalidInputError, match="outside the folder"):
        safe.file("leak.txt")
    # Another repo's blobs are outside.
    other = tmp_path / "hub" / "models--org--other" / "blobs"
    other.mkdir(parents=True)
    (other / "x").write_text("{}")
    (snapshot / "other.json").symlink_to(other / "x")
    with pytest.raises(InvalidInputError, match="outside the folder"):
        safe.file("other.json")
    assert Folder.open(snapshot, extra_roots=[other]).file("other.json") is not None


def test_size_limit_names_file_size_and_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"pad": "x" * 200}))
    monkeypatch.setitem(files_module.SIZE_LIMITS, "config", 100)
    with pytest.raises(InvalidCheckpointError) as info:
        files_module.read_json_object(
            path, what="config.json", kind="config", invalid=InvalidCheckpointError
        )
    size = path.stat().st_size
    assert (
        str(info.value) == f"{path}: config.json is {size} bytes, more than the limit of 100 bytes"
    )


# --- register -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["notes.txt", "tokenizer.json", "README.md"])
def test_register_refuses_a_link_leaving_the_folder(
    cli_env: dict[str, str], make_adapter: MakeAdapter, secret: Path, tmp_path: Path, name: str
) -> None:
    adapter = make_adapter()
    (adapter / name).symlink_to(secret)
    one_error_line(run("register", adapter, "--name", "leaky"), name, "outside the folder")
    assert run("list", "--json").exit_code == 0
    assert "leaky" not in run("list").stdout
    # Nothing of the target was stored.
    blobs = Path(cli_env["LORADEX_HOME"]) / "blobs"
    stored = [p.read_bytes() for p in blobs.rglob("*") if p.is_file()] if blobs.exists() else []
    assert not any(b"TOP SECRET" in data for data in stored)


@pytest.mark.parametrize("loop", ["self", "pair", "folder"])
def test_register_refuses_a_link_loop_in_one_line(
    cli_env: dict[str, str], make_adapter: MakeAdapter, loop: str
) -> None:
    adapter = make_adapter()
    if loop == "self":
        (adapter / "loop").symlink_to("loop")
    elif loop == "pair":
        (adapter / "a").symlink_to("b")
        (adapter / "b").symlink_to("a")
    else:
        (adapter / "sub").mkdir()
        (adapter / "sub" / "up").symlink_to("up")
    line = one_error_line(run("register", adapter, "--name", "loopy"), "loops back on itself")
    assert "RuntimeError" not in line


def test_register_refuses_a_fifo(cli_env: dict[str, str], make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    os.mkfifo(adapter / "README.md")
    one_error_line(run("register", adapter, "--name", "fifo"), "README.md", "special file")


def test_register_accepts_weights_linked_inside_the_folder(
    cli_env: dict[str, str], make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    adapter = make_adapter()
    (adapter / "real").mkdir()
    os.replace(adapter / "adapter_model.safetensors", adapter / "real" / "weights.safetensors")
    (adapter / "adapter_model.safetensors").symlink_to("real/weights.safetensors")
    result = run("register", adapter, "--name", "linked")
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "exported"
    assert run("export", "linked@1", "--out", out).exit_code == 0
    assert not (out / "adapter_model.safetensors").is_symlink()
    assert (out / "adapter_model.safetensors").read_bytes() == (
        adapter / "real" / "weights.safetensors"
    ).read_bytes()


# --- check / inspect / merge --------------------------------------------------------------------


def test_check_and_inspect_refuse_an_adapter_config_leaving_the_folder(
    cli_env: dict[str, str], make_adapter: MakeAdapter, tiny_base: Path, tmp_path: Path
) -> None:
    adapter = make_adapter()
    elsewhere = tmp_path / "elsewhere.json"
    shutil.move(adapter / "adapter_config.json", elsewhere)
    (adapter / "adapter_config.json").symlink_to(elsewhere)
    result = run("check", "--adapter", adapter, "--base", tiny_base)
    assert result.exit_code == 1 and "outside the folder" in result.stdout
    one_error_line(run("inspect", adapter), "adapter_config.json", "outside the folder")


def test_merge_refuses_an_adapter_tokenizer_leaving_the_folder(
    cli_env: dict[str, str],
    make_adapter: MakeAdapter,
    tiny_base: Path,
    secret: Path,
    tmp_path: Path,
) -> None:
    adapter = make_adapter()
    (adapter / "tokenizer.json").symlink_to(secret)
    out = tmp_path / "merged"
    one_error_line(
        run("merge", "--base", tiny_base, "--adapter", adapter, "--out", out), "tokenizer.json"
    )
    assert not out.exists()
    result = run("check", "--adapter", adapter, "--base", tiny_base)
    assert result.exit_code == 1 and "outside the folder" in result.stdout


def test_merge_refuses_a_base_side_file_leaving_the_folder(
    cli_env: dict[str, str],
    make_adapter: MakeAdapter,
    tiny_base: Path,
    secret: Path,
    tmp_path: Path,
) -> None:
    (tiny_base / "notes.txt").symlink_to(secret)
    out = tmp_path / "merged"
    one_error_line(
        run("merge", "--base", tiny_base, "--adapter", make_adapter(), "--out", out),
        "notes.txt",
        "outside the folder",
    )
    assert not out.exists()
    assert not list(tmp_path.glob(".merged*"))


def test_merge_refuses_a_base_config_link_leaving_the_folder(
    cli_env: dict[str, str], make_adapter: MakeAdapter, tiny_base: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "config-elsewhere.json"
    shutil.move(tiny_base / "config.json", elsewhere)
    (tiny_base / "config.json").symlink_to(elsewhere)
    one_error_line(
        run("merge", "--base", tiny_base, "--adapter", make_adapter(), "--out", tmp_path / "m"),
        "config.json",
        "outside the folder",
    )
    one_error_line(run("inspect", tiny_base), "config.json", "outside the folder")


def test_merge_accepts_base_weights_linked_inside_the_folder(
    cli_env: dict[str, str], make_adapter: MakeAdapter, tiny_base: Path, tmp_path: Path
) -> None:
    os.replace(tiny_base / "model.safetensors", tiny_base / "real-weights.safetensors")
    (tiny_base / "model.safetensors").symlink_to("real-weights.safetensors")
    out = tmp_path / "merged"
    result = run("merge", "--base", tiny_base, "--adapter", make_adapter(), "--out", out)
    assert result.exit_code == 0, result.stderr
    assert not any(p.is_symlink() for p in out.iterdir())


def test_check_reads_no_weights_header_through_a_link_leaving_the_folder(
    cli_env: dict[str, str], make_adapter: MakeAdapter, tiny_base: Path, tmp_path: Path
) -> None:
    adapter = make_adapter()
    elsewhere = tmp_path / "weights-elsewhere.safetensors"
    shutil.move(adapter / "adapter_model.safetensors", elsewhere)
    (adapter / "adapter_model.safetensors").symlink_to(elsewhere)
    result = run("check", "--adapter", adapter, "--base", tiny_base, "--format", "json")
    assert result.exit_code == 1
    findings = json.loads(result.stdout)["findings"]
    assert [f["code"] for f in findings] == ["invalid_adapter"]
    assert "adapter_model.safetensors: is a link to" in findings[0]["message"]
