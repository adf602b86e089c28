"""Atomic output folders and the leftovers of killed writers (``mergetools.outdir``).

Owners are real processes: a ``python -c`` child creates a temp through the helper, says where,
and blocks; the test SIGKILLs it (or leaves it alive) and checks what the next writer removes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mergetools.errors import InvalidInputError, OutputExistsError
from mergetools.outdir import (
    FOREIGN_MAX_AGE_S,
    MARKER_FILE,
    ProtectedPath,
    atomic_output_folder,
    clean_leftovers,
    is_loradex_output,
    owner_token,
    process_start_time,
    replace_folder,
)
from tests.killed import WRITE_FOLDER, Child, reaped

WRITER = WRITE_FOLDER
children = pytest.fixture(reaped, name="children")


def test_a_killed_writers_temp_goes_with_the_next_write_and_a_live_ones_stays(
    tmp_path: Path, children: list[Child]
) -> None:
    parent = tmp_path / "outputs"
    dead = Child(WRITER, parent / "first")
    alive = Child(WRITER, parent / "second")
    children += [dead, alive]
    dead.kill()
    assert dead.path.is_dir() and alive.path.is_dir()
    # Things in the same folder that are not loradex's temps are never touched.
    (parent / ".git").mkdir()
    (parent / ".first.loradex-tmp-notours").write_text("mine")
    (parent / "first.loradex-tmp-0123abcd").write_text("mine")

    with atomic_output_folder(parent / "third", kind="test", fsync=False) as tmp:
        (tmp / "a.txt").write_text("a")

    assert not dead.path.exists(), "the SIGKILLed writer's temp folder is removed"
    assert alive.path.is_dir() and (alive.path / "big.bin").is_file(), "a live writer's is kept"
    assert (parent / ".git").is_dir() and (parent / ".first.loradex-tmp-notours").exists()
    assert (parent / "first.loradex-tmp-0123abcd").exists()
    assert not (parent / "first").exists()
    assert (parent / "third" / "a.txt").read_text() == "a"
    assert is_loradex_output(parent / "third")


def test_an_output_moved_aside_by_a_killed_replace_is_put_back(
    tmp_path: Path, children: list[Child]
) -> None:
    out = tmp_path / "merged"
    out.mkdir()
    (out / "model.safetensors").write_text("old weights")
    code = """
import os, sys, time
from pathlib import Path
from mergetools.outdir import temp_path
out = Path(sys.argv[1])
aside = temp_path(out.parent, out.name, role="old")
os.rename(out, aside)
print(aside, flush=True)
time.sleep(120)
"""
    child = Child(code, out)
    children.append(child)
    assert not out.exists() and child.path.is_dir()
    assert clean_leftovers(tmp_path) == [], "its owner is alive: left alone"
    child.kill()
    listed = clean_leftovers(tmp_path, dry_run=True)
    assert [(x.path, x.action, x.reason) for x in listed] == [
        (child.path, "would restore", "owner dead")
    ]
    assert not out.exists()
    found = clean_leftovers(tmp_path)
    assert [x.action for x in found] == ["restored"]
    assert (out / "model.safetensors").read_text() == "old weights"


def _name(host_boot: str, pid: int, start: int) -> str:
    return f".x.loradex-tmp-{host_boot}-{pid}-{start}-0123abcd"


def test_a_reused_pid_is_not_mistaken_for_the_owner_and_other_hosts_are_left_alone(
    tmp_path: Path,
) -> None:
    host_boot, pid, start = owner_token().split("-")
    assert int(pid) == os.getpid() and int(start) == process_start_time(os.getpid())
    mine = tmp_path / _name(host_boot, os.getpid(), int(start))
    reused = tmp_path / _name(host_boot, os.getpid(), int(start) + 1)  # same pid, other process
    rebooted = tmp_path / _name(host_boot[:8] + "00000000", os.getpid(), int(start))
    foreign = tmp_path / _name("ffffffff00000000", 1, 1)
    old_foreign = tmp_path / _name("eeeeeeee00000000", 1, 1)
    for path in (mine, reused, rebooted, foreign, old_foreign):
        path.write_bytes(b"12345")
    week_ago = time.time() - FOREIGN_MAX_AGE_S - 60
    os.utime(old_foreign, (week_ago, week_ago))

    found = {x.path: x for x in clean_leftovers(tmp_path)}

    assert set(found) == {reused, rebooted, old_foreign}
    assert found[reused].reason == "owner dead" and found[reused].size == 5
    assert found[rebooted].reason == "owner rebooted"
    assert found[old_foreign].reason == "foreign, stale"
    assert mine.exists() and foreign.exists()
    assert not reused.exists() and not rebooted.exists() and not old_foreign.exists()


def test_a_failure_mid_write_leaves_the_old_output_and_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_output_folder(out, kind="test", fsync=False) as tmp:
        (tmp / "v").write_text("1")
    with (
        pytest.raises(RuntimeError, match="boom"),
        atomic_output_folder(out, kind="test", force=True, fsync=False) as tmp,
    ):
        (tmp / "v").write_text("2")
        raise RuntimeError("boom")
    assert (out / "v").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # A failed rename of the new folder puts the old one back.
    with pytest.raises(FileNotFoundError):
        replace_folder(tmp_path / "never-written", out, fsync=False)
    assert (out / "v").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # A failure in a new folder's parents leaves none of the parents it created.
    with (
        pytest.raises(RuntimeError),
        atomic_output_folder(tmp_path / "a" / "b" / "c", kind="test", fsync=False),
    ):
        raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()


def test_force_replaces_only_empty_folders_and_earlier_outputs(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    (home / "blobs").mkdir(parents=True)
    (home / "registry.db").write_text("db")
    (work / "project" / ".git").mkdir(parents=True)
    (work / "project" / "main.py").write_text("print()")
    inputs = work / "adapter"
    inputs.mkdir()
    guards = [
        ProtectedPath(home, "LORADEX_HOME"),
        ProtectedPath(work, "the current folder", inside_ok=True),
        ProtectedPath(inputs, "the input folder"),
    ]

    def write(out: Path) -> None:
        with atomic_output_folder(out, kind="test", force=True, protected=guards, fsync=False) as tmp:
            (tmp / "f").write_text("new")

    refusals = {
        home: "is LORADEX_HOME",
        home / "blobs": "lies inside LORADEX_HOME",
        tmp_path: "contains LORADEX_HOME",
        work: "is the current folder",
        inputs: "is the input folder",
        inputs / "sub": "lies inside the input folder",
        work / "project": "is not an earlier loradex output",
    }
    for out, why in refusals.items():
        with pytest.raises((InvalidInputError, OutputExistsError), match=why) as info:
            write(out)
        assert "\n" not in str(info.value) and str(out) in str(info.value)
    assert (home / "registry.db").read_text() == "db" and (work / "project" / ".git").is_dir()
    assert (work / "project" / "main.py").exists()

    write(work / "fresh")  # new folder inside the current folder: fine
    (work / "empty").mkdir()
    write(work / "empty")
    write(work / "fresh")  # an earlier output (it carries the marker)
    marker = json.loads((work / "fresh" / MARKER_FILE).read_text())
    assert marker["kind"] == "test" and "loradex_version" in marker
    legacy = work / "legacy-merge"
    legacy.mkdir()
    (legacy / "loradex.json").write_text(json.dumps({"loradex_version": "0.1"}))
    write(legacy)  # merges written before the marker carry their provenance file
    assert (legacy / "f").read_text() == "new"
    link = work / "link"
    link.symlink_to(work / "fresh")
    with pytest.raises(OutputExistsError, match="symbolic link"):
        write(link)
