"""Differential tests of loradex's merge against PEFT, and the helpers they share.

The oracle is PEFT itself: load the base with transformers, ``PeftModel.from_pretrained`` the
adapter(s), ``merge_and_unload()``, and compare its state dict with loradex's output tensor by
tensor (loradex keeps the base file's own names; :func:`resolve_key` maps them). Where PEFT is known
to round differently (several adapters, DoRA, 16-bit bases) or to be wrong (tied embeddings), the
output is also checked against :func:`reference64`, a float64 evaluation of the formulas of
DESIGN.md §3 straight from the adapter tensors.

Tolerances (never bit identity for changed tensors):
  - fp32 output: ``assert_close(atol=1e-5, rtol=1e-5)``;
  - 16-bit output vs PEFT: within ``k`` ulps for ``k`` adapters (PEFT rounds after each one);
  - 16-bit output vs the float64 reference: within 1 ulp (loradex rounds once);
  - tensors no adapter touches: bit for bit equal to the base.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from tests.factories import (
    DTYPES,
    adapter_tensors,
    dtype_ulp,
    load_checkpoint_tensors,
    load_tiny_conv,
    read_json,
)

PEFT_PREFIX = "base_model.model."
KNOWN_PREFIXES = ("model", "transformer", "bert")
INPUT_IDS = torch.tensor([[1, 5, 9, 17, 33, 64, 100, 127], [2, 3, 4, 120, 121, 122, 7, 8]])

Loader = Callable[[Path], nn.Module]


# ----------------------------------------------------------------------------------- running


def run_merge(base: Path, adapters: Sequence[Path], out: Path, **kwargs: object):
    """Call ``mergetools.merge.merge_adapters`` (imported lazily: the suite collects without it).

    Defaults to ``device="cpu"`` and ``fsync=False`` (tests need neither a GPU nor durability).
    """
    from mergetools.merge import merge_adapters

    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("fsync", False)
    return merge_adapters(base, list(adapters), out, **kwargs)


# ----------------------------------------------------------------------------------- loaders


def causal_lm_loader(path: Path) -> nn.Module:
    """``AutoModelForCausalLM`` in the checkpoint's own dtype."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()


def bert_cls_loader(num_labels: int = 3) -> Loader:
    """A loader building ``BertForSequenceClassification`` (any BERT checkpoint, with or without head)."""

    def load(path: Path) -> nn.Module:
        from transformers import BertForSequenceClassification

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)  # a missing head is initialised; PEFT replaces it anyway
            return BertForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, dtype="auto"
            ).eval()

    return load


def conv_loader(path: Path) -> nn.Module:
    """:class:`tests.factories.TinyConvNet` with a checkpoint's weights."""
    return load_tiny_conv(path)


def peft_model(
    base: Path,
    adapters: Sequence[Path],
    *,
    loader: Loader = causal_lm_loader,
    weights: Sequence[float] | None = None,
    resize_vocab: int | None = None,
) -> nn.Module:
    """The unmerged ``PeftModel`` of ``base`` with every adapter loaded and active.

    A weight ``w`` multiplies each LoRA layer's scaling (so it scales ``lora_B`` and ``lora_bias``,
    as DESIGN.md §3 says). ``resize_vocab`` resizes the base's embeddings before loading (adapters
    trained after ``resize_token_embeddings``).
    """
    from peft import PeftModel

    model = loader(Path(base))
    if resize_vocab is not None:
        model.resize_token_embeddings(resize_vocab, mean_resizing=False)
    names = [f"a{i}" for i in range(len(adapters))]
    peft = PeftModel.from_pretrained(model, adapters[0], adapter_name=names[0])
    for name, adapter in zip(names[1:], adapters[1:], strict=True):
        peft.load_adapter(adapter, adapter_name=name)
    if weights is not None:
        for module in peft.modules():
            scaling = getattr(module, "scaling", None)
            if isinstance(scaling, dict):
                for name, w in zip(names, weights, strict=True):
                    if name in scaling:
                        scaling[name] *= w
    if len(names) > 1:
        peft.base_model.set_adapter(names)
    return peft.eval()


