"""One consistent CLI: every reporting command has ``--json`` and prints one JSON document with
the same conventions (versions as ``name`` + ``version`` + ``ref``, times ISO 8601 UTC with
``+00:00``, sizes integer bytes); long commands take ``--quiet`` and draw a bar only on a terminal;
the settings are built once, in ``cli/main.py``, and only when a command needs them.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from cli.main import COMMANDS, cli
from tests.conftest import write_tiny_adapter, write_tiny_base
from tests.hub_fixtures import FakeHub, fake_hub, folder_files, use_hub

__all__ = ["fake_hub"]

REPO = Path(__file__).resolve().parents[2]


def _command_paths() -> Iterator[tuple[str, click.Command]]:
    """Every command that runs (groups, nested ones included, are walked, not listed)."""
    ctx = click.Context(cli)

    def walk(path: str, command: click.Command) -> Iterator[tuple[str, click.Command]]:
        if isinstance(command, click.Group):
            for sub in command.list_commands(ctx):
                sub_command = command.get_command(ctx, sub)
                assert sub_command is not None
                yield from walk(f"{path} {sub}", sub_command)
        else:
            yield path, command

    for name in sorted(COMMANDS):
        command = cli.get_command(ctx, name)
        assert command is not None
        yield from walk(name, command)


def _longs(command: click.Command) -> set[str]:
    return {
        opt
        for param in command.params
        if isinstance(param, click.Option)
        for opt in param.opts + param.secondary_opts
    }


# Commands without --json, and why. Keep it short: a new command reports in JSON too.
JSON_EXEMPT: dict[str, str] = {
    "serve": "runs a server until stopped; it reports nothing (its access log goes to stderr)",
}

# Commands that can take seconds (they read or write every byte of a model or of the store).
LONG_COMMANDS = {"register", "base add", "export", "verify", "gc", "merge", "inspect", "check", "resize", "extract", "combine"}

ALL = list(_command_paths())


@pytest.mark.parametrize(("path", "command"), ALL, ids=[p for p, _ in ALL])
def test_every_command_has_json(path: str, command: click.Command) -> None:
    if path in JSON_EXEMPT:
        assert "--json" not in _longs(command), f"{path} has --json now: drop its exemption"
        return
    assert "--json" in _longs(command), (
        f"`loradex {path}` has no --json; add `@json_option` (cli/render.py) or an exemption "
        "with its reason to JSON_EXEMPT in tests/e2e/test_cli_consistency.py"
    )


@pytest.mark.parametrize("path", sorted(LONG_COMMANDS))
def test_long_commands_take_quiet(path: str) -> None:
    command = dict(ALL)[path]
    assert {"--quiet", "-q"} <= _longs(command), f"`loradex {path}` draws a bar: give it --quiet/-q"


# ------------------------------------------------------------------------------ JSON of each


@pytest.fixture
def world(tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    fake_hub.add_repo("org/tiny-lora", folder_files(write_tiny_adapter(tmp_path / "hub-adapter", seed=2)))
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    env = {
        "LORADEX_HOME": str(tmp_path / "home"),
        "LORADEX_USER": "tester",
        "LORADEX_DATABASE_URL": None,
        "LORADEX_BLOB_URL": None,
    }
    return {
        "tmp": tmp_path,
        "env": env,
        "adapter": write_tiny_adapter(tmp_path / "adapter"),
        "adapter2": write_tiny_adapter(tmp_path / "adapter2", seed=1),
        "base": write_tiny_base(tmp_path / "base"),
    }


def _run(world: dict[str, Any], *args: str, code: int = 0) -> Result:
    filled = [a.format(**{k: v for k, v in world.items() if k != "env"}) for a in args]
    result = CliRunner().invoke(cli, filled, env=world["env"])
    assert result.exit_code == code, (args, result.output, result.exception)
    return result


# In order: each may rely on the ones before. One entry per command path (checked below).
JSON_CALLS: list[tuple[str, tuple[str, ...]]] = [
    ("db upgrade", ("db", "upgrade")),
    ("db current", ("db", "current")),
    ("db check", ("db", "check")),
    ("base add", ("base", "add", "{base}", "--name", "tiny")),
    ("base list", ("base", "list")),
    ("base show", ("base", "show", "tiny")),
    ("register", ("register", "{adapter}", "--name", "support", "--base", "tiny", "--eval", "accuracy=0.9")),
    ("metric set", ("metric", "set", "accuracy", "--higher-is-better")),
    ("metric list", ("metric", "list")),
    ("eval add", ("eval", "add", "support@1", "f1=0.7")),
    ("eval list", ("eval", "list", "support@1")),
    ("tag", ("tag", "support@1", "team=cx")),
    ("alias set", ("alias", "set", "support@1", "production")),
    ("alias history", ("alias", "history", "support")),
    ("alias rm", ("alias", "rm", "support", "production")),
    ("alias policy set", ("alias", "policy", "set", "support", "production", "--require", "accuracy>=0.5", "--serving", "vllm")),
    ("alias policy show", ("alias", "policy", "show", "support", "production")),
    ("publish", ("publish", "support@1", "--alias", "production", "--no-regress", "accuracy", "--dry-run")),
    ("alias protect", ("alias", "protect", "support", "production")),
    ("alias list", ("alias", "list")),
    ("alias unprotect", ("alias", "unprotect", "support", "production")),
    ("alias policy rm", ("alias", "policy", "rm", "support", "production")),
    ("list", ("list",)),
    ("search", ("search", "accuracy>=0.5")),
    ("show", ("show", "support@1")),
    ("pull", ("pull", "hf://org/tiny-lora")),
    ("push", ("push", "support@1", "--to", "hf://team/support")),
    ("versions", ("versions", "support")),
    ("check", ("check", "--adapter", "support@1", "--base", "{base}")),
    ("inspect", ("inspect", "support@1")),
    ("merge", ("merge", "--base", "tiny", "--adapter", "support@1", "--out", "{tmp}/merged")),
    ("resize", ("resize", "support@1", "--rank", "1", "--out", "{tmp}/resized")),
    ("token create", ("token", "create", "--scope", "read", "--name", "ci")),
    ("token list", ("token", "list")),
    ("token revoke", ("token", "revoke", "1")),
    ("rescale", ("rescale", "support@1", "--scale", "0.5", "--out", "{tmp}/rescaled")),
    ("combine", ("combine", "support@1", "{tmp}/rescaled", "--method", "cat", "--out", "{tmp}/combined")),
    ("extract", ("extract", "--base", "tiny", "--tuned", "{tmp}/merged", "--rank", "1", "--out", "{tmp}/extracted")),
    ("checkpoints", ("checkpoints",)),
    ("lineage", ("lineage", "support@1")),
    ("export", ("export", "support@1", "--out", "{tmp}/exported")),
    ("verify", ("verify",)),
    ("journal", ("journal",)),
    ("yank", ("yank", "support@1", "--reason", "regressed")),
    ("unyank", ("unyank", "support@1")),
    ("gc", ("gc", "--grace", "0", "--dry-run")),
    ("delete", ("delete", "support@1", "--purge")),
]  # fmt: skip

_ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")
_SIZE_KEYS = {"size", "nbytes", "bytes_written", "bytes_freed", "temp_bytes_freed", "total_size"}


def _conventions(value: Any, where: str = "$") -> Iterator[str]:
    """Every breach of the JSON conventions in ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{where}.{key}"
            is_time = (key.endswith("_at") or key == "at") and item is not None
            if is_time and not (isinstance(item, str) and _ISO_UTC.match(item)):
                yield f"{here}: time {item!r} is not ISO 8601 UTC with +00:00"
            if key in _SIZE_KEYS and item is not None and not isinstance(item, int):
                yield f"{here}: size {item!r} is not an integer number of bytes"
            provenance = isinstance(item, str) and "@" in item  # loradex.json's "version": "a@1"
            if key == "version" and item is not None and not isinstance(item, int) and not provenance:
                yield f"{here}: version {item!r} is not an integer"
            if key in ("hash", "sha"):
                yield f"{here}: a digest is named sha256, not {key}"
            yield from _conventions(item, here)
        ref, name = value.get("ref"), value.get("name")
        if isinstance(value.get("version"), int) and name and ref and not str(ref).startswith(f"{name}@"):
            yield f"{where}: ref {ref!r} does not name {name}"
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _conventions(item, f"{where}[{i}]")


