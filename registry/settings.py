"""Registry settings: one object, built at the edge and passed down.

Environment variables use the prefix ``LORADEX_``:

- ``LORADEX_HOME`` (default ``~/.loradex``): holds ``registry.db``, ``blobs/`` and ``cache/``.
- ``LORADEX_DATABASE_URL``: team mode (PostgreSQL); ``postgresql://`` is normalised to psycopg 3.
  Only PostgreSQL and SQLite URLs are accepted.
- ``LORADEX_BLOB_URL`` (default: the folder ``$LORADEX_HOME/blobs``): where stored files live;
  ``file:///shared/path`` points every machine of a team at one store.
- ``LORADEX_USER``: who is recorded as the author of changes (default: the OS user).
- ``LORADEX_BUSY_TIMEOUT_MS`` (default 30000): how long a SQLite writer waits for the lock.
- ``LORADEX_ANONYMOUS_READ`` (default off): ``1`` lets the HTTP API answer GET requests that
  carry no token (everything else still needs one).
- ``LORADEX_MAX_UPLOAD_BYTES`` (default 10 GiB): the largest blob the HTTP API accepts.
- ``LORADEX_SERVER`` (default unset): a registry server's URL; the CLI's registry commands then
  act on it over HTTP (:mod:`registry.remote`), sending ``LORADEX_TOKEN`` as the bearer token.
- ``LORADEX_UPLOAD_IDLE_TIMEOUT`` (default 30 seconds): an upload whose body brings less than
  1 KiB in that many seconds (a stalled or trickling client) is cut off by the HTTP API.

A plain dataclass rather than pydantic-settings: registry commands must start in well under half a
second, and importing pydantic alone costs ~80 ms of that. Arguments given explicitly win over
the environment; the environment is read here and nowhere else.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mergetools.errors import InvalidInputError

logger = logging.getLogger(__name__)

ENV_PREFIX = "LORADEX_"
DEFAULT_HOME = "~/.loradex"
DEFAULT_BUSY_TIMEOUT_MS = 30_000
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024**3
DEFAULT_UPLOAD_IDLE_TIMEOUT_S = 30.0
DEFAULT_SERVER_THREADS = 2
"""Threads per server process that run requests (each holds one database connection)."""
MAX_SERVER_THREADS = 256


def normalize_database_url(url: str) -> str:
    """Return ``url`` with a bare PostgreSQL scheme mapped to the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