def peft_merged_state_dict(
    base: Path,
    adapters: Sequence[Path],
    *,
    loader: Loader = causal_lm_loader,
    weights: Sequence[float] | None = None,
    resize_vocab: int | None = None,
) -> dict[str, Tensor]:
    """The state dict of ``merge_and_unload()`` of :func:`peft_model` (names of the task model)."""
    peft = peft_model(base, adapters, loader=loader, weights=weights, resize_vocab=resize_vocab)
    names = [f"a{i}" for i in range(len(adapters))]
    merged = peft.merge_and_unload(adapter_names=names)
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


# ------------------------------------------------------------------------------ name mapping


def resolve_key(key: str, candidates: Mapping[str, object] | set[str]) -> str | None:
    """Map a tensor name to one of ``candidates``: exact, else adding or stripping one prefix."""
    if key in candidates:
        return key
    found = [f"{p}.{key}" for p in KNOWN_PREFIXES if f"{p}.{key}" in candidates]
    head, _, rest = key.partition(".")
    if head in KNOWN_PREFIXES and rest in candidates:
        found.append(rest)
    if len(found) > 1:
        raise AssertionError(f"{key!r} is ambiguous among {found}")
    return found[0] if found else None


# -------------------------------------------------------------------------------- comparing


def assert_within_ulps(
    actual: Tensor,
    expected: Tensor,
    *,
    k: float,
    dtype: torch.dtype,
    magnitude: Tensor | None = None,
    slack: Tensor | None = None,
    name: str = "",
) -> None:
    """Assert ``|actual - expected| <= k * ulp (+ slack)`` elementwise, computed in float64.

    ``ulp`` is that of ``dtype`` at ``max(|expected|, |actual|, magnitude)``: pass ``magnitude`` (e.g.
    ``|W| + sum |dW_i|``) when an intermediate rounding happened at a larger magnitude than the result
    (cancellation). ``slack`` is an absolute allowance for inputs known only that well.
    """
    a = actual.to(torch.float64)
    e = expected.to(torch.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    scale = torch.maximum(a.abs(), e.abs())
    if magnitude is not None:
        scale = torch.maximum(scale, magnitude.to(torch.float64).abs())
    bound = k * dtype_ulp(scale, dtype)
    if slack is not None:
        bound = bound + slack.to(torch.float64)
    err = (a - e).abs()
    bad = err > bound
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements beyond {k} ulp(s) of {dtype}; first at "
            f"{idx}: actual {a[idx].item()!r} expected {e[idx].item()!r} (bound {bound[idx].item()!r});"
            f" max error {err.max().item():.3e}"
        )


def assert_fp_close(actual: Tensor, expected: Tensor, *, name: str = "", k: int = 1) -> None:
    """fp32: ``assert_close`` at fp32 tolerance; 16-bit: within ``k`` ulps of the output dtype."""
    if actual.dtype in (torch.bfloat16, torch.float16):
        assert_within_ulps(actual, expected, k=k, dtype=actual.dtype, name=name)
    else:
        torch.testing.assert_close(
            actual.to(torch.float64),
            expected.to(torch.float64),
            atol=1e-5,
            rtol=1e-5,
            msg=lambda m: f"{name}: {m}",
        )


def load_output(out: Path) -> dict[str, Tensor]:
    """The tensors of a loradex output folder (read with safetensors' own loader)."""
    return load_checkpoint_tensors(out)


def assert_matches_peft(
    out: Path,
    base: Path,
    reference: Mapping[str, Tensor],
    *,
    k: int = 1,
    added: Sequence[str] = (),
    magnitude: Mapping[str, Tensor] | None = None,
    min_changed: int = 1,
) -> dict[str, Tensor]:
    """Compare every tensor of loradex's ``out`` with PEFT's merged ``reference`` state dict.

    - output names are the base's names, plus ``added`` (tensors the base lacks);
    - a tensor PEFT left bit-identical to the base must be bit-identical in the output;
    - a changed tensor must match within fp32 tolerance / ``k`` ulps (``magnitude[name]`` widens the
      ulp scale where PEFT rounded an intermediate sum);
    - at least ``min_changed`` tensors must have changed (a test where nothing changes cannot fail).

    Returns the output tensors.
    """
    out_tensors = load_output(out)
    base_tensors = load_checkpoint_tensors(base)
    expected_names = set(base_tensors) | set(added)
    assert set(out_tensors) == expected_names, (
        f"missing {sorted(expected_names - set(out_tensors))}, "
        f"unexpected {sorted(set(out_tensors) - expected_names)}"
    )
    changed = []
    for name, actual in out_tensors.items():
        ref_name = resolve_key(name, reference)
        assert ref_name is not None, f"{name} has no counterpart in PEFT's merged model"
        expected = reference[ref_name]
        assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{name}: {actual.shape} != {expected.shape}"
        original = base_tensors.get(name)
        if (
            original is not None
            and original.shape == expected.shape
            and torch.equal(original, expected)
        ):
            assert torch.equal(actual, original), f"{name}: untouched by the adapter but changed"
            continue
        changed.append(name)
        if magnitude is not None and name in magnitude and actual.dtype != torch.float32:
            assert_within_ulps(
                actual, expected, k=k, dtype=actual.dtype, magnitude=magnitude[name], name=name
            )
        else:
            assert_fp_close(actual, expected, name=name, k=k)
    assert len(changed) >= min_changed, f"only {changed} changed; the test cannot fail"
    return out_tensors