def test_json_calls_cover_every_command() -> None:
    covered = {path for path, _ in JSON_CALLS}
    missing = [p for p, _ in ALL if p not in covered and p not in JSON_EXEMPT]
    assert not missing, f"add a JSON_CALLS entry for: {', '.join(missing)}"


def test_every_json_output_parses_and_follows_the_conventions(world: dict[str, Any]) -> None:
    seen: dict[str, Any] = {}
    for path, args in JSON_CALLS:
        result = _run(world, *args, "--json")
        try:
            data = json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            pytest.fail(f"`loradex {' '.join(args)} --json` printed no JSON ({exc}):\n{result.stdout}")
        problems = list(_conventions(data))
        assert not problems, f"`loradex {path} --json`: " + "; ".join(problems)
        seen[path] = data
    # One record, one set of keys: `base list` and `base show` agree.
    (listed,) = seen["base list"]
    assert set(listed) == set(seen["base show"])
    assert {k: v for k, v in listed.items() if k != "signature"} == {
        k: v for k, v in seen["base show"].items() if k != "signature"
    }
    # A version is name + version (+ ref) wherever one is reported.
    for path in ("register", "yank", "unyank", "delete", "export", "lineage"):
        data = seen[path]
        assert (data["name"], data["version"], data["ref"]) == ("support", 1, "support@1"), path
    move = seen["alias set"]
    assert (move["name"], move["alias"], move["to_version"], move["to_ref"]) == (
        "support",
        "production",
        1,
        "support@1",
    )
    member = seen["checkpoints"]["items"][0]["members"][0]
    assert (member["name"], member["version"], member["ref"]) == ("support", 1, "support@1")


