"""``combine`` / ``rescale`` against PEFT's ``add_weighted_adapter`` (where PEFT is right) and
against float64 references (everywhere else), on tiny Llama / GPT-2 models; every output is
loaded back with ``PeftModel.from_pretrained`` and must give the expected deltas and logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mergetools.algebra.combine import combine_adapters, rescale_adapter
from mergetools.algebra.methods import dare_masks, prune_magnitude
from mergetools.algebra.requests import CombineRequest, RescaleRequest
from mergetools.check import check_adapters
from mergetools.errors import IncompatibleError, InvalidInputError, UnsupportedAdapterError
from tests import factories as F
from tests.oracle import device_params

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _two_adapters(tmp: Path, *, arch: str = "llama", second: dict | None = None) -> list[Path]:
    targets = ["c_attn", "c_proj"] if arch == "gpt2" else TARGETS
    extra = {"fan_in_fan_out": True} if arch == "gpt2" else {}
    a = F.save_adapter(
        F.build_model(arch), tmp / "a", seed=11, r=4, lora_alpha=8, target_modules=targets, **extra
    )
    b = F.save_adapter(
        F.build_model(arch),
        tmp / "b",
        seed=22,
        **{"r": 6, "lora_alpha": 3, "target_modules": targets, **extra, **(second or {})},
    )
    return [a, b]


def _peft_deltas(model) -> dict[str, torch.Tensor]:
    """module path -> get_delta_weight of the active adapter (float64)."""
    from peft.tuners.lora import LoraLayer

    name = model.active_adapter
    out = {}
    for path, module in model.base_model.model.named_modules():
        if isinstance(module, LoraLayer) and name in module.lora_A:
            out[path] = module.get_delta_weight(name).detach().double()
    return out


def _load(paths: list[Path], arch: str = "llama"):
    from peft import PeftModel

    model = PeftModel.from_pretrained(F.build_model(arch), str(paths[0]), adapter_name="a0")
    for i, p in enumerate(paths[1:], start=1):
        model.load_adapter(str(p), adapter_name=f"a{i}")
    return model


def _source_deltas(paths: list[Path], weights: list[float], arch: str = "llama"):
    """Per source: module -> weighted delta w_i * s_i * B_i A_i (float64, PEFT's own scaling)."""
    model = _load(paths, arch)
    out = []
    for i, w in enumerate(weights):
        model.set_adapter(f"a{i}")
        out.append({k: w * v for k, v in _peft_deltas(model).items()})
    return out


def _loaded_deltas(out: Path, arch: str = "llama") -> dict[str, torch.Tensor]:
    from peft import PeftModel

    return _peft_deltas(PeftModel.from_pretrained(F.build_model(arch), str(out)))


def _truncate64(delta: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def _combine(paths, tmp, **kwargs) -> Path:
    out = tmp / f"out-{kwargs['method']}"
    request = CombineRequest(sources=tuple(map(str, paths)), out=str(out), **kwargs)
    combine_adapters(request, paths, out=out, fsync=False)
    return out


def _logits_match(out: Path, expected: dict[str, torch.Tensor], arch: str = "llama") -> None:
    """The output adapter, loaded by PEFT, gives the logits of the base with ``expected`` added."""
    from peft import PeftModel

    ids = torch.tensor([[1, 5, 9, 17, 33, 65, 100]])
    peft_model = PeftModel.from_pretrained(F.build_model(arch), str(out)).eval()
    reference = F.build_model(arch).eval()
    with torch.no_grad():
        for path, delta in expected.items():
            module = reference.get_submodule(path)
            module.weight += delta.to(module.weight.dtype).reshape(module.weight.shape)
        got = peft_model(input_ids=ids).logits
        want = reference(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def _assert_close(got: dict, want: dict, *, atol: float = 2e-6) -> None:
    assert set(got) == set(want)
    for key in want:
        assert torch.allclose(got[key], want[key], atol=atol, rtol=1e-4), key


# ----------------------------------------------------------------------------- against PEFT


def _peft_combined(paths, weights, combination_type, **kwargs) -> dict[str, torch.Tensor]:
    model = _load(paths)
    model.add_weighted_adapter(
        [f"a{i}" for i in range(len(paths))],
        weights,
        "m",
        combination_type=combination_type,
        **kwargs,
    )
    model.set_adapter("m")
    return _peft_deltas(model)


def test_cat_equals_peft_and_the_exact_sum(tmp_path: Path) -> None:
    paths = _two_adapters(tmp_path)
    out = _combine(paths, tmp_path, method="cat", weights=(0.6, -0.4))
    got = _loaded_deltas(out)
    _assert_close(got, _peft_combined(paths, [0.6, -0.4], "cat"))
    sources = _source_deltas(paths, [0.6, -0.4])
    exact = {k: sources[0][k] + sources[1][k] for k in sources[0]}
    _assert_close(got, exact)
    _logits_match(out, exact)
    config = F.read_json(out / "adapter_config.json")
    assert config["r"] == 10 and config["lora_alpha"] == 10 and not config["use_rslora"]


@pytest.mark.parametrize("method", ["svd", "linear"])
def test_svd_equals_peft_svd(tmp_path: Path, method: str) -> None:
    paths = _two_adapters(tmp_path)
    out = _combine(paths, tmp_path, method=method, weights=(0.6, 0.4), rank=5)
    got = _loaded_deltas(out)
    _assert_close(got, _peft_combined(paths, [0.6, 0.4], "svd", svd_rank=5), atol=1e-5)
    sources = _source_deltas(paths, [0.6, 0.4])
    truncated = {k: _truncate64(sources[0][k] + sources[1][k], 5) for k in sources[0]}
    _assert_close(got, truncated, atol=1e-6)
    _logits_match(out, truncated)


def test_ties_svd_equals_peft(tmp_path: Path) -> None:
    paths = _two_adapters(tmp_path)
    out = _combine(paths, tmp_path, method="ties_svd", weights=(0.7, 0.7), density=0.5, rank=6)
    got = _loaded_deltas(out)
    want = _peft_combined(paths, [0.7, 0.7], "ties_svd", density=0.5, svd_rank=6)
    _assert_close(got, want, atol=1e-5)
    _logits_match(out, want)


def test_ties_frequency_with_unequal_weights_equals_peft(tmp_path: Path) -> None:
    paths = _two_adapters(tmp_path)
    out = _combine(
        paths, tmp_path, method="ties", weights=(0.9, 0.3), density=0.4, majority_sign="frequency"
    )
    want = _peft_combined(
        paths, [0.9, 0.3], "ties_svd", density=0.4, majority_sign_method="frequency"
    )
    _assert_close(_loaded_deltas(out), want, atol=1e-5)


def test_magnitude_prune_svd_equals_peft(tmp_path: Path) -> None:
    paths = _two_adapters(tmp_path)
    out = _combine(paths, tmp_path, method="magnitude_prune_svd", weights=(0.6, 0.4), density=0.3)
    want = _peft_combined(paths, [0.6, 0.4], "magnitude_prune_svd", density=0.3)
    _assert_close(_loaded_deltas(out), want, atol=1e-5)


# ------------------------------------------------------------------ against float64 references


def _ties64(terms: list[torch.Tensor], density: float, sign: str) -> torch.Tensor:
    pruned = torch.stack([prune_magnitude(t, density) for t in terms])
    votes = pruned.sum(0) if sign == "total" else pruned.sign().sum(0)
    elected = torch.where(votes >= 0, 1.0, -1.0).double()
    agree = pruned.sign() == elected
    return (pruned * agree).sum(0) / agree.sum(0).clamp(min=1)


def test_ties_with_a_negative_weight_elects_on_weighted_deltas(tmp_path: Path) -> None:
    paths = _two_adapters(tmp_path)
    out = _combine(paths, tmp_path, method="ties", weights=(1.0, -0.8), density=0.6, rank=8)
    sources = _source_deltas(paths, [1.0, -0.8])
    want = {
        k: _truncate64(_ties64([sources[0][k], sources[1][k]], 0.6, "total"), 8) for k in sources[0]
    }
    _assert_close(_loaded_deltas(out), want, atol=1e-5)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_against_its_own_seeded_masks(tmp_path: Path, method: str) -> None:
    paths = _two_adapters(tmp_path)
    out = _combine(paths, tmp_path, method=method, weights=(0.6, 0.4), density=0.5, seed=7, rank=10)
    sources = _source_deltas(paths, [0.6, 0.4])
    want = {}
    for k in sources[0]:
        masks = dare_masks(sources[0][k].shape, 2, seed=7, module=k, density=0.5)
        kept = [sources[i][k] * masks[i] / 0.5 for i in range(2)]
        combined = kept[0] + kept[1] if method == "dare_linear" else _ties64(kept, 1.0, "total")
        want[k] = _truncate64(combined, 10)
    got = _loaded_deltas(out)
    _assert_close(got, want, atol=1e-5)
    _logits_match(out, want)
    # Seeded: the same request gives the same bytes; another seed gives another result.
    again = tmp_path / "again"
    request = CombineRequest(
        sources=tuple(map(str, paths)),
        method=method,
        weights=(0.6, 0.4),
        density=0.5,
        seed=7,
        rank=10,
        out=str(again),
    )
    combine_adapters(request, paths, out=again, fsync=False)
    assert (again / "adapter_model.safetensors").read_bytes() == (
        out / "adapter_model.safetensors"
    ).read_bytes()
    other = tmp_path / "other"
    combine_adapters(
        CombineRequest(
            sources=tuple(map(str, paths)),
            method=method,
            weights=(0.6, 0.4),
            density=0.5,
            seed=8,
            rank=10,
            out=str(other),
        ),
        paths,
        out=other,
        fsync=False,
    )
    assert (other / "adapter_model.safetensors").read_bytes() != (
        out / "adapter_model.safetensors"
    ).read_bytes()


def test_rslora_and_gpt2_fan_in_fan_out_sum_exactly(tmp_path: Path) -> None:
    """PEFT mis-scales rslora sources in its combinations; loradex's cat is the exact sum."""
    paths = _two_adapters(tmp_path, arch="gpt2", second={"use_rslora": True})
    out = _combine(paths, tmp_path, method="cat", weights=(0.5, 1.5))
    sources = _source_deltas(paths, [0.5, 1.5], arch="gpt2")
    exact = {k: sources[0][k] + sources[1][k] for k in sources[0]}
    _assert_close(_loaded_deltas(out, arch="gpt2"), exact)
    assert F.read_json(out / "adapter_config.json")["fan_in_fan_out"] is True
    lin = _combine(paths, tmp_path, method="linear", weights=(0.5, 1.5), rank=3)
    trunc = {k: _truncate64(v, 3) for k, v in exact.items()}
    _assert_close(_loaded_deltas(lin, arch="gpt2"), trunc, atol=1e-6)


def test_module_in_one_adapter_only_is_a_missing_term(tmp_path: Path) -> None:
    paths = _two_adapters(tmp_path, second={"target_modules": ["q_proj", "k_proj"]})
    for method, extra in (("cat", {}), ("ties", {"density": 0.5})):
        out = _combine(paths, tmp_path, method=method, weights=(1.0, 1.0), **extra)
        got = _loaded_deltas(out)
        sources = _source_deltas(paths, [1.0, 1.0])
        assert set(got) == set(sources[0]) | set(sources[1])
        only = next(k for k in got if k.endswith("k_proj"))
        want = (
            sources[1][only]
            if method == "cat"
            else _truncate64(prune_magnitude(sources[1][only], 0.5), 6)
        )
        assert torch.allclose(got[only], want, atol=1e-5)


# ---------------------------------------------------------------------------- properties


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("cat", {}),
        ("linear", {}),
        ("ties", {"density": 1.0}),
        ("magnitude_prune", {"density": 1.0}),
    ],
)
def test_weights_one_zero_give_back_the_first_adapter(tmp_path: Path, method, extra) -> None:
    paths = _two_adapters(tmp_path)
    out = _combine(paths, tmp_path, method=method, weights=(1.0, 0.0), **extra)
    first = _source_deltas(paths[:1], [1.0])[0]
    _assert_close(_loaded_deltas(out), first, atol=1e-6)


def test_rescale_then_inverse_is_identity(tmp_path: Path) -> None:
    (path, _) = _two_adapters(tmp_path)
    up = tmp_path / "up"
    rescale_adapter(
        RescaleRequest(source=str(path), scale=3.0, out=str(up)), path, out=up, fsync=False
    )
    back = tmp_path / "back"
    rescale_adapter(
        RescaleRequest(source=str(up), scale=1 / 3.0, out=str(back)), up, out=back, fsync=False
    )
    original = _source_deltas([path], [1.0])[0]
    _assert_close(_loaded_deltas(up), {k: 3.0 * v for k, v in original.items()}, atol=1e-6)
    _assert_close(_loaded_deltas(back), original, atol=1e-6)
    _logits_match(up, {k: 3.0 * v for k, v in original.items()})


def test_rescale_scales_lora_bias(tmp_path: Path) -> None:
    path = F.save_adapter(
        F.build_model("llama"),
        tmp_path / "a",
        r=4,
        lora_alpha=8,
        target_modules=["q_proj"],
        lora_bias=True,
    )
    out = tmp_path / "out"
    rescale_adapter(
        RescaleRequest(source=str(path), scale=-2.0, out=str(out)), path, out=out, fsync=False
    )
    from safetensors.torch import load_file

    before = load_file(path / "adapter_model.safetensors")
    after = load_file(out / "adapter_model.safetensors")
    key = next(k for k in before if k.endswith("lora_B.bias"))
    assert torch.allclose(after[key], before[key] * -2.0 * 2.0)  # scale alpha/r = 2 folded in


@pytest.mark.parametrize("method", ["cat", "svd", "ties", "dare_ties"])
def test_outputs_have_no_vllm_scaling_finding(
    tmp_path: Path, method: str, llama_base: Path
) -> None:
    paths = _two_adapters(tmp_path)
    extra = {"density": 0.5} if method in ("ties", "dare_ties") else {}
    out = _combine(paths, tmp_path, method=method, weights=(0.6, 0.4), **extra)
    report = check_adapters([out], base=llama_base, serving="vllm")
    codes = {f.code for f in report.findings}
    assert not {c for c in codes if "scal" in c or "pattern" in c}, codes


# ------------------------------------------------------------------------------ refusals


def test_refusals_write_nothing(tmp_path: Path) -> None:
    paths = _two_adapters(tmp_path)
    dora = F.save_adapter(
        F.build_model("llama"), tmp_path / "dora", r=4, target_modules=TARGETS, use_dora=True
    )
    out = tmp_path / "out"
    with pytest.raises(UnsupportedAdapterError, match="uses DoRA"):
        _combine([paths[0], dora], tmp_path, method="cat")
    wide = F.save_adapter(
        F.build_model("llama", hidden_size=48, intermediate_size=64),
        tmp_path / "wide",
        r=4,
        target_modules=TARGETS,
    )
    with pytest.raises(
        IncompatibleError,
        match=r"module 'model.layers.0.mlp.down_proj': .* \(32, 64\) .* \(48, 64\)",
    ):
        _combine([paths[0], wide], tmp_path, method="linear")
    gpt = _two_adapters(tmp_path / "g", arch="gpt2")[0]
    with pytest.raises((UnsupportedAdapterError, IncompatibleError)):
        _combine([paths[0], gpt], tmp_path, method="cat")
    F.edit_json(paths[1] / "adapter_config.json", loradex_base_fingerprint="b" * 64)
    F.edit_json(paths[0] / "adapter_config.json", loradex_base_fingerprint="a" * 64)
    with pytest.raises(IncompatibleError, match="different bases"):
        _combine(paths, tmp_path, method="cat")
    assert not out.exists() and not list(tmp_path.glob("out-*"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "bogus"}, "unknown combine method 'bogus'"),
        ({"method": "cat", "weights": (1.0,)}, "got 1 weights for 2 source adapters"),
        ({"method": "ties", "density": 0.0}, r"density must be in \(0, 1\]"),
        ({"method": "ties", "density": 1.5}, r"density must be in \(0, 1\]"),
        ({"method": "ties"}, "needs a density"),
        ({"method": "linear", "rank": 0}, "rank must be at least 1"),
        ({"method": "cat", "rank": 4}, "takes no rank"),
        ({"method": "linear", "density": 0.5}, "takes no density"),
        (
            {"method": "ties", "density": 0.5, "majority_sign": "mean"},
            "majority sign method 'mean'",
        ),
    ],
)
def test_request_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        CombineRequest(sources=("a", "b"), out="o", **kwargs)


