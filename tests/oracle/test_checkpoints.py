"""Base layouts and output format: single/sharded safetensors, legacy .bin, fp32/fp16/bf16, names
with and without the base-model prefix; ``dtype`` conversion, ``max_shard_size``, metadata,
``loradex.json`` provenance."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from tests import factories as F
from tests.oracle import (
    assert_matches_reference64,
    config_dtype,
    conv_loader,
    json_numbers,
    json_strings,
    merge_and_compare,
    read_json,
    reference64,
    run_merge,
)


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


@pytest.mark.parametrize("layout", F.LAYOUTS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("prefix", [True, False], ids=["prefixed", "bare"])
def test_base_layouts(tmp_path: Path, layout: str, dtype: str, prefix: bool) -> None:
    """Every base layout x dtype x naming merges to PEFT's result under the base's own names."""
    base = F.save_checkpoint(
        F.tiny_gpt2(), tmp_path / "base", layout=layout, dtype=dtype, prefix=prefix
    )
    adapter = F.save_adapter(
        F.tiny_gpt2(), tmp_path / "ad", target_modules=["c_attn", "c_fc"], fan_in_fan_out=True
    )
    out, tensors = merge_and_compare(tmp_path, base, [adapter], min_changed=4)
    assert ("transformer.h.0.attn.c_attn.weight" in tensors) == prefix
    assert all(t.dtype == F.DTYPES[dtype] for t in tensors.values())
    assert config_dtype(read_json(out / "config.json")) == dtype
    assert_matches_reference64(tensors, reference64(base, [adapter]))


@pytest.mark.parametrize("layout", ["sharded", "bin-sharded"])
def test_llama_sharded_bare_names(tmp_path: Path, layout: str) -> None:
    """Llama shards whose names lack ``model.`` (an adapter says ``model.layers...``)."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base", layout=layout, prefix=False)
    adapter = F.save_adapter(
        F.tiny_llama(), tmp_path / "ad", target_modules=["q_proj", "down_proj"]
    )
    _, tensors = merge_and_compare(tmp_path, base, [adapter], min_changed=4)
    assert "layers.0.self_attn.q_proj.weight" in tensors


@pytest.mark.parametrize(("to", "key"), [("bfloat16", "dtype"), ("float16", "torch_dtype")])
def test_dtype_conversion(tmp_path: Path, to: str, key: str) -> None:
    """``dtype=``: floating tensors converted (rounded once), integer tensors untouched, config's
    ``dtype``/``torch_dtype`` (whichever the base wrote) updated."""
    base = F.save_checkpoint(F.tiny_conv(), tmp_path / "base")
    F.rename_json_key(base / "config.json", "dtype", key)
    adapter = F.save_adapter(F.tiny_conv(), tmp_path / "ad", target_modules=["conv2", "proj"])
    out = tmp_path / "out"
    run_merge(base, [adapter], out, dtype=to)
    tensors = F.load_checkpoint_tensors(out)
    original = F.load_checkpoint_tensors(base)
    assert set(tensors) == set(original)
    for name, value in tensors.items():
        if original[name].is_floating_point():
            assert value.dtype == F.DTYPES[to], name
        else:
            assert value.dtype == original[name].dtype and torch.equal(value, original[name]), name
    assert torch.equal(tensors["norm.num_batches_tracked"], torch.tensor(7))
    config = read_json(out / "config.json")
    assert config[key] == to
    expected = reference64(base, [adapter])
    assert_matches_reference64(tensors, expected)
    # untouched floating tensors are exactly the rounded base
    assert torch.equal(tensors["conv1.weight"], original["conv1.weight"].to(F.DTYPES[to]))
    conv_loader(out)  # loads into the module


def test_dtype_upcast_from_bf16(tmp_path: Path) -> None:
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base", dtype="bfloat16")
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "ad", target_modules=["q_proj"])
    out = tmp_path / "out"
    run_merge(base, [adapter], out, dtype="float32")
    tensors = F.load_checkpoint_tensors(out)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert config_dtype(read_json(out / "config.json")) == "float32"
    assert_matches_reference64(tensors, reference64(base, [adapter]))


def test_max_shard_size_shards_with_index(tmp_path: Path, llama_base: Path) -> None:
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "ad", target_modules=["q_proj"])
    out = tmp_path / "out"
    limit = 20_000
    run_merge(llama_base, [adapter], out, max_shard_size=limit)
    index = read_json(out / "model.safetensors.index.json")
    files = sorted(p.name for p in out.glob("*.safetensors"))
    n = len(files)
    assert n > 1
    assert files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert not (out / "model.safetensors").exists()
    tensors = F.load_checkpoint_tensors(out)
    assert set(index["weight_map"]) == set(tensors)
    assert set(index["weight_map"].values()) == set(files)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["metadata"]["total_size"] == total
    for file in files:
        header = _header(out / file)
        names = [k for k in header if k != "__metadata__"]
        assert all(index["weight_map"][k] == file for k in names)
        size = sum(header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in names)
        assert size <= limit or len(names) == 1, (file, size)


