"""``loradex resize`` and ``loradex extract`` end to end: tables, --json, --name with lineage,
one-line errors, and outputs that ``loradex check --serving vllm`` finds correctly scaled."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner, Result

from cli.main import cli
from tests import factories as F


def run(*args: str | Path, ok: bool = True) -> Result:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, (args, result.output, result.stderr)
    return result


def _no_scaling_finding(adapter: Path, base: Path) -> None:
    out = json.loads(run("check", "--adapter", adapter, "--base", base, "--serving", "vllm", "--format", "json").stdout)
    codes = {f["code"] for f in out["findings"]}
    assert "vllm_misscaled" not in codes, codes


def _tuned(tmp_path: Path) -> tuple[Path, Path]:
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base")
    model = F.tiny_llama()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "down_proj.weight")):
                p += 0.1 * torch.randn(p.shape[0], 5, generator=g) @ torch.randn(5, p.shape[1], generator=g)
    return base, F.save_checkpoint(model, tmp_path / "tuned")


def test_resize_table_json_and_registered_lineage(cli_env: dict[str, str], tmp_path: Path) -> None:
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base")
    src = F.save_adapter(F.tiny_llama(), tmp_path / "src", target_modules=["q_proj", "v_proj"], r=8, lora_alpha=16)
    text = run("resize", src, "--rank", "2", "--out", tmp_path / "r2").stdout
    assert "model.layers.0.self_attn.q_proj" in text and "8 -> 2" in text and "worst relative error" in text
    data = json.loads(run("resize", src, "--energy", "0.9", "--out", tmp_path / "e90", "--json").stdout)
    assert data["request"] == {"operation": "resize", "source": str(src), "rank": None, "energy": 0.9}
    assert all(m["kept_energy"] >= 0.9 for m in data["modules"])
    for out in ("r2", "e90"):
        _no_scaling_finding(tmp_path / out, base)
    # Registered source -> registered result with a derived-from edge carrying rank and errors.
    run("register", src, "--name", "sts")
    registered = json.loads(run("resize", "sts@1", "--rank", "4", "--name", "sts-r4", "--json").stdout)
    assert registered["registered"]["name"] == "sts-r4" and registered["out"] is None
    lineage = run("lineage", "sts-r4@1", "--json").stdout
    assert "derived-from" in lineage and "resize" in lineage and "max_relative_error" in lineage
    # Nothing left behind in the cache.
    assert not any((Path(cli_env["LORADEX_HOME"]) / "cache" / "algebra").iterdir())


def test_extract_cli_and_errors(cli_env: dict[str, str], tmp_path: Path) -> None:
    base, tuned = _tuned(tmp_path)
    data = json.loads(
        run("extract", "--base", base, "--tuned", tuned, "--rank", "5", "--out", tmp_path / "ex", "--json",
            "--device", "cpu").stdout
    )
    assert data["max_relative_error"] < 1e-5 and len(data["verified"]) == 2
    assert {m["path"] for m in data["modules"]} == {
        f"model.layers.{i}.{n}" for i in range(2) for n in ("self_attn.q_proj", "mlp.down_proj")
    }
    _no_scaling_finding(tmp_path / "ex", base)
    text = run("extract", "--base", base, "--tuned", tuned, "--energy", "0.99", "--name", "ex", "--quiet").stdout
    assert "extracted 4 modules into ex@1" in text
    # Errors: one line, exit 1; usage errors exit 2.
    wide = F.save_checkpoint(F.tiny_llama(intermediate_size=96), tmp_path / "wide")
    bad = run("extract", "--base", base, "--tuned", wide, "--rank", "2", "--out", tmp_path / "bad", ok=False)
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")
    assert "down_proj.weight" in bad.stderr and not (tmp_path / "bad").exists()
    assert run("extract", "--base", base, "--tuned", tuned, "--out", tmp_path / "x", ok=False).exit_code == 2
    keep = run("extract", "--base", base, "--tuned", tuned, "--rank", "2", "--out", tmp_path / "k",
               "--keep-full", "heads", ok=False)
    assert keep.exit_code == 1 and "cannot keep 'heads'" in keep.stderr


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_force_never_replaces_an_input_even_an_earlier_output(cli_env: dict[str, str], tmp_path: Path) -> None:
    """resize and extract refuse an --out that is, contains or lies inside one of their inputs,
    --force or not, also when the input is itself an earlier loradex output (replaceable)."""
    base, _ = _tuned(tmp_path)
    src = F.save_adapter(F.tiny_llama(), tmp_path / "src", target_modules=["q_proj"], r=4)
    tuned = tmp_path / "merged-tuned"
    run("merge", "--base", base, "--adapter", src, "--out", tuned, "--quiet")
    run("resize", src, "--rank", "2", "--out", tmp_path / "r1", "--quiet")
    cases = [
        ("extract", "--base", base, "--tuned", tuned, "--rank", "2", "--out", tuned, "--force"),
        ("extract", "--base", tuned, "--tuned", tuned, "--rank", "2", "--out", tuned / "inside"),
        ("resize", tmp_path / "r1", "--rank", "1", "--out", tmp_path / "r1", "--force"),
        ("resize", src, "--rank", "1", "--out", src / "inside"),
    ]
    for args in cases:
        before = {p: _snapshot(p) for p in (tuned, tmp_path / "r1", src)}
        result = run(*args, ok=False)
        assert result.exit_code == 1, (args, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "input folder" in errors[0], (args, result.stderr)
        assert {p: _snapshot(p) for p in before} == before, args
    # The stated guard also covers a folder above an input.
    nested = tmp_path / "m1"
    run("merge", "--base", base, "--adapter", src, "--out", nested, "--quiet")
    run("resize", src, "--rank", "2", "--out", nested / "sub", "--quiet")
    result = run("resize", nested / "sub", "--rank", "1", "--out", nested, "--force", ok=False)
    assert result.exit_code == 1 and "contains the input folder" in result.stderr
    assert (nested / "sub" / "adapter_config.json").is_file()
