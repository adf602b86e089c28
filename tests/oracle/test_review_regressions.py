"""Regression tests for merge-engine bugs found in review (each failed before its fix).

Every test builds its inputs in ``tmp_path`` with the tiny factories and checks one rule of
DESIGN.md §3 or STYLE.md ("Errors"): no silently wrong checkpoint, one-line errors for bad input,
nothing left behind on failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mergetools.errors import LoradexError, NumericalError, OutputExistsError
from tests import factories as F
from tests.oracle import run_merge

Q = "model.layers.0.self_attn.q_proj.weight"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- non-finite results must be refused, on every path ------------------------------------


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -float("inf"), 1e39])
def test_non_finite_or_overflowing_weight_is_refused(tmp_path: Path, weight: float) -> None:
    """A NaN weight silently wrote garbage (MKL's addmm ignores a NaN alpha), inf wrote inf, and
    1e39 escaped as a RuntimeError from addmm_ ("cannot be converted to type float")."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base")
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "a", target_modules=["q_proj"])
    out = tmp_path / "out"
    with pytest.raises(LoradexError):
        run_merge(base, [adapter], out, weights=[weight])
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_fp16_overflow_after_rounding_is_refused(tmp_path: Path) -> None:
    """fp32 factors and fp32 sum are finite, but rounding into the fp16 base gives inf: the row
    path never checks its result, and the dense path checks before rounding."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base", dtype="float16")
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "a", target_modules=["q_proj"])
    tensors = F.adapter_tensors(adapter)
    for key in tensors:
        tensors[key] = torch.full_like(tensors[key], 300.0)  # delta = 2 * 4 * 9e4 per entry
    F.write_adapter_tensors(adapter, tensors)
    out = tmp_path / "out"
    with pytest.raises(NumericalError):
        run_merge(base, [adapter], out)
    assert not out.exists()


def test_dtype_conversion_overflow_is_refused(tmp_path: Path) -> None:
    """--dtype float16 on an fp32 base whose values exceed fp16's range writes inf silently."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base")
    weights = load_file(str(base / "model.safetensors"))
    weights[Q][0, 0] = 1e6
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "a", target_modules=["q_proj"])
    with pytest.raises(NumericalError):
        run_merge(base, [adapter], tmp_path / "out", dtype="float16")


def test_dora_zero_norm_row_is_refused_on_the_row_path(tmp_path: Path) -> None:
    """DoRA divides by norm(W + dW) per row; a zero row gives NaN, written silently by the
    row-blocked path (the dense path would have raised NumericalError)."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base")
    weights = load_file(str(base / "model.safetensors"))
    weights[Q][3] = 0
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    adapter = F.save_adapter(
        F.tiny_llama(), tmp_path / "a", target_modules=["q_proj"], use_dora=True
    )
    tensors = F.adapter_tensors(adapter)
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"][3] = 0
    F.write_adapter_tensors(adapter, tensors)
    out = tmp_path / "out"
    with pytest.raises(NumericalError):
        run_merge(base, [adapter], out)
    assert not out.exists()


# --- planning must see the final shapes ---------------------------------------------------


def test_embedding_lora_then_vocab_resize_by_a_later_adapter(tmp_path: Path) -> None:
    """Adapter 0 has LoRA on embed_tokens (vocab 128, planned against (128, 32)); adapter 1
    resizes embed_tokens to 136. The plan accepted it and the executor crashed in addmm_ with a
    RuntimeError (a traceback for the CLI) instead of an IncompatibleError."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base")
    lora = F.save_adapter(
        F.tiny_llama(), tmp_path / "a", target_modules=["embed_tokens"], save_embedding_layers=False
    )
    resized = F.save_adapter(
        F.tiny_llama(),
        tmp_path / "b",
        target_modules=["q_proj"],
        resize_vocab=136,
        modules_to_save=["embed_tokens", "lm_head"],
    )
    out = tmp_path / "out"
    with pytest.raises(LoradexError):
        run_merge(base, [lora, resized], out)
    assert not out.exists()
    assert _leftovers(tmp_path) == []


# --- tied embeddings whose lm_head is materialised in the file -----------------------------


