"""Compatibility checks: does an adapter fit a base model, a server, and the other adapters?

:func:`check_adapters` turns everything that could go wrong into :class:`Finding` records with a
stable ``code`` (listed in :data:`CODES`), a severity and a message that names the expected and
actual values. It never raises for a bad adapter: a corrupt file, a broken config or a refused
variant is a finding too, so one run reports every problem. It raises only when called wrong
(:class:`InvalidInputError`).

The base is a checkpoint folder (read header-only; ``verify_weights`` also fingerprints it), an
opened :class:`Checkpoint`, or a structural signature (:mod:`mergetools.signature`). Names and
shapes are resolved the way the merge planner (:mod:`mergetools.plan`) resolves them
(:mod:`mergetools.base_fit`). With a real checkpoint and no error found, the planner itself is
run as a final cross-check, so ``check`` never passes what ``merge`` refuses.

This module runs the checks and holds those on an adapter by itself and on adapters together;
the rest live beside it: :mod:`mergetools.findings` (codes, :class:`Finding`,
:class:`CheckReport`), :mod:`mergetools.base_fit` (adapter vs base) and
:mod:`mergetools.serving` (vLLM, LoRAX). The public names are re-exported here.

Nothing here imports torch for safetensors inputs; adapter tensors are scanned for NaN / Inf
with numpy.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mergetools.adapter import (
    CONFIG_FILE,
    SAFE_WEIGHTS,
    Adapter,
    adapter_folder,
    load_adapter,
    pattern_keys_unused,
    pattern_value,
    read_adapter_config,
    refuse_unmergeable,
)
from mergetools.base_fit import (
    HEAD_MODULES,
    BaseView,
    Resolved,
    check_against_base,
    check_identity,
    norm_name,
)
from mergetools.checkpoint import Checkpoint, open_checkpoint
from mergetools.config_check import config_problems
from mergetools.errors import InvalidInputError, LoradexError
from mergetools.findings import (
    CODES,
    CheckReport,
    Finding,
    FindingCollector,
    Severity,
    iter_codes,
)
from mergetools.fingerprint import is_fingerprint
from mergetools.inspect import (
    TensorScan,
    iter_tensor_bytes,
    recorded_base_fingerprint,
    scan_adapter_tensors,
)
from mergetools.labels import folder_labels
from mergetools.safetensors_io import read_header
from mergetools.serving import ServingProfile, check_serving, parse_serving, serving_label
from mergetools.signature import (
    BaseSignature,
    load_signature,
    parse_signature,
    signature_of_checkpoint,
)
from mergetools.tokenizer import find_tokenizer_files, tokenizer_problems

__all__ = [
    "CODES",
    "HEAD_MODULES",
    "CheckReport",
    "Finding",
    "ServingProfile",
    "Severity",
    "check_adapters",
    "iter_codes",
    "parse_serving",
]

logger = logging.getLogger(__name__)


# --- the adapter by itself -------------------------------------------------------------------


def _module_of(key: str) -> str:
    name = key.removeprefix("base_model.model.")
    for suffix in (
        ".lora_A.weight",
        ".lora_B.weight",
        ".lora_B.bias",
        ".lora_embedding_A",
        ".lora_embedding_B",
        ".lora_magnitude_vector.weight",
        ".lora_magnitude_vector",
        ".token_adapter.trainable_tokens_delta",
    ):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _rank_findings(
    folder: Path, config: Mapping[str, object], out: FindingCollector, label: str
) -> int:
    """Compare r / rank_pattern with lora_A's rank for every module (header only); count mismatches."""
    try:
        weights = adapter_folder(folder).file(SAFE_WEIGHTS)  # nothing read through a link leaving it
        if weights is None:
            return 0
        header = read_header(weights)
    except LoradexError:
        return 0
    default = config.get("r", 8)
    if not isinstance(default, int | float) or isinstance(default, bool):
        return 0
    count = 0
    for key, info in sorted(header.tensors.items()):
        if (
            not (key.endswith(".lora_A.weight") or key.endswith(".lora_embedding_A"))
            or not info.shape
        ):
            continue
        module = _module_of(key)
        try:
            configured = int(
                pattern_value(
                    config.get("rank_pattern"),
                    module,
                    float(default),
                    field_name="rank_pattern",
                    source=label,
                )
            )
        except LoradexError:
            return count
        if configured != info.shape[0]:
            count += 1
            out.add(
                "rank_mismatch",
                label,
                module,
                f"module {module!r}: the config says r={configured} but lora_A has rank {info.shape[0]} "
                f"(shape {list(info.shape)}); fix r or rank_pattern in {CONFIG_FILE}",
                expected=configured,
                actual=info.shape[0],
            )
    return count


