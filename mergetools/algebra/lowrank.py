"""Exact low-rank truncation of sums of LoRA deltas, without ever forming the dense delta.

A sum of LoRA deltas ``sum_i B_i @ A_i`` is itself ``B @ A`` with the factors stacked along r
(``B = [B_1 ... B_k]``, ``A = [A_1; ...; A_k]``), so its singular value decomposition follows
from the factors alone (the *factored SVD*):

    B = Q_B R_B            (reduced QR, Q_B (out, p), p = min(out, R))
    A^T = Q_A R_A          (reduced QR, Q_A (in, q), q = min(in, R))
    B @ A = Q_B (R_B R_A^T) Q_A^T,  and  R_B R_A^T = U S Vh  (an SVD of a small (p, q) core)
    => B @ A = (Q_B U) S (Q_A Vh^T)^T

which is the exact SVD of the sum (``Q_B U`` and ``Q_A Vh^T`` have orthonormal columns). The
truncation to ``rank`` keeps the ``rank`` largest singular values; by Eckart–Young that is the
best rank-``rank`` approximation in Frobenius (and spectral) norm, the very result a dense SVD of
the ``(out, in)`` delta would give, at ``O((out + in) R^2)`` cost instead of ``O(out * in *
min(out, in))``. The singular values go into ``lora_b`` (``B = U_r S_r``, ``A = Vh_r``), as PEFT
does for its ``*_svd`` combinations.

:func:`truncate_dense` is the same truncation for a delta that only exists densely (after TIES,
DARE or magnitude pruning), one module at a time.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from mergetools.errors import InvalidInputError

logger = logging.getLogger(__name__)


def _flatten_pair(lora_b: Tensor, lora_a: Tensor) -> tuple[Tensor, Tensor]:
    """``(out, r)`` and ``(r, in_flat)`` views of a linear/embedding/conv LoRA pair."""
    r = int(lora_a.shape[0])
    if lora_b.dim() < 2 or int(lora_b.shape[1]) != r or any(int(d) != 1 for d in lora_b.shape[2:]):
        raise InvalidInputError(
            f"lora_b of shape {tuple(lora_b.shape)} does not match lora_a of shape {tuple(lora_a.shape)}; "
            f"expected (out, {r}) or (out, {r}, 1, ...)"
        )
    return lora_b.reshape(lora_b.shape[0], r), lora_a.reshape(r, -1)


def _energies(singular: Tensor, rank: int, *, zero_below: float = 0.0) -> tuple[float, float]:
    """(kept energy fraction, relative Frobenius error) of keeping the ``rank`` largest values.

    A sum whose norm is at most ``zero_below`` (rounding noise of terms that cancel) counts as
    zero: nothing is lost by truncating it.
    """
    sq = singular.double() ** 2
    total = float(sq.sum())
    if total == 0.0 or math.sqrt(total) <= zero_below:
        return 1.0, 0.0
    tail = float(sq[rank:].sum())
    return max(0.0, 1.0 - tail / total), math.sqrt(max(tail, 0.0) / total)


def truncate_sum(
    pairs: list[tuple[Tensor, Tensor]],
    rank: int,
    *,
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor, float, float]:
    """The best rank-``rank`` approximation of ``sum_i lora_b_i @ lora_a_i``, from the factors.

    Exact: the result equals a truncated SVD of the dense sum (up to rounding) and the dense
    ``(out, in)`` matrix is never formed, nor decomposed. Fold any scale or weight into the
    ``lora_b``'s before calling. The returned rank is ``min(rank, out, in, sum_i r_i)``; when
    that covers the whole sum the result is the sum itself (``rel_error`` 0 up to rounding).

    Shapes:
        pairs:   [(lora_b_i (out, r_i) or conv (out, r_i, 1, ...),
                   lora_a_i (r_i, in) or conv (r_i, in, *k))] — every pair the same out/in/k
        returns: lora_b (out, r') [conv: (out, r', 1, ...)], lora_a (r', in) [conv: (r', in, *k)],
                 kept_energy = sum(S[:r']^2) / sum(S^2)  (1.0 for a zero sum),
                 rel_error = ||exact - truncated||_F / ||exact||_F  (0.0 for a zero sum)

    The singular values are folded into lora_b (``B = U_r S_r``, ``A = Vh_r``: rows of lora_a
    are orthonormal). Computed in ``compute_dtype`` (float64 by default: the cost is in the
    small QRs) on the device of the inputs; returned in the dtype of the first lora_a.
    """
    if rank < 1:
        raise InvalidInputError(f"rank must be at least 1, got {rank}")
    if not pairs:
        raise InvalidInputError("truncate_sum needs at least one (lora_b, lora_a) pair")
    first_b, first_a = pairs[0]
    out_dtype = first_a.dtype
    b_tail = tuple(int(d) for d in first_b.shape[2:])
    a_tail = tuple(int(d) for d in first_a.shape[1:])
    bs: list[Tensor] = []
    as_: list[Tensor] = []
    for i, (lora_b, lora_a) in enumerate(pairs):
        if tuple(int(d) for d in lora_a.shape[1:]) != a_tail or int(lora_b.shape[0]) != int(
            first_b.shape[0]
        ):
            raise InvalidInputError(
                f"pair {i}: lora_b {tuple(lora_b.shape)} / lora_a {tuple(lora_a.shape)} do not match "
                f"pair 0: lora_b {tuple(first_b.shape)} / lora_a {tuple(first_a.shape)}"
            )
        b, a = _flatten_pair(lora_b, lora_a)
        bs.append(b.to(compute_dtype))
        as_.append(a.to(compute_dtype))
    b_all = torch.cat(bs, dim=1)  # (out, R)
    a_all = torch.cat(as_, dim=0)  # (R, in_flat)
    q_b, r_b = torch.linalg.qr(b_all)  # (out, p), (p, R)
    q_a, r_a = torch.linalg.qr(a_all.T)  # (in_flat, q), (q, R)
    core = r_b @ r_a.T  # (p, q)
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    keep = min(rank, int(s.shape[0]))
    # Terms that cancel leave singular values of rounding size: call such a sum zero.
    terms = sum(float(b.norm()) * float(a.norm()) for b, a in zip(bs, as_, strict=True))
    noise = 64 * torch.finfo(compute_dtype).eps * terms
    kept_energy, rel_error = _energies(s, keep, zero_below=noise)
    new_b = (q_b @ u[:, :keep]) * s[:keep]  # (out, r')
    new_a = vh[:keep] @ q_a.T  # (r', in_flat)
    new_b = new_b.to(out_dtype).reshape(int(first_b.shape[0]), keep, *b_tail)
    new_a = new_a.to(out_dtype).reshape(keep, *a_tail)
    return new_b.contiguous(), new_a.contiguous(), kept_energy, rel_error


def _randomized_svd(flat: Tensor, q: int, *, niter: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``q`` SVD of ``flat`` by a seeded randomized range finder with ``niter`` power steps.

    The sketch comes from a CPU generator with a fixed seed, so the result is reproducible.
    """
    generator = torch.Generator(device="cpu").manual_seed(0)
    omega = torch.randn(int(flat.shape[1]), q, generator=generator, dtype=flat.dtype).to(
        flat.device
    )
    basis, _ = torch.linalg.qr(flat @ omega)
    for _ in range(niter):
        basis, _ = torch.linalg.qr(flat.T @ basis)
        basis, _ = torch.linalg.qr(flat @ basis)
    u, s, vh = torch.linalg.svd(basis.T @ flat, full_matrices=False)
    return basis @ u, s, vh


def truncate_dense(
    delta: Tensor,
    rank: int,
    *,
    compute_dtype: torch.dtype = torch.float32,
    method: str = "auto",
) -> tuple[Tensor, Tensor, float, float]:
    """A rank-``rank`` approximation of one dense delta (TIES, DARE, magnitude pruning results).

    ``method``: ``full`` — ``torch.linalg.svd`` of the whole delta, the best approximation;
    ``randomized`` — a seeded randomized SVD (sketch of ``rank + max(rank, 16)`` columns, 4
    power iterations), tens of times faster on large modules and within rounding of the best
    one when the spectrum decays; ``auto`` (default) — randomized when both sides of the delta
    exceed 4x the sketch, else full. Either way the result is the orthogonal projection of the
    delta onto the kept left singular vectors, so ``rel_error`` is exact for what is returned.

    Shapes:
        delta:   (out, in) or conv (out, in, *k) (flattened to (out, in * prod(k)) and back)
        returns: lora_b (out, r') [conv: (out, r', 1, ...)], lora_a (r', in) [conv: (r', in, *k)],
                 kept_energy, rel_error as in :func:`truncate_sum`; r' = min(rank, out, in * prod(k))
    """
    if rank < 1:
        raise InvalidInputError(f"rank must be at least 1, got {rank}")
    if method not in ("auto", "full", "randomized"):
        raise InvalidInputError(f"SVD method {method!r} is not one of auto, full, randomized")
    out_dtype = delta.dtype
    out = int(delta.shape[0])
    tail = tuple(int(d) for d in delta.shape[1:])
    flat = delta.reshape(out, -1).to(compute_dtype)
    sketch = rank + max(rank, 16)
    small = min(flat.shape) <= 4 * sketch
    if method == "full" or (method == "auto" and small) or sketch >= min(flat.shape):
        u, s, vh = torch.linalg.svd(flat, full_matrices=False)
        total = float((s.double() ** 2).sum())
    else:
        u, s, vh = _randomized_svd(flat, sketch, niter=4)
        total = float(flat.double().pow(2).sum())
    keep = min(rank, int(s.shape[0]))
    kept_sq = float((s[:keep].double() ** 2).sum())
    if total == 0.0:
        kept_energy, rel_error = 1.0, 0.0
    else:
        tail_sq = max(total - kept_sq, 0.0)
        kept_energy, rel_error = max(0.0, 1.0 - tail_sq / total), math.sqrt(tail_sq / total)
    new_b = (u[:, :keep] * s[:keep]).to(out_dtype)
    new_a = vh[:keep].to(out_dtype)
    ones = (1,) * (len(tail) - 1)
    return (
        new_b.reshape(out, keep, *ones).contiguous(),
        new_a.reshape(keep, *tail).contiguous(),
        kept_energy,
        rel_error,
    )
