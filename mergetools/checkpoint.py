"""Read Hugging Face base checkpoints (header only) and plan output shards.

A checkpoint folder holds ``config.json`` and its weights as ``model.safetensors``, or
shards named by ``model.safetensors.index.json``, or legacy ``pytorch_model.bin`` (single
or sharded with ``pytorch_model.bin.index.json``). Opening one reads headers only: no
tensor data, and no torch import for safetensors checkpoints.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mergetools.config_check import base_config_problems
from mergetools.errors import CorruptFileError, IncompatibleError, InvalidCheckpointError
from mergetools.files import FileKind, read_json_object
from mergetools.folder import Folder
from mergetools.safetensors_io import DTYPE_SIZES, TensorInfo, read_header, read_tensor_from

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "sentencepiece.bpe.model",
    "spm.model",
)
"""Files a tokenizer may consist of; copied next to merged weights."""

CORE_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spm.model",
)
"""Files that define a vocabulary: an adapter shipping one replaces the base's tokenizer whole
(and must then ship a complete, parsable tokenizer: :mod:`mergetools.tokenizer`)."""

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
"""Weight files of a base folder: never copied beside merged weights."""

INPUT_EMBEDDING_SUFFIXES = (
    "embed_tokens.weight",
    "wte.weight",
    "word_embeddings.weight",
    "embed_in.weight",
    "shared.weight",
)
OUTPUT_EMBEDDING_NAMES = ("lm_head.weight", "embed_out.weight")


def find_input_embedding(names: Iterable[str]) -> str | None:
    """The one tensor name ending in a conventional input-embedding suffix, if unique.

    Base fingerprints depend on this choice (a materialised tied lm_head is recognised by it):
    changing it changes fingerprints.
    """
    names = list(names)
    for suffix in INPUT_EMBEDDING_SUFFIXES:
        hits = [n for n in names if n == suffix or n.endswith("." + suffix)]
        if len(hits) == 1:
            return hits[0]
    return None


@dataclass(frozen=True, slots=True)
class BaseTensor:
    """One tensor of a base checkpoint: where it lives and what it is."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    info: TensorInfo | None
    """Byte range in a safetensors file; None for pickle (.bin) checkpoints."""


