"""Resolve adapters onto a base checkpoint: which output tensor gets which operations.

Planning reads headers only (and, for full replacements, compares bytes with the base to
recognise copies of unchanged tensors). It refuses everything that cannot be merged, before
a byte is written: names that resolve to nothing, shapes that disagree, refused variants,
weights that cannot apply, conflicting adapters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mergetools.adapter import Adapter, LoraModule, TensorMeta, TrainableTokens
from mergetools.checkpoint import OUTPUT_EMBEDDING_NAMES, Checkpoint, NameMap, infer_name_map
from mergetools.errors import IncompatibleError, InvalidInputError, UnsupportedAdapterError
from mergetools.safetensors_io import FLOAT_DTYPES

logger = logging.getLogger(__name__)

DTYPE_CHOICES = {"auto": None, "bfloat16": "BF16", "float16": "F16", "float32": "F32"}
CONFIG_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


@dataclass(frozen=True, slots=True)
class DeltaOp:
    """Add ``weight * scale * delta`` of one LoRA module to an output tensor."""

    adapter: int
    module: LoraModule
    weight: float
    layout: Literal["rows", "transposed", "conv"]
    """``rows``: W (out, in) += B @ A. ``transposed``: W (in, out) += (B @ A).T. ``conv``."""

    @property
    def scale(self) -> float:
        return self.weight * self.module.scale


@dataclass(frozen=True, slots=True)
class BiasOp:
    """Add ``weight * scale * lora_B.bias`` to a bias tensor."""

    adapter: int
    tensor: TensorMeta
    scale: float


@dataclass
class OutputTensor:
    """One tensor of the merged checkpoint and how to produce it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    source: str | None
    """Base tensor whose values start the computation (None when replaced or added)."""
    replacement: tuple[int, TensorMeta] | None = None
    deltas: list[DeltaOp] = field(default_factory=list)
    dora: DeltaOp | None = None
    bias_adds: list[BiasOp] = field(default_factory=list)
    token_rows: list[tuple[int, TrainableTokens]] = field(default_factory=list)

    @property
    def touched(self) -> bool:
        return bool(self.replacement or self.deltas or self.dora or self.bias_adds or self.token_rows)


@dataclass
class MergePlan:
    """Everything the executor needs: output tensors in order and config changes."""

    checkpoint: Checkpoint
    adapters: list[Adapter]
    weights: list[float]
    outputs: list[OutputTensor]
    config_updates: dict[str, object]
    name_maps: list[NameMap]
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        from mergetools.checkpoint import tensor_nbytes

        return sum(tensor_nbytes(o.dtype, o.shape) for o in self.outputs)


def _out_dtype(dtype: str, target: str | None) -> str:
    return target if target is not None and dtype in FLOAT_DTYPES else dtype


def _resolve(name: str, name_map: NameMap, stored: dict[str, object]) -> str | None:
    mapped = name_map.apply(name)
    if mapped in stored:
        return mapped
    if name in stored:
        return name
    return None


