"""Engines for the registry database: SQLite pragmas, ``BEGIN IMMEDIATE``, schema checks.

SQLite write transactions are opened with ``BEGIN IMMEDIATE`` (the SQLAlchemy recipe: pysqlite's
own implicit BEGIN is disabled and the statement is emitted in the ``begin`` event), so a
transaction that reads then writes waits for the lock (``busy_timeout``) instead of failing with
SQLITE_BUSY. Engines made by :func:`readonly` open deferred transactions for reads.

The known schema revisions are listed here (no Alembic import on the hot path); a test pins
them to the Alembic history in ``migrations/versions``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, ProgrammingError

from mergetools.errors import InvalidInputError
from registry.errors import DatabaseUnavailableError, SchemaVersionError, StorageError

logger = logging.getLogger(__name__)

# Every Alembic revision of migrations/versions, oldest first. HEAD is the last one.
SCHEMA_REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009")
SCHEMA_HEAD = SCHEMA_REVISIONS[-1]

_READONLY = "loradex_readonly"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


DEFAULT_POOL_SIZE = 5
"""Connections a registry keeps open (a command needs one or two; a server asks for more)."""


def create_registry_engine(
    url: str, *, busy_timeout_ms: int = 30_000, pool_size: int = DEFAULT_POOL_SIZE
) -> Engine:
    """Return an engine for ``url`` with the registry's connection rules applied.

    The pool keeps up to ``pool_size`` connections open (as many as the threads that may query
    at once: a server's worker threads); up to as many again are opened beyond it and closed
    after use.

    SQLite: the parent folder is created; every connection gets ``foreign_keys=ON``,
    ``journal_mode=WAL`` and ``busy_timeout``; transactions begin ``IMMEDIATE`` unless the
    engine came from :func:`readonly`.
    """
    if url.startswith("sqlite"):
        database = url.split(":///", 1)[1] if ":///" in url else ""
        database = database.split("?", 1)[0]
        if database and database != ":memory:":
            folder = Path(database).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                blocker = next((p for p in (folder, *folder.parents) if p.is_file()), None)
                why = f"{blocker} is a file, not a folder" if blocker else exc.strerror or exc
                raise InvalidInputError(
                    f"folder {folder} of the SQLite registry database cannot be created: "
                    f"{why}; expected a folder loradex can write — check LORADEX_HOME (or the "
                    "path in LORADEX_DATABASE_URL)"
                ) from None
        # An in-memory database (tests only) has a single-connection pool: no sizes to give.
        sizes = (
            {"pool_size": pool_size, "max_overflow": pool_size}
            if database and database != ":memory:"
            else {}
        )
        engine = _create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000}, **sizes)
        _install_sqlite_rules(engine, busy_timeout_ms=busy_timeout_ms)
        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql+psycopg"):
        # No server-side prepared statements: after 5 runs psycopg would prepare the search
        # query and PostgreSQL may switch to a generic plan that is 50x slower for the
        # filter/metric mix at hand; also keeps PgBouncer (transaction pooling) working.
        connect_args["prepare_threshold"] = None
    return _create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args=connect_args,
    )


def _create_engine(url: str, **kwargs: Any) -> Engine:
    """``create_engine``, with a URL SQLAlchemy cannot parse or load reported as a setting error."""
    try:
        return create_engine(url, **kwargs)
    except (ArgumentError, ValueError, ImportError) as exc:
        from registry.settings import DATABASE_URL_FORMS, redact_url

        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InvalidInputError(
            f"LORADEX_DATABASE_URL={redact_url(url)!r} cannot be used: {reason}; expected "
            f"{DATABASE_URL_FORMS}"
        ) from None


def readonly(engine: Engine) -> Engine:
    """The same engine (same pool) whose transactions are opened deferred on SQLite."""
    return engine.execution_options(**{_READONLY: True})


def _install_sqlite_rules(engine: Engine, *, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Disable pysqlite's own BEGIN so that the begin event below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_READONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _is_missing_table(exc: DBAPIError) -> bool:
    """Whether ``exc`` says a table does not exist (and nothing else, e.g. not 'unreachable')."""
    if getattr(exc.orig, "sqlstate", None) == "42P01":  # PostgreSQL undefined_table
        return True
    return _is_sqlite_error(exc) and "no such table" in str(exc.orig)


def _is_sqlite_error(exc: DBAPIError) -> bool:
    return type(exc.orig).__module__.startswith("sqlite3")


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision stamped in the database, or None when it has no schema yet.

    Raises :class:`DatabaseUnavailableError` when the database cannot be reached.
    """
    try:
        conn = readonly(engine).connect()
    except DBAPIError as exc:
        raise (storage_failure(engine, exc) or unavailable(engine, exc)) from exc
    try:
        with conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except (OperationalError, ProgrammingError) as exc:
        if _is_missing_table(exc):
            return None
        raise
    if not rows:
        return None
    if len(rows) > 1:
        raise SchemaVersionError(
            f"registry database {safe_url(engine)} has several Alembic heads "
            f"({', '.join(sorted(r[0] for r in rows))}); expected one linear history — "
            "was it written by a branch build of loradex?"
        )
    return str(rows[0][0])


_SQLITE_STORAGE_ERRORS = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")
_SQLITE_STORAGE_TEXT = (
    "database or disk is full",
    "disk i/o error",
    "readonly database",
    "unable to open database file",
)
_PG_STORAGE_STATES = ("53100", "53200")  # disk_full, out_of_memory


def _first_line(exc: DBAPIError) -> str:
    reason = str(exc.orig or exc).strip().splitlines()
    return reason[0] if reason else type(exc).__name__


def storage_failure(engine: Engine, exc: DBAPIError) -> StorageError | None:
    """A :class:`StorageError` when ``exc`` says the database could not be written (disk full,
    I/O error, read-only file), else None (locks, serialisation failures and the like)."""
    orig = exc.orig
    if _is_sqlite_error(exc):
        name = str(getattr(orig, "sqlite_errorname", ""))
        text_ = str(orig).lower()
        if not (
            name.startswith(_SQLITE_STORAGE_ERRORS)
            or any(t in text_ for t in _SQLITE_STORAGE_TEXT)
        ):
            return None
        where = f"the file {engine.url.database}"
    elif getattr(orig, "sqlstate", None) in _PG_STORAGE_STATES:
        where = "the server"
    else:
        return None
    return StorageError(
        f"registry database {safe_url(engine)} could not be written: {_first_line(exc)} — "
        f"the disk holding {where} is full, a file size limit was hit, or it is read-only; "
        "free space (or fix the permissions) and retry: nothing was recorded"
    )


def unavailable(engine: Engine, exc: DBAPIError) -> DatabaseUnavailableError:
    """The error for a database that could not be connected to (password hidden)."""
    first = _first_line(exc)
    if is_sqlite(engine):
        return DatabaseUnavailableError(
            f"registry database {safe_url(engine)} cannot be opened: {first} — check that "
            "LORADEX_HOME (or the path in LORADEX_DATABASE_URL) is a folder you can write"
        )
    return DatabaseUnavailableError(
        f"registry database {safe_url(engine)} cannot be reached: {first} — check that the "
        "server is running and that LORADEX_DATABASE_URL (host, port, user, database) is right"
    )


def safe_url(engine: Engine) -> str:
    """The engine URL with any password hidden, for messages."""
    return engine.url.render_as_string(hide_password=True)


PG_SCHEMA_LOCK_KEY = 0x6C6F7261646578  # "loradex": the advisory lock held while a schema is created


def check_schema(engine: Engine, *, auto_upgrade: bool, initialise_empty: bool = False) -> str:
    """Make sure the database schema is the one this loradex knows; return its revision.

    A database newer than this loradex is always refused. An empty one is initialised when
    ``initialise_empty`` (what opening a registry does, on SQLite and PostgreSQL alike; on
    PostgreSQL under an advisory lock, so that processes starting at once do not race). An older
    one is upgraded when ``auto_upgrade`` (embedded SQLite), else refused with the command to run.
    """
    revision = current_revision(engine)
    if revision == SCHEMA_HEAD:
        return revision
    _refuse_newer(engine, revision)
    if auto_upgrade or (revision is None and initialise_empty):
        if is_sqlite(engine):
            _upgrade(engine, revision)
            return SCHEMA_HEAD
        return _initialise_postgres(engine, auto_upgrade=auto_upgrade)
    _refuse_older(engine, revision)
    return SCHEMA_HEAD  # not reached


def _refuse_newer(engine: Engine, revision: str | None) -> None:
    if revision is not None and revision not in SCHEMA_REVISIONS:
        raise SchemaVersionError(
            f"registry database {safe_url(engine)} has schema revision {revision!r}, which this "
            f"loradex does not know (it knows up to {SCHEMA_HEAD!r}): it was written by a newer "
            "loradex",
            fields={"database": safe_url(engine), "expected": SCHEMA_HEAD, "got": revision},
            hint="upgrade loradex (pip install -U loradex) instead of using this one",
            hint_action="upgrade_loradex",
        )


def _refuse_older(engine: Engine, revision: str | None) -> None:
    state = "has no registry schema yet" if revision is None else f"has schema {revision!r}"
    raise SchemaVersionError(
        f"registry database {safe_url(engine)} {state}, this loradex needs {SCHEMA_HEAD!r}",
        fields={"database": safe_url(engine), "expected": SCHEMA_HEAD, "got": revision},
        hint="upgrade the database schema first, with the same LORADEX_DATABASE_URL",
        hint_action="db_upgrade",
    )


def _upgrade(engine: Engine, revision: str | None) -> None:
    from registry.schema import upgrade

    logger.info("upgrading registry schema from %s to %s", revision, SCHEMA_HEAD)
    try:
        upgrade(engine)
    except DBAPIError as exc:
        failure = storage_failure(engine, exc)
        if failure is None:
            raise
        raise failure from exc


def _initialise_postgres(engine: Engine, *, auto_upgrade: bool) -> str:
    """Create the schema of an empty PostgreSQL database (or upgrade it when ``auto_upgrade``)
    while holding a session-level advisory lock: the first process creates it, the others wait,
    then find it at head. The revision is read again under the lock."""
    try:
        lock = engine.connect()
    except DBAPIError as exc:
        raise (storage_failure(engine, exc) or unavailable(engine, exc)) from exc
    with lock:
        lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_SCHEMA_LOCK_KEY})
        lock.commit()  # the lock is the session's; no transaction is kept open meanwhile
        try:
            revision = current_revision(engine)
            if revision == SCHEMA_HEAD:
                return SCHEMA_HEAD
            _refuse_newer(engine, revision)
            if revision is not None and not auto_upgrade:
                _refuse_older(engine, revision)
            logger.info("initialising registry schema on %s", safe_url(engine))
            _upgrade(engine, revision)
            return SCHEMA_HEAD
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_SCHEMA_LOCK_KEY})
            lock.commit()
