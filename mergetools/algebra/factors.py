"""LoRA modules as plain fp32 factors with their scale folded in: what the algebra works on.

Every operation of :mod:`mergetools.algebra` reads its inputs with :func:`read_factors` and hands
its result to :func:`mergetools.algebra.writer.write_adapter`. A :class:`Factors` holds one
module's delta exactly as ``lora_b @ lora_a`` (no separate scale: the adapter's ``alpha / r``, or
``alpha / sqrt(r)`` with rslora, and the caller's weight are folded into ``lora_b``), so a written
adapter has scale 1 everywhere (``lora_alpha == r``), which PEFT and vLLM both read right.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from mergetools.adapter import Adapter, ModuleKind
from mergetools.errors import UnsupportedAdapterError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Factors:
    """One module's delta, ``lora_b @ lora_a``, scale included.

    Shapes (PEFT's storage orientation, whatever the base layer's):
        linear:    lora_a (r, in)       lora_b (out, r)          delta (out, in); a
                   ``fan_in_fan_out`` base weight (GPT-2 Conv1D, (in, out)) receives delta.T
        embedding: lora_a (r, vocab)    lora_b (dim, r)          the base (vocab, dim) receives delta.T
        conv:      lora_a (r, in, *k)   lora_b (out, r, 1, ...)  delta (out, in, *k)
        bias:      (out,) — ``lora_B.bias`` (``lora_bias=True``), scale included
    """

    kind: ModuleKind
    lora_a: Tensor
    lora_b: Tensor
    bias: Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.lora_a.shape[0])

    @property
    def delta_shape(self) -> tuple[int, ...]:
        """Shape of :meth:`delta`: (out, in) linear, (dim, vocab) embedding, (out, in, *k) conv."""
        if self.kind == "conv":
            return (int(self.lora_b.shape[0]), *(int(d) for d in self.lora_a.shape[1:]))
        return (int(self.lora_b.shape[0]), int(self.lora_a.shape[1]))

    def delta(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The dense delta ``lora_b @ lora_a`` in ``dtype``, shaped :attr:`delta_shape`."""
        a = self.lora_a.to(dtype).reshape(self.rank, -1)
        b = self.lora_b.to(dtype).reshape(self.lora_b.shape[0], self.rank)
        return (b @ a).reshape(self.delta_shape)

    def scaled(self, factor: float) -> Factors:
        """The same module with its delta (and bias) multiplied by ``factor``."""
        bias = None if self.bias is None else self.bias * factor
        return Factors(self.kind, self.lora_a, self.lora_b * factor, bias)


def refuse_for_algebra(adapter: Adapter, *, operation: str) -> None:
    """Refuse adapters whose effect is not a sum of low-rank deltas (DoRA, full replacements,
    trainable token rows): the algebra cannot weight, add or decompose those."""
    where = f"adapter {adapter.path}"
    if adapter.use_dora:
        raise UnsupportedAdapterError(
            f"{where} uses DoRA; {operation} works on plain LoRA deltas only "
            "(a DoRA magnitude rescales whole rows and cannot be added or weighted)"
        )
    if adapter.replacements:
        first = adapter.replacements[0]
        raise UnsupportedAdapterError(
            f"{where} replaces full tensors ({first.target}, {first.reason}"
            f"{f' and {len(adapter.replacements) - 1} more' if len(adapter.replacements) > 1 else ''}); "
            f"{operation} works on LoRA deltas only — merge such an adapter instead"
        )
    if adapter.trainable_tokens:
        raise UnsupportedAdapterError(
            f"{where} replaces embedding rows (trainable tokens of {adapter.trainable_tokens[0].target}); "
            f"{operation} works on LoRA deltas only"
        )


def read_factors(
    adapter: Adapter, *, weight: float = 1.0, operation: str = "this operation"
) -> dict[str, Factors]:
    """Every LoRA module of ``adapter`` as fp32 factors, ``weight * scale`` folded into lora_b.

    Refuses what :func:`refuse_for_algebra` refuses. Keys are module paths
    (``model.layers.0.self_attn.q_proj``).
    """
    refuse_for_algebra(adapter, operation=operation)
    out: dict[str, Factors] = {}
    for path, module in adapter.modules.items():
        factor = float(weight) * float(module.scale)
        lora_a = adapter.load(module.lora_a).to(torch.float32)
        lora_b = adapter.load(module.lora_b).to(torch.float32) * factor
        bias = None
        if module.bias is not None:
            bias = adapter.load(module.bias).to(torch.float32) * factor
        out[path] = Factors(module.kind, lora_a, lora_b, bias)
    return out


def fan_in_fan_out(adapters: Mapping[str, Adapter]) -> bool:
    """The one ``fan_in_fan_out`` value of ``adapters`` (keyed by how the caller names them)."""
    values = {name: bool(a.config.get("fan_in_fan_out")) for name, a in adapters.items()}
    if len(set(values.values())) > 1:
        listed = ", ".join(f"{n}: {v}" for n, v in values.items())
        raise UnsupportedAdapterError(
            f"adapters disagree on fan_in_fan_out ({listed}); they were trained on different layer types"
        )
    return next(iter(values.values()), False)