def plan_merge(
    checkpoint: Checkpoint,
    adapters: Sequence[Adapter],
    *,
    weights: Sequence[float] | None = None,
    dtype: str = "auto",
) -> MergePlan:
    """Map every adapter tensor onto the base and return the merge plan, or raise."""
    if not adapters:
        raise InvalidInputError("no adapters given; pass at least one --adapter")
    if dtype not in DTYPE_CHOICES:
        raise InvalidInputError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")
    target_dtype = DTYPE_CHOICES[dtype]
    weights = [1.0] * len(adapters) if weights is None else [float(w) for w in weights]
    if len(weights) != len(adapters):
        raise InvalidInputError(f"{len(weights)} weights for {len(adapters)} adapters; give one weight per adapter")

    base = checkpoint.tensors
    outputs: dict[str, OutputTensor] = {
        name: OutputTensor(name, t.shape, _out_dtype(t.dtype, target_dtype), name) for name, t in base.items()
    }
    added: list[str] = []
    tied_virtual: OutputTensor | None = None
    embed_name = checkpoint.input_embedding_name()
    lm_head_absent = not any(n in base for n in OUTPUT_EMBEDDING_NAMES)
    tied = checkpoint.tie_word_embeddings and lm_head_absent and embed_name is not None
    name_maps: list[NameMap] = []
    untie_reasons: list[str] = []
    notes: list[str] = []

    def lookup(name: str, name_map: NameMap) -> OutputTensor | None:
        nonlocal tied_virtual
        found = _resolve(name, name_map, outputs)  # type: ignore[arg-type]
        if found is not None:
            return outputs[found]
        if tied and name in OUTPUT_EMBEDDING_NAMES and embed_name is not None:
            if tied_virtual is None:
                embed = base[embed_name]
                tied_virtual = OutputTensor(name, embed.shape, _out_dtype(embed.dtype, target_dtype), embed_name)
            return tied_virtual
        return None

    for index, (adapter, weight) in enumerate(zip(adapters, weights, strict=True)):
        source = str(adapter.path)
        wanted = [m.weight_name for m in adapter.modules.values()] or [r.target for r in adapter.replacements]
        wanted = [w for w in wanted if w not in OUTPUT_EMBEDDING_NAMES] or wanted
        name_map = infer_name_map(base, wanted, source=source)
        name_maps.append(name_map)

        for rep in adapter.replacements:
            out = lookup(rep.target, name_map)
            where = f"adapter {source} tensor {rep.tensor.key!r}"
            if out is None:
                if rep.tensor.dtype not in FLOAT_DTYPES:
                    raise IncompatibleError(f"{where}: the base has no tensor {rep.target!r} to replace")
                new_name = rep.target if name_map.mode != "add" else name_map.apply(rep.target)
                if new_name in outputs:
                    raise IncompatibleError(f"{where}: {new_name!r} is added twice")
                dtype_for_new = _out_dtype(rep.tensor.dtype, target_dtype or _dominant_dtype(checkpoint))
                out = OutputTensor(new_name, rep.tensor.shape, dtype_for_new, None)
                outputs[new_name] = out
                added.append(new_name)
            elif _repeats_base(out, rep.tensor, adapter, checkpoint):
                # PEFT saves copies of unchanged base tensors (an embedding's base_layer when
                # the embedding is targeted): they change nothing, so they take no part.
                logger.debug("%s: %s repeats the base tensor; ignored", out.name, rep.tensor.key)
                continue
            else:
                if out.replacement is not None and out.replacement[0] != index:
                    raise IncompatibleError(
                        f"{where}: {out.name!r} is also replaced by adapter {adapters[out.replacement[0]].path}; "
                        "two adapters cannot both replace one tensor"
                    )
                if rep.tensor.shape != out.shape:
                    vocab_dim_only = (
                        len(rep.tensor.shape) == len(out.shape)
                        and rep.tensor.shape[1:] == out.shape[1:]
                        and (out.source in (embed_name, *OUTPUT_EMBEDDING_NAMES) or out is tied_virtual)
                    )
                    if not vocab_dim_only:
                        raise IncompatibleError(
                            f"{where}: replaces {out.name!r} of shape {out.shape} with shape {rep.tensor.shape}; "
                            "was it trained on another base?"
                        )
                    out.shape = rep.tensor.shape
                    notes.append(f"{out.name}: vocabulary resized to {rep.tensor.shape[0]}")
                if out is tied_virtual:
                    untie_reasons.append(f"{rep.target} replaced")
            out.replacement = (index, rep.tensor)

        for module in adapter.modules.values():
            _plan_module(module, index, weight, adapter, name_map, lookup, source)
            if tied and module.weight_name in OUTPUT_EMBEDDING_NAMES or tied and name_map.apply(module.weight_name) == embed_name:
                untie_reasons.append(f"LoRA on {module.path}")

        for tokens in adapter.trainable_tokens:
            out = lookup(tokens.target, name_map)
            where = f"adapter {source} trainable tokens of {tokens.target!r}"
            if out is None:
                raise IncompatibleError(f"{where}: the base has no tensor {tokens.target!r}")
            if out is tied_virtual and not untie_reasons:
                continue  # PEFT ties the lm_head delta to the embedding's; rows land there
            if len(out.shape) != 2 or tokens.tensor.shape[1] != out.shape[1]:
                raise IncompatibleError(f"{where}: rows of {tokens.tensor.shape} do not fit {out.name!r} {out.shape}")
            if max(tokens.indices, default=-1) >= out.shape[0]:
                raise IncompatibleError(
                    f"{where}: token index {max(tokens.indices)} is beyond the vocabulary ({out.shape[0]} rows)"
                )
            out.token_rows.append((index, tokens))

    if tied and untie_reasons and tied_virtual is None and embed_name is not None:
        # LoRA on the input embedding only: the unmerged model's head still reads the
        # original embedding, so it gets its own copy.
        embed = base[embed_name]
        tied_virtual = OutputTensor(
            OUTPUT_EMBEDDING_NAMES[0], embed.shape, _out_dtype(embed.dtype, target_dtype), embed_name
        )
    if tied_virtual is not None and untie_reasons and embed_name is not None:
        embed_out = outputs[embed_name]
        if tied_virtual.replacement is None and embed_out.replacement is not None:
            # The unmerged model's lm_head is the (replaced) embedding before any delta.
            tied_virtual.replacement = embed_out.replacement
            tied_virtual.shape = embed_out.shape

    if weights:
        for out in [*outputs.values(), *([tied_virtual] if tied_virtual else [])]:
            replaced_by = out.replacement[0] if out.replacement else None
            for who, what in ([(replaced_by, "a full replacement")] if replaced_by is not None else []) + [
                (i, "trainable tokens") for i, _ in out.token_rows
            ]:
                if weights[who] != 1.0:
                    raise UnsupportedAdapterError(
                        f"adapter {adapters[who].path}: weight {weights[who]} cannot apply to {what} of "
                        f"{out.name!r}; full replacements replace, they cannot be weighted — use weight 1"
                    )

    config_updates: dict[str, object] = {}
    ordered = list(outputs.values())
    if tied_virtual is not None and untie_reasons:
        ordered.append(tied_virtual)
        config_updates["tie_word_embeddings"] = False
        notes.append("untied lm_head from the input embedding (" + "; ".join(sorted(set(untie_reasons))) + ")")
    if embed_name is not None:
        vocab = outputs[embed_name].shape[0]
        if checkpoint.vocab_size is not None and vocab != checkpoint.vocab_size:
            config_updates["vocab_size"] = vocab
    if target_dtype is not None:
        config_updates["dtype"] = CONFIG_DTYPE_NAMES[target_dtype]
    for name in added:
        _note_added_head(name, outputs[name], adapters, config_updates, checkpoint)
    return MergePlan(checkpoint, list(adapters), list(weights), ordered, config_updates, name_maps, notes)


