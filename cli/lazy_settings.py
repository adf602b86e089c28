"""Settings built at the edge, but only when a command needs them.

Importing the settings class costs ~0.15 s (pydantic); ``merge`` and ``check`` given plain
folders never touch the registry, so they take a loader and call it only for a reference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from registry.settings import Settings


def lazy_settings() -> Callable[[], Settings]:
    """A loader that builds this invocation's settings on first call and reuses them."""

    @functools.cache
    def load() -> Settings:
        from registry.settings import Settings

        return Settings()

    return load
