"""Every user-reachable failure is one ``error:`` line on stderr and exit 1 (2 for usage), never a
traceback: a table of rows over every command and subcommand the CLI registers, and every failure
class (bad settings, an unusable LORADEX_HOME, a full disk, an unexpected exception, Ctrl-C, a
closed stdout). Most rows run in-process (click's CliRunner); a few run real processes to see the
real stderr, and the full-disk rows need one (a small tmpfs when this machine lets us mount one,
else ``RLIMIT_FSIZE``, which makes writes past the limit fail with EFBIG).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from cli.main import COMMANDS, cli
from tests.conftest import write_tiny_adapter, write_tiny_base
from tests.hub_fixtures import use_hub

REPO = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "loradex"


# ------------------------------------------------------------------------------ the world a row runs in


@dataclass
class World:
    """A fresh LORADEX_HOME, an adapter, a base, and the environment the command runs with."""

    tmp: Path
    home: Path
    adapter: Path
    base: Path
    env: dict[str, str | None] = field(default_factory=dict)

    def fill(self, arg: str) -> str:
        return arg.format(tmp=self.tmp, home=self.home, adapter=self.adapter, base=self.base)


def _huge_rank_adapter(folder: Path) -> Path:
    write_tiny_adapter(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = 10**400
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def _world(tmp: Path) -> World:
    world = World(
        tmp=tmp,
        home=tmp / "home",
        adapter=write_tiny_adapter(tmp / "adapter"),
        base=write_tiny_base(tmp / "base"),
    )
    _huge_rank_adapter(tmp / "huge-rank")
    world.env = {
        "LORADEX_HOME": str(world.home),
        "LORADEX_USER": "tester",
        "LORADEX_DATABASE_URL": None,
        "LORADEX_BLOB_URL": None,
    }
    return world


def invoke(world: World, args: list[str]) -> Result:
    return CliRunner().invoke(cli, [world.fill(a) for a in args], env=world.env)


def registered(world: World) -> None:
    """support@1 registered, nothing else."""
    result = invoke(world, ["register", "{adapter}", "--name", "support"])
    assert result.exit_code == 0, result.output


def with_policy(world: World) -> None:
    """support@1 registered, its alias production under a publish policy."""
    registered(world)
    result = invoke(world, ["alias", "policy", "set", "support", "production", "--require", "accuracy>=0.5"])
    assert result.exit_code == 0, result.output


def home_is_file(world: World) -> None:
    world.home.write_text("not a folder")


def home_under_file(world: World) -> None:
    (world.tmp / "plain-file").write_text("x")
    world.env["LORADEX_HOME"] = str(world.tmp / "plain-file" / "home")


def database_mysql(world: World) -> None:
    world.env["LORADEX_DATABASE_URL"] = "mysql://root:secret@db.example/loradex"


def database_nonsense(world: World) -> None:
    world.env["LORADEX_DATABASE_URL"] = "nonsense"


def blob_url_s3(world: World) -> None:
    world.env["LORADEX_BLOB_URL"] = "s3://team-bucket/loradex"


def server_url_bad(world: World) -> None:
    world.env["LORADEX_SERVER"] = "ftp://registry.internal"


def server_down(world: World) -> None:
    """A registry server URL where nothing listens (port 9, discard: refused at once)."""
    world.env["LORADEX_SERVER"] = "http://127.0.0.1:9"
    world.env["LORADEX_TOKEN"] = "ldx_whatever"


def corrupt_weights(world: World) -> None:
    """support@1 registered, then its weights blob rots (export logs an error and refuses)."""
    registered(world)
    for blob in (world.home / "blobs").glob("??/??/*"):
        if blob.stat().st_size > 1000:
            blob.chmod(0o644)
            blob.write_bytes(b"rot" + blob.read_bytes()[3:])


def blobs_gone(world: World) -> None:
    registered(world)
    shutil.rmtree(world.home / "blobs")


def database_gone(world: World) -> None:
    registered(world)
    for name in ("registry.db", "registry.db-wal", "registry.db-shm"):
        (world.home / name).unlink(missing_ok=True)


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Row:
    command: str  # the command path it covers, e.g. "alias set"
    args: tuple[str, ...]
    failure: str  # the failure class
    setup: Callable[[World], None] | None = None
    code: int = 1
    expect: str = ""  # a substring of the error line

    @property
    def id(self) -> str:
        return f"{self.command.replace(' ', '-')}:{self.failure}"


# Arguments that parse, per command: the failure then comes from the settings or the home.
VALID_ARGS: dict[str, tuple[str, ...]] = {
    "alias set": ("alias", "set", "support@1", "production"),
    "alias rm": ("alias", "rm", "support", "production"),
    "alias history": ("alias", "history", "support"),
    "alias list": ("alias", "list", "support"),
    "alias policy set": ("alias", "policy", "set", "support", "production", "--require", "accuracy>=0.5"),
    "alias policy show": ("alias", "policy", "show", "support", "production"),
    "alias policy rm": ("alias", "policy", "rm", "support", "production"),
    "alias protect": ("alias", "protect", "support", "production"),
    "alias unprotect": ("alias", "unprotect", "support", "production"),
    "publish": ("publish", "support@1", "--alias", "production", "--dry-run"),
    "base add": ("base", "add", "{base}"),
    "base list": ("base", "list"),
    "base show": ("base", "show", "tiny"),
    "check": ("check", "--adapter", "support@1", "--base", "{base}"),
    "checkpoints": ("checkpoints",),
    "db upgrade": ("db", "upgrade"),
    "db current": ("db", "current"),
    "db check": ("db", "check"),
    "delete": ("delete", "support@1", "--purge"),
    "eval add": ("eval", "add", "support@1", "accuracy=0.9"),
    "eval list": ("eval", "list", "support@1"),
    "export": ("export", "support@1", "--out", "{tmp}/out"),
    "gc": ("gc",),
    "journal": ("journal",),
    "lineage": ("lineage", "support@1"),
    "list": ("list",),
    "merge": ("merge", "--base", "{base}", "--adapter", "support@1", "--out", "{tmp}/merged"),
    "metric set": ("metric", "set", "bleu", "--higher-is-better"),
    "metric list": ("metric", "list"),
    "pull": ("pull", "hf://org/tiny-lora"),
    "push": ("push", "support@1", "--to", "hf://team/support"),
    "register": ("register", "{adapter}", "--name", "support"),
    "resize": ("resize", "support@1", "--rank", "1", "--out", "{tmp}/resized"),
    "rescale": ("rescale", "support@1", "--scale", "2", "--out", "{tmp}/rescaled"),
    "combine": ("combine", "support@1", "{adapter}", "--method", "cat", "--weight", "1", "--weight", "1", "--out", "{tmp}/combined"),
    "extract": ("extract", "--base", "tiny", "--tuned", "{base}", "--rank", "1", "--out", "{tmp}/extracted"),
    "search": ("search", "accuracy>=0.5"),
    "serve": ("serve", "--port", "0"),
    "show": ("show", "support@1"),
    "tag": ("tag", "support@1", "team=x"),
    "token create": ("token", "create", "--scope", "read"),
    "token list": ("token", "list"),
    "token revoke": ("token", "revoke", "1"),
    "unyank": ("unyank", "support@1"),
    "verify": ("verify",),
    "versions": ("versions", "support"),
    "yank": ("yank", "support@1", "--reason", "regressed"),
}

# Settings and homes every registry command must refuse in one line.
ENV_FAILURES: dict[str, tuple[Callable[[World], None], str]] = {
    "home-is-a-file": (home_is_file, "LORADEX_HOME"),
    "home-cannot-be-created": (home_under_file, "LORADEX_HOME"),
    "database-url-mysql": (database_mysql, "LORADEX_DATABASE_URL='mysql://root:***@"),
    "database-url-nonsense": (database_nonsense, "LORADEX_DATABASE_URL='nonsense'"),
    "blob-url-s3": (blob_url_s3, "LORADEX_BLOB_URL='s3://"),
    "server-url-bad": (server_url_bad, "'ftp://registry.internal' (LORADEX_SERVER)"),
    # unreachable, or (commands of the local registry only) refused: either way it is named
    "server-down": (server_down, "registry server http://127.0.0.1:9"),
}

ROWS: list[Row] = [
    # one user mistake per command, against a registry holding support@1
    Row("alias set", ("alias", "set", "nosuch@1", "production"), "not-found", registered, expect="'nosuch'"),
    Row("alias rm", ("alias", "rm", "support", "production"), "not-found", registered, expect="no alias"),
    Row("alias history", ("alias", "history", "nosuch"), "not-found", registered),
    Row("alias set", ("alias", "set", "support@1", "production"), "has-policy", with_policy, expect="publish policy"),
    Row("alias rm", ("alias", "rm", "support", "production"), "has-policy", with_policy, expect="publish policy"),
    Row("alias list", ("alias", "list", "nosuch"), "not-found", registered),
    Row("alias policy set", ("alias", "policy", "set", "nosuch", "production", "--require", "accuracy>=0.5"), "not-found", registered),
    Row("alias policy set", ("alias", "policy", "set", "support", "production", "--require", "accuracy>=nan"), "usage", registered, code=2),
    Row("alias policy set", ("alias", "policy", "set", "support", "production"), "usage", registered, code=2),
    Row("alias policy show", ("alias", "policy", "show", "support", "production"), "not-found", registered, expect="no publish policy"),
    Row("alias policy rm", ("alias", "policy", "rm", "support", "production"), "not-found", registered, expect="no publish policy"),
    Row("alias protect", ("alias", "protect", "nosuch", "production"), "not-found", registered),
    Row("alias protect", ("alias", "protect", "support", "latest"), "bad-alias", registered, expect="reserved"),
    Row("alias unprotect", ("alias", "unprotect", "nosuch", "production"), "not-found", registered),
    Row("publish", ("publish", "support@1", "--alias", "production", "--require", "accuracy>=0.9"), "gate-failed", registered, expect="refused"),
    Row("publish", ("publish", "nosuch@1", "--alias", "production"), "not-found", registered, expect="'nosuch'"),
    Row("publish", ("publish", "{adapter}", "--alias", "production"), "a-folder", registered, expect="register the folder"),
    Row("publish", ("publish", "--rollback", "support", "--alias", "production"), "nothing-to-roll-back", registered, expect="unset"),
    Row("publish", ("publish", "support@1", "--alias", "production", "--require", "accuracy>=nan"), "usage", registered, code=2, expect="--require"),
    Row("publish", ("publish", "support@1", "--alias", "production", "--no-regress", "accuracy:-1"), "usage", registered, code=2, expect="--no-regress"),
    Row("publish", ("publish", "--alias", "production"), "usage", code=2),
    Row("publish", ("publish", "support@1", "--rollback", "support", "--alias", "production"), "usage", code=2),
    Row("publish", ("publish", "--rollback", "support", "--alias", "production", "--require", "accuracy>=0.5"), "usage", code=2),
    Row("base add", ("base", "add", "{adapter}"), "not-a-base", registered, expect="config.json"),
    Row("base add", ("base", "add", "hf://org/m@main/../x"), "bad-hub-reference", registered, expect="malformed"),
    Row("base add", ("base", "add", "hf://org/tiny-base"), "hub-unreachable", registered, expect="hf://org/tiny-base"),
    Row("base show", ("base", "show", "nosuch"), "not-found", registered),
    Row("check", ("check", "--adapter", "nosuch", "--base", "{base}"), "not-found", registered),
    Row("checkpoints", ("checkpoints", "--ref", "nosuch@1"), "not-found", registered),
    Row("db upgrade", ("db", "upgrade", "9999"), "bad-revision", registered, expect="9999"),
    Row("db check", ("db", "check"), "empty-schema", expect="loradex db upgrade"),
    Row("delete", ("delete", "support@1"), "needs-purge", registered, expect="--purge"),
    Row("eval add", ("eval", "add", "support@1", "accuracy=high"), "bad-value", registered),
    Row("eval list", ("eval", "list", "nosuch"), "not-found", registered),
    Row("export", ("export", "nosuch", "--out", "{tmp}/out"), "not-found", registered),
    Row("export", ("export", "support@1", "--out", "{tmp}/out"), "corrupt-blob", corrupt_weights, expect="is corrupt"),
    Row("export", ("export", "support@1", "--out", "{tmp}/out"), "blobs-gone", blobs_gone, expect="LORADEX_BLOB_URL"),
    Row("list", ("list", "--after", "garbage"), "bad-cursor", registered),
    Row("list", ("list",), "database-gone", database_gone, expect="does not exist"),
    Row("inspect", ("inspect", "{tmp}/huge-rank"), "huge-rank"),
    Row("journal", ("journal", "nosuch"), "not-found", registered),
    Row("lineage", ("lineage", "nosuch"), "not-found", registered),
    Row("merge", ("merge", "--base", "{base}", "--adapter", "nosuch", "--out", "{tmp}/m"), "not-found", registered),
    Row("merge", ("merge", "--base", "{base}", "--adapter", "{tmp}/huge-rank", "--out", "{tmp}/m"), "huge-rank"),
    Row("metric set", ("metric", "set", "bad metric", "--lower-is-better"), "bad-name", registered),
    Row("metric list", ("metric", "list"), "database-gone", database_gone, expect="does not exist"),
    Row("pull", ("pull", "hf://org/bad name"), "bad-reference", expect="malformed"),
    Row("pull", ("pull", "hf://org/tiny-lora"), "hub-unreachable", expect="hf://org/tiny-lora"),
    Row("push", ("push", "nosuch@1", "--to", "hf://team/support"), "not-found", registered),
    Row("push", ("push", "checkpoint:7", "--to", "hf://team/support"), "checkpoint-not-found", registered, expect="checkpoint 7"),
    Row("push", ("push", "support@1", "--to", "hf://team/x@main", "--revision", "dev"), "two-revisions", registered, expect="give one"),
    Row("register", ("register", "{tmp}/huge-rank", "--name", "huge"), "huge-rank"),
    Row("register", ("register", "{adapter}", "--name", "bad name!"), "bad-name"),
    Row("search", ("search", "accuracy>>1"), "bad-filter", registered),
    Row("resize", ("resize", "nosuch@1", "--rank", "1", "--out", "{tmp}/r"), "not-found", registered),
    Row("rescale", ("rescale", "nosuch@1", "--scale", "2", "--out", "{tmp}/r"), "not-found", registered),
    Row("rescale", ("rescale", "{tmp}/huge-rank", "--scale", "2", "--out", "{tmp}/r"), "huge-rank"),
    Row("rescale", ("rescale", "{adapter}", "--scale", "2"), "usage", code=2),
    Row("combine", ("combine", "{adapter}", "nosuch@1", "--method", "cat", "--out", "{tmp}/c"), "not-found", registered),
    Row("combine", ("combine", "{adapter}", "{adapter}", "--method", "nosuch", "--out", "{tmp}/c"), "bad-method", expect="nosuch"),
    Row("combine", ("combine", "{adapter}", "--method", "cat", "--weight", "1", "--weight", "2", "--out", "{tmp}/c"), "usage", code=2),
    Row("resize", ("resize", "{tmp}/huge-rank", "--rank", "1", "--out", "{tmp}/r"), "huge-rank"),
    Row("extract", ("extract", "--base", "{base}", "--tuned", "{tmp}/no-such", "--rank", "1", "--out", "{tmp}/e"), "not-found", expect="does not exist"),
    Row("extract", ("extract", "--base", "{base}", "--tuned", "{base}", "--rank", "1", "--out", "{tmp}/e"), "nothing-changed", expect="nothing to extract"),
    Row("extract", ("extract", "--base", "{base}", "--tuned", "{base}", "--out", "{tmp}/e"), "usage", code=2),
    Row("show", ("show", "nosuch"), "not-found", registered),
    Row("tag", ("tag", "nosuch@1", "a=b"), "not-found", registered),
    Row("serve", ("serve", "--port", "99999"), "usage", code=2),
    Row("token create", ("token", "create", "--scope", "read", "--expires", "soon"), "bad-value", registered, expect="not a duration"),
    Row("token list", ("token", "list"), "database-gone", database_gone, expect="does not exist"),
    Row("token revoke", ("token", "revoke", "999"), "not-found", registered, expect="no API token 999"),
    Row("unyank", ("unyank", "support@1"), "not-yanked", registered, expect="expected yanked"),
    Row("verify", ("verify", "nosuch"), "not-found", registered),
    Row("versions", ("versions", "nosuch"), "not-found", registered),
    Row("yank", ("yank", "nosuch@1", "--reason", "bad"), "not-found", registered),
    # usage errors stay exit 2
    *[Row(group, (group, "no-such-subcommand"), "usage", code=2) for group in ("alias", "base", "db", "eval", "metric", "token")],
    Row("alias policy", ("alias", "policy", "no-such-subcommand"), "usage", code=2),
    Row("register", ("register", "{adapter}"), "usage", code=2, expect="--name"),
    Row("check", ("check", "--adapter", "{adapter}"), "usage", code=2),
    Row("merge", ("merge", "--base", "{base}", "--adapter", "{adapter}", "--weight", "1", "--weight", "2", "--out", "{tmp}/m"), "usage", code=2),
    Row("tag", ("tag", "support@1"), "usage", registered, code=2),
    Row("gc", ("gc", "--grace", "-1"), "usage", code=2),
    Row("inspect", ("inspect", "{tmp}/no-such-folder"), "not-found", expect="does not exist"),
    # the settings and homes, for every command that opens the registry
    *[
        Row(command, args, failure, setup, expect=expect)
        for failure, (setup, expect) in ENV_FAILURES.items()
        for command, args in VALID_ARGS.items()
    ],
]  # fmt: skip

FAILURE_CLASSES = {
    *ENV_FAILURES,
    "huge-rank",  # an unexpected exception (OverflowError) deep in the adapter parser
    "corrupt-blob",
    "blobs-gone",
    "database-gone",
    "usage",
}


def _command_paths() -> list[str]:
    """Every command path, groups and nested groups included (``alias policy set``)."""
    ctx = click.Context(cli)
    paths = []

    def walk(path: str, command: click.Command) -> None:
        paths.append(path)
        if isinstance(command, click.Group):
            for sub in command.list_commands(ctx):
                sub_command = command.get_command(ctx, sub)
                assert sub_command is not None
                walk(f"{path} {sub}", sub_command)

    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None
        walk(name, command)
    return paths


def test_every_command_and_failure_class_has_rows() -> None:
    covered = {row.command for row in ROWS}
    missing = [path for path in _command_paths() if path not in covered]
    assert not missing, f"no row in tests/e2e/test_failures.py ROWS for: {', '.join(missing)}"
    assert not {row.command for row in ROWS} - set(_command_paths()), "rows for unknown commands"
    assert {row.failure for row in ROWS} >= FAILURE_CLASSES
    registry_commands = set(_command_paths()) - {"inspect", "alias", "alias policy", "base", "db", "eval", "metric", "token"}
    assert set(VALID_ARGS) == registry_commands


def assert_one_error_line(result_code: int, stderr: str, *, code: int, expect: str = "") -> str:
    """Exit ``code``, no traceback, exactly one ``error:`` line; for exit 1, nothing else on
    stderr (no log records) but at most one ``hint:`` line right after it. ``expect`` must be
    in the error line or its hint. Returns the error line."""
    assert result_code == code, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error:")]
    assert len(errors) == 1, stderr
    hints: list[str] = []
    if code == 1:
        start = lines.index(errors[0])
        hints = [line for line in lines[start + 1 :] if line.startswith("hint: ")][:1]
        assert lines[:start] == [] and lines[start + 1 :] == hints, (
            f"more than the error line (and one hint line) on stderr:\n{stderr}"
        )
    assert expect in "\n".join([errors[0], *hints]), stderr
    return errors[0]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_failure_is_one_error_line(
    row: Row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = _world(tmp_path)
    use_hub(monkeypatch, cache=tmp_path / "hf-cache")  # a Hub on 127.0.0.1 that never answers
    if row.setup is not None:
        row.setup(world)
    result = invoke(world, list(row.args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert_one_error_line(result.exit_code, result.stderr, code=row.code, expect=row.expect)


# ------------------------------------------------------------------------------ the guard itself


@click.command("boom")
def _boom() -> None:
    raise RuntimeError("kaboom\n  on two lines")


@pytest.fixture
def boom_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(COMMANDS, "boom", f"{__name__}:_boom")


def test_unexpected_exception_is_one_line_and_debug_shows_the_traceback(
    boom_command: None,
) -> None:
    result = CliRunner().invoke(cli, ["boom"])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: RuntimeError: kaboom on two lines (run with --debug for the traceback)\n"
    )
    debug = CliRunner().invoke(cli, ["--debug", "boom"])
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "RuntimeError: kaboom" in debug.stderr


def test_hint_is_worded_with_the_cli_flags_on_its_own_line(tmp_path: Path) -> None:
    world = _world(tmp_path)
    registered(world)
    refused = invoke(world, ["delete", "support@1"])
    assert refused.exit_code == 1
    assert refused.stderr.splitlines() == [
        "error: delete of 'support@1' was not confirmed: it removes the version's files for good",
        "hint: pass --purge to confirm, or use `loradex yank support@1 --reason ...` to hide it "
        "and keep the files",
    ]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    exists = invoke(world, ["export", "support@1", "--out", "{tmp}/taken"])
    assert exists.exit_code == 1
    assert exists.stderr.splitlines()[1:] == [
        "hint: choose another output folder, or pass --force to replace it"
    ]


def test_logging_reaches_stderr_only_with_verbose(tmp_path: Path) -> None:
    world = _world(tmp_path)
    corrupt_weights(world)  # export logs an error record, then fails
    quiet = invoke(world, ["export", "support@1", "--out", "{tmp}/out"])
    assert_one_error_line(quiet.exit_code, quiet.stderr, code=1, expect="is corrupt")
    loud = invoke(world, ["-v", "export", "support@1", "--out", "{tmp}/out2"])
    assert loud.exit_code == 1 and "ERROR registry.blobstore: corrupt blob" in loud.stderr
    again = invoke(world, ["export", "support@1", "--out", "{tmp}/out3"])
    assert "registry.blobstore" not in again.stderr  # -v does not stick to later runs


def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = _world(tmp_path)

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)  # the OS call a register makes per blob
    result = invoke(world, ["register", "{adapter}", "--name", "support"])
    assert result.exit_code == 130
    assert result.stderr == "error: interrupted\n"
    assert not list((world.home / "blobs" / "tmp").iterdir())  # no half-written blob left


# ------------------------------------------------------------------------------ real processes


def _run(
    world: World,
    args: list[str],
    *,
    script: bool = False,
    preexec_fn: Callable[[], None] | None = None,
    **kwargs: object,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORADEX_")}
    env.update({k: v for k, v in world.env.items() if v is not None})
    if script:
        if not CONSOLE_SCRIPT.exists():
            pytest.skip(f"no console script at {CONSOLE_SCRIPT} (not installed in this venv)")
        argv = [str(CONSOLE_SCRIPT)]
    else:
        argv = [sys.executable, "-m", "cli.main"]
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [*argv, *[world.fill(a) for a in args]],
        env=env,
        cwd=REPO,
        capture_output="stdout" not in kwargs,
        stderr=subprocess.PIPE if "stdout" in kwargs else None,
        text=True,
        timeout=120,
        preexec_fn=preexec_fn,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("setup", "args", "expect", "script"),
    [
        (home_is_file, ["list"], "LORADEX_HOME", False),
        (home_under_file, ["register", "{adapter}", "--name", "a"], "cannot be created", True),
        (database_mysql, ["db", "current"], "does not support (scheme 'mysql')", True),
        (database_nonsense, ["search"], "LORADEX_DATABASE_URL", False),
        (blob_url_s3, ["show", "x"], "not supported yet", False),
        (None, ["register", "{tmp}/huge-rank", "--name", "h"], "error:", True),
        (blobs_gone, ["verify"], "LORADEX_BLOB_URL", False),
    ],
    ids=["home-file", "home-uncreatable", "mysql", "nonsense", "s3", "huge-rank", "blobs-gone"],
)
def test_real_process_prints_one_error_line(
    tmp_path: Path,
    setup: Callable[[World], None] | None,
    args: list[str],
    expect: str,
    script: bool,
) -> None:
    world = _world(tmp_path)
    if setup is not None:
        setup(world)
    proc = _run(world, args, script=script)
    assert_one_error_line(proc.returncode, proc.stderr, code=1, expect=expect)


def test_real_process_debug_shows_the_traceback(tmp_path: Path) -> None:
    world = _world(tmp_path)
    proc = _run(world, ["--debug", "inspect", "{tmp}/huge-rank"])
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr


def test_closed_stdout_is_a_quiet_exit(tmp_path: Path) -> None:
    """`loradex list | head -0`: the reader is gone before the first line is written."""
    world = _world(tmp_path)
    registered(world)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = _run(world, ["list"], stdout=write_end)
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert proc.stderr == ""


def test_real_ctrl_c_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """SIGINT while `check --output FIFO` waits for a reader of its report."""
    world = _world(tmp_path)
    signature = tmp_path / "signature.json"
    made = _run(world, ["inspect", "{base}", "--signature"])
    assert made.returncode == 0, made.stderr
    signature.write_text(made.stdout)
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORADEX_")}
    env.update({k: v for k, v in world.env.items() if v is not None})
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "check", "--adapter", str(world.adapter),
         "--base-signature", str(signature), "--output", str(fifo)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wchan = Path(f"/proc/{proc.pid}/wchan")
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            state = wchan.read_text() if wchan.exists() else ""
            if "partner" in state or "fifo" in state:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"check never blocked on its --output FIFO: {proc.communicate()}")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert stderr == "error: interrupted\n"


@pytest.mark.slow
def test_ctrl_c_during_a_merge_never_hangs(tmp_path: Path) -> None:
    """SIGINT once a merge has started writing (its temp folder exists; torch may still be
    importing in the background), at several moments: each run ends within the grace period,
    exit 130 (or 0 if it had finished), one `error: interrupted` line, nothing left at --out."""
    world = _world(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORADEX_")}
    env.update({k: v for k, v in world.env.items() if v is not None})
    for i, delay in enumerate((0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)):
        parent = tmp_path / f"run-{i}"
        parent.mkdir()
        out = parent / "merged"
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "merge", "--base", str(world.base),
             "--adapter", str(world.adapter), "--out", str(out), "--quiet"],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and not any(parent.iterdir()):
                if time.monotonic() > deadline:
                    pytest.fail("the merge never started writing")
                time.sleep(0.005)
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                pytest.fail(f"merge hung after SIGINT ({delay}s into writing)")
        if proc.returncode == 0:
            continue  # it finished before the signal arrived
        assert proc.returncode == 130, (delay, stderr)
        assert stderr == "error: interrupted\n", (delay, stderr)
        assert not out.exists(), delay


# ------------------------------------------------------------------------------ full disks


def _fill(folder: Path, *, leave: int) -> None:
    """Fill the filesystem of ``folder`` up, then free ``leave`` bytes again."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        chunk = b"\0" * 65536
        while True:
            try:
                if os.write(fd, chunk) == 0:
                    break
            except OSError:
                if len(chunk) == 512:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted at tmp_path/disk (skips where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the RLIMIT_FSIZE rows cover full disks here")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({made.stderr.strip()}); RLIMIT_FSIZE rows cover it"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG, do not kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _assert_nothing_recorded(world: World) -> None:
    listing = _run(world, ["list", "--json"])
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout)["items"] == []
    tmp = world.home / "blobs" / "tmp"
    assert not tmp.is_dir() or not list(tmp.iterdir()), "a half-written blob was left behind"


