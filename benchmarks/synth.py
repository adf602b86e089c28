"""Synthetic Llama-shaped checkpoints and PEFT LoRA adapters, written fast and locally.

Nothing here downloads anything: the benchmarks (and tests that need a realistic layout) build
their inputs with these functions. The files follow exactly what transformers 5 and peft 0.21
write for ``LlamaForCausalLM`` (``config.json``, ``generation_config.json``, sharded safetensors
with ``model.safetensors.index.json``; ``adapter_config.json`` + ``adapter_model.safetensors``),
but the writer is independent of both libraries and of ``mergetools`` (a benchmark must not use
the code it measures to build its inputs):

- tensors are generated one at a time, in chunks of :data:`CHUNK_ELEMENTS`, and streamed to disk
  as raw safetensors bytes, so memory stays at tens of MB whatever the model size;
- values are seeded (``torch.Generator`` per tensor, seeded from the global seed and the tensor's
  name), so the same arguments always give the same bytes.

Importable (``from benchmarks import synth``) and a CLI::

    python benchmarks/synth.py base  OUT_DIR --preset tinyllama
    python benchmarks/synth.py adapter OUT_DIR --preset tinyllama --base OUT_DIR_OF_BASE -r 16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CHUNK_ELEMENTS = 1 << 24
"""Elements generated per step (64 MB of fp32 scratch): bounds memory, fixes the value stream."""

DEFAULT_MAX_SHARD_SIZE = 1_000_000_000
"""Shard size limit in bytes ("1GB" in huggingface_hub's decimal units)."""

LINEAR_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
"""Every linear layer of a Llama decoder layer, in transformers' module order."""

_ST_DTYPES: dict[torch.dtype, str] = {
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float32: "F32",
}


@dataclass(frozen=True, slots=True)
class LlamaSpec:
    """The shape of a ``LlamaForCausalLM`` (what ``config.json`` says)."""

    num_hidden_layers: int = 22
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_attention_heads: int = 32
    num_key_value_heads: int = 4
    vocab_size: int = 32000
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def linear_shape(self, module: str) -> tuple[int, int]:
        """``(out_features, in_features)`` of one linear layer of a decoder layer."""
        hidden, inter = self.hidden_size, self.intermediate_size
        kv = self.num_key_value_heads * self.head_dim
        shapes = {
            "q_proj": (hidden, hidden),
            "k_proj": (kv, hidden),
            "v_proj": (kv, hidden),
            "o_proj": (hidden, hidden),
            "gate_proj": (inter, hidden),
            "up_proj": (inter, hidden),
            "down_proj": (hidden, inter),
        }
        return shapes[module]

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every tensor of the checkpoint, in ``state_dict`` order: ``[(name, shape)]``."""
        out: list[tuple[str, tuple[int, ...]]] = [
            ("model.embed_tokens.weight", (self.vocab_size, self.hidden_size))
        ]
        for i in range(self.num_hidden_layers):
            for module in LINEAR_MODULES:
                group = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
                out.append((f"model.layers.{i}.{group}.{module}.weight", self.linear_shape(module)))
            out.append((f"model.layers.{i}.input_layernorm.weight", (self.hidden_size,)))
            out.append((f"model.layers.{i}.post_attention_layernorm.weight", (self.hidden_size,)))
        out.append(("model.norm.weight", (self.hidden_size,)))
        out.append(("lm_head.weight", (self.vocab_size, self.hidden_size)))
        return out

    def num_parameters(self) -> int:
        return sum(math.prod(shape) for _, shape in self.tensors())


PRESETS: dict[str, LlamaSpec] = {
    "tinyllama": LlamaSpec(),
    "tiny": LlamaSpec(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=176,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=320,
    ),
}
"""``tinyllama``: TinyLlama-1.1B's shape (2.2 GB in bf16). ``tiny``: for unit tests (0.3 MB)."""


def _version(package: str, fallback: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return fallback


def llama_config(spec: LlamaSpec, *, dtype: str = "bfloat16") -> dict[str, object]:
    """``config.json`` exactly as transformers 5 ``save_pretrained`` writes it for this shape."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "dtype": dtype,
        "eos_token_id": 2,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "pad_token_id": None,
        "pretraining_tp": 1,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_parameters": {"rope_theta": spec.rope_theta, "rope_type": "default"},
        "tie_word_embeddings": False,
        "transformers_version": _version("transformers", "5.24.0"),
        "use_cache": True,
        "vocab_size": spec.vocab_size,
    }


def generation_config() -> dict[str, object]:
    """``generation_config.json`` as transformers 5 writes it for a config-built Llama."""
    return {
        "_from_model_config": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "output_attentions": False,
        "output_hidden_states": False,
        "transformers_version": _version("transformers", "5.24.0"),
        "use_cache": True,
    }


def lora_adapter_config(
    *,
    rank: int,
    alpha: float,
    target_modules: Sequence[str],
    base_model_name_or_path: str | None,
) -> dict[str, object]:
    """``adapter_config.json`` exactly as peft 0.21 ``save_pretrained`` writes a plain LoRA."""
    return {
        "alora_invocation_tokens": None,
        "alpha_pattern": {},
        "arrow_config": None,
        "auto_mapping": None,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "corda_config": None,
        "ensure_weight_tying": False,
        "eva_config": None,
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "kasa_config": None,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_bias": False,
        "lora_dropout": 0.0,
        "lora_ga_config": None,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "monteclora_config": None,
        "peft_type": "LORA",
        "peft_version": _version("peft", "0.21.2"),
        "qalora_group_size": 16,
        "r": rank,
        "rank_pattern": {},
        "revision": None,
        "target_modules": list(target_modules),
        "target_parameters": None,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": None,
        "use_bdlora": None,
        "use_dora": False,
        "use_qalora": False,
        "use_rslora": False,
        "velora_config": None,
    }


# --------------------------------------------------------------------------- raw safetensors


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    fill: Callable[[str, tuple[int, ...], torch.dtype], Iterator[torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def _tensor_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _normal_chunks(
    seed: int, *, mean: float, std: float
) -> Callable[[str, tuple[int, ...], torch.dtype], Iterator[torch.Tensor]]:
    """A filler yielding ``mean + std * N(0, 1)`` values, :data:`CHUNK_ELEMENTS` at a time."""

    def fill(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(_tensor_seed(seed, name))
        remaining = math.prod(shape)
        scratch = torch.empty(min(remaining, CHUNK_ELEMENTS), dtype=torch.float32)
        while remaining:
            n = min(remaining, CHUNK_ELEMENTS)
            chunk = scratch[:n]
            torch.randn(n, generator=generator, out=chunk)
            chunk.mul_(std)
            if mean:
                chunk.add_(mean)
            yield chunk if dtype == torch.float32 else chunk.to(dtype)
            remaining -= n

    return fill


def _write_safetensors(path: Path, entries: Sequence[_Entry]) -> int:
    """Write ``entries`` as one safetensors file, streaming each tensor; return the data size.

    Data is laid out in name order (as the safetensors library does for one dtype); the header
    is padded with spaces to a multiple of 8 bytes and carries ``{"format": "pt"}``.
    """
    ordered = sorted(entries, key=lambda e: e.name)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in ordered:
        header[entry.name] = {
            "dtype": _ST_DTYPES[entry.dtype],
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for entry in ordered:
            written = 0
            for chunk in entry.fill(entry.name, entry.shape, entry.dtype):
                data = chunk.contiguous().view(torch.uint8).numpy()
                f.write(data.data)  # the array's own buffer: no copy
                written += data.nbytes
            if written != entry.nbytes:
                raise RuntimeError(f"{entry.name}: wrote {written} bytes, expected {entry.nbytes}")
    os.replace(tmp, path)
    return offset


def _plan_shards(entries: Sequence[_Entry], max_shard_size: int) -> list[list[_Entry]]:
    """Greedy sharding in order, as huggingface_hub does: a new shard when the next tensor
    would overflow the current one (a tensor larger than the limit gets a shard of its own)."""
    shards: list[list[_Entry]] = [[]]
    size = 0
    for entry in entries:
        if shards[-1] and size + entry.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- public writers


def write_llama_checkpoint(
    out_dir: str | os.PathLike[str],
    spec: LlamaSpec,
    *,
    seed: int = 0,
    std: float = 0.02,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Write a ``LlamaForCausalLM`` checkpoint folder the way transformers 5 lays it out.

    Linear and embedding weights are ``N(0, std)``; norm weights ``1 + N(0, std)``. One shard
    (``model.safetensors``) when everything fits in ``max_shard_size`` bytes, else
    ``model-0000k-of-0000N.safetensors`` plus ``model.safetensors.index.json``. Returns the folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = _normal_chunks(seed, mean=0.0, std=std)
    norms = _normal_chunks(seed, mean=1.0, std=std)
    entries = [
        _Entry(name, shape, dtype, norms if len(shape) == 1 else weights)
        for name, shape in spec.tensors()
    ]
    shards = _plan_shards(entries, max_shard_size)
    for stale in out.glob("model*.safetensors*"):
        stale.unlink()
    total_size = 0
    if len(shards) == 1:
        total_size = _write_safetensors(out / "model.safetensors", shards[0])
    else:
        weight_map: dict[str, str] = {}
        for k, shard in enumerate(shards, start=1):
            filename = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            logger.info("writing %s (%d tensors)", filename, len(shard))
            total_size += _write_safetensors(out / filename, shard)
            weight_map.update({entry.name: filename for entry in shard})
        index = {
            "metadata": {
                "total_parameters": spec.num_parameters(),
                "total_size": total_size,
            },
            "weight_map": dict(sorted(weight_map.items())),
        }
        _write_json(out / "model.safetensors.index.json", index)
    dtype_name = str(dtype).removeprefix("torch.")
    _write_json(out / "config.json", llama_config(spec, dtype=dtype_name))
    _write_json(out / "generation_config.json", generation_config())
    logger.info("wrote %s: %d shards, %d bytes", out, len(shards), total_size)
    return out


def write_lora_adapter(
    out_dir: str | os.PathLike[str],
    spec: LlamaSpec,
    *,
    rank: int = 16,
    alpha: float = 32,
    target_modules: Sequence[str] = LINEAR_MODULES,
    base_model_name_or_path: str | None = None,
    seed: int = 1,
    std: float = 0.02,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a PEFT LoRA adapter folder for a model of shape ``spec``.

    Every ``target_modules`` linear of every layer gets ``lora_A`` ``(rank, in)`` and ``lora_B``
    ``(out, rank)``, both ``N(0, std)`` (non-zero, unlike a fresh PEFT init, so a merge changes
    every targeted weight). fp32 by default: what peft saves for a bf16 base, since it upcasts
    adapter weights (``autocast_adapter_dtype=True``). Returns the folder.
    """
    unknown = sorted(set(target_modules) - set(LINEAR_MODULES))
    if unknown:
        raise ValueError(f"unknown target modules {unknown}; expected some of {LINEAR_MODULES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fill = _normal_chunks(seed, mean=0.0, std=std)
    entries: list[_Entry] = []
    for i in range(spec.num_hidden_layers):
        for module in LINEAR_MODULES:
            if module not in target_modules:
                continue
            group = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"base_model.model.model.layers.{i}.{group}.{module}"
            out_features, in_features = spec.linear_shape(module)
            entries.append(_Entry(f"{prefix}.lora_A.weight", (rank, in_features), dtype, fill))
            entries.append(_Entry(f"{prefix}.lora_B.weight", (out_features, rank), dtype, fill))
    _write_safetensors(out / "adapter_model.safetensors", entries)
    config = lora_adapter_config(
        rank=rank,
        alpha=alpha,
        target_modules=[m for m in LINEAR_MODULES if m in target_modules],
        base_model_name_or_path=base_model_name_or_path,
    )
    _write_json(out / "adapter_config.json", config)
    logger.info("wrote %s: %d tensors", out, len(entries))
    return out


def spec_from_args(args: argparse.Namespace) -> LlamaSpec:
    """The preset named by ``--preset``, with any shape option given on the command line."""
    spec = PRESETS[args.preset]
    overrides = {
        field: getattr(args, field)
        for field in (
            "num_hidden_layers",
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_key_value_heads",
            "vocab_size",
        )
        if getattr(args, field, None) is not None
    }
    return replace(spec, **overrides)


def add_shape_options(parser: argparse.ArgumentParser) -> None:
    """``--preset`` plus one option per shape field (shared with the benchmarks)."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tinyllama")
    parser.add_argument("--layers", dest="num_hidden_layers", type=int, help="decoder layers")
    parser.add_argument("--hidden", dest="hidden_size", type=int, help="hidden size")
    parser.add_argument("--intermediate", dest="intermediate_size", type=int)
    parser.add_argument("--heads", dest="num_attention_heads", type=int)
    parser.add_argument("--kv-heads", dest="num_key_value_heads", type=int)
    parser.add_argument("--vocab", dest="vocab_size", type=int)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    base = sub.add_parser("base", help="write a Llama-shaped bf16 checkpoint folder")
    base.add_argument("out", type=Path)
    add_shape_options(base)
    base.add_argument("--seed", type=int, default=0)
    base.add_argument(
        "--max-shard-size", type=int, default=DEFAULT_MAX_SHARD_SIZE, help="bytes per shard"
    )
    adapter = sub.add_parser("adapter", help="write a PEFT LoRA adapter folder")
    adapter.add_argument("out", type=Path)
    add_shape_options(adapter)
    adapter.add_argument("-r", "--rank", type=int, default=16)
    adapter.add_argument("--alpha", type=float, default=32)
    adapter.add_argument("--targets", default=",".join(LINEAR_MODULES), help="comma-separated")
    adapter.add_argument("--base", help="base_model_name_or_path to record")
    adapter.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    spec = spec_from_args(args)
    if args.what == "base":
        write_llama_checkpoint(args.out, spec, seed=args.seed, max_shard_size=args.max_shard_size)
    else:
        alpha = int(args.alpha) if float(args.alpha).is_integer() else args.alpha
        write_lora_adapter(
            args.out,
            spec,
            rank=args.rank,
            alpha=alpha,
            target_modules=args.targets.split(","),
            base_model_name_or_path=args.base,
            seed=args.seed,
        )
    print(json.dumps({"out": str(args.out), "spec": asdict(spec)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
