"""The journal reads in commit order: a follower of ``after=N`` never skips a late commit."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import text

from mergetools.errors import InvalidInputError
from registry.core import journal
from registry.errors import RegistryStateError


def _last_event(registry: Any) -> int:
    rows = registry.events(limit=1)
    return rows[0].id if rows else 0


def test_a_transaction_that_journals_late_still_gets_the_earlier_number(registry: Any) -> None:
    start = _last_event(registry)
    first_journaled, release_first = threading.Event(), threading.Event()
    second_done = threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with registry._write() as session:
                journal(session, actor="first", kind="test.first", subject="first")
                first_journaled.set()
                release_first.wait(20)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def second() -> None:
        try:
            with registry._write() as session:
                journal(session, actor="second", kind="test.second", subject="second")
            second_done.set()
        except BaseException as exc:
            errors.append(exc)

    t1 = threading.Thread(target=first)
    t1.start()
    assert first_journaled.wait(20)
    t2 = threading.Thread(target=second)
    t2.start()
    # The second writer cannot take a number while the first holds its transaction open: with
    # numbers from a sequence it would commit event start+2 now, and a follower that saw it
    # would later miss start+1.
    time.sleep(0.6)
    assert not second_done.is_set()
    assert registry.events(after=start) == []
    release_first.set()
    t1.join(20)
    t2.join(20)
    assert not errors, errors
    rows = registry.events(after=start)
    assert [(e.id, e.actor) for e in rows] == [(start + 1, "first"), (start + 2, "second")]
    # Newest first without after, oldest first with it.
    assert [e.id for e in registry.events(limit=2)] == [start + 2, start + 1]
    assert [e.id for e in registry.events(after=start + 1)] == [start + 2]


def test_after_and_before_must_be_event_numbers(registry: Any) -> None:
    for bad in (-1, True, "3"):
        with pytest.raises(InvalidInputError, match="is not an event number"):
            registry.events(after=bad)
    with pytest.raises(InvalidInputError, match="before=-2 is not an event number"):
        registry.events(before=-2)


def test_a_missing_counter_row_is_reported_not_guessed(registry: Any) -> None:
    with registry.engine.begin() as conn:
        conn.execute(text("DELETE FROM journal_counter"))
    with pytest.raises(RegistryStateError, match="no journal counter row"), registry._write() as session:
        journal(session, actor="x", kind="test", subject="x")