def _open_adapter(
    item: Path | Adapter, out: FindingCollector, name: str | None = None
) -> tuple[str, Adapter | None]:
    if isinstance(item, Adapter):
        label = name or str(item.path)
        try:
            refuse_unmergeable(item.config, source=label)
        except LoradexError as exc:
            out.error_from(exc, label)
        return label, item
    folder = Path(item)
    label = name or str(folder)
    try:
        config = read_adapter_config(folder) if folder.is_dir() else None
    except LoradexError as exc:
        out.error_from(exc, label)
        return label, None
    reported = 0
    if config is not None:
        for problem in config_problems(config):
            reported += 1
            out.add(
                "invalid_config_field",
                label,
                None,
                f"{CONFIG_FILE}: {problem.message}; PEFT's LoraConfig cannot load it",
                expected=problem.expected,
                actual=problem.actual,
            )
        try:
            refuse_unmergeable(config, source=label)
        except LoradexError as exc:
            out.error_from(exc, label)
        if not reported:
            reported = _rank_findings(folder, config, out, label)
    try:
        return label, load_adapter(folder, check_mergeable=False)
    except LoradexError as exc:
        if not reported:
            out.error_from(exc, label)
        return label, None


def _tokenizer_findings(adapter: Adapter, label: str, out: FindingCollector) -> None:
    """Tokenizer files of the adapter folder a merge would refuse (unparsable or incomplete)."""
    try:
        problems = tokenizer_problems(find_tokenizer_files(adapter_folder(adapter.path)))
    except LoradexError as exc:
        problems = [exc.message]
    for problem in problems:
        out.add(
            "unreadable_tokenizer",
            label,
            None,
            f"{problem}; a merge refuses an adapter tokenizer that does not parse or is incomplete",
        )


def _check_intrinsic(adapter: Adapter, label: str, out: FindingCollector, scan: TensorScan) -> None:
    _tokenizer_findings(adapter, label, out)
    for field_name, keys in pattern_keys_unused(adapter.config, list(adapter.modules)).items():
        for key in keys:
            out.add(
                "unused_pattern",
                label,
                None,
                f"{field_name} key {key!r} matches none of the adapter's {len(adapter.modules)} modules; "
                "it has no effect (a typo, or a module of another architecture?)",
                actual=key,
            )
    for item in scan.nonfinite:
        meta = adapter.tensors[item.key]
        out.add(
            "nonfinite_values",
            label,
            _module_of(item.key),
            f"tensor {item.key!r} {list(meta.shape)} holds {item.nan} NaN and {item.inf} Inf values "
            f"(first at flat index {item.first_index}); expected only finite values — the training run diverged "
            "or the file is damaged",
            expected=0,
            actual=item.nan + item.inf,
        )
    recorded = recorded_base_fingerprint(adapter)
    if recorded is not None and not is_fingerprint(recorded):
        out.add(
            "invalid_base_fingerprint",
            label,
            None,
            f"the recorded base fingerprint {recorded[:80]!r} is not 64 lowercase hex digits",
            actual=recorded[:80],
        )


# --- adapters together ---------------------------------------------------------------------