def _plan_module(
    module: LoraModule,
    index: int,
    weight: float,
    adapter: Adapter,
    name_map: NameMap,
    lookup: object,
    source: str,
) -> None:
    assert callable(lookup)
    where = f"adapter {source} module {module.path!r}"
    out: OutputTensor | None = lookup(module.weight_name, name_map)
    if out is None:
        raise IncompatibleError(
            f"{where}: the base has no tensor {name_map.apply(module.weight_name)!r}; "
            "was it trained on another architecture?"
        )
    expected = module.delta_shape
    if module.kind == "embedding":
        # The vocabulary dimension follows the (possibly resized) output tensor.
        if tuple(out.shape) != expected:
            raise IncompatibleError(
                f"{where}: lora_embedding_A {module.lora_a.shape} and lora_embedding_B {module.lora_b.shape} give a "
                f"delta of {expected} but the base embedding {out.name!r} is {out.shape} — vocabulary or hidden "
                "size differs; was it trained on another base?"
            )
    elif tuple(out.shape) != expected:
        if module.kind == "linear":
            out_dim, in_dim = (expected[1], expected[0]) if module.fan_in_fan_out else expected
            raise IncompatibleError(
                f"{where}: lora_A is {module.lora_a.shape} and lora_B is {module.lora_b.shape} (in_features {in_dim}, "
                f"out_features {out_dim}) but the base weight {out.name!r} is {out.shape}; was it trained on another base?"
            )
        raise IncompatibleError(
            f"{where}: the delta is {expected} but the base weight {out.name!r} is {out.shape}; "
            "conv kernel or channels differ (grouped convolutions are not supported)"
        )
    if out.dtype not in FLOAT_DTYPES:
        raise IncompatibleError(f"{where}: the base weight {out.name!r} has dtype {out.dtype}, not a float")
    layout: Literal["rows", "transposed", "conv"]
    if module.kind == "conv":
        layout = "conv"
    elif module.kind == "embedding" or module.fan_in_fan_out:
        layout = "transposed"
    else:
        layout = "rows"
    op = DeltaOp(index, module, weight, layout)
    if module.magnitude is not None:
        if weight != 1.0:
            raise UnsupportedAdapterError(
                f"{where}: weight {weight} cannot apply to a DoRA module (its magnitude rescales the whole "
                "weight); use weight 1"
            )
        if out.dora is not None or out.deltas:
            raise UnsupportedAdapterError(
                f"{where}: {out.name!r} also gets another adapter's delta; DoRA merged with other adapters "
                "on one layer depends on the order, merge them one at a time"
            )
        want = out.shape[1] if layout == "transposed" else out.shape[0]
        if module.magnitude.shape not in ((want,), (1, want, *([1] * (len(out.shape) - 2)))):
            raise IncompatibleError(
                f"{where}: lora_magnitude_vector is {module.magnitude.shape}, expected {want} entries"
            )
        out.dora = op
    else:
        if out.dora is not None:
            raise UnsupportedAdapterError(
                f"{where}: {out.name!r} already gets a DoRA adapter; DoRA merged with other adapters on one "
                "layer depends on the order, merge them one at a time"
            )
        out.deltas.append(op)
    if module.bias is not None:
        bias_out: OutputTensor | None = lookup(module.bias_name, name_map)
        if bias_out is None:
            raise UnsupportedAdapterError(
                f"{where}: lora_bias=True but the base layer has no bias ({name_map.apply(module.bias_name)!r}); "
                "this adapter cannot be merged"
            )
        if bias_out.shape != module.bias.shape:
            raise IncompatibleError(f"{where}: lora_B.bias is {module.bias.shape} but the base bias is {bias_out.shape}")
        bias_out.bias_adds.append(BiasOp(index, module.bias, weight * module.scale))


