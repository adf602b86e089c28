"""Pure torch + safetensors tools: read and write checkpoints, parse adapters, merge.

Importing this package does not import torch; the modules that do tensor math
import it themselves.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("loradex")
except PackageNotFoundError:  # running from a checkout without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