def _check_group(
    items: Sequence[tuple[str, Adapter, Resolved | None]], out: FindingCollector
) -> None:
    fingerprints = {label: recorded_base_fingerprint(a) for label, a, _ in items}
    distinct = {fp for fp in fingerprints.values() if fp is not None}
    if len(distinct) > 1:
        out.add(
            "group_different_bases",
            None,
            None,
            "the adapters record different base fingerprints: "
            + ", ".join(f"{label}: {fp[:16]}…" for label, fp in fingerprints.items() if fp)
            + "; they were trained on different weights and cannot be merged or combined together",
            actual=sorted(distinct),
        )
    names = {
        label: str(a.config.get("base_model_name_or_path"))
        for label, a, _ in items
        if isinstance(a.config.get("base_model_name_or_path"), str)
        and a.config.get("base_model_name_or_path")
    }
    if len({norm_name(n) for n in names.values()}) > 1:
        out.add(
            "group_base_names_differ",
            None,
            None,
            "the adapters name different base models: "
            + ", ".join(f"{label}: {name!r}" for label, name in names.items()),
            actual=sorted(set(names.values())),
        )
    replaced: dict[str, list[str]] = {}
    replaced_by: dict[str, list[tuple[Adapter, str]]] = {}
    dora: dict[str, list[str]] = {}
    deltas: dict[str, list[str]] = {}
    tokens: dict[str, list[tuple[str, set[int]]]] = {}
    for label, adapter, res in items:
        if res is None:  # no base: compare the adapters' own names
            res = Resolved()
            for module in adapter.modules.values():
                res.deltas.setdefault(module.weight_name, []).append(module)
            for rep in adapter.replacements:
                res.replaced[rep.target] = rep.tensor.key
            for tok in adapter.trainable_tokens:
                res.tokens.setdefault(tok.target, set()).update(tok.indices)
        for name, key in res.replaced.items():
            replaced.setdefault(name, []).append(label)
            replaced_by.setdefault(name, []).append((adapter, key))
        for name, modules in res.deltas.items():
            deltas.setdefault(name, []).append(label)
            if any(m.magnitude is not None for m in modules):
                dora.setdefault(name, []).append(label)
        for name, rows in res.tokens.items():
            tokens.setdefault(name, []).append((label, rows))
    for name, labels in sorted(replaced.items()):
        if len(labels) > 1 and not _identical_tensors(replaced_by[name]):
            out.add(
                "group_replacement_conflict",
                None,
                name,
                f"{name!r} is replaced in full by {len(labels)} adapters ({', '.join(labels)}); a full replacement "
                "cannot be combined with another — merge them one at a time or drop one",
                actual=labels,
            )
    for name, labels in sorted(dora.items()):
        others = [label for label in deltas[name] if label not in labels] + labels[1:]
        if others:
            out.add(
                "group_dora_conflict",
                None,
                name,
                f"{name!r} gets a DoRA module from {labels[0]} and deltas from {', '.join(others)}; DoRA merged with "
                "other adapters on one layer depends on the order — merge them one at a time",
                actual=[labels[0], *others],
            )
    for name, entries in sorted(tokens.items()):
        for i in range(len(entries)):
            for j in range(i + 1, len(entries)):
                overlap = entries[i][1] & entries[j][1]
                if overlap:
                    out.add(
                        "group_token_conflict",
                        None,
                        name,
                        f"{entries[i][0]} and {entries[j][0]} both replace rows {sorted(overlap)[:10]} of {name!r}",
                        actual=sorted(overlap)[:10],
                    )


def _identical_tensors(entries: Sequence[tuple[Adapter, str]]) -> bool:
    """Whether the adapters' tensors are byte for byte the same (PEFT saves identical copies
    of an unchanged embedding in every adapter that targets it; those do not conflict)."""
    digests = set()
    for adapter, key in entries:
        meta = adapter.tensors.get(key)
        if meta is None:
            return False
        digest = hashlib.sha256(f"{meta.dtype}{meta.shape}".encode())
        for chunk in iter_tensor_bytes(adapter, meta):
            digest.update(chunk)
        digests.add(digest.hexdigest())
    return len(digests) == 1


# --- entry point -----------------------------------------------------------------------------


def _open_base(
    base: Path | Checkpoint | None,
    base_signature: Path | BaseSignature | Mapping[str, object] | None,
    out: FindingCollector,
) -> BaseView | None:
    if base is not None and base_signature is not None:
        raise InvalidInputError("pass either a base folder or a base signature, not both")
    try:
        if isinstance(base, Checkpoint):
            return BaseView(signature_of_checkpoint(base), base)
        if base is not None:
            checkpoint = open_checkpoint(base)
            return BaseView(signature_of_checkpoint(checkpoint), checkpoint)
        if isinstance(base_signature, BaseSignature):
            return BaseView(base_signature, None)
        if isinstance(base_signature, Mapping):
            return BaseView(parse_signature(dict(base_signature)), None)
        if base_signature is not None:
            return BaseView(load_signature(base_signature), None)
    except LoradexError as exc:
        out.error_from(exc, None)
    return None