def _repeats_base(out: OutputTensor, meta: TensorMeta, adapter: Adapter, checkpoint: Checkpoint) -> bool:
    """Whether a replacement only repeats the base tensor it replaces (read and compared)."""
    if out.source is None or checkpoint.tensors[out.source].shape != meta.shape:
        return False
    if meta.dtype not in FLOAT_DTYPES:
        return False
    base_value = checkpoint.load(out.source)
    return bool((adapter.load(meta).to(base_value.dtype) == base_value).all())


def _dominant_dtype(checkpoint: Checkpoint) -> str:
    counts: dict[str, int] = {}
    for t in checkpoint.tensors.values():
        if t.dtype in FLOAT_DTYPES:
            counts[t.dtype] = counts.get(t.dtype, 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else "F32"


_TASK_SUFFIXES = {
    "SEQ_CLS": "ForSequenceClassification",
    "TOKEN_CLS": "ForTokenClassification",
    "QUESTION_ANS": "ForQuestionAnswering",
    "CAUSAL_LM": "ForCausalLM",
}


def _note_added_head(
    name: str, out: OutputTensor, adapters: Sequence[Adapter], updates: dict[str, object], checkpoint: Checkpoint
) -> None:
    """An added head (e.g. ``classifier.weight``) changes the architecture and label count."""
    adapter = next(a for a in adapters if any(r.tensor.shape == out.shape for r in a.replacements))
    task = str(adapter.config.get("task_type") or "")
    mapping = adapter.config.get("auto_mapping")
    arch = mapping.get("base_model_class") if isinstance(mapping, dict) else None
    if not arch:
        base_arch = checkpoint.architectures[0] if checkpoint.architectures else ""
        stem = base_arch
        for suffix in ("ForCausalLM", "ForMaskedLM", "ForPreTraining", "Model", "LMHeadModel"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        if stem and task in _TASK_SUFFIXES:
            arch = stem + _TASK_SUFFIXES[task]
    if arch:
        updates["architectures"] = [arch]
    if name.endswith(".weight") and len(out.shape) == 2 and task in ("SEQ_CLS", "TOKEN_CLS"):
        labels = out.shape[0]
        updates["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
        updates["label2id"] = {f"LABEL_{i}": i for i in range(labels)}


def adapter_files(adapter: Adapter) -> list[Path]:
    """The files of an adapter that identify it: config and weights."""
    return [adapter.path / "adapter_config.json", adapter.weights_file]
