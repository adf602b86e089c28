"""The merge request record: validation on construction (messages verbatim) and a strict JSON form."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mergetools.errors import InvalidInputError
from mergetools.requests import MergeRequest


def _request(**overrides: Any) -> MergeRequest:
    fields: dict[str, Any] = {
        "base": "tiny-base",
        "adapters": ("sts@production", "./local"),
        "out": "merged",
    }
    return MergeRequest(**{**fields, **overrides})


def test_defaults_and_effective_weights() -> None:
    request = _request()
    assert request.weights is None and not request.weights_explicit
    assert request.effective_weights == (1.0, 1.0)
    assert (request.dtype, request.device, request.max_shard_size) == ("auto", "auto", "5GB")
    assert request.fsync and not request.force
    explicit = _request(weights=[1, -0.5])
    assert explicit.weights == (1.0, -0.5) and explicit.weights_explicit
    assert isinstance(explicit.adapters, tuple)


@pytest.mark.parametrize(
    "request_",
    [
        _request(),
        _request(
            weights=(0.5, 2.0),
            dtype="bfloat16",
            device="cuda:1",
            max_shard_size=20_000,
            fsync=False,
            force=True,
        ),
    ],
)
def test_round_trips_through_json(request_: MergeRequest) -> None:
    data = json.loads(json.dumps(request_.to_dict()))
    assert data["kind"] == "merge"
    assert MergeRequest.from_dict(data) == request_


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"weights": (1.0,)},
            "merge request: got 1 weights for 2 adapters; give one per adapter, in order",
        ),
        ({"weights": (1.0, float("nan"))}, "merge request: weight nan is not a finite number"),
        ({"weights": (1.0, True)}, "merge request: weight True is not a finite number"),
        ({"adapters": ()}, "merge request: adapters is empty; expected at least one adapter"),
        ({"adapters": "sts"}, "merge request: adapters 'sts' is not a list of adapter references"),
        (
            {"adapters": ("sts", "")},
            "merge request: adapter '' is not an adapter folder or registry reference",
        ),
        (
            {"base": ""},
            "merge request: base '' is not a checkpoint folder or a registered base name",
        ),
        ({"out": None}, "merge request: out None is not an output folder path"),
        (
            {"dtype": "int8"},
            "merge request: dtype 'int8' is not one of auto, bfloat16, float16, float32",
        ),
        ({"device": "gpu"}, "merge request: device 'gpu' is not one of auto, cpu, cuda, cuda:N"),
        (
            {"device": "cuda:x"},
            "merge request: device 'cuda:x' is not one of auto, cpu, cuda, cuda:N",
        ),
        (
            {"max_shard_size": "5 gigs"},
            "merge request: max_shard_size: cannot parse size '5 gigs'; expected e.g. 5GB, 500MB, 2GiB or a byte count",
        ),
        ({"max_shard_size": 0}, "merge request: max_shard_size: size must be positive, got 0"),
        ({"fsync": "yes"}, "merge request: fsync 'yes' is not true or false"),
        ({"force": 1}, "merge request: force 1 is not true or false"),
    ],
)
def test_invalid_requests_never_exist(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        _request(**overrides)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"weight": [1.0, 1.0]},
            "merge request: unknown field 'weight'; expected kind, base, adapters, weights, dtype, device, max_shard_size, fsync, out, force",
        ),
        ({"kind": "combine"}, "merge request: kind is 'combine', expected 'merge'"),
        ({"adapters": "sts"}, "merge request: adapters 'sts' is not a list of adapter references"),
        ({"weights": 1.0}, "merge request: weights 1.0 is not a list of numbers"),
    ],
)
def test_from_dict_is_strict(change: dict[str, Any], message: str) -> None:
    data = {**_request().to_dict(), **change}
    with pytest.raises(InvalidInputError) as info:
        MergeRequest.from_dict(data)
    assert str(info.value) == message


def test_from_dict_needs_base_adapters_and_out() -> None:
    data = _request().to_dict()
    del data["out"]
    with pytest.raises(InvalidInputError, match=r"^merge request: the record lacks 'out'$"):
        MergeRequest.from_dict(data)
    assert MergeRequest.from_dict({"base": "b", "adapters": ["a"], "out": "o"}) == MergeRequest(
        base="b", adapters=("a",), out="o"
    )