@pytest.mark.parametrize("target", ["embed_tokens", "lm_head"])
def test_tied_config_with_materialised_lm_head_is_untied(tmp_path: Path, target: str) -> None:
    """A legacy .bin of a tied model holds both embed_tokens and lm_head (torch.save keeps both
    keys). loradex merged into one of them and kept ``tie_word_embeddings: true``: transformers 4.x
    re-ties on load (lm_head = embed_tokens), losing the lm_head delta or pointing lm_head at the
    merged embedding; transformers 5 only warns "update the config with tie_word_embeddings=False".
    """
    model = F.tiny_llama(tie_word_embeddings=True)
    base = tmp_path / "base"
    model.save_pretrained(tmp_path / "staging")
    base.mkdir()
    (base / "config.json").write_text((tmp_path / "staging" / "config.json").read_text())
    state = model.state_dict()
    assert "lm_head.weight" in state
    torch.save(state, base / "pytorch_model.bin")
    adapter = F.save_adapter(
        F.tiny_llama(tie_word_embeddings=True), tmp_path / "a", target_modules=[target]
    )
    out = tmp_path / "out"
    run_merge(base, [adapter], out)
    merged = F.load_checkpoint_tensors(out)
    assert not torch.equal(merged["lm_head.weight"], merged["model.embed_tokens.weight"])
    config = json.loads((out / "config.json").read_text())
    assert config.get("tie_word_embeddings") is False


# --- atomicity -----------------------------------------------------------------------------


def test_output_created_during_merge_is_not_replaced_without_force(tmp_path: Path) -> None:
    """check_output_path runs before the merge; _commit later swaps out *any* existing --out and
    deletes it, even without --force (two concurrent merges to one --out: the first is lost)."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base")
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "a", target_modules=["q_proj"])
    out = tmp_path / "out"

    def progress(done: int, total: int) -> None:
        if not out.exists():
            out.mkdir()
            (out / "someone-elses-file").write_text("keep me")

    with pytest.raises(OutputExistsError):
        run_merge(base, [adapter], out, progress=progress)
    assert (out / "someone-elses-file").read_text() == "keep me"
    assert _leftovers(tmp_path) == []


# --- CLI: bad input gives one line, never a traceback --------------------------------------


def test_cli_out_below_a_file_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out some_file/sub``: out_path.parent.mkdir raises FileExistsError, which escapes the
    CLI's LoradexError handler as a traceback."""
    from cli.main import cli

    monkeypatch.setenv("LORADEX_HOME", str(tmp_path / "home"))
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base")
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "a", target_modules=["q_proj"])
    (tmp_path / "a_file").write_text("x")
    result = CliRunner().invoke(
        cli,
        [
            "merge",
            "--base",
            str(base),
            "--adapter",
            str(adapter),
            "--out",
            str(tmp_path / "a_file" / "sub"),
            "--device",
            "cpu",
            "--quiet",
            "--no-fsync",
        ],
    )
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


# --- side files ----------------------------------------------------------------------------


def test_adapter_with_only_a_chat_template_keeps_the_base_tokenizer(tmp_path: Path) -> None:
    """An adapter folder that ships one tokenizer-side file (chat_template.jinja) becomes the
    only tokenizer source: the merged folder lost the base's tokenizer.json/tokenizer_config.json."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base", tokenizer=True)
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "a", target_modules=["q_proj"])
    (adapter / "chat_template.jinja").write_text("{{ messages }}")
    out = tmp_path / "out"
    run_merge(base, [adapter], out)
    assert (out / "tokenizer.json").exists()
    assert (out / "tokenizer_config.json").exists()


def test_zero_width_2d_tensor_converted_by_dtype(tmp_path: Path) -> None:
    """An untouched (4, 0) tensor converted by --dtype takes the row path, where
    torch.frombuffer(count=0) raises ValueError (a traceback for the CLI)."""
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base")
    weights = load_file(str(base / "model.safetensors"))
    weights["extra.empty"] = torch.zeros(4, 0)
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    adapter = F.save_adapter(F.tiny_llama(), tmp_path / "a", target_modules=["q_proj"])
    out = tmp_path / "out"
    run_merge(base, [adapter], out, dtype="bfloat16")
    merged = F.load_checkpoint_tensors(out)
    assert merged["extra.empty"].shape == (4, 0) and merged["extra.empty"].dtype == torch.bfloat16
