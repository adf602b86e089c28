"""Hash and flush while writing: the digests a merge reports equal a second read of its output,
whatever the layout and whatever order the bytes were written in; write-back starts early and
falls back cleanly where the kernel refuses it."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

import tests.factories as F
from mergetools.checkpoint import open_checkpoint
from mergetools.files import sha256_file
from mergetools.fingerprint import CHUNK_SIZE, TensorHasher, fingerprint_checkpoint, tensor_sha256
from mergetools.merge import merge_adapters
from mergetools.safetensors_io import SafetensorsWriter, TensorSpec, read_header
from mergetools.syncio import WriteBehind, sync_range_function


def assert_digests_match_a_second_read(out: Path, result_sha256: dict[str, str], fingerprint: str | None) -> None:
    on_disk = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != ".loradex-output")
    assert sorted(result_sha256) == on_disk
    for name, sha in result_sha256.items():
        assert sha == sha256_file(out / name), name
    assert fingerprint == fingerprint_checkpoint(out)


# --- merges on several layouts ------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "dtype", "shard"),
    [("sharded", "auto", "20KB"), ("safetensors", "auto", "5GB"), ("sharded", "float16", "30KB")],
    ids=["sharded", "single-file", "dtype-conversion"],
)
def test_llama_merge_digests_equal_sha256_file_and_fingerprint(
    tmp_path: Path, layout: str, dtype: str, shard: str
) -> None:
    base = F.save_checkpoint(F.build_model("llama"), tmp_path / "base", layout=layout, dtype="bfloat16")
    adapter = F.save_adapter(F.build_model("llama"), tmp_path / "ad", target_modules=["q_proj", "v_proj", "down_proj"])
    out = tmp_path / "out"
    result = merge_adapters(base, [adapter], out, device="cpu", dtype=dtype, max_shard_size=shard)
    if layout == "sharded":
        assert "model.safetensors.index.json" in result.files
    else:
        assert result.files.count("model.safetensors") == 1
    assert_digests_match_a_second_read(out, result.sha256, result.fingerprint)
    # the fingerprint is over the merged weights: not the base's
    assert result.fingerprint != fingerprint_checkpoint(base)


def test_replacements_and_tied_embeddings_digests(tmp_path: Path) -> None:
    """modules_to_save replaces lm_head; LoRA on the tied embedding unties it (both written)."""
    base = F.save_checkpoint(F.build_model("llama-tied"), tmp_path / "base")
    adapter = F.save_adapter(
        F.build_model("llama-tied"), tmp_path / "ad", target_modules=["embed_tokens", "q_proj"]
    )
    out = tmp_path / "out"
    result = merge_adapters(base, [adapter], out, device="cpu")
    assert "lm_head.weight" in F.load_checkpoint_tensors(out)
    assert_digests_match_a_second_read(out, result.sha256, result.fingerprint)

    replaced = F.save_adapter(
        F.build_model("llama"), tmp_path / "ad2", target_modules=["q_proj"], modules_to_save=["lm_head"]
    )
    base2 = F.save_checkpoint(F.build_model("llama"), tmp_path / "base2", layout="sharded")
    out2 = tmp_path / "out2"
    result2 = merge_adapters(base2, [replaced], out2, device="cpu", max_shard_size="20KB")
    assert_digests_match_a_second_read(out2, result2.sha256, result2.fingerprint)


def test_tied_base_untouched_head_and_legacy_names(tmp_path: Path) -> None:
    """A tied GPT-2 without its prefix (legacy names), Conv1D fan_in_fan_out, lm_head left out."""
    base = F.save_checkpoint(F.build_model("gpt2"), tmp_path / "base", prefix=False, layout="sharded")
    adapter = F.save_adapter(F.build_model("gpt2"), tmp_path / "ad", target_modules=["c_attn"], fan_in_fan_out=True)
    out = tmp_path / "out"
    result = merge_adapters(base, [adapter], out, device="cpu", max_shard_size="20KB")
    assert "lm_head.weight" not in F.load_checkpoint_tensors(out)
    assert_digests_match_a_second_read(out, result.sha256, result.fingerprint)


def test_no_fsync_merge_is_byte_identical_to_the_durable_one(tmp_path: Path) -> None:
    base = F.save_checkpoint(F.build_model("llama"), tmp_path / "base", layout="sharded", dtype="bfloat16")
    adapter = F.save_adapter(F.build_model("llama"), tmp_path / "ad", target_modules=["q_proj", "o_proj"])
    durable = merge_adapters(base, [adapter], tmp_path / "a", device="cpu", max_shard_size="20KB")
    fast = merge_adapters(base, [adapter], tmp_path / "b", device="cpu", max_shard_size="20KB", fsync=False)
    weights = [n for n in durable.files if n.endswith((".safetensors", ".json")) and n != "loradex.json"]
    for name in weights:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        assert durable.sha256[name] == fast.sha256[name]
    assert durable.fingerprint == fast.fingerprint
    assert {"plan", "wait_for_torch", "weights", "finish"} <= set(durable.phases)


# --- the writer: any write order ---------------------------------------------------------


def test_writer_hashes_in_file_order_whatever_the_write_order(tmp_path: Path) -> None:
    """Tensors larger than a fingerprint piece, zero-size ones, written in shuffled parts from
    several threads: the writer's sha256 and tensor digests equal a second read."""
    rng = random.Random(7)
    specs = [
        TensorSpec("empty.first", "F32", (0,)),
        TensorSpec("big", "U8", (CHUNK_SIZE * 2 + 12345,)),
        TensorSpec("small", "BF16", (3, 5)),
        TensorSpec("empty.middle", "I64", (4, 0)),
        TensorSpec("exact", "U8", (CHUNK_SIZE,)),
        TensorSpec("empty.last", "F16", (0, 3)),
    ]
    data = {s.name: rng.randbytes(s.nbytes) for s in specs}
    parts: list[tuple[str, int, bytes]] = []
    for spec in specs:
        payload = data[spec.name]
        cuts = sorted({0, len(payload), *(rng.randrange(len(payload) + 1) for _ in range(6))})
        parts += [(spec.name, a, payload[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    rng.shuffle(parts)
    calls: list[tuple[int, int]] = []
    writer = SafetensorsWriter(tmp_path / "x.safetensors", specs, metadata={"format": "pt"}, digests=True)
    writer.behind = WriteBehind(writer.fd, chunk=1 << 20, sync_range=lambda fd, off, n: calls.append((off, n)))

    def run(share: list[tuple[str, int, bytes]]) -> None:
        for name, offset, payload in share:
            writer.write(name, payload, offset=offset)

    # one thread per tensor at a time, as the merge does: split the shuffled parts by tensor
    by_tensor: dict[str, list[tuple[str, int, bytes]]] = {}
    for part in parts:
        by_tensor.setdefault(part[0], []).append(part)
    threads = [threading.Thread(target=run, args=(share,)) for share in by_tensor.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close(fsync=True)
    path = tmp_path / "x.safetensors"
    assert writer.sha256 == sha256_file(path)
    assert set(read_header(path).tensors) == {s.name for s in specs}
    for spec in specs:
        assert writer.tensor_sha256[spec.name] == tensor_sha256(data[spec.name]), spec.name
    # write-back was asked for every tensor byte, once (the header went to the first WriteBehind)
    data_start = min(p.start for p in writer.places.values())
    covered = sorted(calls)
    assert sum(n for _, n in covered) == os.path.getsize(path) - data_start
    assert all(a + n <= b for (a, n), (b, _) in zip(covered, covered[1:], strict=False))


def test_tensor_hasher_agrees_with_tensor_sha256_for_any_split() -> None:
    rng = random.Random(3)
    payload = rng.randbytes(CHUNK_SIZE * 2 + 999)
    for _ in range(5):
        hasher = TensorHasher()
        position = 0
        while position < len(payload):
            step = rng.choice([1, 17, 4096, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 5])
            hasher.update(payload[position : position + step])
            position += step
        assert hasher.hexdigest() == tensor_sha256(payload)
    pieces = [hashlib.sha256(payload[i : i + CHUNK_SIZE]).digest() for i in range(0, len(payload), CHUNK_SIZE)]
    assert tensor_sha256(payload) == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert TensorHasher().hexdigest() == hashlib.sha256(b"").hexdigest()


# --- write-behind ------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EIO])
def test_write_behind_switches_itself_off_when_refused(tmp_path: Path, code: int) -> None:
    calls: list[int] = []

    def refuse(fd: int, offset: int, nbytes: int) -> None:
        calls.append(nbytes)
        raise OSError(code, os.strerror(code))

    path = tmp_path / "f.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        behind = WriteBehind(fd, chunk=4, sync_range=refuse)
        os.pwrite(fd, b"12345678", 0)
        behind.written(0, 8)
        behind.written(8, 8)
        assert calls == [8] and not behind.active
    finally:
        os.close(fd)


def test_writer_without_write_behind_support_still_writes_everything(tmp_path: Path) -> None:
    specs = [TensorSpec("a", "U8", (1 << 20,))]
    payload = os.urandom(1 << 20)
    writer = SafetensorsWriter(tmp_path / "a.safetensors", specs, digests=True, write_behind=True)

    def refuse(fd: int, offset: int, nbytes: int) -> None:
        raise OSError(errno.ENOSYS, "not implemented")

    writer.behind = WriteBehind(writer.fd, sync_range=refuse, chunk=1)
    writer.write("a", payload[:1000])
    writer.write("a", payload[1000:], offset=1000)
    writer.close(fsync=True)
    assert writer.sha256 == sha256_file(tmp_path / "a.safetensors")


@pytest.mark.skipif(sync_range_function() is None, reason="no sync_file_range on this platform")
def test_real_sync_file_range_accepts_written_ranges(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"x" * (3 << 20), 0)
        behind = WriteBehind(fd, chunk=1 << 20)
        behind.written(0, 3 << 20)
        behind.flush_all()
        assert behind.active and behind.requests == 1 and behind.bytes_requested == 3 << 20
    finally:
        os.close(fd)


def test_merge_result_tensor_digests_reuse_nothing_stale(tmp_path: Path) -> None:
    """Two merges into the same folder (--force): the second's digests are its own."""
    base = F.save_checkpoint(F.build_model("llama"), tmp_path / "base")
    first = F.save_adapter(F.build_model("llama"), tmp_path / "a1", target_modules=["q_proj"], seed=1)
    second = F.save_adapter(F.build_model("llama"), tmp_path / "a2", target_modules=["q_proj"], seed=2)
    out = tmp_path / "out"
    one = merge_adapters(base, [first], out, device="cpu")
    two = merge_adapters(base, [second], out, device="cpu", force=True)
    assert one.fingerprint != two.fingerprint
    assert_digests_match_a_second_read(out, two.sha256, two.fingerprint)
    assert open_checkpoint(out).tensors.keys() == open_checkpoint(base).tensors.keys()


def test_merge_without_digests_leaves_them_empty(tmp_path: Path) -> None:
    base = F.save_checkpoint(F.build_model("llama"), tmp_path / "base")
    adapter = F.save_adapter(F.build_model("llama"), tmp_path / "ad", target_modules=["q_proj"])
    hashed = merge_adapters(base, [adapter], tmp_path / "a", device="cpu")
    plain = merge_adapters(base, [adapter], tmp_path / "b", device="cpu", digests=False)
    assert plain.fingerprint is None and plain.sha256 == {}
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert hashed.fingerprint == fingerprint_checkpoint(tmp_path / "b")


# --- digests of copied tensors from the base's fingerprint cache -------------------------------


def test_copied_tensors_take_the_base_cached_digests(tmp_path: Path) -> None:
    """With the base fingerprinted into a cache folder, a merge given that cache reports the same
    sha256 and fingerprint as a second read; copied tensors' digests come from the cache (a
    changed cache entry shows up in the fingerprint, so they were not recomputed)."""
    import json

    from mergetools.fingerprint import cached_tensor_digests, combine_digests, tensor_digests

    base = F.save_checkpoint(F.build_model("llama"), tmp_path / "base", layout="sharded", dtype="bfloat16")
    adapter = F.save_adapter(F.build_model("llama"), tmp_path / "ad", target_modules=["q_proj"])
    cache = tmp_path / "cache"
    checkpoint = open_checkpoint(base)
    assert cached_tensor_digests(checkpoint, cache) == {}
    fingerprint_checkpoint(checkpoint, cache_dir=cache)
    cached = cached_tensor_digests(checkpoint, cache)
    assert cached == tensor_digests(checkpoint)

    out = tmp_path / "out"
    result = merge_adapters(base, [adapter], out, device="cpu", max_shard_size="20KB", digest_cache=cache)
    assert_digests_match_a_second_read(out, result.sha256, result.fingerprint)
    assert result.tensors_copied > 0

    # Rewrite one copied tensor's cached digest: the next merge reports it as given.
    copied = "model.norm.weight"
    entry = next(
        p for p in (cache / "fingerprints").iterdir() if copied in json.loads(p.read_text())["tensors"]
    )
    data = json.loads(entry.read_text())
    data["tensors"][copied][2] = "0" * 64
    entry.write_text(json.dumps(data))
    again = merge_adapters(base, [adapter], tmp_path / "again", device="cpu", max_shard_size="20KB", digest_cache=cache)
    second_read = tensor_digests(open_checkpoint(tmp_path / "again"))
    second_read[copied] = type(second_read[copied])(second_read[copied].dtype, second_read[copied].shape, "0" * 64)
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again.fingerprint == combine_digests(second_read, config)
    assert again.sha256 == {**result.sha256, "loradex.json": again.sha256["loradex.json"]}
    assert {"weights.copy", "weights.fold", "weights.write", "weights.hash", "finish.fsync", "finish.rename"} <= set(
        again.phases
    )
