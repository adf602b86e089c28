"""Aliases: named pointers at versions, moved (optionally compare-and-swap) with a history."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from mergetools.errors import ConflictError, NotFoundError
from registry.core import journal
from registry.db import is_sqlite
from registry.errors import AliasMovedError
from registry.inputs import (
    check_alias,
)
from registry.models import (
    AdapterVersion,
    Alias,
    AliasMove,
    utcnow,
)
from registry.policies import PoliciesMixin, guard_alias_move
from registry.records import (
    AliasMoveRow,
)

logger = logging.getLogger(__name__)

_ALIASES = Alias.__table__.c
_ALIASES_OF_VERSIONS = (  # built once, over the table (plain rows); see registry/core.py
    select(_ALIASES.version_id, _ALIASES.name)
    .where(_ALIASES.version_id.in_(bindparam("version_ids", expanding=True)))
    .order_by(_ALIASES.name)
)

class Unconditional:
    """The type of :data:`UNCONDITIONAL`: an alias move that checks nothing."""

    def __repr__(self) -> str:
        return "UNCONDITIONAL"


UNCONDITIONAL = Unconditional()


class AliasesMixin(PoliciesMixin):
    """Use cases of an adapter's aliases and their history."""

    def set_alias(
        self,
        ref: str,
        alias: str,
        *,
        expected_version: int | None | Unconditional = UNCONDITIONAL,
        actor: str | None = None,
    ) -> AliasMoveRow:
        """Point ``alias`` of the referenced adapter at that version (recorded in the history).

        ``expected_version`` makes the move a compare-and-swap, checked in the same transaction
        with the adapter row locked: the alias must point at that version number (``None``: the
        alias must be unset), else :class:`AliasMovedError` and nothing changes. Left out, the
        move is unconditional.
        """
        actor = self._actor(actor)
        check_alias(alias)
        now = utcnow()
        with self._write() as session:
            adapter, v = self._resolve(session, ref)
            # Lock the adapter row: a first-time alias has no row of its own to lock yet.
            self._adapter(session, adapter.name, lock=True)
            guard_alias_move(session, self, adapter, alias)  # policy / protection (registry.policies)
            if v.status != "ready":
                raise ConflictError(
                    f"{adapter.name}@{v.version} is {v.status} ({v.status_reason}); an alias can "
                    "only point at a ready version"
                )
            stmt = select(Alias).where(Alias.adapter_id == adapter.id, Alias.name == alias)
            if not is_sqlite(self.engine):
                stmt = stmt.with_for_update()
            current = session.scalars(stmt).one_or_none()
            from_id = current.version_id if current else None
            if not isinstance(expected_version, Unconditional):
                current_number = (
                    session.scalar(
                        select(AdapterVersion.version).where(AdapterVersion.id == from_id)
                    )
                    if from_id
                    else None
                )
                if current_number != expected_version:
                    expected = "unset" if expected_version is None else f"@{expected_version}"
                    now_at = "is unset" if current_number is None else f"points at @{current_number}"
                    raise AliasMovedError(
                        f"alias {adapter.name}@{alias} {now_at}, not {expected} as expected; "
                        "it was moved meanwhile — read it again and retry",
                        adapter=adapter.name,
                        alias=alias,
                        expected_version=expected_version,
                        current_version=current_number,
                    )
            if current is None:
                session.add(
                    Alias(
                        adapter_id=adapter.id,
                        name=alias,
                        version_id=v.id,
                        updated_at=now,
                        updated_by=actor,
                    )
                )
            else:
                current.version_id, current.updated_at, current.updated_by = v.id, now, actor
            session.add(
                AliasMove(
                    adapter_id=adapter.id,
                    alias=alias,
                    from_version_id=from_id,
                    to_version_id=v.id,
                    moved_at=now,
                    moved_by=actor,
                )
            )
            from_number = (
                session.scalar(select(AdapterVersion.version).where(AdapterVersion.id == from_id))
                if from_id
                else None
            )
            journal(
                session,
                actor=actor,
                kind="alias.set",
                subject=f"{adapter.name}@{alias}",
                adapter_id=adapter.id,
                version_id=v.id,
                payload={"alias": alias, "from": from_number, "to": v.version},
            )
        return AliasMoveRow(
            alias=alias,
            from_version=from_number,
            to_version=v.version,
            moved_at=now,
            moved_by=actor,
        )

    def remove_alias(self, name: str, alias: str, *, actor: str | None = None) -> AliasMoveRow:
        """Remove ``alias`` of adapter ``name`` (recorded in the history as a move to nothing)."""
        actor = self._actor(actor)
        now = utcnow()
        with self._write() as session:
            adapter = self._adapter(session, name, lock=True)
            guard_alias_move(session, self, adapter, alias)  # policy / protection (registry.policies)
            current = session.scalars(
                select(Alias).where(Alias.adapter_id == adapter.id, Alias.name == alias)
            ).one_or_none()
            if current is None:
                raise NotFoundError(
                    f"adapter {name!r} has no alias {alias!r}",
                    fields={"adapter": name, "alias": alias},
                    hint="the alias's history shows where it pointed",
                    hint_action="alias_history",
                )
            from_number = session.scalar(
                select(AdapterVersion.version).where(AdapterVersion.id == current.version_id)
            )
            session.add(
                AliasMove(
                    adapter_id=adapter.id,
                    alias=alias,
                    from_version_id=current.version_id,
                    to_version_id=None,
                    moved_at=now,
                    moved_by=actor,
                )
            )
            session.delete(current)
            journal(
                session,
                actor=actor,
                kind="alias.removed",
                subject=f"{name}@{alias}",
                adapter_id=adapter.id,
                payload={"alias": alias, "from": from_number},
            )
        return AliasMoveRow(
            alias=alias,
            from_version=from_number,
            to_version=None,
            moved_at=now,
            moved_by=actor,
        )

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMoveRow]:
        """Every move of the adapter's aliases (or of one alias), oldest first."""
        with self._read() as session:
            adapter = self._adapter(session, name)
            numbers = dict(
                session.execute(
                    select(AdapterVersion.id, AdapterVersion.version).where(
                        AdapterVersion.adapter_id == adapter.id
                    )
                ).all()
            )
            stmt = (
                select(AliasMove).where(AliasMove.adapter_id == adapter.id).order_by(AliasMove.id)
            )
            if alias is not None:
                stmt = stmt.where(AliasMove.alias == alias)
            return [
                AliasMoveRow(
                    alias=m.alias,
                    from_version=numbers.get(m.from_version_id) if m.from_version_id else None,
                    to_version=numbers.get(m.to_version_id) if m.to_version_id else None,
                    moved_at=m.moved_at,
                    moved_by=m.moved_by,
                    kind=m.kind or ("set" if m.to_version_id else "removed"),
                    report=m.report,
                )
                for m in session.scalars(stmt)
            ]

    @staticmethod
    def _aliases_of(session: Session, version_ids: Sequence[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        if not version_ids:
            return out
        for vid, alias in session.execute(_ALIASES_OF_VERSIONS, {"version_ids": list(version_ids)}):
            out.setdefault(vid, []).append(alias)
        return out

