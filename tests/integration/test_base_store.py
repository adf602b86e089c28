"""Bases stored in the blob store (``add_base(store=True)``) and materialised by fingerprint on a
machine that never saw the folder; SQLite and PostgreSQL, real files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from mergetools.errors import InvalidInputError, NotFoundError
from registry.refs import resolve_base_ref
from registry.service import Registry
from registry.settings import Settings

HIDDEN = 16


def write_sharded_base(folder: Path, *, seed: int = 0) -> Path:
    """A two-shard Llama-layout base with an index, tokenizer and generation config."""
    rng = np.random.default_rng(seed)
    names = [
        f"model.layers.{layer}.self_attn.{module}.weight"
        for layer in range(2)
        for module in ("q_proj", "k_proj", "v_proj", "o_proj")
    ]
    tensors = {n: rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) for n in names}
    tensors["model.embed_tokens.weight"] = rng.standard_normal((32, HIDDEN)).astype(np.float32)
    folder.mkdir(parents=True)
    shards = {"model-00001-of-00002.safetensors": {}, "model-00002-of-00002.safetensors": {}}
    weight_map = {}
    for i, (name, value) in enumerate(sorted(tensors.items())):
        shard = sorted(shards)[i % 2]
        shards[shard][name] = value
        weight_map[name] = shard
    for shard, content in shards.items():
        save_file(content, str(folder / shard), metadata={"format": "pt"})
    total = sum(v.nbytes for v in tensors.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 32,
        "hidden_size": HIDDEN,
        "num_hidden_layers": 2,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"max_new_tokens": 8}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {}}))
    return folder


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _second_machine(settings: Any, tmp_path: Path) -> Settings:
    """Another LORADEX_HOME on the same database and blob store (a worker, a server)."""
    return Settings(
        home=tmp_path / "worker",
        database_url=settings.effective_database_url,
        blob_url=f"file://{settings.blob_dir}",
        user="worker",
    )


def test_stored_base_is_materialised_on_a_machine_without_the_folder(
    registry: Registry, settings: Any, tmp_path: Path
) -> None:
    folder = write_sharded_base(tmp_path / "src" / "base")
    calls: list[tuple[int, int]] = []
    row = registry.add_base(folder, name="tiny", store=True, progress=lambda d, t: calls.append((d, t)))
    original = _tree(folder)
    assert row.stored and row.stored_files == len(original) == 7
    assert row.stored_bytes == sum(len(b) for b in original.values())
    assert calls[-1] == (row.stored_bytes, row.stored_bytes)
    # Two passes (fingerprinting, then storing), each counting up to its own total.
    storing = [c for c in calls if c[1] == row.stored_bytes]
    assert storing and [d for d, _ in storing] == sorted(d for d, _ in storing)
    assert registry.get_base("tiny").stored
    assert [b.stored_files for b in registry.list_bases()] == [7]

    with Registry(_second_machine(settings, tmp_path)) as worker:
        progress: list[tuple[int, int]] = []
        path = worker.materialize_base("tiny", progress=lambda d, t: progress.append((d, t)))
        assert path == tmp_path / "worker" / "cache" / "bases" / row.fingerprint
        assert _tree(path) == original
        assert progress[-1] == (row.stored_bytes, row.stored_bytes)
        inode = (path / "config.json").stat().st_ino
        assert worker.materialize_base(f"sha256:{row.fingerprint[:16]}") == path
        assert (path / "config.json").stat().st_ino == inode  # reused, not rebuilt
        assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temps left

        os.chmod(path / "tokenizer.json", 0o644)
        (path / "tokenizer.json").write_text("tampered")
        rebuilt = worker.materialize_base("tiny")
        assert _tree(rebuilt) == original

        shutil.move(folder, tmp_path / "src" / "moved")  # the source folder is gone
        resolved = resolve_base_ref(worker, "tiny")
        assert resolved.path == path and resolved.fingerprint == row.fingerprint


def test_a_base_registered_without_store_gets_its_files_added(
    registry: Registry, tmp_path: Path
) -> None:
    folder = write_sharded_base(tmp_path / "base")
    plain = registry.add_base(folder, name="tiny")
    assert not plain.stored and registry.get_base("tiny").stored_files == 0
    with pytest.raises(NotFoundError, match="its files are not stored") as refused:
        registry.materialize_base("tiny")
    assert refused.value.hint_action == "store_base"
    shutil.move(folder, tmp_path / "gone")
    with pytest.raises(InvalidInputError, match="is not available here"):
        resolve_base_ref(registry, "tiny")
    shutil.move(tmp_path / "gone", folder)
    stored = registry.add_base(folder, name="tiny", store=True)
    assert stored.id == plain.id and stored.stored_files == 7
    again = registry.add_base(folder, store=True)  # idempotent
    assert again.stored_files == 7
    kinds = [e.kind for e in registry.events(limit=10)]
    assert kinds.count("base.stored") == 1


def test_gc_keeps_the_blobs_of_a_stored_base(registry: Registry, tmp_path: Path) -> None:
    folder = write_sharded_base(tmp_path / "base")
    registry.add_base(folder, name="tiny", store=True)
    result = registry.gc(grace_s=0)
    assert result.removed == []
    assert registry.materialize_base("tiny").is_dir()


def test_a_link_leaving_the_base_folder_refuses_the_store(
    registry: Registry, tmp_path: Path
) -> None:
    folder = write_sharded_base(tmp_path / "base")
    (tmp_path / "secret").write_text("not yours")
    (folder / "notes.txt").symlink_to(tmp_path / "secret")
    with pytest.raises(InvalidInputError, match="outside the folder"):
        registry.add_base(folder, name="tiny", store=True)
    assert registry.list_bases() == []