def check_adapters(
    adapters: Sequence[Path | Adapter],
    *,
    base: Path | Checkpoint | None = None,
    base_signature: Path | dict | BaseSignature | None = None,
    verify_weights: bool = False,
    serving: str | ServingProfile | None = None,
    cache_dir: Path | None = None,
    cross_check_merge: bool = True,
    labels: Sequence[str | None] | None = None,
    base_label: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Check adapters against a base (folder, :class:`Checkpoint` or signature), a server and each other.

    Never raises for a bad adapter or base (those are findings); raises
    :class:`InvalidInputError` for a bad call (both bases, an unknown serving profile).
    With a real base and ``cross_check_merge``, a clean report is confirmed by planning the
    merge, so ``check`` never passes what ``merge`` refuses (the merge itself skips this: it
    plans anyway).

    ``labels`` names each adapter in the report and its messages instead of its folder (e.g.
    the registry reference ``sts@production -> sts@3`` of a cached copy; None keeps the
    folder); such adapters are listed in :attr:`CheckReport.references`. ``base_label`` does
    the same for the base. ``progress(done, total)`` follows the bytes of a ``verify_weights``
    fingerprint.
    """
    profile = parse_serving(serving) if isinstance(serving, str) else serving
    if labels is not None and len(labels) != len(adapters):
        raise InvalidInputError(f"got {len(labels)} labels for {len(adapters)} adapters")
    names = list(labels) if labels is not None else [None] * len(adapters)
    renames: dict[Path, str | None] = {
        (item.path if isinstance(item, Adapter) else Path(item)): name
        for item, name in zip(adapters, names, strict=True)
    }
    if base_label is not None and base is not None:
        renames[base.path if isinstance(base, Checkpoint) else Path(base)] = base_label
    out = FindingCollector(labels=folder_labels(renames))
    base_view = _open_base(base, base_signature, out)
    if base_view is not None:
        if verify_weights:
            if base_view.checkpoint is not None:
                from mergetools.fingerprint import fingerprint_checkpoint

                try:
                    base_view.fingerprint = fingerprint_checkpoint(
                        base_view.checkpoint, cache_dir=cache_dir, progress=progress
                    )
                except LoradexError as exc:
                    out.error_from(exc, None)
            elif base_view.view.fingerprint is None:
                out.add(
                    "verify_weights_unavailable",
                    None,
                    None,
                    f"verifying the weights needs the base weights, but {base_view.view.source} is a signature "
                    "without a fingerprint; write the signature with the weights' fingerprint",
                )
        if base_view.fingerprint is None:
            base_view.fingerprint = base_view.view.fingerprint

    labels_used: list[str] = []
    parsed: list[tuple[str, Adapter, Resolved | None]] = []
    fingerprints: dict[str, str] = {}
    for item, name in zip(adapters, names, strict=True):
        label, adapter = _open_adapter(item, out, name)
        labels_used.append(label)
        if adapter is None:
            continue
        try:
            scan = scan_adapter_tensors(adapter)
        except LoradexError as exc:
            out.error_from(exc, label)
            continue
        fingerprints[label] = scan.fingerprint
        _check_intrinsic(adapter, label, out, scan)
        resolved = None
        if base_view is not None:
            resolved = check_against_base(adapter, label, base_view, out)
            check_identity(adapter, label, base_view, out, verify_weights=verify_weights)
        if profile is not None:
            check_serving(
                adapter,
                label,
                profile,
                base_view.view if base_view is not None else None,
                out,
            )
        parsed.append((label, adapter, resolved))
    if len(parsed) > 1:
        _check_group(parsed, out)
        from mergetools.plan import refuse_repeated_adapters

        try:
            refuse_repeated_adapters([a for _, a, _ in parsed], labels=[label for label, _, _ in parsed])
        except InvalidInputError as exc:
            out.add("group_same_adapter", None, None, exc.message)

    if (
        cross_check_merge
        and base_view is not None
        and base_view.checkpoint is not None
        and parsed
        and len(parsed) == len(labels_used)
        and not any(f.severity == "error" for f in out.findings)
    ):
        from mergetools.plan import plan_merge

        try:
            plan_merge(base_view.checkpoint, [a for _, a, _ in parsed])
        except LoradexError as exc:
            out.add("merge_refused", None, None, exc.message)

    return CheckReport(
        findings=out.findings,
        adapters=labels_used,
        base=(base_label or base_view.view.source) if base_view is not None else None,
        base_fingerprint=base_view.fingerprint if base_view is not None else None,
        adapter_fingerprints=fingerprints,
        serving=serving_label(profile),
        references=[label for label, name in zip(labels_used, names, strict=True) if name],
    )
