"""Parse a PEFT LoRA adapter folder into typed per-module records (header only).

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (legacy:
``adapter_model.bin``, read only with ``weights_only=True``). Keys look like
``base_model.model.<module path>.<suffix>``; the module path is relative to the task model
the adapter was trained on. The tensors present are the truth; the config explains them,
and a config that disagrees with the tensors is an error.

Parsing reads the config and the safetensors header; tensor data is read on demand with
:meth:`Adapter.load`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mergetools.checkpoint import load_pickle_state
from mergetools.config_check import config_problems
from mergetools.errors import (
    InvalidAdapterError,
    UnsupportedAdapterError,
)
from mergetools.files import read_json_object
from mergetools.folder import Folder
from mergetools.safetensors_io import TensorInfo, read_header, read_tensor_from

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
SAFE_WEIGHTS = "adapter_model.safetensors"
BIN_WEIGHTS = "adapter_model.bin"
KEY_PREFIX = "base_model.model."

ModuleKind = Literal["linear", "embedding", "conv"]

_SUFFIXES = {
    ".lora_A.weight": "lora_a",
    ".lora_B.weight": "lora_b",
    ".lora_B.bias": "lora_bias",
    ".lora_embedding_A": "emb_a",
    ".lora_embedding_B": "emb_b",
    ".lora_magnitude_vector": "magnitude",
    ".lora_magnitude_vector.weight": "magnitude",
    ".token_adapter.trainable_tokens_delta": "tokens",
}

_UNMERGEABLE_INIT = ("pissa", "olora", "corda", "loftq")
_UNSUPPORTED_VARIANT_KEYS = {
    "alora_invocation_tokens": "aLoRA (activated LoRA) applies only after its invocation tokens",
    "target_parameters": "LoRA on parameters (fused MoE experts) targets tensors loradex does not fold",
    "layer_replication": "layer replication changes the model's structure",
    "arrow_config": "Arrow routing mixes adapters per token at run time",
    "use_qalora": "QALoRA is trained against a quantized base",
    "use_bdlora": "BD-LoRA uses block-diagonal factors",
    "kasa_config": "this LoRA variant is not supported",
    "monteclora_config": "this LoRA variant is not supported",
    "velora_config": "this LoRA variant is not supported",
    "lora_ga_config": "LoRA-GA initialisation modifies the base weights",
}


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """Dtype, shape and (for safetensors) byte range of one adapter tensor."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    info: TensorInfo | None


@dataclass(frozen=True, slots=True)
class LoraModule:
    """One LoRA-adapted module: its factors and how they scale.

    Shapes:
        linear:    lora_a (r, in)      lora_b (out, r)   delta (out, in), stored (in, out) when fan_in_fan_out
        embedding: lora_a (r, vocab)   lora_b (dim, r)   delta (B @ A).T: (vocab, dim)
        conv:      lora_a (r, in, *k)  lora_b (out, r, 1, ...)  delta (out, in, *k)
        magnitude: (out,) linear, (dim,) embedding, (1, out, 1, ...) conv   (DoRA only)
    """

    path: str
    kind: ModuleKind
    rank: int
    alpha: float
    scale: float
    fan_in_fan_out: bool
    lora_a: TensorMeta
    lora_b: TensorMeta
    magnitude: TensorMeta | None = None
    bias: TensorMeta | None = None

    @property
    def weight_name(self) -> str:
        return f"{self.path}.weight"

    @property
    def bias_name(self) -> str:
        return f"{self.path}.bias"

    @property
    def delta_shape(self) -> tuple[int, ...]:
        """The shape of the base weight this module's delta is added to."""
        a, b = self.lora_a.shape, self.lora_b.shape
        if self.kind == "embedding":
            return (a[1], b[0])
        if self.kind == "conv":
            return (b[0], *a[1:])
        return (a[1], b[0]) if self.fan_in_fan_out else (b[0], a[1])


@dataclass(frozen=True, slots=True)
class Replacement:
    """A full tensor that replaces (or adds) the base tensor ``target``."""

    target: str
    tensor: TensorMeta
    reason: str


