"""Pure torch + safetensors tools: read and write checkpoints, parse adapters, merge.

Importing this package does not import torch; the modules that do tensor math import it
themselves. ``__version__`` is looked up on first use (package metadata is slow to load).
"""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("loradex")
        except PackageNotFoundError:  # running from a checkout without an install
            return "0.0.0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
