"""Adapter-vs-base checks: does each tensor of an adapter land on a base tensor of the right shape?

Names and shapes are resolved the way the merge planner (:mod:`mergetools.plan`) resolves them:
the adapter's names go through :func:`mergetools.checkpoint.infer_name_map` and each module's
delta must have :attr:`LoraModule.delta_shape`. The base is a :class:`BaseView`: a structural
signature (:mod:`mergetools.signature`), with the opened :class:`Checkpoint` when there is one.
:func:`check_against_base` covers shapes, dtypes, vocabularies and tied embeddings;
:func:`check_identity` the base's recorded name, revision and fingerprint. Both add findings to
a :class:`FindingCollector` and never raise for a bad adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mergetools.adapter import Adapter, LoraModule
from mergetools.checkpoint import OUTPUT_EMBEDDING_NAMES, Checkpoint, NameMap
from mergetools.errors import InvalidAdapterError, LoradexError
from mergetools.files import read_json_object
from mergetools.findings import FindingCollector
from mergetools.fingerprint import is_fingerprint
from mergetools.folder import Folder
from mergetools.inspect import recorded_base_fingerprint
from mergetools.plan import adapter_name_map, fit_layout, lm_head_is_virtual, resolve_name
from mergetools.safetensors_io import FLOAT_DTYPES
from mergetools.signature import BaseSignature

logger = logging.getLogger(__name__)

HEAD_MODULES = frozenset(
    {"classifier", "score", "qa_outputs", "lm_head", "embed_out", "cls", "pooler", "head"}
)
"""Module names of task heads: a replaced head the base lacks is added by the merge, not refused."""


def _max_token_id(folder: Path) -> int | None:
    """The largest token id the adapter folder's tokenizer files use (None when there are none).

    Raises :class:`LoradexError` when a file cannot be read (size-limited, links must stay in
    the folder); ``check`` reports unreadable tokenizer files by themselves."""
    best: int | None = None

    def take(value: object) -> None:
        nonlocal best
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            best = value if best is None else max(best, value)

    safe = Folder.open(folder, error=InvalidAdapterError)
    tokenizer = safe.file("tokenizer.json")
    if tokenizer is not None:
        data = read_json_object(tokenizer, what="tokenizer.json", kind="tokenizer")
        model = data.get("model")
        vocab = model.get("vocab") if isinstance(model, dict) else None
        if isinstance(vocab, dict):
            for value in vocab.values():
                take(value)
        elif isinstance(vocab, list) and vocab:
            take(len(vocab) - 1)
        tokens = data.get("added_tokens")
        for token in tokens if isinstance(tokens, list) else []:
            if isinstance(token, dict):
                take(token.get("id"))
    added = safe.file("added_tokens.json")
    if added is not None:
        for value in read_json_object(added, what="added_tokens.json", kind="tokenizer").values():
            take(value)
    return best


def norm_name(name: str) -> str:
    """A base model name as compared: trimmed, without a trailing slash, lowercase."""
    return name.strip().rstrip("/").lower()


def _same_path(a: str, b: Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == b.resolve()
    except (OSError, RuntimeError, ValueError):
        return False


# --- the base view --------------------------------------------------------------------------


@dataclass
class BaseView:
    """The base as checked: its signature, the opened checkpoint when there is one, its fingerprint."""

    view: BaseSignature
    checkpoint: Checkpoint | None
    fingerprint: str | None = None

    @property
    def tensors(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return self.view.tensors

    @property
    def embed_name(self) -> str | None:
        return self.view.input_embedding_name()

    @property
    def tied_virtual(self) -> bool:
        """The base ties its output embedding and stores no lm_head (the planner's rule)."""
        return lm_head_is_virtual(
            tie_word_embeddings=self.view.tie_word_embeddings,
            embed_name=self.embed_name,
            stored=self.tensors,
        )


@dataclass
class _Target:
    name: str
    """The resolved base tensor (for a tied lm_head: the name the adapter uses)."""
    shape: tuple[int, ...]
    dtype: str
    tied: bool = False


def _resolve(name: str, name_map: NameMap, base: BaseView) -> _Target | None:
    """The planner's lookup: mapped name, else the name as is, else the tied embedding."""
    found = resolve_name(name, name_map, base.tensors)
    if found is not None:
        dtype, shape = base.tensors[found]
        return _Target(found, shape, dtype)
    if base.tied_virtual and name in OUTPUT_EMBEDDING_NAMES and base.embed_name is not None:
        dtype, shape = base.tensors[base.embed_name]
        return _Target(name, shape, dtype, tied=True)
    return None


def _name_map(adapter: Adapter, base: BaseView) -> NameMap:
    return adapter_name_map(adapter, base.tensors)


# --- checks -----------------------------------------------------------------------------------


@dataclass
class Resolved:
    """Where one adapter's tensors land on the base (for group checks)."""

    deltas: dict[str, list[LoraModule]] = field(default_factory=dict)
    replaced: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, set[int]] = field(default_factory=dict)


