"""Write a PEFT LoRA adapter folder: the counterpart of :func:`mergetools.adapter.load_adapter`.

The folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (``"format": "pt"``
metadata), plus any side files the caller passes (a tokenizer, a card), and is written through
:func:`mergetools.outdir.atomic_output_folder` (temp folder, fsync, rename).

Every module has scale 1: the factors already include it (:class:`~mergetools.algebra.factors.
Factors`), so ``lora_alpha == r`` and, where ranks differ per module, ``alpha_pattern ==
rank_pattern``; no rslora. vLLM applies one global ``lora_alpha / r`` and PEFT applies the
patterns, and both then compute exactly the stored ``lora_b @ lora_a``. The top-level ``r`` is the
largest rank (what vLLM compares with ``max_lora_rank``); ``target_modules`` lists the stored
modules' full paths, so PEFT wraps exactly those.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mergetools.adapter import CONFIG_FILE, KEY_PREFIX
from mergetools.algebra.factors import Factors
from mergetools.errors import InvalidInputError
from mergetools.files import sha256_file, write_json
from mergetools.inspect import BASE_FINGERPRINT_CONFIG_KEY
from mergetools.outdir import ProtectedPath, atomic_output_folder
from mergetools.safetensors_io import save_tensors

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass
class WrittenAdapter:
    """What :func:`write_adapter` wrote."""

    out: Path
    files: dict[str, str]  # relative path -> sha256
    ranks: dict[str, int]
    config: dict[str, object] = field(repr=False)

    def to_dict(self) -> dict[str, object]:
        return {"out": str(self.out), "files": dict(self.files), "ranks": dict(self.ranks)}


def adapter_config(
    modules: Mapping[str, Factors],
    *,
    base_model_name_or_path: str | None,
    task_type: str | None = None,
    fan_in_fan_out: bool = False,
    base_fingerprint: str | None = None,
) -> dict[str, object]:
    """The ``adapter_config.json`` that describes ``modules`` exactly (scale 1 everywhere).

    ``base_fingerprint`` (when the sources record one) is kept as ``loradex_base_fingerprint``.
    """
    if not modules:
        raise InvalidInputError("an adapter needs at least one module; nothing to write")
    ranks = {path: f.rank for path, f in sorted(modules.items())}
    top = max(ranks.values())
    pattern = {path: r for path, r in ranks.items() if r != top}
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": top,
        "lora_alpha": top,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks),
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "lora_bias": any(f.bias is not None for f in modules.values()),
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "revision": None,
        **({BASE_FINGERPRINT_CONFIG_KEY: base_fingerprint} if base_fingerprint else {}),
    }


def adapter_tensors(
    modules: Mapping[str, Factors], *, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The state dict PEFT saves for ``modules`` (keys ``base_model.model.<path>.lora_A.weight``...)."""
    tensors: dict[str, torch.Tensor] = {}
    for path, f in sorted(modules.items()):
        stem = KEY_PREFIX + path
        if f.kind == "embedding":
            tensors[f"{stem}.lora_embedding_A"] = f.lora_a.to(dtype).contiguous()
            tensors[f"{stem}.lora_embedding_B"] = f.lora_b.to(dtype).contiguous()
        else:
            tensors[f"{stem}.lora_A.weight"] = f.lora_a.to(dtype).contiguous()
            tensors[f"{stem}.lora_B.weight"] = f.lora_b.to(dtype).contiguous()
        if f.bias is not None:
            tensors[f"{stem}.lora_B.bias"] = f.bias.to(dtype).contiguous()
    for key, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise InvalidInputError(f"{key}: the result holds NaN or Inf; nothing was written")
    return tensors


