"""What loradex must refuse, clearly, before writing anything (DESIGN.md §3).

Each case asserts the exception type, key words of the message, that ``out`` does not exist
afterwards, that nothing else appeared beside it, and that no input file changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from mergetools.errors import (
    IncompatibleError,
    InvalidAdapterError,
    InvalidCheckpointError,
    InvalidInputError,
    LoradexError,
    OutputExistsError,
    UnsupportedAdapterError,
)
from tests import factories as F
from tests.oracle import run_merge


def assert_refused(
    tmp_path: Path,
    base: Path,
    adapters: Sequence[Path],
    error: type[LoradexError],
    *words: str,
    out: Path | None = None,
    **kwargs: object,
) -> LoradexError:
    """Run a merge that must fail with ``error`` whose message holds every one of ``words``."""
    out = out if out is not None else tmp_path / "out"
    inputs = [base, *adapters]
    snapshots = {p: F.folder_snapshot(p) for p in inputs}
    siblings = set(out.parent.iterdir()) if out.parent.exists() else set()
    with pytest.raises(error) as info:
        run_merge(base, adapters, out, **kwargs)
    message = str(info.value)
    assert "\n" not in message.strip(), f"one line please: {message!r}"
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    assert not out.exists(), f"{out} was written"
    if out.parent.exists():
        assert set(out.parent.iterdir()) == siblings, "something was left beside out"
    for path, snapshot in snapshots.items():
        assert F.folder_snapshot(path) == snapshot, f"{path} changed"
    return info.value


def _adapter(tmp_path: Path, name: str = "ad", **kwargs: object) -> Path:
    kwargs.setdefault("target_modules", ["q_proj", "v_proj"])
    return F.save_adapter(F.tiny_llama(), tmp_path / name, **kwargs)


@pytest.mark.parametrize("peft_type", ["IA3", "LOHA", "ADALORA"])
def test_non_lora_peft_type(tmp_path: Path, llama_base: Path, peft_type: str) -> None:
    adapter = _adapter(tmp_path)
    F.edit_json(adapter / "adapter_config.json", peft_type=peft_type)
    assert_refused(tmp_path, llama_base, [adapter], UnsupportedAdapterError, peft_type)


@pytest.mark.parametrize(
    ("field", "value", "word"),
    [
        ("target_parameters", ["mlp.experts.gate_up_proj"], "target_parameters"),
        ("layer_replication", [[0, 2], [0, 2]], "layer_replication"),
        ("alora_invocation_tokens", [1, 5, 9], "alora"),
        ("use_qalora", True, "qalora"),
    ],
)
def test_unmergeable_variants(
    tmp_path: Path, llama_base: Path, field: str, value: object, word: str
) -> None:
    adapter = _adapter(tmp_path)
    F.edit_json(adapter / "adapter_config.json", **{field: value})
    assert_refused(tmp_path, llama_base, [adapter], UnsupportedAdapterError, word)


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "loftq"])
def test_initialisations_that_change_the_base(tmp_path: Path, llama_base: Path, init: str) -> None:
    """PiSSA/OLoRA/CorDA/LoftQ adapters assume a modified base unless converted back."""
    adapter = _adapter(tmp_path)
    F.edit_json(adapter / "adapter_config.json", init_lora_weights=init)
    method = init.split("_")[0]
    assert_refused(tmp_path, llama_base, [adapter], UnsupportedAdapterError, method)


def test_two_dora_adapters_on_one_layer(tmp_path: Path, llama_base: Path) -> None:
    adapters = [
        _adapter(tmp_path, "a0", seed=1, use_dora=True, target_modules=["q_proj"]),
        _adapter(tmp_path, "a1", seed=2, use_dora=True, target_modules=["q_proj", "v_proj"]),
    ]
    error = assert_refused(tmp_path, llama_base, adapters, LoradexError, "dora", "q_proj")
    assert isinstance(error, InvalidInputError | IncompatibleError)


def test_dora_and_plain_on_different_layers_is_fine(tmp_path: Path, llama_base: Path) -> None:
    """The refusal above is about one layer, not about DoRA in a multi-adapter merge."""
    adapters = [
        _adapter(tmp_path, "a0", seed=1, use_dora=True, target_modules=["q_proj"]),
        _adapter(tmp_path, "a1", seed=2, target_modules=["v_proj"]),
    ]
    run_merge(llama_base, adapters, tmp_path / "out")
    assert (tmp_path / "out" / "config.json").exists()


def test_weighted_dora(tmp_path: Path, llama_base: Path) -> None:
    adapter = _adapter(tmp_path, use_dora=True)
    error = assert_refused(
        tmp_path, llama_base, [adapter], LoradexError, "dora", "weight", weights=[0.5]
    )
    assert isinstance(error, InvalidInputError | IncompatibleError)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"modules_to_save": ["lm_head"]}, "lm_head"),
        ({"trainable_token_indices": [3, 4]}, "embed_tokens"),
    ],
    ids=["modules_to_save", "trainable_tokens"],
)
def test_weighted_full_replacement(
    tmp_path: Path, llama_base: Path, kwargs: dict[str, object], word: str
) -> None:
    adapter = _adapter(tmp_path, **kwargs)
    error = assert_refused(
        tmp_path, llama_base, [adapter], LoradexError, "weight", word, weights=[0.5]
    )
    assert isinstance(error, InvalidInputError | IncompatibleError)


def test_lora_bias_without_base_bias(tmp_path: Path, llama_base: Path) -> None:
    """Llama's linears have no bias: ``lora_bias=True`` cannot be merged."""
    adapter = _adapter(tmp_path, lora_bias=True)
    error = assert_refused(tmp_path, llama_base, [adapter], LoradexError, "bias", "q_proj")
    # "does not fit this base" or "cannot be merged onto the base": either name is fair
    assert isinstance(error, IncompatibleError | UnsupportedAdapterError)


