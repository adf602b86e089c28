"""``loradex register`` stores only the adapter's own files by default; --include/--exclude change
that; a folder with both weight files warns (stderr and --json) and uses the safetensors one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result

from cli.main import cli

MakeAdapter = Callable[..., Path]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def training_folder(make_adapter: MakeAdapter) -> Path:
    adapter = make_adapter()
    (adapter / "README.md").write_text("# card\n")
    (adapter / "chat_template.jinja").write_text("{{ messages }}")
    (adapter / "training_args.bin").write_bytes(b"\x80\x04junk")
    (adapter / "optimizer.pt").write_bytes(b"opt")
    (adapter / "checkpoint-10").mkdir()
    (adapter / "checkpoint-10" / "adapter_model.safetensors").write_bytes(b"old")
    (adapter / "checkpoint-10" / "optimizer.pt").write_bytes(b"old-opt")
    return adapter


def stored(name: str) -> list[str]:
    result = run("show", name, "--json")
    assert result.exit_code == 0, result.stderr
    return sorted(f["path"] for f in json.loads(result.stdout)["files"])


def test_register_stores_only_the_adapter_own_files(
    cli_env: dict[str, str], make_adapter: MakeAdapter
) -> None:
    adapter = training_folder(make_adapter)
    result = run("register", adapter, "--name", "own")
    assert result.exit_code == 0, result.stderr
    assert stored("own") == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "chat_template.jinja",
    ]


def test_include_and_exclude_globs(cli_env: dict[str, str], make_adapter: MakeAdapter) -> None:
    adapter = training_folder(make_adapter)
    result = run(
        "register", adapter, "--name", "globs",
        "--include", "checkpoint-*", "--include", "*.pt",
        "--exclude", "*/optimizer.pt", "--exclude", "README.md",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert stored("globs") == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "chat_template.jinja",
        "checkpoint-10/adapter_model.safetensors",
        "optimizer.pt",
    ]
    excluded = run("register", adapter, "--name", "noweights", "--exclude", "adapter_model.*")
    assert excluded.exit_code == 1 and excluded.stderr.startswith("error: ")
    assert "lacks adapter_config.json or adapter_model.safetensors" in excluded.stderr


def test_both_weight_files_warn_and_the_safetensors_one_is_used(
    cli_env: dict[str, str], make_adapter: MakeAdapter
) -> None:
    adapter = make_adapter()
    (adapter / "adapter_model.bin").write_bytes(b"legacy")
    result = run("register", adapter, "--name", "both")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith(
        "warning: the folder has both adapter_model.safetensors and adapter_model.bin"
    )
    assert stored("both") == ["adapter_config.json", "adapter_model.safetensors"]
    other = make_adapter(seed=5)
    (other / "adapter_model.bin").write_bytes(b"legacy")
    as_json = run("register", other, "--name", "both", "--json", "--include", "adapter_model.bin")
    assert as_json.exit_code == 0, as_json.stderr
    warnings = json.loads(as_json.stdout)["warnings"]
    assert len(warnings) == 1 and "adapter_model.bin is stored too" in warnings[0]
    assert "warning: " in as_json.stderr