def check_against_base(
    adapter: Adapter, label: str, base: BaseView, out: FindingCollector
) -> Resolved:
    """Add the findings of ``adapter`` against ``base`` (names, shapes, dtypes, vocabulary, ties).

    Returns where its tensors land on the base, for the checks on adapters together.
    """
    resolved = Resolved()
    try:
        name_map = _name_map(adapter, base)
    except LoradexError as exc:
        out.add("ambiguous_names", label, None, exc.message)
        return resolved
    replaced_shapes: dict[str, tuple[int, ...]] = {}
    base_rows = base.view.embedding_rows()
    embed_targets = {base.embed_name, *OUTPUT_EMBEDDING_NAMES} - {None}

    for rep in adapter.replacements:
        target = _resolve(rep.target, name_map, base)
        if target is None:
            leaf_module = (
                rep.target.rsplit(".", 2)[-2] if rep.target.count(".") >= 1 else rep.target
            )
            head_like = (
                rep.reason == "modules_to_save"
                or leaf_module in HEAD_MODULES
                or any(part in HEAD_MODULES for part in rep.target.split(".")[:1])
            )
            if head_like and rep.tensor.dtype in FLOAT_DTYPES:
                out.add(
                    "added_tensor",
                    label,
                    rep.target,
                    f"{rep.tensor.key!r} {list(rep.tensor.shape)} has no counterpart in the base; the merge adds "
                    f"{name_map.apply(rep.target)!r} and the merged config names the task architecture "
                    f"(task_type {adapter.config.get('task_type')!r})",
                )
            else:
                out.add(
                    "unmapped_tensor",
                    label,
                    rep.target,
                    f"{rep.tensor.key!r} maps to {name_map.apply(rep.target)!r}, which the base does not have; "
                    "PEFT would silently ignore it — was it trained on another architecture?",
                    expected=name_map.apply(rep.target),
                    actual=None,
                )
            continue
        resolved.replaced[target.name] = rep.tensor.key
        if rep.tensor.shape != target.shape:
            vocab_only = (
                len(rep.tensor.shape) == len(target.shape) == 2
                and rep.tensor.shape[1:] == target.shape[1:]
                and (target.name in embed_targets or target.tied)
            )
            if vocab_only:
                replaced_shapes[target.name] = rep.tensor.shape
                out.add(
                    "vocab_resized",
                    label,
                    target.name,
                    f"{rep.tensor.key!r} resizes {target.name!r} from {target.shape[0]} to {rep.tensor.shape[0]} "
                    "rows; the merged config's vocab_size follows",
                    expected=target.shape[0],
                    actual=rep.tensor.shape[0],
                )
            else:
                out.add(
                    "shape_mismatch",
                    label,
                    target.name,
                    f"{rep.tensor.key!r} is {list(rep.tensor.shape)} but the base tensor {target.name!r} is "
                    f"{list(target.shape)}; was it trained on another base?",
                    expected=list(target.shape),
                    actual=list(rep.tensor.shape),
                )
        elif target.tied and not any(m.weight_name == rep.target for m in adapter.modules.values()):
            out.add(
                "tied_embedding_lora",
                label,
                target.name,
                f"{rep.tensor.key!r} replaces {target.name!r}, which the base ties to {base.embed_name!r}; "
                "merging unties them (writes both, tie_word_embeddings: false)",
            )

    for module in adapter.modules.values():
        _check_module(module, label, name_map, base, replaced_shapes, out, resolved)

    for tokens in adapter.trainable_tokens:
        target = _resolve(tokens.target, name_map, base)
        if target is None:
            out.add(
                "target_module_missing",
                label,
                tokens.target,
                f"trainable tokens target {name_map.apply(tokens.target)!r}, which the base does not have",
                expected=name_map.apply(tokens.target),
            )
            continue
        shape = replaced_shapes.get(target.name, target.shape)
        if len(shape) != 2 or tokens.tensor.shape[1] != shape[1]:
            out.add(
                "shape_mismatch",
                label,
                target.name,
                f"trainable_tokens_delta rows are {list(tokens.tensor.shape)} but {target.name!r} is {list(shape)}",
                expected=list(shape[1:]),
                actual=list(tokens.tensor.shape[1:]),
            )
        if tokens.indices and max(tokens.indices) >= shape[0]:
            out.add(
                "vocab_mismatch",
                label,
                target.name,
                f"trainable token index {max(tokens.indices)} is beyond the vocabulary of {target.name!r} "
                f"({shape[0]} rows); the adapter was trained with a larger tokenizer",
                expected=f"< {shape[0]}",
                actual=max(tokens.indices),
            )
        resolved.tokens.setdefault(target.name, set()).update(tokens.indices)

    # The output embedding must follow a resized input embedding.
    if base.embed_name in replaced_shapes:
        rows = replaced_shapes[base.embed_name][0]
        for head in OUTPUT_EMBEDDING_NAMES:
            if (
                head in base.tensors
                and head not in replaced_shapes
                and base.tensors[head][1][0] != rows
            ):
                out.add(
                    "vocab_mismatch",
                    label,
                    head,
                    f"the adapter's {base.embed_name!r} has {rows} rows but the base's {head!r} has "
                    f"{base.tensors[head][1][0]} and the adapter carries no {head!r} of its size: it was trained "
                    "with another vocabulary, or resized without saving lm_head (save_embedding_layers=True)",
                    expected=rows,
                    actual=base.tensors[head][1][0],
                )

    # The adapter's tokenizer must fit the (possibly resized) embedding.
    try:
        max_id = _max_token_id(adapter.path)
    except LoradexError:  # reported by the adapter's own checks (unreadable_tokenizer)
        max_id = None
    resized_shape = replaced_shapes.get(base.embed_name or "")
    rows_value = resized_shape[0] if resized_shape else base_rows
    if max_id is not None and rows_value is not None and max_id >= rows_value:
        resized = "" if resized_shape else " and carries no resized embedding"
        out.add(
            "vocab_mismatch",
            label,
            base.embed_name,
            f"the adapter's tokenizer uses token id {max_id} but the embedding has {rows_value} rows{resized}; "
            "it was trained with a larger vocabulary (resize_token_embeddings) — save it with "
            "save_embedding_layers=True",
            expected=f"< {rows_value}",
            actual=max_id,
        )
    return resolved


def _check_module(
    module: LoraModule,
    label: str,
    name_map: NameMap,
    base: BaseView,
    replaced_shapes: Mapping[str, tuple[int, ...]],
    out: FindingCollector,
    resolved: Resolved,
) -> None:
    target = _resolve(module.weight_name, name_map, base)
    if target is None:
        out.add(
            "target_module_missing",
            label,
            module.path,
            f"module {module.path!r}: the base has no tensor {name_map.apply(module.weight_name)!r}; "
            "was it trained on another architecture?",
            expected=name_map.apply(module.weight_name),
            actual=None,
        )
        return
    resolved.deltas.setdefault(target.name, []).append(module)
    shape = tuple(replaced_shapes.get(target.name, target.shape))
    expected = module.delta_shape
    a, b = list(module.lora_a.shape), list(module.lora_b.shape)
    layout = fit_layout(module, shape)
    if layout is None:
        if module.kind == "embedding":
            if len(shape) == 2 and shape[1] == expected[1] and shape[0] != expected[0]:
                out.add(
                    "vocab_mismatch",
                    label,
                    module.path,
                    f"module {module.path!r}: lora_embedding_A {a} is sized for a vocabulary of {expected[0]} but "
                    f"the base embedding {target.name!r} has {shape[0]} rows and the adapter carries no resized "
                    "embedding; was it trained on another base or tokenizer?",
                    expected=shape[0],
                    actual=expected[0],
                )
            else:
                out.add(
                    "shape_mismatch",
                    label,
                    module.path,
                    f"module {module.path!r}: lora_embedding_A {a} and lora_embedding_B {b} give a delta of "
                    f"{list(expected)} but the base embedding {target.name!r} is {list(shape)}",
                    expected=list(shape),
                    actual=list(expected),
                )
        elif module.kind == "linear" and len(shape) == 2:
            out_dim, in_dim = (expected[1], expected[0]) if module.fan_in_fan_out else expected
            base_out, base_in = (shape[1], shape[0]) if module.fan_in_fan_out else shape
            parts = []
            if in_dim != base_in:
                parts.append(f"in_features {in_dim} != {base_in}")
            if out_dim != base_out:
                parts.append(f"out_features {out_dim} != {base_out}")
            out.add(
                "shape_mismatch",
                label,
                module.path,
                f"module {module.path!r}: lora_A is {a} and lora_B is {b} but the base weight {target.name!r} is "
                f"{list(shape)} — {', '.join(parts)}; was it trained on another base?",
                expected=list(shape),
                actual=list(expected),
            )
        else:
            detail = ""
            if len(shape) == len(expected) and len(shape) > 2:
                if shape[2:] != expected[2:]:
                    detail = f" — kernel {list(expected[2:])} != {list(shape[2:])}"
                else:
                    detail = f" — channels (out, in) {list(expected[:2])} != {list(shape[:2])}"
            out.add(
                "shape_mismatch",
                label,
                module.path,
                f"module {module.path!r}: lora_A {a} and lora_B {b} give a delta of {list(expected)} but the base "
                f"weight {target.name!r} is {list(shape)}{detail} (grouped convolutions are not supported)",
                expected=list(shape),
                actual=list(expected),
            )
        return
    if target.dtype not in FLOAT_DTYPES:
        out.add(
            "non_float_base_weight",
            label,
            module.path,
            f"module {module.path!r}: the base weight {target.name!r} has dtype {target.dtype}, expected a float "
            "dtype (is the base quantized?)",
            expected="float",
            actual=target.dtype,
        )
    if module.magnitude is not None:
        want = shape[1] if layout == "transposed" else shape[0]
        if module.magnitude.shape not in ((want,), (1, want, *([1] * (len(shape) - 2)))):
            out.add(
                "shape_mismatch",
                label,
                module.path,
                f"module {module.path!r}: lora_magnitude_vector is {list(module.magnitude.shape)}, expected {want} "
                "entries",
                expected=want,
                actual=list(module.magnitude.shape),
            )
    if module.bias is not None:
        bias = _resolve(module.bias_name, name_map, base)
        if bias is None:
            out.add(
                "lora_bias_without_base_bias",
                label,
                module.path,
                f"module {module.path!r}: lora_bias=True but the base layer has no bias "
                f"({name_map.apply(module.bias_name)!r}); this adapter cannot be merged",
                expected=name_map.apply(module.bias_name),
                actual=None,
            )
        elif bias.shape != module.bias.shape:
            out.add(
                "shape_mismatch",
                label,
                module.path,
                f"module {module.path!r}: lora_B.bias is {list(module.bias.shape)} but the base bias "
                f"{bias.name!r} is {list(bias.shape)}",
                expected=list(bias.shape),
                actual=list(module.bias.shape),
            )
    if target.tied or (base.view.tie_word_embeddings and target.name == base.embed_name):
        other = base.embed_name if target.tied else "lm_head"
        out.add(
            "tied_embedding_lora",
            label,
            module.path,
            f"module {module.path!r}: LoRA on {target.name!r}, which the base ties to {other!r}; merging unties "
            "them (writes both, tie_word_embeddings: false) so the merged model matches the unmerged one — "
            "PEFT's own merge would change both",
        )


def check_identity(
    adapter: Adapter, label: str, base: BaseView, out: FindingCollector, *, verify_weights: bool
) -> None:
    """Add the findings of ``adapter``'s recorded base name, revision and fingerprint vs ``base``."""
    name = adapter.config.get("base_model_name_or_path")
    view = base.view
    if isinstance(name, str) and name:
        matches = view.name_or_path is not None and norm_name(name) == norm_name(view.name_or_path)
        if not matches and view.path is not None:
            matches = _same_path(name, view.path)
        if not matches:
            if view.name_or_path is not None:
                out.add(
                    "base_name_mismatch",
                    label,
                    None,
                    f"base_model_name_or_path is {name!r} but the base records {view.name_or_path!r}; "
                    "was it trained on another base?",
                    expected=view.name_or_path,
                    actual=name,
                )
            elif (
                view.path is None
                or view.path.name.lower() != name.rstrip("/").rsplit("/", 1)[-1].lower()
            ):
                out.add(
                    "base_identity_unverified",
                    label,
                    None,
                    f"base_model_name_or_path is {name!r}; the base ({view.source}) records no name to compare it "
                    "with (signature: set name_or_path; or verify the weights to compare fingerprints)",
                    actual=name,
                )
    revision = adapter.config.get("revision")
    if (
        isinstance(revision, str)
        and revision
        and view.revision is not None
        and revision != view.revision
    ):
        out.add(
            "base_revision_mismatch",
            label,
            None,
            f"the adapter was trained on revision {revision!r} but the base is revision {view.revision!r}",
            expected=view.revision,
            actual=revision,
        )
    recorded = recorded_base_fingerprint(adapter)
    if recorded is None or not is_fingerprint(recorded):
        return
    if base.fingerprint is not None:
        if recorded != base.fingerprint:
            out.add(
                "base_fingerprint_mismatch",
                label,
                None,
                f"the adapter records base fingerprint {recorded[:16]}… but the base's is "
                f"{base.fingerprint[:16]}…: it was trained on other weights (another checkpoint, revision or "
                "fine-tune of the same architecture)",
                expected=base.fingerprint,
                actual=recorded,
            )
    elif not verify_weights:
        out.add(
            "base_fingerprint_unverified",
            label,
            None,
            f"the adapter records base fingerprint {recorded[:16]}…; verify the weights to compare it "
            "with the base's",
            actual=recorded,
        )
