"""Extract a LoRA adapter from a fully fine-tuned checkpoint: a truncated SVD of ``tuned - base``.

Streaming: both checkpoints are opened header-only (:func:`mergetools.checkpoint.open_checkpoint`)
and each tensor pair is read, decomposed and dropped before the next, so memory is bounded by one
module (plus the small factors kept for the output), not by the model.

Per tensor of the tuned checkpoint (names mapped onto the base's with the merge's rules, see
:func:`mergetools.checkpoint.infer_name_map`):

- byte-identical to the base: skipped;
- a different shape: refused, naming the tensor;
- a 2-D linear weight: ``lora_A``/``lora_B`` with ``lora_B @ lora_A`` the truncation of the
  (out, in) delta. GPT-2's Conv1D weights are stored (in, out): for ``model_type == "gpt2"`` the
  stored delta is transposed first and the adapter says ``fan_in_fan_out: true``;
- an input embedding (``embed_tokens``, ``wte``, ``word_embeddings``, ...; stored (vocab, dim)):
  ``lora_embedding_A`` (k, vocab) / ``lora_embedding_B`` (dim, k) of the (dim, vocab) delta.T;
- anything else (1-D norms and biases, conv kernels, integer buffers): kept as a full tensor when
  its kind is in ``keep_full`` (norms as ``modules_to_save`` modules, biases of linear layers as
  ``<path>.base_layer.bias``), otherwise listed in the result as not extracted.

The SVD is :func:`mergetools.algebra.spectral.randomized_svd` (a seeded randomized range finder
with ``rank + oversample`` columns and ``power_iters`` re-orthonormalised power iterations), on
the GPU when there is one. On ``verify_modules`` modules (the first decomposed module of each
shape, in checkpoint order, until that many), the exact dense SVD is also computed and the randomized error is reported next to the optimum's.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from mergetools.algebra.factors import Factors
from mergetools.algebra.requests_lowrank import ExtractRequest
from mergetools.algebra.spectral import (
    Truncation,
    dense_svd,
    randomized_svd,
    randomized_svd_energy,
    relative_error,
)
from mergetools.algebra.writer import WrittenAdapter, write_adapter_with_full_tensors
from mergetools.checkpoint import (
    OUTPUT_EMBEDDING_NAMES,
    Checkpoint,
    infer_name_map,
    open_checkpoint,
)
from mergetools.errors import IncompatibleError, InvalidInputError
from mergetools.fingerprint import HEAD_COMPONENTS
from mergetools.merge import pick_device
from mergetools.outdir import ProtectedPath, check_output_path, input_guards
from mergetools.safetensors_io import FLOAT_DTYPES

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

EMBEDDING_COMPONENTS = frozenset(
    {
        "embed_tokens", "wte", "wpe", "word_embeddings", "position_embeddings", "token_type_embeddings",
        "embed_in", "embed_positions", "shared",
    }
)
"""Last module-name components of ``nn.Embedding`` layers (PEFT wraps them as embeddings)."""

TASK_PREFIXES = {"gpt2": "transformer", "bert": "bert", "llama": "model", "mistral": "model", "qwen2": "model"}
"""Base-model prefix of a task model (``GPT2LMHeadModel.transformer``) by ``model_type``: a head
model saved without it (older GPT-2 files: ``h.0...``) gets it back in the adapter's module paths."""

_NORM_RE = re.compile(r"(norm|^ln_|^ln$|layernorm)", re.IGNORECASE)

TensorKind = Literal["linear", "embedding", "norm", "bias", "other"]


@dataclass(frozen=True)
class ModuleExtract:
    """One decomposed module: its rank, kept energy and error."""

    path: str
    tensor: str
    kind: Literal["linear", "embedding"]
    shape: tuple[int, ...]
    rank: int
    kept_energy: float
    relative_error: float
    """``||dW - B A||_F / ||dW||_F`` of what was written."""
    exact_error: float | None = None
    """The optimum (exact dense SVD at the same rank), on the verified sample only."""

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "tensor": self.tensor,
            "kind": self.kind,
            "shape": list(self.shape),
            "rank": self.rank,
            "kept_energy": self.kept_energy,
            "relative_error": self.relative_error,
            "exact_error": self.exact_error,
        }


