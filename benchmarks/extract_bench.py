"""Benchmark ``loradex extract`` against ``mergekit-extract-lora``, and time ``loradex resize``.

Inputs (under ``bench-out/extract/``, reused when present):

- base: a four-layer TinyLlama-shaped bf16 checkpoint (hidden 2048, intermediate 5632, 32 heads,
  4 kv heads, vocab 32000) from :func:`benchmarks.synth.write_llama_checkpoint`;
- tuned: the base plus, in each of the seven linear layers of every decoder layer, a rank-48
  delta ``U diag(s) V^T`` (orthonormal U, V; s decaying geometrically from 1 to 0.01) and
  full-rank Gaussian noise of std 1e-5, stored bf16 (rounding adds its own full-rank noise).

Contenders, each a whole process timed from spawn to exit:

- ``loradex extract --rank 16 --verify 0 --quiet --json`` (no dense check inside the timing);
- ``mergekit-extract-lora --max-rank 16 --skip-undecomposable -e embed_tokens -e lm_head``
  (mergekit 0.1.5 in its own venv ``bench-out/mergekit-venv``, created here if missing, installed
  with ``-c constraints.txt`` so its torch is this project's CPU build). Without ``-e`` it would
  also SVD the unchanged embedding and head; without ``--skip-undecomposable`` it copies norms.

Errors: per module ``||dW - B A||_F / ||dW||_F`` against the true ``tuned - base`` (fp32), for both
outputs, computed here densely. mergekit's is the optimum (dense fp32 SVD). Then ``loradex resize``
of loradex's output to rank 8 and to energy 0.9.

    .venv/bin/python benchmarks/extract_bench.py            # ~5 min, most of it mergekit
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import synth  # noqa: E402

OUT = ROOT / "bench-out" / "extract"
VENV = ROOT / "bench-out" / "mergekit-venv"
LAYERS = 4
DELTA_RANK = 48


def build_inputs() -> tuple[Path, Path]:
    base, tuned = OUT / "base", OUT / "tuned"
    spec = synth.LlamaSpec(num_hidden_layers=LAYERS)
    if not (base / "config.json").exists():
        synth.write_llama_checkpoint(base, spec, seed=0, dtype=torch.bfloat16, max_shard_size=10**10)
    if not (tuned / "config.json").exists():
        tuned.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(1)
        s = torch.logspace(0, -2, DELTA_RANK, dtype=torch.float64)
        tensors = {}
        with safe_open(base / "model.safetensors", "pt") as f:
            for name in f.keys():
                w = f.get_tensor(name)
                if w.ndim == 2 and ".layers." in name:
                    out, inp = w.shape
                    u, _ = torch.linalg.qr(torch.randn(out, DELTA_RANK, generator=g, dtype=torch.float64))
                    v, _ = torch.linalg.qr(torch.randn(inp, DELTA_RANK, generator=g, dtype=torch.float64))
                    delta = (u * s) @ v.T + 1e-5 * torch.randn(out, inp, generator=g, dtype=torch.float64)
                    w = (w.double() + delta).to(torch.bfloat16)
                tensors[name] = w
        save_file(tensors, tuned / "model.safetensors", metadata={"format": "pt"})
        for side in ("config.json", "generation_config.json"):
            (tuned / side).write_bytes((base / side).read_bytes())
    return base, tuned


def ensure_mergekit() -> Path:
    exe = VENV / "bin" / "mergekit-extract-lora"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"),
             "mergekit==0.1.5"],
            check=True,
        )
    return exe


def timed(cmd: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def adapter_errors(adapter: Path, base: Path, tuned: Path) -> dict[str, float]:
    """Per module relative Frobenius error of ``scale * B @ A`` against ``tuned - base``."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    r, alpha = config["r"], config["lora_alpha"]
    errors: dict[str, float] = {}
    with (
        safe_open(adapter / "adapter_model.safetensors", "pt") as fa,
        safe_open(base / "model.safetensors", "pt") as fb,
        safe_open(tuned / "model.safetensors", "pt") as ft,
    ):
        keys = set(fa.keys())
        for key in sorted(k for k in keys if k.endswith(".lora_A.weight")):
            module = key[len("base_model.model.") : -len(".lora_A.weight")]
            a = fa.get_tensor(key).float()
            b = fa.get_tensor(key.replace("lora_A", "lora_B")).float()
            rank = a.shape[0]
            short = module.rpartition(".")[2]
            rr = config.get("rank_pattern", {}).get(module, config.get("rank_pattern", {}).get(short, r))
            aa = config.get("alpha_pattern", {}).get(module, config.get("alpha_pattern", {}).get(short, alpha))
            scale = aa / rr if rr else 1.0
            assert rank == rr or rr == r, (module, rank, rr)
            dw = ft.get_tensor(module + ".weight").float() - fb.get_tensor(module + ".weight").float()
            errors[module] = float(torch.linalg.matrix_norm(dw - scale * (b @ a)) / torch.linalg.matrix_norm(dw))
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-mergekit", action="store_true", help="Only loradex (no mergekit run).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the numbers here.")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    base, tuned = build_inputs()
    loradex = [str(ROOT / ".venv" / "bin" / "loradex")]
    rows: list[tuple[str, float, float, str]] = []
    lx_out = OUT / "loradex-r16"
    seconds, stdout = timed([*loradex, "extract", "--base", str(base), "--tuned", str(tuned), "--rank", "16",
                             "--out", str(lx_out), "--force", "--verify", "0", "--quiet", "--json"])
    lx_err = adapter_errors(lx_out, base, tuned)
    rows.append(("loradex extract --rank 16", seconds, max(lx_err.values()), "randomized SVD, cpu"))
    mk_err: dict[str, float] = {}
    if not args.skip_mergekit:
        exe = ensure_mergekit()
        mk_out = OUT / "mergekit-r16"
        if mk_out.exists():
            import shutil

            shutil.rmtree(mk_out)
        seconds, _ = timed([str(exe), "--model", str(tuned), "--base-model", str(base), "--out-path", str(mk_out),
                            "--max-rank", "16", "--skip-undecomposable", "-e", "embed_tokens", "-e", "lm_head"])
        mk_err = adapter_errors(mk_out, base, tuned)
        rows.append(("mergekit-extract-lora --max-rank 16", seconds, max(mk_err.values()), "dense fp32 SVD"))
    resize_rows = []
    for flag, value in (("--rank", "8"), ("--energy", "0.9")):
        out = OUT / f"resize{flag.strip('-')}{value}"
        seconds, stdout = timed([*loradex, "resize", str(lx_out), flag, value, "--out", str(out), "--force", "--json",
                                 "--quiet"])
        summary = json.loads(stdout)
        resize_rows.append((f"loradex resize {flag} {value}", seconds, summary["max_relative_error"],
                            f"max rank {summary['max_rank']}, min kept energy {summary['min_kept_energy']:.4f}"))

    print(f"{'contender':<40} {'wall s':>8} {'worst rel. error':>17}  notes")
    for name, sec, err, note in rows + resize_rows:
        print(f"{name:<40} {sec:>8.2f} {err:>17.6f}  {note}")
    result: dict[str, object] = {"rows": rows, "resize": resize_rows, "modules": len(lx_err)}
    if mk_err:
        ratios = {m: lx_err[m] / mk_err[m] for m in lx_err if m in mk_err and mk_err[m] > 0}
        speedup = rows[1][1] / rows[0][1]
        worst = max(lx_err.values()) / max(mk_err.values())
        print(f"speed-up {speedup:.1f}x; worst-module error ratio {worst:.5f}; per-module ratio max "
              f"{max(ratios.values()):.5f}, mean {sum(ratios.values()) / len(ratios):.5f} over {len(ratios)} modules")
        result |= {"speedup": speedup, "worst_ratio": worst, "max_module_ratio": max(ratios.values())}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0 if all(math.isfinite(r[2]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
