"""The synthetic checkpoint/adapter generator writes what transformers and peft load cleanly."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from benchmarks import synth

TINY = synth.PRESETS["tiny"]


def _header(path: Path) -> dict[str, object]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def test_sharded_layout_index_and_metadata(tmp_path: Path) -> None:
    base = synth.write_llama_checkpoint(tmp_path / "base", TINY, max_shard_size=50_000)
    index = json.loads((base / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    assert shards == sorted(p.name for p in base.glob("model-*.safetensors"))
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"]) == {name for name, _ in TINY.tensors()}
    total = 0
    for shard in shards:
        header = _header(base / shard)
        assert header.pop("__metadata__") == {"format": "pt"}
        size = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in header.values())
        assert size <= 50_000 or len(header) == 1
        total += size
        with open(base / shard, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
        assert header_len % 8 == 0
        assert (base / shard).stat().st_size == 8 + header_len + size
    assert index["metadata"]["total_size"] == total == 2 * TINY.num_parameters()


def test_values_are_seeded_and_small(tmp_path: Path) -> None:
    a = synth.write_llama_checkpoint(tmp_path / "a", TINY)
    b = synth.write_llama_checkpoint(tmp_path / "b", TINY)
    c = synth.write_llama_checkpoint(tmp_path / "c", TINY, seed=7)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    with safe_open(a / "model.safetensors", "pt") as f:
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
        norm = f.get_tensor("model.norm.weight")
    assert q.dtype == torch.bfloat16 and q.shape == (64, 64)
    assert 0.015 < q.float().std().item() < 0.025
    assert abs(norm.float().mean().item() - 1.0) < 0.01


def test_transformers_loads_checkpoint_without_missing_keys(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    base = synth.write_llama_checkpoint(tmp_path / "base", TINY, max_shard_size=50_000)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.bfloat16, output_loading_info=True
    )
    assert {k: list(v) for k, v in info.items() if v} == {}
    assert type(model).__name__ == "LlamaForCausalLM"
    with safe_open(base / "model-00001-of-00006.safetensors", "pt") as f:
        embed = f.get_tensor("model.embed_tokens.weight")
    assert torch.equal(model.model.embed_tokens.weight, embed)
    # config.json is what transformers itself writes for that config.
    model.config.save_pretrained(tmp_path / "resaved")
    assert json.loads((tmp_path / "resaved" / "config.json").read_text()) == json.loads(
        (base / "config.json").read_text()
    )


def test_peft_loads_adapter_without_warnings_and_merge_changes_weights(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    base = synth.write_llama_checkpoint(tmp_path / "base", TINY)
    adapter = synth.write_lora_adapter(
        tmp_path / "adapter", TINY, rank=8, alpha=16, base_model_name_or_path=str(base)
    )
    header = _header(adapter / "adapter_model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt"}
    assert len(header) == 2 * 7 * TINY.num_hidden_layers
    a_key = "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"
    b_key = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"
    assert header[a_key]["shape"] == [8, 176] and header[a_key]["dtype"] == "F32"
    assert header[b_key]["shape"] == [64, 8]

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    before = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = peft.PeftModel.from_pretrained(model, adapter)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "adapter" in m.lower() or "missing" in m.lower()], messages
    layer = peft_model.base_model.model.model.layers[1].mlp.down_proj
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        assert torch.equal(layer.lora_A["default"].weight.float(), f.get_tensor(a_key))
        assert torch.equal(layer.lora_B["default"].weight.float(), f.get_tensor(b_key))
    assert layer.scaling["default"] == 2.0
    merged = peft_model.merge_and_unload()
    assert not torch.equal(merged.model.layers[1].mlp.down_proj.weight, before)

    # adapter_config.json is what peft itself writes for that config.
    config = peft.LoraConfig.from_pretrained(adapter)
    config.save_pretrained(tmp_path / "resaved")
    resaved = json.loads((tmp_path / "resaved" / "adapter_config.json").read_text())
    ours = json.loads((adapter / "adapter_config.json").read_text())
    assert set(resaved.pop("target_modules")) == set(ours.pop("target_modules"))
    assert resaved == ours


def test_adapter_rejects_unknown_target(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown target modules"):
        synth.write_lora_adapter(tmp_path / "a", TINY, target_modules=["qkv_proj"])


def test_merge_bench_ulp_distance() -> None:
    from benchmarks.merge_bench import bf16_ulp_distance

    def bf16(bits: list[int]) -> torch.Tensor:
        return torch.tensor(bits, dtype=torch.int16).view(torch.bfloat16)

    one = torch.tensor([1.0, -1.0], dtype=torch.bfloat16)
    assert bf16_ulp_distance(one, one) == 0
    assert bf16_ulp_distance(bf16([0x3F80]), bf16([0x3F81])) == 1  # 1.0 and its successor
    assert bf16_ulp_distance(bf16([0x0000]), bf16([-0x8000])) == 0  # +0 == -0
    assert bf16_ulp_distance(bf16([0x0001]), bf16([-0x7FFF])) == 2  # tiniest +x and -x
    assert bf16_ulp_distance(one, torch.tensor([1.0, -1.0078125], dtype=torch.bfloat16)) == 1
