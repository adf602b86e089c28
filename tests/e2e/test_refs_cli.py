"""Registry references work wherever a path works: `merge` and `check` by NAME, NAME@alias, sha256."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result

from cli.main import cli

MakeAdapter = Callable[..., Path]


def run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, (args, result.output, result.stderr)
    return result


def test_merge_by_reference_records_the_checkpoint(
    cli_env: dict[str, str], make_adapter: MakeAdapter, tiny_base: Path, tmp_path: Path
) -> None:
    run("base", "add", str(tiny_base), "--name", "tiny")
    run("register", str(make_adapter(seed=1)), "--name", "support", "--base", "tiny")
    run("register", str(make_adapter(seed=2)), "--name", "support", "--base", "tiny")
    run("alias", "set", "support@1", "production")
    out = tmp_path / "merged"
    summary = json.loads(
        run("merge", "--base", "tiny", "--adapter", "support@production", "--out", str(out), "--json").stdout
    )
    recorded = summary["recorded_checkpoint"]
    assert recorded["location"] == str(out.resolve()) or recorded["location"] == str(out)
    assert [m["ref"] for m in recorded["members"]] == ["support@1"]
    assert len(recorded["fingerprint"]) == 64
    # the same merge from the plain folder gives byte-identical weights
    folder_out = tmp_path / "from-folder"
    run("merge", "--base", str(tiny_base), "--adapter", str(make_adapter(seed=1)), "--out", str(folder_out))
    assert (out / "model.safetensors").read_bytes() == (folder_out / "model.safetensors").read_bytes()
    lineage = run("lineage", "support@1").stdout
    assert "merged-into" in lineage and str(out.name) in lineage


def test_check_by_reference_and_unknown_reference(
    cli_env: dict[str, str], make_adapter: MakeAdapter, tiny_base: Path
) -> None:
    run("register", str(make_adapter(seed=3)), "--name", "billing")
    report = json.loads(run("check", "--adapter", "billing", "--base", str(tiny_base), "--format", "json").stdout)
    assert report["ok"] is True
    missing = run("check", "--adapter", "no-such-adapter", "--base", str(tiny_base), code=1)
    assert "no-such-adapter" in missing.stderr and "Traceback" not in missing.output
    assert missing.stderr.count("\n") == 2 and missing.stderr.splitlines()[1].startswith("hint: ")


def test_verify_reports_a_corrupt_blob_and_exits_1(
    cli_env: dict[str, str], make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    folder = make_adapter(seed=5)
    run("register", str(folder), "--name", "support")
    assert run("verify").stdout.strip() == "all stored files match their sha256"
    home = Path(cli_env["LORADEX_HOME"])
    weights = json.loads(run("show", "support@1", "--json").stdout)["weights_sha256"]
    blob = home / "blobs" / weights[:2] / weights[2:4] / weights
    blob.chmod(0o644)
    blob.write_bytes(b"rot" + blob.read_bytes()[3:])
    bad = run("verify", "support@1", code=1)
    assert "corrupt: support@1 adapter_model.safetensors" in bad.stderr
    report = json.loads(run("verify", "--json", code=1).stdout)
    assert report["ok"] is False and report["corrupt"][0]["sha256"] == weights
    # registering the same folder again repairs it
    run("register", str(folder), "--name", "support")
    assert json.loads(run("verify", "--json").stdout) == {"ok": True, "missing": [], "corrupt": []}