def test_quantized_base(tmp_path: Path) -> None:
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base")
    F.edit_json(
        base / "config.json",
        quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True},
    )
    adapter = _adapter(tmp_path)
    assert_refused(tmp_path, base, [adapter], InvalidCheckpointError, "quantiz")


def test_config_rank_disagrees_with_tensors(tmp_path: Path, llama_base: Path) -> None:
    adapter = _adapter(tmp_path, r=4)
    F.edit_json(adapter / "adapter_config.json", r=8, lora_alpha=16)
    assert_refused(tmp_path, llama_base, [adapter], InvalidAdapterError, "4", "8")


def test_adapter_for_another_base(tmp_path: Path, llama_base: Path) -> None:
    """Shapes that do not fit (hidden 48 vs 32) are incompatible, never silently skipped."""
    adapter = F.save_adapter(
        F.tiny_llama(hidden_size=48, head_dim=12), tmp_path / "ad", target_modules=["q_proj"]
    )
    assert_refused(tmp_path, llama_base, [adapter], IncompatibleError, "q_proj")


def test_adapter_module_missing_from_base(tmp_path: Path, llama_base: Path) -> None:
    adapter = F.save_adapter(
        F.tiny_llama(num_hidden_layers=3), tmp_path / "ad", target_modules=["q_proj"]
    )
    assert_refused(tmp_path, llama_base, [adapter], IncompatibleError, "layers.2")


def test_weight_count_mismatch(tmp_path: Path, llama_base: Path) -> None:
    adapter = _adapter(tmp_path)
    assert_refused(tmp_path, llama_base, [adapter], InvalidInputError, "weight", weights=[1, 2])


def test_existing_out_without_force(tmp_path: Path, llama_base: Path) -> None:
    adapter = _adapter(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="exists and is not empty") as refused:
        run_merge(llama_base, [adapter], out)
    assert refused.value.hint_action == "force"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    # --force replaces an earlier loradex output only, never a folder of the user's files.
    with pytest.raises(OutputExistsError, match="not an earlier loradex output"):
        run_merge(llama_base, [adapter], out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    run_merge(llama_base, [adapter], tmp_path / "merged")
    run_merge(llama_base, [adapter], tmp_path / "merged", force=True)
    assert (tmp_path / "merged" / "model.safetensors").exists()


@pytest.mark.parametrize("inside", ["base", "adapter"])
def test_out_inside_an_input_folder(tmp_path: Path, inside: str) -> None:
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base")
    adapter = _adapter(tmp_path)
    parent = base if inside == "base" else adapter
    assert_refused(tmp_path, base, [adapter], InvalidInputError, str(parent), out=parent / "merged")
    assert_refused(
        tmp_path,
        base,
        [adapter],
        InvalidInputError,
        str(parent),
        out=parent / "merged",
        force=True,
    )


def test_out_is_an_input_folder_even_with_force(tmp_path: Path) -> None:
    base = F.save_checkpoint(F.tiny_llama(), tmp_path / "base")
    adapter = _adapter(tmp_path)
    snapshot = F.folder_snapshot(base)
    with pytest.raises(LoradexError):
        run_merge(base, [adapter], base, force=True)
    with pytest.raises(LoradexError):
        run_merge(base, [adapter], tmp_path, force=True)  # contains both inputs
    assert F.folder_snapshot(base) == snapshot
