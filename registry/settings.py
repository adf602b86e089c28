"""Registry settings: one object, built at the edge and passed down.

Environment variables use the prefix ``LORADEX_``:

- ``LORADEX_HOME`` (default ``~/.loradex``): holds ``registry.db``, ``blobs/`` and ``cache/``.
- ``LORADEX_DATABASE_URL``: team mode (PostgreSQL); ``postgresql://`` is normalised to psycopg 3.
- ``LORADEX_USER``: who is recorded as the author of changes (default: the OS user).
- ``LORADEX_BUSY_TIMEOUT_MS`` (default 30000): how long a SQLite writer waits for the lock.

A plain dataclass rather than pydantic-settings: registry commands must start in well under half a
second, and importing pydantic alone costs ~80 ms of that. Arguments given explicitly win over
the environment; the environment is read here and nowhere else.
"""

from __future__ import annotations

import getpass
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from mergetools.errors import InvalidInputError

logger = logging.getLogger(__name__)

ENV_PREFIX = "LORADEX_"
DEFAULT_HOME = "~/.loradex"
DEFAULT_BUSY_TIMEOUT_MS = 30_000


def normalize_database_url(url: str) -> str:
    """Return ``url`` with a bare PostgreSQL scheme mapped to the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _env(name: str) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return value.strip() if value is not None and value.strip() else None


def _env_busy_timeout() -> int:
    raw = _env("BUSY_TIMEOUT_MS")
    if raw is None:
        return DEFAULT_BUSY_TIMEOUT_MS
    try:
        return int(raw)
    except ValueError:
        raise InvalidInputError(
            f"{ENV_PREFIX}BUSY_TIMEOUT_MS={raw!r} is not an integer; expected milliseconds, e.g. 30000"
        ) from None


@dataclass
class Settings:
    """Every knob of the registry; a field not given is read from the ``LORADEX_`` environment."""

    home: Path = field(default_factory=lambda: Path(_env("HOME") or DEFAULT_HOME))
    database_url: str | None = field(default_factory=lambda: _env("DATABASE_URL"))
    user: str | None = field(default_factory=lambda: _env("USER"))
    busy_timeout_ms: int = field(default_factory=_env_busy_timeout)

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser()
        url = (self.database_url or "").strip()
        self.database_url = normalize_database_url(url) if url else None
        if self.busy_timeout_ms < 0:
            raise InvalidInputError(f"busy_timeout_ms must be >= 0, got {self.busy_timeout_ms}")

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL: ``LORADEX_DATABASE_URL`` or SQLite in ``LORADEX_HOME``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'registry.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def actor(self) -> str:
        """Who is recorded for changes: ``LORADEX_USER``, else the OS user."""
        if self.user:
            return self.user
        try:
            return getpass.getuser()
        except Exception:  # no passwd entry (containers)
            return "unknown"
