"""LoRA variants vs PEFT: embeddings, convolutions, rsLoRA, rank/alpha patterns, layer limits,
DoRA, ``lora_bias``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests import factories as F
from tests.oracle import (
    assert_matches_reference64,
    conv_loader,
    device_params,
    merge_and_compare,
    read_json,
    reference64,
)


def _changed(tensors: dict[str, torch.Tensor], base: Path) -> set[str]:
    original = F.load_checkpoint_tensors(base)
    return {k for k, v in tensors.items() if k in original and not torch.equal(v, original[k])}


def test_embedding_lora_llama(tmp_path: Path, llama_base: Path) -> None:
    """``lora_embedding_A/B`` on ``embed_tokens`` (``W += s (B A)^T``) plus LoRA on ``lm_head``."""
    adapter = F.save_adapter(
        F.tiny_llama(), tmp_path / "ad", target_modules=["embed_tokens", "lm_head"]
    )
    assert any(k.endswith("lora_embedding_A") for k in F.adapter_tensors(adapter))
    _, tensors = merge_and_compare(tmp_path, llama_base, [adapter], min_changed=2)
    assert _changed(tensors, llama_base) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert_matches_reference64(tensors, reference64(llama_base, [adapter]))


def test_embedding_lora_gpt2_wte(tmp_path: Path) -> None:
    """``wte`` of an untied GPT-2 whose file has no ``transformer.`` prefix."""
    base = F.save_checkpoint(
        F.tiny_gpt2(tie_word_embeddings=False), tmp_path / "base", prefix=False
    )
    adapter = F.save_adapter(
        F.tiny_gpt2(tie_word_embeddings=False),
        tmp_path / "ad",
        target_modules=["wte", "c_fc"],
        fan_in_fan_out=True,
    )
    _, tensors = merge_and_compare(tmp_path, base, [adapter], min_changed=3)
    assert "wte.weight" in _changed(tensors, base)


@pytest.mark.parametrize("device", device_params())
def test_conv1d_conv2d(tmp_path: Path, device: str) -> None:
    """PEFT LoRA on a plain module: Conv1d (k=3), Conv2d (3x3 and 1x1) and a Linear."""
    base = F.save_checkpoint(F.tiny_conv(), tmp_path / "base")
    adapter = F.save_adapter(
        F.tiny_conv(), tmp_path / "ad", target_modules=["conv1", "conv2", "pointwise", "proj"]
    )
    _, tensors = merge_and_compare(
        tmp_path, base, [adapter], loader=conv_loader, device=device, min_changed=4
    )
    assert _changed(tensors, base) == {
        "conv1.weight",
        "conv2.weight",
        "pointwise.weight",
        "proj.weight",
    }
    assert tensors["norm.num_batches_tracked"].dtype == torch.int64
    assert_matches_reference64(tensors, reference64(base, [adapter]))


def test_rslora(tmp_path: Path, llama_base: Path) -> None:
    """``use_rslora``: ``s = alpha / sqrt(r)``."""
    adapter = F.save_adapter(
        F.tiny_llama(),
        tmp_path / "ad",
        target_modules=["q_proj", "v_proj"],
        r=8,
        lora_alpha=4,
        use_rslora=True,
    )
    _, tensors = merge_and_compare(tmp_path, llama_base, [adapter], min_changed=4)
    assert_matches_reference64(tensors, reference64(llama_base, [adapter]))


def test_rank_and_alpha_pattern(tmp_path: Path, llama_base: Path) -> None:
    """Per-module r and alpha; the FIRST matching key wins (``q_proj`` before the layer-1 key)."""
    rank_pattern = {"q_proj": 2, r"layers\.1\.self_attn\.q_proj": 6, "down_proj": 8}
    alpha_pattern = {"q_proj": 32, r"layers\.1\.self_attn\.q_proj": 1, r"1\.self_attn\.v_proj": 3}
    adapter = F.save_adapter(
        F.tiny_llama(),
        tmp_path / "ad",
        target_modules=["q_proj", "v_proj", "down_proj"],
        r=4,
        lora_alpha=8,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    # PEFT writes the config with sorted keys, which would reorder the patterns that trained the
    # tensors; write them back in training order (what PEFT's loader then reads, too).
    F.edit_json(
        adapter / "adapter_config.json", rank_pattern=rank_pattern, alpha_pattern=alpha_pattern
    )
    config = read_json(adapter / "adapter_config.json")
    assert list(config["alpha_pattern"])[0] == "q_proj"  # the order the rule depends on
    shapes = {k: v.shape for k, v in F.adapter_tensors(adapter).items()}
    assert shapes["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"][0] == 2
    assert shapes["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"][0] == 8
    _, tensors = merge_and_compare(tmp_path, llama_base, [adapter], min_changed=6)
    assert_matches_reference64(tensors, reference64(llama_base, [adapter]))


def test_layers_to_transform(tmp_path: Path, llama_base: Path) -> None:
    adapter = F.save_adapter(
        F.tiny_llama(),
        tmp_path / "ad",
        target_modules=["q_proj", "v_proj"],
        layers_to_transform=[1],
        layers_pattern="layers",
    )
    _, tensors = merge_and_compare(tmp_path, llama_base, [adapter], min_changed=2)
    assert _changed(tensors, llama_base) == {
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.self_attn.v_proj.weight",
    }


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("device", device_params())
def test_dora_linear_and_embedding(tmp_path: Path, dtype: str, device: str) -> None:
    """DoRA: ``W' = m / ||W + dW|| * (W + dW)``, per output row (per column for embeddings)."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base", dtype=dtype)
    adapter = F.save_adapter(
        F.tiny_llama(),
        tmp_path / "ad",
        target_modules=["q_proj", "down_proj", "embed_tokens"],
        use_dora=True,
    )
    assert any(k.endswith("lora_magnitude_vector") for k in F.adapter_tensors(adapter))
    # PEFT rounds the delta, W + dW and the result separately in 16-bit: 3 roundings at the scale
    # of m / ||V|| * (|W| + |dW|); loradex rounds once (checked against float64 below).
    # The adapter also holds PEFT's float32 copy of the embedding: ``input_slack`` allows for a
    # merge starting from it rather than from the 16-bit base (1/2 ulp of W apart).
    scales: dict[str, torch.Tensor] = {}
    input_slack: dict[str, torch.Tensor] = {}
    expected = reference64(base, [adapter], scales=scales, input_slack=input_slack)
    _, tensors = merge_and_compare(
        tmp_path, base, [adapter], device=device, min_changed=5, k=3, magnitude=scales
    )
    assert_matches_reference64(tensors, expected, input_slack=input_slack)


