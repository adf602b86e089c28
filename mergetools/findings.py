"""Findings: the stable codes :mod:`mergetools.check` reports, and the records that carry them.

Every problem ``check`` can report has a ``code`` in :data:`CODES` with a severity and a one-line
meaning (docs/check.md lists them all). A run yields :class:`Finding` records collected into a
:class:`CheckReport`; the renderers in :mod:`mergetools.report` turn that into text, JSON, JUnit
XML or GitHub annotations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from mergetools.errors import LoradexError
from mergetools.labels import relabel_text

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
    "unreadable_tokenizer": (
        "error",
        "tokenizer files in the adapter folder do not parse or do not form a complete tokenizer",
    ),
    "invalid_config_field": (
        "error",
        "an adapter_config.json field has a type or value PEFT's LoraConfig refuses",
    ),
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
        "the adapter records a base fingerprint; verifying the weights would compare it",
    ),
    "verify_weights_unavailable": (
        "error",
        "verifying the weights needs the base weights or a signature with a fingerprint",
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
    "group_same_adapter": ("warning", "the same adapter is given twice; a merge without explicit weights refuses it"),
    "group_replacement_conflict": ("error", "two adapters replace the same base tensor"),
    "group_dora_conflict": ("error", "a DoRA module shares its layer with another adapter's delta"),
    "group_token_conflict": ("error", "two adapters replace the same token rows"),
}
"""Every finding code: its severity and what it means (docs/check.md lists them all)."""


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
    references: list[str] = field(default_factory=list)
    """The adapters (by name) named by a reference, not a folder: reports show no folder for them."""

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
                {
                    "name": a,
                    "path": None if a in self.references else a,
                    "reference": a if a in self.references else None,
                    "fingerprint": self.adapter_fingerprints.get(a),
                }
                for a in self.adapters
            ],
            "counts": {
                s: sum(f.severity == s for f in self.findings) for s in ("error", "warning", "info")
            },
            "findings": [f.to_dict() for f in self.findings],
        }


def iter_codes() -> Iterable[tuple[str, Severity, str]]:
    """Every finding code with its severity and meaning (for docs and ``--help``)."""
    for code, (severity, meaning) in CODES.items():
        yield code, severity, meaning


class FindingCollector:
    """Collects the findings of one check run; the severity comes from :data:`CODES`."""

    def __init__(self, *, labels: Mapping[str, str] | None = None) -> None:
        self.findings: list[Finding] = []
        self.labels = dict(labels or {})
        """Folder -> the name messages use for it (see :func:`mergetools.labels.relabel_text`)."""

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
        message = relabel_text(message, self.labels)
        self.findings.append(
            Finding(code, severity or CODES[code][0], adapter, module, message, expected, actual)
        )

    def error_from(self, exc: LoradexError, adapter: str | None) -> None:
        """Record ``exc`` under its own code when :data:`CODES` lists it, else ``invalid_input``."""
        code = "unmergeable_variant" if exc.code == "unsupported_adapter" else exc.code
        if code not in CODES:
            code = "invalid_input"
        self.add(code, adapter, None, exc.message)
