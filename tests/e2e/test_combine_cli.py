"""``loradex combine`` / ``loradex rescale`` end to end (in-process CliRunner, real registry)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file

from cli.main import cli

MakeAdapter = Callable[..., Path]


def run(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, (args, result.output, result.stderr)
    return result


def _delta(folder: Path, module: str) -> torch.Tensor:
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(folder / "adapter_model.safetensors")
    stem = f"base_model.model.{module}"
    a, b = tensors[f"{stem}.lora_A.weight"].double(), tensors[f"{stem}.lora_B.weight"].double()
    scale = config["lora_alpha"] / config["r"]
    return scale * b @ a


MODULE = "model.layers.0.self_attn.q_proj"


def test_combine_to_folder_and_json(cli_env, make_adapter: MakeAdapter, tmp_path: Path) -> None:
    a, b = make_adapter(seed=1), make_adapter(seed=2, rank=8, alpha=4.0)
    out = tmp_path / "out"
    result = run("combine", str(a), str(b), "--weight", "0.6", "--weight", "0.4",
                 "--method", "cat", "--out", str(out), "--json")  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["method"] == "cat" and summary["rel_error"] == 0.0
    want = 0.6 * _delta(a, MODULE) + 0.4 * _delta(b, MODULE)
    assert torch.allclose(_delta(out, MODULE), want, atol=1e-6)
    text = run("combine", str(a), str(b), "--method", "svd", "--rank", "2", "--out",
               str(tmp_path / "svd")).stdout  # fmt: skip
    assert text.startswith("combined 2 adapter(s) by svd (rank 2)")
    assert json.loads((tmp_path / "svd" / "adapter_config.json").read_text())["r"] == 2


def test_combine_and_rescale_register_with_lineage(
    cli_env, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    run("register", str(make_adapter(seed=1)), "--name", "a")
    run("register", str(make_adapter(seed=2)), "--name", "b")
    result = run("combine", "a@1", "b", "--weight", "1", "--weight", "-0.5", "--method",
                 "dare_ties_svd", "--density", "0.5", "--seed", "3", "--name", "mix", "--json")  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["registered"]["name"] == "mix" and summary["method"] == "dare_ties"
    lineage = json.loads(run("lineage", "mix@1", "--json").stdout)
    parents = {p["ref"]: p for p in lineage["parents"]}
    assert set(parents) == {"a@1", "b@1"}
    assert parents["b@1"]["relation"] == "combined-from"
    assert parents["b@1"]["weight"] == -0.5 and parents["b@1"]["seed"] == 3
    assert parents["b@1"]["method"] == "dare_ties"
    assert parents["b@1"]["params"]["density"] == 0.5 and "rel_error" in parents["b@1"]["params"]
    run("rescale", "mix", "--scale", "2", "--name", "mix-strong")
    lineage = json.loads(run("lineage", "mix-strong@1", "--json").stdout)
    assert [(p["ref"], p["relation"], p["weight"]) for p in lineage["parents"]] == [
        ("mix@1", "rescaled-from", 2.0)
    ]
    # Nothing left behind in the cache's scratch folder.
    scratch = Path(cli_env["LORADEX_HOME"]) / "cache" / "algebra"
    assert not scratch.exists() or not any(scratch.iterdir())


def test_rescale_to_folder(cli_env, make_adapter: MakeAdapter, tmp_path: Path) -> None:
    a = make_adapter(seed=1)
    out = tmp_path / "r"
    assert "rescaled" in run("rescale", str(a), "--scale", "-1.5", "--out", str(out)).stdout
    assert torch.allclose(_delta(out, MODULE), -1.5 * _delta(a, MODULE), atol=1e-6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "nope"], "error: unknown combine method 'nope'"),
        (["--method", "ties", "--density", "0"], "error: density must be in (0, 1], got 0.0"),
        (["--method", "linear", "--rank", "0"], "error: rank must be at least 1, got 0"),
        (["--method", "cat", "--weight", "1"], "got 1 --weight for 2 SRC"),
    ],
)
def test_user_mistakes_are_one_line_and_write_nothing(
    cli_env, make_adapter: MakeAdapter, tmp_path: Path, extra: list[str], message: str
) -> None:
    a, b = make_adapter(seed=1), make_adapter(seed=2)
    out = tmp_path / "out"
    result = run("combine", str(a), str(b), *extra, "--out", str(out), ok=False)
    assert result.exit_code in (1, 2)
    assert message in result.stderr
    if result.exit_code == 1:
        assert result.stderr.count("\n") == 1
    assert not out.exists()


def test_dora_and_shape_mismatch_refused(
    cli_env, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    a, wide = make_adapter(seed=1), make_adapter(seed=2, hidden=24)
    out = tmp_path / "out"
    result = run("combine", str(a), str(wide), "--method", "cat", "--out", str(out), ok=False)
    assert result.exit_code == 1 and result.stderr.startswith("error: module ")
    assert result.stderr.count("\n") == 1 and not out.exists()
    result = run("rescale", str(a), "--scale", "0", "--out", str(out), ok=False)
    assert result.exit_code == 1 and "scale 0" in result.stderr and not out.exists()


def test_output_may_not_replace_a_source(cli_env, make_adapter: MakeAdapter) -> None:
    a, b = make_adapter(seed=1), make_adapter(seed=2)
    before = (a / "adapter_model.safetensors").read_bytes()
    result = run("combine", str(a), str(b), "--method", "cat", "--out", str(a), "--force", ok=False)
    assert result.exit_code == 1 and result.stderr.startswith("error: ")
    assert (a / "adapter_model.safetensors").read_bytes() == before
