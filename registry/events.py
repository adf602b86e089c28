"""Reading the journal: the events in commit order."""

from __future__ import annotations

import logging

from sqlalchemy import select

from mergetools.errors import InvalidInputError
from registry.core import RegistryCore
from registry.models import (
    Event,
)
from registry.records import (
    EventRow,
)
from registry.search import (
    check_limit,
)

logger = logging.getLogger(__name__)



class EventsMixin(RegistryCore):
    """Use cases that read the journal."""

    def events(
        self,
        *,
        name: str | None = None,
        limit: int = 100,
        before: int | None = None,
        after: int | None = None,
    ) -> list[EventRow]:
        """The journal, newest first (optionally for one adapter); with ``after``, the events
        numbered above it, oldest first — what a follower polls. Numbers are in commit order
        (:func:`registry.core.journal`), so following ``after`` never skips an event."""
        check_limit(limit)
        for value, what in ((before, "before"), (after, "after")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvalidInputError(f"journal {what}={value!r} is not an event number; expected an integer >= 0")
        with self._read() as session:
            order = Event.id.asc() if after is not None else Event.id.desc()
            stmt = select(Event).order_by(order).limit(limit)
            if name is not None:
                stmt = stmt.where(Event.adapter_id == self._adapter(session, name).id)
            if before is not None:
                stmt = stmt.where(Event.id < before)
            if after is not None:
                stmt = stmt.where(Event.id > after)
            return [
                EventRow(
                    id=e.id,
                    at=e.at,
                    actor=e.actor,
                    kind=e.kind,
                    subject=e.subject,
                    payload=dict(e.payload),
                )
                for e in session.scalars(stmt)
            ]

