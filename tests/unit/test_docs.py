"""Every command and every option is documented (README.md or docs/*.md), where that command is.

The rule, for a command path C (``register``, ``base add``, ...): an option counts as documented
for C only when its long name (``--json``) appears, as a whole word, in C's own documentation:

1. a **synopsis line** in a fenced code block: a line that starts with ``loradex C`` (after an
   optional ``$ ``), followed by a space or the end of the line, together with its continuation
   lines (the line before ends with ``\\``, or the next lines are indented further);
2. a **section** whose heading (``#`` .. ``######``) names ``loradex C``: everything up to the
   next heading;
3. a **paragraph** that names ``loradex C``, with the table or list right after it.

"Names ``loradex C``" means the text contains ``loradex C`` not followed by a letter, digit,
``-`` or ``_`` (so ``loradex base add`` names ``base add`` and the group ``base``, never
``add``). An option mentioned anywhere else counts for no command.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from cli.main import COMMANDS, cli

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Doc:
    file: str
    lines: list[str]


DOCS = [Doc(p.relative_to(REPO).as_posix(), p.read_text(encoding="utf-8").splitlines()) for p in DOC_FILES]

_HEADING = re.compile(r"^#{1,6}\s")
_FENCE = re.compile(r"^\s*(```|~~~)")
_BLOCK_START = re.compile(r"^\s*(\||[-*+]\s|\d+[.)]\s)")


def _names(text: str, command: str) -> bool:
    return re.search(rf"loradex {re.escape(command)}(?![\w-])", text) is not None


def _synopsis_blocks(doc: Doc, command: str) -> Iterator[str]:
    """Rule 1: synopsis lines of ``command`` in fenced code blocks, with their continuations."""
    in_code = False
    lines = doc.lines
    start = re.compile(rf"^\s*(\$\s+)?loradex {re.escape(command)}( |$)")
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code or not start.match(line):
            continue
        block = [line]
        indent = len(line) - len(line.lstrip())
        j = i + 1
        while j < len(lines) and not _FENCE.match(lines[j]):
            nxt = lines[j]
            continued = block[-1].rstrip().endswith("\\")
            deeper = nxt.strip() != "" and len(nxt) - len(nxt.lstrip()) > indent
            if not (continued or deeper):
                break
            block.append(nxt)
            j += 1
        yield "\n".join(block)


def _sections(doc: Doc, command: str) -> Iterator[str]:
    """Rule 2: the section under a heading naming ``loradex command``."""
    lines = doc.lines
    for i, line in enumerate(lines):
        if _HEADING.match(line) and _names(line, command):
            j = i + 1
            while j < len(lines) and not _HEADING.match(lines[j]):
                j += 1
            yield "\n".join(lines[i:j])


def _paragraphs(doc: Doc, command: str) -> Iterator[str]:
    """Rule 3: a paragraph naming ``loradex command`` and the table or list right after it."""
    lines = doc.lines
    i = 0
    while i < len(lines):
        if _FENCE.match(lines[i]):  # code blocks are rule 1's, never paragraphs
            i += 1
            while i < len(lines) and not _FENCE.match(lines[i]):
                i += 1
            i += 1
            continue
        if not lines[i].strip() or _HEADING.match(lines[i]):
            i += 1
            continue
        j = i
        while (
            j < len(lines) and lines[j].strip() and not _FENCE.match(lines[j]) and not _HEADING.match(lines[j])
        ):
            j += 1
        paragraph = lines[i:j]
        if _names("\n".join(paragraph), command):
            k = j
            while k < len(lines) and not lines[k].strip():
                k += 1
            if k < len(lines) and _BLOCK_START.match(lines[k]):
                end = k
                while end < len(lines) and lines[end].strip():
                    end += 1
                paragraph = [*paragraph, *lines[k:end]]
            yield "\n".join(paragraph)
        i = j


def own_documentation(command: str) -> str:
    """Everything that documents ``loradex command`` by the rule above."""
    parts = []
    for doc in DOCS:
        parts += [*_synopsis_blocks(doc, command), *_sections(doc, command), *_paragraphs(doc, command)]
    return "\n".join(parts)


def _commands() -> Iterator[tuple[str, click.Command]]:
    """Every command path, nested groups included (``alias policy set``)."""
    ctx = click.Context(cli)

    def walk(path: str, command: click.Command) -> Iterator[tuple[str, click.Command]]:
        yield path, command
        if isinstance(command, click.Group):
            for sub in command.list_commands(ctx):
                sub_command = command.get_command(ctx, sub)
                assert sub_command is not None
                yield from walk(f"{path} {sub}", sub_command)

    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None
        yield from walk(name, command)


ALL = list(_commands())


@pytest.mark.parametrize(("name", "command"), ALL, ids=[n for n, _ in ALL])
def test_command_and_its_options_are_documented(name: str, command: click.Command) -> None:
    everywhere = "\n".join("\n".join(d.lines) for d in DOCS)
    assert _names(everywhere, name), f"`loradex {name}` is not documented in README.md or docs/"
    own = own_documentation(name)
    missing = []
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        longs = [o for o in param.opts + param.secondary_opts if o.startswith("--")]
        if not longs or longs[0] == "--help":
            continue
        if not any(re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", own) for flag in longs):
            missing.append(longs[0])
    assert not missing, (
        f"`loradex {name}`: {', '.join(missing)} not documented where `loradex {name}` is — add "
        f"them to a synopsis line starting `loradex {name}` in a code block, or to the section "
        f"under a heading naming `loradex {name}`, or to a table/list right after a paragraph "
        f"naming `loradex {name}` (README.md or docs/*.md; rule in tests/unit/test_docs.py)"
    )


def test_the_rule_reads_only_the_commands_own_documentation() -> None:
    doc = Doc(
        "x.md",
        [
            "## `loradex base add`",
            "Takes `--name`.",
            "## Other",
            "`--quiet` for everything.",
            "```",
            "loradex list --limit 5 \\",
            "    --after X",
            "loradex base list --json",
            "```",
            "Flags of `loradex verify`:",
            "",
            "- `--json`: JSON",
        ],
    )
    assert "--name" in "".join(_sections(doc, "base add")) and "--quiet" not in "".join(_sections(doc, "base add"))
    listed = "".join(_synopsis_blocks(doc, "list"))
    assert "--after" in listed and "--json" not in listed
    assert "--json" in "".join(_synopsis_blocks(doc, "base list"))
    assert "--json" in "".join(_paragraphs(doc, "verify"))
    assert not list(_sections(doc, "add")) and not list(_synopsis_blocks(doc, "add"))
