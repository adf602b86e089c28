"""Merge LoRA adapters into a base checkpoint, streaming tensor by tensor.

The merge plans first (headers only, no torch: ``import torch`` runs in a thread meanwhile;
every refusal about the inputs happens before a byte is written), then writes a new checkpoint
into a temporary folder beside ``out``:

- tensors no adapter touches are copied byte for byte with ``copy_file_range`` (no decoding);
- 2-D weights that only receive LoRA deltas are folded in blocks of rows: read the rows with
  ``pread``, widen to fp32, ``addmm_`` every delta in place, round once, ``pwrite`` — memory
  stays at a few MB per tensor whatever the model size;
- everything else (replacements, DoRA across columns, conv, biases, token rows) is computed
  on the whole tensor in fp32 and rounded once.

Untouched tensors are queued first and copied while torch is still importing. Every shard is
hashed as it is written (its sha256, and each tensor's fingerprint digest: the result carries the
merged checkpoint's fingerprint, so recording a merge never reads the output again).

Durability (the default, ``fsync=True``): write-back of every written range is started at once
(``sync_file_range``, :mod:`mergetools.syncio`), each shard is ``fdatasync``'d as soon as its
tensors are done, then every file and folder is fsynced and the folder renamed into place
(:func:`mergetools.outdir.atomic_output_folder`): when the call returns, the output survives a
crash or power loss. ``fsync=False`` skips all of it (faster, not crash-safe).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mergetools import __version__
from mergetools.adapter import Adapter, adapter_folder, load_adapter
from mergetools.checkpoint import (
    BIN_INDEX,
    SAFE_INDEX,
    TOKENIZER_FILES,
    WEIGHT_SUFFIXES,
    Checkpoint,
    base_folder,
    open_checkpoint,
    parse_size,
    plan_shards,
    shard_file_names,
    tensor_nbytes,
)
from mergetools.errors import (
    IncompatibleError,
    InvalidAdapterError,
    InvalidInputError,
)
from mergetools.files import sha256_file, write_json
from mergetools.fingerprint import TensorDigest, cached_tensor_digests, combine_digests
from mergetools.outdir import (
    ProtectedPath,
    atomic_output_folder,
    check_output_path,
    input_guards,
)
from mergetools.plan import DeltaOp, MergePlan, OutputTensor, plan_merge
from mergetools.safetensors_io import (
    DTYPE_SIZES,
    FLOAT_DTYPES,
    SafetensorsWriter,
    TensorSpec,
    pread_exact,
    torch_dtype,
)
from mergetools.tokenizer import TokenizerFiles, check_tokenizer, find_tokenizer_files

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) as output tensors are written."""

BLOCK_BYTES = 1 << 20
"""Target size of one fp32 block of rows: half a core's L2 here, so the block stays in cache."""

PROVENANCE_FILE = "loradex.json"


@dataclass(frozen=True)
class InputName:
    """How the caller named a merge input that it resolved to a folder (a registry reference).

    ``label`` (``sts@production -> sts@3``) and ``fields`` (``{"ref": ..., "version": ...}``)
    are recorded in ``loradex.json`` and the result instead of an adapter's (cache) folder.
    """

    label: str
    fields: Mapping[str, object] = field(default_factory=dict)


