"""Build a small Llama-shaped base checkpoint and PEFT LoRA adapters with torch alone.

Used by the demo: nothing is downloaded. ``python examples/tiny_models.py OUT_DIR`` writes
``OUT_DIR/base`` and ``OUT_DIR/adapter-{support,billing}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mergetools.safetensors_io import save_tensors

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, VOCAB = 64, 128, 2, 4, 2, 256
HEAD_DIM = HIDDEN // HEADS
LINEARS = {
    "self_attn.q_proj": (HEADS * HEAD_DIM, HIDDEN),
    "self_attn.k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
    "self_attn.v_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HEADS * HEAD_DIM),
    "mlp.gate_proj": (INTERMEDIATE, HIDDEN),
    "mlp.up_proj": (INTERMEDIATE, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTERMEDIATE),
}


def write_base(folder: Path, *, seed: int = 0) -> None:
    """A LlamaForCausalLM-shaped bf16 checkpoint with transformers' names and config."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {"model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=gen) * 0.02}
    for layer in range(LAYERS):
        for name, shape in LINEARS.items():
            tensors[f"model.layers.{layer}.{name}.weight"] = torch.randn(*shape, generator=gen) * 0.02
        tensors[f"model.layers.{layer}.input_layernorm.weight"] = torch.ones(HIDDEN)
        tensors[f"model.layers.{layer}.post_attention_layernorm.weight"] = torch.ones(HIDDEN)
    tensors["model.norm.weight"] = torch.ones(HIDDEN)
    tensors["lm_head.weight"] = torch.randn(VOCAB, HIDDEN, generator=gen) * 0.02
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / "model.safetensors", {k: v.to(torch.bfloat16) for k, v in tensors.items()})
    config = {
        "_name_or_path": "tiny-llama",
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps({"max_new_tokens": 16}) + "\n")


def write_adapter(folder: Path, *, targets: list[str], rank: int, alpha: float, seed: int) -> None:
    """A PEFT LoRA adapter (fp32 factors, random non-zero lora_B) for the base above."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(LAYERS):
        for name, (out_features, in_features) in LINEARS.items():
            if name.split(".")[-1] not in targets:
                continue
            key = f"base_model.model.model.layers.{layer}.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, in_features, generator=gen) / in_features**0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(out_features, rank, generator=gen) * 0.01
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / "adapter_model.safetensors", tensors)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "tiny-llama",
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": targets,
        "fan_in_fan_out": False,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
        "inference_mode": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    write_base(args.out / "base")
    write_adapter(args.out / "adapter-support", targets=["q_proj", "v_proj"], rank=8, alpha=16, seed=1)
    write_adapter(
        args.out / "adapter-billing", targets=["q_proj", "k_proj", "v_proj", "o_proj"], rank=4, alpha=8, seed=2
    )
    print(f"wrote a tiny Llama-shaped base and two adapters under {args.out}")


if __name__ == "__main__":
    main()
