"""The registry CLI end to end, in-process (click's CliRunner) on SQLite and PostgreSQL, plus a
whole-process check that ``loradex list`` is fast and never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import COMMANDS, cli

MakeAdapter = Callable[..., Path]
REPO = Path(__file__).resolve().parents[2]
REGISTRY_COMMANDS = [
    "alias", "base", "checkpoints", "db", "delete", "eval", "export", "gc", "journal", "lineage",
    "list", "register", "search", "show", "tag", "unyank", "versions", "yank",
]  # fmt: skip


def run(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, (args, result.output, result.stderr)
    return result


def test_registry_commands_are_registered_and_sorted() -> None:
    assert set(REGISTRY_COMMANDS) <= set(COMMANDS)
    assert list(COMMANDS) == sorted(COMMANDS)
    for name in REGISTRY_COMMANDS:
        assert run(name, "--help").output.strip()


def test_cli_flow(cli_env: dict[str, str], make_adapter: MakeAdapter, tmp_path: Path) -> None:
    a1, a2 = make_adapter(seed=1), make_adapter(seed=2, rank=8)
    out = run(
        "register",
        str(a1),
        "--name",
        "support",
        "--eval",
        "accuracy=0.8,dataset=mmlu",
        "--tag",
        "team=x",
        "--description",
        "bot",
    )
    assert out.stdout.strip() == "support@1"
    again = run("register", str(make_adapter(seed=1)), "--name", "support")
    assert again.stdout.strip() == "support@1" and "already registered" in again.stderr
    assert run("register", str(a2), "--name", "support").stdout.strip() == "support@2"

    listing = run("list").stdout
    assert listing.splitlines()[0].split()[:3] == ["NAME", "LATEST", "VERSIONS"]
    assert listing.splitlines()[1].split()[:3] == ["support", "2", "2"]
    page = json.loads(run("list", "--json").stdout)
    assert [(a["name"], a["latest"]) for a in page["items"]] == [("support", 2)] and page[
        "next_cursor"
    ] is None

    run("eval", "add", "support@2", "accuracy=0.9", "loss=0.3,dataset=mmlu,split=test")
    evals = json.loads(run("eval", "list", "support@2", "--json").stdout)
    assert [(e["metric"], e["value"], e["split"]) for e in evals] == [
        ("accuracy", 0.9, None),
        ("loss", 0.3, "test"),
    ]

    found = json.loads(run("search", "accuracy>=0.85", "--sort", "accuracy", "--json").stdout)
    assert [v["ref"] for v in found["items"]] == ["support@2"]
    found = json.loads(
        run("search", "--module", "q_proj", "--max-rank", "4", "--tag", "team=x", "--json").stdout
    )
    assert [v["ref"] for v in found["items"]] == ["support@1"]
    text = run("search", "--name", "supp*", "--sort", "accuracy").stdout
    assert text.splitlines()[1].startswith("support@2") and "0.9" in text

    detail = json.loads(run("show", "support@1", "--json").stdout)
    assert detail["tags"] == {"team": "x"} and detail["max_rank"] == 4 and not detail["latest"]
    shown = run("show", "support").stdout
    assert (
        "support@2  [latest]" in shown and "weights sha256" in shown and "accuracy = 0.9" in shown
    )
    assert [v["ref"] for v in json.loads(run("versions", "support", "--json").stdout)] == [
        "support@2",
        "support@1",
    ]

    assert run("tag", "support@2", "stage=prod", "owner=me").stdout.split() == [
        "owner=me",
        "stage=prod",
    ]
    assert run("tag", "support@2", "--rm", "owner").stdout.split() == ["stage=prod"]

    assert (
        run("alias", "set", "support@1", "production").stdout.strip()
        == "support@production -> support@1"
    )
    assert "(was @1)" in run("alias", "set", "support@2", "production").stdout
    history = json.loads(run("alias", "history", "support", "--json").stdout)
    assert [(m["from_version"], m["to_version"], m["moved_by"]) for m in history] == [
        (None, 1, "tester"),
        (1, 2, "tester"),
    ]

    export_dir = tmp_path / "exported"
    run("export", "support@production", "--out", str(export_dir))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (export_dir / name).read_bytes() == (a2 / name).read_bytes()

    run("alias", "rm", "support", "production")
    assert run("yank", "support@2", "--reason", "regressed").stdout.strip() == "yanked support@2"
    assert json.loads(run("show", "support", "--json").stdout)["ref"] == "support@1"
    run("unyank", "support@2")

    assert "support@1" in run("lineage", "support@1").stdout
    assert json.loads(run("checkpoints", "--json").stdout)["items"] == []
    assert run("delete", "support@1", "--purge").stdout.strip() == "deleted support@1"
    gc = json.loads(run("gc", "--grace", "0", "--json").stdout)
    assert gc["removed"] == [] and gc["dry_run"] is False
    kinds = [e["kind"] for e in json.loads(run("journal", "support", "--json").stdout)]
    assert kinds[0] == "version.deleted" and kinds[-1] == "adapter.created"

    assert "no drift" in run("db", "check").stdout
    assert "(head)" in run("db", "current").stdout


def test_cli_errors_are_one_line_and_exit_1(
    cli_env: dict[str, str], make_adapter: MakeAdapter
) -> None:
    missing = run("show", "nope", ok=False)
    assert missing.exit_code == 1
    assert missing.stderr.strip().splitlines() == [
        "error: adapter 'nope' is not registered",
        "hint: see `loradex list` for the names, or register it with "
        "`loradex register PATH --name nope`",
    ]
    bad = run("register", str(make_adapter()), "--name", "x", "--eval", "accuracy", ok=False)
    assert bad.exit_code == 1 and bad.stderr.startswith("error: eval 'accuracy' is not understood")
    usage = run("delete", ok=False)
    assert usage.exit_code == 2


def test_registry_commands_do_not_import_torch(
    cli_env: dict[str, str], make_adapter: MakeAdapter
) -> None:
    code = (
        "import sys; from click.testing import CliRunner; from cli.main import cli; r = CliRunner();"
        f"a = r.invoke(cli, ['register', {str(make_adapter())!r}, '--name', 't']);"
        "assert a.exit_code == 0, a.output;"
        "[r.invoke(cli, c) for c in (['list'], ['search'], ['show', 't'], ['versions', 't'], ['export', 't', '--out', sys.argv[1]])];"
        "print('torch' in sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", code, cli_env["LORADEX_HOME"] + "/export"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_loradex_list_imports_no_heavy_library(
    cli_env: dict[str, str], make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    """`loradex list` in a fresh interpreter imports only what a registry command needs."""
    run("register", str(make_adapter()), "--name", "fast")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cli.main", "list"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert "fast" in traced.stdout
    imported = {line.split("|")[-1].strip() for line in traced.stderr.splitlines() if "|" in line}
    assert "sqlalchemy" in imported  # the trace is real
    # What makes a registry command slow is what it imports: nothing of the tensor stack, no
    # migration machinery, no web framework, no pydantic. (Its whole-process time, < 0.5 s, is
    # measured by benchmarks/registry_bench.py, not asserted here: timings in tests are noise.)
    heavy = {"torch", "alembic", "fastapi", "numpy", "safetensors", "pydantic", "transformers", "peft"}
    assert not imported & heavy