def write_adapter(
    out: str | os.PathLike[str],
    modules: Mapping[str, Factors],
    *,
    base_model_name_or_path: str | None,
    task_type: str | None = None,
    fan_in_fan_out: bool = False,
    dtype: torch.dtype = torch.float32,
    side_files: Mapping[str, Path] | None = None,
    force: bool = False,
    protected: Sequence[ProtectedPath] = (),
    fsync: bool = True,
    label: str | None = None,
    base_fingerprint: str | None = None,
) -> WrittenAdapter:
    """Write ``modules`` as a PEFT adapter folder at ``out`` (atomically; nothing on failure).

    ``side_files`` maps names in the output to files to copy (a tokenizer, a card); they may not
    shadow the config or the weights.
    """
    config = adapter_config(
        modules,
        base_model_name_or_path=base_model_name_or_path,
        task_type=task_type,
        fan_in_fan_out=fan_in_fan_out,
        base_fingerprint=base_fingerprint,
    )
    tensors = adapter_tensors(modules, dtype=dtype)
    extra = dict(side_files or {})
    for name in extra:
        if name in (CONFIG_FILE, WEIGHTS_FILE) or "/" in name or name.startswith("."):
            raise InvalidInputError(f"side file name {name!r} is reserved or not a plain file name")
    out_path = Path(out)
    with atomic_output_folder(
        out_path, kind="adapter", force=force, protected=protected, fsync=fsync, label=label
    ) as tmp:
        write_json(tmp / CONFIG_FILE, config)
        save_tensors(tmp / WEIGHTS_FILE, tensors, fsync=False)  # fsynced with the folder
        for name, source in sorted(extra.items()):
            shutil.copyfile(source, tmp / name)
        files = {
            name: sha256_file(tmp / name) for name in (CONFIG_FILE, WEIGHTS_FILE, *sorted(extra))
        }
    ranks = {path: f.rank for path, f in sorted(modules.items())}
    counts = Counter(ranks.values())
    logger.info("wrote adapter %s: %d modules, ranks %s", out_path, len(ranks), dict(counts))
    return WrittenAdapter(out=out_path, files=files, ranks=ranks, config=config)


def write_adapter_with_full_tensors(
    out: str | os.PathLike[str],
    modules: Mapping[str, Factors],
    *,
    full_tensors: Mapping[str, torch.Tensor],
    modules_to_save: Sequence[str] = (),
    bias: str = "none",
    base_model_name_or_path: str | None,
    task_type: str | None = None,
    fan_in_fan_out: bool = False,
    dtype: torch.dtype = torch.float32,
    force: bool = False,
    protected: Sequence[ProtectedPath] = (),
    fsync: bool = True,
    label: str | None = None,
) -> WrittenAdapter:
    """:func:`write_adapter` plus full tensors that replace base tensors (e.g. from extract).

    ``full_tensors`` maps key stems after ``base_model.model.`` to tensors stored as given (in
    their own dtype): ``model.norm.weight`` for a parameter of a ``modules_to_save`` module
    (listed in ``modules_to_save`` by module path, which is how PEFT wraps whole modules), or
    ``<path>.base_layer.bias`` for the bias of a LoRA-wrapped layer (``bias`` is then
    ``"lora_only"`` or ``"all"``). loradex's own reader takes every such key as a full
    replacement of the base tensor it names (``.base_layer.`` dropped); PEFT loads them into the
    wrapped modules. vLLM refuses ``modules_to_save`` and ``bias != "none"``: ``loradex check``
    says so.
    """
    config = adapter_config(
        modules,
        base_model_name_or_path=base_model_name_or_path,
        task_type=task_type,
        fan_in_fan_out=fan_in_fan_out,
    )
    config["modules_to_save"] = sorted(set(modules_to_save)) or None
    config["bias"] = bias
    tensors = adapter_tensors(modules, dtype=dtype)
    for stem, tensor in sorted(full_tensors.items()):
        key = KEY_PREFIX + stem
        if key in tensors:
            raise InvalidInputError(f"{key}: a full tensor collides with a LoRA tensor of the same name")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InvalidInputError(f"{key}: the tensor holds NaN or Inf; nothing was written")
        tensors[key] = tensor.contiguous()
    out_path = Path(out)
    with atomic_output_folder(
        out_path, kind="adapter", force=force, protected=protected, fsync=fsync, label=label
    ) as tmp:
        write_json(tmp / CONFIG_FILE, config)
        save_tensors(tmp / WEIGHTS_FILE, tensors, fsync=False)  # fsynced with the folder
        files = {name: sha256_file(tmp / name) for name in (CONFIG_FILE, WEIGHTS_FILE)}
    ranks = {path: f.rank for path, f in sorted(modules.items())}
    logger.info("wrote adapter %s: %d modules, %d full tensors", out_path, len(ranks), len(full_tensors))
    return WrittenAdapter(out=out_path, files=files, ranks=ranks, config=config)
