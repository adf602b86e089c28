"""Resolve adapters onto a base checkpoint: which output tensor gets which operations.

Planning reads headers only (and, for full replacements, compares bytes with the base to
recognise copies of unchanged tensors). It refuses everything that cannot be merged, before
a byte is written: names that resolve to nothing, shapes that disagree, refused variants,
weights that cannot apply, conflicting adapters.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mergetools.adapter import CONFIG_FILE as ADAPTER_CONFIG
from mergetools.adapter import Adapter, LoraModule, TensorMeta, TrainableTokens
from mergetools.checkpoint import OUTPUT_EMBEDDING_NAMES, Checkpoint, NameMap, infer_name_map
from mergetools.errors import IncompatibleError, InvalidInputError, UnsupportedAdapterError
from mergetools.files import sha256_file
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
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        from mergetools.checkpoint import tensor_nbytes

        return sum(tensor_nbytes(o.dtype, o.shape) for o in self.outputs)


def _out_dtype(dtype: str, target: str | None) -> str:
    return target if target is not None and dtype in FLOAT_DTYPES else dtype


def adapter_name_map(adapter: Adapter, names: Iterable[str]) -> NameMap:
    """How ``adapter``'s tensor names map onto a base with tensors ``names``.

    Inferred from the weights the LoRA modules target (else the replaced tensors), the output
    embedding left out when anything else is targeted (a tied base may not store it): exact,
    else adding or stripping one leading prefix component, ambiguity refused
    (:func:`mergetools.checkpoint.infer_name_map`). The planner and the check both call this.
    """
    wanted = [m.weight_name for m in adapter.modules.values()] or [r.target for r in adapter.replacements]
    wanted = [w for w in wanted if w not in OUTPUT_EMBEDDING_NAMES] or wanted
    return infer_name_map(names, wanted, source=str(adapter.path))


def resolve_name(name: str, name_map: NameMap, stored: Container[str]) -> str | None:
    """The base tensor an adapter's ``name`` lands on: the mapped name, else the name as is."""
    mapped = name_map.apply(name)
    if mapped in stored:
        return mapped
    if name in stored:
        return name
    return None


def lm_head_is_virtual(*, tie_word_embeddings: bool, embed_name: str | None, stored: Container[str]) -> bool:
    """Whether the output embedding is the input embedding's tensor, not stored: the config ties
    them, the input embedding is known, and no ``lm_head`` is in the file. An adapter's
    ``lm_head`` then lands on the embedding, and merging LoRA into it unties the two."""
    return tie_word_embeddings and embed_name is not None and not any(n in stored for n in OUTPUT_EMBEDDING_NAMES)


FLOAT32_MAX = 3.4028234663852886e38


def fit_layout(module: LoraModule, base_shape: tuple[int, ...]) -> Literal["rows", "transposed", "conv"] | None:
    """How a module's delta lies in a base weight of ``base_shape``, or None if it does not fit.

    PEFT decides ``fan_in_fan_out`` per layer (GPT-2's Conv1D stores its weight (in, out)), so
    a linear module fits either layout; the config's flag only decides a square weight.
    """
    if module.kind == "conv":
        return "conv" if base_shape == module.delta_shape else None
    if module.kind == "embedding":
        return "transposed" if base_shape == module.delta_shape else None
    rank_rows = (module.lora_b.shape[0], module.lora_a.shape[1])  # (out, in)
    transposed = (module.lora_a.shape[1], module.lora_b.shape[0])  # (in, out)
    fits = [layout for layout, shape in (("rows", rank_rows), ("transposed", transposed)) if shape == base_shape]
    if len(fits) == 2:
        return "transposed" if module.fan_in_fan_out else "rows"
    return fits[0] if fits else None  # type: ignore[return-value]


def _content_digest(adapter: Adapter) -> tuple[str, str]:
    """(sha256 of adapter_config.json, sha256 of the weights file): what makes two the same."""
    return sha256_file(adapter.path / ADAPTER_CONFIG), sha256_file(adapter.weights_file)