def test_requests_round_trip() -> None:
    request = CombineRequest(
        sources=("a", "b@2"), method="dare_ties_svd", weights=(0.5, 2), density=0.3, out="o"
    )
    assert request.method == "dare_ties" and request.seed == 0 and request.majority_sign == "total"
    assert CombineRequest.from_dict(request.to_dict()) == request
    rescale = RescaleRequest(source="x", scale=2, name="n")
    assert RescaleRequest.from_dict(rescale.to_dict()) == rescale
    with pytest.raises(InvalidInputError, match="exactly one destination"):
        RescaleRequest(source="x", scale=2)


def test_method_table_names_every_method() -> None:
    from mergetools.algebra.methods import METHOD_TABLE
    from mergetools.algebra.requests import METHOD_ALIASES, METHODS

    assert set(METHOD_TABLE) == set(METHODS)
    assert set(METHOD_ALIASES.values()) <= set(METHOD_TABLE)
    for row in METHOD_TABLE.values():
        assert row.math and (row.dense is not None) == (row.kind == "dense")


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_dense_methods_on_each_device_match_the_float64_reference(
    tmp_path: Path, device: str, method: str
) -> None:
    """Same masks and the same result on CPU and CUDA (DARE's masks are drawn on the CPU)."""
    paths = _two_adapters(tmp_path)
    out = tmp_path / "out"
    request = CombineRequest(
        sources=tuple(map(str, paths)), method=method, weights=(0.6, 0.4), density=0.5, seed=2 if method == "dare_ties" else None,
        rank=10, out=str(out), device=device,
    )  # fmt: skip
    result = combine_adapters(request, paths, out=out, fsync=False)
    assert result.device.startswith(device)
    sources = _source_deltas(paths, [0.6, 0.4])
    want = {}
    for k in sources[0]:
        terms = [sources[0][k], sources[1][k]]
        if method == "dare_ties":
            masks = dare_masks(terms[0].shape, 2, seed=2, module=k, density=0.5)
            terms = [t * m / 0.5 for t, m in zip(terms, masks, strict=True)]
        want[k] = _truncate64(_ties64(terms, 0.5 if method == "ties" else 1.0, "total"), 10)
    _assert_close(_loaded_deltas(out), want, atol=1e-5)