@dataclass(frozen=True, slots=True)
class TrainableTokens:
    """Rows ``indices`` of embedding ``target`` replaced by ``tensor`` (n, dim)."""

    target: str
    indices: tuple[int, ...]
    tensor: TensorMeta


@dataclass
class Adapter:
    """A parsed PEFT LoRA adapter folder."""

    path: Path
    config: dict[str, object]
    weights_file: Path
    format: Literal["safetensors", "bin"]
    tensors: dict[str, TensorMeta]
    modules: dict[str, LoraModule]
    replacements: list[Replacement]
    trainable_tokens: list[TrainableTokens]
    _bin_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def use_dora(self) -> bool:
        return any(m.magnitude is not None for m in self.modules.values())

    @property
    def use_rslora(self) -> bool:
        return bool(self.config.get("use_rslora"))

    def load(self, meta: TensorMeta) -> torch.Tensor:
        """Read one adapter tensor into a fresh CPU tensor."""
        if meta.info is not None:
            return read_tensor_from(self.weights_file, meta.info)
        if self._bin_state is None:
            self._bin_state = load_pickle_state(self.weights_file)
        return self._bin_state[meta.key]


def adapter_folder(folder: Path) -> Folder:
    """The adapter folder, read safely (links must stay inside it, no special files)."""
    return Folder.open(folder, error=InvalidAdapterError)


def read_adapter_config(folder: Path | Folder) -> dict[str, object]:
    """Read ``adapter_config.json`` (size-limited, a JSON object; field types are checked by
    :func:`mergetools.config_check.config_problems`)."""
    safe = folder if isinstance(folder, Folder) else adapter_folder(folder)
    safe.file(CONFIG_FILE)  # refuses a link leaving the folder or a special file
    return read_json_object(
        safe.path / CONFIG_FILE,
        what=CONFIG_FILE,
        kind="adapter_config",
        missing=InvalidAdapterError,
        invalid=InvalidAdapterError,
        hint="; is this a PEFT adapter folder?",
    )


def validate_adapter_config(config: Mapping[str, object], *, source: str) -> None:
    """Raise :class:`InvalidAdapterError` (one line) for the first field PEFT's LoraConfig refuses."""
    problems = config_problems(config)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise InvalidAdapterError(f"{source}: {CONFIG_FILE}: {problems[0].message}{more}")


def refuse_unmergeable(config: Mapping[str, object], *, source: str) -> None:
    """Raise :class:`UnsupportedAdapterError` for variants that cannot fold onto the original base."""
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise UnsupportedAdapterError(
            f"{source}: peft_type is {config.get('peft_type')!r}; only LORA adapters can be merged"
        )
    for key, why in _UNSUPPORTED_VARIANT_KEYS.items():
        if config.get(key):
            raise UnsupportedAdapterError(f"{source}: {key} is set — {why}; this adapter cannot be merged")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_UNMERGEABLE_INIT):
        raise UnsupportedAdapterError(
            f"{source}: init_lora_weights={init!r} assumes a modified base; convert it to a plain LoRA "
            "(PEFT save_pretrained with path_initial_model_for_weight_conversion) before merging"
        )
    if config.get("loftq_config"):
        raise UnsupportedAdapterError(
            f"{source}: loftq_config is set — LoftQ adapters assume a quantized, modified base"
        )


def pattern_value(patterns: object, module: str, default: float, *, field_name: str, source: str) -> float:
    """The value of ``rank_pattern``/``alpha_pattern`` for ``module`` (PEFT's rule: first key matching wins)."""
    if not patterns:
        return default
    if not isinstance(patterns, dict):
        raise InvalidAdapterError(f"{source}: {field_name} must be an object, got {type(patterns).__name__}")
    for key, value in patterns.items():
        try:
            matched = re.match(rf"(.*\.)?({key})$", module)
        except re.error as exc:
            raise InvalidAdapterError(f"{source}: {field_name} key {key!r} is not a valid regex ({exc})") from None
        if matched:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise InvalidAdapterError(f"{source}: {field_name}[{key!r}] must be a number, got {value!r}")
            return float(value)
    return default


