"""``loradex publish`` and the alias policy/protection/list commands against a registry server
(``LORADEX_SERVER``, a real uvicorn process) print what they print on a local registry, with the
same exit codes: the server runs the gates."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from tests.conftest import write_tiny_adapter, write_tiny_base
from tests.e2e.test_remote_cli import Sides, _normal, sides

__all__ = ["sides"]

SCRIPT: list[tuple[int, tuple[str, ...]]] = [
    (0, ("register", "{tmp}/a1", "--name", "support", "--eval", "accuracy=0.85,dataset=squad")),
    (0, ("register", "{tmp}/a2", "--name", "support", "--eval", "accuracy=0.80,dataset=squad")),
    (0, ("alias", "policy", "set", "support", "production", "--require", "accuracy>=0.82@squad")),
    (0, ("alias", "policy", "show", "support", "production", "--json")),
    (0, ("publish", "support@1", "--alias", "production", "--base-signature", "{tmp}/sig.json", "--dry-run")),
    (0, ("publish", "support@1", "--alias", "production", "--base-signature", "{tmp}/sig.json", "--serving", "vllm")),
    (1, ("publish", "support@2", "--alias", "production", "--base-signature", "{tmp}/sig.json", "--no-regress", "accuracy")),
    (1, ("publish", "support@2", "--alias", "production", "--base-signature", "{tmp}/sig.json", "--format", "github")),
    (1, ("alias", "set", "support@2", "production")),
    (0, ("alias", "protect", "support", "production")),
    (0, ("alias", "list", "support")),
    (0, ("alias", "list")),
    (0, ("alias", "list", "--json")),
    (0, ("alias", "policy", "rm", "support", "production", "--json")),
    (0, ("alias", "unprotect", "support", "production", "--json")),
    (0, ("alias", "set", "support@2", "production")),
    (0, ("publish", "--rollback", "support", "--alias", "production", "--base-signature", "{tmp}/sig.json", "--json")),
    (1, ("publish", "--rollback", "support", "--alias", "staging", "--base-signature", "{tmp}/sig.json")),
    (0, ("alias", "history", "support", "production")),
]  # fmt: skip


def _same(text: str, tmp: Path) -> str:
    """Output with times and the signature's label (a file here, a document there) made equal."""
    text = re.sub(r"signature /[^\s\"]*", "signature (given)", text)
    if text.startswith(("{", "[")):
        return _normal(json.dumps(json.loads(text), sort_keys=True))
    return "\n".join(" ".join(line.split()) for line in _normal(text).splitlines())  # column widths


def test_publish_commands_against_a_server_match_the_local_registry(sides: Sides) -> None:
    tmp = sides.tmp
    write_tiny_adapter(tmp / "a1", seed=0)
    write_tiny_adapter(tmp / "a2", seed=1)
    signature = CliRunner().invoke(cli, ["inspect", str(write_tiny_base(tmp / "base")), "--signature"], env=sides.local_env)
    assert signature.exit_code == 0, signature.output
    (tmp / "sig.json").write_text(signature.stdout)
    for code, args in SCRIPT:
        local, remote = sides.run("local", *args), sides.run("remote", *args)
        assert (local.exit_code, remote.exit_code) == (code, code), (args, local.output, remote.output)
        assert _same(remote.stdout, tmp) == _same(local.stdout, tmp), args
        local_error = [line for line in local.stderr.splitlines() if line.startswith("error:")]
        remote_error = [line for line in remote.stderr.splitlines() if line.startswith("error:")]
        assert len(local_error) == len(remote_error) == (1 if code else 0), (args, local.stderr, remote.stderr)
        if code:
            assert _same(remote_error[0], tmp) == _same(local_error[0], tmp), args