@dataclass
class ExtractResult:
    """What :func:`extract_lora` wrote, and what it could not express."""

    written: WrittenAdapter
    modules: list[ModuleExtract]
    kept_full: list[str]
    not_extracted: list[tuple[str, str]]
    """(tensor, why) for changed tensors that are in neither the LoRA nor the kept full tensors."""
    unchanged: int
    device: str
    seconds: float
    request: ExtractRequest = field(repr=False)
    svd_method: str = ""

    @property
    def max_relative_error(self) -> float:
        return max((m.relative_error for m in self.modules), default=0.0)

    def verified(self) -> list[ModuleExtract]:
        return [m for m in self.modules if m.exact_error is not None]

    def to_dict(self) -> dict[str, object]:
        return {
            "out": str(self.written.out),
            "request": self.request.to_dict(),
            "svd": self.svd_method,
            "device": self.device,
            "max_rank": max(self.written.ranks.values()),
            "max_relative_error": self.max_relative_error,
            "modules": [m.to_dict() for m in self.modules],
            "verified": [m.to_dict() for m in self.verified()],
            "kept_full": list(self.kept_full),
            "not_extracted": [{"tensor": t, "reason": r} for t, r in self.not_extracted],
            "unchanged_tensors": self.unchanged,
            "seconds": self.seconds,
            "files": dict(self.written.files),
        }


def classify(name: str, shape: tuple[int, ...], dtype: str, *, shapes: dict[str, tuple[int, ...]]) -> TensorKind:
    """What kind of tensor ``name`` is, from its name, shape and its siblings' shapes."""
    if dtype not in FLOAT_DTYPES:
        return "other"
    module, _, param = name.rpartition(".")
    last = module.rpartition(".")[2]
    if len(shape) == 2 and param == "weight":
        return "embedding" if last in EMBEDDING_COMPONENTS else "linear"
    if len(shape) == 1:
        if param == "bias" and len(shapes.get(f"{module}.weight", ())) == 2:
            return "bias"
        if _NORM_RE.search(last):
            return "norm"
    return "other"


def _gpt2_conv1d(checkpoint: Checkpoint) -> bool:
    """GPT-2 stores its block linears as Conv1D, weights (in, out)."""
    model_type = checkpoint.config.get("model_type")
    return model_type == "gpt2" or any(a.startswith("GPT2") for a in checkpoint.architectures)


def _task_prefix(checkpoint: Checkpoint) -> str:
    """The prefix to add to stored names to get the task model's module paths ('' if none)."""
    prefix = TASK_PREFIXES.get(str(checkpoint.config.get("model_type")))
    archs = checkpoint.architectures
    if prefix is None or not archs or re.fullmatch(r"[A-Za-z0-9]+Model", archs[0]) and not archs[0].endswith("LMHeadModel"):
        return ""
    firsts = {n.split(".", 1)[0] for n in checkpoint.tensors}
    if prefix.split(".", 1)[0] in firsts:
        return ""
    return prefix + "."


def _module_path(name: str, prefix: str) -> str:
    module = name.rpartition(".")[0]
    if prefix and module.split(".", 1)[0] not in HEAD_COMPONENTS:
        return prefix + module
    return module


