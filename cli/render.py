"""Rendering helpers: plain-text tables, ``--json``, and the stderr prefixes.

stdout carries the result (text or, with ``--json``, one JSON document). stderr carries
``error: ...`` (the command failed), ``warning: ...`` (look at this; the command went on) and
``note: ...`` (information), and log records only with ``--verbose``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

logger = logging.getLogger(__name__)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
"""``--json`` of every command that reports something (one flag name, one help text)."""


def to_jsonable(value: Any) -> Any:
    """Records (``to_dict()``), lists and dicts as JSON values; times ISO 8601 in UTC (``+00:00``)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def echo_json(value: Any) -> None:
    """Print ``value`` as JSON on stdout (the only thing ``--json`` prints there)."""
    click.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=False, default=str))


def echo_warning(message: str) -> None:
    """``warning: ...`` on stderr: something the user should look at; the command went on."""
    click.echo(f"warning: {message}", err=True)


def echo_note(message: str) -> None:
    """``note: ...`` on stderr: information (which input was used, what was skipped)."""
    click.echo(f"note: {message}", err=True)


def echo_finding(finding: dict[str, Any]) -> None:
    """A check finding on stderr: ``warning:`` for warnings, ``note:`` for information."""
    message = str(finding.get("message", finding))
    if finding.get("severity") == "warning":
        echo_warning(message)
    else:
        echo_note(message)


def short_time(value: str | None) -> str:
    """``2026-01-02T03:04:05.123+00:00`` -> ``2026-01-02 03:04``."""
    if not value:
        return ""
    return value.replace("T", " ")[:16]


def format_number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4g}"


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a left-aligned text table (nothing but the header when empty)."""
    # One row per line: a multi-line description is shown on its row, its line breaks as spaces.
    cells = [[("" if c is None else " ".join(str(c).splitlines())) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    click.echo(line.rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def echo_next(cursor: str | None) -> None:
    if cursor:
        click.echo(f"(more: --after {cursor})", err=True)


def echo_fields(fields: Sequence[tuple[str, object]]) -> None:
    """Print ``key  value`` lines, the keys padded to the longest."""
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        click.echo(f"{key.ljust(width)}  {value}")
