"""How inputs are named in messages and reports: by the name the user gave them, not a cache path.

A caller that resolved a registry reference (``sts@production``) to a folder passes a mapping
folder -> label (``sts@production -> sts@3``); :func:`relabel_text` puts the label wherever a
message names the folder or a file in it. :func:`shorten` cuts long user inputs echoed in
messages. Pure string functions.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

from mergetools.errors import LoradexError

logger = logging.getLogger(__name__)

SHOWN_MAX = 80
"""How many characters of a user input a message echoes before cutting it with ``…``."""


def shorten(value: object, *, limit: int = SHOWN_MAX) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters with ``…`` (and the length).

    >>> shorten("x" * 2000)[-30:]
    "xxxxxxxxxxx'… (2000 characters)"
    """
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


def _quoted(label: str) -> str:
    return f"'{label}'"


def relabel_text(text: str, labels: Mapping[str, str]) -> str:
    """``text`` with every folder of ``labels`` (and the files in it) named by its label.

    ``'/cache/versions/ab12'`` and ``/cache/versions/ab12`` become ``'sts@production -> sts@3'``;
    ``/cache/versions/ab12/adapter_config.json`` becomes
    ``adapter_config.json of 'sts@production -> sts@3'``. Longer folders are replaced first.
    """
    if not labels:
        return text
    for folder in sorted(labels, key=len, reverse=True):
        label = _quoted(labels[folder])
        escaped = re.escape(folder.rstrip("/" + os.sep) or folder)
        sub = r"(?:[/\\](?P<sub>[^\s'\":,;()]+))?"

        def replace(match: re.Match[str], label: str = label) -> str:
            inner = match.group("sub")
            return f"{inner} of {label}" if inner else label

        text = re.sub(rf"'{escaped}{sub}'", replace, text)
        text = re.sub(rf"(?<![\w/\\.]){escaped}{sub}(?![\w])", replace, text)
    return text


def folder_labels(pairs: Mapping[Path, str | None]) -> dict[str, str]:
    """Path -> label as the string forms messages use (as given, absolute and resolved)."""
    out: dict[str, str] = {}
    for folder, label in pairs.items():
        if not label:
            continue
        for form in (str(folder), str(folder.absolute()), str(folder.resolve())):
            if form != label:
                out.setdefault(form, label)
    return out


def relabel_error(exc: LoradexError, labels: Mapping[str, str]) -> LoradexError:
    """``exc`` with its message relabelled (in place; returned for ``raise ... from None``)."""
    if labels:
        message = relabel_text(exc.message, labels)
        if message != exc.message:
            exc.message = message
            exc.args = (message, *exc.args[1:])
    return exc
