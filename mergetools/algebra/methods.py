"""Combination methods, registered as data: name, function, one-line math, paper.

Notation: source i has weight ``w_i`` and scale ``s_i`` (``alpha / r``, or ``alpha / sqrt(r)``
with rslora); its weighted delta of one module is ``d_i = w_i s_i B_i A_i``. A module that a source
lacks is a zero term ``d_i = 0`` (for every method: a zero entry has no sign, so it neither votes
in TIES's election nor counts in its mean).

Low-rank methods work on the factors and never form a dense delta:

- ``cat``: ``B = [w_1 s_1 B_1 ... w_k s_k B_k]``, ``A = [A_1; ...; A_k]``, rank ``sum r_i``:
  exactly ``sum_i d_i``.
- ``linear`` / ``svd`` (the same method; ``svd`` is PEFT's name): the best rank-``rank``
  approximation of ``sum_i d_i``, by the exact factored SVD (:func:`~mergetools.algebra.lowrank.
  truncate_sum`).

Dense methods form each ``d_i`` of one module (on the GPU when there is one), combine them entry
by entry, then truncate the result to ``rank`` by an SVD of that one module
(:func:`~mergetools.algebra.lowrank.truncate_dense`):

- ``magnitude_prune``: ``sum_i top_p(d_i)``, ``top_p`` keeping the ``p = density`` fraction of
  entries of largest magnitude (``int(p * numel)`` of them, as PEFT).
- ``ties``: ``t_i = top_p(d_i)``; elected sign ``g = sign(sum_i t_i)`` (``total``) or
  ``sign(sum_i sign(t_i))`` (``frequency``), ``+1`` on a tie; result ``sum_i [sign t_i = g] t_i /
  max(1, #{i: sign t_i = g})``: the mean of the values that agree.
- ``dare_linear``: ``sum_i m_i * d_i / p`` with Bernoulli(``p``) masks ``m_i``.
- ``dare_ties``: TIES's election and disjoint mean over ``m_i * d_i / p``.

PEFT elects TIES's sign on the *unweighted* pruned deltas and weights afterwards; loradex elects it
on the weighted ones (``t_i`` above includes ``w_i``). Both agree when all weights are equal
(``total``) or all positive (``frequency``); with a negative weight only loradex's subtracts, and
only loradex's gives back the first adapter for weights (1, 0). DARE's masks come from a
``torch.Generator`` on the CPU seeded by (seed, module name), drawn for source 0, 1, ... in turn
(:func:`dare_masks`), so a result does not depend on module order, the device or the machine.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

DenseCombine = Callable[..., Tensor]


def prune_magnitude(delta: Tensor, density: float) -> Tensor:
    """``delta`` with all but its ``int(density * numel)`` largest-magnitude entries zeroed.

    Shapes: delta (any) -> same shape.
    """
    if density >= 1.0:
        return delta
    k = int(density * delta.numel())
    if k <= 0:
        return torch.zeros_like(delta)
    magnitude = delta.abs().reshape(-1)
    # The k-th largest magnitude (O(n), unlike a top-k); entries tied with it are kept too,
    # which changes nothing when the tie is at 0.
    threshold = torch.kthvalue(magnitude.cpu(), magnitude.numel() - k + 1).values.to(delta.device)
    return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))


def module_seed(seed: int, module: str) -> int:
    """The seed of ``module``'s DARE masks: a digest of (seed, module name), 63 bits."""
    digest = hashlib.sha256(f"{int(seed)}\x00{module}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def dare_masks(
    shape: Sequence[int], count: int, *, seed: int, module: str, density: float
) -> list[Tensor]:
    """The ``count`` Bernoulli(``density``) keep-masks of ``module``, one per source in order.

    Drawn on the CPU from one generator seeded by :func:`module_seed`, so they are the same on
    every device and in every module order. Shapes: each mask ``shape``, dtype bool.
    """
    generator = torch.Generator(device="cpu").manual_seed(module_seed(seed, module))
    return [torch.rand(tuple(shape), generator=generator) < density for _ in range(count)]


