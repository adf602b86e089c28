"""Show with torch alone that each merged layer computes base-plus-adapter outputs.

For every adapted linear layer: y_merged = x @ W'.T must equal y_base + s * (x @ A.T) @ B.T,
computed in float64 from the original base and adapter files.
``python examples/verify_merge.py BASE ADAPTER MERGED``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base", type=Path)
    parser.add_argument("adapter", type=Path)
    parser.add_argument("merged", type=Path)
    args = parser.parse_args()
    base = load_file(args.base / "model.safetensors")
    merged = load_file(args.merged / "model.safetensors")
    lora = load_file(args.adapter / "adapter_model.safetensors")
    config = json.loads((args.adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    gen = torch.Generator().manual_seed(0)
    ok = True
    print(f"{'layer':<36} {'max |y_merged - y_ref|':>24} {'bf16 bound':>12}")
    for key in sorted(k for k in lora if k.endswith("lora_A.weight")):
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        a = lora[key].double()
        b = lora[key.replace("lora_A", "lora_B")].double()
        w = base[f"{module}.weight"].double()
        x = torch.randn(5, w.shape[1], dtype=torch.float64, generator=gen)
        exact = w + scale * (b @ a)
        reference = x @ exact.T
        actual = x @ merged[f"{module}.weight"].double().T
        # One rounding of W' to bf16 moves each weight by at most half an ulp (2**-9 relative).
        bound = (x.abs() @ exact.abs().T) * 2**-8
        error = (actual - reference).abs()
        ok = ok and bool((error <= bound).all())
        print(f"{module:<36} {error.max().item():>24.3e} {bound.max().item():>12.3e}")
    print("merged layers equal base + adapter outputs" if ok else "MISMATCH between merged and base + adapter")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
