"""Tiny checkpoints and PEFT adapters written to ``tmp_path``, for tests.

Everything here is built offline from configs (nothing is downloaded), is seeded, and is small enough
that a whole model saves and loads in milliseconds. transformers and peft are test-only dependencies:
they build the inputs and the oracle, never the code under test.

Models (fresh, fp32, deterministic for a given ``seed``)::

    tiny_llama(seed=0, **config_overrides)      LlamaForCausalLM   hidden 32, 2 layers, vocab 128
    tiny_gpt2(seed=0, **config_overrides)       GPT2LMHeadModel    n_embd 32, 2 layers, vocab 128
    tiny_bert(seed=0, head=False, num_labels=3) BertModel / BertForSequenceClassification
    tiny_conv(seed=0)                           TinyConvNet (plain nn.Module: Conv1d, Conv2d, BatchNorm)
    build_model("llama" | "gpt2" | "bert" | "bert-cls" | "conv", seed=0, **overrides)

Base checkpoints (Hugging Face layout)::

    save_checkpoint(model, tmp_path / "base", layout="sharded", dtype="bfloat16", prefix=False)

    layout  "safetensors" (model.safetensors), "sharded" (model-0000k-of-0000N.safetensors + index),
            "bin" (pytorch_model.bin), "bin-sharded" (pytorch_model-0000k-of-0000N.bin + index)
    dtype   "float32" | "float16" | "bfloat16" (config.json's ``dtype`` follows)
    prefix  False strips the base-model prefix from tensor names (``transformer.h.0`` -> ``h.0``,
            the layout of older GPT-2 files); True keeps what transformers writes.

PEFT adapters (loaded back by peft in ``tests/oracle``)::

    save_adapter(tiny_llama(), tmp_path / "ad", target_modules=["q_proj"], r=4, seed=1)

``save_adapter`` calls ``get_peft_model`` then **randomises** every trainable tensor with a seeded
generator: PEFT initialises ``lora_B`` (and ``lora_embedding_A``) to zero, and a merge test whose
delta is zero cannot fail. Pass the same kind of model (same seed) that the base was saved from, so
that DoRA magnitudes and ``modules_to_save`` copies start from the base's weights.

Hand edits for variants peft cannot produce: ``edit_json(path, key=value, ...)`` (``DELETE`` removes a
key), ``write_adapter_config``. Readers: ``load_checkpoint_tensors`` (any layout), ``read_json``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = [
    "DELETE",
    "DTYPES",
    "LAYOUTS",
    "TinyConvNet",
    "adapter_tensors",
    "bert_config",
    "build_model",
    "checkpoint_weight_files",
    "dtype_ulp",
    "edit_json",
    "folder_snapshot",
    "gpt2_config",
    "iter_lora_modules",
    "llama_config",
    "load_checkpoint_tensors",
    "load_tiny_conv",
    "randomize_trainable",
    "read_json",
    "rename_json_key",
    "save_adapter",
    "save_checkpoint",
    "sha256_file",
    "tiny_bert",
    "tiny_conv",
    "tiny_gpt2",
    "tiny_llama",
    "write_adapter_tensors",
    "write_tokenizer",
]

Layout = Literal["safetensors", "sharded", "bin", "bin-sharded"]
LAYOUTS: tuple[Layout, ...] = ("safetensors", "sharded", "bin", "bin-sharded")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Small enough that every tiny model is split into several shards.
DEFAULT_SHARD_BYTES = 20_000


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()
"""Sentinel for :func:`edit_json`: remove the key."""


# ----------------------------------------------------------------------------------------- models


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def llama_config(**overrides: object):
    """A 2-layer Llama config (hidden 32, GQA 4/2 heads, vocab 128); keyword overrides win."""
    from transformers import LlamaConfig

    kwargs: dict[str, object] = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def gpt2_config(**overrides: object):
    """A 2-layer GPT-2 config (n_embd 32, 4 heads, vocab 128); keyword overrides win."""
    from transformers import GPT2Config

    kwargs: dict[str, object] = dict(
        n_embd=32,
        n_layer=2,
        n_head=4,
        vocab_size=128,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(overrides)
    return GPT2Config(**kwargs)


def bert_config(**overrides: object):
    """A 2-layer BERT config (hidden 32, 4 heads, vocab 128, 3 labels); keyword overrides win."""
    from transformers import BertConfig

    kwargs: dict[str, object] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=128,
        max_position_embeddings=64,
        num_labels=3,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    _quiet_transformers()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.eval()


def tiny_llama(*, seed: int = 0, **config_overrides: object) -> nn.Module:
    """A fresh fp32 ``LlamaForCausalLM``; ``tie_word_embeddings=True`` gives a tied model."""
    from transformers import LlamaForCausalLM

    return _seeded(seed, lambda: LlamaForCausalLM(llama_config(**config_overrides)))


def tiny_gpt2(*, seed: int = 0, **config_overrides: object) -> nn.Module:
    """A fresh fp32 ``GPT2LMHeadModel`` (Conv1D layers, biases, tied ``lm_head``)."""
    from transformers import GPT2LMHeadModel

    return _seeded(seed, lambda: GPT2LMHeadModel(gpt2_config(**config_overrides)))


def tiny_bert(
    *, seed: int = 0, head: bool = False, num_labels: int = 3, **config_overrides: object
) -> nn.Module:
    """A fresh fp32 ``BertModel``, or ``BertForSequenceClassification`` when ``head``.

    Both are built with the same seed so that the encoder of ``head=True`` equals the base of
    ``head=False`` only in shapes, not values; build the adapter's model with ``head=True`` and the
    base with ``head=False`` when testing "task heads the base lacks".
    """
    from transformers import BertForSequenceClassification, BertModel

    config = bert_config(num_labels=num_labels, **config_overrides)
    if head:
        return _seeded(seed, lambda: BertForSequenceClassification(config))
    return _seeded(seed, lambda: BertModel(config))


class TinyConvNet(nn.Module):
    """A plain module (no transformers) with every conv kind PEFT's LoRA supports.

    Tensors: ``conv1`` Conv1d(4, 8, k=3), ``conv2`` Conv2d(8, 6, k=3x3), ``pointwise`` Conv2d(6, 6, 1x1),
    ``norm`` BatchNorm2d(6) (carries the int64 ``num_batches_tracked``), ``proj`` Linear(6, 5).
    Input: ``(batch, 4, 10)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 8, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, kernel_size=3, padding=1)
        self.pointwise = nn.Conv2d(6, 6, kernel_size=1)
        self.norm = nn.BatchNorm2d(6)
        self.proj = nn.Linear(6, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv1(x))  # (b, 8, L)
        h = h.unsqueeze(-1).expand(-1, -1, -1, 3)  # (b, 8, L, 3)
        h = self.norm(self.pointwise(torch.relu(self.conv2(h))))
        return self.proj(h.mean(dim=(2, 3)))

    @staticmethod
    def checkpoint_config() -> dict[str, object]:
        return {"architectures": ["TinyConvNet"], "model_type": "tiny_conv", "dtype": "float32"}