BIG_ADAPTER = {"hidden": 512, "rank": 16}  # a 256 KiB weights file
SMALL_ADAPTER: dict[str, int] = {}  # 2 KiB


@pytest.mark.parametrize(
    ("limit", "adapter", "expect"),
    [
        (65536, BIG_ADAPTER, "cannot store"),  # the weights blob hits the limit
        (49152, SMALL_ADAPTER, "registry database"),  # the blobs fit, the transaction does not
    ],
    ids=["blob", "database"],
)
def test_register_past_a_file_size_limit(
    tmp_path: Path, limit: int, adapter: dict[str, int], expect: str
) -> None:
    world = _world(tmp_path)
    assert invoke(world, ["list"]).exit_code == 0  # the registry exists (migrated) first
    write_tiny_adapter(world.adapter, **adapter)
    proc = _run(
        world, ["register", "{adapter}", "--name", "big"], preexec_fn=_file_size_limit(limit)
    )
    line = assert_one_error_line(proc.returncode, proc.stderr, code=1, expect=expect)
    assert "File too large" in line or "disk I/O error" in line
    _assert_nothing_recorded(world)


@pytest.mark.parametrize(
    ("leave", "adapter", "expect"),
    [
        (65536, BIG_ADAPTER, "No space left on device"),
        (65536, SMALL_ADAPTER, "registry database"),
    ],
    ids=["blob", "database"],
)
def test_register_on_a_full_disk(
    small_disk: Path, tmp_path: Path, leave: int, adapter: dict[str, int], expect: str
) -> None:
    world = _world(tmp_path)
    world.home = small_disk / "home"
    world.env["LORADEX_HOME"] = str(world.home)
    assert invoke(world, ["list"]).exit_code == 0
    write_tiny_adapter(world.adapter, **adapter)
    _fill(small_disk, leave=leave)
    proc = _run(world, ["register", "{adapter}", "--name", "big"])
    line = assert_one_error_line(proc.returncode, proc.stderr, code=1, expect=expect)
    assert "could not be written" in line or "cannot store" in line
    (small_disk / "filler").unlink()
    _assert_nothing_recorded(world)


@pytest.mark.parametrize(
    "args",
    [["versions", "{long}"], ["journal", "{long}"], ["base", "show", "{long}"], ["show", "{long}@1"]],
)
def test_a_huge_argument_is_cut_in_the_error_and_the_hint(tmp_path: Path, args: list[str]) -> None:
    world = _world(tmp_path)
    registered(world)
    long = "x" * 10_000
    result = _run(world, [a.replace("{long}", long) for a in args])
    assert result.returncode == 1, result.stderr
    assert "(10000 characters)" in result.stderr or "(10002 characters)" in result.stderr
    assert all(len(line) < 400 for line in result.stderr.splitlines()), result.stderr[:500]
