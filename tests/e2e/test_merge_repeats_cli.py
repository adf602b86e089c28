"""`loradex merge` refuses the same adapter twice (folders or registry references) without --weight."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result

from cli.main import cli

MakeAdapter = Callable[..., Path]


def run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, (args, result.output, result.stderr)
    return result


def test_two_references_to_one_version_are_refused(
    cli_env: dict[str, str], make_adapter: MakeAdapter, tiny_base: Path, tmp_path: Path
) -> None:
    folder = make_adapter(seed=1)
    run("register", str(folder), "--name", "support")
    run("alias", "set", "support@1", "production")
    out = tmp_path / "merged"
    refused = run(
        "merge", "--base", str(tiny_base), "--adapter", "support@1", "--adapter", "support@production",
        "--out", str(out), code=1,
    )  # fmt: skip
    assert refused.stderr.startswith(
        "error: adapters 'support@1' (#1) and 'support@production' (#2) are the same adapter (folder "
    )
    assert refused.stderr.count("\n") == 1 and not out.exists()
    # A folder and the version registered from the same bytes: the same content.
    same = run(
        "merge", "--base", str(tiny_base), "--adapter", str(folder), "--adapter", "support",
        "--out", str(out), code=1,
    )  # fmt: skip
    assert f"error: adapters '{folder}' (#1) and 'support' (#2) are the same adapter (identical" in same.stderr
    # With explicit weights it is deliberate, and allowed.
    run(
        "merge", "--base", str(tiny_base), "--adapter", "support@1", "--adapter", "support@production",
        "--weight", "0.5", "--weight", "0.5", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert (out / "model.safetensors").is_file()
