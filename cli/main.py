"""Entry point of the ``loradex`` command.

Subcommands are loaded lazily from the modules named in ``COMMANDS`` so that
``loradex list`` does not pay for importing torch. Every :class:`LoradexError`
becomes one line on stderr and exit status 1; usage errors exit 2 (click's own).
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from mergetools.errors import LoradexError

# name -> "module:attribute"; keep sorted by name.
COMMANDS: dict[str, str] = {
    "alias": "cli.registry_cmds:alias",
    "base": "cli.registry_cmds:base",
    "check": "cli.check_cmd:check",
    "checkpoints": "cli.registry_cmds:checkpoints",
    "combine": "cli.algebra_cmds:combine",
    "db": "cli.db_cmds:db",
    "delete": "cli.registry_cmds:delete",
    "eval": "cli.registry_cmds:eval_",
    "export": "cli.registry_cmds:export",
    "gc": "cli.registry_cmds:gc",
    "inspect": "cli.check_cmd:inspect",
    "journal": "cli.registry_cmds:journal",
    "lineage": "cli.registry_cmds:lineage",
    "list": "cli.registry_cmds:list_",
    "merge": "cli.merge_cmd:merge",
    "register": "cli.registry_cmds:register",
    "rescale": "cli.algebra_cmds:rescale",
    "search": "cli.registry_cmds:search",
    "show": "cli.registry_cmds:show",
    "tag": "cli.registry_cmds:tag",
    "unyank": "cli.registry_cmds:unyank",
    "verify": "cli.registry_cmds:verify",
    "versions": "cli.registry_cmds:versions",
    "yank": "cli.registry_cmds:yank",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except LoradexError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="loradex", prog_name="loradex")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) to stderr.")
def cli(verbose: int) -> None:
    """loradex: the registry and merge toolkit for LoRA adapters."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="loradex")


if __name__ == "__main__":
    main()