def pattern_keys_unused(config: Mapping[str, object], modules: list[str]) -> dict[str, list[str]]:
    """Keys of ``rank_pattern`` / ``alpha_pattern`` that match none of ``modules``."""
    unused: dict[str, list[str]] = {}
    for field_name in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(field_name) or {}
        if not isinstance(patterns, dict):
            continue
        for key in patterns:
            try:
                if not any(re.match(rf"(.*\.)?({key})$", m) for m in modules):
                    unused.setdefault(field_name, []).append(key)
            except re.error:
                unused.setdefault(field_name, []).append(key)
    return unused


def _number(config: Mapping[str, object], key: str, default: float, *, source: str) -> float:
    value = config.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidAdapterError(f"{source}: {key} must be a finite number, got {value!r}")
    return float(value)


def _read_tensor_table(folder: Folder) -> tuple[Path, Literal["safetensors", "bin"], dict[str, TensorMeta], dict[str, torch.Tensor] | None]:
    safe, legacy = folder.file(SAFE_WEIGHTS), folder.file(BIN_WEIGHTS)
    if safe is not None:
        header = read_header(safe)
        table = {k: TensorMeta(k, i.dtype, i.shape, i) for k, i in header.tensors.items()}
        return safe, "safetensors", table, None
    if legacy is not None:
        from mergetools.safetensors_io import dtype_name

        state = load_pickle_state(legacy)
        table = {k: TensorMeta(k, dtype_name(t.dtype), tuple(t.shape), None) for k, t in state.items()}
        return legacy, "bin", table, state
    raise InvalidAdapterError(f"{folder.path}: no weights found; expected {SAFE_WEIGHTS} (or legacy {BIN_WEIGHTS})")


