"""The commands the example GitHub Actions workflow runs (examples/github-actions/loradex-ci.sh),
run for real (bash, the loradex console script) against a local registry: a pull request that
passes, its merge that publishes, a pull request that regresses, and one that does not fit the base."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_tiny_adapter, write_tiny_base

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "github-actions" / "loradex-ci.sh"
WORKFLOW = REPO / "examples" / "github-actions" / "loradex.yml"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None, reason="the workflow's script needs bash"
)


def test_the_workflow_runs_the_script_in_both_modes() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    runs = [step.get("run", "") for step in workflow["jobs"]["adapters"]["steps"]]
    assert any("examples/github-actions/loradex-ci.sh pr " in run for run in runs)
    assert any("examples/github-actions/loradex-ci.sh merge " in run for run in runs)
    env = {**workflow["env"]}
    assert env["ALIAS"] == "production" and env["SIGNATURE"] == "base.signature.json"


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORADEX_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        LORADEX_HOME=str(tmp_path / "home"),
        LORADEX_USER="ci",
        GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"),
    )
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _adapter(repo: Path, *, seed: int, accuracy: float, hidden: int = 16) -> None:
    folder = repo / "adapters" / "support"
    if folder.exists():
        shutil.rmtree(folder)
    write_tiny_adapter(folder, seed=seed, hidden=hidden)
    (folder / "evals.txt").write_text(
        f"# measured by eval.py\naccuracy={accuracy},dataset=squad,split=validation\n"
    )


def _alias(env: dict[str, str], repo: Path) -> int | None:
    listed = _run(["loradex", "alias", "list", "support", "--json"], env, repo)
    assert listed.returncode == 0, listed.stderr
    rows = [r for r in json.loads(listed.stdout) if r["alias"] == "production"]
    return rows[0]["version"] if rows else None


def test_pull_request_then_merge_then_a_regression(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = _env(tmp_path)
    signature = _run(
        ["loradex", "inspect", str(write_tiny_base(tmp_path / "base")), "--signature"], env, repo
    )
    assert signature.returncode == 0, signature.stderr
    (repo / "base.signature.json").write_text(signature.stdout)
    _adapter(repo, seed=0, accuracy=0.85)
    # The admin's policy: register the adapter name first (a policy names an adapter).
    assert (
        _run(
            ["loradex", "register", "adapters/support", "--name", "support", "--quiet"], env, repo
        ).returncode
        == 0
    )
    policy = _run(
        [
            "loradex",
            "alias",
            "policy",
            "set",
            "support",
            "production",
            "--require",
            "accuracy>=0.82@squad/validation",
            "--no-regress",
            "accuracy@squad/validation:0.005",
        ],
        env,
        repo,
    )
    assert policy.returncode == 0, policy.stderr
    ci = [
        str(SCRIPT),
        "adapters/support",
        "support",
        "production",
        "base.signature.json",
        "--serving",
        "vllm:max_rank=64",
    ]

    pr = _run([str(SCRIPT), "pr", *ci[1:]], env, repo)
    assert pr.returncode == 0, pr.stdout + pr.stderr
    assert "loradex check: compatible" in pr.stdout
    assert (
        "::notice title=support@production%3A gates pass::would publish: all 5 gate(s) pass"
        in pr.stdout
    )
    assert _alias(env, repo) is None
    summary = (tmp_path / "summary.md").read_text()
    assert "| require | `accuracy>=0.82@squad/validation` | policy | ✅ pass |" in summary
    assert "| serving | `vllm:max_rank=64` | request | ✅ pass |" in summary

    merged = _run([str(SCRIPT), "merge", *ci[1:]], env, repo)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert "published: support@production -> support@1 (by ci)" in merged.stdout
    assert _alias(env, repo) == 1

    _adapter(repo, seed=1, accuracy=0.80)
    regress = _run([str(SCRIPT), "pr", *ci[1:]], env, repo)
    assert regress.returncode == 1
    assert "candidate: support@2" in regress.stdout
    assert (
        "::error title=support@production%3A require accuracy>=0.82@squad/validation::"
        "accuracy = 0.8 does not meet >= 0.82"
    ) in regress.stdout
    assert (
        "::error title=support@production%3A no_regress accuracy@squad/validation%3A0.005::"
        in regress.stdout
    )
    assert (
        regress.stderr.strip()
        .splitlines()[-1]
        .startswith("error: publish of support@2 to alias support@production refused: 2 of 5")
    )
    assert _alias(env, repo) == 1
    merged_anyway = _run([str(SCRIPT), "merge", *ci[1:]], env, repo)
    assert merged_anyway.returncode == 1 and _alias(env, repo) == 1

    history = _run(["loradex", "alias", "history", "support", "production", "--json"], env, repo)
    moves = json.loads(history.stdout)
    assert [(m["kind"], m["to_version"], m["moved_by"]) for m in moves] == [("publish", 1, "ci")]
    assert moves[0]["report"]["gates"][0]["gate"] == "ready"


def test_pull_request_with_an_adapter_that_does_not_fit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = _env(tmp_path)
    signature = _run(
        ["loradex", "inspect", str(write_tiny_base(tmp_path / "base")), "--signature"], env, repo
    )
    (repo / "base.signature.json").write_text(signature.stdout)
    _adapter(repo, seed=0, accuracy=0.9, hidden=8)
    result = _run(
        [str(SCRIPT), "pr", "adapters/support", "support", "production", "base.signature.json"],
        env,
        repo,
    )
    assert result.returncode == 1
    assert "::error file=adapters/support/adapter_config.json,title=shape_mismatch" in result.stdout
    assert (
        "candidate:" not in result.stdout
    )  # the check stops the job before anything is registered
    usage = _run(
        [str(SCRIPT), "deploy", "adapters/support", "support", "production", "base.signature.json"],
        env,
        repo,
    )
    assert usage.returncode == 2 and "mode must be pr or merge" in usage.stderr
