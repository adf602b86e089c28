#!/usr/bin/env bash
# The main job end to end on the embedded default (SQLite + local blobs under $LORADEX_HOME):
# build a tiny base and two adapters, register them with eval scores, check, merge the best one,
# verify the merged layers, and show the registry and the lineage.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${DEMO_OUT:-demo-out}"
rm -rf "$OUT"
mkdir -p "$OUT"
export LORADEX_HOME="$PWD/$OUT/home"
export LORADEX_USER="${LORADEX_USER:-demo}"
step() { printf '\n== %s\n' "$*"; }

step "1. build a tiny Llama-shaped base and two LoRA adapters (no downloads)"
python examples/tiny_models.py "$OUT"

step "2. register the base (fingerprint + structural signature) and write a signature file for CI"
loradex base add "$OUT/base" --name tiny-llama
loradex inspect "$OUT/base" --signature > "$OUT/tiny-llama.signature.json"

step "3. check both adapters against the signature alone, as a CI job would (and vLLM's limits)"
loradex check --adapter "$OUT/adapter-support" --adapter "$OUT/adapter-billing" \
  --base-signature "$OUT/tiny-llama.signature.json" --serving vllm

step "4. register them as versions, with eval scores and tags"
loradex register "$OUT/adapter-support" --name support --base tiny-llama \
  --eval accuracy=0.91,dataset=support-eval,split=test --eval f1=0.88 --tag team=cx
loradex register "$OUT/adapter-billing" --name billing --base tiny-llama \
  --eval accuracy=0.84,dataset=billing-eval,split=test --eval f1=0.80 --tag team=finance

step "5. find the best adapter with accuracy >= 0.8 and publish it through the gates"
loradex search 'accuracy>=0.8' --sort accuracy
BEST=$(loradex search 'accuracy>=0.8' --sort accuracy --json | python -c 'import json, sys; best = json.load(sys.stdin)["items"][0]; print(best["name"] + "@" + str(best["version"]))')
echo "best: $BEST"
loradex publish "$BEST" --alias production --require 'accuracy>=0.8' --no-regress accuracy \
  --serving vllm:max_rank=64
loradex alias list "${BEST%@*}"

step "6. merge it into a deployable checkpoint (by reference; the registry records the checkpoint)"
loradex merge --base tiny-llama --adapter "${BEST%@*}@production" --out "$OUT/merged"

step "7. each merged layer computes base + adapter outputs"
python examples/verify_merge.py "$OUT/base" "$(loradex export "$BEST" --out "$OUT/exported" >/dev/null && echo "$OUT/exported")" "$OUT/merged"

step "8. the registry: adapters, versions, checkpoints, lineage"
loradex list
loradex show "${BEST%@*}@production"
loradex checkpoints
loradex lineage "$BEST"
