"""Full replacements and the model-level cases around them, vs PEFT: ``modules_to_save``, whole
embeddings after a vocabulary resize (config and tokenizer follow), biases trained with
``bias="all"``/``"lora_only"``, trainable tokens, task heads the base lacks, tied embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests import factories as F
from tests.oracle import (
    INPUT_IDS,
    assert_matches_reference64,
    bert_cls_loader,
    merge_and_compare,
    peft_model,
    read_json,
    reference64,
    run_merge,
)


def test_modules_to_save_bert_classifier(tmp_path: Path) -> None:
    """A sequence-classification base whose ``classifier`` the adapter retrained wholesale."""
    base = F.save_checkpoint(F.tiny_bert(head=True), tmp_path / "base")
    adapter = F.save_adapter(
        F.tiny_bert(head=True),
        tmp_path / "ad",
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
        task_type="SEQ_CLS",
    )
    _, tensors = merge_and_compare(
        tmp_path, base, [adapter], loader=bert_cls_loader(3), min_changed=6
    )
    saved = F.adapter_tensors(adapter)["base_model.model.classifier.weight"]
    assert torch.equal(tensors["classifier.weight"], saved)  # replaced, not added to


def test_modules_to_save_llama_lm_head(tmp_path: Path, llama_base: Path) -> None:
    adapter = F.save_adapter(
        F.tiny_llama(), tmp_path / "ad", target_modules=["q_proj"], modules_to_save=["lm_head"]
    )
    _, tensors = merge_and_compare(tmp_path, llama_base, [adapter], min_changed=3)
    saved = F.adapter_tensors(adapter)["base_model.model.lm_head.weight"]
    assert torch.equal(tensors["lm_head.weight"], saved)


@pytest.mark.parametrize("how", ["modules_to_save", "save_embedding_layers", "lora_on_embedding"])
def test_resized_vocabulary(tmp_path: Path, how: str) -> None:
    """Whole embedding/lm_head tensors of a resized vocabulary replace the base's; config.json's
    ``vocab_size`` follows and the adapter's tokenizer files replace the base's."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base", tokenizer=True)
    kwargs: dict[str, object] = {"target_modules": ["q_proj"]}
    if how == "modules_to_save":
        kwargs["modules_to_save"] = ["embed_tokens", "lm_head"]
    elif how == "save_embedding_layers":
        kwargs["save_embedding_layers"] = True
    else:  # LoRA on the resized embedding (its base_layer saved whole), lm_head retrained
        kwargs["target_modules"] = ["q_proj", "embed_tokens"]
        kwargs["modules_to_save"] = ["lm_head"]
        kwargs["save_embedding_layers"] = True
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "ad", resize_vocab=136, **kwargs)
    adapter_files = F.write_tokenizer(adapter, vocab_size=136, marker="adapter")
    assert F.adapter_tensors(adapter)  # sanity: the full tensors are really in the adapter
    assert any(
        v.shape[0] == 136 for k, v in F.adapter_tensors(adapter).items() if "embed_tokens" in k
    )
    out, tensors = merge_and_compare(tmp_path, base, [adapter], resize_vocab=136, min_changed=2)
    assert tensors["model.embed_tokens.weight"].shape == (136, 32)
    assert tensors["lm_head.weight"].shape == (136, 32)
    assert read_json(out / "config.json")["vocab_size"] == 136
    for file in adapter_files:
        assert (out / file.name).read_bytes() == file.read_bytes(), file.name
    assert_matches_reference64(tensors, reference64(base, [adapter]))


