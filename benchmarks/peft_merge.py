"""The PEFT merge path, as a user would write it: the baseline of ``merge_bench.py``.

    python benchmarks/peft_merge.py BASE_DIR ADAPTER_DIR OUT_DIR

Loads the base in bf16 with transformers, wraps it with ``PeftModel.from_pretrained``, folds the
adapter with ``merge_and_unload()`` and writes the result with ``save_pretrained`` (transformers'
defaults: safetensors, one 50GB-limit shard). Run as its own process so that its wall time and
peak RSS (imports included) are measured like any other command's.
"""

from __future__ import annotations

import argparse

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description="merge a LoRA adapter with PEFT")
    parser.add_argument("base")
    parser.add_argument("adapter")
    parser.add_argument("out")
    args = parser.parse_args()
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.bfloat16)
    peft_model = PeftModel.from_pretrained(base, args.adapter)
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(args.out)


if __name__ == "__main__":
    main()