def refuse_repeated_adapters(adapters: Sequence[Adapter], *, labels: Sequence[str] | None = None) -> None:
    """Raise when two of ``adapters`` are the same adapter, naming both (by ``labels``: what the
    caller was given, e.g. registry references; default: the folders).

    The same means the same folder (once resolved: a symlink or ``./a`` vs ``a``; two registry
    references to one version materialise to one folder) or the same content (sha256 of
    ``adapter_config.json`` and of the weights file). Only files of equal sizes are hashed.
    Merging an adapter twice adds its delta twice, which is almost always a mistake; callers
    that mean it give explicit weights (``plan_merge(..., weights_explicit=True)``).
    """
    names = [str(a.path) for a in adapters] if labels is None else [str(label) for label in labels]
    if len(names) != len(adapters):
        raise InvalidInputError(f"{len(names)} labels for {len(adapters)} adapters; give one label per adapter")
    folders: dict[Path, int] = {}
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, adapter in enumerate(adapters):
        folder = adapter.path.resolve()
        if folder in folders:
            first = folders[folder]
            raise InvalidInputError(
                f"adapters {names[first]!r} (#{first + 1}) and {names[index]!r} (#{index + 1}) are the "
                f"same adapter (folder {folder}): merging it twice adds its delta twice; give it once, "
                "or give explicit weights for every adapter to combine it on purpose"
            )
        folders[folder] = index
        sizes = ((adapter.path / ADAPTER_CONFIG).stat().st_size, adapter.weights_file.stat().st_size)
        by_size.setdefault(sizes, []).append(index)
    for group in by_size.values():
        if len(group) < 2:
            continue
        seen: dict[tuple[str, str], int] = {}
        for index in group:
            digest = _content_digest(adapters[index])
            if digest in seen:
                first = seen[digest]
                raise InvalidInputError(
                    f"adapters {names[first]!r} (#{first + 1}) and {names[index]!r} (#{index + 1}) are the "
                    f"same adapter (identical {ADAPTER_CONFIG} and weights, sha256 {digest[1][:12]}...): "
                    "merging it twice adds its delta twice; give it once, or give explicit weights for "
                    "every adapter to combine it on purpose"
                )
            seen[digest] = index


def plan_merge(
    checkpoint: Checkpoint,
    adapters: Sequence[Adapter],
    *,
    weights: Sequence[float] | None = None,
    dtype: str = "auto",
    weights_explicit: bool = True,
    labels: Sequence[str] | None = None,
) -> MergePlan:
    """Map every adapter tensor onto the base and return the merge plan, or raise.

    ``weights_explicit=False`` says the weights were not chosen by the user (absent, or defaults
    the caller filled in): the same adapter given twice is then refused
    (:func:`refuse_repeated_adapters`, naming the adapters by ``labels``).
    :func:`mergetools.merge.merge_adapters` passes it whenever its own weights are not explicit.
    """
    if not adapters:
        raise InvalidInputError("no adapters given; expected at least one adapter")
    if dtype not in DTYPE_CHOICES:
        raise InvalidInputError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")
    if not weights_explicit:
        refuse_repeated_adapters(adapters, labels=labels)
    weights = [1.0] * len(adapters) if weights is None else [float(w) for w in weights]
    if len(weights) != len(adapters):
        raise InvalidInputError(f"{len(weights)} weights for {len(adapters)} adapters; give one weight per adapter")
    for adapter, weight in zip(adapters, weights, strict=True):
        if not math.isfinite(weight):
            raise InvalidInputError(f"adapter {adapter.path}: weight {weight} is not a finite number")
        for module in adapter.modules.values():
            if abs(weight * module.scale) > FLOAT32_MAX:
                raise InvalidInputError(
                    f"adapter {adapter.path} module {module.path!r}: weight {weight} x scale {module.scale} "
                    "overflows float32"
                )
    planner = _Planner(checkpoint, list(adapters), weights, DTYPE_CHOICES[dtype])
    return planner.plan()


