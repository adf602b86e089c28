"""What loradex writes as folders, through the CLI: ``merge --out`` and ``export --out`` with and
without ``--force``, and the temps of killed writers that merge, export, register and gc remove.

The writers that die are real processes killed with SIGKILL (``tests/killed.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from tests.killed import TEMP_FILE, TEMP_FOLDER, WRITE_FOLDER, Child, reaped

MakeAdapter = Callable[..., Path]
children = pytest.fixture(reaped, name="children")


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def ok(*args: str | Path) -> Result:
    result = run(*args)
    assert result.exit_code == 0, (args, result.output, result.stderr)
    return result


def refused(result: Result, *, path: Path | str, why: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: "), result.stderr
    assert lines[1:] in ([], ["hint: choose another output folder, or pass --force to replace it"])
    assert str(path) in lines[0] and why in lines[0], lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def home(cli_env: dict[str, str], make_adapter: MakeAdapter) -> Path:
    """LORADEX_HOME with a registered adapter (so it holds registry.db and blobs/)."""
    ok("register", make_adapter(seed=1), "--name", "a")
    return Path(cli_env["LORADEX_HOME"])


def merge_args(base: Path, adapter: Path, out: Path | str) -> list[str | Path]:
    return ["merge", "--base", base, "--adapter", adapter, "--out", out, "--device", "cpu", "-q"]


def test_merge_force_never_replaces_the_registry_the_current_folder_an_input_or_a_project(
    home: Path,
    tiny_base: Path,
    make_adapter: MakeAdapter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = make_adapter(seed=2)
    work = tmp_path / "work" / "here"
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "train.py").write_text("print('hi')")
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    before = {folder: snapshot(folder) for folder in (home, project, work, adapter, tiny_base)}

    cases: list[tuple[Path | str, Path | str, str]] = [
        (home, home, "is LORADEX_HOME"),
        (home.parent, home.parent, "contains LORADEX_HOME"),
        (home / "blobs", home / "blobs", "lies inside LORADEX_HOME"),
        (".", ".", "is the current folder"),
        ("..", "..", "contains the current folder"),
        (adapter, adapter, "is the input folder"),
        (tiny_base, tiny_base, "is the input folder"),
        (project, project, "is not an earlier loradex output"),
    ]
    for out, shown, why in cases:
        refused(run(*merge_args(tiny_base, adapter, out), "--force"), path=shown, why=why)
    for folder, files in before.items():
        assert snapshot(folder) == files, f"{folder} changed"
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["here"]

    # An earlier merge output (and a new folder inside the current one) are fine.
    ok(*merge_args(tiny_base, adapter, "merged"))
    assert (work / "merged" / "loradex.json").is_file()
    first = snapshot(work / "merged")
    ok(*merge_args(tiny_base, make_adapter(seed=3), "merged"), "--force")
    assert snapshot(work / "merged") != first and (work / "merged" / "model.safetensors").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["merged", "notes.txt"]


def test_merge_after_a_killed_merge_removes_its_temp_folder(
    tiny_base: Path, make_adapter: MakeAdapter, tmp_path: Path, children: list[Child]
) -> None:
    parent = tmp_path / "outputs"
    dead = Child(WRITE_FOLDER, parent / "first")
    alive = Child(WRITE_FOLDER, parent / "other")
    children += [dead, alive]
    dead.kill()
    (parent / ".cache").mkdir()  # not loradex's: kept
    ok(*merge_args(tiny_base, make_adapter(seed=1), parent / "second"))
    assert not dead.path.exists()
    assert alive.path.is_dir()
    assert sorted(p.name for p in parent.iterdir()) == sorted(
        [".cache", alive.path.name, "second"]
    )


def test_export_force_replaces_only_earlier_outputs(
    home: Path, tmp_path: Path, children: list[Child]
) -> None:
    out = tmp_path / "exported"
    dead = Child(WRITE_FOLDER, tmp_path / "killed-export")
    children.append(dead)
    dead.kill()
    ok("export", "a", "--out", out)
    # Exported files get the usual mode under the umask (a serving user must be able to read them).
    mask = os.umask(0o022)
    os.umask(mask)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir() if not p.name.startswith(".")} == {0o666 & ~mask}
    assert not dead.path.exists(), "the killed export's temp is removed by the next export"
    assert (out / "adapter_model.safetensors").is_file()
    ok("export", "a", "--out", out, "--force")  # its own earlier output

    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "README.md").write_text("keep")
    files = snapshot(project)
    refused(run("export", "a", "--out", project), path=project, why="not empty")
    refused(
        run("export", "a", "--out", project, "--force"),
        path=project,
        why="is not an earlier loradex output",
    )
    assert snapshot(project) == files
    db = snapshot(home)
    refused(run("export", "a", "--out", home, "--force"), path=home, why="is LORADEX_HOME")
    refused(
        run("export", "a", "--out", home / "cache" / "x"), path=home / "cache", why="LORADEX_HOME"
    )
    assert snapshot(home) == db


def test_register_and_gc_remove_the_temps_of_killed_writers(
    home: Path, make_adapter: MakeAdapter, children: list[Child]
) -> None:
    blob_tmp = home / "blobs" / "tmp"
    killed_put = Child(TEMP_FILE, blob_tmp, "put")
    live_put = Child(TEMP_FILE, blob_tmp, "put")
    children += [killed_put, live_put]
    killed_put.kill()
    ok("register", make_adapter(seed=5), "--name", "b")
    assert not killed_put.path.exists(), "a register removes a killed register's temp file"
    assert live_put.path.is_file()

    versions = home / "cache" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    algebra = home / "cache" / "algebra"  # combine/resize/... --name write their result here first
    algebra.mkdir(parents=True, exist_ok=True)
    killed = [
        Child(TEMP_FILE, blob_tmp, "put"),
        Child(TEMP_FOLDER, versions, "0" * 64),
        Child(TEMP_FOLDER, algebra, "result"),
    ]
    children += killed
    for child in killed:
        child.kill()
    dry = json.loads(ok("gc", "--grace", "0", "--dry-run", "--json").stdout)
    listed = {t["path"]: t for t in dry["temps"]}
    assert set(listed) == {str(c.path) for c in killed}
    assert all(t["size"] == 100_000 and t["action"] == "would remove" for t in listed.values())
    assert all(c.path.exists() for c in killed)

    text = ok("gc", "--grace", "0").stdout
    for child in killed:
        assert f"removed {child.path} (100,000 bytes; owner dead)" in text
        assert not child.path.exists()
    assert live_put.path.is_file(), "a live writer's temp is never collected"
    assert json.loads(ok("gc", "--grace", "0", "--json").stdout)["temps"] == []
