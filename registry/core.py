"""The registry's core: engine, blob store, transactions, reference resolution, the journal.

:class:`RegistryCore` is what every group of use cases (``registry/adapters.py``, ``bases.py``,
``lineage.py``, ``folders.py``, ``maintenance.py``) builds on; :class:`registry.service.Registry`
combines them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Self

from sqlalchemy import Engine, bindparam, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from mergetools.errors import ConflictError, NotFoundError
from registry.blobstore import BlobStore, LocalBlobStore
from registry.db import (
    check_schema,
    create_registry_engine,
    is_sqlite,
    readonly,
    safe_url,
    storage_failure,
)
from registry.errors import RegistryStateError
from registry.inputs import ACTOR_MAX, check_text, parse_ref, shown
from registry.models import (
    Adapter,
    AdapterVersion,
    Alias,
    Event,
    JournalCounter,
    VersionFile,
    utcnow,
)
from registry.records import VersionKey, _jsonable
from registry.settings import Settings

logger = logging.getLogger(__name__)

# The reads every request makes, built once: building a SELECT costs several times more CPU
# than executing it (SQLAlchemy caches the compiled form; the bound values come per call).
_ADAPTER_BY_NAME = select(Adapter).where(Adapter.name == bindparam("name"))
_ADAPTER_BY_NAME_FOR_UPDATE = _ADAPTER_BY_NAME.with_for_update()
_VERSION_OF_NAME = (
    select(Adapter, AdapterVersion)
    .join(AdapterVersion, AdapterVersion.adapter_id == Adapter.id)
    .where(Adapter.name == bindparam("name"), AdapterVersion.version == bindparam("version"))
)
_VERSION_BY_ALIAS = (
    select(Alias, AdapterVersion)
    .join(AdapterVersion, AdapterVersion.id == Alias.version_id)
    .where(Alias.adapter_id == bindparam("adapter_id"), Alias.name == bindparam("alias"))
)
_LATEST_READY_VERSION = (
    select(AdapterVersion)
    .where(AdapterVersion.adapter_id == bindparam("adapter_id"), AdapterVersion.status == "ready")
    .order_by(AdapterVersion.version.desc())
    .limit(1)
)


SUBJECT_MAX = 300
"""The length of ``events.subject``."""


def journal(
    session: Session,
    *,
    actor: str,
    kind: str,
    subject: str,
    adapter_id: int | None = None,
    version_id: int | None = None,
    payload: Mapping[str, Any] | None = None,
) -> None:
    """Append a journal event in the caller's transaction.

    Its number comes from the counter row (:class:`~registry.models.JournalCounter`): the
    increment locks that row until the transaction ends, so event numbers are handed out in
    commit order — a reader that has seen event N can ask for ``after=N`` and never misses an
    event committed later with a smaller number.
    """
    number = session.execute(
        update(JournalCounter)
        .where(JournalCounter.id == 1)
        .values(last_event_id=JournalCounter.last_event_id + 1)
        .returning(JournalCounter.last_event_id)
    ).scalar_one_or_none()
    if len(subject) > SUBJECT_MAX:
        # A 200-character name with a 100-character alias is 301: cut (the payload and the
        # adapter id say exactly what it is about), never fail the change it journals.
        subject = subject[: SUBJECT_MAX - 1] + "…"
    if number is None:
        raise RegistryStateError(
            "the registry database has no journal counter row (table journal_counter); "
            "it was not created by loradex's migrations — restore it from a backup"
        )
    session.add(
        Event(
            id=int(number),
            at=utcnow(),
            actor=actor,
            kind=kind,
            subject=subject,
            adapter_id=adapter_id,
            version_id=version_id,
            payload=_jsonable(dict(payload or {})),
        )
    )
    session.flush()


class RegistryCore:
    """The engine, the blob store and the helpers every use case shares."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        blobstore: BlobStore | None = None,
        auto_upgrade: bool | None = None,
        check: bool = True,
    ) -> None:
        self.settings = settings
        if check:
            settings.ensure_home()
        self.blobs: BlobStore = blobstore or LocalBlobStore(
            settings.blob_dir, location=settings.blob_store_description
        )
        if check and engine is None:
            self._refuse_vanished_database()
        self.engine = engine or create_registry_engine(
            settings.effective_database_url,
            busy_timeout_ms=settings.busy_timeout_ms,
            # A server's request threads each hold a connection; a few more for the event loop.
            pool_size=settings.server_threads + 2,
        )
        self.read_engine = readonly(self.engine)
        self.actor = settings.actor
        if check:
            upgrade = is_sqlite(self.engine) if auto_upgrade is None else auto_upgrade
            check_schema(self.engine, auto_upgrade=upgrade, initialise_empty=True)
            self._refuse_vanished_blobs()

    def _blob_location(self) -> str:
        return str(getattr(self.blobs, "location", None) or self.settings.blob_store_description)

    def _refuse_vanished_database(self) -> None:
        """An SQLite database file that is gone while the blob store still holds files is
        refused: creating it afresh would silently orphan every stored file."""
        database = self.settings.sqlite_path
        if database is None or database.exists():
            return
        blobs = self.blobs.iter_blobs()
        if next(blobs, None) is None:
            return  # a brand-new registry: initialise it
        count = 1 + sum(1 for _ in zip(range(999), blobs, strict=False))
        raise RegistryStateError(
            f"registry database {database} does not exist, but the blob store at "
            f"{self._blob_location()} holds {count if count < 1000 else '1000+'} stored file(s) "
            "that only it can name: the database is missing — restore it from a backup, or set "
            "LORADEX_HOME (or LORADEX_DATABASE_URL) to the registry these files belong to; "
            "loradex does not recreate it empty"
        )

    def _refuse_vanished_blobs(self) -> None:
        """A database whose versions name stored files while the blob store has none at all is
        refused (an unmounted shared store, a deleted or unshared blobs folder)."""
        if next(self.blobs.iter_blobs(), None) is not None:
            return
        with self._read() as session:
            files, versions = session.execute(
                select(
                    func.count(), func.count(func.distinct(VersionFile.version_id))
                ).select_from(VersionFile)
            ).one()
        if not files:
            return
        raise RegistryStateError(
            f"registry database {safe_url(self.engine)} names {files} stored file(s) of "
            f"{versions} version(s), but the blob store at {self._blob_location()} is empty or "
            "missing: the blobs are missing — on a team registry set LORADEX_BLOB_URL to the "
            "team's shared store on every machine; otherwise restore the store from a backup"
        )

    def _actor(self, actor: str | None) -> str:
        """Who a use case acts for: ``actor`` when the caller names one (a token's owner, a job's
        submitter), else this registry's default (the OS user, or ``LORADEX_USER``)."""
        if actor is None:
            return self.actor
        check_text(actor, what="actor", limit=ACTOR_MAX)
        return actor

    def as_actor(self, actor: str) -> Self:
        """A view of this registry that records ``actor`` as the author of its changes.

        It shares the engine and the blob store (nothing is rebuilt, so it is cheap to make per
        request); close the original, never the view.
        """
        view = copy.copy(self)
        view.actor = actor
        return view

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction; a disk-full or read-only database becomes a StorageError
        (locks and serialisation failures propagate as they are, for the caller to retry)."""
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                yield session
        except DBAPIError as exc:
            failure = storage_failure(self.engine, exc)
            if failure is None:
                raise
            raise failure from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.read_engine, expire_on_commit=False) as session, session.begin():
            yield session

    # -------------------------------------------------------------------- resolution

    def _adapter(self, session: Session, name: str, *, lock: bool = False) -> Adapter:
        stmt = _ADAPTER_BY_NAME_FOR_UPDATE if lock and not is_sqlite(self.engine) else _ADAPTER_BY_NAME
        adapter = session.scalars(stmt, {"name": name}).one_or_none()
        if adapter is None:
            raise NotFoundError(
                f"adapter {shown(name)} is not registered",
                fields={"name": name},
                hint="list the registered names, or register the adapter under that name first",
                hint_action="register",
            )
        return adapter

    def _resolve(
        self, session: Session, ref: str, *, allow_deleted: bool = False
    ) -> tuple[Adapter, AdapterVersion]:
        parsed = parse_ref(ref)
        if parsed.sha256_prefix is not None:
            rows = session.execute(
                select(Adapter, AdapterVersion)
                .join(AdapterVersion, AdapterVersion.adapter_id == Adapter.id)
                .where(
                    AdapterVersion.weights_sha256.like(parsed.sha256_prefix + "%"),
                    AdapterVersion.status != "deleted",
                )
                .order_by(Adapter.name, AdapterVersion.version)
                .limit(10)
            ).all()
            if not rows:
                raise NotFoundError(
                    f"reference {ref!r}: no registered version has a weights file whose sha256 "
                    "starts with that; check the digest",
                    fields={"ref": ref, "sha256_prefix": parsed.sha256_prefix},
                    hint="a version's weights-file digest is part of its details",
                    hint_action="show_digest",
                )
            if len(rows) > 1:
                refs = ", ".join(f"{a.name}@{v.version}" for a, v in rows)
                raise ConflictError(
                    f"reference {ref!r} is ambiguous: it matches {refs}; give more hex digits or "
                    "use NAME@VERSION"
                )
            return rows[0][0], rows[0][1]
        assert parsed.name is not None
        if parsed.version is not None:
            # One query for the adapter and its version; the adapter alone only to say which
            # of the two is missing.
            found = session.execute(
                _VERSION_OF_NAME, {"name": parsed.name, "version": parsed.version}
            ).one_or_none()
            if found is not None:
                adapter, version = found[0], found[1]
            else:
                adapter, version = self._adapter(session, parsed.name), None
            if version is None:
                raise NotFoundError(
                    f"adapter {adapter.name!r} has no version {parsed.version} (its versions are "
                    f"1..{adapter.last_version})",
                    fields={"adapter": adapter.name, "version": parsed.version},
                    hint="list the adapter's versions",
                    hint_action="versions",
                )
            if version.status == "deleted" and not allow_deleted:
                raise NotFoundError(
                    f"{adapter.name}@{version.version} was deleted and its files purged; the "
                    "number stays retired — use another version"
                )
            if version.status == "yanked":
                logger.warning(
                    "%s@%d is yanked (%s)", adapter.name, version.version, version.status_reason
                )
            return adapter, version
        adapter = self._adapter(session, parsed.name)
        if parsed.alias is not None:
            row = session.execute(
                _VERSION_BY_ALIAS, {"adapter_id": adapter.id, "alias": parsed.alias}
            ).one_or_none()
            if row is None:
                raise NotFoundError(
                    f"adapter {adapter.name!r} has no alias {parsed.alias!r}",
                    fields={"adapter": adapter.name, "alias": parsed.alias},
                    hint="set the alias to a version first",
                    hint_action="alias_set",
                )
            version = row[1]
            if version.status != "ready":
                raise NotFoundError(
                    f"alias {adapter.name}@{parsed.alias} points to {adapter.name}@{version.version}"
                    f", which is {version.status} ({version.status_reason or 'no reason given'})",
                    fields={"adapter": adapter.name, "alias": parsed.alias, "version": version.version},
                    hint="move the alias to a ready version",
                    hint_action="alias_set",
                )
            return adapter, version
        version = session.scalars(_LATEST_READY_VERSION, {"adapter_id": adapter.id}).one_or_none()
        if version is None:
            raise NotFoundError(
                f"adapter {adapter.name!r} has no ready version (all are yanked or deleted); "
                f"name one explicitly, e.g. {adapter.name}@{adapter.last_version}, or unyank one"
            )
        return adapter, version

    @staticmethod
    def _key(adapter: Adapter, version: AdapterVersion) -> VersionKey:
        return VersionKey(
            name=adapter.name,
            version=version.version,
            version_id=version.id,
            status=version.status,
            weights_sha256=version.weights_sha256,
        )

    def _lock_version(self, session: Session, version_id: int) -> None:
        """Lock a version's row until commit (PostgreSQL; SQLite holds the write lock already),
        so writers that read its evals or tags before adding to them go one at a time."""
        if not is_sqlite(self.engine):
            session.execute(
                select(AdapterVersion.id).where(AdapterVersion.id == version_id).with_for_update()
            )

    def _journal_version(
        self,
        session: Session,
        adapter: Adapter,
        version: AdapterVersion,
        *,
        kind: str,
        payload: Mapping[str, Any],
        actor: str,
    ) -> None:
        """Journal an event about one version (subject ``NAME@N``) in the caller's transaction."""
        journal(
            session,
            actor=actor,
            kind=kind,
            subject=f"{adapter.name}@{version.version}",
            adapter_id=adapter.id,
            version_id=version.id,
            payload=payload,
        )

    def resolve(self, ref: str) -> VersionKey:
        """The version a registry reference names (``NAME``, ``NAME@7``, ``NAME@alias``, ``sha256:``)."""
        with self._read() as session:
            return self._key(*self._resolve(session, ref))