@dataclass
class MergeResult:
    """What a merge wrote, for the CLI's summary and the registry's record."""

    out: Path
    files: list[str]
    tensors: int
    tensors_changed: int
    tensors_copied: int
    bytes_written: int
    seconds: float
    device: str
    dtype: str
    adapters: list[dict[str, object]]
    config_updates: dict[str, object]
    notes: list[str] = field(default_factory=list)
    fingerprint: str | None = None
    """The merged checkpoint's base fingerprint (:mod:`mergetools.fingerprint`), computed from
    the bytes as they were written: equal to ``fingerprint_checkpoint(out)``."""
    sha256: dict[str, str] = field(default_factory=dict)
    """File name -> sha256 of every file in :attr:`files` (shards hashed while written)."""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: ``plan`` (headers, checks, plan), ``wait_for_torch`` (what is left of
    ``import torch`` once planned), ``weights`` (produce, hash and flush the shards; wall), and
    within it, summed over worker threads: ``weights.copy`` (kernel copies of untouched
    tensors), ``weights.fold`` (reading, widening, the deltas, rounding, checks),
    ``weights.write`` (``pwrite`` of folded blocks and write-back requests), ``weights.hash``
    (sha256 and fingerprint digests of what was written); ``weights.flush`` (main thread:
    waiting in each shard's final ``fdatasync``); ``finish`` (side files were written before
    it: marker, fsync of every file and folder, rename), split into ``finish.fsync`` and
    ``finish.rename``."""

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["out"] = str(self.out)
        return data


def pick_device(device: str) -> torch.device:
    """Resolve ``auto`` to CUDA when present; refuse ``cuda`` without a GPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"device {device!r} requested but no CUDA device is available",
                fields={"device": device},
                hint="run on the CPU",
                hint_action="device_cpu",
            )
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise InvalidInputError(
                f"device {device!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device(device)
    raise InvalidInputError(f"device {device!r} is not one of auto, cpu, cuda")



def merge_adapters(
    base: str | os.PathLike[str],
    adapters: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    weights: Sequence[float] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    max_shard_size: int | str = "5GB",
    force: bool = False,
    protected: Sequence[ProtectedPath] = (),
    fsync: bool = True,
    digests: bool = True,
    digest_cache: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    names: Sequence[InputName | None] | None = None,
    base_name: InputName | None = None,
    weights_explicit: bool | None = None,
    labels: Sequence[str] | None = None,
    request: Mapping[str, object] | None = None,
) -> MergeResult:
    """Fold ``adapters`` (scaled by ``weights``) into ``base`` and write a checkpoint to ``out``.

    Each delta is computed in fp32 and the sum rounded once into the output dtype. On any
    error nothing is left at ``out``. ``force`` replaces an empty folder or an earlier loradex
    output, never the inputs or a ``protected`` path (the caller names the registry home and
    the current folder).

    ``names`` (one per adapter, None for a plain folder) and ``base_name`` say how the caller
    named an input, e.g. by a registry reference resolved to a cache folder: ``loradex.json``
    (and the result) record the name instead of the adapter's folder, and next to the base's
    path.

    The same adapter given twice is refused unless the weights are explicit
    (``weights_explicit``; default: ``weights`` was given; see
    :func:`mergetools.plan.refuse_repeated_adapters`); ``labels`` name the adapters in that
    message (default: their folders). ``digests`` hashes the output while writing it (two
    sha256 passes over the bytes, on the worker threads): the result then carries every file's
    sha256 and the merged checkpoint's fingerprint; without it both are left empty.
    ``digest_cache`` names a fingerprint cache folder (:mod:`mergetools.fingerprint`; the
    registry's ``cache/``): tensors copied unchanged from a base file with a valid entry there
    take their digest from it, so only the file's sha256 is computed over their bytes. ``request``
    (:meth:`mergetools.requests.MergeRequest.to_dict`) is recorded in ``loradex.json`` as is.
    """
    if names is not None and len(names) != len(adapters):
        raise InvalidInputError(f"got {len(names)} names for {len(adapters)} adapters")
    names = list(names) if names is not None else [None] * len(adapters)
    started = time.perf_counter()
    torch_import = preload_torch()  # ~1 s here; planning and copying need no torch
    base_path, out_path = Path(base), Path(out)
    adapter_paths = [Path(a) for a in adapters]
    try:
        shard_limit = parse_size(max_shard_size)
    except ValueError as exc:
        raise InvalidInputError(
            f"max shard size: {exc}", fields={"max_shard_size": str(max_shard_size)}
        ) from None
    check_output_path(out_path, [base_path, *adapter_paths], force=force, protected=protected)
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        pick_device(device)  # the message for a device name that can never work, before planning

    checkpoint = open_checkpoint(base_path)
    parsed = [load_adapter(path) for path in adapter_paths]
    plan = plan_merge(
        checkpoint,
        parsed,
        weights=weights,
        dtype=dtype,
        weights_explicit=weights is not None if weights_explicit is None else weights_explicit,
        labels=labels,
    )
    _refuse_incompatible(checkpoint, parsed)
    tokenizer_carrier = _tokenizer_carrier(parsed)
    base_folder(checkpoint.path).entries()  # refuse a base side file leaving the folder before writing
    known = (
        cached_tensor_digests(checkpoint, Path(digest_cache))
        if digests and digest_cache is not None
        else {}
    )
    phases = {"plan": time.perf_counter() - started}
    target: list[torch.device] = []

    def device_ready() -> torch.device:
        waited = time.perf_counter()
        torch_import.wait()
        target.append(pick_device(device))
        phases["wait_for_torch"] = time.perf_counter() - waited
        return target[0]

    finish_timings: dict[str, float] = {}
    output = atomic_output_folder(
        out_path,
        kind="merge",
        force=force,
        protected=input_guards([base_path, *adapter_paths], protected),
        fsync=fsync,
        label=f"output folder {out_path}",
        timings=finish_timings,
    )
    with output as tmp:
        weights_started = time.perf_counter()
        executor = _Executor(plan, progress, known_digests=known)
        files, sha256, tensor_digests = executor.write_weights(
            tmp, shard_limit, fsync=fsync, digests=digests, device_ready=device_ready
        )
        stats = executor.stats
        phases["weights"] = time.perf_counter() - weights_started - phases["wait_for_torch"]
        phases.update({f"weights.{k}": v for k, v in executor.timings.items()})
        config = _write_config(checkpoint, plan, tmp / "config.json")
        copied, tokenizer_note = _copy_side_files(
            checkpoint, tokenizer_carrier, tmp, reserved={*files, "config.json", PROVENANCE_FILE}
        )
        notes = [*plan.notes, tokenizer_note]
        adapters_info = [
            {
                **({"name": n.label, **n.fields} if n else {"path": str(a.path)}),
                "weight": w,
                "sha256": {
                    f.name: sha256_file(f) for f in (a.path / "adapter_config.json", a.weights_file)
                },
            }
            for a, w, n in zip(parsed, plan.weights, names, strict=True)
        ]
        base_info: dict[str, object] = {"path": str(checkpoint.path)}
        if base_name is not None:
            base_info.update({"name": base_name.label, **base_name.fields})
        base_info["architectures"] = checkpoint.architectures
        provenance = {
            "loradex_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "base": base_info,
            "adapters": adapters_info,
            "dtype": dtype,
            "device": str(target[0]),
            "config_updates": plan.config_updates,
            "notes": notes,
        }
        if request is not None:
            provenance["request"] = dict(request)
        write_json(tmp / PROVENANCE_FILE, provenance)
        all_files = [*files, "config.json", *copied, PROVENANCE_FILE]
        for name in all_files if digests else ():  # the small files: config, index, provenance
            if name not in sha256:
                sha256[name] = sha256_file(tmp / name)
        finishing = time.perf_counter()
    phases["finish"] = time.perf_counter() - finishing  # marker, fsync of the folders, rename
    phases.update({f"finish.{k}": v for k, v in finish_timings.items()})
    fingerprint = combine_digests(tensor_digests, config) if digests else None
    result = MergeResult(
        out=out_path,
        files=sorted(all_files),
        tensors=len(plan.outputs),
        tensors_changed=stats["changed"],
        tensors_copied=stats["copied"],
        bytes_written=stats["bytes"],
        seconds=round(time.perf_counter() - started, 3),
        device=str(target[0]),
        dtype=dtype,
        adapters=adapters_info,
        config_updates=plan.config_updates,
        notes=notes,
        fingerprint=fingerprint,
        sha256=dict(sorted(sha256.items())),
        phases={k: round(v, 4) for k, v in phases.items()},
    )
    logger.info("merged %d adapters into %s in %.2fs", len(parsed), out_path, result.seconds)
    return result


_preload_lock = threading.Lock()
_preload: _BackgroundImport | None = None


def preload_torch() -> _BackgroundImport:
    """Start ``import torch`` in a background thread (once per process) and return its handle;
    a caller with other start-up work (opening the registry) calls this first to overlap them."""
    global _preload
    with _preload_lock:
        if _preload is None:
            _preload = _BackgroundImport("torch")
        return _preload


class _BackgroundImport:
    """Import a module in a thread, so the caller plans and copies meanwhile; :meth:`wait`
    joins it and re-raises what the import raised (in the caller's thread, by importing)."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.thread: threading.Thread | None = None
        if module not in sys.modules:
            self.thread = threading.Thread(
                target=self._run, name=f"loradex-import-{module}", daemon=True
            )
            self.thread.start()

    def _run(self) -> None:
        try:
            __import__(self.module)
        except BaseException:  # noqa: BLE001 - raised again by wait()
            logger.debug("background import of %s failed", self.module, exc_info=True)

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
        __import__(self.module)


def _refuse_incompatible(checkpoint: Checkpoint, adapters: Sequence[Adapter]) -> None:
    """Run the same checks as ``loradex check`` and refuse on any error, before writing."""
    from mergetools.check import check_adapters

    report = check_adapters(list(adapters), base=checkpoint, cross_check_merge=False)
    if report.errors:
        first = report.errors[0]
        where = " ".join(
            part
            for part in (first.adapter, f"module {first.module!r}" if first.module else None)
            if part
        )
        more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise IncompatibleError(
            f"{where}: [{first.code}] {first.message}{more}",
            fields={"code": first.code, "errors": len(report.errors)},
            hint_action="check_report" if len(report.errors) > 1 else None,
        )


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 1


def _enter_single_threaded() -> None:
    """Set torch's intra-op threads to 1 while any merge in this process runs (it is global)."""
    import torch

    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users += 1


def _leave_single_threaded() -> None:
    import torch

    global _threads_users
    with _threads_lock:
        _threads_users -= 1
        if _threads_users == 0:
            torch.set_num_threads(_threads_saved)


class _Executor:
    """Produces every output tensor of a plan into safetensors shards."""

    def __init__(
        self,
        plan: MergePlan,
        progress: Progress | None,
        *,
        known_digests: Mapping[str, TensorDigest] | None = None,
    ) -> None:
        self.plan = plan
        self.known_digests = dict(known_digests or {})
        """Base tensor name -> its cached fingerprint digest (reused for byte-for-byte copies)."""
        self.checkpoint: Checkpoint = plan.checkpoint
        self.device: torch.device  # set by write_weights once torch is imported
        self.progress = progress
        self.total = plan.total_bytes
        self.done = 0
        self.fds: dict[Path, int] = {}
        self.stats = {"changed": 0, "copied": 0, "converted": 0, "bytes": 0}
        self.timings = {"copy": 0.0, "fold": 0.0, "write": 0.0, "hash": 0.0, "flush": 0.0}
        """Seconds spent copying, folding, writing folded bytes and hashing (summed over worker
        threads, each counted once), and waiting in the final ``fdatasync`` of each shard (main
        thread)."""
        self.lock = threading.Lock()
        self.local = threading.local()
        # Tensors are produced by a small pool: torch and the read/write syscalls release the
        # GIL, so one tensor's I/O overlaps another's math. Legacy pickles stay sequential
        # (one memory-mapped shard at a time).
        self.workers = 1 if self.checkpoint.format == "bin" else max(1, min(4, os.cpu_count() or 1))

    def fd(self, path: Path) -> int:
        with self.lock:
            if path not in self.fds:
                self.fds[path] = os.open(path, os.O_RDONLY)
            return self.fds[path]

    def count(self, key: str) -> None:
        with self.lock:
            self.stats[key] += 1

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def advance(self, nbytes: int) -> None:
        with self.lock:
            self.done += nbytes
            if self.progress is not None:
                self.progress(self.done, self.total)

    def write_weights(
        self,
        folder: Path,
        shard_limit: int,
        *,
        fsync: bool,
        digests: bool = True,
        device_ready: Callable[[], torch.device],
    ) -> tuple[list[str], dict[str, str], dict[str, TensorDigest]]:
        """Write every output tensor into shards under ``folder``.

        Untouched tensors are queued first: they are copied with ``copy_file_range`` and need
        no torch, so they run while ``device_ready`` (which waits for ``import torch``) blocks.
        Every shard is hashed as it is written; with ``fsync`` each shard's write-back starts
        as its ranges are written, and the shard is ``fdatasync``'d as soon as its tensors are
        done (while the pool works on the next shard). Returns the file names, each shard's
        sha256 and each tensor's fingerprint digest.
        """
        outputs = self.plan.outputs
        sizes = [(o.name, tensor_nbytes(o.dtype, o.shape)) for o in outputs]
        by_name = {o.name: o for o in outputs}
        shards = plan_shards(sizes, shard_limit)
        names = shard_file_names(len(shards))
        writers: list[SafetensorsWriter] = []
        closed: set[int] = set()
        futures: list[list[Future[None]]] = [[] for _ in names]
        single_threaded = False
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="loradex-merge") as pool:
                try:
                    for file_name, members in zip(names, shards, strict=True):
                        specs = [
                            TensorSpec(n, by_name[n].dtype, tuple(by_name[n].shape))
                            for n in members
                        ]
                        writers.append(
                            SafetensorsWriter(
                                folder / file_name,
                                specs,
                                metadata={"format": "pt"},
                                digests=digests,
                                write_behind=fsync,
                            )
                        )
                    early: set[str] = set()
                    for i, members in enumerate(shards):
                        for name in members:
                            if self._copyable(by_name[name]):
                                futures[i].append(pool.submit(self.produce, by_name[name], writers[i]))
                                early.add(name)
                    self.device = device_ready()
                    # One intra-op thread per worker: the blocks are small, and torch's own
                    # thread pool spins on them (measured: 5x the CPU time for the same merge).
                    _enter_single_threaded()
                    single_threaded = True
                    for i, members in enumerate(shards):
                        for name in members:
                            if name not in early:
                                futures[i].append(pool.submit(self.produce, by_name[name], writers[i]))
                    for i, writer in enumerate(writers):
                        for future in futures[i]:
                            future.result()
                        waited = time.perf_counter()
                        closed.add(i)
                        writer.close(fsync=fsync)
                        self.timings["flush"] += time.perf_counter() - waited
                except BaseException:
                    every = [f for file_futures in futures for f in file_futures]
                    for future in every:
                        future.cancel()
                    wait(every)
                    for i, writer in enumerate(writers):
                        if i not in closed:
                            writer.abort()
                    raise
        finally:
            if single_threaded:
                _leave_single_threaded()
            self.close()
        files = list(names)
        sha256 = {n: w.sha256 for n, w in zip(names, writers, strict=True) if w.sha256}
        tensor_digests = {
            name: TensorDigest(place.dtype, place.shape, writer.tensor_sha256[name])
            for writer in writers
            for name, place in writer.places.items()
            if digests
        }
        if len(names) > 1:
            weight_map = {n: file_name for file_name, members in zip(names, shards, strict=True) for n in members}
            index = {
                "metadata": {"total_size": sum(s for _, s in sizes)},
                "weight_map": dict(sorted(weight_map.items())),
            }
            write_json(folder / SAFE_INDEX, index)
            files.append(SAFE_INDEX)
        self.stats["bytes"] = sum(s for _, s in sizes)
        return files, sha256, tensor_digests

    def _spent(self, key: str, seconds: float) -> None:
        with self.lock:
            self.timings[key] += seconds

    # --- producing one tensor -----------------------------------------------------------

    def produce(self, out: OutputTensor, writer: SafetensorsWriter) -> None:
        nbytes = tensor_nbytes(out.dtype, out.shape)
        source = self.checkpoint.tensors[out.source] if out.source is not None else None
        write_before, hash_before = writer.thread_seconds()
        started = time.perf_counter()
        if not out.touched and source is not None and source.dtype == out.dtype:
            if source.info is not None:
                known = self.known_digests.get(source.name)
                writer.copy_from(
                    out.name,
                    self.fd(source.file),
                    source.info.start,
                    tensor_sha256=known.sha256 if known is not None else None,
                )
            else:
                writer.write_tensor(out.name, self.checkpoint.load(source.name))
            self.count("copied")
            kind = "copy"
        elif self._row_blockable(out):
            self._produce_rows(out, writer)
            self.count("changed" if out.touched else "converted")
            kind = "fold"
        else:
            self._produce_dense(out, writer)
            self.count("changed" if out.touched else "converted")
            kind = "fold"
        elapsed = time.perf_counter() - started
        write_after, hash_after = writer.thread_seconds()
        # hashing runs in whichever thread completes the tensor at the hashing cursor
        hashed, wrote = hash_after - hash_before, write_after - write_before
        self._spent(kind, elapsed - hashed - (wrote if kind == "fold" else 0.0))
        self._spent("hash", hashed)
        if kind == "fold":
            self._spent("write", wrote)
        self.advance(nbytes)

    def _copyable(self, out: OutputTensor) -> bool:
        """Copied byte for byte from a safetensors file (no torch needed)."""
        source = self.checkpoint.tensors[out.source] if out.source is not None else None
        return (
            not out.touched
            and source is not None
            and source.dtype == out.dtype
            and source.info is not None
        )

    @staticmethod
    def _row_blockable(out: OutputTensor) -> bool:
        return (
            out.source is not None
            and out.replacement is None
            and not out.token_rows
            and not out.bias_adds
            and len(out.shape) == 2
            and out.shape[0] * out.shape[1] > 0
            and all(op.layout in ("rows", "transposed") for op in out.deltas)
            and (out.dora is None or out.dora.layout == "rows")
        )

    def _factors(self, op: DeltaOp) -> tuple[torch.Tensor, torch.Tensor]:
        """The module's factors in fp32 on the device (the checks before the merge scanned them
        for NaN/Inf; every written block is checked again)."""
        import torch

        adapter: Adapter = self.plan.adapters[op.adapter]
        lora_a = adapter.load(op.module.lora_a).to(self.device, torch.float32)
        lora_b = adapter.load(op.module.lora_b).to(self.device, torch.float32)
        return lora_a, lora_b

    def _scratch(self, nbytes: int) -> tuple[bytearray, bytearray, torch.Tensor]:
        """Per-thread buffers reused for every block: raw input, raw output, fp32 accumulator.

        Reusing them matters: a fresh multi-MB allocation per block is a fresh mmap, and its
        page faults cost more than the fold itself.
        """
        import torch

        scratch = getattr(self.local, "scratch", None)
        if scratch is None or len(scratch[0]) < nbytes:
            scratch = (
                bytearray(nbytes),
                bytearray(nbytes),
                torch.empty(nbytes // 4 + 1, dtype=torch.float32, device=self.device),
            )
            self.local.scratch = scratch
        return scratch

    def _produce_rows(self, out: OutputTensor, writer: SafetensorsWriter) -> None:
        """Fold deltas into a 2-D weight one cache-sized block of rows at a time."""
        import torch

        from mergetools.fold import add_linear_delta, add_transposed_delta, apply_dora, check_finite

        assert out.source is not None
        source = self.checkpoint.tensors[out.source]
        rows, cols = out.shape
        ops = [(op, *self._factors(op)) for op in (*out.deltas, *([out.dora] if out.dora else []))]
        magnitude = None
        if out.dora is not None:
            adapter = self.plan.adapters[out.dora.adapter]
            assert out.dora.module.magnitude is not None
            magnitude = (
                adapter.load(out.dora.module.magnitude).to(self.device, torch.float32).reshape(-1)
            )
        in_row_bytes = cols * DTYPE_SIZES[source.dtype]
        out_row_bytes = cols * DTYPE_SIZES[out.dtype]
        block = max(1, BLOCK_BYTES // max(1, cols * 4))
        raw_in, raw_out, acc_storage = self._scratch(block * cols * 8)
        in_view = torch.frombuffer(
            raw_in, dtype=torch_dtype(source.dtype), count=block * cols
        ).view(block, cols)
        out_view = torch.frombuffer(raw_out, dtype=torch_dtype(out.dtype), count=block * cols).view(
            block, cols
        )
        whole = self.checkpoint.load(out.source) if source.info is None else None
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            n = stop - start
            if whole is not None:
                in_view[:n].copy_(whole[start:stop])
            elif source.info is not None:
                pread_exact(
                    self.fd(source.file),
                    memoryview(raw_in)[: n * in_row_bytes],
                    source.info.start + start * in_row_bytes,
                    source=str(source.file),
                )
            acc = acc_storage[: n * cols].view(n, cols)
            acc.copy_(in_view[:n])
            for op, lora_a, lora_b in ops:
                if op.layout == "rows":
                    add_linear_delta(acc, lora_a=lora_a, lora_b=lora_b[start:stop], scale=op.scale)
                else:
                    add_transposed_delta(
                        acc, lora_a=lora_a[:, start:stop], lora_b=lora_b, scale=op.scale
                    )
            if magnitude is not None:
                apply_dora(acc, magnitude=magnitude[start:stop], norm_dims=(1,))
            out_view[:n].copy_(acc)
            # fp16 can overflow when rounding, so its sum is taken on the rounded block.
            check_finite(
                out_view[:n],
                what=f"{out.name} rows {start}:{stop}",
                summed=acc if out.dtype != "F16" else None,
            )
            writer.write(
                out.name, memoryview(raw_out)[: n * out_row_bytes], offset=start * out_row_bytes
            )

    def _produce_dense(self, out: OutputTensor, writer: SafetensorsWriter) -> None:
        import torch

        from mergetools.fold import (
            add_linear_delta,
            add_transposed_delta,
            apply_dora,
            check_finite,
            conv_delta,
        )

        if out.replacement is not None:
            index, meta = out.replacement
            value = self.plan.adapters[index].load(meta)
        else:
            assert out.source is not None
            value = self.checkpoint.load(out.source)
        out_dtype = torch_dtype(out.dtype)
        if out.dtype not in FLOAT_DTYPES:
            writer.write_tensor(out.name, value.to(out_dtype).contiguous())
            return
        acc = value.to(self.device, torch.float32, copy=True)
        for op in out.deltas + ([out.dora] if out.dora else []):
            lora_a, lora_b = self._factors(op)
            if op.layout == "rows":
                add_linear_delta(acc, lora_a=lora_a, lora_b=lora_b, scale=op.scale)
            elif op.layout == "transposed":
                add_transposed_delta(acc, lora_a=lora_a, lora_b=lora_b, scale=op.scale)
            else:
                acc.add_(conv_delta(lora_a=lora_a, lora_b=lora_b, scale=op.scale))
        if out.dora is not None:
            module = out.dora.module
            assert module.magnitude is not None
            magnitude = (
                self.plan.adapters[out.dora.adapter]
                .load(module.magnitude)
                .to(self.device, torch.float32)
            )
            if out.dora.layout == "rows":
                dims: tuple[int, ...] = (1,)
            elif out.dora.layout == "transposed":
                dims = (0,)
            else:
                dims = tuple(range(1, acc.dim()))
            apply_dora(acc, magnitude=magnitude, norm_dims=dims)
        for bias in out.bias_adds:
            acc.add_(
                self.plan.adapters[bias.adapter].load(bias.tensor).to(self.device, torch.float32),
                alpha=bias.scale,
            )
        for index, tokens in out.token_rows:
            rows = self.plan.adapters[index].load(tokens.tensor).to(self.device, torch.float32)
            acc[list(tokens.indices)] = rows
        result = acc.to(out_dtype)
        if out.touched or out_dtype != value.dtype:
            check_finite(result, what=out.name)
        writer.write_tensor(out.name, result.cpu())


# --- side files ---------------------------------------------------------------------------


def _tokenizer_carrier(adapters: Sequence[Adapter]) -> tuple[Adapter, TokenizerFiles] | None:
    """The adapter whose tokenizer files the merged model ships, if any, with those files.

    Every tokenizer file it ships must parse, and a vocabulary it ships must be complete
    (:mod:`mergetools.tokenizer`); adapters merged together must not ship different ones."""
    carrying: list[tuple[Adapter, TokenizerFiles]] = []
    for adapter in adapters:
        tokenizer = find_tokenizer_files(adapter_folder(adapter.path))
        if tokenizer.files:
            carrying.append((adapter, tokenizer))
    if not carrying:
        return None
    first, first_files = carrying[0]
    check_tokenizer(adapter_folder(first.path), error=InvalidAdapterError)
    for other, other_files in carrying[1:]:
        for name in sorted(set(first_files.files) | set(other_files.files)):
            a, b = first_files.files.get(name), other_files.files.get(name)
            if a is None or b is None or sha256_file(a) != sha256_file(b):
                raise IncompatibleError(
                    f"adapters {first.path} and {other.path} ship different tokenizer files ({name}); "
                    "merge adapters that share one tokenizer"
                )
    return first, first_files


def _is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name in (SAFE_INDEX, BIN_INDEX)


def _copy_side_files(
    checkpoint: Checkpoint,
    carrier: tuple[Adapter, TokenizerFiles] | None,
    folder: Path,
    *,
    reserved: set[str],
) -> tuple[list[str], str]:
    """Copy the base's other files (tokenizer, generation config, custom code), then the tokenizer
    an adapter ships: its files replace the base's whole tokenizer when it ships a vocabulary
    (a complete one: checked by :func:`_tokenizer_carrier`), and are laid over the base's
    otherwise (a chat template, special tokens). Links leaving the base folder are refused.

    Returns the copied names and a note saying which tokenizer the output carries."""
    copied: dict[str, Path] = {}
    for entry in base_folder(checkpoint.path).entries():
        usable = not entry.name.startswith(".") and not _is_weight_file(entry.name)
        if usable and entry.name not in reserved:
            copied[entry.name] = entry
    base_had = sorted(n for n in copied if n in TOKENIZER_FILES)
    note = "tokenizer: the base's" if base_had else "tokenizer: none (the base ships no tokenizer files)"
    if carrier is not None:
        adapter, tokenizer = carrier
        names = ", ".join(sorted(tokenizer.files))
        if tokenizer.core:
            for name in TOKENIZER_FILES:
                copied.pop(name, None)
            note = f"tokenizer: the adapter's ({adapter.path}: {names}), replacing the base's"
        else:
            note = f"tokenizer: the base's, with the adapter's {names} ({adapter.path}) laid over it"
        copied.update(tokenizer.files)
    for name, source in copied.items():
        shutil.copyfile(source, folder / name)
    return sorted(copied), note


def _write_config(checkpoint: Checkpoint, plan: MergePlan, path: Path) -> dict[str, object]:
    config = dict(checkpoint.config)
    for key, value in plan.config_updates.items():
        if key == "dtype":
            config["dtype"] = value
            if "torch_dtype" in config:
                config["torch_dtype"] = value
        elif (
            key in ("vocab_size", "tie_word_embeddings")
            and key not in config
            and isinstance(text_config := config.get("text_config"), dict)
        ):
            # Multimodal configs keep the language model's settings in text_config.
            config["text_config"] = {**text_config, key: value}
        else:
            config[key] = value
    write_json(path, config)
    return config
