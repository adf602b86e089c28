"""Where a use case gets its registry: an open one, or settings to open one only when needed.

Shells hand a use case an open :class:`registry.service.Registry`, or the settings (or a
callable building them: plain folders never need them). :func:`registry_source` turns either
into what :mod:`registry.refs` resolves references with; the registry is opened (and closed)
only when a reference names something registered.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from registry.refs import LazyRegistry, RegistrySource
from registry.settings import Settings

if TYPE_CHECKING:
    from typing import TypeAlias

    from registry.service import Registry

    RegistryOrSettings: TypeAlias = Registry | Settings | Callable[[], Settings]
    """What a use case takes: an open registry, the settings to open one with, or a callable
    that builds them (called only when a reference needs them)."""

logger = logging.getLogger(__name__)


def open_registry(settings: Settings) -> Registry:
    """A :class:`registry.service.Registry` for ``settings`` (imported only now: SQLAlchemy), or
    with ``settings.server`` set, a :class:`registry.remote.RemoteRegistry` offering the same
    methods over the server's HTTP API."""
    if settings.server:
        from registry.remote import RemoteRegistry

        return RemoteRegistry(settings)  # type: ignore[return-value]
    from registry.service import Registry

    return Registry(settings)


def registry_source(registry_or_settings: RegistryOrSettings | LazyRegistry) -> RegistrySource:
    """An open registry as it is; settings (or a callable building them) opened only on need."""
    if isinstance(registry_or_settings, LazyRegistry):
        return registry_or_settings
    if isinstance(registry_or_settings, Settings) or callable(registry_or_settings):
        return LazyRegistry(registry_or_settings, open_registry)
    return registry_or_settings


@contextlib.contextmanager
def opened(registry_or_settings: RegistryOrSettings) -> Iterator[Registry]:
    """The open registry, or one opened for the settings now (and closed on exit)."""
    if not isinstance(registry_or_settings, Settings) and not callable(registry_or_settings):
        yield registry_or_settings
        return
    settings = registry_or_settings() if callable(registry_or_settings) else registry_or_settings
    registry = open_registry(settings)
    try:
        yield registry
    finally:
        registry.close()
