"""Summaries of adapters and base checkpoints (``loradex inspect``), header-first and torch-free.

An adapter summary reads ``adapter_config.json`` and the safetensors header, then streams the
adapter's tensor bytes once to compute its fingerprint and count non-finite values (adapters are
small). Neither step imports torch for a safetensors adapter; legacy ``adapter_model.bin`` files
are read with ``weights_only=True``.

Where an adapter records the fingerprint of the base it was trained on (so ``loradex check``
can prove it was trained on the same weights), loradex reads it from, in order:

1. ``adapter_config.json`` key ``loradex_base_fingerprint`` (64 lowercase hex digits), or
2. the ``__metadata__`` of ``adapter_model.safetensors``, key ``loradex.base_fingerprint``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mergetools.adapter import Adapter, TensorMeta, load_adapter
from mergetools.checkpoint import Checkpoint, open_checkpoint
from mergetools.safetensors_io import DTYPE_SIZES, pread_exact, read_header

logger = logging.getLogger(__name__)

BASE_FINGERPRINT_CONFIG_KEY = "loradex_base_fingerprint"
BASE_FINGERPRINT_METADATA_KEY = "loradex.base_fingerprint"
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``max_lora_rank`` values vLLM accepts."""

_READ_CHUNK = 16 << 20
_TORCH_DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
}
# dtype -> (numpy unsigned view, exponent mask, mantissa mask); exponent all ones = NaN or Inf.
_NONFINITE_MASKS: dict[str, tuple[str, int, int]] = {
    "F64": ("<u8", 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
    "F32": ("<u4", 0x7F800000, 0x007FFFFF),
    "F16": ("<u2", 0x7C00, 0x03FF),
    "BF16": ("<u2", 0x7F80, 0x007F),
    "F8_E5M2": ("u1", 0x7C, 0x03),
    "F8_E4M3": ("u1", 0x7F, 0x7F),  # e4m3fn: no infinities; S.1111.111 is NaN
}


def vllm_max_lora_rank(rank: int) -> int | None:
    """The smallest ``max_lora_rank`` vLLM accepts that is at least ``rank`` (None above 512)."""
    return next((r for r in VLLM_MAX_LORA_RANKS if r >= rank), None)


def torch_dtype_name(dtype: str) -> str:
    """``F32`` -> ``float32`` (as config files spell dtypes)."""
    return _TORCH_DTYPE_NAMES.get(dtype, dtype.lower())


@dataclass(frozen=True, slots=True)
class NonFinite:
    """Non-finite values found in one tensor."""

    key: str
    nan: int
    inf: int
    first_index: int


@dataclass(frozen=True, slots=True)
class TensorScan:
    """What one pass over an adapter's tensor bytes found."""

    fingerprint: str
    nonfinite: list[NonFinite]


def iter_tensor_bytes(adapter: Adapter, meta: TensorMeta) -> Iterator[memoryview]:
    """An adapter tensor's raw bytes in bounded chunks."""
    if meta.info is None:
        from mergetools.safetensors_io import tensor_bytes

        yield tensor_bytes(adapter.load(meta))
        return
    itemsize = DTYPE_SIZES[meta.info.dtype]
    step = max(itemsize, _READ_CHUNK - _READ_CHUNK % itemsize)
    fd = os.open(adapter.weights_file, os.O_RDONLY)
    try:
        buffer = memoryview(bytearray(min(step, meta.info.nbytes)))
        for offset in range(meta.info.start, meta.info.end, step):
            view = buffer[: min(step, meta.info.end - offset)]
            pread_exact(fd, view, offset, source=str(adapter.weights_file))
            yield view
    finally:
        os.close(fd)


def _count_nonfinite(data: memoryview, dtype: str) -> tuple[int, int, int]:
    """(nan, inf, first index within ``data``) of the non-finite values of a float buffer."""
    import numpy as np

    view_type, exp_mask, mant_mask = _NONFINITE_MASKS[dtype]
    values = np.frombuffer(data, dtype=view_type)
    exp_type = values.dtype.type
    special = (values & exp_type(exp_mask)) == exp_type(exp_mask)
    count = int(np.count_nonzero(special))
    if not count:
        return 0, 0, -1
    nan = int(np.count_nonzero(special & ((values & exp_type(mant_mask)) != 0)))
    first = int(np.argmax(special))
    return nan, count - nan, first


def scan_adapter_tensors(adapter: Adapter, *, check_finite: bool = True) -> TensorScan:
    """Fingerprint an adapter's tensors and count their NaN / Inf values in one pass.

    ``fingerprint = sha256(for each tensor in sorted key order: key NUL dtype NUL shape-JSON LF,
    then its raw bytes)`` — independent of tensor order in the file and of ``__metadata__``.
    """
    outer = hashlib.sha256()
    found: list[NonFinite] = []
    for key in sorted(adapter.tensors):
        meta = adapter.tensors[key]
        shape = json.dumps(list(meta.shape), separators=(",", ":"))
        outer.update(f"{key}\0{meta.dtype}\0{shape}\n".encode("utf-8", "surrogatepass"))
        itemsize = DTYPE_SIZES[meta.dtype]
        scan = check_finite and meta.dtype in _NONFINITE_MASKS
        nan = inf = 0
        first = -1
        position = 0
        for chunk in iter_tensor_bytes(adapter, meta):
            outer.update(chunk)
            if scan:
                n, i, f = _count_nonfinite(chunk, meta.dtype)
                if f >= 0 and first < 0:
                    first = position + f
                nan, inf = nan + n, inf + i
            position += len(chunk) // itemsize
        if nan or inf:
            found.append(NonFinite(key, nan, inf, first))
    return TensorScan(outer.hexdigest(), found)


@dataclass(frozen=True)
class AdapterSummary:
    """What an adapter is: targets, ranks, scaling, variant flags, size, identity."""

    path: str
    peft_type: str
    target_modules: list[str]
    """Leaf module names (``q_proj``), sorted."""
    max_rank: int
    ranks: dict[str, int]
    """Module path -> rank (``lora_A.shape[0]``)."""
    alphas: dict[str, float]
    alpha: float
    """The config's top-level ``lora_alpha``."""
    scale: float
    """The top-level scale: ``alpha / r`` (``alpha / sqrt(r)`` with rslora)."""
    scales: dict[str, float]
    use_dora: bool
    use_rslora: bool
    flags: dict[str, bool]
    dtype: str
    param_count: int
    nbytes: int
    adapter_fingerprint: str
    base_model_name_or_path: str | None
    revision: str | None
    base_fingerprint: str | None
    vllm_max_lora_rank: int | None
    """The smallest vLLM ``max_lora_rank`` at least max(config ``r``, largest tensor rank)."""
    num_tensors: int
    replaced_tensors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def recorded_base_fingerprint(adapter: Adapter) -> str | None:
    """The base fingerprint the adapter records (config key first, then safetensors metadata)."""
    value = adapter.config.get(BASE_FINGERPRINT_CONFIG_KEY)
    if isinstance(value, str) and value:
        return value
    if adapter.format == "safetensors":
        metadata = read_header(adapter.weights_file).metadata or {}
        value = metadata.get(BASE_FINGERPRINT_METADATA_KEY)
        if value:
            return value
    return None


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def variant_flags(adapter: Adapter) -> dict[str, bool]:
    """Which LoRA variants and extras the adapter uses, from its config and its tensors.

    Keys: ``dora``, ``rslora``, ``lora_bias``, ``bias``, ``embeddings``, ``modules_to_save``,
    ``trainable_tokens``, ``rank_pattern``, ``alpha_pattern`` (the serving checks refuse some).
    """
    config = adapter.config
    modules = adapter.modules
    bias = config.get("bias", "none")
    modules_to_save = config.get("modules_to_save")
    return {
        "dora": adapter.use_dora or bool(config.get("use_dora")),
        "rslora": adapter.use_rslora,
        "lora_bias": any(m.bias is not None for m in modules.values())
        or bool(config.get("lora_bias")),
        "bias": bias not in (None, "none"),
        "embeddings": any(m.kind == "embedding" for m in modules.values()),
        "modules_to_save": bool(modules_to_save)
        or any(r.reason == "modules_to_save" for r in adapter.replacements),
        "trainable_tokens": bool(adapter.trainable_tokens)
        or bool(config.get("trainable_token_indices")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
    }


def summarize_adapter(path: Path | Adapter, *, scan: TensorScan | None = None) -> AdapterSummary:
    """Summarise the adapter folder at ``path`` (or an already parsed :class:`Adapter`)."""
    adapter = path if isinstance(path, Adapter) else load_adapter(path, check_mergeable=False)
    config = adapter.config
    if scan is None:
        scan = scan_adapter_tensors(adapter, check_finite=False)
    modules = adapter.modules
    ranks = {p: m.rank for p, m in modules.items()}
    max_rank = max(ranks.values(), default=0)
    top_rank = config.get("r")
    top_rank_value = (
        int(top_rank)
        if isinstance(top_rank, int | float) and not isinstance(top_rank, bool)
        else max_rank
    )
    alpha_value = config.get("lora_alpha", 8)
    alpha = (
        float(alpha_value)
        if isinstance(alpha_value, int | float) and not isinstance(alpha_value, bool)
        else 8.0
    )
    rslora = adapter.use_rslora
    scale = 0.0
    if top_rank_value > 0:
        scale = alpha / math.sqrt(top_rank_value) if rslora else alpha / top_rank_value
    flags = variant_flags(adapter)
    factor_dtypes = sorted(
        {m.lora_a.dtype for m in modules.values()} | {m.lora_b.dtype for m in modules.values()}
    )
    if not factor_dtypes:
        factor_dtypes = sorted({t.dtype for t in adapter.tensors.values()})
    return AdapterSummary(
        path=str(adapter.path),
        peft_type=str(config.get("peft_type", "")),
        target_modules=sorted({p.rsplit(".", 1)[-1] for p in modules}),
        max_rank=max_rank,
        ranks=ranks,
        alphas={p: m.alpha for p, m in modules.items()},
        alpha=alpha,
        scale=scale,
        scales={p: m.scale for p, m in modules.items()},
        use_dora=flags["dora"],
        use_rslora=rslora,
        flags=flags,
        dtype=",".join(torch_dtype_name(d) for d in factor_dtypes),
        param_count=sum(math.prod(t.shape) for t in adapter.tensors.values()),
        nbytes=sum(math.prod(t.shape) * DTYPE_SIZES[t.dtype] for t in adapter.tensors.values()),
        adapter_fingerprint=scan.fingerprint,
        base_model_name_or_path=_opt_str(config.get("base_model_name_or_path")),
        revision=_opt_str(config.get("revision")),
        base_fingerprint=recorded_base_fingerprint(adapter),
        vllm_max_lora_rank=vllm_max_lora_rank(max(max_rank, top_rank_value)),
        num_tensors=len(adapter.tensors),
        replaced_tensors=sorted(r.target for r in adapter.replacements),
    )


@dataclass(frozen=True)
class CheckpointSummary:
    """What a base checkpoint is, from its config and headers (plus its fingerprint on request)."""

    path: str
    format: str
    architectures: list[str]
    model_type: str | None
    dtype: str | None
    vocab_size: int | None
    tie_word_embeddings: bool
    num_files: int
    num_tensors: int
    param_count: int
    nbytes: int
    tensor_dtypes: dict[str, int]
    """Safetensors dtype -> number of tensors."""
    name_prefix: str | None
    """The base-model name prefix the stored names carry (``model``, ``transformer``), if any."""
    name_or_path: str | None
    revision: str | None
    fingerprint: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize_checkpoint(
    path: Path | Checkpoint,
    *,
    fingerprint: bool = False,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CheckpointSummary:
    """Summarise a base checkpoint folder header-only; ``fingerprint=True`` also hashes its tensors."""
    from mergetools.fingerprint import canonical_names, fingerprint_checkpoint
    from mergetools.signature import base_identity

    checkpoint = path if isinstance(path, Checkpoint) else open_checkpoint(path)
    dtypes: dict[str, int] = {}
    for tensor in checkpoint.tensors.values():
        dtypes[tensor.dtype] = dtypes.get(tensor.dtype, 0) + 1
    canonical = canonical_names(checkpoint.tensors)
    prefixes = {n[: -len(c) - 1] for n, c in canonical.items() if n != c}
    name, revision = base_identity(checkpoint.path, checkpoint.config)
    model_type = checkpoint.config.get("model_type")
    return CheckpointSummary(
        path=str(checkpoint.path),
        format=checkpoint.format,
        architectures=checkpoint.architectures,
        model_type=str(model_type) if model_type is not None else None,
        dtype=checkpoint.dtype,
        vocab_size=checkpoint.vocab_size,
        tie_word_embeddings=checkpoint.tie_word_embeddings,
        num_files=len(checkpoint.files),
        num_tensors=len(checkpoint.tensors),
        param_count=sum(math.prod(t.shape) for t in checkpoint.tensors.values()),
        nbytes=sum(math.prod(t.shape) * DTYPE_SIZES[t.dtype] for t in checkpoint.tensors.values()),
        tensor_dtypes=dict(sorted(dtypes.items())),
        name_prefix=next(iter(prefixes)) if len(prefixes) == 1 else None,
        name_or_path=name,
        revision=revision,
        fingerprint=fingerprint_checkpoint(checkpoint, cache_dir=cache_dir, progress=progress)
        if fingerprint
        else None,
    )
