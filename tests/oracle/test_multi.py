"""Several adapters at once, with weights: ``W + sum_i w_i s_i B_i A_i`` (DESIGN.md §3).

PEFT merges adapter after adapter and rounds after each in 16-bit; loradex sums in fp32 and rounds
once. So: vs PEFT within ``k`` ulps at the scale of ``|W| + sum |w_i dW_i|``, vs the float64
reference within 1 ulp.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests import factories as F
from tests.oracle import (
    assert_matches_reference64,
    device_params,
    merge_and_compare,
    reference64,
    run_merge,
)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("device", device_params())
def test_three_weighted_adapters(tmp_path: Path, dtype: str, device: str) -> None:
    """Overlapping targets, different ranks/alphas/rslora, one negative weight."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base", dtype=dtype)
    adapters = [
        F.save_adapter(
            F.tiny_llama(),
            tmp_path / "a0",
            seed=1,
            target_modules=["q_proj", "v_proj", "down_proj"],
            r=4,
            lora_alpha=8,
        ),
        F.save_adapter(
            F.tiny_llama(),
            tmp_path / "a1",
            seed=2,
            target_modules=["q_proj", "o_proj"],
            r=2,
            lora_alpha=16,
        ),
        F.save_adapter(
            F.tiny_llama(),
            tmp_path / "a2",
            seed=3,
            target_modules=["q_proj", "down_proj", "embed_tokens"],
            r=8,
            lora_alpha=4,
            use_rslora=True,
        ),
    ]
    weights = [0.7, -0.45, 1.3]
    # a2 targets embed_tokens, so PEFT also saved a (float32) copy of the base embedding in it:
    # weighting a2 is fine because that copy only repeats the base.
    assert "base_model.model.model.embed_tokens.base_layer.weight" in F.adapter_tensors(adapters[2])
    scales: dict[str, torch.Tensor] = {}
    input_slack: dict[str, torch.Tensor] = {}
    expected = reference64(base, adapters, weights=weights, scales=scales, input_slack=input_slack)
    _, tensors = merge_and_compare(
        tmp_path, base, adapters, weights=weights, device=device, magnitude=scales, min_changed=9
    )
    assert_matches_reference64(tensors, expected, input_slack=input_slack)


def test_weights_default_to_one(tmp_path: Path, llama_base: Path) -> None:
    adapters = [
        F.save_adapter(F.tiny_llama(), tmp_path / f"a{i}", seed=i + 1, target_modules=["q_proj"])
        for i in range(2)
    ]
    _, tensors = merge_and_compare(tmp_path, llama_base, adapters, min_changed=2)
    assert_matches_reference64(tensors, reference64(llama_base, adapters))


def test_negative_weight_undoes_an_adapter(tmp_path: Path, llama_base: Path) -> None:
    """The same adapter at +1 and -1 cancels out (up to fp32 rounding)."""
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "ad", target_modules=["q_proj", "up_proj"])
    run_merge(llama_base, [adapter, adapter], tmp_path / "out", weights=[1.0, -1.0])
    tensors = F.load_checkpoint_tensors(tmp_path / "out")
    original = F.load_checkpoint_tensors(llama_base)
    for name, value in tensors.items():
        torch.testing.assert_close(value, original[name], atol=1e-6, rtol=0)


def test_replacement_and_deltas_from_different_adapters(tmp_path: Path, llama_base: Path) -> None:
    """One adapter retrains lm_head wholesale, another puts LoRA on it: replace, then add.

    PEFT cannot load this pair (LoRA on a ``ModulesToSaveWrapper``), so only the float64 formula
    of DESIGN.md §3 is the reference here.
    """
    adapters = [
        F.save_adapter(
            F.tiny_llama(),
            tmp_path / "a0",
            seed=1,
            target_modules=["q_proj"],
            modules_to_save=["lm_head"],
        ),
        F.save_adapter(
            F.tiny_llama(),
            tmp_path / "a1",
            seed=2,
            target_modules=["lm_head", "q_proj"],
            save_embedding_layers=False,
        ),
    ]
    assert not any("base_layer" in k for k in F.adapter_tensors(adapters[1]))
    run_merge(llama_base, adapters, tmp_path / "out", weights=[1.0, 0.5])
    tensors = F.load_checkpoint_tensors(tmp_path / "out")
    expected = reference64(llama_base, adapters, weights=[1.0, 0.5])
    assert not torch.equal(
        expected["lm_head.weight"],
        F.adapter_tensors(adapters[0])["base_model.model.lm_head.weight"].double(),
    )
    assert_matches_reference64(tensors, expected)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_two_adapters_on_the_embedding(tmp_path: Path, dtype: str) -> None:
    """PEFT's default save puts a copy of the (unchanged) base embedding into EVERY adapter that
    targets ``embed_tokens``/``lm_head``; two such ordinary adapters must still merge together."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base", dtype=dtype)
    adapters = [
        F.save_adapter(
            F.tiny_llama(),
            tmp_path / f"a{i}",
            seed=i + 1,
            target_modules=["embed_tokens", "lm_head", "q_proj"],
        )
        for i in range(2)
    ]
    for adapter in adapters:
        assert "base_model.model.lm_head.base_layer.weight" in F.adapter_tensors(adapter)
    scales: dict[str, torch.Tensor] = {}
    input_slack: dict[str, torch.Tensor] = {}
    expected = reference64(base, adapters, scales=scales, input_slack=input_slack)
    _, tensors = merge_and_compare(tmp_path, base, adapters, magnitude=scales, min_changed=4)
    assert_matches_reference64(tensors, expected, input_slack=input_slack)
