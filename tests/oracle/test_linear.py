"""Plain LoRA on linear layers (Llama), Conv1D with ``fan_in_fan_out`` (GPT-2) and BERT, vs PEFT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests import factories as F
from tests.oracle import (
    assert_matches_reference64,
    device_params,
    merge_and_compare,
    read_json,
    reference64,
)

LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("device", device_params())
def test_llama_all_linears(tmp_path: Path, llama_base: Path, device: str) -> None:
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "ad", target_modules=LLAMA_LINEARS, r=4)
    out, tensors = merge_and_compare(tmp_path, llama_base, [adapter], device=device)
    # Every targeted projection of both layers changed, nothing else did.
    changed = {
        k
        for k, v in tensors.items()
        if not torch.equal(v, F.load_checkpoint_tensors(llama_base)[k])
    }
    assert changed == {
        f"model.layers.{i}.{part}.{name}.weight"
        for i in range(2)
        for part, names in (("self_attn", LLAMA_LINEARS[:4]), ("mlp", LLAMA_LINEARS[4:]))
        for name in names
    }
    assert read_json(out / "config.json")["architectures"] == ["LlamaForCausalLM"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("device", device_params())
def test_llama_16bit_base_rounds_once(tmp_path: Path, dtype: str, device: str) -> None:
    """16-bit base: within 1 ulp of PEFT and within 1 ulp of the exact float64 merge."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base", dtype=dtype)
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "ad", target_modules=LLAMA_LINEARS)
    _, tensors = merge_and_compare(tmp_path, base, [adapter], device=device)
    assert all(t.dtype == F.DTYPES[dtype] for t in tensors.values())
    assert_matches_reference64(tensors, reference64(base, [adapter]))


@pytest.mark.parametrize("prefix", [True, False], ids=["transformer.h", "h"])
@pytest.mark.parametrize("device", device_params())
def test_gpt2_conv1d_fan_in_fan_out(tmp_path: Path, prefix: bool, device: str) -> None:
    """GPT-2 Conv1D stores (in, out): the delta is transposed (``fan_in_fan_out=True``)."""
    base = F.save_checkpoint(F.tiny_gpt2(), tmp_path / "base", prefix=prefix)
    adapter = F.save_adapter(
        F.tiny_gpt2(),
        tmp_path / "ad",
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
    )
    _, tensors = merge_and_compare(tmp_path, base, [adapter], device=device)
    lead = "transformer." if prefix else ""
    assert all(k.startswith(lead) or k == "lm_head.weight" for k in tensors)  # base names kept
    assert_matches_reference64(tensors, reference64(base, [adapter]))


def test_bert_linears(tmp_path: Path, bert_base: Path) -> None:
    """A feature-extraction adapter on ``BertModel``: names without any task prefix."""
    adapter = F.save_adapter(
        F.tiny_bert(),
        tmp_path / "ad",
        target_modules=["query", "key", "value", "dense"],
    )

    def load(path: Path) -> torch.nn.Module:
        from transformers import BertModel

        return BertModel.from_pretrained(path, dtype="auto").eval()

    _, tensors = merge_and_compare(tmp_path, bert_base, [adapter], loader=load, min_changed=12)
    assert_matches_reference64(tensors, reference64(bert_base, [adapter]))
