"""check_adapters: one finding (code, severity, module, expected/actual) per problem, never a crash."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from mergetools.adapter import load_adapter
from mergetools.check import CODES, CheckReport, check_adapters, parse_serving
from mergetools.errors import InvalidInputError
from mergetools.fingerprint import fingerprint_checkpoint
from mergetools.signature import read_signature
from tests.factories import (
    adapter_tensors,
    edit_json,
    save_adapter,
    save_checkpoint,
    tiny_bert,
    tiny_conv,
    tiny_gpt2,
    tiny_llama,
    write_adapter_tensors,
    write_tokenizer,
)

LLAMA_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {
        "llama": save_checkpoint(tiny_llama(), root / "llama", layout="sharded"),
        "llama_tied": save_checkpoint(tiny_llama(tie_word_embeddings=True), root / "llama_tied"),
        "llama_wide": save_checkpoint(tiny_llama(intermediate_size=96), root / "llama_wide"),
        "llama_vocab160": save_checkpoint(tiny_llama(vocab_size=160), root / "llama_vocab160"),
        "gpt2": save_checkpoint(tiny_gpt2(), root / "gpt2", prefix=False),
        "bert": save_checkpoint(tiny_bert(), root / "bert"),
        "conv": save_checkpoint(tiny_conv(), root / "conv"),
    }


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_adapter(
        tiny_llama(), tmp_path_factory.mktemp("ad") / "plain", target_modules=LLAMA_ATTN, r=4
    )


def codes(report: CheckReport, severity: str | None = None) -> list[str]:
    return [f.code for f in report.findings if severity is None or f.severity == severity]


def copy(adapter: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(adapter, tmp_path / name))


def test_a_matching_adapter_passes(bases: dict[str, Path], plain: Path) -> None:
    report = check_adapters([plain], base=bases["llama"])
    assert report.ok() and report.ok(strict=True), report.findings
    assert report.adapters == [str(plain)]
    assert len(report.adapter_fingerprints[str(plain)]) == 64
    data = report.to_dict()
    assert data["ok"] is True and data["counts"] == {"error": 0, "warning": 0, "info": 0}
    json.dumps(data)


def test_every_code_is_documented() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "check.md").read_text()
    missing = [code for code in CODES if f"`{code}`" not in docs]
    assert not missing, f"docs/check.md does not list {missing}"


def test_shape_mismatch_names_both_shapes(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = save_adapter(
        tiny_llama(), tmp_path / "mlp", target_modules=["down_proj", "up_proj"], r=4
    )
    report = check_adapters([adapter], base=bases["llama_wide"])
    shape = [f for f in report.findings if f.code == "shape_mismatch"]
    assert len(shape) == 4 and not report.ok()
    down = next(f for f in shape if f.module == "model.layers.0.mlp.down_proj")
    assert down.severity == "error" and down.expected == [32, 96] and down.actual == [32, 64]
    assert "lora_A is [4, 64]" in down.message and "in_features 64 != 96" in down.message
    up = next(f for f in shape if f.module == "model.layers.0.mlp.up_proj")
    assert "out_features 64 != 96" in up.message


def test_conv_kernel_mismatch(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = save_adapter(tiny_conv(), tmp_path / "conv", target_modules=["conv1", "conv2"], r=2)
    assert check_adapters([adapter], base=bases["conv"]).ok(strict=True)
    signature = read_signature(bases["conv"])
    signature["tensors"]["conv2.weight"] = ["F32", [6, 8, 5, 5]]
    report = check_adapters([adapter], base_signature=signature)
    (finding,) = [f for f in report.findings if f.code == "shape_mismatch"]
    assert finding.module == "conv2" and "kernel [3, 3] != [5, 5]" in finding.message


def test_missing_target_and_unmapped_tensor(
    bases: dict[str, Path], plain: Path, tmp_path: Path
) -> None:
    adapter = copy(plain, tmp_path)
    tensors = adapter_tensors(adapter)
    renamed = {
        k.replace("layers.1.self_attn.q_proj", "layers.1.self_attn.qq_proj"): v
        for k, v in tensors.items()
    }
    renamed["base_model.model.model.layers.0.mlp.extra.weight"] = torch.zeros(3, 3)
    write_adapter_tensors(adapter, renamed)
    report = check_adapters([adapter], base=bases["llama"])
    missing = [f for f in report.findings if f.code == "target_module_missing"]
    assert [f.module for f in missing] == ["model.layers.1.self_attn.qq_proj"]
    assert missing[0].expected == "model.layers.1.self_attn.qq_proj.weight"
    unmapped = [f for f in report.findings if f.code == "unmapped_tensor"]
    assert [f.module for f in unmapped] == ["model.layers.0.mlp.extra.weight"]
    assert "silently ignore" in unmapped[0].message


def test_task_head_the_base_lacks_is_a_note(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = save_adapter(
        tiny_bert(head=True),
        tmp_path / "cls",
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
        task_type="SEQ_CLS",
    )
    report = check_adapters([adapter], base=bases["bert"])
    assert report.ok(strict=True), report.findings
    assert "added_tensor" in codes(report, "info")


def test_rank_in_config_differs_from_tensors(plain: Path, tmp_path: Path) -> None:
    adapter = copy(plain, tmp_path)
    edit_json(adapter / "adapter_config.json", r=8)
    report = check_adapters([adapter])
    ranks = [f for f in report.findings if f.code == "rank_mismatch"]
    assert len(ranks) == 8 and ranks[0].expected == 8 and ranks[0].actual == 4
    assert "invalid_adapter" not in codes(report)
    edit_json(adapter / "adapter_config.json", r=4, rank_pattern={"q_proj": 16})
    report = check_adapters([adapter])
    assert {f.module.rsplit(".", 1)[-1] for f in report.findings if f.code == "rank_mismatch"} == {
        "q_proj"
    }


def test_unused_pattern_keys_warn(plain: Path, tmp_path: Path) -> None:
    adapter = copy(plain, tmp_path)
    edit_json(
        adapter / "adapter_config.json",
        alpha_pattern={"not_a_module": 3},
        rank_pattern={"q_proj": 4},
    )
    report = check_adapters([adapter])
    assert codes(report) == ["unused_pattern"]
    assert report.ok() and not report.ok(strict=True)
    assert report.findings[0].actual == "not_a_module"


def test_nonfinite_values_in_fp32_and_bf16(plain: Path, tmp_path: Path) -> None:
    adapter = copy(plain, tmp_path)
    tensors = adapter_tensors(adapter)
    key_b = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    key_a = "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"
    tensors[key_b][3, 1] = float("nan")
    tensors[key_b][0, 0] = float("inf")
    tensors[key_a] = tensors[key_a].to(torch.bfloat16)
    tensors[key_a][0, 5] = float("-inf")
    write_adapter_tensors(adapter, tensors)
    report = check_adapters([adapter])
    found = {f.module: f for f in report.findings if f.code == "nonfinite_values"}
    assert set(found) == {"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}
    assert "1 NaN and 1 Inf" in found["model.layers.0.self_attn.q_proj"].message
    assert "first at flat index 0" in found["model.layers.0.self_attn.q_proj"].message
    assert "0 NaN and 1 Inf" in found["model.layers.1.self_attn.v_proj"].message


def test_lora_bias_without_base_bias(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = save_adapter(tiny_llama(), tmp_path / "lb", target_modules=["q_proj"], lora_bias=True)
    report = check_adapters([adapter], base=bases["llama"])
    assert codes(report, "error") == ["lora_bias_without_base_bias"] * 2
    gpt2 = save_adapter(
        tiny_gpt2(), tmp_path / "gb", target_modules=["c_attn"], lora_bias=True, fan_in_fan_out=True
    )
    assert "lora_bias_without_base_bias" not in codes(check_adapters([gpt2], base=bases["gpt2"]))


def test_gpt2_conv1d_adapter_on_legacy_names(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = save_adapter(
        tiny_gpt2(), tmp_path / "g", target_modules=["c_attn", "c_proj"], fan_in_fan_out=True
    )
    assert check_adapters([adapter], base=bases["gpt2"]).ok(strict=True)


def test_vocabulary_checks(bases: dict[str, Path], tmp_path: Path) -> None:
    # Embedding LoRA sized for another vocabulary, saved without the embedding.
    emb = save_adapter(
        tiny_llama(),
        tmp_path / "emb",
        target_modules=["embed_tokens", "q_proj"],
        save_embedding_layers=False,
    )
    report = check_adapters([emb], base=bases["llama_vocab160"])
    (finding,) = [f for f in report.findings if f.code == "vocab_mismatch"]
    assert (
        finding.expected == 160 and finding.actual == 128 and finding.module == "model.embed_tokens"
    )
    assert check_adapters([emb], base=bases["llama"]).ok(strict=True)
    # Saved with its (128-row) embedding: the lm_head of the 160-row base no longer fits.
    emb_saved = save_adapter(tiny_llama(), tmp_path / "emb_saved", target_modules=["embed_tokens"])
    report = check_adapters([emb_saved], base=bases["llama_vocab160"])
    (finding,) = [f for f in report.findings if f.code == "vocab_mismatch"]
    assert finding.module == "lm_head.weight" and finding.expected == 128 and finding.actual == 160
    # A resized adapter carries its embedding and lm_head: fine, with a note.
    resized = save_adapter(
        tiny_llama(),
        tmp_path / "resized",
        target_modules=["q_proj"],
        resize_vocab=136,
        save_embedding_layers=True,
    )
    report = check_adapters([resized], base=bases["llama"])
    assert report.ok(strict=True), report.findings
    assert "vocab_resized" in codes(report, "info")
    # A tokenizer larger than the base's vocabulary, without a resized embedding.
    tok = copy(emb, tmp_path, "tok")
    write_tokenizer(tok, vocab_size=140, marker="ad")
    report = check_adapters([tok], base=bases["llama"])
    (finding,) = [f for f in report.findings if f.code == "vocab_mismatch"]
    assert finding.actual == 139 and "carries no resized embedding" in finding.message


def test_trainable_token_beyond_the_vocabulary(bases: dict[str, Path], tmp_path: Path) -> None:
    adapter = save_adapter(
        tiny_llama(vocab_size=160),
        tmp_path / "tt",
        target_modules=["q_proj"],
        trainable_token_indices=[3, 150],
    )
    report = check_adapters([adapter], base=bases["llama"])
    assert any(f.code == "vocab_mismatch" and f.actual == 150 for f in report.findings), (
        report.findings
    )
    assert check_adapters([adapter], base=bases["llama_vocab160"]).ok()


def test_lora_on_tied_embeddings_warns(bases: dict[str, Path], tmp_path: Path) -> None:
    for target in ("embed_tokens", "lm_head"):
        adapter = save_adapter(
            tiny_llama(tie_word_embeddings=True), tmp_path / target, target_modules=[target]
        )
        report = check_adapters([adapter], base=bases["llama_tied"])
        assert codes(report) == ["tied_embedding_lora"], (target, report.findings)
        assert report.ok() and not report.ok(strict=True)


@pytest.mark.parametrize(
    ("edit", "text"),
    [
        ({"peft_type": "IA3"}, "only LORA"),
        ({"init_lora_weights": "pissa"}, "modified base"),
        ({"layer_replication": [[0, 1]]}, "layer_replication"),
    ],
)
def test_unmergeable_variants_are_findings(
    plain: Path, tmp_path: Path, edit: dict, text: str
) -> None:
    adapter = copy(plain, tmp_path)
    edit_json(adapter / "adapter_config.json", **edit)
    report = check_adapters([adapter])
    found = [f for f in report.findings if f.code == "unmergeable_variant"]
    assert found and text in found[0].message and not report.ok()


def test_identity_and_fingerprints(bases: dict[str, Path], plain: Path, tmp_path: Path) -> None:
    signature = read_signature(bases["llama"])
    signature["name_or_path"] = "org/tiny-llama"
    signature["revision"] = "abc"
    adapter = copy(plain, tmp_path)
    edit_json(adapter / "adapter_config.json", base_model_name_or_path="org/other", revision="def")
    report = check_adapters([adapter], base_signature=signature)
    assert sorted(codes(report)) == ["base_name_mismatch", "base_revision_mismatch"]
    assert all(f.severity == "warning" for f in report.findings)
    name = next(f for f in report.findings if f.code == "base_name_mismatch")
    assert name.expected == "org/tiny-llama" and name.actual == "org/other"

    true_fp = fingerprint_checkpoint(bases["llama"])
    edit_json(
        adapter / "adapter_config.json",
        base_model_name_or_path="org/tiny-llama",
        revision="abc",
        loradex_base_fingerprint="0" * 64,
    )
    assert codes(check_adapters([adapter], base_signature=signature)) == [
        "base_fingerprint_unverified"
    ]
    report = check_adapters(
        [adapter], base=bases["llama"], verify_weights=True, cache_dir=tmp_path / "cache"
    )
    assert (
        codes(report, "error") == ["base_fingerprint_mismatch"]
        and report.base_fingerprint == true_fp
    )
    edit_json(adapter / "adapter_config.json", loradex_base_fingerprint=true_fp)
    report = check_adapters(
        [adapter], base=bases["llama"], verify_weights=True, cache_dir=tmp_path / "cache"
    )
    assert not codes(report, "error"), report.findings
    # A signature written with its fingerprint verifies without the weights.
    assert check_adapters(
        [adapter], base_signature=dict(signature, fingerprint=true_fp), verify_weights=True
    ).ok()
    assert codes(
        check_adapters([adapter], base_signature=signature, verify_weights=True), "error"
    ) == ["verify_weights_unavailable"]
    edit_json(adapter / "adapter_config.json", loradex_base_fingerprint="not-hex")
    assert "invalid_base_fingerprint" in codes(check_adapters([adapter]))


def test_fingerprint_recorded_in_safetensors_metadata(
    bases: dict[str, Path], plain: Path, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    adapter = copy(plain, tmp_path)
    save_file(
        adapter_tensors(adapter),
        str(adapter / "adapter_model.safetensors"),
        metadata={"format": "pt", "loradex.base_fingerprint": "f" * 64},
    )
    report = check_adapters([adapter], base=bases["llama"], verify_weights=True)
    assert codes(report, "error") == ["base_fingerprint_mismatch"]


def test_vllm_profile(bases: dict[str, Path], tmp_path: Path) -> None:
    big = save_adapter(
        tiny_llama(), tmp_path / "big", target_modules=["q_proj"], r=32, lora_alpha=64
    )
    report = check_adapters([big], serving="vllm")
    (finding,) = report.findings
    assert (
        finding.code == "vllm_rank_too_large"
        and finding.actual == 32
        and "--max-lora-rank 32" in finding.message
    )
    assert check_adapters([big], serving="vllm:max_rank=32").ok()
    patterned = save_adapter(
        tiny_llama(),
        tmp_path / "pat",
        target_modules=["q_proj", "v_proj"],
        r=4,
        rank_pattern={"v_proj": 8},
        alpha_pattern={"v_proj": 8},
    )
    report = check_adapters([patterned], serving="vllm", base=bases["llama"])
    (finding,) = [f for f in report.findings if f.code == "vllm_misscaled"]
    assert "2 module(s)" in finding.message and finding.expected == 2.0 and finding.actual == 1.0
    assert check_adapters([patterned], base=bases["llama"]).ok(strict=True)  # fine for a merge
    dora = save_adapter(
        tiny_llama(),
        tmp_path / "dora",
        target_modules=["q_proj"],
        use_dora=True,
        bias="lora_only",
        modules_to_save=["lm_head"],
    )
    assert {"vllm_dora", "vllm_bias", "vllm_modules_to_save"} <= set(
        codes(check_adapters([dora], serving="vllm"))
    )
    lb = save_adapter(tiny_llama(), tmp_path / "lb", target_modules=["q_proj"], lora_bias=True)
    assert "vllm_lora_bias" in codes(check_adapters([lb], serving="vllm"))


def test_parse_serving() -> None:
    assert parse_serving("vllm").max_lora_rank == 16
    assert parse_serving("vllm:max_rank=320").max_lora_rank == 320
    assert parse_serving("lorax").name == "lorax"
    for bad in ("vllm:max_rank=20", "tgi", "vllm:rank=8", "lorax:x=1"):
        with pytest.raises(InvalidInputError):
            parse_serving(bad)


def test_lorax_architectures(bases: dict[str, Path], plain: Path, tmp_path: Path) -> None:
    adapter = copy(plain, tmp_path)
    assert check_adapters([adapter], base=bases["llama"], serving="lorax").ok(
        strict=True
    )  # PEFT's auto_mapping
    edit_json(adapter / "adapter_config.json", auto_mapping=None)
    assert codes(check_adapters([adapter], base=bases["llama"], serving="lorax")) == [
        "lorax_architecture_unverified"
    ]
    edit_json(
        adapter / "adapter_config.json", auto_mapping={"base_model_class": "MistralForCausalLM"}
    )
    (finding,) = check_adapters([adapter], base=bases["llama"], serving="lorax").findings
    assert finding.code == "lorax_architecture_mismatch" and finding.expected == [
        "LlamaForCausalLM"
    ]
    edit_json(
        adapter / "adapter_config.json", auto_mapping={"base_model_class": "LlamaForCausalLM"}
    )
    assert check_adapters([adapter], base=bases["llama"], serving="lorax").ok(strict=True)


def test_adapters_checked_together(bases: dict[str, Path], plain: Path, tmp_path: Path) -> None:
    a = copy(plain, tmp_path, "a")
    b = copy(plain, tmp_path, "b")
    twice = check_adapters([a, b], base=bases["llama"])
    # Identical copies: a merge without explicit weights refuses them, so check warns.
    assert codes(twice) == ["group_same_adapter"]
    assert twice.ok() and not twice.ok(strict=True)
    assert "are the same adapter" in twice.findings[0].message
    edit_json(
        a / "adapter_config.json",
        loradex_base_fingerprint="a" * 64,
        base_model_name_or_path="x/one",
    )
    edit_json(
        b / "adapter_config.json",
        loradex_base_fingerprint="b" * 64,
        base_model_name_or_path="x/two",
    )
    report = check_adapters([a, b])
    assert {"group_different_bases", "group_base_names_differ"} <= set(codes(report))
    s1 = save_adapter(
        tiny_llama(), tmp_path / "s1", target_modules=["q_proj"], modules_to_save=["lm_head"]
    )
    s2 = save_adapter(
        tiny_llama(),
        tmp_path / "s2",
        target_modules=["v_proj"],
        modules_to_save=["lm_head"],
        seed=2,
    )
    conflict = [
        f
        for f in check_adapters([s1, s2], base=bases["llama"]).findings
        if f.code == "group_replacement_conflict"
    ]
    assert [f.module for f in conflict] == ["lm_head.weight"]
    dora = save_adapter(tiny_llama(), tmp_path / "d", target_modules=["q_proj"], use_dora=True)
    report = check_adapters([plain, dora], base=bases["llama"])
    assert codes(report, "error") == ["group_dora_conflict"] * 2


def test_corrupt_inputs_are_findings_not_crashes(
    bases: dict[str, Path], plain: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "nope"
    broken_config = copy(plain, tmp_path, "broken_config")
    (broken_config / "adapter_config.json").write_text("{not json")
    truncated = copy(plain, tmp_path, "truncated")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    liar = copy(plain, tmp_path, "liar")
    (liar / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 2**62) + data[8:])
    no_weights = copy(plain, tmp_path, "no_weights")
    (no_weights / "adapter_model.safetensors").unlink()
    report = check_adapters(
        [missing, broken_config, truncated, liar, no_weights], base=bases["llama"]
    )
    by_adapter = {f.adapter: f for f in report.findings}
    assert (
        by_adapter[str(missing)].code == "invalid_adapter"
        and "not found" in by_adapter[str(missing)].message
    )
    assert by_adapter[str(broken_config)].code == "invalid_adapter"
    assert "not valid JSON" in by_adapter[str(broken_config)].message
    assert by_adapter[str(truncated)].code == "corrupt_file"
    assert (
        by_adapter[str(liar)].code == "corrupt_file" and "exceeds" in by_adapter[str(liar)].message
    )
    assert by_adapter[str(no_weights)].code == "invalid_adapter"
    assert not report.ok()
    bad_base = tmp_path / "bad_base"
    bad_base.mkdir()
    report = check_adapters([plain], base=bad_base)
    assert codes(report) == ["invalid_checkpoint"]


def test_parsed_adapters_and_signatures_give_the_same_answer(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    adapter = save_adapter(tiny_llama(), tmp_path / "m", target_modules=["down_proj"], r=4)
    from_path = check_adapters([adapter], base=bases["llama_wide"])
    from_object = check_adapters([load_adapter(adapter)], base=bases["llama_wide"])
    sig_file = tmp_path / "wide.signature.json"
    sig_file.write_text(json.dumps(read_signature(bases["llama_wide"])))
    from_signature = check_adapters([adapter], base_signature=sig_file)
    assert codes(from_path) == codes(from_object) == codes(from_signature) == ["shape_mismatch"] * 2
    with pytest.raises(InvalidInputError):
        check_adapters([adapter], base=bases["llama"], base_signature=sig_file)


def test_check_does_not_import_torch(bases: dict[str, Path], plain: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from mergetools.check import check_adapters; "
        f"r = check_adapters([Path({str(plain)!r})], base=Path({str(bases['llama'])!r}), serving='vllm'); "
        "assert r.ok(), r.findings; assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2]
    )
    assert result.returncode == 0, result.stderr


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_adapter_is_refused_not_run(plain: Path, tmp_path: Path) -> None:
    import pickle

    adapter = copy(plain, tmp_path)
    (adapter / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(adapter / "adapter_model.bin", "wb") as handle:
        pickle.dump({"base_model.model.x.lora_A.weight": _Exploit(marker)}, handle)
    report = check_adapters([adapter])
    assert codes(report) == ["corrupt_file"] and "weights_only" in report.findings[0].message
    assert not marker.exists()
