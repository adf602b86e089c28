"""Unit tests of the merge engine's pieces: sizes, shard plans, names, fold math, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from examples.tiny_models import write_adapter, write_base
from mergetools.checkpoint import NameMap, infer_name_map, parse_size, plan_shards, shard_file_names
from mergetools.errors import (
    IncompatibleError,
    InvalidAdapterError,
    InvalidInputError,
    OutputExistsError,
)
from mergetools.fold import add_linear_delta, add_transposed_delta, apply_dora, conv_delta
from mergetools.merge import merge_adapters


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30), ("1.5GB", 15 * 10**8), (1234, 1234), ("77", 77)],
)
def test_parse_size_uses_decimal_units_like_huggingface_hub(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "GB", "5XB", "-1GB", 0])
def test_parse_size_rejects_nonsense(bad: str | int) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_plan_shards_puts_an_oversized_tensor_alone() -> None:
    sizes = [("a", 4), ("b", 4), ("big", 20), ("c", 3), ("d", 6)]
    assert plan_shards(sizes, 8) == [["a", "b"], ["big"], ["c"], ["d"]]
    assert plan_shards(sizes, 100) == [["a", "b", "big", "c", "d"]]
    assert shard_file_names(1) == ["model.safetensors"]
    assert shard_file_names(3)[1] == "model-00002-of-00003.safetensors"


def test_name_map_strips_or_adds_one_prefix() -> None:
    gpt2_legacy = ["h.0.attn.c_attn.weight", "wte.weight"]
    assert infer_name_map(gpt2_legacy, ["transformer.h.0.attn.c_attn.weight"], source="x") == NameMap(
        "strip", "transformer"
    )
    prefixed = ["transformer.h.0.attn.c_attn.weight"]
    assert infer_name_map(prefixed, ["h.0.attn.c_attn.weight"], source="x") == NameMap("add", "transformer")
    assert infer_name_map(prefixed, ["transformer.h.0.attn.c_attn.weight"], source="x").mode == "exact"


def test_name_map_refuses_ambiguous_prefixes() -> None:
    names = ["a.layer.weight", "b.layer.weight"]
    with pytest.raises(IncompatibleError, match="ambiguous"):
        infer_name_map(names, ["layer.weight"], source="adapter")


def test_fold_math_matches_float64_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(12, 10, generator=gen, dtype=torch.float64)
    a = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    b = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    acc = w.clone()
    add_linear_delta(acc, lora_a=a, lora_b=b, scale=0.5)
    torch.testing.assert_close(acc, w + 0.5 * b @ a)
    # transposed layout, folded in two row blocks
    wt = w.T.contiguous()
    for start, stop in ((0, 4), (4, 10)):
        block = wt[start:stop]
        add_transposed_delta(block, lora_a=a[:, start:stop], lora_b=b, scale=0.5)
    torch.testing.assert_close(wt, (w + 0.5 * b @ a).T)
    # conv: delta[o, i, k] = sum_r B[o, r] A[r, i, k]
    ca = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    cb = torch.randn(6, 3, 1, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(conv_delta(lora_a=ca, lora_b=cb, scale=2.0), 2.0 * torch.einsum("or,rik->oik", cb[..., 0], ca))
    # DoRA: rows renormalised to the magnitude
    v = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    m = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    expected = v * (m / v.norm(dim=1)).unsqueeze(1)
    apply_dora(v, magnitude=m, norm_dims=(1,))
    torch.testing.assert_close(v, expected)


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    write_base(tmp_path / "base")
    write_adapter(tmp_path / "adapter", targets=["q_proj", "v_proj"], rank=4, alpha=8, seed=1)
    return tmp_path / "base", tmp_path / "adapter"


def test_merge_refuses_existing_output_and_out_inside_inputs(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = tiny
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="exists and is not empty") as refused:
        merge_adapters(base, [adapter], out, fsync=False)
    assert refused.value.hint_action == "force"
    assert (out / "keep.txt").read_text() == "x"
    with pytest.raises(InvalidInputError, match="inside the input folder"):
        merge_adapters(base, [adapter], base / "merged", fsync=False)
    with pytest.raises(InvalidInputError, match="contains the input folder"):
        merge_adapters(base, [adapter], tmp_path, force=True, fsync=False)
    # --force replaces only empty folders and earlier loradex outputs, never a user's folder.
    with pytest.raises(OutputExistsError, match="not an earlier loradex output"):
        merge_adapters(base, [adapter], out, force=True, fsync=False)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    result = merge_adapters(base, [adapter], out, force=True)
    assert (out / "model.safetensors").is_file()
    assert result.tensors_changed == 4
    assert merge_adapters(base, [adapter], out, force=True, fsync=False).tensors_changed == 4


def test_failed_merge_leaves_nothing_behind(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = tiny
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["r"] = 5  # disagrees with the tensors
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidAdapterError, match="r=5 but lora_A has rank 4"):
        merge_adapters(base, [adapter], tmp_path / "out", fsync=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base"]


def test_shape_mismatch_names_module_and_both_shapes(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    base, _ = tiny
    write_adapter(tmp_path / "other", targets=["q_proj"], rank=4, alpha=8, seed=3)
    from safetensors.torch import load_file

    from mergetools.safetensors_io import save_tensors

    tensors = load_file(tmp_path / "other" / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors[key] = torch.zeros(4, 80)
    save_tensors(tmp_path / "other" / "adapter_model.safetensors", tensors)
    with pytest.raises(IncompatibleError) as info:
        merge_adapters(base, [tmp_path / "other"], tmp_path / "out", fsync=False)
    message = str(info.value)
    assert "model.layers.0.self_attn.q_proj" in message and "(4, 80)" in message and "(64, 64)" in message
    assert not (tmp_path / "out").exists()


def test_sharded_output_has_index_and_format_metadata(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from safetensors import safe_open

    base, adapter = tiny
    out = tmp_path / "out"
    merge_adapters(base, [adapter], out, max_shard_size="40KB", fsync=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files[0].startswith("model-00001-of-")
    total = 0
    for name in files:
        with safe_open(out / name, "pt") as handle:
            assert handle.metadata() == {"format": "pt"}
            for key in handle.keys():
                total += handle.get_tensor(key).numel() * 2
    assert index["metadata"]["total_size"] == total
    provenance = json.loads((out / "loradex.json").read_text())
    assert provenance["adapters"][0]["weight"] == 1.0
    assert len(provenance["adapters"][0]["sha256"]["adapter_model.safetensors"]) == 64


def test_merge_runs_the_compatibility_checks_first(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from mergetools.safetensors_io import save_tensors

    base, adapter = tiny
    tensors = {k: v.clone() for k, v in load_file(adapter / "adapter_model.safetensors").items()}
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    tensors[key][3, 1] = float("nan")
    save_tensors(adapter / "adapter_model.safetensors", tensors)
    with pytest.raises(IncompatibleError) as info:
        merge_adapters(base, [adapter], tmp_path / "out", fsync=False)
    assert "model.layers.1.self_attn.v_proj" in str(info.value) and "NaN" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_fit_layout_decides_fan_in_fan_out_per_module_from_shapes() -> None:
    from mergetools.adapter import LoraModule, TensorMeta
    from mergetools.plan import fit_layout

    def module(out_features: int, in_features: int, *, fan_in_fan_out: bool) -> LoraModule:
        return LoraModule(
            path="h.0.mlp.c_fc",
            kind="linear",
            rank=2,
            alpha=4.0,
            scale=2.0,
            fan_in_fan_out=fan_in_fan_out,
            lora_a=TensorMeta("a", "F32", (2, in_features), None),
            lora_b=TensorMeta("b", "F32", (out_features, 2), None),
        )

    # PEFT flips fan_in_fan_out per layer: a Linear in a GPT-2 adapter is stored (out, in)
    assert fit_layout(module(8, 4, fan_in_fan_out=True), (8, 4)) == "rows"
    assert fit_layout(module(8, 4, fan_in_fan_out=True), (4, 8)) == "transposed"
    assert fit_layout(module(8, 4, fan_in_fan_out=False), (4, 8)) == "transposed"
    # a square weight cannot tell: the config decides
    assert fit_layout(module(4, 4, fan_in_fan_out=True), (4, 4)) == "transposed"
    assert fit_layout(module(4, 4, fan_in_fan_out=False), (4, 4)) == "rows"
    assert fit_layout(module(8, 4, fan_in_fan_out=False), (8, 5)) is None