DATABASE_URL_FORMS = (
    "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (team mode; also postgres:// and "
    "postgresql+psycopg://), or sqlite:///PATH (unset: SQLite in LORADEX_HOME)"
)
BLOB_URL_FORMS = "file:///ABSOLUTE/PATH (unset: the folder blobs/ in LORADEX_HOME)"

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def redact_url(url: str) -> str:
    """``url`` with the password of a ``scheme://user:password@host`` URL replaced by ``***``."""
    return re.sub(r"^([^:/]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


def check_database_url(url: str) -> str:
    """Return ``url`` normalised if it names a database loradex supports, else raise."""
    url = normalize_database_url(url)
    match = _SCHEME_RE.match(url)
    scheme = match.group(1).lower() if match else None
    if scheme in ("sqlite", "sqlite+pysqlite") and url[len(scheme) :].startswith("://"):
        path = url[len(scheme) + 3 :].split("?", 1)[0]
        if path.startswith("/") and path.strip("/") and path.lstrip("/") != ":memory:":
            return url
        raise InvalidInputError(
            f"{ENV_PREFIX}DATABASE_URL={redact_url(url)!r} names an in-memory SQLite database: "
            "every change would be lost when the command ends; expected sqlite:///PATH to a file "
            "(or leave it unset for SQLite in LORADEX_HOME)"
        )
    if scheme == "postgresql+psycopg" and url[len(scheme) :].startswith("://"):
        return url
    what = f"scheme {scheme!r}" if scheme else "no scheme"
    raise InvalidInputError(
        f"{ENV_PREFIX}DATABASE_URL={redact_url(url)!r} names a database loradex does not "
        f"support ({what}); expected {DATABASE_URL_FORMS}"
    )


SERVER_URL_MAX = 2000


def check_server_url(url: str) -> str:
    """``url`` without a trailing slash if it is an http(s) URL of a registry server, else raise."""

    shown = url if len(url) <= 120 else f"{url[:100]}…"
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        valid = False
    if len(url) > SERVER_URL_MAX or not valid or any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidInputError(
            f"registry server URL {shown!r} ({ENV_PREFIX}SERVER) is not an http:// or https:// URL "
            "of a host; expected e.g. https://loradex.internal or http://127.0.0.1:8080"
        )
    return url.rstrip("/")


def parse_blob_url(url: str) -> Path:
    """The folder a ``file:///...`` blob URL names; other forms (s3:// comes later) are refused."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "file" and parts.netloc in ("", "localhost") and not (
        parts.query or parts.fragment
    ):
        path = unquote(parts.path)
        if path.startswith("/") and path.strip("/"):
            return Path(path)
    what = f"scheme {parts.scheme.lower()!r}" if parts.scheme else "no scheme"
    if parts.scheme.lower() == "s3":
        what = "s3:// stores are not supported yet"
    elif parts.scheme.lower() == "file":
        what = "not an absolute path on this machine"
    raise InvalidInputError(
        f"{ENV_PREFIX}BLOB_URL={redact_url(url)!r} is not a blob store loradex supports "
        f"({what}); expected {BLOB_URL_FORMS}"
    )


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


def _env_int(name: str, default: int, example: str) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise InvalidInputError(
            f"{ENV_PREFIX}{name}={shown!r} is not an integer; expected {example}"
        ) from None


def _env_seconds(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise InvalidInputError(
            f"{ENV_PREFIX}{name}={raw!r} is not a number; expected seconds, e.g. 30"
        ) from None


def _env_flag(name: str) -> bool:
    raw = _env(name)
    if raw is None:
        return False
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise InvalidInputError(
        f"{ENV_PREFIX}{name}={raw!r} is not a flag; expected 1 or 0 (also true/false, yes/no)"
    )


@dataclass
class Settings:
    """Every knob of the registry; a field not given is read from the ``LORADEX_`` environment."""

    home: Path = field(default_factory=lambda: Path(_env("HOME") or DEFAULT_HOME))
    database_url: str | None = field(default_factory=lambda: _env("DATABASE_URL"))
    user: str | None = field(default_factory=lambda: _env("USER"))
    busy_timeout_ms: int = field(default_factory=_env_busy_timeout)
    blob_url: str | None = field(default_factory=lambda: _env("BLOB_URL"))
    anonymous_read: bool = field(default_factory=lambda: _env_flag("ANONYMOUS_READ"))
    max_upload_bytes: int = field(
        default_factory=lambda: _env_int(
            "MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES, "a number of bytes, e.g. 10737418240"
        )
    )

    server_threads: int = field(
        default_factory=lambda: _env_int(
            "SERVER_THREADS", DEFAULT_SERVER_THREADS, "a number of threads, e.g. 2"
        )
    )

    server: str | None = field(default_factory=lambda: _env("SERVER"))
    token: str | None = field(default_factory=lambda: _env("TOKEN"), repr=False)
    upload_idle_timeout_s: float = field(
        default_factory=lambda: _env_seconds("UPLOAD_IDLE_TIMEOUT", DEFAULT_UPLOAD_IDLE_TIMEOUT_S)
    )

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser()
        server = (self.server or "").strip()
        self.server = check_server_url(server) if server else None
        self.token = (self.token or "").strip() or None
        if self.token is not None and (
            len(self.token) > 1000 or not all(33 <= ord(c) < 127 for c in self.token)
        ):
            raise InvalidInputError(
                f"{ENV_PREFIX}TOKEN is not an API token ({len(self.token)} characters, with spaces, "
                "control or non-ASCII characters, or too long); expected the ldx_... secret "
                "printed when the token was created",
                hint_action="token_create",
            )
        url = (self.database_url or "").strip()
        self.database_url = check_database_url(url) if url else None
        blob_url = (self.blob_url or "").strip()
        self.blob_url = blob_url or None
        if self.blob_url is not None:
            parse_blob_url(self.blob_url)
        if self.busy_timeout_ms < 0:
            raise InvalidInputError(f"busy_timeout_ms must be >= 0, got {self.busy_timeout_ms}")
        if self.max_upload_bytes <= 0:
            raise InvalidInputError(
                f"max_upload_bytes must be > 0, got {self.max_upload_bytes} "
                f"({ENV_PREFIX}MAX_UPLOAD_BYTES)"
            )
        if not 1 <= self.server_threads <= MAX_SERVER_THREADS:
            raise InvalidInputError(
                f"server_threads must be 1..{MAX_SERVER_THREADS}, got {str(self.server_threads)[:40]} "
                f"({ENV_PREFIX}SERVER_THREADS)"
            )
        if not self.upload_idle_timeout_s > 0 or self.upload_idle_timeout_s == float("inf"):
            raise InvalidInputError(
                f"upload_idle_timeout_s must be a positive number of seconds, got "
                f"{self.upload_idle_timeout_s} ({ENV_PREFIX}UPLOAD_IDLE_TIMEOUT)"
            )

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL: ``LORADEX_DATABASE_URL`` or SQLite in ``LORADEX_HOME``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'registry.db'}"

    @property
    def blob_dir(self) -> Path:
        """The blob store's folder: ``LORADEX_BLOB_URL``'s path, else ``$LORADEX_HOME/blobs``."""
        if self.blob_url is not None:
            return parse_blob_url(self.blob_url)
        return self.home / "blobs"

    @property
    def blob_store_description(self) -> str:
        """Where the blobs are and which setting says so, for messages."""
        if self.blob_url is not None:
            return f"{self.blob_dir} (from {ENV_PREFIX}BLOB_URL)"
        return f"{self.blob_dir} (the default, {ENV_PREFIX}HOME/blobs; {ENV_PREFIX}BLOB_URL unset)"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None for PostgreSQL or an in-memory database."""
        url = self.effective_database_url
        if not url.startswith("sqlite") or ":///" not in url:
            return None
        database = url.split(":///", 1)[1].split("?", 1)[0]
        return Path(database) if database and database != ":memory:" else None

    def ensure_home(self) -> Path:
        """Create ``LORADEX_HOME`` if needed; refuse a file or a folder that cannot be made."""
        home = self.home
        if home.is_dir():
            return home
        if home.exists() or home.is_symlink():
            raise InvalidInputError(
                f"{ENV_PREFIX}HOME {home} is not a folder (it is a file or a broken link); "
                "expected a folder for registry.db, blobs/ and cache/ — move that file away or "
                f"point {ENV_PREFIX}HOME at another folder"
            )
        blocker = next((p for p in home.parents if p.exists() and not p.is_dir()), None)
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = f"{blocker} is a file, not a folder" if blocker else (exc.strerror or str(exc))
            raise InvalidInputError(
                f"{ENV_PREFIX}HOME {home} cannot be created: {why}; expected a folder loradex "
                f"can create and write — point {ENV_PREFIX}HOME at one"
            ) from None
        return home

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
