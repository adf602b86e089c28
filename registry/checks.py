"""Check-by-reference: are these adapters (folders or registered versions) fit for that base?

The use case behind ``loradex check`` (and the API's and CI's checks): resolve the adapter
references and the base reference (:mod:`registry.refs`), run
:func:`mergetools.check.check_adapters` with the references as labels (reports name
``sts@production -> sts@3``, never a cache folder), and return the report; rendering it (text,
JSON, JUnit, GitHub annotations) is :mod:`mergetools.report`'s, called by the shell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetools.check import check_adapters
from mergetools.findings import CheckReport
from mergetools.serving import ServingProfile
from registry.refs import (
    LazyRegistry,
    RegistrySource,
    ResolvedAdapter,
    ResolvedBase,
    resolve_adapter_refs,
    resolve_base_ref,
)
from registry.settings import Settings
from registry.sources import registry_source

if TYPE_CHECKING:
    from registry.sources import RegistryOrSettings

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class CheckOutcome:
    """The report, and what each reference resolved to."""

    report: CheckReport
    adapters: list[ResolvedAdapter]
    base: ResolvedBase | None = None
    notes: list[str] = field(default_factory=list)
    """Which of a same-named folder and registered entry was used (one per such input)."""


def _settings_of(source: RegistrySource) -> Settings:
    """The settings behind a registry source (an open registry's, or the lazy ones built now)."""
    if isinstance(source, LazyRegistry):
        return source.built_settings()
    settings: Settings = source.settings  # type: ignore[attr-defined]
    return settings


def check(
    registry_or_settings: RegistryOrSettings,
    adapters: Sequence[str],
    *,
    base: str | None = None,
    base_signature: Path | dict[str, Any] | None = None,
    verify_weights: bool = False,
    serving: ServingProfile | None = None,
    cache_dir: Path | None | Callable[[], Path | None] = None,
    progress: Progress | None = None,
    notify: Callable[[str], None] | None = None,
) -> CheckOutcome:
    """Check ``adapters`` (references) against ``base`` (a reference) or a ``base_signature``
    (a file, or a signature document such as a registered base's stored one).

    ``registry_or_settings`` is opened (or built) only when a reference names something
    registered: checking plain folders never touches a database. ``cache_dir`` is the
    fingerprint cache (or a callable giving it, called only when ``verify_weights`` needs it
    for a base checkpoint). ``notify`` is told, once everything is resolved, when a bare name
    meant a registered entry and not the folder of that name.
    """
    source = registry_source(registry_or_settings)
    resolved = resolve_adapter_refs(source, list(adapters))
    resolved_base: ResolvedBase | None = None
    if base is not None and base.startswith("hf://") and not verify_weights:
        # A Hub base is checked from its config, index and safetensors headers only.
        from registry.hub import resolve_base_headers

        resolved_base = ResolvedBase(
            ref=base, path=resolve_base_headers(base, cache_dir=_settings_of(source).cache_dir)
        )
    elif base is not None:
        resolved_base = resolve_base_ref(source, base, headers_only=not verify_weights)
    notes = [item.note for item in (*resolved, resolved_base) if item is not None and item.note]
    if notify is not None:
        for note in notes:
            notify(note)
    cache: Path | None
    if callable(cache_dir):
        cache = cache_dir() if verify_weights and resolved_base is not None else None
    else:
        cache = cache_dir
    report = check_adapters(
        [r.path for r in resolved],
        labels=[r.label if r.registered else None for r in resolved],
        base=resolved_base.path if resolved_base is not None else None,
        base_label=resolved_base.label
        if resolved_base is not None
        and (resolved_base.registered or base != str(resolved_base.path))
        else None,
        base_signature=base_signature,
        verify_weights=verify_weights,
        serving=serving,
        cache_dir=cache,
        progress=progress,
    )
    return CheckOutcome(report, resolved, resolved_base, notes)
