"""Serving profiles: what vLLM and LoRAX accept, checked before an adapter is published.

``vllm`` (``vllm:max_rank=N``) refuses ranks above ``max_lora_rank``, DoRA, ``lora_bias``,
``modules_to_save`` and ``bias != 'none'``, and applies one ``lora_alpha / r`` to every module;
``lorax`` refuses an adapter trained on another base architecture.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mergetools.adapter import Adapter
from mergetools.errors import InvalidInputError, LoradexError
from mergetools.files import read_json_object
from mergetools.findings import FindingCollector
from mergetools.folder import Folder
from mergetools.inspect import VLLM_MAX_LORA_RANKS, variant_flags, vllm_max_lora_rank
from mergetools.signature import BaseSignature

logger = logging.getLogger(__name__)


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


def serving_label(profile: ServingProfile | None) -> str | None:
    """How a report names the profile: ``vllm:max_rank=N`` or ``lorax`` (None without one)."""
    if profile is None:
        return None
    return f"vllm:max_rank={profile.max_lora_rank}" if profile.name == "vllm" else "lorax"


def _global_scale(config: Mapping[str, object]) -> tuple[float, float, float | None]:
    """(r, lora_alpha, the one scale vLLM applies to every module; None when r <= 0)."""
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
    """The base architectures the adapter records (auto_mapping, its or a local base's config.json)."""
    mapping = adapter.config.get("auto_mapping")
    if isinstance(mapping, dict) and isinstance(mapping.get("base_model_class"), str):
        return [mapping["base_model_class"]]
    candidates = [adapter.path]
    name = adapter.config.get("base_model_name_or_path")
    if isinstance(name, str) and name and (os.sep in name or name.startswith(".")):
        candidates.append(Path(name).expanduser())
    for candidate in candidates:
        try:
            # Only a config.json inside that folder (links leaving it refused), size-limited.
            config = Folder.open(candidate).file("config.json")
            if config is None:
                continue
            data = read_json_object(config, what="config.json", kind="config")
        except (LoradexError, OSError):
            continue
        archs = data.get("architectures")
        if isinstance(archs, list) and all(isinstance(a, str) for a in archs):
            return list(archs)
    return None


def check_serving(
    adapter: Adapter,
    label: str,
    profile: ServingProfile,
    base: BaseSignature | None,
    out: FindingCollector,
) -> None:
    """Add the findings for what ``profile``'s server refuses or mis-serves in ``adapter``.

    LoRAX compares architectures only when a ``base`` is given.
    """
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
        elif base.architectures and archs != base.architectures:
            out.add(
                "lorax_architecture_mismatch",
                label,
                None,
                f"the adapter's base architectures are {archs} but the served base's are "
                f"{base.architectures}; LoRAX refuses it",
                expected=base.architectures,
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
    flags = variant_flags(adapter)
    if flags["dora"]:
        out.add(
            "vllm_dora",
            label,
            None,
            "the adapter uses DoRA (lora_magnitude_vector); vLLM refuses it",
        )
    if flags["lora_bias"]:
        out.add(
            "vllm_lora_bias",
            label,
            None,
            "the adapter has lora_bias (lora_B.bias tensors); vLLM refuses it",
        )
    if flags["modules_to_save"]:
        out.add(
            "vllm_modules_to_save",
            label,
            None,
            f"the adapter saves full modules (modules_to_save={config.get('modules_to_save')!r}); vLLM refuses it",
        )
    if flags["bias"]:
        bias = config.get("bias", "none")
        out.add(
            "vllm_bias",
            label,
            None,
            f"bias is {bias!r}; vLLM refuses bias != 'none' unless started with bias support",
            expected="none",
            actual=bias,
        )