def assert_matches_reference64(
    out_tensors: Mapping[str, Tensor],
    expected64: Mapping[str, Tensor],
    *,
    names: Sequence[str] | None = None,
    fp32_tol: float = 1e-5,
    input_slack: Mapping[str, Tensor] | None = None,
) -> None:
    """Compare output tensors with :func:`reference64` results (1 ulp for 16-bit, else fp32 tol).

    ``input_slack`` (from :func:`reference64`) adds an absolute allowance for tensors whose input
    was only known to within 1/2 ulp.
    """
    for name in names if names is not None else expected64:
        actual = out_tensors[name]
        expected = expected64[name]
        if actual.dtype in (torch.bfloat16, torch.float16):
            slack = input_slack.get(name) if input_slack is not None else None
            assert_within_ulps(actual, expected, k=1, dtype=actual.dtype, slack=slack, name=name)
        elif actual.is_floating_point():
            torch.testing.assert_close(
                actual.to(torch.float64),
                expected.to(torch.float64),
                atol=fp32_tol,
                rtol=fp32_tol,
                msg=lambda m, name=name: f"{name}: {m}",
            )
        else:
            assert torch.equal(actual, expected.to(actual.dtype)), name


# ------------------------------------------------------------------- float64 reference (§3)


def pattern_value(patterns: Mapping[str, object], module: str, default: object) -> object:
    """PEFT's rule: the first key with ``re.match(rf"(.*\\.)?({key})$", module)`` wins."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def adapter_scale(config: Mapping[str, object], module: str, rank: int) -> float:
    """``alpha / r`` (or ``alpha / sqrt(r)`` with rslora), alpha from ``alpha_pattern``."""
    alpha = float(pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"]))  # type: ignore[arg-type]
    expected_rank = pattern_value(config.get("rank_pattern") or {}, module, config["r"])
    if expected_rank != rank:
        raise AssertionError(f"{module}: config rank {expected_rank} but tensors say {rank}")
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _base_key(module_or_name: str, base: Mapping[str, Tensor], suffix: str = "") -> str:
    key = resolve_key(f"{module_or_name}{suffix}", base)
    if key is None:
        raise AssertionError(f"{module_or_name}{suffix} not in the base")
    return key


def reference64(
    base: Path,
    adapters: Sequence[Path],
    *,
    weights: Sequence[float] | None = None,
    untie: bool = False,
    scales: dict[str, Tensor] | None = None,
    input_slack: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """The merged model in float64 by the formulas of DESIGN.md §3, from the adapter tensors.

    Returns every tensor of the result under the base's names (non-float tensors as they are).
    Full replacements first (in adapter order), then ``W + sum_i w_i s_i dW_i`` per layer, DoRA
    (``m / ||V|| * V``), ``lora_bias`` and trainable-token rows. ``untie`` materialises a tied
    ``lm_head.weight`` from the embedding before anything is applied.

    ``scales``, when given, is filled with the magnitude at which a merge that rounds intermediate
    results (PEFT in 16-bit) rounds them, per changed weight: ``|W| + sum_i |w_i dW_i|``, and for
    DoRA ``|m / ||V||| * (|W| + |dW|)``. ``input_slack`` is filled with an absolute allowance for
    tensors whose starting value is ambiguous to within 1/2 ulp (an adapter's wider-dtype copy of a
    16-bit base tensor): 1 ulp of ``W`` (times ``m / ||V||`` under DoRA).
    """
    tensors = load_checkpoint_tensors(base)
    result: dict[str, Tensor] = {
        k: v.to(torch.float64) if v.is_floating_point() else v.clone() for k, v in tensors.items()
    }
    if untie and "lm_head.weight" not in result:
        embedding = [k for k in result if k.endswith(("embed_tokens.weight", "wte.weight"))]
        assert len(embedding) == 1, f"cannot tell the input embedding among {embedding}"
        result["lm_head.weight"] = result[embedding[0]].clone()
    weights = list(weights) if weights is not None else [1.0] * len(adapters)
    parsed = []
    lora_suffixes = (
        ".lora_A.weight",
        ".lora_B.weight",
        ".lora_B.bias",
        ".lora_embedding_A",
        ".lora_embedding_B",
        ".lora_magnitude_vector",
        ".token_adapter.trainable_tokens_delta",
    )
    for adapter, w in zip(adapters, weights, strict=True):
        config = read_json(Path(adapter) / "adapter_config.json")
        raw = {
            k.removeprefix(PEFT_PREFIX): v.to(torch.float64)
            for k, v in adapter_tensors(adapter).items()
        }
        parsed.append((config, raw))
        for key, value in raw.items():
            if key.endswith(lora_suffixes):
                continue
            name = key.replace(".base_layer.", ".")
            target = resolve_key(name, result)
            if target is None:  # a tensor the base lacks (task head): added under its own name
                result[name] = value.clone()
                continue
            original = tensors.get(target)
            if (
                original is not None
                and original.shape == value.shape
                and torch.equal(value.to(original.dtype), original)
            ):
                # PEFT saves a copy of the base tensor (e.g. ``embed_tokens.base_layer.weight``),
                # here in a wider dtype than a 16-bit base: PEFT rounds it into the base on load,
                # a merge may also use it as is. Keep the base value; the two differ by < 1/2 ulp of
                # the base tensor, which ``input_slack`` lets the comparison allow for.
                if input_slack is not None and value.dtype != original.dtype:
                    input_slack[target] = dtype_ulp(value, original.dtype)
                continue
            assert w == 1.0, f"{key}: a full replacement cannot be weighted ({w})"
            result[target] = value.clone()
    deltas: dict[str, Tensor] = {}
    for (config, raw), w in zip(parsed, weights, strict=True):
        modules = sorted(
            {k.rsplit(".lora_", 1)[0] for k in raw if ".lora_A." in k or ".lora_embedding_A" in k}
        )
        for module in modules:
            embedding = f"{module}.lora_embedding_A" in raw
            a = raw[f"{module}.lora_embedding_A" if embedding else f"{module}.lora_A.weight"]
            b = raw[f"{module}.lora_embedding_B" if embedding else f"{module}.lora_B.weight"]
            scale = adapter_scale(config, module, a.shape[0])
            key = _base_key(module, result, ".weight")
            weight = result[key]
            if embedding:
                delta = (b @ a).T
            else:
                delta = (b.flatten(1) @ a.flatten(1)).reshape(b.shape[0], *a.shape[1:])
                if config.get("fan_in_fan_out"):
                    delta = delta.T
            delta = delta.reshape(weight.shape) * scale
            magnitude = raw.get(f"{module}.lora_magnitude_vector")
            if magnitude is not None:
                assert w == 1.0, "DoRA cannot be weighted"
                v = weight + delta
                if embedding:
                    norm = v.norm(dim=0, keepdim=True)  # per column: (1, dim)
                    factor = magnitude.reshape(1, -1) / norm
                elif config.get("fan_in_fan_out"):
                    norm = v.norm(dim=0, keepdim=True)
                    factor = magnitude.reshape(1, -1) / norm
                else:
                    dims = tuple(range(1, v.dim()))
                    norm = v.pow(2).sum(dim=dims, keepdim=True).sqrt()
                    factor = magnitude.reshape(norm.shape) / norm
                result[key] = factor * v
                if input_slack is not None and key in input_slack:
                    input_slack[key] = factor.abs() * input_slack[key]
                if scales is not None:
                    scales[key] = factor.abs() * (weight.abs() + delta.abs())
            else:
                deltas[key] = deltas.get(key, torch.zeros_like(weight)) + w * delta
                if scales is not None:
                    scales[key] = scales.get(key, weight.abs()) + (w * delta).abs()
            bias = raw.get(f"{module}.lora_B.bias")
            if bias is not None:
                bias_key = _base_key(module, result, ".bias")
                result[bias_key] = result[bias_key] + w * scale * bias
        indices = config.get("trainable_token_indices")
        for key, delta in raw.items():
            if not key.endswith(".token_adapter.trainable_tokens_delta"):
                continue
            module = key.removesuffix(".token_adapter.trainable_tokens_delta")
            idx = indices
            if isinstance(indices, dict):
                idx = pattern_value(indices, module, None)
            target = _base_key(module, result, ".weight")
            result[target][torch.tensor(idx)] = delta
    for key, delta in deltas.items():
        result[key] = result[key] + delta
    return result


# ------------------------------------------------------------------------------------ misc


def config_dtype(config: Mapping[str, object]) -> object:
    """The dtype a config names (``dtype`` in transformers 5, ``torch_dtype`` in 4.x)."""
    return config.get("dtype", config.get("torch_dtype"))


def json_strings(data: object) -> list[str]:
    """Every string (keys and values) anywhere in a JSON document."""
    found: list[str] = []
    if isinstance(data, str):
        found.append(data)
    elif isinstance(data, dict):
        for k, v in data.items():
            found.append(str(k))
            found.extend(json_strings(v))
    elif isinstance(data, list):
        for v in data:
            found.extend(json_strings(v))
    return found


def json_numbers(data: object) -> list[float]:
    """Every number anywhere in a JSON document."""
    if isinstance(data, bool):
        return []
    if isinstance(data, int | float):
        return [float(data)]
    if isinstance(data, dict):
        return [n for v in data.values() for n in json_numbers(v)]
    if isinstance(data, list):
        return [n for v in data for n in json_numbers(v)]
    return []


def dumps(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True)


__all__ = [
    "DTYPES",
    "INPUT_IDS",
    "assert_fp_close",
    "assert_matches_peft",
    "assert_matches_reference64",
    "assert_within_ulps",
    "bert_cls_loader",
    "causal_lm_loader",
    "config_dtype",
    "conv_loader",
    "device_params",
    "dumps",
    "read_json",
    "json_numbers",
    "json_strings",
    "load_output",
    "merge_and_compare",
    "peft_merged_state_dict",
    "peft_model",
    "reference64",
    "resolve_key",
    "run_merge",
]


# --------------------------------------------------------------------------------- one flow


def merge_and_compare(
    tmp_path: Path,
    base: Path,
    adapters: Sequence[Path],
    *,
    loader: Loader = causal_lm_loader,
    weights: Sequence[float] | None = None,
    resize_vocab: int | None = None,
    k: int | None = None,
    added: Sequence[str] = (),
    min_changed: int = 1,
    magnitude: Mapping[str, Tensor] | None = None,
    **merge_kwargs: object,
) -> tuple[Path, dict[str, Tensor]]:
    """Merge with loradex into ``tmp_path / "out"`` and compare with PEFT's merge of the same inputs.

    Returns ``(out, output tensors)``.
    """
    out = tmp_path / "out"
    result = run_merge(base, adapters, out, weights=weights, **merge_kwargs)
    assert Path(result.out).resolve() == out.resolve()
    json.dumps(result.to_dict())  # the summary is JSON-serialisable
    reference = peft_merged_state_dict(
        base, adapters, loader=loader, weights=weights, resize_vocab=resize_vocab
    )
    tensors = assert_matches_peft(
        out,
        base,
        reference,
        k=k if k is not None else len(adapters),
        added=added,
        min_changed=min_changed,
        magnitude=magnitude,
    )
    return out, tensors


def device_params() -> list[object]:
    """``device`` values for the core tests: ``cpu`` always, ``cuda`` marked ``gpu`` (skipped, with
    the reason shown, where torch sees no CUDA device)."""
    import pytest

    return [
        pytest.param("cpu", id="cpu"),
        pytest.param(
            "cuda",
            id="cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(
                    not torch.cuda.is_available(),
                    reason="gpu: torch.cuda.is_available() is False on this machine",
                ),
            ],
        ),
    ]