def load_adapter(path: str | os.PathLike[str], *, check_mergeable: bool = True) -> Adapter:
    """Parse a PEFT LoRA adapter folder (config and header; no tensor data for safetensors).

    With ``check_mergeable`` (the default) variants that cannot be merged onto the original
    base are refused with :class:`UnsupportedAdapterError`.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InvalidAdapterError(f"{folder}: adapter folder not found")
    source = str(folder)
    safe = adapter_folder(folder)
    config = read_adapter_config(safe)
    validate_adapter_config(config, source=source)
    if check_mergeable:
        refuse_unmergeable(config, source=source)
    weights_file, fmt, table, bin_state = _read_tensor_table(safe)
    if not table:
        raise InvalidAdapterError(f"{weights_file}: the adapter holds no tensors")

    parts: dict[str, dict[str, TensorMeta]] = {}
    replacements: list[Replacement] = []
    tokens_meta: dict[str, TensorMeta] = {}
    for key, meta in table.items():
        if not key.startswith(KEY_PREFIX):
            raise InvalidAdapterError(
                f"{weights_file}: tensor {key!r} does not start with {KEY_PREFIX!r}; not a PEFT adapter file"
            )
        name = key[len(KEY_PREFIX) :]
        for suffix, role in _SUFFIXES.items():
            if name.endswith(suffix):
                module = name[: -len(suffix)]
                if role == "tokens":
                    tokens_meta[module] = meta
                else:
                    parts.setdefault(module, {})[role] = meta
                break
        else:
            target = name.replace(".base_layer.", ".")
            reason = "modules_to_save" if ".modules_to_save." in name else "full tensor"
            target = re.sub(r"\.modules_to_save\.[^.]+\.", ".", target)
            replacements.append(Replacement(target, meta, reason))

    seen_targets: dict[str, str] = {}
    for rep in replacements:
        if rep.target in seen_targets:
            raise InvalidAdapterError(
                f"{weights_file}: tensors {seen_targets[rep.target]!r} and {rep.tensor.key!r} both replace {rep.target!r}"
            )
        seen_targets[rep.target] = rep.tensor.key

    rank_default = _number(config, "r", 8, source=source)
    alpha_default = _number(config, "lora_alpha", 8, source=source)
    use_rslora = bool(config.get("use_rslora"))
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    modules: dict[str, LoraModule] = {}
    for module, roles in sorted(parts.items()):
        where = f"{source}: module {module!r}"
        if "emb_a" in roles or "emb_b" in roles:
            kind: ModuleKind = "embedding"
            a, b = roles.get("emb_a"), roles.get("emb_b")
        else:
            a, b = roles.get("lora_a"), roles.get("lora_b")
            kind = "conv" if a is not None and len(a.shape) > 2 else "linear"
        if a is None or b is None:
            have = ", ".join(sorted(roles))
            raise InvalidAdapterError(f"{where}: has {have} but lacks its {'lora_A' if a is None else 'lora_B'} tensor")
        rank = a.shape[0] if a.shape else 0
        if kind == "linear" and (len(a.shape) != 2 or len(b.shape) != 2):
            raise InvalidAdapterError(f"{where}: lora_A {a.shape} and lora_B {b.shape} must both be 2-D")
        if kind == "embedding" and (len(a.shape) != 2 or len(b.shape) != 2):
            raise InvalidAdapterError(f"{where}: lora_embedding_A {a.shape} and lora_embedding_B {b.shape} must be 2-D")
        if kind == "conv" and (len(b.shape) != len(a.shape) or any(d != 1 for d in b.shape[2:])):
            raise InvalidAdapterError(
                f"{where}: conv lora_B {b.shape} must be (out, r, 1, ...) matching lora_A {a.shape}"
            )
        b_rank = b.shape[1] if len(b.shape) > 1 else -1
        if rank == 0 or b_rank != rank:
            raise InvalidAdapterError(
                f"{where}: lora_A {a.shape} and lora_B {b.shape} disagree on the rank ({rank} vs {b_rank})"
            )
        for role, meta in (("lora_A", a), ("lora_B", b)):
            if meta.dtype not in ("F32", "F16", "BF16", "F64"):
                raise InvalidAdapterError(f"{where}: {role} has dtype {meta.dtype}, expected a float dtype")
        config_rank = pattern_value(config.get("rank_pattern"), module, rank_default, field_name="rank_pattern", source=source)
        if int(config_rank) != rank:
            raise InvalidAdapterError(
                f"{where}: the config says r={int(config_rank)} but lora_A has rank {rank} "
                f"(shape {a.shape}); fix r or rank_pattern in {CONFIG_FILE}"
            )
        alpha = pattern_value(config.get("alpha_pattern"), module, alpha_default, field_name="alpha_pattern", source=source)
        scale = alpha / math.sqrt(rank) if use_rslora else alpha / rank
        modules[module] = LoraModule(
            path=module,
            kind=kind,
            rank=rank,
            alpha=alpha,
            scale=scale,
            fan_in_fan_out=fan_in_fan_out and kind == "linear",
            lora_a=a,
            lora_b=b,
            magnitude=roles.get("magnitude"),
            bias=roles.get("lora_bias"),
        )
        if roles.get("lora_bias") is not None and kind == "embedding":
            raise InvalidAdapterError(f"{where}: lora_bias is not defined for embeddings")

    trainable: list[TrainableTokens] = []
    if tokens_meta:
        spec = config.get("trainable_token_indices")
        for module, meta in sorted(tokens_meta.items()):
            indices = _token_indices(spec, module, source=source)
            if len(meta.shape) != 2 or meta.shape[0] != len(indices):
                raise InvalidAdapterError(
                    f"{source}: module {module!r}: trainable_tokens_delta is {meta.shape} but "
                    f"trainable_token_indices lists {len(indices)} tokens"
                )
            trainable.append(TrainableTokens(f"{module}.weight", indices, meta))

    adapter = Adapter(folder, config, weights_file, fmt, table, modules, replacements, trainable, bin_state)
    logger.debug("parsed adapter %s: %d modules, %d replacements", folder, len(modules), len(replacements))
    return adapter


def _token_indices(spec: object, module: str, *, source: str) -> tuple[int, ...]:
    if isinstance(spec, list):
        indices = spec
    elif isinstance(spec, dict):
        matches = [v for k, v in spec.items() if module == k or module.endswith("." + k)]
        if len(matches) != 1:
            raise InvalidAdapterError(
                f"{source}: trainable_token_indices {spec!r} names no single entry for module {module!r}"
            )
        indices = matches[0]
    else:
        raise InvalidAdapterError(
            f"{source}: module {module!r} carries trainable tokens but trainable_token_indices is {spec!r}"
        )
    if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
        raise InvalidAdapterError(f"{source}: trainable_token_indices for {module!r} must be a list of token ids")
    return tuple(indices)