def tiny_conv(*, seed: int = 0) -> TinyConvNet:
    """A fresh fp32 :class:`TinyConvNet` with non-trivial BatchNorm statistics."""

    def build() -> nn.Module:
        model = TinyConvNet()
        model.norm.running_mean.normal_(0, 0.1)
        model.norm.running_var.uniform_(0.5, 1.5)
        model.norm.num_batches_tracked.fill_(7)
        return model

    model = _seeded(seed, build)
    assert isinstance(model, TinyConvNet)
    return model


def load_tiny_conv(path: str | Path) -> TinyConvNet:
    """Build a :class:`TinyConvNet` holding the weights of a checkpoint folder (any layout)."""
    model = TinyConvNet()
    tensors = load_checkpoint_tensors(path)
    dtype = next(t.dtype for t in tensors.values() if t.is_floating_point())
    model.to(dtype)
    model.load_state_dict(tensors, strict=True)
    return model.eval()


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "llama": tiny_llama,
    "llama-tied": lambda **kw: tiny_llama(tie_word_embeddings=True, **kw),
    "gpt2": tiny_gpt2,
    "bert": tiny_bert,
    "bert-cls": lambda **kw: tiny_bert(head=True, **kw),
    "conv": tiny_conv,
}


def build_model(arch: str, *, seed: int = 0, **overrides: object) -> nn.Module:
    """A fresh tiny model by name: ``llama``, ``llama-tied``, ``gpt2``, ``bert``, ``bert-cls``, ``conv``."""
    try:
        builder = _BUILDERS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(_BUILDERS)}") from None
    return builder(seed=seed, **overrides)


