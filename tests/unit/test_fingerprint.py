"""Base fingerprints: invariant to layout, sensitive to every byte, cached, torch-free."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergetools import fingerprint as fp
from mergetools.checkpoint import open_checkpoint
from mergetools.fingerprint import canonical_names, fingerprint_checkpoint, tensor_sha256
from tests.factories import (
    edit_json,
    load_checkpoint_tensors,
    save_checkpoint,
    tiny_gpt2,
    tiny_llama,
)


@pytest.fixture(scope="module")
def llama_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fp")
    return {
        "single": save_checkpoint(tiny_llama(), root / "single", dtype="bfloat16"),
        "sharded": save_checkpoint(
            tiny_llama(), root / "sharded", layout="sharded", dtype="bfloat16"
        ),
        "sharded_small": save_checkpoint(
            tiny_llama(),
            root / "sharded_small",
            layout="sharded",
            dtype="bfloat16",
            shard_bytes=5_000,
        ),
        "bin": save_checkpoint(tiny_llama(), root / "bin", layout="bin", dtype="bfloat16"),
        "other_seed": save_checkpoint(tiny_llama(seed=1), root / "other_seed", dtype="bfloat16"),
        "float32": save_checkpoint(tiny_llama(), root / "float32", dtype="float32"),
    }


def _rewrite(
    src: Path,
    dst: Path,
    tensors: dict[str, torch.Tensor],
    *,
    metadata: dict[str, str] | None = None,
    config: dict | None = None,
) -> Path:
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    if config:
        edit_json(dst / "config.json", **config)
    save_file(tensors, str(dst / "model.safetensors"), metadata=metadata or {"format": "pt"})
    return dst


def test_sharding_and_format_do_not_change_it(llama_bases: dict[str, Path]) -> None:
    fps = {k: fingerprint_checkpoint(v) for k, v in llama_bases.items()}
    assert fps["single"] == fps["sharded"] == fps["sharded_small"] == fps["bin"]
    assert (
        len(open_checkpoint(llama_bases["sharded_small"]).files)
        > len(open_checkpoint(llama_bases["sharded"]).files)
        > 1
    )
    assert fps["other_seed"] != fps["single"]
    assert fps["float32"] != fps["single"]
    assert len(fps["single"]) == 64 and int(fps["single"], 16) >= 0


def test_metadata_tensor_order_and_shard_names_do_not_change_it(
    llama_bases: dict[str, Path], tmp_path: Path
) -> None:
    tensors = load_checkpoint_tensors(llama_bases["single"])
    reordered = dict(reversed(list(tensors.items())))
    other = _rewrite(
        llama_bases["single"], tmp_path / "meta", reordered, metadata={"format": "pt", "x": "y"}
    )
    assert fingerprint_checkpoint(other) == fingerprint_checkpoint(llama_bases["single"])
    # Rename the shards (and the index's references).
    renamed = shutil.copytree(llama_bases["sharded"], tmp_path / "renamed")
    index = json.loads((renamed / "model.safetensors.index.json").read_text())
    mapping = {
        f: f"weights-{i}.safetensors"
        for i, f in enumerate(sorted(set(index["weight_map"].values()), reverse=True))
    }
    for old, new in mapping.items():
        (renamed / old).rename(renamed / new)
    index["weight_map"] = {k: mapping[v] for k, v in index["weight_map"].items()}
    (renamed / "model.safetensors.index.json").write_text(json.dumps(index))
    assert fingerprint_checkpoint(renamed) == fingerprint_checkpoint(llama_bases["single"])


def test_gpt2_prefix_and_legacy_layout_agree(tmp_path: Path) -> None:
    prefixed = save_checkpoint(tiny_gpt2(), tmp_path / "prefixed", prefix=True)
    legacy = save_checkpoint(tiny_gpt2(), tmp_path / "legacy", prefix=False, layout="sharded")
    names = set(open_checkpoint(legacy).tensors)
    assert any(n.startswith("h.0.") for n in names) and not any(
        n.startswith("transformer.") for n in names
    )
    assert any(n.startswith("transformer.h.0.") for n in open_checkpoint(prefixed).tensors)
    assert fingerprint_checkpoint(prefixed) == fingerprint_checkpoint(legacy)
    assert fingerprint_checkpoint(prefixed) != fingerprint_checkpoint(
        save_checkpoint(tiny_gpt2(seed=3), tmp_path / "o")
    )


def test_materialised_tied_lm_head_is_the_same_model(tmp_path: Path) -> None:
    base = save_checkpoint(tiny_llama(tie_word_embeddings=True), tmp_path / "tied")
    tensors = load_checkpoint_tensors(base)
    assert "lm_head.weight" not in tensors
    with_head = dict(tensors, **{"lm_head.weight": tensors["model.embed_tokens.weight"].clone()})
    materialised = _rewrite(base, tmp_path / "materialised", with_head)
    assert fingerprint_checkpoint(materialised) == fingerprint_checkpoint(base)
    # A head that differs, or a config that says the weights are not tied, is another model.
    different = dict(with_head, **{"lm_head.weight": with_head["lm_head.weight"] + 1})
    assert fingerprint_checkpoint(
        _rewrite(base, tmp_path / "different", different)
    ) != fingerprint_checkpoint(base)
    untied = _rewrite(base, tmp_path / "untied", with_head, config={"tie_word_embeddings": False})
    assert fingerprint_checkpoint(untied) != fingerprint_checkpoint(base)


def test_every_byte_counts(llama_bases: dict[str, Path], tmp_path: Path) -> None:
    base = shutil.copytree(llama_bases["sharded"], tmp_path / "b")
    original = fingerprint_checkpoint(base)
    rng = random.Random(0)
    checkpoint = open_checkpoint(base)
    for tensor in rng.sample(sorted(checkpoint.tensors.values(), key=lambda t: t.name), 6):
        assert tensor.info is not None
        position = rng.randrange(tensor.info.start, tensor.info.end)
        with open(tensor.file, "r+b") as handle:
            handle.seek(position)
            byte = handle.read(1)
            handle.seek(position)
            handle.write(bytes([byte[0] ^ 0x01]))
        assert fingerprint_checkpoint(base) != original, tensor.name
        with open(tensor.file, "r+b") as handle:
            handle.seek(position)
            handle.write(byte)
        assert fingerprint_checkpoint(base) == original


def test_multi_chunk_tensors_match_the_in_memory_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fp, "CHUNK_SIZE", 1000)
    base = save_checkpoint(tiny_llama(), tmp_path / "b", layout="sharded")
    checkpoint = open_checkpoint(base)
    digests = fp.tensor_digests(checkpoint, workers=3)
    for name, digest in digests.items():
        data = checkpoint.load(name).contiguous().view(torch.uint8).numpy().tobytes()
        assert digest.sha256 == tensor_sha256(data)
    monkeypatch.setattr(fp, "CHUNK_SIZE", 4 << 20)
    assert fp.tensor_digests(checkpoint) != digests  # the chunk size is part of the algorithm


def test_cache_hits_and_invalidates(
    llama_bases: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = shutil.copytree(llama_bases["sharded"], tmp_path / "b")
    cache = tmp_path / "cache"
    calls: list[int] = []
    real = fp._hash_safetensors_files

    def counting(checkpoint, files, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(files))
        return real(checkpoint, files, **kwargs)

    monkeypatch.setattr(fp, "_hash_safetensors_files", counting)
    first = fingerprint_checkpoint(base, cache_dir=cache)
    n_files = len(open_checkpoint(base).files)
    assert calls == [n_files]
    assert fingerprint_checkpoint(base, cache_dir=cache) == first
    assert calls == [n_files]
    entries = list((cache / "fingerprints").glob("*.json"))
    assert len(entries) == n_files and not list((cache / "fingerprints").glob(".tmp-*"))
    # Touch one shard: only it is rehashed.
    shard = open_checkpoint(base).files[0]
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert fingerprint_checkpoint(base, cache_dir=cache) == first
    assert calls == [n_files, 1]
    # A damaged cache entry is ignored, not trusted.
    for entry in (cache / "fingerprints").glob("*.json"):
        entry.write_text("{not json")
    assert fingerprint_checkpoint(base, cache_dir=cache) == first
    assert calls[-1] == n_files


def test_progress_reports_all_bytes(llama_bases: dict[str, Path]) -> None:
    seen: list[tuple[int, int]] = []
    fingerprint_checkpoint(llama_bases["sharded"], progress=lambda d, t: seen.append((d, t)))
    total = sum(
        t.info.nbytes for t in open_checkpoint(llama_bases["sharded"]).tensors.values() if t.info
    )
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_canonical_names() -> None:
    assert canonical_names(["model.a.weight", "model.b.weight", "lm_head.weight"]) == {
        "model.a.weight": "a.weight",
        "model.b.weight": "b.weight",
        "lm_head.weight": "lm_head.weight",
    }
    assert canonical_names(["h.0.w", "wte.weight"]) == {
        "h.0.w": "h.0.w",
        "wte.weight": "wte.weight",
    }
    # Dropping the prefix would collide: keep the names.
    assert (
        canonical_names(["model.lm_head.weight", "lm_head.weight"])["model.lm_head.weight"]
        == "model.lm_head.weight"
    )
    assert (
        canonical_names(["bert.encoder.x", "bert.pooler.y", "classifier.weight"])["bert.pooler.y"]
        == "pooler.y"
    )


def test_corrupt_shard_is_a_clear_error(llama_bases: dict[str, Path], tmp_path: Path) -> None:
    from mergetools.errors import CorruptFileError

    base = shutil.copytree(llama_bases["single"], tmp_path / "b")
    data = (base / "model.safetensors").read_bytes()
    (base / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(CorruptFileError, match="model.safetensors"):
        fingerprint_checkpoint(base)
    (base / "model.safetensors").write_bytes(struct.pack("<Q", 10**7) + data[8:100])
    with pytest.raises(CorruptFileError, match="runs past the end"):
        fingerprint_checkpoint(base)


def test_does_not_import_torch(llama_bases: dict[str, Path], tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from mergetools.fingerprint import fingerprint_checkpoint; "
        f"print(fingerprint_checkpoint(Path({str(llama_bases['sharded'])!r}), cache_dir=Path({str(tmp_path)!r}))); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == fingerprint_checkpoint(llama_bases["single"])
