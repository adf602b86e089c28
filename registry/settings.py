"""Registry settings: one pydantic-settings object, built at the edge and passed down.

Environment variables use the prefix ``LORADEX_``:

- ``LORADEX_HOME`` (default ``~/.loradex``): holds ``registry.db``, ``blobs/`` and ``cache/``.
- ``LORADEX_DATABASE_URL``: team mode (PostgreSQL); ``postgresql://`` is normalised to psycopg 3.
- ``LORADEX_USER``: who is recorded as the author of changes (default: the OS user).
"""

from __future__ import annotations

import getpass
import logging
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)


def normalize_database_url(url: str) -> str:
    """Return ``url`` with a bare PostgreSQL scheme mapped to the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Settings(BaseSettings):
    """Every knob of the registry. Read the environment only here, at the edge."""

    model_config = SettingsConfigDict(env_prefix="LORADEX_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path("~/.loradex"))
    database_url: str | None = None
    user: str | None = None
    busy_timeout_ms: int = 30_000

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("database_url", mode="after")
    @classmethod
    def _normalize_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return normalize_database_url(value.strip())

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
