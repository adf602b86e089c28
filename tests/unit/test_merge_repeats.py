"""The same adapter given twice to a merge is refused unless the weights are explicit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from examples.tiny_models import write_adapter, write_base
from mergetools.adapter import load_adapter
from mergetools.errors import InvalidInputError
from mergetools.merge import merge_adapters
from mergetools.plan import refuse_repeated_adapters


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    write_base(tmp_path / "base")
    write_adapter(tmp_path / "a", targets=["q_proj", "v_proj"], rank=4, alpha=8, seed=1)
    return tmp_path / "base", tmp_path / "a"


def test_same_folder_twice_is_refused_naming_both(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = tiny
    (tmp_path / "link").symlink_to(adapter)
    out = tmp_path / "out"
    with pytest.raises(InvalidInputError) as caught:
        merge_adapters(base, [adapter, tmp_path / "link"], out, fsync=False)
    message = str(caught.value)
    assert message.startswith(f"adapters '{adapter}' (#1) and '{tmp_path / 'link'}' (#2) are the same adapter")
    assert "\n" not in message and "explicit weights" in message
    assert not out.exists()


def test_same_content_in_two_folders_is_refused(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = tiny
    shutil.copytree(adapter, tmp_path / "copy")
    write_adapter(tmp_path / "other", targets=["q_proj", "v_proj"], rank=4, alpha=8, seed=2)
    with pytest.raises(InvalidInputError, match=r"'first' \(#1\) and 'again' \(#3\) are the same adapter \(identical"):
        merge_adapters(
            base,
            [adapter, tmp_path / "other", tmp_path / "copy"],
            tmp_path / "out",
            labels=["first", "other", "again"],
            fsync=False,
        )
    # Different bytes of the same size are not the same adapter.
    refuse_repeated_adapters([load_adapter(adapter), load_adapter(tmp_path / "other")])


def test_explicit_weights_allow_it_and_add_up(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = tiny
    twice = merge_adapters(base, [adapter, adapter], tmp_path / "twice", weights=[1.0, 1.0], fsync=False)
    doubled = merge_adapters(base, [adapter], tmp_path / "doubled", weights=[2.0], fsync=False)
    assert twice.tensors_changed == doubled.tensors_changed == 4
    name = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(tmp_path / "twice" / "model.safetensors", "pt") as a, safe_open(
        tmp_path / "doubled" / "model.safetensors", "pt"
    ) as b:
        assert (a.get_tensor(name).float() - b.get_tensor(name).float()).abs().max() < 1e-2
    # A caller that fills in default weights itself says they were not explicit.
    with pytest.raises(InvalidInputError, match="same adapter"):
        merge_adapters(
            base, [adapter, adapter], tmp_path / "out", weights=[1.0, 1.0], weights_explicit=False, fsync=False
        )
