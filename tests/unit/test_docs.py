"""Every command and every option is documented (README.md or docs/*.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from cli.main import COMMANDS, cli

REPO = Path(__file__).resolve().parents[2]
DOCS = "\n".join(p.read_text(encoding="utf-8") for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])


def _commands() -> Iterator[tuple[str, click.Command]]:
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None
        yield name, command
        if isinstance(command, click.Group):
            for sub in command.list_commands(ctx):
                sub_command = command.get_command(ctx, sub)
                assert sub_command is not None
                yield f"{name} {sub}", sub_command


ALL = list(_commands())


@pytest.mark.parametrize(("name", "command"), ALL, ids=[n for n, _ in ALL])
def test_command_and_its_options_are_documented(name: str, command: click.Command) -> None:
    assert f"loradex {name}" in DOCS, f"`loradex {name}` is not documented in README.md or docs/"
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        longs = [o for o in param.opts + param.secondary_opts if o.startswith("--")]
        if not longs or longs[0] == "--help":
            continue
        assert any(flag in DOCS for flag in longs), f"`loradex {name}` option {longs[0]} is not documented"