# ----------------------------------------------------------------------------------- checkpoints


def checkpoint_weight_files(path: str | Path) -> list[Path]:
    """The weight files of a checkpoint folder, sorted (safetensors and/or .bin)."""
    path = Path(path)
    return sorted(
        p
        for p in path.iterdir()
        if p.is_file()
        and (
            p.suffix == ".safetensors"
            or (p.suffix == ".bin" and p.name.startswith("pytorch_model"))
        )
    )


def load_checkpoint_tensors(path: str | Path) -> dict[str, Tensor]:
    """Every tensor of a checkpoint folder, by its stored name, in any layout.

    Reads ``model.safetensors``, safetensors shards (via the index when present), ``pytorch_model.bin``
    or .bin shards (``weights_only=True``). Raises ``FileNotFoundError`` when no weights are found.
    """
    path = Path(path)
    files = checkpoint_weight_files(path)
    if not files:
        raise FileNotFoundError(f"no weight files in {path}")
    tensors: dict[str, Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            part = load_file(str(file))
        else:
            part = torch.load(file, map_location="cpu", weights_only=True)
        overlap = set(part) & set(tensors)
        if overlap:
            raise AssertionError(f"tensors stored twice in {path}: {sorted(overlap)[:5]}")
        tensors.update(part)
    return tensors


def _shards(tensors: Mapping[str, Tensor], max_bytes: int) -> list[dict[str, Tensor]]:
    """Greedy sharding in insertion order; a tensor larger than ``max_bytes`` sits alone."""
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def _write_weights(
    path: Path, tensors: dict[str, Tensor], *, layout: Layout, shard_bytes: int
) -> None:
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    safe = layout in ("safetensors", "sharded")
    stem, ext = ("model", ".safetensors") if safe else ("pytorch_model", ".bin")

    def write(file: Path, part: dict[str, Tensor]) -> None:
        if safe:
            save_file(part, str(file), metadata={"format": "pt"})
        else:
            # Clone so that torch.save does not store a shared storage view of a bigger tensor.
            torch.save({k: v.clone() for k, v in part.items()}, file)

    if layout in ("safetensors", "bin"):
        write(path / f"{stem}{ext}", tensors)
        return
    shards = _shards(tensors, shard_bytes)
    n = len(shards)
    weight_map: dict[str, str] = {}
    for i, part in enumerate(shards, start=1):
        name = f"{stem}-{i:05d}-of-{n:05d}{ext}"
        write(path / name, part)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / f"{stem}{ext}.index.json").write_text(json.dumps(index, indent=2) + "\n")


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    layout: Layout = "safetensors",
    dtype: str = "float32",
    prefix: bool = True,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    tokenizer: bool = False,
) -> Path:
    """Write ``model`` as a Hugging Face checkpoint folder and return its path.

    The folder gets ``config.json`` (+ ``generation_config.json``) from transformers'
    ``save_pretrained``; weights are those transformers saves (a tied ``lm_head`` is left out) in the
    requested ``layout``, cast to ``dtype``. With ``prefix=False`` the base-model prefix
    (``model.base_model_prefix``, e.g. ``transformer``) is stripped from every name that has it.
    "sharded" layouts split at ``shard_bytes`` so tiny models get several shards. ``tokenizer`` also
    writes tiny tokenizer files (:func:`write_tokenizer`). ``model`` is cast to ``dtype`` in place.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(path)
    torch_dtype = DTYPES[dtype]
    model.to(torch_dtype)
    path.mkdir(parents=True)
    if isinstance(model, TinyConvNet):
        config = TinyConvNet.checkpoint_config() | {"dtype": dtype}
        (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
        _write_weights(path, tensors, layout=layout, shard_bytes=shard_bytes)
    else:
        staging = path / ".staging"
        model.save_pretrained(staging)
        tensors = load_checkpoint_tensors(staging)
        for file in staging.iterdir():
            if file.name.endswith(".json") and not file.name.startswith("model.safetensors"):
                shutil.move(str(file), path / file.name)
        shutil.rmtree(staging)
        if not prefix:
            lead = f"{model.base_model_prefix}."
            tensors = {k.removeprefix(lead): v for k, v in tensors.items()}
        _write_weights(path, tensors, layout=layout, shard_bytes=shard_bytes)
        config = read_json(path / "config.json")
        if config.get("dtype", dtype) != dtype:
            raise AssertionError(f"transformers wrote dtype {config.get('dtype')} for {dtype}")
    if tokenizer:
        vocab = getattr(getattr(model, "config", None), "vocab_size", 16)
        write_tokenizer(path, vocab_size=vocab, marker="base")
    return path


def write_tokenizer(path: str | Path, *, vocab_size: int, marker: str) -> list[Path]:
    """Write tiny tokenizer files (plain JSON: a WordLevel ``tokenizer.json`` and its config).

    Tokens are ``<marker>_<i>`` so tests can tell whose files ended up in a merged folder.
    Returns the files written.
    """
    path = Path(path)
    vocab = {f"{marker}_{i}": i for i in range(vocab_size)}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": f"{marker}_0"},
    }
    files = [path / "tokenizer.json", path / "tokenizer_config.json"]
    files[0].write_text(json.dumps(tokenizer) + "\n")
    files[1].write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": f"{marker}_0"})
        + "\n"
    )
    return files


# -------------------------------------------------------------------------------------- adapters


def randomize_trainable(model: nn.Module, *, seed: int, scale: float = 0.05) -> list[str]:
    """Give every trainable parameter of a PEFT model seeded random values; return their names.

    - all-zero tensors (``lora_B``, ``lora_embedding_A``, ...) become ``N(0, scale**2)``;
    - ``lora_magnitude_vector`` is multiplied by ``exp(N(0, 0.25**2))`` (stays positive, moves
      away from the base weight's norm so DoRA does something);
    - anything else (``lora_A``, copies in ``modules_to_save``, trainable biases, trainable-token
      deltas) gets ``N(0, (0.4 * scale)**2)`` added.
    """
    generator = torch.Generator().manual_seed(seed)
    changed: list[str] = []
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if not param.requires_grad:
                continue
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            value = param.detach().to(torch.float64)
            if "lora_magnitude_vector" in name:
                value = value * torch.exp(0.25 * noise)
            elif not value.any():
                value = noise * scale
            else:
                value = value + noise * (0.4 * scale)
            param.copy_(value.to(param.dtype))
            changed.append(name)
    if not changed:
        raise AssertionError("the PEFT model has no trainable parameters to randomise")
    return changed


def save_adapter(
    model: nn.Module,
    path: str | Path,
    config: object | None = None,
    *,
    seed: int = 1,
    randomize: bool = True,
    adapter_dtype: str | None = None,
    save_embedding_layers: bool | str = "auto",
    resize_vocab: int | None = None,
    **lora_kwargs: object,
) -> Path:
    """Wrap ``model`` with PEFT LoRA, randomise it, ``save_pretrained`` it to ``path``; return ``path``.

    Either pass a ready ``config`` (any ``peft`` config object) or LoraConfig keyword arguments
    (defaults ``r=4, lora_alpha=8``). ``resize_vocab`` calls ``resize_token_embeddings`` first (the
    adapter then carries whole embedding/lm_head tensors of the new size). ``adapter_dtype`` casts
    the saved adapter tensors (``"bfloat16"``...). ``model`` is consumed (PEFT wraps it in place).
    """
    from peft import LoraConfig, get_peft_model

    path = Path(path)
    if resize_vocab is not None:
        model.resize_token_embeddings(resize_vocab, mean_resizing=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1000)
            for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
                if emb is not None:
                    emb.weight.data[-8:].normal_(0, 0.02)
    if config is None:
        kwargs: dict[str, object] = {"r": 4, "lora_alpha": 8}
        kwargs.update(lora_kwargs)
        config = LoraConfig(**kwargs)
    elif lora_kwargs:
        raise TypeError("pass either config or LoraConfig keyword arguments, not both")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    if randomize:
        randomize_trainable(peft_model, seed=seed)
    if adapter_dtype is not None:
        peft_model.to(DTYPES[adapter_dtype])
    peft_model.save_pretrained(path, save_embedding_layers=save_embedding_layers)
    return path


def read_json(path: str | Path) -> dict:
    """Parse a JSON file."""
    return json.loads(Path(path).read_text())


def edit_json(path: str | Path, /, **changes: object) -> dict:
    """Set (or, with :data:`DELETE`, remove) top-level keys of a JSON file; return the new content.

    For variants peft cannot produce: ``edit_json(adapter / "adapter_config.json", peft_type="IA3")``.
    """
    path = Path(path)
    data = read_json(path)
    for key, value in changes.items():
        if value is DELETE:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


def rename_json_key(path: str | Path, old: str, new: str) -> dict:
    """Rename a top-level key of a JSON file (e.g. config ``dtype`` -> ``torch_dtype``)."""
    path = Path(path)
    data = read_json(path)
    data = {(new if k == old else k): v for k, v in data.items()}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def adapter_tensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a PEFT adapter folder (safetensors, or legacy .bin)."""
    path = Path(path)
    if (path / "adapter_model.safetensors").exists():
        return load_file(str(path / "adapter_model.safetensors"))
    return torch.load(path / "adapter_model.bin", map_location="cpu", weights_only=True)


def write_adapter_tensors(path: str | Path, tensors: Mapping[str, Tensor]) -> None:
    """Replace the tensors of a PEFT adapter folder (``adapter_model.safetensors``)."""
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(Path(path) / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )


def folder_snapshot(path: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``path`` (to prove a folder was not touched)."""
    path = Path(path)
    return {
        str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()
    }


def dtype_ulp(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Elementwise unit in the last place of ``|x|`` in ``dtype``, as float64.

    bf16: ``2**(e - 7)``, fp16: ``2**(e - 10)`` (subnormals: the smallest spacing), fp32:
    ``2**(e - 23)``, where ``e = floor(log2(|x|))``.
    """
    mantissa_bits = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23, torch.float64: 52}[
        dtype
    ]
    info = torch.finfo(dtype)
    x = x.to(torch.float64).abs()
    tiny = float(info.tiny)
    exponent = torch.floor(torch.log2(torch.clamp(x, min=tiny)))
    return torch.exp2(exponent - mantissa_bits)


def iter_lora_modules(tensors: Iterable[str]) -> list[str]:
    """Module paths (``base_model.model.`` stripped) that carry ``lora_A``/``lora_embedding_A``."""
    out = set()
    for key in tensors:
        for suffix in (".lora_A.weight", ".lora_embedding_A"):
            if key.endswith(suffix):
                out.add(key.removeprefix("base_model.model.").removesuffix(suffix))
    return sorted(out)