def test_base_tokenizer_carried_over(tmp_path: Path) -> None:
    """Without tokenizer files in the adapter, the base's are part of the merged checkpoint."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base", tokenizer=True)
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "ad", target_modules=["q_proj"])
    out, _ = merge_and_compare(tmp_path, base, [adapter], min_changed=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    assert read_json(out / "config.json")["vocab_size"] == 128


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_trained_biases(tmp_path: Path, gpt2_base: Path, bias: str) -> None:
    """``bias="all"`` saves every bias, ``"lora_only"`` those of the LoRA layers: replacements."""
    adapter = F.save_adapter(
        F.tiny_gpt2(), tmp_path / "ad", target_modules=["c_attn"], fan_in_fan_out=True, bias=bias
    )
    saved = F.adapter_tensors(adapter)
    assert "base_model.model.transformer.h.0.attn.c_attn.base_layer.bias" in saved
    assert ("base_model.model.transformer.h.0.ln_1.bias" in saved) == (bias == "all")
    _, tensors = merge_and_compare(
        tmp_path, gpt2_base, [adapter], min_changed=10 if bias == "all" else 4
    )
    assert torch.equal(
        tensors["transformer.h.0.attn.c_attn.bias"],
        saved["base_model.model.transformer.h.0.attn.c_attn.base_layer.bias"],
    )
    if bias == "all":
        assert torch.equal(
            tensors["transformer.ln_f.bias"], saved["base_model.model.transformer.ln_f.bias"]
        )


@pytest.mark.parametrize("form", ["list", "dict"])
def test_trainable_token_indices(tmp_path: Path, llama_base: Path, form: str) -> None:
    """The trainable-tokens delta rows REPLACE those rows of the embedding (they are not added)."""
    indices = [3, 5, 77]
    spec: object = indices if form == "list" else {"embed_tokens": indices}
    adapter = F.save_adapter(
        F.tiny_llama(), tmp_path / "ad", target_modules=["q_proj"], trainable_token_indices=spec
    )
    _, tensors = merge_and_compare(tmp_path, llama_base, [adapter], min_changed=3)
    rows = F.adapter_tensors(adapter)[
        "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"
    ]
    embedding = tensors["model.embed_tokens.weight"]
    original = F.load_checkpoint_tensors(llama_base)["model.embed_tokens.weight"]
    assert torch.equal(embedding[indices], rows)
    others = [i for i in range(embedding.shape[0]) if i not in indices]
    assert torch.equal(embedding[others], original[others])


def test_task_head_the_base_lacks(tmp_path: Path, bert_base: Path) -> None:
    """``BertModel`` base + a sequence-classification adapter: the head is added, and the config
    names ``BertForSequenceClassification`` with the adapter's label count."""
    adapter = F.save_adapter(
        F.tiny_bert(head=True, num_labels=5),
        tmp_path / "ad",
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
        task_type="SEQ_CLS",
    )
    out, tensors = merge_and_compare(
        tmp_path,
        bert_base,
        [adapter],
        loader=bert_cls_loader(5),
        added=["classifier.weight", "classifier.bias"],
        min_changed=4,
    )
    config = read_json(out / "config.json")
    assert config["architectures"] == ["BertForSequenceClassification"]
    from transformers import AutoConfig, AutoModelForSequenceClassification

    assert AutoConfig.from_pretrained(out).num_labels == 5
    model, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    reference = peft_model(bert_base, [adapter], loader=bert_cls_loader(5))
    with torch.no_grad():
        torch.testing.assert_close(
            model(INPUT_IDS).logits, reference(input_ids=INPUT_IDS).logits, atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize(
    ("arch", "targets"),
    [
        ("llama-tied", ["embed_tokens"]),
        ("llama-tied", ["lm_head", "q_proj"]),
        ("llama-tied", ["embed_tokens", "lm_head"]),
        ("gpt2", ["wte", "c_attn"]),
    ],
)
def test_tied_embeddings_are_untied(tmp_path: Path, arch: str, targets: list[str]) -> None:
    """LoRA on a tied embedding or head: loradex writes both tensors, ``tie_word_embeddings:
    false``, and matches the UNMERGED PEFT model (PEFT's own merge writes the shared tensor)."""
    base = F.save_checkpoint(F.build_model(arch), tmp_path / "base")
    assert "lm_head.weight" not in F.load_checkpoint_tensors(base)
    adapter = F.save_adapter(
        F.build_model(arch),
        tmp_path / "ad",
        target_modules=targets,
        fan_in_fan_out=arch == "gpt2",
    )
    out = tmp_path / "out"
    run_merge(base, [adapter], out)
    tensors = F.load_checkpoint_tensors(out)
    assert "lm_head.weight" in tensors
    embedding = "transformer.wte.weight" if arch == "gpt2" else "model.embed_tokens.weight"
    assert not torch.equal(tensors["lm_head.weight"], tensors[embedding])
    assert read_json(out / "config.json")["tie_word_embeddings"] is False
    assert_matches_reference64(tensors, reference64(base, [adapter], untie=True))
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    reference = peft_model(base, [adapter])
    with torch.no_grad():
        torch.testing.assert_close(
            model(INPUT_IDS).logits, reference(input_ids=INPUT_IDS).logits, atol=1e-4, rtol=1e-4
        )