class _Planner:
    """Builds a :class:`MergePlan`: replacements of every adapter first (they may resize the
    vocabulary), then LoRA modules and token rows against the final shapes."""

    def __init__(self, checkpoint: Checkpoint, adapters: list[Adapter], weights: list[float], target: str | None):
        self.checkpoint = checkpoint
        self.adapters = adapters
        self.weights = weights
        self.target = target
        base = checkpoint.tensors
        self.outputs: dict[str, OutputTensor] = {
            name: OutputTensor(name, t.shape, _out_dtype(t.dtype, target), name) for name, t in base.items()
        }
        self.added: dict[str, int] = {}
        self.embed_name = checkpoint.input_embedding_name()
        tied_config = checkpoint.tie_word_embeddings and self.embed_name is not None
        self.tied = lm_head_is_virtual(
            tie_word_embeddings=checkpoint.tie_word_embeddings, embed_name=self.embed_name, stored=base
        )
        """The lm_head is the embedding's tensor (not stored)."""
        self.tied_stored = tied_config and not self.tied
        """The config ties them but the file also stores a copy of lm_head."""
        self.tied_virtual: OutputTensor | None = None
        self.name_maps: list[NameMap] = []
        self.untie_reasons: list[str] = []
        self.notes: list[str] = []

    def lookup(self, name: str, name_map: NameMap) -> OutputTensor | None:
        found = resolve_name(name, name_map, self.outputs)
        if found is not None:
            return self.outputs[found]
        if self.tied and name in OUTPUT_EMBEDDING_NAMES and self.embed_name is not None:
            return self._virtual_lm_head(name)
        return None

    def _virtual_lm_head(self, name: str = OUTPUT_EMBEDDING_NAMES[0]) -> OutputTensor:
        assert self.embed_name is not None
        if self.tied_virtual is None:
            embed = self.checkpoint.tensors[self.embed_name]
            self.tied_virtual = OutputTensor(name, embed.shape, _out_dtype(embed.dtype, self.target), self.embed_name)
        return self.tied_virtual

    def _is_embedding_pair(self, out: OutputTensor) -> bool:
        return out is self.tied_virtual or out.source in (self.embed_name, *OUTPUT_EMBEDDING_NAMES)

    def plan(self) -> MergePlan:
        for adapter in self.adapters:
            self.name_maps.append(adapter_name_map(adapter, self.checkpoint.tensors))
        for index, adapter in enumerate(self.adapters):
            self._replacements(index, adapter)
        for index, adapter in enumerate(self.adapters):
            for module in adapter.modules.values():
                out = self._module(index, adapter, module)
                if (self.tied or self.tied_stored) and self._is_embedding_pair(out):
                    self.untie_reasons.append(f"LoRA on {module.path}")
        for index, adapter in enumerate(self.adapters):
            for tokens in adapter.trainable_tokens:
                self._tokens(index, adapter, tokens)
        return self._finish()

    def _replacements(self, index: int, adapter: Adapter) -> None:
        name_map = self.name_maps[index]
        for rep in adapter.replacements:
            out = self.lookup(rep.target, name_map)
            where = f"adapter {adapter.path} tensor {rep.tensor.key!r}"
            if out is None:
                if rep.tensor.dtype not in FLOAT_DTYPES:
                    raise IncompatibleError(f"{where}: the base has no tensor {rep.target!r} to replace")
                new_name = rep.target if name_map.mode != "add" else name_map.apply(rep.target)
                if new_name in self.outputs:
                    raise IncompatibleError(f"{where}: {new_name!r} is added twice")
                dtype = _out_dtype(rep.tensor.dtype, self.target or _dominant_dtype(self.checkpoint))
                out = OutputTensor(new_name, rep.tensor.shape, dtype, None)
                self.outputs[new_name] = out
                self.added[new_name] = index
            elif _repeats_base(out, rep.tensor, adapter, self.checkpoint):
                # PEFT saves copies of unchanged base tensors (an embedding's base_layer when
                # the embedding is targeted): they change nothing, so they take no part.
                logger.debug("%s: %s repeats the base tensor; ignored", out.name, rep.tensor.key)
                continue
            else:
                if out.replacement is not None and out.replacement[0] != index:
                    raise IncompatibleError(
                        f"{where}: {out.name!r} is also replaced by adapter {self.adapters[out.replacement[0]].path}; "
                        "two adapters cannot both replace one tensor"
                    )
                if rep.tensor.shape != out.shape:
                    vocab_dim_only = (
                        len(rep.tensor.shape) == len(out.shape)
                        and rep.tensor.shape[1:] == out.shape[1:]
                        and self._is_embedding_pair(out)
                    )
                    if not vocab_dim_only:
                        raise IncompatibleError(
                            f"{where}: replaces {out.name!r} of shape {out.shape} with shape {rep.tensor.shape}; "
                            "was it trained on another base?"
                        )
                    out.shape = rep.tensor.shape
                    self.notes.append(f"{out.name}: vocabulary resized to {rep.tensor.shape[0]}")
                if (self.tied or self.tied_stored) and self._is_embedding_pair(out):
                    self.untie_reasons.append(f"{rep.target} replaced")
            out.replacement = (index, rep.tensor)

    def _module(self, index: int, adapter: Adapter, module: LoraModule) -> OutputTensor:
        name_map, weight = self.name_maps[index], self.weights[index]
        where = f"adapter {adapter.path} module {module.path!r}"
        out = self.lookup(module.weight_name, name_map)
        if out is None:
            raise IncompatibleError(
                f"{where}: the base has no tensor {name_map.apply(module.weight_name)!r}; "
                "was it trained on another architecture?"
            )
        layout = fit_layout(module, tuple(out.shape))
        if layout is None:
            a, b = module.lora_a.shape, module.lora_b.shape
            if module.kind == "embedding":
                raise IncompatibleError(
                    f"{where}: lora_embedding_A {a} and lora_embedding_B {b} give a delta of {module.delta_shape} "
                    f"but the base embedding {out.name!r} is {out.shape} — vocabulary or hidden size differs; "
                    "was it trained on another base?"
                )
            if module.kind == "linear":
                raise IncompatibleError(
                    f"{where}: lora_A is {a} and lora_B is {b} (in_features {a[1]}, out_features {b[0]}) but the "
                    f"base weight {out.name!r} is {out.shape}; was it trained on another base?"
                )
            raise IncompatibleError(
                f"{where}: the delta is {module.delta_shape} but the base weight {out.name!r} is {out.shape}; "
                "conv kernel or channels differ (grouped convolutions are not supported)"
            )
        if out.dtype not in FLOAT_DTYPES:
            raise IncompatibleError(f"{where}: the base weight {out.name!r} has dtype {out.dtype}, not a float")
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
            bias_out = self.lookup(module.bias_name, name_map)
            if bias_out is None:
                raise UnsupportedAdapterError(
                    f"{where}: lora_bias=True but the base layer has no bias "
                    f"({name_map.apply(module.bias_name)!r}); this adapter cannot be merged"
                )
            if bias_out.shape != module.bias.shape:
                raise IncompatibleError(
                    f"{where}: lora_B.bias is {module.bias.shape} but the base bias is {bias_out.shape}"
                )
            bias_out.bias_adds.append(BiasOp(index, module.bias, weight * module.scale))
        return out

    def _tokens(self, index: int, adapter: Adapter, tokens: TrainableTokens) -> None:
        out = self.lookup(tokens.target, self.name_maps[index])
        where = f"adapter {adapter.path} trainable tokens of {tokens.target!r}"
        if out is None:
            raise IncompatibleError(f"{where}: the base has no tensor {tokens.target!r}")
        if out is self.tied_virtual and not self.untie_reasons:
            return  # PEFT ties the lm_head delta to the embedding's; rows land there
        if len(out.shape) != 2 or tokens.tensor.shape[1] != out.shape[1]:
            raise IncompatibleError(f"{where}: rows of {tokens.tensor.shape} do not fit {out.name!r} {out.shape}")
        if max(tokens.indices, default=-1) >= out.shape[0]:
            raise IncompatibleError(
                f"{where}: token index {max(tokens.indices)} is beyond the vocabulary ({out.shape[0]} rows)"
            )
        out.token_rows.append((index, tokens))
        if self.tied_stored and out.source == self.embed_name and not self.untie_reasons:
            # Tied in the config, lm_head stored too: the rows are shared, so both copies get them.
            for name in OUTPUT_EMBEDDING_NAMES:
                if name in self.outputs and self.outputs[name].shape == out.shape:
                    self.outputs[name].token_rows.append((index, tokens))

    def _finish(self) -> MergePlan:
        if self.tied and self.untie_reasons:
            # The unmerged model's head reads the original (or replaced) embedding, before any
            # delta: it gets its own copy.
            virtual = self._virtual_lm_head()
            assert self.embed_name is not None
            embed_out = self.outputs[self.embed_name]
            if virtual.replacement is None and embed_out.replacement is not None:
                virtual.replacement = embed_out.replacement
                virtual.shape = embed_out.shape
        for out in [*self.outputs.values(), *([self.tied_virtual] if self.tied_virtual else [])]:
            replaced_by = out.replacement[0] if out.replacement else None
            for who, what in ([(replaced_by, "a full replacement")] if replaced_by is not None else []) + [
                (i, "trainable tokens") for i, _ in out.token_rows
            ]:
                if self.weights[who] != 1.0:
                    raise UnsupportedAdapterError(
                        f"adapter {self.adapters[who].path}: weight {self.weights[who]} cannot apply to {what} of "
                        f"{out.name!r}; full replacements replace, they cannot be weighted — use weight 1"
                    )
        config_updates: dict[str, object] = {}
        ordered = list(self.outputs.values())
        if self.untie_reasons and (self.tied or self.tied_stored):
            if self.tied and self.tied_virtual is not None:
                ordered.append(self.tied_virtual)
            config_updates["tie_word_embeddings"] = False
            self.notes.append(
                "untied lm_head from the input embedding (" + "; ".join(sorted(set(self.untie_reasons))) + ")"
            )
        if self.embed_name is not None:
            vocab = self.outputs[self.embed_name].shape[0]
            if self.checkpoint.vocab_size is not None and vocab != self.checkpoint.vocab_size:
                config_updates["vocab_size"] = vocab
        if self.target is not None:
            config_updates["dtype"] = CONFIG_DTYPE_NAMES[self.target]
        for index in sorted(set(self.added.values())):
            heads = {name: self.outputs[name] for name, i in self.added.items() if i == index}
            _note_added_heads(heads, self.adapters[index], config_updates, self.checkpoint)
        return MergePlan(
            self.checkpoint, self.adapters, self.weights, ordered, config_updates, self.notes
        )


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


def _note_added_heads(
    heads: dict[str, OutputTensor], adapter: Adapter, updates: dict[str, object], checkpoint: Checkpoint
) -> None:
    """Added heads (e.g. ``classifier.weight``) change the architecture and the label count."""
    task = str(adapter.config.get("task_type") or "")
    mapping = adapter.config.get("auto_mapping")
    arch = mapping.get("base_model_class") if isinstance(mapping, dict) else None
    if not arch:
        stem = checkpoint.architectures[0] if checkpoint.architectures else ""
        for suffix in ("ForCausalLM", "ForMaskedLM", "ForPreTraining", "LMHeadModel", "Model"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        if stem and task in _TASK_SUFFIXES:
            arch = stem + _TASK_SUFFIXES[task]
    if arch:
        updates["architectures"] = [arch]
    if task in ("SEQ_CLS", "TOKEN_CLS"):
        # The projection to labels is the added matrix with the fewest rows (a RoBERTa-style head
        # also adds a square dense layer before it).
        rows = [out.shape[0] for name, out in heads.items() if name.endswith(".weight") and len(out.shape) == 2]
        if rows:
            labels = min(rows)
            updates["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
            updates["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
