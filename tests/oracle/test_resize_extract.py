"""resize and extract against float64 references and PEFT on tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mergetools.adapter import load_adapter
from mergetools.algebra.extract import extract_lora
from mergetools.algebra.factors import read_factors
from mergetools.algebra.requests_lowrank import ExtractRequest, ResizeRequest
from mergetools.algebra.resize import resize_adapter
from mergetools.errors import IncompatibleError
from mergetools.merge import merge_adapters
from tests import factories as F

TOKENS = torch.tensor([[1, 5, 9, 33, 70, 2, 17], [3, 3, 101, 64, 8, 0, 127]])


def _logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(TOKENS).logits.double()


def _peft_logits(arch: str, adapter: Path, *, seed: int = 0) -> torch.Tensor:
    from peft import PeftModel

    return _logits(PeftModel.from_pretrained(F.build_model(arch, seed=seed), adapter))


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-5) -> None:
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max())


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    return F.save_adapter(
        F.tiny_llama(), tmp_path / "src", target_modules=["q_proj", "v_proj", "down_proj"], r=6, lora_alpha=12,
        use_rslora=True,
    )


def test_resize_to_full_rank_is_exact(tmp_path: Path, adapter: Path) -> None:
    result = resize_adapter(ResizeRequest(source=str(adapter), rank=6), tmp_path / "out")
    assert all(m.relative_error == 0.0 and m.rank_after == 6 for m in result.modules)
    _close(_peft_logits("llama", tmp_path / "out"), _peft_logits("llama", adapter))


def test_resize_is_the_float64_truncated_svd(tmp_path: Path, adapter: Path) -> None:
    result = resize_adapter(ResizeRequest(source=str(adapter), rank=2), tmp_path / "out")
    before = read_factors(load_adapter(adapter))
    after = read_factors(load_adapter(tmp_path / "out"))
    config = F.read_json(tmp_path / "out" / "adapter_config.json")
    assert config["r"] == config["lora_alpha"] == 2 and not config["use_rslora"]
    model = F.tiny_llama()
    params = dict(model.named_parameters())
    for path, f in before.items():
        dense = f.delta(torch.float64)
        u, s, vh = torch.linalg.svd(dense)
        best = (u[:, :2] * s[:2]) @ vh[:2]
        assert after[path].rank == 2
        assert torch.allclose(after[path].delta(torch.float64), best, atol=1e-6)
        report = next(m for m in result.modules if m.path == path)
        assert report.relative_error == pytest.approx(math.sqrt(float((s[2:] ** 2).sum() / (s**2).sum())), rel=1e-5)
        assert report.kept_energy == pytest.approx(float((s[:2] ** 2).sum() / (s**2).sum()), rel=1e-6)
        with torch.no_grad():
            params[f"{path}.weight"] += best.float()
    _close(_peft_logits("llama", tmp_path / "out"), _logits(model))


def test_resize_energy_picks_the_smallest_rank(tmp_path: Path, adapter: Path) -> None:
    result = resize_adapter(ResizeRequest(source=str(adapter), energy=0.9), tmp_path / "out")
    before = read_factors(load_adapter(adapter))
    for m in result.modules:
        s = torch.linalg.svdvals(before[m.path].delta(torch.float64))
        share = torch.cumsum(s**2, 0) / (s**2).sum()
        assert m.rank_after == int((share < 0.9 - 1e-12).sum()) + 1
        assert m.kept_energy >= 0.9
    config = F.read_json(tmp_path / "out" / "adapter_config.json")
    assert config["alpha_pattern"] == config["rank_pattern"]


def _tuned(arch: str, tmp_path: Path, *, rank: int = 3, norms: bool = False, **save: object) -> tuple[Path, Path, torch.nn.Module]:
    base = F.save_checkpoint(F.build_model(arch), tmp_path / "base", **save)  # type: ignore[arg-type]
    model = F.build_model(arch)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "wpe" not in name:
                p += 0.2 * torch.randn(p.shape[0], rank, generator=g) @ torch.randn(rank, p.shape[1], generator=g)
            elif norms and p.ndim == 1 and ("norm" in name or ".ln_" in name):
                p += 0.05 * torch.randn(p.shape, generator=g)
    tuned = F.save_checkpoint(model, tmp_path / "tuned", **save)  # type: ignore[arg-type]
    return base, tuned, model


def test_extract_recovers_a_low_rank_delta_and_peft_reproduces_the_tuned_model(tmp_path: Path) -> None:
    base, tuned, model = _tuned("llama", tmp_path, norms=True)
    request = ExtractRequest(base=str(base), tuned=str(tuned), rank=3, keep_full=("norm",), device="cpu")
    result = extract_lora(request, tmp_path / "out")
    assert result.max_relative_error < 1e-5
    assert len(result.verified()) == 2 and all(m.exact_error is not None and m.exact_error < 1e-5 for m in result.verified())
    assert result.not_extracted == [] and len(result.kept_full) == 5
    truth = F.load_checkpoint_tensors(tuned)
    start = F.load_checkpoint_tensors(base)
    adapter = load_adapter(tmp_path / "out")
    for path, module in adapter.modules.items():
        a, b = adapter.load(module.lora_a).double(), adapter.load(module.lora_b).double()
        delta = (b @ a).T if module.kind == "embedding" else b @ a
        expected = truth[f"{path}.weight"].double() - start[f"{path}.weight"].double()
        assert torch.allclose(delta, expected, atol=1e-5 * float(expected.abs().max()))
    assert adapter.config["modules_to_save"] == sorted(
        ["model.norm", *[f"model.layers.{i}.{n}" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")]]
    )
    _close(_peft_logits("llama", tmp_path / "out"), _logits(model))
    # loradex's own merge reads the full tensors as replacements: it gives back the tuned weights.
    merge_adapters(base, [tmp_path / "out"], tmp_path / "merged")
    merged = F.load_checkpoint_tensors(tmp_path / "merged")
    for name, tensor in truth.items():
        assert torch.allclose(merged[name].double(), tensor.double(), atol=1e-5), name


def test_extract_gpt2_conv1d_legacy_names_and_tied_head(tmp_path: Path) -> None:
    base, tuned, model = _tuned("gpt2", tmp_path, norms=True, prefix=False)
    request = ExtractRequest(base=str(base), tuned=str(tuned), rank=3, keep_full=("norm", "bias"))
    result = extract_lora(request, tmp_path / "out")
    config = F.read_json(tmp_path / "out" / "adapter_config.json")
    assert config["fan_in_fan_out"] is True
    assert "transformer.h.0.attn.c_attn" in config["target_modules"] and "lm_head" in config["target_modules"]
    assert any(m.kind == "embedding" and m.path == "transformer.wte" for m in result.modules)
    _close(_peft_logits("gpt2", tmp_path / "out"), _logits(model))


def test_extract_energy_and_unchanged_tensors(tmp_path: Path) -> None:
    base, tuned, _ = _tuned("llama", tmp_path, rank=2)
    result = extract_lora(ExtractRequest(base=str(base), tuned=str(tuned), energy=0.999), tmp_path / "out")
    assert {m.rank for m in result.modules} == {2}
    assert result.unchanged == 5  # the norms
    # Norms changed but not kept: listed, not written.
    base2, tuned2, _ = _tuned("llama", tmp_path / "b", norms=True)
    listed = extract_lora(ExtractRequest(base=str(base2), tuned=str(tuned2), rank=3), tmp_path / "out2")
    assert [t for t, _ in listed.not_extracted][:1] == ["model.layers.0.input_layernorm.weight"]
    assert F.read_json(tmp_path / "out2" / "adapter_config.json")["modules_to_save"] is None


def test_extract_refuses_different_shapes(tmp_path: Path) -> None:
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base")
    tuned = F.save_checkpoint(F.tiny_llama(intermediate_size=96), tmp_path / "tuned")
    with pytest.raises(IncompatibleError, match=r"tensor 'model.layers.0.mlp.down_proj.weight' is \(32, 96\) but the base's"):
        extract_lora(ExtractRequest(base=str(base), tuned=str(tuned), rank=2), tmp_path / "out")
    assert not (tmp_path / "out").exists()
