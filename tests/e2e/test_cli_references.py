"""A reference stays a reference in every output, and one rule tells a name from a folder.

``check``, ``merge`` and ``inspect`` read a registered version from a cache folder; no report,
annotation, message or ``loradex.json`` may show that folder. ``./x`` is always a folder; a bare
``x`` is the registered adapter when there is one (and a note says so when a folder ``x``
exists too).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from tests.conftest import write_tiny_base

MakeAdapter = Callable[..., Path]


def run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, (args, result.output, result.stderr)
    return result


@pytest.fixture
def sts(cli_env: dict[str, str], make_adapter: MakeAdapter) -> Path:
    """``sts@3`` registered and aliased ``production``; returns the cache folder it resolves to."""
    for seed in (1, 2, 3):
        run("register", str(make_adapter(seed=seed)), "--name", "sts")
    run("alias", "set", "sts@3", "production")
    return Path(cli_env["LORADEX_HOME"]) / "cache"


def _no_cache_path(text: str, cache: Path) -> None:
    assert str(cache) not in text and "cache/versions" not in text, text


def test_check_names_the_reference_in_every_format(
    sts: Path, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    wide = write_tiny_base(tmp_path / "wide", hidden=32)  # the adapters (hidden 16) do not fit
    folder = make_adapter(seed=9)
    label = "sts@production -> sts@3"
    args = ["check", "--adapter", "sts@production", "--adapter", str(folder), "--base", str(wide)]

    text = run(*args, code=1).stdout
    _no_cache_path(text, sts)
    assert f"adapter: {label} (fingerprint" in text
    assert f"[{label}] [model.layers.0.self_attn.q_proj]" in text

    report = json.loads(run(*args, "--format", "json", code=1).stdout)
    _no_cache_path(json.dumps(report), sts)
    assert report["adapters"][0]["name"] == label
    assert report["adapters"][0]["reference"] == label and report["adapters"][0]["path"] is None
    assert report["adapters"][1]["path"] == str(folder)
    assert {f["adapter"] for f in report["findings"]} == {label, str(folder)}

    junit = run(*args, "--format", "junit", code=1).stdout
    _no_cache_path(junit, sts)
    suite = ElementTree.fromstring(junit.split("\n", 1)[1]).find("testsuite")
    assert suite is not None
    assert {c.get("name") for c in suite.findall("testcase")} >= {label, str(folder)}

    github = run(*args, "--format", "github", code=1).stdout
    _no_cache_path(github, sts)
    annotations = [line for line in github.splitlines() if line.startswith("::")]
    by_ref = [line for line in annotations if label in line]
    by_path = [line for line in annotations if "file=" in line]
    assert by_ref and all("file=" not in line for line in by_ref)
    assert all(re.match(rf"^::(error|notice) title={re.escape(label)}%3A ", line) for line in by_ref)
    assert any(line.startswith(f"::error title={label}%3A shape_mismatch (") for line in by_ref)
    assert by_path and all(str(folder.name) in line for line in by_path)


def test_merge_records_references_not_cache_folders(
    sts: Path, tiny_base: Path, tmp_path: Path
) -> None:
    run("base", "add", str(tiny_base), "--name", "tiny")
    fingerprint = json.loads(run("base", "list", "--json").stdout)[0]["fingerprint"]
    out = tmp_path / "merged"
    summary = run("merge", "--base", "tiny", "--adapter", "sts@production", "--out", str(out), "--json")
    _no_cache_path(summary.stdout, sts)
    provenance = json.loads((out / "loradex.json").read_text())
    _no_cache_path(json.dumps(provenance), sts)
    (adapter,) = provenance["adapters"]
    weights_sha256 = json.loads(run("show", "sts@3", "--json").stdout)["weights_sha256"]
    assert adapter["ref"] == "sts@production" and adapter["version"] == "sts@3"
    assert adapter["weights_sha256"] == weights_sha256 and "path" not in adapter
    assert adapter["sha256"]["adapter_model.safetensors"] == weights_sha256
    assert provenance["base"]["name"] == "tiny" and provenance["base"]["ref"] == "tiny"
    assert provenance["base"]["fingerprint"] == fingerprint
    assert provenance["base"]["path"] == str(tiny_base)


def test_merge_error_names_the_reference(sts: Path, tmp_path: Path) -> None:
    wide = write_tiny_base(tmp_path / "wide", hidden=32)
    bad = run("merge", "--base", str(wide), "--adapter", "sts@production", "--out", str(tmp_path / "o"), code=1)
    _no_cache_path(bad.output, sts)
    assert bad.stderr.startswith("error: adapter 'sts@production -> sts@3' module ") and bad.stderr.count("\n") == 1


def test_inspect_a_reference(sts: Path) -> None:
    text = run("inspect", "sts@production").stdout
    _no_cache_path(text, sts)
    assert text.startswith("adapter:        sts@production -> sts@3\n")
    data = json.loads(run("inspect", "sts@3", "--json").stdout)
    _no_cache_path(json.dumps(data), sts)
    assert data["name"] == "sts@3" and data["version"] == "sts@3" and data["path"] is None
    missing = run("inspect", "nosuch", code=1)
    assert missing.stderr.startswith("error: adapter 'nosuch' is not registered")


def test_a_name_and_a_folder_of_the_same_name(
    cli_env: dict[str, str],
    make_adapter: MakeAdapter,
    tiny_base: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # A bare name with no registry yet is the folder (and no database is created for it).
    local = make_adapter(seed=4, rank=2).rename(work / "x")
    home = Path(cli_env["LORADEX_HOME"])
    assert json.loads(run("inspect", "x", "--json").stdout)["max_rank"] == 2
    assert not (home / "registry.db").exists()

    run("register", str(make_adapter(seed=5, rank=8)), "--name", "x")
    bare = run("inspect", "x", "--json")
    assert json.loads(bare.stdout)["max_rank"] == 8
    assert bare.stderr == "note: 'x' is the registered adapter x@1 (use ./x for the folder)\n"
    dotted = run("inspect", "./x", "--json")
    assert json.loads(dotted.stdout)["max_rank"] == 2 and dotted.stderr == ""
    assert Path(local).is_dir()

    check = run("check", "--adapter", "x", "--base", str(tiny_base), "--format", "json")
    assert "note: 'x' is the registered adapter x@1" in check.stderr
    assert json.loads(check.stdout)["adapters"][0]["reference"] == "x -> x@1"

    # A bare name that is not registered still means the folder, without a note.
    (work / "x").rename(work / "y")
    plain = run("check", "--adapter", "y", "--base", str(tiny_base))
    assert plain.stderr == "" and "adapter: y" in plain.stdout

    # A path that does not exist says so, not "not registered".
    for args in (
        ("check", "--adapter", "./nope", "--base", str(tiny_base)),
        ("merge", "--adapter", "./nope", "--base", str(tiny_base), "--out", "o"),
        ("merge", "--adapter", "y", "--base", "./nobase", "--out", "o"),
        ("inspect", "./nope"),
    ):
        missing = run(*args, code=1)
        assert re.fullmatch(r"error: (adapter|base|input) folder '\./no(pe|base)' does not exist\n", missing.stderr), missing.stderr


def test_base_name_and_folder(
    cli_env: dict[str, str], make_adapter: MakeAdapter, tiny_base: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    write_tiny_base(tmp_path / "tiny", hidden=32)  # a folder named like the registered base
    run("base", "add", str(tiny_base), "--name", "tiny")
    adapter = str(make_adapter(seed=1))
    bare = run("check", "--adapter", adapter, "--base", "tiny")
    assert "note: 'tiny' is the registered base model tiny (use ./tiny for the folder)" in bare.stderr
    assert bare.stdout.startswith("base: tiny\n")
    assert "compatible" in bare.stdout and "INCOMPATIBLE" not in bare.stdout
    assert "INCOMPATIBLE" in run("check", "--adapter", adapter, "--base", "./tiny", code=1).stdout


def test_long_inputs_are_cut_in_messages(cli_env: dict[str, str], make_adapter: MakeAdapter) -> None:
    long = "b" * 2000
    for args in (
        ("check", "--adapter", str(make_adapter(seed=1)), "--base", long),
        ("check", "--adapter", long, "--base", "x"),
        ("check", "--adapter", "./" + long, "--base", "x"),
    ):
        result = run(*args, code=1)
        first, *rest = result.stderr.splitlines()
        assert first.startswith("error: ") and all(line.startswith("hint: ") for line in rest)
        assert len(rest) <= 1 and len(first) < 400 and "…" in first, result.stderr