def test_max_shard_size_string_is_decimal(tmp_path: Path, llama_base: Path) -> None:
    """``"20KB"`` is 20_000 bytes (huggingface_hub's decimal units), same plan as the int."""
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "ad", target_modules=["q_proj"])
    run_merge(llama_base, [adapter], tmp_path / "a", max_shard_size="20KB")
    run_merge(llama_base, [adapter], tmp_path / "b", max_shard_size=20_000)
    map_a = read_json(tmp_path / "a" / "model.safetensors.index.json")["weight_map"]
    map_b = read_json(tmp_path / "b" / "model.safetensors.index.json")["weight_map"]
    assert map_a == map_b


def test_tensor_above_the_limit_sits_alone(tmp_path: Path, llama_base: Path) -> None:
    """The 16 KB embedding and lm_head exceed a 10 KB limit: each gets a shard of its own."""
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "ad", target_modules=["lm_head"])
    out = tmp_path / "out"
    run_merge(llama_base, [adapter], out, max_shard_size=10_000)
    weight_map = read_json(out / "model.safetensors.index.json")["weight_map"]
    for big in ("model.embed_tokens.weight", "lm_head.weight"):
        shard = weight_map[big]
        assert [k for k, v in weight_map.items() if v == shard] == [big]
    for file in set(weight_map.values()):
        header = _header(out / file)
        names = [k for k in header if k != "__metadata__"]
        size = sum(header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in names)
        assert size <= 10_000 or len(names) == 1


def test_single_shard_has_no_index(tmp_path: Path) -> None:
    """A sharded base whose merge fits in one shard: ``model.safetensors``, no index."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base", layout="sharded")
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "ad", target_modules=["q_proj"])
    out, _ = merge_and_compare(tmp_path, base, [adapter], max_shard_size="5GB")
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(out.glob("*.index.json"))
    assert not list(out.glob("*.bin"))


def test_output_metadata_format_pt(tmp_path: Path) -> None:
    """Every file loradex writes carries ``{"format": "pt"}`` (from a .bin base too)."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base", layout="bin-sharded")
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "ad", target_modules=["q_proj"])
    out = tmp_path / "out"
    run_merge(base, [adapter], out, max_shard_size=30_000)
    files = list(out.glob("*.safetensors"))
    assert len(files) > 1
    for file in files:
        assert _header(file)["__metadata__"]["format"] == "pt", file.name
    from safetensors import safe_open

    with safe_open(str(files[0]), "pt") as f:
        assert f.metadata()["format"] == "pt"


def test_provenance_file(tmp_path: Path, llama_base: Path) -> None:
    """``loradex.json`` records every adapter's sha256 and weight."""
    adapters = [
        F.save_adapter(F.tiny_llama(), tmp_path / f"a{i}", seed=i + 1, target_modules=["q_proj"])
        for i in range(2)
    ]
    out = tmp_path / "out"
    run_merge(llama_base, adapters, out, weights=[0.75, -0.125])
    provenance = read_json(out / "loradex.json")
    strings = json_strings(provenance)
    for adapter in adapters:
        digests = {F.sha256_file(p) for p in adapter.iterdir() if p.is_file()}
        assert any(d in s for d in digests for s in strings), f"no sha256 of {adapter} recorded"
    numbers = json_numbers(provenance)
    assert 0.75 in numbers and -0.125 in numbers
    assert "loradex.json" not in F.folder_snapshot(llama_base)


@pytest.mark.parametrize("adapter_dtype", ["float32", "bfloat16"])
def test_legacy_adapter_bin(tmp_path: Path, llama_base: Path, adapter_dtype: str) -> None:
    """``adapter_model.bin`` (read with ``weights_only=True``), in fp32 or bf16 factors."""
    adapter = F.save_adapter(
        F.tiny_llama(),
        tmp_path / "ad",
        target_modules=["q_proj", "up_proj"],
        adapter_dtype=adapter_dtype,
    )
    tensors = F.adapter_tensors(adapter)
    torch.save(tensors, adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    _, out = merge_and_compare(tmp_path, llama_base, [adapter], min_changed=4)
    assert_matches_reference64(out, reference64(llama_base, [adapter]))