def _elect_and_mean(terms: Sequence[Tensor], majority_sign: str) -> Tensor:
    stacked = torch.stack(list(terms))
    signs = stacked.sign()
    votes = stacked.sum(dim=0) if majority_sign == "total" else signs.sum(dim=0)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(stacked.dtype)
    agree = signs == elected
    total = (stacked * agree).sum(dim=0)
    return total / agree.sum(dim=0).clamp(min=1).to(stacked.dtype)


def _dare(terms: Sequence[Tensor], density: float, masks: Sequence[Tensor]) -> list[Tensor]:
    if density >= 1.0:
        return list(terms)
    return [t * m.to(t.device) / density for t, m in zip(terms, masks, strict=True)]


def combine_magnitude_prune(terms: Sequence[Tensor], *, density: float, **_: object) -> Tensor:
    """``sum_i top_p(d_i)``. Shapes: every term the same shape -> that shape."""
    return torch.stack([prune_magnitude(t, density) for t in terms]).sum(dim=0)


def combine_ties(
    terms: Sequence[Tensor], *, density: float, majority_sign: str = "total", **_: object
) -> Tensor:
    """TIES: trim to ``top_p``, elect a sign per entry, mean of the agreeing values."""
    return _elect_and_mean([prune_magnitude(t, density) for t in terms], majority_sign)


def combine_dare_linear(
    terms: Sequence[Tensor], *, density: float, masks: Sequence[Tensor], **_: object
) -> Tensor:
    """DARE: ``sum_i m_i * d_i / p``."""
    return torch.stack(_dare(terms, density, masks)).sum(dim=0)


def combine_dare_ties(
    terms: Sequence[Tensor],
    *,
    density: float,
    masks: Sequence[Tensor],
    majority_sign: str = "total",
    **_: object,
) -> Tensor:
    """DARE's drop-and-rescale, then TIES's sign election and disjoint mean."""
    return _elect_and_mean(_dare(terms, density, masks), majority_sign)


@dataclass(frozen=True)
class CombineMethod:
    """One row of :data:`METHOD_TABLE`."""

    name: str
    kind: Literal["low_rank", "dense"]
    math: str
    paper: str | None
    dense: DenseCombine | None = None  # the entrywise combination (dense methods)
    random: bool = False


METHOD_TABLE: dict[str, CombineMethod] = {
    m.name: m
    for m in (
        CombineMethod(
            "cat",
            "low_rank",
            "B = [w_i s_i B_i], A = [A_i] stacked along r: exactly sum_i w_i s_i B_i A_i (rank sum r_i)",
            None,
        ),
        CombineMethod(
            "linear",
            "low_rank",
            "best rank-R approximation of sum_i w_i s_i B_i A_i, by the exact factored SVD",
            "https://arxiv.org/abs/2212.04089",
        ),
        CombineMethod(
            "svd",
            "low_rank",
            "the same as linear (PEFT's name): truncated SVD of the exact weighted sum",
            "https://arxiv.org/abs/2212.04089",
        ),
        CombineMethod(
            "ties",
            "dense",
            "trim each d_i to its top density fraction, elect a sign per entry, mean of agreeing values",
            "https://arxiv.org/abs/2306.01708",
            combine_ties,
        ),
        CombineMethod(
            "dare_linear",
            "dense",
            "sum_i m_i d_i / density, m_i Bernoulli(density) masks (seeded)",
            "https://arxiv.org/abs/2311.03099",
            combine_dare_linear,
            random=True,
        ),
        CombineMethod(
            "dare_ties",
            "dense",
            "DARE's m_i d_i / density, then TIES's sign election and mean of agreeing values",
            "https://arxiv.org/abs/2311.03099",
            combine_dare_ties,
            random=True,
        ),
        CombineMethod(
            "magnitude_prune",
            "dense",
            "sum_i of d_i trimmed to its top density fraction by magnitude",
            "https://arxiv.org/abs/2306.01708",
            combine_magnitude_prune,
        ),
    )
}