def test_dora_gpt2_fan_in_fan_out(tmp_path: Path, gpt2_base: Path) -> None:
    """DoRA on Conv1D: the norm runs over the stored rows (in) for each output column."""
    adapter = F.save_adapter(
        F.tiny_gpt2(),
        tmp_path / "ad",
        target_modules=["c_attn", "c_fc"],
        fan_in_fan_out=True,
        use_dora=True,
    )
    _, tensors = merge_and_compare(tmp_path, gpt2_base, [adapter], min_changed=4)
    assert_matches_reference64(tensors, reference64(gpt2_base, [adapter]))


def test_dora_conv(tmp_path: Path) -> None:
    """DoRA on Conv1d/Conv2d: the norm runs over (in, *kernel) per output channel."""
    base = F.save_checkpoint(F.tiny_conv(), tmp_path / "base")
    adapter = F.save_adapter(
        F.tiny_conv(),
        tmp_path / "ad",
        target_modules=["conv1", "conv2", "pointwise"],
        use_dora=True,
    )
    _, tensors = merge_and_compare(tmp_path, base, [adapter], loader=conv_loader, min_changed=3)
    assert_matches_reference64(tensors, reference64(base, [adapter]))


def test_lora_bias_gpt2(tmp_path: Path, gpt2_base: Path) -> None:
    """``lora_bias=True``: ``b += s * lora_B.bias`` on layers that have a bias."""
    adapter = F.save_adapter(
        F.tiny_gpt2(),
        tmp_path / "ad",
        target_modules=["c_attn", "c_proj"],
        fan_in_fan_out=True,
        lora_bias=True,
    )
    assert any(k.endswith("lora_B.bias") for k in F.adapter_tensors(adapter))
    _, tensors = merge_and_compare(tmp_path, gpt2_base, [adapter], min_changed=12)
    changed = _changed(tensors, gpt2_base)
    assert "transformer.h.0.attn.c_attn.bias" in changed
    assert "transformer.h.1.mlp.c_proj.bias" in changed  # c_proj matches both attn and mlp
    assert_matches_reference64(tensors, reference64(gpt2_base, [adapter]))


def test_lora_bias_bert(tmp_path: Path, bert_base: Path) -> None:
    adapter = F.save_adapter(
        F.tiny_bert(), tmp_path / "ad", target_modules=["query", "value"], lora_bias=True
    )

    def load(path: Path) -> torch.nn.Module:
        from transformers import BertModel

        return BertModel.from_pretrained(path, dtype="auto").eval()

    _, tensors = merge_and_compare(tmp_path, bert_base, [adapter], loader=load, min_changed=8)
    assert "encoder.layer.0.attention.self.query.bias" in _changed(tensors, bert_base)