def extract_lora(
    request: ExtractRequest,
    out: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    tuned: str | os.PathLike[str] | None = None,
    base_model_name_or_path: str | None = None,
    force: bool = False,
    protected: Sequence[ProtectedPath] = (),
    fsync: bool = True,
    progress: Progress | None = None,
    label: str | None = None,
) -> ExtractResult:
    """Extract ``tuned - base`` as a LoRA adapter at ``out`` (atomically; nothing on failure).

    ``base``/``tuned`` default to the request's (already resolved folders); the adapter's
    ``base_model_name_or_path`` defaults to ``request.base``.
    """
    started = time.perf_counter()
    inputs = [Path(base if base is not None else request.base), Path(tuned if tuned is not None else request.tuned)]
    check_output_path(out, inputs, force=force, protected=protected)
    base_ckpt = open_checkpoint(inputs[0])
    tuned_ckpt = open_checkpoint(inputs[1])
    device = pick_device(request.device)
    name_map = infer_name_map(base_ckpt.tensors, list(tuned_ckpt.tensors), source=str(tuned_ckpt.path))
    pairs: list[tuple[str, str]] = []
    for name, t in tuned_ckpt.tensors.items():
        mapped = name_map.apply(name)
        base_name = mapped if mapped in base_ckpt.tensors else name if name in base_ckpt.tensors else None
        if base_name is None:
            raise IncompatibleError(
                f"{tuned_ckpt.path}: tensor {name!r} has no counterpart in the base {base_ckpt.path}; "
                "was it fine-tuned from another base?"
            )
        b = base_ckpt.tensors[base_name]
        if b.shape != t.shape:
            raise IncompatibleError(
                f"{tuned_ckpt.path}: tensor {name!r} is {t.shape} but the base's {base_name!r} is {b.shape}; "
                "a LoRA cannot change shapes (was the vocabulary resized?)"
            )
        pairs.append((name, base_name))
    shapes = {n: t.shape for n, t in tuned_ckpt.tensors.items()}
    kinds = {n: classify(n, t.shape, t.dtype, shapes=shapes) for n, t in tuned_ckpt.tensors.items()}
    conv1d = _gpt2_conv1d(tuned_ckpt)
    prefix = _task_prefix(tuned_ckpt)
    verified_shapes: set[tuple[int, ...]] = set()
    total = sum(t.shape[0] * (t.shape[1] if len(t.shape) > 1 else 1) for t in tuned_ckpt.tensors.values())
    done = 0

    modules: dict[str, Factors] = {}
    reports: list[ModuleExtract] = []
    full: dict[str, torch.Tensor] = {}
    kept: list[str] = []
    to_save: set[str] = set()
    not_extracted: list[tuple[str, str]] = []
    kept_biases: list[str] = []
    unchanged = 0
    for name, base_name in pairs:
        t_meta = tuned_ckpt.tensors[name]
        tuned_t = tuned_ckpt.load(name)
        base_t = base_ckpt.load(base_name)
        done += max(1, tuned_t.numel())
        if torch.equal(tuned_t, base_t) and tuned_t.dtype == base_t.dtype:
            unchanged += 1
            if progress is not None:
                progress(done, total)
            continue
        kind = kinds[name]
        if kind in ("linear", "embedding"):
            delta = tuned_t.to(device=device, dtype=torch.float32) - base_t.to(device=device, dtype=torch.float32)
            del tuned_t, base_t
            transposed = kind == "embedding" or (conv1d and not name.startswith(("lm_head", "score")))
            if transposed:
                delta = delta.T
            cut = _decompose(delta, request)
            error = relative_error(delta, cut)
            exact: float | None = None
            if len(verified_shapes) < request.verify_modules and tuple(delta.shape) not in verified_shapes:
                verified_shapes.add(tuple(delta.shape))
                exact = relative_error(delta, dense_svd(delta, cut.rank))
            lora_a, lora_b = cut.factors()
            path = _module_path(name, prefix)
            modules[path] = Factors(kind, lora_a.cpu(), lora_b.cpu())
            reports.append(
                ModuleExtract(path, name, kind, tuple(t_meta.shape), cut.rank, cut.kept_energy, error, exact)
            )
            del delta, cut
        elif kind in request.keep_full:
            if kind == "norm":
                to_save.add(_module_path(name, prefix))
                full[_module_path(name, prefix) + "." + name.rpartition(".")[2]] = tuned_t
            else:
                full[name] = tuned_t  # re-keyed below, once the LoRA modules are known
                kept_biases.append(name)
            kept.append(name)
        else:
            why = {
                "norm": "a norm weight cannot be decomposed; keep it with keep_full norm",
                "bias": "a bias cannot be decomposed; keep it with keep_full bias",
                "other": f"a {len(t_meta.shape)}-D {t_meta.dtype} tensor extract does not decompose",
            }[kind]
            not_extracted.append((name, why))
        if progress is not None:
            progress(done, total)

    _tie_output_embedding(tuned_ckpt, modules, reports, prefix)
    bias_mode = "none"
    for name in kept_biases:
        tensor = full.pop(name)
        module = _module_path(name, prefix)
        if module in modules:
            full[f"{module}.base_layer.bias"] = tensor
            bias_mode = "lora_only" if bias_mode in ("none", "lora_only") else bias_mode
        else:
            full[f"{module}.bias"] = tensor
            bias_mode = "all"
    if not modules:
        raise InvalidInputError(
            f"{tuned_ckpt.path}: no linear or embedding weight differs from the base {base_ckpt.path}; "
            "there is nothing to extract"
        )
    task_type = "CAUSAL_LM" if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in tuned_ckpt.architectures) else None
    written = write_adapter_with_full_tensors(
        out,
        modules,
        full_tensors=full,
        modules_to_save=sorted(to_save),
        bias=bias_mode,
        base_model_name_or_path=base_model_name_or_path or request.base,
        task_type=task_type,
        fan_in_fan_out=conv1d,
        force=force,
        protected=input_guards(inputs, protected),
        fsync=fsync,
        label=label,
    )
    seconds = time.perf_counter() - started
    method = (
        f"randomized range finder (oversample {request.oversample}, {request.power_iters} power iterations, "
        f"seed {request.seed}); exact dense SVD on {len([r for r in reports if r.exact_error is not None])} "
        "verified modules"
    )
    logger.info("extracted %d modules from %s in %.2fs on %s", len(modules), tuned_ckpt.path, seconds, device)
    return ExtractResult(
        written, reports, kept, not_extracted, unchanged, str(device), seconds, request, method
    )


