"""A progress bar for long jobs: on a terminal only, off with --quiet.

Use cases in ``registry`` and ``mergetools`` take an optional ``progress(done, total)`` callback
(bytes done of bytes total); :func:`progress_bar` turns it into a bar on stderr. A job of several
passes (fingerprint a base, then store the files) reports each pass from 0 again: a new total, or
``done`` going back, starts a new bar. Every command that can take seconds takes ``--quiet``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
"""``--quiet``/``-q`` of every command that draws a progress bar."""


def bar_enabled(*, quiet: bool = False) -> bool:
    """A bar is drawn only on a terminal (stderr) and without --quiet."""
    return not quiet and sys.stderr.isatty()


@contextmanager
def progress_bar(label: str, *, enabled: bool = True) -> Iterator[Callable[[int, int], None] | None]:
    """Yield a ``progress(done, total)`` callback drawing a bar on stderr, or None.

    None when ``enabled`` is false or stderr is not a terminal (CI logs, pipes): nothing is drawn.
    """
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    state: dict[str, Any] = {"bar": None, "last": 0, "total": None}

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)
            state["bar"] = None

    def update(done: int, total: int) -> None:
        if state["bar"] is None or total != state["total"] or done < state["last"]:
            close()
            bar = click.progressbar(
                length=max(total, 1), label=label, file=sys.stderr, show_pos=False
            )
            bar.__enter__()
            state.update(bar=bar, last=0, total=total)
        state["bar"].update(done - state["last"])
        state["last"] = done

    try:
        yield update
    finally:
        close()
