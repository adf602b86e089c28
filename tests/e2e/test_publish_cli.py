"""``loradex publish`` and the alias policy, protection and list commands end to end (CliRunner,
a real registry in tmp_path on the parametrized backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from tests.conftest import write_tiny_adapter, write_tiny_base


def run(*args: str, code: int = 0, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == code, (args, result.output, result.exception)
    return result


@pytest.fixture
def world(cli_env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    base = write_tiny_base(tmp_path / "base")
    run("base", "add", str(base), "--name", "tiny", "--quiet")
    for seed, accuracy in ((0, "0.85"), (1, "0.80")):
        adapter = write_tiny_adapter(tmp_path / f"a{seed}", seed=seed)
        run(
            "register",
            str(adapter),
            "--name",
            "support",
            "--base",
            "tiny",
            "--quiet",
            "--eval",
            f"accuracy={accuracy},dataset=squad,split=validation",
        )
    return {"tmp": tmp_path, "base": base}


def test_publish_exit_codes_and_text_report(world: dict[str, Any]) -> None:
    first = run(
        "publish",
        "support@1",
        "--alias",
        "production",
        "--require",
        "accuracy>=0.82@squad/validation",
    )
    lines = first.stdout.splitlines()
    assert lines[0] == "publish support@1 to alias support@production (unset now)"
    assert lines[1].split() == ["GATE", "NAME", "SOURCE", "RESULT", "DETAIL"]
    assert any(line.startswith("require") and " pass " in line for line in lines)
    assert lines[-1] == "published: support@production -> support@1 (by tester)"
    refused = run(
        "publish", "support@2", "--alias", "production", "--no-regress", "accuracy", code=1
    )
    assert "FAIL" in refused.stdout and refused.stdout.splitlines()[-1].startswith(
        "refused: 1 of 3 gate(s) failed"
    )
    assert "error: publish of support@2 to alias support@production refused" in refused.stderr
    assert json.loads(run("alias", "list", "support", "--json").stdout)[0]["version"] == 1
    run("publish", "support@2", "--alias", "production", "--require", "accuracy>=nan", code=2)
    run("publish", "support@2", "--alias", "production", "--json", "--format", "junit", code=2)
    run(
        "publish",
        "support@2",
        "--alias",
        "production",
        "--base",
        "tiny",
        "--base-signature",
        "x.json",
        code=2,
    )
    missing = run(
        "publish",
        "support@2",
        "--alias",
        "production",
        "--base-signature",
        str(world["tmp"] / "no.json"),
        code=2,
    )
    assert "is not a file" in missing.output


def test_publish_formats(world: dict[str, Any], tmp_path: Path) -> None:
    as_json = json.loads(
        run("publish", "support@1", "--alias", "production", "--dry-run", "--json").stdout
    )
    assert as_json["passed"] and not as_json["published"] and as_json["dry_run"]
    assert as_json["to_ref"] == "support@1" and as_json["counts"] == {"gates": 2, "failed": 0}
    junit = run(
        "publish",
        "support@1",
        "--alias",
        "production",
        "--require",
        "accuracy>=0.9",
        "--format",
        "junit",
        code=1,
    )
    suite = ElementTree.fromstring(junit.stdout).find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures")) == ("3", "1")
    failures = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failures == ["require: accuracy>=0.9"]
    summary = tmp_path / "summary.md"
    github = run(
        "publish",
        "support@1",
        "--alias",
        "production",
        "--require",
        "accuracy>=0.9",
        "--format",
        "github",
        code=1,
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert github.stdout.splitlines()[0] == (
        "::error title=support@production%3A require accuracy>=0.9::accuracy = 0.85 does not meet >= 0.9"
    )
    assert "| require | `accuracy>=0.9` | request | ❌ fail |" in summary.read_text()
    assert json.loads(run("alias", "list", "--json").stdout) == []  # nothing moved, nothing listed
    unwritable = run(
        "publish",
        "support@1",
        "--alias",
        "production",
        "--format",
        "github",
        env={"GITHUB_STEP_SUMMARY": str(tmp_path / "no-such-folder" / "summary.md")},
    )
    assert "warning: the step summary could not be written" in unwritable.stderr
    assert (
        json.loads(run("alias", "list", "--json").stdout)[0]["version"] == 1
    )  # published all the same


def test_policy_protect_list_and_history(world: dict[str, Any]) -> None:
    shown = run(
        "alias",
        "policy",
        "set",
        "support",
        "production",
        "--require",
        "accuracy>=0.82",
        "--serving",
        "vllm",
    )
    assert (
        shown.stdout.strip()
        == "support@production: require accuracy>=0.82; serving vllm:max_rank=16"
    )
    assert (
        run("alias", "policy", "show", "support", "production", "--json").stdout.count(
            "vllm:max_rank=16"
        )
        == 1
    )
    refused = run("alias", "set", "support@1", "production", code=1)
    assert "has a publish policy" in refused.stderr
    assert (
        "hint: run `loradex publish NAME@VERSION --alias production` so that its gates run"
        in refused.stderr
    )
    assert (
        run("alias", "protect", "support", "production").stdout.strip()
        == "support@production is protected"
    )
    assert "(unchanged)" in run("alias", "protect", "support", "production").stdout
    listed = run("alias", "list").stdout.splitlines()
    assert listed[1].split()[:3] == ["support@production", "(unset)", "-"] and "yes" in listed[1]
    run("publish", "support@1", "--alias", "production")
    run("publish", "support@2", "--alias", "production", code=1)  # policy: 0.80 < 0.82
    back = run("publish", "--rollback", "support", "--alias", "production", code=1)
    assert "held no version before" in back.stderr
    run("alias", "policy", "rm", "support", "production")
    run("alias", "unprotect", "support", "production")
    run("alias", "set", "support@2", "production")
    back = run("publish", "--rollback", "support", "--alias", "production", "--json")
    assert json.loads(back.stdout)["kind"] == "rollback" and json.loads(back.stdout)["version"] == 1
    history = run("alias", "history", "support", "production").stdout.splitlines()
    assert [line.split()[3] for line in history[1:]] == ["publish", "set", "rollback"]
    listed = json.loads(run("alias", "list", "support", "--json").stdout)
    assert listed[0]["last_move"]["kind"] == "rollback" and listed[0]["policy"] is None


def test_concurrent_publish_processes_keep_the_history_a_chain(
    world: dict[str, Any], cli_env: dict[str, str]
) -> None:
    """Real processes publishing to one alias at once: each either moves it from the version its
    gates saw or fails with nothing moved, so the history is an unbroken chain of moves and
    counts exactly the successful publishes."""
    import os
    import subprocess
    import sys

    script = Path(sys.executable).parent / "loradex"
    env = {**os.environ, **cli_env}
    procs = [
        subprocess.Popen(
            [str(script), "publish", f"support@{1 + i % 2}", "--alias", "production", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    results = [
        (
            p.wait(timeout=300),
            p.stdout.read() if p.stdout else "",
            p.stderr.read() if p.stderr else "",
        )
        for p in procs
    ]
    for code, _, stderr in results:
        assert code in (0, 1), stderr
        if code == 1:
            assert "moved meanwhile" in stderr and "Traceback" not in stderr, stderr
    published = [json.loads(out) for code, out, _ in results if code == 0]
    assert published and all(r["published"] for r in published)
    history = json.loads(run("alias", "history", "support", "production", "--json").stdout)
    assert len(history) == len(published)
    assert history[0]["from_version"] is None
    for before, after in zip(history, history[1:], strict=False):
        assert after["from_version"] == before["to_version"]
    def moves(pairs: list[tuple[int | None, int]]) -> list[tuple[int, int]]:
        return sorted((-1 if a is None else a, b) for a, b in pairs)

    assert moves([(r["previous_version"], r["version"]) for r in published]) == moves(
        [(m["from_version"], m["to_version"]) for m in history]
    )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_publish_does_not_import_torch(world: dict[str, Any]) -> None:
    import os
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from cli.main import cli;"
        "r = CliRunner().invoke(cli, ['publish', 'support@1', '--alias', 'production', '--serving', 'vllm', '--no-regress', 'accuracy']);"
        "assert r.exit_code == 0, r.output;"
        "print('torch' in sys.modules)"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(repo)),
    )
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr
