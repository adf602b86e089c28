"""Compatibility checks: does an adapter fit a base model, a server, and the other adapters?

:func:`check_adapters` turns everything that could go wrong into :class:`Finding` records with a
stable ``code`` (listed in :data:`CODES`), a severity and a message that names the expected and
actual values. It never raises for a bad adapter: a corrupt file, a broken config or a refused
variant is a finding too, so one run reports every problem. It raises only when called wrong
(:class:`InvalidInputError`).

The base is a checkpoint folder (read header-only; ``verify_weights`` also fingerprints it), an
opened :class:`Checkpoint`, or a structural signature (:mod:`mergetools.signature`). Names and
shapes are resolved the way the merge planner (:mod:`mergetools.plan`) resolves them: the
adapter's names go through :func:`mergetools.checkpoint.infer_name_map` and each module's delta
must have :attr:`LoraModule.delta_shape`. With a real checkpoint and no error found, the
planner itself is run as a final cross-check, so ``check`` never passes what ``merge`` refuses.

Nothing here imports torch for safetensors inputs; adapter tensors are scanned for NaN / Inf
with numpy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mergetools.adapter import (
    CONFIG_FILE,
    SAFE_WEIGHTS,
    Adapter,
    LoraModule,
    load_adapter,
    pattern_keys_unused,
    pattern_value,
    read_adapter_config,
    refuse_unmergeable,
)
from mergetools.checkpoint import (
    OUTPUT_EMBEDDING_NAMES,
    Checkpoint,
    NameMap,
    infer_name_map,
    open_checkpoint,
)
from mergetools.errors import InvalidInputError, LoradexError
from mergetools.inspect import (
    VLLM_MAX_LORA_RANKS,
    TensorScan,
    iter_tensor_bytes,
    recorded_base_fingerprint,
    scan_adapter_tensors,
    vllm_max_lora_rank,
)
from mergetools.safetensors_io import FLOAT_DTYPES, read_header
from mergetools.signature import (
    BaseSignature,
    load_signature,
    parse_signature,
    signature_of_checkpoint,
)

logger = logging.getLogger(__name__)

Severity = Literal["error", "warning", "info"]

CODES: dict[str, tuple[Severity, str]] = {
    # inputs
    "corrupt_file": ("error", "a file is truncated, has a lying header or is not what it claims"),
    "invalid_adapter": ("error", "the adapter folder or adapter_config.json is invalid"),
    "invalid_checkpoint": ("error", "the base folder is missing files, quantized or inconsistent"),
    "invalid_input": ("error", "an input file cannot be read"),
    "unmergeable_variant": ("error", "a LoRA variant that cannot be merged onto the original base"),
    "rank_mismatch": (
        "error",
        "r / rank_pattern in the config differs from the rank of the tensors",
    ),
    "unused_pattern": ("warning", "a rank_pattern / alpha_pattern key matches no module"),
    "nonfinite_values": ("error", "an adapter tensor holds NaN or Inf"),
    "unreadable_tokenizer": ("warning", "tokenizer files in the adapter folder cannot be read"),
    # adapter vs base
    "ambiguous_names": ("error", "the adapter's names map onto the base in several ways"),
    "target_module_missing": ("error", "a LoRA target module is absent from the base"),
    "unmapped_tensor": (
        "error",
        "an adapter tensor maps to no base tensor (PEFT would silently ignore it)",
    ),
    "added_tensor": ("info", "a head the base lacks (e.g. classifier); the merge adds it"),
    "shape_mismatch": ("error", "a delta or replacement does not have the base tensor's shape"),
    "non_float_base_weight": ("error", "a LoRA targets a base tensor that is not floating point"),
    "lora_bias_without_base_bias": ("error", "lora_bias=True but the base layer has no bias"),
    "vocab_mismatch": (
        "error",
        "embedding LoRA, replacements, tokens or tokenizer sized for another vocabulary",
    ),
    "vocab_resized": ("info", "the adapter resizes the vocabulary; the merged config follows"),
    "tied_embedding_lora": ("warning", "LoRA on a tied embedding / lm_head: merging unties them"),
    "base_name_mismatch": (
        "warning",
        "base_model_name_or_path differs from the base's recorded identity",
    ),
    "base_revision_mismatch": (
        "warning",
        "the adapter's revision differs from the base's recorded revision",
    ),
    "base_identity_unverified": (
        "info",
        "the base records no identity to compare base_model_name_or_path with",
    ),
    "invalid_base_fingerprint": (
        "error",
        "the adapter's recorded base fingerprint is not 64 hex digits",
    ),
    "base_fingerprint_mismatch": (
        "error",
        "the adapter was trained on other weights than this base's",
    ),
    "base_fingerprint_unverified": (
        "info",
        "the adapter records a base fingerprint; --verify-weights would compare it",
    ),
    "verify_weights_unavailable": (
        "error",
        "--verify-weights needs the base weights or a signature with a fingerprint",
    ),
    "merge_refused": ("error", "the merge planner refuses this combination"),
    # serving
    "vllm_rank_too_large": ("error", "rank above vLLM's max_lora_rank"),
    "vllm_misscaled": (
        "error",
        "per-module ranks or alphas that vLLM's single lora_alpha / r mis-scales",
    ),
    "vllm_dora": ("error", "vLLM does not serve DoRA adapters"),
    "vllm_lora_bias": ("error", "vLLM does not serve adapters with lora_bias"),
    "vllm_modules_to_save": ("error", "vLLM does not serve adapters with modules_to_save"),
    "vllm_bias": ("error", "vLLM refuses bias != 'none' unless bias support is enabled"),
    "lorax_architecture_mismatch": (
        "error",
        "LoRAX refuses an adapter whose base architectures differ",
    ),
    "lorax_architecture_unverified": (
        "info",
        "the adapter does not say which architecture it was trained on",
    ),
    # adapters together
    "group_different_bases": ("error", "adapters record different base fingerprints"),
    "group_base_names_differ": ("warning", "adapters name different base models"),
    "group_replacement_conflict": ("error", "two adapters replace the same base tensor"),
    "group_dora_conflict": ("error", "a DoRA module shares its layer with another adapter's delta"),
    "group_token_conflict": ("error", "two adapters replace the same token rows"),
}
"""Every finding code: its severity and what it means (docs/check.md lists them all)."""

HEAD_MODULES = frozenset(
    {"classifier", "score", "qa_outputs", "lm_head", "embed_out", "cls", "pooler", "head"}
)
_FP_RE = re.compile(r"[0-9a-f]{64}")
_MAX_TOKENIZER_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem (or fact) about an adapter, a base or a group of adapters."""

    code: str
    severity: Severity
    adapter: str | None
    module: str | None
    message: str
    expected: object = None
    actual: object = None

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": self.severity,
            "adapter": self.adapter,
            "module": self.module,
            "message": self.message,
            "expected": self.expected,
            "actual": self.actual,
        }


@dataclass
class CheckReport:
    """All findings of one check run."""

    findings: list[Finding]
    adapters: list[str]
    base: str | None = None
    base_fingerprint: str | None = None
    adapter_fingerprints: dict[str, str] = field(default_factory=dict)
    serving: str | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def ok(self, strict: bool = False) -> bool:
        """No errors (and, when ``strict``, no warnings)."""
        return not self.errors and not (strict and self.warnings)

    def failing(self, strict: bool = False) -> list[Finding]:
        """The findings that make :meth:`ok` false."""
        return [
            f
            for f in self.findings
            if f.severity == "error" or (strict and f.severity == "warning")
        ]

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok(),
            "ok_strict": self.ok(strict=True),
            "base": self.base,
            "base_fingerprint": self.base_fingerprint,
            "serving": self.serving,
            "adapters": [
                {"path": a, "fingerprint": self.adapter_fingerprints.get(a)} for a in self.adapters
            ],
            "counts": {
                s: sum(f.severity == s for f in self.findings) for s in ("error", "warning", "info")
            },
            "findings": [f.to_dict() for f in self.findings],
        }


# --- serving profiles ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServingProfile:
    """A server's limits: ``vllm`` (with ``max_lora_rank``) or ``lorax``."""

    name: Literal["vllm", "lorax"]
    max_lora_rank: int = 16


def parse_serving(spec: str) -> ServingProfile:
    """Parse ``vllm``, ``vllm:max_rank=64`` or ``lorax``."""
    name, _, options = spec.strip().partition(":")
    name = name.strip().lower()
    if name == "lorax" and not options:
        return ServingProfile("lorax")
    if name != "vllm":
        raise InvalidInputError(
            f"serving profile {spec!r} is not one of vllm, vllm:max_rank=N, lorax"
        )
    max_rank = 16
    for option in filter(None, (o.strip() for o in options.split(","))):
        key, _, value = option.partition("=")
        if key.strip() not in ("max_rank", "max_lora_rank") or not value.strip().isdigit():
            raise InvalidInputError(f"serving option {option!r} is not max_rank=N (in {spec!r})")
        max_rank = int(value)
    if max_rank not in VLLM_MAX_LORA_RANKS:
        raise InvalidInputError(
            f"vLLM max_lora_rank must be one of {', '.join(map(str, VLLM_MAX_LORA_RANKS))}, got {max_rank}"
        )
    return ServingProfile("vllm", max_rank)


# --- helpers ------------------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def add(
        self,
        code: str,
        adapter: str | None,
        module: str | None,
        message: str,
        *,
        expected: object = None,
        actual: object = None,
        severity: Severity | None = None,
    ) -> None:
        self.findings.append(
            Finding(code, severity or CODES[code][0], adapter, module, message, expected, actual)
        )

    def error_from(self, exc: LoradexError, adapter: str | None) -> None:
        code = "unmergeable_variant" if exc.code == "unsupported_adapter" else exc.code
        if code not in CODES:
            code = "invalid_input"
        self.add(code, adapter, None, exc.message)


def _module_of(key: str) -> str:
    name = key.removeprefix("base_model.model.")
    for suffix in (
        ".lora_A.weight",
        ".lora_B.weight",
        ".lora_B.bias",
        ".lora_embedding_A",
        ".lora_embedding_B",
        ".lora_magnitude_vector.weight",
        ".lora_magnitude_vector",
        ".token_adapter.trainable_tokens_delta",
    ):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _rank_findings(folder: Path, config: Mapping[str, object], out: _Collector, label: str) -> int:
    """Compare r / rank_pattern with lora_A's rank for every module (header only); count mismatches."""
    try:
        header = read_header(folder / SAFE_WEIGHTS)
    except LoradexError:
        return 0
    default = config.get("r", 8)
    if not isinstance(default, int | float) or isinstance(default, bool):
        return 0
    count = 0
    for key, info in sorted(header.tensors.items()):
        if (
            not (key.endswith(".lora_A.weight") or key.endswith(".lora_embedding_A"))
            or not info.shape
        ):
            continue
        module = _module_of(key)
        try:
            configured = int(
                pattern_value(
                    config.get("rank_pattern"),
                    module,
                    float(default),
                    field_name="rank_pattern",
                    source=label,
                )
            )
        except LoradexError:
            return count
        if configured != info.shape[0]:
            count += 1
            out.add(
                "rank_mismatch",
                label,
                module,
                f"module {module!r}: the config says r={configured} but lora_A has rank {info.shape[0]} "
                f"(shape {list(info.shape)}); fix r or rank_pattern in {CONFIG_FILE}",
                expected=configured,
                actual=info.shape[0],
            )
    return count


def _open_adapter(item: Path | Adapter, out: _Collector) -> tuple[str, Adapter | None]:
    if isinstance(item, Adapter):
        label = str(item.path)
        try:
            refuse_unmergeable(item.config, source=label)
        except LoradexError as exc:
            out.error_from(exc, label)
        return label, item
    folder = Path(item)
    label = str(folder)
    try:
        config = read_adapter_config(folder) if folder.is_dir() else None
    except LoradexError as exc:
        out.error_from(exc, label)
        return label, None
    rank_problems = 0
    if config is not None:
        try:
            refuse_unmergeable(config, source=label)
        except LoradexError as exc:
            out.error_from(exc, label)
        rank_problems = _rank_findings(folder, config, out, label)
    try:
        return label, load_adapter(folder, check_mergeable=False)
    except LoradexError as exc:
        if not rank_problems:
            out.error_from(exc, label)
        return label, None


def _max_token_id(folder: Path) -> int | None:
    """The largest token id the adapter folder's tokenizer files use (None when there are none)."""
    best: int | None = None

    def take(value: object) -> None:
        nonlocal best
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            best = value if best is None else max(best, value)

    tokenizer = folder / "tokenizer.json"
    if tokenizer.is_file():
        if tokenizer.stat().st_size > _MAX_TOKENIZER_BYTES:
            raise ValueError(f"{tokenizer} is larger than {_MAX_TOKENIZER_BYTES} bytes")
        data = json.loads(tokenizer.read_text(encoding="utf-8"))
        model = data.get("model") if isinstance(data, dict) else None
        vocab = model.get("vocab") if isinstance(model, dict) else None
        if isinstance(vocab, dict):
            for value in vocab.values():
                take(value)
        elif isinstance(vocab, list) and vocab:
            take(len(vocab) - 1)
        for token in data.get("added_tokens") or [] if isinstance(data, dict) else []:
            if isinstance(token, dict):
                take(token.get("id"))
    added = folder / "added_tokens.json"
    if added.is_file():
        data = json.loads(added.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            for value in data.values():
                take(value)
    return best


def _norm_name(name: str) -> str:
    return name.strip().rstrip("/").lower()


def _same_path(a: str, b: Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == b.resolve()
    except (OSError, RuntimeError, ValueError):
        return False


# --- the base view --------------------------------------------------------------------------


@dataclass
class _Base:
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
        return (
            self.view.tie_word_embeddings
            and not any(n in self.tensors for n in OUTPUT_EMBEDDING_NAMES)
            and self.embed_name is not None
        )


@dataclass
class _Target:
    name: str
    """The resolved base tensor (for a tied lm_head: the name the adapter uses)."""
    shape: tuple[int, ...]
    dtype: str
    tied: bool = False


def _resolve(name: str, name_map: NameMap, base: _Base) -> _Target | None:
    """The planner's lookup: mapped name, else the name as is, else the tied embedding."""
    for candidate in (name_map.apply(name), name):
        if candidate in base.tensors:
            dtype, shape = base.tensors[candidate]
            return _Target(candidate, shape, dtype)
    if base.tied_virtual and name in OUTPUT_EMBEDDING_NAMES and base.embed_name is not None:
        dtype, shape = base.tensors[base.embed_name]
        return _Target(name, shape, dtype, tied=True)
    return None


def _name_map(adapter: Adapter, base: _Base) -> NameMap:
    wanted = [m.weight_name for m in adapter.modules.values()] or [
        r.target for r in adapter.replacements
    ]
    wanted = [w for w in wanted if w not in OUTPUT_EMBEDDING_NAMES] or wanted
    return infer_name_map(base.tensors, wanted, source=str(adapter.path))


# --- per-adapter checks --------------------------------------------------------------------


@dataclass
class _Resolved:
    """Where one adapter's tensors land on the base (for group checks)."""

    deltas: dict[str, list[LoraModule]] = field(default_factory=dict)
    replaced: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, set[int]] = field(default_factory=dict)


def _check_intrinsic(adapter: Adapter, label: str, out: _Collector, scan: TensorScan) -> None:
    for field_name, keys in pattern_keys_unused(adapter.config, list(adapter.modules)).items():
        for key in keys:
            out.add(
                "unused_pattern",
                label,
                None,
                f"{field_name} key {key!r} matches none of the adapter's {len(adapter.modules)} modules; "
                "it has no effect (a typo, or a module of another architecture?)",
                actual=key,
            )
    for item in scan.nonfinite:
        meta = adapter.tensors[item.key]
        out.add(
            "nonfinite_values",
            label,
            _module_of(item.key),
            f"tensor {item.key!r} {list(meta.shape)} holds {item.nan} NaN and {item.inf} Inf values "
            f"(first at flat index {item.first_index}); expected only finite values — the training run diverged "
            "or the file is damaged",
            expected=0,
            actual=item.nan + item.inf,
        )
    recorded = recorded_base_fingerprint(adapter)
    if recorded is not None and not _FP_RE.fullmatch(recorded):
        out.add(
            "invalid_base_fingerprint",
            label,
            None,
            f"the recorded base fingerprint {recorded[:80]!r} is not 64 lowercase hex digits",
            actual=recorded[:80],
        )


def _check_against_base(adapter: Adapter, label: str, base: _Base, out: _Collector) -> _Resolved:
    resolved = _Resolved()
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
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        out.add(
            "unreadable_tokenizer",
            label,
            None,
            f"{adapter.path}: tokenizer files cannot be read ({exc})"[:300],
        )
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
    base: _Base,
    replaced_shapes: Mapping[str, tuple[int, ...]],
    out: _Collector,
    resolved: _Resolved,
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
    if shape != expected:
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
        transposed = module.kind == "embedding" or module.fan_in_fan_out
        want = shape[1] if transposed else shape[0]
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


def _check_identity(
    adapter: Adapter, label: str, base: _Base, out: _Collector, *, verify_weights: bool
) -> None:
    name = adapter.config.get("base_model_name_or_path")
    view = base.view
    if isinstance(name, str) and name:
        matches = view.name_or_path is not None and _norm_name(name) == _norm_name(
            view.name_or_path
        )
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
                    "with (signature: set name_or_path; or compare fingerprints with --verify-weights)",
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
    if recorded is None or not _FP_RE.fullmatch(recorded):
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
            f"the adapter records base fingerprint {recorded[:16]}…; run with --verify-weights to compare it "
            "with the base's weights",
            actual=recorded,
        )


def _global_scale(config: Mapping[str, object]) -> tuple[float, float, float | None]:
    r = config.get("r", 8)
    alpha = config.get("lora_alpha", 8)
    r_value = float(r) if isinstance(r, int | float) and not isinstance(r, bool) else 8.0
    alpha_value = (
        float(alpha) if isinstance(alpha, int | float) and not isinstance(alpha, bool) else 8.0
    )
    if r_value <= 0:
        return r_value, alpha_value, None
    scale = alpha_value / math.sqrt(r_value) if config.get("use_rslora") else alpha_value / r_value
    return r_value, alpha_value, scale


def _adapter_architectures(adapter: Adapter) -> list[str] | None:
    mapping = adapter.config.get("auto_mapping")
    if isinstance(mapping, dict) and isinstance(mapping.get("base_model_class"), str):
        return [mapping["base_model_class"]]
    candidates = [adapter.path / "config.json"]
    name = adapter.config.get("base_model_name_or_path")
    if isinstance(name, str) and name and (os.sep in name or name.startswith(".")):
        candidates.append(Path(name).expanduser() / "config.json")
    for candidate in candidates:
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        archs = data.get("architectures") if isinstance(data, dict) else None
        if isinstance(archs, list) and all(isinstance(a, str) for a in archs):
            return list(archs)
    return None


def _check_serving(
    adapter: Adapter, label: str, profile: ServingProfile, base: _Base | None, out: _Collector
) -> None:
    config = adapter.config
    if profile.name == "lorax":
        archs = _adapter_architectures(adapter)
        if base is None:
            return
        if archs is None:
            out.add(
                "lorax_architecture_unverified",
                label,
                None,
                "the adapter does not record its base architecture (auto_mapping, config.json or a local "
                "base_model_name_or_path); LoRAX compares it with the served base's",
            )
        elif base.view.architectures and archs != base.view.architectures:
            out.add(
                "lorax_architecture_mismatch",
                label,
                None,
                f"the adapter's base architectures are {archs} but the served base's are "
                f"{base.view.architectures}; LoRAX refuses it",
                expected=base.view.architectures,
                actual=archs,
            )
        return
    r_value, alpha_value, scale = _global_scale(config)
    max_rank = max([m.rank for m in adapter.modules.values()] + [int(r_value)])
    if max_rank > profile.max_lora_rank:
        fits = vllm_max_lora_rank(max_rank)
        hint = (
            f"start vLLM with --max-lora-rank {fits}"
            if fits
            else "vLLM serves ranks up to 512 only"
        )
        out.add(
            "vllm_rank_too_large",
            label,
            None,
            f"rank {max_rank} is above vLLM's max_lora_rank {profile.max_lora_rank}; {hint}, or resize the adapter",
            expected=f"<= {profile.max_lora_rank}",
            actual=max_rank,
        )
    if scale is not None:
        off = [
            m for m in adapter.modules.values() if not math.isclose(m.scale, scale, rel_tol=1e-9)
        ]
        if off:
            first = off[0]
            examples = ", ".join(
                f"{m.path} (r={m.rank}, alpha={m.alpha:g}, scale {m.scale:g})" for m in off[:3]
            )
            out.add(
                "vllm_misscaled",
                label,
                first.path,
                f"{len(off)} module(s) scale differently from the top-level lora_alpha/r = {alpha_value:g}/"
                f"{r_value:g} = {scale:g} that vLLM applies to every module, e.g. {examples}; vLLM would "
                "silently mis-scale them (rank_pattern / alpha_pattern) — fold the scales into lora_B first",
                expected=scale,
                actual=first.scale,
            )
    if adapter.use_dora or config.get("use_dora"):
        out.add(
            "vllm_dora",
            label,
            None,
            "the adapter uses DoRA (lora_magnitude_vector); vLLM refuses it",
        )
    if any(m.bias is not None for m in adapter.modules.values()) or config.get("lora_bias"):
        out.add(
            "vllm_lora_bias",
            label,
            None,
            "the adapter has lora_bias (lora_B.bias tensors); vLLM refuses it",
        )
    if config.get("modules_to_save") or any(
        r.reason == "modules_to_save" for r in adapter.replacements
    ):
        out.add(
            "vllm_modules_to_save",
            label,
            None,
            f"the adapter saves full modules (modules_to_save={config.get('modules_to_save')!r}); vLLM refuses it",
        )
    bias = config.get("bias", "none")
    if bias not in (None, "none"):
        out.add(
            "vllm_bias",
            label,
            None,
            f"bias is {bias!r}; vLLM refuses bias != 'none' unless started with bias support",
            expected="none",
            actual=bias,
        )


def _check_group(items: Sequence[tuple[str, Adapter, _Resolved | None]], out: _Collector) -> None:
    fingerprints = {label: recorded_base_fingerprint(a) for label, a, _ in items}
    distinct = {fp for fp in fingerprints.values() if fp is not None}
    if len(distinct) > 1:
        out.add(
            "group_different_bases",
            None,
            None,
            "the adapters record different base fingerprints: "
            + ", ".join(f"{label}: {fp[:16]}…" for label, fp in fingerprints.items() if fp)
            + "; they were trained on different weights and cannot be merged or combined together",
            actual=sorted(distinct),
        )
    names = {
        label: str(a.config.get("base_model_name_or_path"))
        for label, a, _ in items
        if isinstance(a.config.get("base_model_name_or_path"), str)
        and a.config.get("base_model_name_or_path")
    }
    if len({_norm_name(n) for n in names.values()}) > 1:
        out.add(
            "group_base_names_differ",
            None,
            None,
            "the adapters name different base models: "
            + ", ".join(f"{label}: {name!r}" for label, name in names.items()),
            actual=sorted(set(names.values())),
        )
    replaced: dict[str, list[str]] = {}
    replaced_by: dict[str, list[tuple[Adapter, str]]] = {}
    dora: dict[str, list[str]] = {}
    deltas: dict[str, list[str]] = {}
    tokens: dict[str, list[tuple[str, set[int]]]] = {}
    for label, adapter, res in items:
        if res is None:  # no base: compare the adapters' own names
            res = _Resolved()
            for module in adapter.modules.values():
                res.deltas.setdefault(module.weight_name, []).append(module)
            for rep in adapter.replacements:
                res.replaced[rep.target] = rep.tensor.key
            for tok in adapter.trainable_tokens:
                res.tokens.setdefault(tok.target, set()).update(tok.indices)
        for name, key in res.replaced.items():
            replaced.setdefault(name, []).append(label)
            replaced_by.setdefault(name, []).append((adapter, key))
        for name, modules in res.deltas.items():
            deltas.setdefault(name, []).append(label)
            if any(m.magnitude is not None for m in modules):
                dora.setdefault(name, []).append(label)
        for name, rows in res.tokens.items():
            tokens.setdefault(name, []).append((label, rows))
    for name, labels in sorted(replaced.items()):
        if len(labels) > 1 and not _identical_tensors(replaced_by[name]):
            out.add(
                "group_replacement_conflict",
                None,
                name,
                f"{name!r} is replaced in full by {len(labels)} adapters ({', '.join(labels)}); a full replacement "
                "cannot be combined with another — merge them one at a time or drop one",
                actual=labels,
            )
    for name, labels in sorted(dora.items()):
        others = [label for label in deltas[name] if label not in labels] + labels[1:]
        if others:
            out.add(
                "group_dora_conflict",
                None,
                name,
                f"{name!r} gets a DoRA module from {labels[0]} and deltas from {', '.join(others)}; DoRA merged with "
                "other adapters on one layer depends on the order — merge them one at a time",
                actual=[labels[0], *others],
            )
    for name, entries in sorted(tokens.items()):
        for i in range(len(entries)):
            for j in range(i + 1, len(entries)):
                overlap = entries[i][1] & entries[j][1]
                if overlap:
                    out.add(
                        "group_token_conflict",
                        None,
                        name,
                        f"{entries[i][0]} and {entries[j][0]} both replace rows {sorted(overlap)[:10]} of {name!r}",
                        actual=sorted(overlap)[:10],
                    )


# --- entry point --------------------------------------------------------------------------


def _identical_tensors(entries: Sequence[tuple[Adapter, str]]) -> bool:
    """Whether the adapters' tensors are byte for byte the same (PEFT saves identical copies
    of an unchanged embedding in every adapter that targets it; those do not conflict)."""
    digests = set()
    for adapter, key in entries:
        meta = adapter.tensors.get(key)
        if meta is None:
            return False
        digest = hashlib.sha256(f"{meta.dtype}{meta.shape}".encode())
        for chunk in iter_tensor_bytes(adapter, meta):
            digest.update(chunk)
        digests.add(digest.hexdigest())
    return len(digests) == 1


def _open_base(
    base: Path | Checkpoint | None,
    base_signature: Path | BaseSignature | Mapping[str, object] | None,
    out: _Collector,
) -> _Base | None:
    if base is not None and base_signature is not None:
        raise InvalidInputError("pass either a base folder or a base signature, not both")
    try:
        if isinstance(base, Checkpoint):
            return _Base(signature_of_checkpoint(base), base)
        if base is not None:
            checkpoint = open_checkpoint(base)
            return _Base(signature_of_checkpoint(checkpoint), checkpoint)
        if isinstance(base_signature, BaseSignature):
            return _Base(base_signature, None)
        if isinstance(base_signature, Mapping):
            return _Base(parse_signature(dict(base_signature)), None)
        if base_signature is not None:
            return _Base(load_signature(base_signature), None)
    except LoradexError as exc:
        out.error_from(exc, None)
    return None


def check_adapters(
    adapters: Sequence[Path | Adapter],
    *,
    base: Path | Checkpoint | None = None,
    base_signature: Path | dict | BaseSignature | None = None,
    verify_weights: bool = False,
    serving: str | ServingProfile | None = None,
    cache_dir: Path | None = None,
    cross_check_merge: bool = True,
) -> CheckReport:
    """Check adapters against a base (folder, :class:`Checkpoint` or signature), a server and each other.

    Never raises for a bad adapter or base (those are findings); raises
    :class:`InvalidInputError` for a bad call (both bases, an unknown serving profile).
    With a real base and ``cross_check_merge``, a clean report is confirmed by planning the
    merge, so ``check`` never passes what ``merge`` refuses (the merge itself skips this: it
    plans anyway).
    """
    profile = parse_serving(serving) if isinstance(serving, str) else serving
    out = _Collector()
    base_view = _open_base(base, base_signature, out)
    if base_view is not None:
        if verify_weights:
            if base_view.checkpoint is not None:
                from mergetools.fingerprint import fingerprint_checkpoint

                try:
                    base_view.fingerprint = fingerprint_checkpoint(
                        base_view.checkpoint, cache_dir=cache_dir
                    )
                except LoradexError as exc:
                    out.error_from(exc, None)
            elif base_view.view.fingerprint is None:
                out.add(
                    "verify_weights_unavailable",
                    None,
                    None,
                    f"--verify-weights needs the base weights, but {base_view.view.source} is a signature without "
                    "a fingerprint; write it with `loradex inspect BASE --signature --fingerprint`",
                )
        if base_view.fingerprint is None:
            base_view.fingerprint = base_view.view.fingerprint

    labels: list[str] = []
    parsed: list[tuple[str, Adapter, _Resolved | None]] = []
    fingerprints: dict[str, str] = {}
    for item in adapters:
        label, adapter = _open_adapter(item, out)
        labels.append(label)
        if adapter is None:
            continue
        try:
            scan = scan_adapter_tensors(adapter)
        except LoradexError as exc:
            out.error_from(exc, label)
            continue
        fingerprints[label] = scan.fingerprint
        _check_intrinsic(adapter, label, out, scan)
        resolved = None
        if base_view is not None:
            resolved = _check_against_base(adapter, label, base_view, out)
            _check_identity(adapter, label, base_view, out, verify_weights=verify_weights)
        if profile is not None:
            _check_serving(adapter, label, profile, base_view, out)
        parsed.append((label, adapter, resolved))
    if len(parsed) > 1:
        _check_group(parsed, out)

    if (
        cross_check_merge
        and base_view is not None
        and base_view.checkpoint is not None
        and parsed
        and len(parsed) == len(labels)
        and not any(f.severity == "error" for f in out.findings)
    ):
        from mergetools.plan import plan_merge

        try:
            plan_merge(base_view.checkpoint, [a for _, a, _ in parsed])
        except LoradexError as exc:
            out.add("merge_refused", None, None, exc.message)

    return CheckReport(
        findings=out.findings,
        adapters=labels,
        base=base_view.view.source if base_view is not None else None,
        base_fingerprint=base_view.fingerprint if base_view is not None else None,
        adapter_fingerprints=fingerprints,
        serving=_serving_label(profile),
    )


def _serving_label(profile: ServingProfile | None) -> str | None:
    if profile is None:
        return None
    return f"vllm:max_rank={profile.max_lora_rank}" if profile.name == "vllm" else "lorax"


def iter_codes() -> Iterable[tuple[str, Severity, str]]:
    """Every finding code with its severity and meaning (for docs and ``--help``)."""
    for code, (severity, meaning) in CODES.items():
        yield code, severity, meaning