def _tie_output_embedding(
    checkpoint: Checkpoint, modules: dict[str, Factors], reports: list[ModuleExtract], prefix: str
) -> None:
    """A tied model's output head is the input embedding: give ``lm_head`` the same delta.

    PEFT adds a ``lora_embedding`` delta only to the embedding's lookup, not to the tied head
    that shares its weight, so the head gets its own linear module with the transposed factors
    (``B' = A.T``, ``A' = B.T``: ``B' @ A' = (B @ A).T``, the (vocab, dim) delta).
    """
    embed = checkpoint.input_embedding_name()
    if embed is None or not checkpoint.tie_word_embeddings:
        return
    if any(n in checkpoint.tensors for n in OUTPUT_EMBEDDING_NAMES):
        return
    path = _module_path(embed, prefix)
    factors = modules.get(path)
    if factors is None:
        return
    head = OUTPUT_EMBEDDING_NAMES[0].rpartition(".")[0]
    modules[head] = Factors("linear", factors.lora_b.T.contiguous(), factors.lora_a.T.contiguous())
    source = next(r for r in reports if r.path == path)
    reports.append(
        ModuleExtract(
            head, source.tensor, "linear", source.shape, source.rank, source.kept_energy,
            source.relative_error, source.exact_error,
        )
    )


def _decompose(delta: torch.Tensor, request: ExtractRequest) -> Truncation:
    if request.rank is not None:
        return randomized_svd(
            delta, request.rank, oversample=request.oversample, power_iters=request.power_iters, seed=request.seed
        )
    return randomized_svd_energy(
        delta,
        float(request.energy or 1.0),
        oversample=request.oversample,
        power_iters=request.power_iters,
        seed=request.seed,
    )