@dataclass
class Checkpoint:
    """A base checkpoint folder, opened header-only."""

    path: Path
    config: dict[str, object]
    format: Literal["safetensors", "bin"]
    files: list[Path]
    tensors: dict[str, BaseTensor]
    _bin_cache: dict[Path, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def architectures(self) -> list[str]:
        value = self.config.get("architectures")
        return [str(v) for v in value] if isinstance(value, list) else []

    @property
    def tie_word_embeddings(self) -> bool:
        """Whether the output embedding shares the input embedding's tensor."""
        value = self.config.get("tie_word_embeddings")
        if value is None:
            text = self.config.get("text_config")
            if isinstance(text, dict) and "tie_word_embeddings" in text:
                value = text["tie_word_embeddings"]
        if value is None:
            # transformers' PretrainedConfig default is True; a missing lm_head confirms it.
            value = not any(n in self.tensors for n in OUTPUT_EMBEDDING_NAMES)
        return bool(value)

    @property
    def vocab_size(self) -> int | None:
        value = self.config.get("vocab_size")
        if isinstance(value, int):
            return value
        text = self.config.get("text_config")
        if isinstance(text, dict) and isinstance(text.get("vocab_size"), int):
            return int(text["vocab_size"])
        return None

    @property
    def dtype(self) -> str | None:
        """The config's dtype (``dtype`` in transformers 5, ``torch_dtype`` in 4.x)."""
        value = self.config.get("dtype", self.config.get("torch_dtype"))
        return str(value) if value is not None else None

    def input_embedding_name(self) -> str | None:
        """The name of the input embedding tensor, found by its conventional suffix."""
        return find_input_embedding(self.tensors)

    def load(self, name: str) -> torch.Tensor:
        """Read one tensor into a fresh CPU tensor."""
        tensor = self.tensors[name]
        if tensor.info is not None:
            return read_tensor_from(tensor.file, tensor.info)
        return _load_bin(tensor.file, self._bin_cache)[name]


def _read_json(path: Path, *, what: str, kind: FileKind = "config") -> dict[str, object]:
    return read_json_object(path, what=what, kind=kind, missing=InvalidCheckpointError)


def base_folder(path: str | os.PathLike[str]) -> Folder:
    """A base checkpoint folder, read safely (links must stay inside it or its Hub cache repo)."""
    return Folder.open(path, error=InvalidCheckpointError)


def _read_index(path: Path) -> dict[str, str]:
    index = _read_json(path, what="shard index", kind="index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CorruptFileError(f"{path}: 'weight_map' must map tensor names to file names")
    for file_name in set(weight_map.values()):
        if "/" in file_name or "\\" in file_name or file_name in ("", ".", ".."):
            raise CorruptFileError(f"{path}: shard name {file_name!r} must be a plain file name")
    return weight_map


def load_pickle_state(path: Path) -> dict[str, torch.Tensor]:
    """Read a legacy ``.bin`` state dict, only ever with ``weights_only=True``."""
    import pickle

    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # Files written without the zip container cannot be memory-mapped.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CorruptFileError(
            f"{path}: not a readable torch checkpoint ({type(exc).__name__}); loradex loads pickles only "
            "with weights_only=True, so files holding anything but tensors are refused"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CorruptFileError(f"{path}: expected a mapping of tensor names to tensors")
    return state


def _load_bin(path: Path, cache: dict[Path, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if path not in cache:
        state = load_pickle_state(path)
        cache.clear()  # keep at most one shard mapped
        cache[path] = state
    return cache[path]


def _bin_tensors(path: Path, cache: dict[Path, dict[str, torch.Tensor]]) -> Iterator[BaseTensor]:
    from mergetools.safetensors_io import dtype_name

    for name, tensor in _load_bin(path, cache).items():
        yield BaseTensor(name, path, dtype_name(tensor.dtype), tuple(tensor.shape), None)


def _add_indexed(
    tensors: dict[str, BaseTensor], tensor: BaseTensor, weight_map: dict[str, str] | None, index: Path
) -> None:
    """Add a shard's tensor, refusing one that is in two shards or where the index does not say."""
    if tensor.name in tensors:
        raise CorruptFileError(
            f"{tensor.file}: tensor {tensor.name!r} also appears in {tensors[tensor.name].file.name}"
        )
    if weight_map is not None and weight_map.get(tensor.name) != tensor.file.name:
        raise CorruptFileError(
            f"{index}: tensor {tensor.name!r} is in {tensor.file.name} but the index says "
            f"{weight_map.get(tensor.name)!r}"
        )
    tensors[tensor.name] = tensor


def _check_index_complete(tensors: dict[str, BaseTensor], weight_map: dict[str, str] | None, index: Path) -> None:
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CorruptFileError(f"{index}: {len(missing)} indexed tensors are in no shard, e.g. {missing[0]!r}")


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a base checkpoint folder header-only and validate its layout."""
    root = Path(path)
    if not root.is_dir():
        raise InvalidCheckpointError(f"{root}: base checkpoint folder not found")
    folder = base_folder(root)
    folder.file("config.json")  # refuses a link leaving the folder or a special file
    config = _read_json(root / "config.json", what="config.json")
    problems = base_config_problems(config)
    if problems:
        raise InvalidCheckpointError(f"{root / 'config.json'}: {problems[0].message}")
    if config.get("quantization_config"):
        method = config["quantization_config"]
        method = method.get("quant_method", "?") if isinstance(method, dict) else method
        raise InvalidCheckpointError(
            f"{root}: quantized checkpoints ({method}) are not supported; "
            "merge into the unquantized base, then quantize the result"
        )
    files: list[Path]
    tensors: dict[str, BaseTensor] = {}
    bin_cache: dict[Path, dict[str, torch.Tensor]] = {}
    if folder.has(SAFE_INDEX) or folder.has(SAFE_SINGLE):
        fmt: Literal["safetensors", "bin"] = "safetensors"
        if folder.has(SAFE_INDEX):
            weight_map = _read_index(root / SAFE_INDEX)
            files = sorted({root / f for f in weight_map.values()})
        else:
            weight_map = None
            files = [root / SAFE_SINGLE]
        for file in files:
            folder.file(file.name)  # refuses a link leaving the folder or a special file
            header = read_header(file)
            for name, info in header.tensors.items():
                _add_indexed(tensors, BaseTensor(name, file, info.dtype, info.shape, info), weight_map, root / SAFE_INDEX)
        _check_index_complete(tensors, weight_map, root / SAFE_INDEX)
    elif folder.has(BIN_INDEX) or folder.has(BIN_SINGLE):
        fmt = "bin"
        if folder.has(BIN_INDEX):
            weight_map = _read_index(root / BIN_INDEX)
            files = sorted({root / f for f in weight_map.values()})
        else:
            weight_map = None
            files = [root / BIN_SINGLE]
        for file in files:
            if not folder.has(file.name):
                raise InvalidCheckpointError(f"{file}: shard named by the index not found")
            for tensor in _bin_tensors(file, bin_cache):
                _add_indexed(tensors, tensor, weight_map, root / BIN_INDEX)
        bin_cache.clear()
        _check_index_complete(tensors, weight_map, root / BIN_INDEX)
    else:
        raise InvalidCheckpointError(
            f"{root}: no weights found; expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}"
        )
    if not tensors:
        raise InvalidCheckpointError(f"{root}: the checkpoint holds no tensors")
    return Checkpoint(root, config, fmt, files, tensors, bin_cache)


# --- names --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NameMap:
    """How a task model's names (an adapter's) map to a checkpoint's stored names.

    ``mode`` is ``"exact"``, ``"strip"`` (the adapter has a leading ``prefix.`` the file
    lacks) or ``"add"`` (the file has a leading ``prefix.`` the adapter lacks).
    """

    mode: Literal["exact", "strip", "add"]
    prefix: str = ""

    def apply(self, name: str) -> str:
        if self.mode == "strip":
            return name[len(self.prefix) + 1 :] if name.startswith(self.prefix + ".") else name
        if self.mode == "add":
            return f"{self.prefix}.{name}"
        return name


def infer_name_map(names: Iterable[str], wanted: Sequence[str], *, source: str) -> NameMap:
    """Choose how ``wanted`` (task-model tensor names) map onto the stored ``names``.

    Exact names first; else strip or add one leading component. Every candidate is
    scored by how many wanted names it resolves; a tie between different non-zero
    candidates that resolve different tensors is ambiguous and refused.
    """
    stored = set(names)
    if not wanted:
        return NameMap("exact")
    prefixes = {n.split(".", 1)[0] for n in stored if "." in n}
    candidates = [NameMap("exact")]
    for prefix in sorted({w.split(".", 1)[0] for w in wanted if "." in w}):
        candidates.append(NameMap("strip", prefix))
    for prefix in sorted(prefixes):
        candidates.append(NameMap("add", prefix))
    scored = [(sum(c.apply(w) in stored for w in wanted), c) for c in candidates]
    best = max(score for score, _ in scored)
    if best == 0:
        return NameMap("exact")
    winners = [c for score, c in scored if score == best]
    if len(winners) > 1 and winners[0].mode != "exact":
        options = ", ".join(f"{c.mode} {c.prefix!r}" for c in winners)
        raise IncompatibleError(
            f"{source}: adapter module names map onto the base in {len(winners)} ways ({options}); "
            f"e.g. {wanted[0]!r} — the base's names are ambiguous"
        )
    return winners[0]


# --- shard planning -----------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*\Z", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(value: int | str) -> int:
    """Parse ``"5GB"`` (decimal, like huggingface_hub), ``"512MiB"`` or a byte count."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"size must be positive, got {value}")
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"cannot parse size {value!r}; expected e.g. 5GB, 500MB, 2GiB or a byte count")
    number, unit = match.groups()
    size = int(float(number) * _UNITS[(unit or "B").lower()])
    if size <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return size


def plan_shards(sizes: Sequence[tuple[str, int]], max_shard_size: int) -> list[list[str]]:
    """Group tensors, in order, into shards of at most ``max_shard_size`` bytes.

    Like huggingface_hub's splitter: a tensor larger than the limit sits alone in its shard.
    """
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    for name, size in sizes:
        if size > max_shard_size:
            if current:
                shards.append(current)
            shards.append([name])
            current, current_size = [], 0
            continue
        if current and current_size + size > max_shard_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current:
        shards.append(current)
    return shards


def shard_file_names(count: int) -> list[str]:
    """``model.safetensors`` for one shard, else ``model-0000k-of-0000N.safetensors``."""
    if count == 1:
        return [SAFE_SINGLE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def tensor_nbytes(dtype: str, shape: Sequence[int]) -> int:
    size = DTYPE_SIZES[dtype]
    for dim in shape:
        size *= dim
    return size
