"""The factored SVD of sums of LoRA deltas against a float64 dense SVD."""

from __future__ import annotations

import pytest
import torch

from mergetools.algebra.lowrank import truncate_dense, truncate_sum
from mergetools.errors import InvalidInputError


def _pairs(
    out: int, inn: int, ranks: list[int], *, seed: int = 0, dtype: torch.dtype = torch.float32
):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(out, r, generator=g, dtype=dtype),
            torch.randn(r, inn, generator=g, dtype=dtype),
        )
        for r in ranks
    ]


def _dense_reference(pairs, rank):
    exact = sum(
        b.double().reshape(b.shape[0], -1) @ a.double().reshape(a.shape[0], -1) for b, a in pairs
    )
    u, s, vh = torch.linalg.svd(exact, full_matrices=False)
    keep = min(rank, s.shape[0])
    return exact, (u[:, :keep] * s[:keep]) @ vh[:keep], s


@pytest.mark.parametrize(
    ("out", "inn", "ranks", "rank"),
    [
        (40, 30, [4, 6], 5),
        (40, 30, [4, 6], 10),  # the whole sum: exact
        (12, 50, [8, 8, 3], 4),  # out < sum of ranks
        (64, 8, [5, 7], 6),  # in < sum of ranks
        (33, 17, [1], 1),
    ],
)
def test_truncate_sum_matches_dense_svd(out: int, inn: int, ranks: list[int], rank: int) -> None:
    pairs = _pairs(out, inn, ranks)
    lora_b, lora_a, kept, rel = truncate_sum(pairs, rank)
    exact, best, s = _dense_reference(pairs, rank)
    keep = min(rank, out, inn, sum(ranks))
    assert lora_b.shape == (out, keep) and lora_a.shape == (keep, inn)
    assert lora_b.dtype == torch.float32
    got = lora_b.double() @ lora_a.double()
    assert torch.allclose(got, best, atol=1e-4 * float(s[0]), rtol=0)
    tail = float((s[keep:] ** 2).sum())
    total = float((s**2).sum())
    assert kept == pytest.approx(1 - tail / total, abs=1e-9)
    assert rel == pytest.approx((tail / total) ** 0.5, abs=1e-6)
    assert rel == pytest.approx(
        float(torch.linalg.norm(exact - got) / torch.linalg.norm(exact)), abs=1e-5
    )
    # A = Vh_r: orthonormal rows, the singular values sit in B.
    eye = lora_a.double() @ lora_a.double().T
    assert torch.allclose(eye, torch.eye(keep, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(lora_b.double().norm(dim=0), s[:keep], rtol=1e-5)


def test_truncate_sum_full_rank_is_exact() -> None:
    pairs = _pairs(50, 40, [3, 4])
    lora_b, lora_a, kept, rel = truncate_sum(pairs, 7)
    exact, _, _ = _dense_reference(pairs, 7)
    assert torch.allclose(lora_b.double() @ lora_a.double(), exact, atol=1e-4)
    assert kept == pytest.approx(1.0) and rel == pytest.approx(0.0, abs=1e-6)


def test_truncate_sum_conv_shapes_round_trip() -> None:
    g = torch.Generator().manual_seed(3)
    pairs = [
        (torch.randn(6, r, 1, 1, generator=g), torch.randn(r, 4, 3, 3, generator=g)) for r in (2, 3)
    ]
    lora_b, lora_a, _, _ = truncate_sum(pairs, 5)
    assert lora_b.shape == (6, 5, 1, 1) and lora_a.shape == (5, 4, 3, 3)
    exact = sum(b.reshape(6, -1).double() @ a.reshape(a.shape[0], -1).double() for b, a in pairs)
    assert torch.allclose(
        lora_b.reshape(6, 5).double() @ lora_a.reshape(5, -1).double(), exact, atol=1e-4
    )


def test_truncate_sum_zero_sum() -> None:
    b = torch.randn(10, 2)
    a = torch.randn(2, 8)
    lora_b, lora_a, kept, rel = truncate_sum([(b, a), (-b, a)], 2)
    assert float((lora_b @ lora_a).abs().max()) < 1e-5
    assert kept == 1.0 and rel == 0.0


def test_truncate_sum_refuses_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="rank must be at least 1"):
        truncate_sum(_pairs(4, 4, [2]), 0)
    with pytest.raises(InvalidInputError, match="do not match pair 0"):
        truncate_sum([*_pairs(4, 4, [2]), *_pairs(4, 5, [2])], 2)
    with pytest.raises(InvalidInputError, match="does not match lora_a"):
        truncate_sum([(torch.zeros(4, 3), torch.zeros(2, 4))], 2)


def test_truncate_dense_matches_reference() -> None:
    g = torch.Generator().manual_seed(5)
    delta = torch.randn(20, 30, generator=g)
    lora_b, lora_a, kept, rel = truncate_dense(delta, 6)
    _, best, s = _dense_reference([(delta, torch.eye(30))], 6)
    assert torch.allclose(lora_b.double() @ lora_a.double(), best, atol=1e-4)
    assert rel == pytest.approx(float((s[6:] ** 2).sum() / (s**2).sum()) ** 0.5, abs=1e-5)
    assert 0 < kept < 1
    conv = torch.randn(5, 3, 2, 2, generator=g)
    lb, la, _, _ = truncate_dense(conv, 12)
    assert lb.shape == (5, 5, 1, 1) and la.shape == (5, 3, 2, 2)
    assert torch.allclose(
        (lb.reshape(5, 5) @ la.reshape(5, -1)).reshape(conv.shape), conv, atol=1e-5
    )


def test_truncate_dense_randomized_is_near_optimal_and_reproducible() -> None:
    g = torch.Generator().manual_seed(9)
    low = torch.randn(600, 40, generator=g) @ torch.randn(40, 500, generator=g)
    delta = low + 0.05 * torch.randn(600, 500, generator=g)
    full = truncate_dense(delta, 16, method="full")
    fast = truncate_dense(delta, 16, method="randomized")
    assert fast[0].shape == (600, 16) and fast[1].shape == (16, 500)
    assert fast[3] == pytest.approx(full[3], rel=2e-3)
    got = (fast[0].double() @ fast[1].double() - delta.double()).norm() / delta.double().norm()
    assert float(got) == pytest.approx(fast[3], rel=1e-3)  # the reported error is the true one
    again = truncate_dense(delta, 16, method="randomized")
    assert torch.equal(again[0], fast[0]) and torch.equal(again[1], fast[1])
    assert truncate_dense(delta, 16)[3] == pytest.approx(fast[3])  # auto: randomized here
