"""The math of folding LoRA deltas into base weights, in fp32, in place.

Every function here works on fp32 tensors the caller has already read (a whole weight or a
block of its rows) and accumulates into them in place with ``addmm_``; rounding back to the
base dtype happens once, in the caller, after every delta was added.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from mergetools.errors import NumericalError

logger = logging.getLogger(__name__)


def add_linear_delta(acc: Tensor, *, lora_a: Tensor, lora_b: Tensor, scale: float) -> None:
    """acc += scale * (lora_b @ lora_a), in place.

    Shapes:
        acc: (rows, in) — rows of the base weight (out, in), a block of them is fine
        lora_a: (r, in)    lora_b: (rows, r) — the matching rows of lora_b
    """
    acc.addmm_(lora_b, lora_a, alpha=scale)


def add_transposed_delta(acc: Tensor, *, lora_a: Tensor, lora_b: Tensor, scale: float) -> None:
    """acc += scale * (lora_b @ lora_a).T, in place.

    Used for GPT-2 Conv1D (``fan_in_fan_out``: the weight is stored (in, out)) and for
    embeddings (``W += s * (B @ A).T``).

    Shapes:
        acc: (rows, out) — rows of the stored weight (in, out), a block of them is fine
        lora_a: (r, rows) — the matching columns of lora_a    lora_b: (out, r)
    """
    acc.addmm_(lora_a.T, lora_b.T, alpha=scale)


def conv_delta(*, lora_a: Tensor, lora_b: Tensor, scale: float) -> Tensor:
    """scale * delta of a LoRA conv layer.

    Shapes:
        lora_a: (r, in, *k)    lora_b: (out, r, 1, ...)
        returns (out, in, *k)
    """
    out_features, rank = lora_b.shape[0], lora_b.shape[1]
    delta = lora_b.reshape(out_features, rank) @ lora_a.reshape(rank, -1)
    return (delta * scale).reshape(out_features, *lora_a.shape[1:])


def apply_dora(merged: Tensor, *, magnitude: Tensor, norm_dims: tuple[int, ...]) -> None:
    """merged *= magnitude / norm(merged), in place (DoRA).

    ``merged`` is ``V = W + dW`` in the stored layout; the norm runs over ``norm_dims`` so
    that one norm remains per output feature, and ``magnitude`` is broadcast against it.

    Shapes:
        linear (out, in): norm over (1,), magnitude (out,) viewed (out, 1)
        Conv1D stored (in, out) / embedding (vocab, dim): norm over (0,), magnitude viewed (1, n)
        conv (out, in, *k): norm over (1, ...), magnitude (1, out, 1, ...) viewed (out, 1, ...)
    """
    norm = torch.linalg.vector_norm(merged, dim=norm_dims, keepdim=True)
    merged.mul_(magnitude.reshape(norm.shape) / norm)


def check_finite(tensor: Tensor, *, what: str, summed: Tensor | None = None) -> None:
    """Raise :class:`NumericalError` when ``tensor`` (a merged result) holds NaN or Inf.

    One fp32 sum of ``summed`` (default: ``tensor``; a caller may pass the fp32 block it rounded
    ``tensor`` from, already in cache) is finite unless a value is not or the sum overflows;
    only then is ``tensor`` inspected element by element.
    """
    source = tensor if summed is None else summed
    if math.isfinite(float(source.sum(dtype=torch.float32))):
        return
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        dtype = str(tensor.dtype).removeprefix("torch.")
        raise NumericalError(
            f"{what}: {bad} values are NaN or Inf after merging (overflow when rounding to {dtype}, "
            "a DoRA row of norm 0, or a broken adapter); the result is not written"
        )
