#!/usr/bin/env bash
# The main job end to end on the embedded default: build a tiny base and adapters, merge, verify.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${DEMO_OUT:-demo-out}"
rm -rf "$OUT"
mkdir -p "$OUT"
export LORADEX_HOME="$PWD/$OUT/home"

echo "== 1. build a tiny Llama-shaped base and two LoRA adapters (no downloads)"
python examples/tiny_models.py "$OUT"

echo "== 2. merge the support adapter into the base"
loradex merge --base "$OUT/base" --adapter "$OUT/adapter-support" --out "$OUT/merged-support"

echo "== 3. each merged layer computes base + adapter outputs"
python examples/verify_merge.py "$OUT/base" "$OUT/adapter-support" "$OUT/merged-support"
