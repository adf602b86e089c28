"""The registry commands against a real ``loradex serve`` print what they print locally.

One registry is local (SQLite in a LORADEX_HOME); another is served by a uvicorn subprocess on a
free port. The same script of commands runs against both (the client side with
``LORADEX_SERVER``/``LORADEX_TOKEN`` and a LORADEX_HOME of its own, holding only its cache); each
command's stdout, stderr and exit status must be equal, after replacing timestamps (the two
registries record their own clocks). The token is named like the local user, so the recorded
actors agree; the local registry gets a token too, so that event numbers agree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from tests.conftest import write_tiny_adapter, write_tiny_base

_SECRET = re.compile(r"ldx_[A-Za-z0-9_-]{43}")
_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(\+00:00|Z)?")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Sides:
    tmp: Path
    local_env: dict[str, str]
    remote_env: dict[str, str]
    url: str
    server_home: Path
    client_home: Path
    server_db: str | None = None

    def run(self, side: str, *args: str) -> Result:
        env = self.local_env if side == "local" else self.remote_env
        return CliRunner().invoke(cli, [a.format(tmp=self.tmp) for a in args], env=env)


def _start_server(home: Path, database_url: str | None) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORADEX_")}
    env.update({"LORADEX_HOME": str(home), "LORADEX_USER": "server-admin"})
    if database_url:
        env["LORADEX_DATABASE_URL"] = database_url
    process = subprocess.Popen(
        [sys.executable, "-c", "from cli.main import main; main()", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/v1/openapi.json", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            output = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"loradex serve did not start: {output}")
        time.sleep(0.2)


def _token(home: Path, *args: str, database_url: str | None = None) -> str:
    env = {"LORADEX_HOME": str(home), "LORADEX_USER": "tester", "LORADEX_SERVER": ""}
    if database_url:
        env["LORADEX_DATABASE_URL"] = database_url
    result = CliRunner().invoke(cli, ["token", "create", *args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["secret"])


@pytest.fixture
def sides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Iterator[Sides]:
    """The local registry on SQLite; the server's on the parametrized backend."""
    server_db = None if db_url.startswith("sqlite") else db_url
    for key in ("LORADEX_DATABASE_URL", "LORADEX_SERVER", "LORADEX_TOKEN", "LORADEX_BLOB_URL"):
        monkeypatch.delenv(key, raising=False)
    server_home, local_home, client_home = (tmp_path / n for n in ("server", "local", "client"))
    # The server's registry exists before it starts: its first token is made from its machine.
    secret = _token(server_home, "--scope", "admin", "--name", "tester", database_url=server_db)
    _token(local_home, "--scope", "admin", "--name", "tester")  # the same journal on both sides
    process, url = _start_server(server_home, server_db)
    try:
        yield Sides(
            tmp=tmp_path,
            local_env={"LORADEX_HOME": str(local_home), "LORADEX_USER": "tester"},
            remote_env={
                "LORADEX_HOME": str(client_home),
                "LORADEX_USER": "someone-else",
                "LORADEX_SERVER": url,
                "LORADEX_TOKEN": secret,
            },
            url=url,
            server_home=server_home,
            client_home=client_home,
            server_db=server_db,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _normal(text: str) -> str:
    return _SECRET.sub("<secret>", _TIME.sub("<time>", text))


SCRIPT: list[tuple[str, ...]] = [
    ("register", "{tmp}/a1", "--name", "support", "--eval", "accuracy=0.8", "--tag", "team=cx",
     "--description", "first"),
    ("register", "{tmp}/a2", "--name", "support", "--eval", "accuracy=0.9,dataset=d1",
     "--parent", "support@1", "--json"),
    ("register", "{tmp}/a1", "--name", "support", "--eval", "accuracy=0.85", "--tag", "x=y"),
    ("register", "{tmp}/a3", "--name", "other", "--include", "notes.txt", "--json"),
    ("register", "{tmp}/a3", "--name", "bad name!"),
    ("register", "{tmp}/nope", "--name", "x"),
    ("register", "{tmp}/broken", "--name", "broken"),
    ("list",),
    ("list", "--json"),
    ("list", "sup*", "--limit", "1"),
    ("list", "--limit", "0"),
    ("versions", "support"),
    ("versions", "support", "--json"),
    ("versions", "nope"),
    ("show", "support@1"),
    ("show", "support", "--json"),
    ("show", "other@1", "--json"),
    ("show", "support@99"),
    ("show", "nope@1"),
    ("show", "bad@@"),
    ("show", "x" * 5000),
    ("search", "accuracy>=0.8", "--sort", "accuracy"),
    ("search", "--tag", "team=cx", "--json"),
    ("search", "--name", "sup*", "--module", "q_proj", "--max-rank", "8", "--all", "--json"),
    ("search", "nosuchmetric>=1"),
    ("eval", "add", "support@2", "f1=0.7", "accuracy=0.9,dataset=d1"),
    ("eval", "add", "support@2", "f1=0.7", "--json"),
    ("eval", "list", "support@2"),
    ("eval", "list", "support@2", "--json"),
    ("eval", "add", "support@2", "f1=nan"),
    ("tag", "support@1", "stage=dev", "--rm", "team"),
    ("tag", "support@1", "owner=me", "--json"),
    ("alias", "set", "support@1", "production"),
    ("alias", "set", "support@2", "production", "--json"),
    ("alias", "set", "support@2", "bad alias"),
    ("show", "support@production"),
    ("alias", "history", "support"),
    ("alias", "history", "support", "production", "--json"),
    ("alias", "rm", "support", "production", "--json"),
    ("alias", "rm", "support", "nope"),
    ("yank", "support@1", "--reason", "bad data"),
    ("yank", "support@1", "--reason", "again", "--json"),
    ("show", "support@1"),
    ("unyank", "support@1", "--json"),
    ("unyank", "support@1"),
    ("lineage", "support@2"),
    ("lineage", "support@1", "--json"),
    ("base", "add", "{tmp}/base", "--name", "tiny", "--store", "--json"),
    ("base", "add", "{tmp}/base"),
    ("base", "list"),
    ("base", "list", "--json"),
    ("base", "show", "tiny"),
    ("base", "show", "tiny", "--json"),
    ("base", "show", "nope"),
    ("register", "{tmp}/a4", "--name", "support", "--base", "tiny", "--json"),
    ("register", "{tmp}/a5", "--name", "support", "--base", "{tmp}/base", "--json"),
    ("register", "{tmp}/wide", "--name", "support", "--base", "{tmp}/base"),
    ("register", "{tmp}/a5", "--name", "support", "--base", "{tmp}/nope"),
    ("checkpoints",),
    ("checkpoints", "--ref", "support@2", "--json"),
    ("delete", "support@1"),
    ("delete", "other@1", "--purge", "--json"),
    ("show", "other@1"),
    ("versions", "other", "--json"),
    ("register", "{tmp}/a6", "--name", "support", "--exclude", "README.md", "--source", "run-7",
     "--parent", "support@2", "--relation", "rescaled-from", "--json"),
    ("register", "{tmp}/a6", "--name", "support", "--parent", "other@1"),
    ("lineage", "support@2", "--json"),
    ("search", "--base", "tiny", "--json"),
    ("search", "accuracy>=0.5", "--dataset", "d1", "--split", "test"),
    ("search", "--sort", "-accuracy", "--limit", "1", "--json"),
    ("search", "--limit", "5000"),
    ("list", "--limit", "1", "--after", "c3VwcG9ydA"),
    ("list", "--after", "garbage!"),
    ("yank", "support@2", "--reason", ""),
    ("yank", "support@2", "--reason", "line\nbreak"),
    ("alias", "set", "support@2", "staging"),
    ("yank", "support@2", "--reason", "regressed"),
    ("alias", "set", "support@2", "canary"),
    ("show", "support@staging"),
    ("delete", "support@2", "--purge"),
    ("alias", "rm", "support", "staging"),
    ("alias", "set", "support", "latest"),
    ("eval", "add", "support@1", "accuracy"),
    ("eval", "add", "support@1", "accuracy=1e400"),
    ("tag", "support@1", "--rm", "stage", "--json"),
    ("tag", "support@1", "=v"),
    ("journal", "--limit", "0"),
    ("journal", "nope"),
    ("journal",),
    ("journal", "support", "--json"),
    ("journal", "--after", "3", "--limit", "2", "--json"),
    ("metric", "set", "accuracy", "--higher-is-better", "--json"),
    ("metric", "set", "loss", "--lower-is-better"),
    ("metric", "set", "eval/loss", "--lower-is-better", "--json"),
    ("metric", "set", "bad name!", "--lower-is-better"),
    ("metric", "list"),
    ("metric", "list", "--json"),
    ("token", "create", "--scope", "read", "--name", "ro", "--expires", "2w", "--json"),
    ("token", "create", "--scope", "write", "--prefix", "support-"),
    ("token", "create", "--scope", "read", "--expires", "99999d"),
    ("token", "create", "--scope", "read", "--name", "has space"),
    ("token", "list"),
    ("token", "list", "--json"),
    ("token", "revoke", "2", "--json"),
    ("token", "revoke", "2"),
    ("token", "revoke", "99"),
    ("token", "list"),
]


def _prepare(tmp: Path) -> None:
    write_tiny_adapter(tmp / "a1", seed=1)
    write_tiny_adapter(tmp / "a2", seed=2)
    write_tiny_adapter(tmp / "a3", seed=3, extra_files={"notes.txt": "hello"})
    write_tiny_adapter(tmp / "a4", seed=4)
    write_tiny_adapter(tmp / "a5", seed=6)
    write_tiny_adapter(tmp / "a6", seed=8, extra_files={"README.md": "# a6"})
    write_tiny_adapter(tmp / "wide", seed=7, hidden=32)
    broken = write_tiny_adapter(tmp / "broken", seed=5)
    (broken / "adapter_config.json").write_text("{not json")
    write_tiny_base(tmp / "base")


@pytest.mark.slow
def test_every_registry_command_prints_the_same_against_a_server(sides: Sides) -> None:
    _prepare(sides.tmp)
    for args in SCRIPT:
        local = sides.run("local", *args)
        remote = sides.run("remote", *args)
        shown = " ".join(a[:40] for a in args)
        assert remote.exception is None or isinstance(remote.exception, SystemExit), (
            shown, remote.stderr, remote.exception)
        assert (remote.exit_code, _normal(remote.stdout), _normal(remote.stderr)) == (
            local.exit_code, _normal(local.stdout), _normal(local.stderr)
        ), f"{shown}\n--- local:\n{local.stdout}{local.stderr}--- remote:\n{remote.stdout}{remote.stderr}"
        assert len(remote.stderr.splitlines()) <= 2 or remote.exit_code in (0, 2), shown
    # export: the same files, written atomically, verified
    out = sides.tmp / "exported"
    for side in ("local", "remote"):
        result = sides.run(side, "export", "support@2", "--out", str(out), "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["out"] == str(out)
        files = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
        shutil.move(str(out), str(sides.tmp / f"exported-{side}"))
        assert files == {p.name: p.read_bytes() for p in (sides.tmp / "a2").iterdir()}
    exists_local = sides.run("local", "export", "support@2", "--out", str(sides.tmp / "exported-local"))
    exists_remote = sides.run("remote", "export", "support@2", "--out", str(sides.tmp / "exported-local"))
    assert (exists_remote.exit_code, exists_remote.stderr) == (exists_local.exit_code, exists_local.stderr)
    assert exists_remote.exit_code == 1
    # a base folder the server does not know: a local register adds it, a remote one cannot
    write_tiny_base(sides.tmp / "other-base", seed=3)
    refused = sides.run("remote", "register", "{tmp}/a5", "--name", "support", "--base", "{tmp}/other-base")
    assert refused.exit_code == 1 and "is not registered on the registry server" in refused.stderr
    assert "hint: run `loradex base add PATH --store`" in refused.stderr
    # the client kept nothing but its cache: no database, no blob store of its own
    assert not (sides.client_home / "registry.db").exists()
    assert not (sides.client_home / "blobs").exists()


def test_merge_and_check_resolve_references_on_the_server(sides: Sides) -> None:
    _prepare(sides.tmp)
    for args in (
        ("register", "{tmp}/a1", "--name", "support"),
        ("alias", "set", "support@1", "production"),
        ("base", "add", "{tmp}/base", "--name", "tiny", "--store"),
    ):
        assert sides.run("remote", *args).exit_code == 0
        assert sides.run("local", *args).exit_code == 0
    for args in (
        ("check", "--adapter", "support@production", "--base", "tiny"),
        ("check", "--adapter", "support@production", "--base", "tiny", "--json"),
        ("check", "--adapter", "support@1", "--adapter", "nope@1", "--base", "tiny"),
        ("inspect", "support@production", "--json"),
    ):
        local, remote = sides.run("local", *args), sides.run("remote", *args)
        assert (remote.exit_code, remote.stdout, remote.stderr) == (
            local.exit_code, local.stdout, local.stderr
        ), args
    (sides.tmp / "base").rename(sides.tmp / "moved")  # only the server has the base's files now
    checked = sides.run("remote", "check", "--adapter", "support@production", "--base", "tiny", "--json")
    assert checked.exit_code == 0, checked.output
    assert "support@production -> support@1" in checked.stdout
    out = sides.tmp / "merged"
    merged = sides.run(
        "remote", "merge", "--base", "tiny", "--adapter", "support@production", "--out", str(out), "--json"
    )
    assert merged.exit_code == 0, merged.output
    assert (out / "model.safetensors").is_file()
    # the files came from the server, verified, into the client's cache; the merge was recorded
    assert any((sides.client_home / "cache" / "versions").iterdir())
    bases = sides.client_home / "cache" / "bases"
    (cached,) = [p for p in bases.iterdir() if p.is_dir()]
    assert (bases / f"{cached.name}.files.json").is_file()  # reuse needs no re-hash
    weights = cached / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(b"x" + weights.read_bytes()[1:])  # tampered: rebuilt from the server
    again = sides.run(
        "remote", "check", "--adapter", "support@1", "--base", "tiny", "--verify-weights"
    )
    assert again.exit_code == 0, again.output
    assert weights.read_bytes()[:1] != b"x"
    listed = json.loads(sides.run("remote", "checkpoints", "--json").stdout)
    assert [m["ref"] for m in listed["items"][0]["members"]] == ["support@1"]
    assert listed["items"][0]["location"] == str(out.resolve())
    lineage = json.loads(sides.run("remote", "lineage", "support@1", "--json").stdout)
    assert lineage["checkpoints"][0]["location"] == str(out.resolve())
    # combine registers its result on the server, with typed lineage and its metadata
    assert sides.run("remote", "register", "{tmp}/a2", "--name", "support").exit_code == 0
    combined = sides.run(
        "remote", "combine", "support@1", "support@2", "--method", "cat", "--name", "both", "--json"
    )
    assert combined.exit_code == 0, combined.output
    shown = json.loads(sides.run("remote", "show", "both@1", "--json").stdout)
    assert shown["metadata"]["request"]["method"] == "cat"
    parents = json.loads(sides.run("remote", "lineage", "both@1", "--json").stdout)["parents"]
    assert [(p["ref"], p["relation"], p["method"]) for p in parents] == [
        ("support@1", "combined-from", "cat"), ("support@2", "combined-from", "cat")
    ]


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), lines
    assert "Traceback" not in result.stderr
    return lines[0]


def test_auth_failures_and_an_unreachable_server_are_one_line(sides: Sides) -> None:
    _prepare(sides.tmp)
    assert sides.run("remote", "register", "{tmp}/a1", "--name", "support").exit_code == 0
    env = dict(sides.remote_env)
    runner = CliRunner()

    bad = runner.invoke(cli, ["list"], env={**env, "LORADEX_TOKEN": "ldx_wrong"})
    assert "token" in _one_error_line(bad)
    missing = runner.invoke(cli, ["list"], env={**env, "LORADEX_TOKEN": ""})
    assert "bearer token" in _one_error_line(missing)

    read_only = _token(sides.server_home, "--scope", "read", "--name", "reader", database_url=sides.server_db)
    forbidden = runner.invoke(cli, ["tag", "support@1", "a=b"], env={**env, "LORADEX_TOKEN": read_only})
    assert "write" in _one_error_line(forbidden)
    assert runner.invoke(cli, ["list"], env={**env, "LORADEX_TOKEN": read_only}).exit_code == 0
    upload = runner.invoke(cli, ["register", str(sides.tmp / "a2"), "--name", "support"],
                           env={**env, "LORADEX_TOKEN": read_only})
    assert "write" in _one_error_line(upload)
    bad_upload = runner.invoke(cli, ["register", str(sides.tmp / "a2"), "--name", "support"],
                               env={**env, "LORADEX_TOKEN": "ldx_wrong"})
    assert "token" in _one_error_line(bad_upload)

    prefixed = _token(
        sides.server_home, "--scope", "write", "--prefix", "team-", "--name", "team", database_url=sides.server_db
    )
    outside = runner.invoke(cli, ["show", "support@1"], env={**env, "LORADEX_TOKEN": prefixed})
    assert "team-" in _one_error_line(outside)
    listed = runner.invoke(cli, ["list", "--json"], env={**env, "LORADEX_TOKEN": prefixed})
    assert json.loads(listed.stdout)["items"] == []

    started = time.monotonic()
    down = runner.invoke(cli, ["--server", f"http://127.0.0.1:{_free_port()}", "list"], env=env)
    line = _one_error_line(down)
    assert "could not be reached" in line and "LORADEX_SERVER" in line
    assert time.monotonic() - started < 30

    for url in ("ftp://x", "not a url", "http://", "http://" + "h" * 3000):
        wrong = runner.invoke(cli, ["--server", url, "list"], env=env)
        assert "LORADEX_SERVER" in _one_error_line(wrong)
    not_loradex = runner.invoke(cli, ["--server", f"{sides.url}/elsewhere", "list"], env=env)
    assert "no route" in _one_error_line(not_loradex)
    with _plain_http_server() as other:  # some other web server: HTML, not problem+json
        stranger = runner.invoke(cli, ["--server", other, "show", "support@1"], env=env)
        assert "is it a loradex server" in _one_error_line(stranger)


@contextmanager
def _plain_http_server() -> Iterator[str]:
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "args",
    [
        ("gc",),
        ("verify",),
        ("db", "check"),
        ("db", "upgrade"),
        ("token", "list"),
        ("token", "create", "--scope", "read"),
        ("metric", "list"),
        ("serve",),
    ],
)
def test_commands_of_the_local_registry_refuse_a_server(args: tuple[str, ...], tmp_path: Path) -> None:
    env = {"LORADEX_HOME": str(tmp_path / "home"), "LORADEX_SERVER": "http://127.0.0.1:9"}
    result = CliRunner().invoke(cli, list(args), env=env)
    line = _one_error_line(result)
    assert "registry server http://127.0.0.1:9" in line
    assert not (tmp_path / "home" / "registry.db").exists()


