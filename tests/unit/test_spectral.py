"""Spectral helpers of resize/extract against float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mergetools.algebra.requests_lowrank import ExtractRequest, ResizeRequest
from mergetools.algebra.spectral import (
    dense_svd,
    factored_relative_error,
    factored_svd,
    randomized_svd,
    randomized_svd_energy,
    rank_for_energy,
    relative_error,
    truncate,
)
from mergetools.errors import InvalidInputError


def _factors(out: int, inp: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, inp, generator=g), torch.randn(out, r, generator=g)


@settings(max_examples=25, deadline=None)
@given(out=st.integers(1, 40), inp=st.integers(1, 40), r=st.integers(1, 12), seed=st.integers(0, 10**6))
def test_factored_svd_is_the_exact_svd_of_b_a(out: int, inp: int, r: int, seed: int) -> None:
    a, b = _factors(out, inp, r, seed)
    t = factored_svd(a, b)
    reference = torch.linalg.svdvals(b.double() @ a.double())
    k = min(t.rank, reference.numel())
    assert torch.allclose(t.s[:k].double(), reference[:k], rtol=1e-5, atol=1e-5 * float(reference[0]))
    # Full rank is exact: the factors give back B @ A.
    lora_a, lora_b = t.factors()
    assert torch.allclose((lora_b @ lora_a).double(), b.double() @ a.double(), atol=1e-4 * max(1.0, float(reference[0])))


def test_truncation_matches_dense_float64_eckart_young() -> None:
    a, b = _factors(64, 48, 10, 3)
    dense = b.double() @ a.double()
    u, s, vh = torch.linalg.svd(dense)
    for k in (1, 4, 9):
        cut = truncate(factored_svd(a, b), k)
        la, lb = cut.factors()
        best = (u[:, :k] * s[:k]) @ vh[:k]
        assert torch.allclose((lb @ la).double(), best, atol=1e-4)
        expected = math.sqrt(float((s[k:] ** 2).sum() / (s**2).sum()))
        assert factored_relative_error(factored_svd(a, b), k) == pytest.approx(expected, rel=1e-6)


def test_rank_for_energy_is_the_smallest_rank() -> None:
    s = torch.tensor([3.0, 2.0, 1.0, 0.5])
    total = float((s**2).sum())
    for energy in (0.1, 0.5, 0.7, 0.9, 0.99, 1.0):
        k = rank_for_energy(s, energy)
        assert float((s[:k] ** 2).sum()) >= energy * total * (1 - 1e-9)
        assert k == 1 or float((s[: k - 1] ** 2).sum()) < energy * total
    assert rank_for_energy(s, 9.0 / total) == 1  # exactly 9/14.25 of the energy in one value
    with pytest.raises(InvalidInputError):
        rank_for_energy(s, 0.0)


def test_randomized_svd_is_near_optimal_on_a_decaying_spectrum() -> None:
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(300, 48, generator=g))
    v, _ = torch.linalg.qr(torch.randn(200, 48, generator=g))
    s = torch.logspace(0, -2, 48)
    delta = (u * s) @ v.T + 1e-5 * torch.randn(300, 200, generator=g)
    ours = relative_error(delta, randomized_svd(delta, 16))
    best = relative_error(delta, dense_svd(delta, 16))
    assert ours <= best * 1.01
    # A delta of exact rank r is recovered to fp32 precision.
    low = (u[:, :5] * s[:5]) @ v[:, :5].T
    assert relative_error(low, randomized_svd(low, 5)) < 1e-5


def test_randomized_energy_keeps_at_least_the_fraction() -> None:
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(120, 90, generator=g) @ torch.diag(torch.logspace(0, -3, 90)) @ torch.randn(90, 90, generator=g)
    t = randomized_svd_energy(delta, 0.95, start_rank=4)
    exact = torch.linalg.svdvals(delta.double())
    smallest = rank_for_energy(exact, 0.95)
    assert t.kept_energy >= 0.95 * (1 - 1e-6)
    assert smallest <= t.rank <= smallest + 2


def test_requests_round_trip_and_validate() -> None:
    r = ResizeRequest(source="sts@production", rank=8)
    assert ResizeRequest.from_dict(r.to_dict()) == r
    e = ExtractRequest(base="b", tuned="t", energy=0.99, keep_full=("norm", "bias", "norm"))
    assert e.keep_full == ("bias", "norm")
    assert ExtractRequest.from_dict(e.to_dict()) == e
    with pytest.raises(InvalidInputError, match="exactly one of a rank or an energy"):
        ResizeRequest(source="x", rank=4, energy=0.9)
    with pytest.raises(InvalidInputError, match=r"energy 1.5 must be in \(0, 1\]"):
        ResizeRequest(source="x", energy=1.5)
    with pytest.raises(InvalidInputError, match="rank 0 must be a whole number"):
        ExtractRequest(base="b", tuned="t", rank=0)
    with pytest.raises(InvalidInputError, match="cannot keep 'embeddings'"):
        ExtractRequest(base="b", tuned="t", rank=4, keep_full=("embeddings",))
    with pytest.raises(InvalidInputError, match="unknown field 'ranks'"):
        ResizeRequest.from_dict({"source": "x", "ranks": 3})
