"""Adapter and checkpoint summaries; structural signatures."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergetools.errors import CorruptFileError, InvalidInputError
from mergetools.inspect import summarize_adapter, summarize_checkpoint, vllm_max_lora_rank
from mergetools.signature import load_signature, parse_signature, read_signature
from tests.factories import (
    adapter_tensors,
    edit_json,
    save_adapter,
    save_checkpoint,
    tiny_gpt2,
    tiny_llama,
)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inspect")
    return {
        "plain": save_adapter(
            tiny_llama(), root / "plain", target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8
        ),
        "fancy": save_adapter(
            tiny_llama(),
            root / "fancy",
            target_modules=["q_proj", "v_proj", "embed_tokens"],
            r=8,
            lora_alpha=16,
            rank_pattern={"v_proj": 2},
            alpha_pattern={"v_proj": 4},
            use_rslora=True,
            use_dora=True,
            modules_to_save=["lm_head"],
            bias="lora_only",
        ),
        "tokens": save_adapter(
            tiny_llama(), root / "tokens", target_modules=["q_proj"], trainable_token_indices=[5, 6]
        ),
    }


def test_vllm_max_lora_rank() -> None:
    assert [vllm_max_lora_rank(r) for r in (1, 2, 8, 9, 16, 300, 320, 321, 512, 513)] == [
        1,
        8,
        8,
        16,
        16,
        320,
        320,
        512,
        512,
        None,
    ]


def test_plain_summary(adapters: dict[str, Path]) -> None:
    s = summarize_adapter(adapters["plain"])
    assert s.target_modules == ["q_proj", "v_proj"]
    assert s.max_rank == 4 and set(s.ranks.values()) == {4} and len(s.ranks) == 4
    assert "model.layers.0.self_attn.q_proj" in s.ranks
    assert s.alpha == 8 and s.scale == 2 and not s.use_dora and not s.use_rslora
    assert not any(s.flags.values()) and set(s.flags) == {
        "dora",
        "rslora",
        "lora_bias",
        "bias",
        "embeddings",
        "modules_to_save",
        "trainable_tokens",
        "rank_pattern",
        "alpha_pattern",
    }
    tensors = adapter_tensors(adapters["plain"])
    assert s.param_count == sum(t.numel() for t in tensors.values())
    assert s.nbytes == sum(t.numel() * t.element_size() for t in tensors.values())
    assert s.dtype == "float32" and s.vllm_max_lora_rank == 8 and s.base_fingerprint is None
    assert len(s.adapter_fingerprint) == 64
    json.dumps(s.to_dict())


def test_variant_flags(adapters: dict[str, Path]) -> None:
    s = summarize_adapter(adapters["fancy"])
    assert s.flags == {
        "dora": True,
        "rslora": True,
        "lora_bias": False,
        "bias": True,
        "embeddings": True,
        "modules_to_save": True,
        "trainable_tokens": False,
        "rank_pattern": True,
        "alpha_pattern": True,
    }
    assert s.use_dora and s.use_rslora
    assert s.ranks["model.layers.0.self_attn.v_proj"] == 2 and s.max_rank == 8
    assert s.scales["model.layers.0.self_attn.v_proj"] == pytest.approx(4 / math.sqrt(2))
    assert s.scale == pytest.approx(16 / math.sqrt(8))
    assert "lm_head.weight" in s.replaced_tensors
    assert summarize_adapter(adapters["tokens"]).flags["trainable_tokens"]


def test_adapter_fingerprint_is_order_and_metadata_invariant(
    adapters: dict[str, Path], tmp_path: Path
) -> None:
    original = summarize_adapter(adapters["plain"]).adapter_fingerprint
    copy = Path(shutil.copytree(adapters["plain"], tmp_path / "copy"))
    tensors = adapter_tensors(copy)
    save_file(
        dict(reversed(list(tensors.items()))),
        str(copy / "adapter_model.safetensors"),
        metadata={"a": "b"},
    )
    assert summarize_adapter(copy).adapter_fingerprint == original
    key = next(iter(tensors))
    tensors[key][0, 0] += 1e-3
    save_file(tensors, str(copy / "adapter_model.safetensors"))
    assert summarize_adapter(copy).adapter_fingerprint != original


def test_recorded_base_fingerprint(adapters: dict[str, Path], tmp_path: Path) -> None:
    copy = Path(shutil.copytree(adapters["plain"], tmp_path / "copy"))
    save_file(
        adapter_tensors(copy),
        str(copy / "adapter_model.safetensors"),
        metadata={"format": "pt", "loradex.base_fingerprint": "1" * 64},
    )
    assert summarize_adapter(copy).base_fingerprint == "1" * 64
    edit_json(
        copy / "adapter_config.json",
        loradex_base_fingerprint="2" * 64,
        base_model_name_or_path="org/m",
        revision="v1",
    )
    s = summarize_adapter(copy)
    assert (
        s.base_fingerprint == "2" * 64
        and s.base_model_name_or_path == "org/m"
        and s.revision == "v1"
    )


def test_checkpoint_summary_and_signature(tmp_path: Path) -> None:
    base = save_checkpoint(
        tiny_gpt2(), tmp_path / "gpt2", prefix=False, layout="sharded", dtype="bfloat16"
    )
    s = summarize_checkpoint(base)
    assert (
        s.architectures == ["GPT2LMHeadModel"] and s.model_type == "gpt2" and s.tie_word_embeddings
    )
    assert (
        s.name_prefix is None
        and s.num_files > 1
        and s.fingerprint is None
        and s.dtype == "bfloat16"
    )
    assert summarize_checkpoint(base, fingerprint=True).fingerprint is not None
    assert (
        summarize_checkpoint(save_checkpoint(tiny_gpt2(), tmp_path / "p")).name_prefix
        == "transformer"
    )
    signature = read_signature(base)
    assert signature["format"] == "loradex.signature/1" and signature["vocab_size"] == 128
    assert signature["tensors"]["h.0.attn.c_attn.weight"] == ["BF16", [32, 96]]
    assert len(json.dumps(signature)) < 20_000
    parsed = parse_signature(json.loads(json.dumps(signature)))
    assert parsed.to_dict() == signature and parsed.input_embedding_name() == "wte.weight"


@pytest.mark.parametrize(
    ("content", "error", "text"),
    [
        ("{not json", CorruptFileError, "not a valid signature"),
        ('{"format": "other"}', CorruptFileError, "format is 'other'"),
        (
            '{"format": "loradex.signature/1", "tensors": {"a": ["F99", [1]]}}',
            CorruptFileError,
            "known dtype",
        ),
        (
            '{"format": "loradex.signature/1", "tensors": {"a": ["F32", [-1]]}}',
            CorruptFileError,
            "'a'",
        ),
        ('{"format": "loradex.signature/1", "tensors": {}}', CorruptFileError, "'tensors'"),
        (
            '{"format": "loradex.signature/1", "fingerprint": "x", "tensors": {"a": ["F32", [1]]}}',
            CorruptFileError,
            "64 lowercase hex",
        ),
        ("[1]", CorruptFileError, "JSON object"),
    ],
)
def test_bad_signature_files(tmp_path: Path, content: str, error: type, text: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(error, match=text):
        load_signature(path)


def test_missing_signature_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not found"):
        load_signature(tmp_path / "absent.json")


def test_bf16_adapter_dtype(tmp_path: Path) -> None:
    adapter = save_adapter(
        tiny_llama(), tmp_path / "bf", target_modules=["q_proj"], adapter_dtype="bfloat16"
    )
    assert summarize_adapter(adapter).dtype == "bfloat16"
    assert adapter_tensors(adapter)[next(iter(adapter_tensors(adapter)))].dtype == torch.bfloat16
