"""Merge, then load the result with transformers: no missing/unexpected/mismatched keys and the
logits of PEFT's merged model. Also through the ``loradex merge`` CLI (click's CliRunner): the
``--json`` summary and the exit codes (0 ok, 1 bad input with one ``error:`` line and nothing
written, 2 usage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from tests import factories as F

INPUT_IDS = torch.tensor([[1, 5, 9, 17, 33, 64, 100, 127], [2, 3, 4, 120, 121, 122, 7, 8]])


@pytest.fixture(autouse=True)
def _quiet() -> None:
    F._quiet_transformers()


def _load(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, dtype="auto")
    assert not any(info.values()), info  # missing, unexpected, mismatched, error messages
    return model.eval()


def _peft_merged_logits(base: Path, adapters: list[Path]) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(_load(base), adapters[0], adapter_name="a0")
    for i, adapter in enumerate(adapters[1:], start=1):
        model.load_adapter(adapter, adapter_name=f"a{i}")
    merged = model.merge_and_unload(adapter_names=[f"a{i}" for i in range(len(adapters))])
    with torch.no_grad():
        return merged(INPUT_IDS).logits


def _logits(path: Path) -> torch.Tensor:
    with torch.no_grad():
        return _load(path)(INPUT_IDS).logits


CASES = {
    "llama-safetensors": ("llama", {}, {"target_modules": ["q_proj", "v_proj", "down_proj"]}),
    "llama-bf16-sharded": (
        "llama",
        {"dtype": "bfloat16", "layout": "sharded"},
        {"target_modules": ["q_proj", "o_proj", "gate_proj"]},
    ),
    "gpt2-bare-bin": (
        "gpt2",
        {"layout": "bin", "prefix": False},
        {"target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True},
    ),
    "llama-dora-embedding": (
        "llama",
        {},
        {"target_modules": ["q_proj", "embed_tokens"], "use_dora": True},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_merged_checkpoint_loads_and_matches_peft(tmp_path: Path, case: str) -> None:
    from mergetools.merge import merge_adapters

    arch, base_kwargs, adapter_kwargs = CASES[case]
    base = F.save_checkpoint(F.build_model(arch), tmp_path / "base", **base_kwargs)
    adapter = F.save_adapter(F.build_model(arch), tmp_path / "ad", **adapter_kwargs)
    out = tmp_path / "out"
    merge_adapters(base, [adapter], out, device="cpu", fsync=False)
    actual = _logits(out)
    expected = _peft_merged_logits(base, [adapter])
    unmerged = _logits(base)
    assert not torch.allclose(expected, unmerged, atol=1e-3)  # the adapter matters
    if actual.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    else:  # a 16-bit forward amplifies 1-ulp weight differences; still far below the delta
        torch.testing.assert_close(actual.float(), expected.float(), atol=3e-2, rtol=3e-2)
        gap = (expected.float() - unmerged.float()).abs().max()
        assert (actual.float() - expected.float()).abs().max() < gap / 10


def _cli(args: list[str]) -> object:
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, list[Path]]:
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base", tokenizer=True)
    adapters = [
        F.save_adapter(
            F.tiny_llama(), tmp_path / f"a{i}", seed=i + 1, target_modules=["q_proj", "v_proj"]
        )
        for i in range(2)
    ]
    return base, adapters


def test_cli_merge_json(tmp_path: Path, pair: tuple[Path, list[Path]]) -> None:
    base, adapters = pair
    out = tmp_path / "out"
    result = _cli(
        [
            "merge",
            "--base",
            str(base),
            "--adapter",
            str(adapters[0]),
            "--adapter",
            str(adapters[1]),
            "--weight",
            "0.5",
            "--weight",
            "-0.25",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-fsync",
            "--quiet",
            "--json",
        ]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert isinstance(summary, dict)
    assert str(out) in json.dumps(summary)
    # the same as the API with the same weights
    from mergetools.merge import merge_adapters

    merge_adapters(
        base, adapters, tmp_path / "api", weights=[0.5, -0.25], device="cpu", fsync=False
    )
    cli_tensors = F.load_checkpoint_tensors(out)
    api_tensors = F.load_checkpoint_tensors(tmp_path / "api")
    assert cli_tensors.keys() == api_tensors.keys()
    assert all(torch.equal(cli_tensors[k], api_tensors[k]) for k in cli_tensors)
    _load(out)


def test_cli_human_output(tmp_path: Path, pair: tuple[Path, list[Path]]) -> None:
    base, adapters = pair
    out = tmp_path / "out"
    result = _cli(
        [
            "merge",
            "--base",
            str(base),
            "--adapter",
            str(adapters[0]),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
            "--max-shard-size",
            "20KB",
        ]
    )
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout
    assert (out / "model.safetensors.index.json").exists()
    torch.testing.assert_close(
        _logits(out), _peft_merged_logits(base, adapters[:1]), atol=1e-4, rtol=1e-4
    )


def test_cli_bad_input_exits_1(tmp_path: Path, pair: tuple[Path, list[Path]]) -> None:
    base, adapters = pair
    F.edit_json(adapters[0] / "adapter_config.json", peft_type="IA3")
    out = tmp_path / "out"
    before = set(tmp_path.iterdir())
    result = _cli(
        [
            "merge",
            "--base",
            str(base),
            "--adapter",
            str(adapters[0]),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "IA3" in lines[0]
    assert result.stdout == ""
    assert not out.exists()
    assert set(tmp_path.iterdir()) == before


def test_cli_existing_out_exits_1(tmp_path: Path, pair: tuple[Path, list[Path]]) -> None:
    base, adapters = pair
    out = tmp_path / "out"
    out.mkdir()
    args = [
        "merge",
        "--base",
        str(base),
        "--adapter",
        str(adapters[0]),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    ]
    result = _cli(args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "--force" in result.stderr
    assert list(out.iterdir()) == []
    assert _cli([*args, "--force"]).exit_code == 0
    assert (out / "model.safetensors").exists()


@pytest.mark.parametrize(
    "extra",
    [
        ["--weight", "0.5", "--weight", "0.5"],  # 2 weights for 1 adapter
        ["--dtype", "float64"],
        ["--device", "tpu"],
        ["--weight", "half"],
    ],
    ids=["weight-count", "dtype", "device", "weight-not-a-number"],
)
def test_cli_usage_errors_exit_2(
    tmp_path: Path, pair: tuple[Path, list[Path]], extra: list[str]
) -> None:
    base, adapters = pair
    out = tmp_path / "out"
    result = _cli(
        [
            "merge",
            "--base",
            str(base),
            "--adapter",
            str(adapters[0]),
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )
    assert result.exit_code == 2, result.output
    assert not out.exists()


def test_cli_missing_required_option_exits_2(tmp_path: Path) -> None:
    result = _cli(["merge", "--base", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert not (tmp_path / "out").exists()