def test_check_json_is_format_json(world: dict[str, Any]) -> None:
    as_flag = _run(world, "check", "--adapter", "{adapter}", "--base", "{base}", "--json")
    as_format = _run(world, "check", "--adapter", "{adapter}", "--base", "{base}", "--format", "json")
    assert json.loads(as_flag.stdout) == json.loads(as_format.stdout)
    clash = _run(world, "check", "--adapter", "{adapter}", "--base", "{base}", "--json", "--format", "junit", code=2)
    assert "--json is --format json" in clash.stderr
    inspect_format = _run(world, "inspect", "{adapter}", "--format", "json")
    assert json.loads(inspect_format.stdout) == json.loads(_run(world, "inspect", "{adapter}", "--json").stdout)


# ------------------------------------------------------------------------------ settings


def test_settings_are_built_only_in_cli_main() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "cli").glob("*.py"))
        if path.name != "main.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\bSettings\(", line)
    ]
    assert not offenders, (
        "build settings only in cli/main.py (CliState.settings); take them with @pass_state: "
        + ", ".join(offenders)
    )


def test_plain_folders_and_help_need_no_settings(world: dict[str, Any]) -> None:
    world["env"]["LORADEX_DATABASE_URL"] = "mysql://root:secret@db.example/x"
    assert _run(world, "--help").stdout.startswith("Usage:")
    checked = _run(world, "check", "--adapter", "{adapter}", "--base", "{base}")
    assert checked.stderr == ""
    _run(world, "inspect", "{adapter}", "--json")
    bad = _run(world, "check", "--adapter", "support@1", "--base", "{base}", code=1)
    assert bad.stderr.startswith("error: LORADEX_DATABASE_URL=") and bad.stderr.count("\n") == 1


# ------------------------------------------------------------------------------ progress


def _progress_log() -> tuple[list[tuple[int, int]], Any]:
    calls: list[tuple[int, int]] = []
    return calls, lambda done, total: calls.append((done, total))


def _reaches_total(calls: list[tuple[int, int]]) -> None:
    assert calls, "progress was never called"
    done, total = calls[-1]
    assert done == total > 0, calls
    assert all(0 <= d <= t for d, t in calls), calls


def test_use_cases_report_progress_up_to_the_total(tmp_path: Path, registry: Any) -> None:
    adapter = write_tiny_adapter(tmp_path / "adapter", hidden=256, rank=8)
    base = write_tiny_base(tmp_path / "base")

    calls, progress = _progress_log()
    registry.add_base(base, name="tiny", progress=progress)
    _reaches_total(calls)

    calls, progress = _progress_log()
    registry.register(adapter, name="a", progress=progress)
    _reaches_total(calls)
    stored = sum(f.stat().st_size for f in adapter.iterdir())
    assert calls[-1] == (stored, stored)

    calls, progress = _progress_log()
    registry.export("a@1", tmp_path / "out", progress=progress)
    _reaches_total(calls)

    calls, progress = _progress_log()
    assert registry.verify(progress=progress) == []
    _reaches_total(calls)

    calls, progress = _progress_log()
    registry.gc(grace_s=0, dry_run=True, progress=progress)
    _reaches_total(calls)


def test_no_bar_when_stderr_is_not_a_terminal(world: dict[str, Any]) -> None:
    result = _run(world, "register", "{adapter}", "--name", "support")
    assert result.stderr == ""
    assert _run(world, "export", "support@1", "--out", "{tmp}/o").stderr == ""


def _run_on_a_terminal(world: dict[str, Any], *args: str) -> str:
    """Run loradex with stderr on a pseudo-terminal; what it drew there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORADEX_")}
    env.update({k: v for k, v in world["env"].items() if v is not None})
    primary, secondary = pty.openpty()
    filled = [a.format(**{k: v for k, v in world.items() if k != "env"}) for a in args]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *filled],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=secondary,
    )
    os.close(secondary)
    drawn = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        drawn += chunk
    proc.communicate(timeout=60)
    os.close(primary)
    assert proc.returncode == 0, drawn
    return drawn.decode(errors="replace")


def test_a_bar_on_a_terminal_and_none_with_quiet(world: dict[str, Any]) -> None:
    write_tiny_adapter(world["adapter"], hidden=256, rank=8)
    drawn = _run_on_a_terminal(world, "register", "{adapter}", "--name", "support")
    assert "registering" in drawn
    quiet = _run_on_a_terminal(world, "export", "support@1", "--out", "{tmp}/o", "--quiet")
    assert "exporting" not in quiet
    loud = _run_on_a_terminal(world, "export", "support@1", "--out", "{tmp}/o2")
    assert "exporting" in loud
