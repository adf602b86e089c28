"""Entry point of the ``loradex`` command.

Subcommands are loaded lazily from the modules named in ``COMMANDS`` so that
``loradex list`` does not pay for importing torch.

Failures: every :class:`LoradexError` becomes one ``error: <message>`` line on stderr (then a
``hint: ...`` line when it carries a hint, its ``hint_action`` worded with this CLI's flags) and
exit status 1; any other exception one ``error: <type>: <message> (run with --debug ...)`` line and
exit 1 (``--debug`` prints the traceback instead); usage errors exit 2 (click's own); Ctrl-C one
line and exit 130; a closed stdout (``loradex list | head``) a quiet exit 1. Log records go to
stderr only with ``--verbose``, so they never mix with ``error:`` lines.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from mergetools.errors import LoradexError

if TYPE_CHECKING:
    from mergetools.outdir import ProtectedPath
    from registry.service import Registry
    from registry.settings import Settings

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
    "extract": "cli.lowrank_cmds:extract",
    "gc": "cli.registry_cmds:gc",
    "inspect": "cli.check_cmd:inspect",
    "journal": "cli.registry_cmds:journal",
    "lineage": "cli.registry_cmds:lineage",
    "list": "cli.registry_cmds:list_",
    "merge": "cli.merge_cmd:merge",
    "metric": "cli.metric_cmds:metric",
    "publish": "cli.publish_cmds:publish",
    "pull": "cli.hub_cmds:pull",
    "push": "cli.hub_cmds:push",
    "register": "cli.registry_cmds:register",
    "rescale": "cli.algebra_cmds:rescale",
    "resize": "cli.lowrank_cmds:resize",
    "search": "cli.registry_cmds:search",
    "serve": "cli.serve_cmd:serve",
    "show": "cli.registry_cmds:show",
    "tag": "cli.registry_cmds:tag",
    "token": "cli.token_cmds:token",
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
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors (exit 2) and deliberate exits are click's to render
        except LoradexError as exc:
            if debug:
                traceback.print_exc(file=sys.stderr)
            click.echo(f"error: {exc}", err=True)
            hint = render_hint(exc)
            if hint:
                click.echo(f"hint: {hint}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            _INTERRUPTED.set()
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            _silence_stdout()  # the reader went away (`| head`): nothing left to say
            ctx.exit(1)
        except Exception as exc:
            if debug:
                traceback.print_exc(file=sys.stderr)
            else:
                message = " ".join(str(exc).split()) or "(no message)"
                click.echo(
                    f"error: {type(exc).__name__}: {message} (run with --debug for the traceback)",
                    err=True,
                )
            ctx.exit(1)
        return None  # not reached: ctx.exit raises


# hint_action (see mergetools.errors.HINT_ACTIONS) -> what the CLI says; {field} names exc.fields.
HINT_TEXT: dict[str, str] = {
    "force": "choose another output folder, or pass --force to replace it",
    "purge": "pass --purge to confirm, or use `loradex yank {ref} --reason ...` to hide it and "
    "keep the files",
    "device_cpu": "use --device cpu",
    "db_upgrade": "run `loradex db upgrade` (with the same LORADEX_DATABASE_URL) first",
    "upgrade_loradex": "upgrade loradex (pip install -U loradex) instead of using this one",
    "rename": "pass --name with another name",
    "register": "see `loradex list` for the names, or register it with "
    "`loradex register PATH --name {name}`",
    "write_signature": "write it with `loradex inspect BASE --signature`",
    "write_signature_fingerprint": "write it with `loradex inspect BASE --signature --fingerprint`",
    "base_folder": "pass a signature file, or use --base FOLDER",
    "verify_weights": "run with --verify-weights",
    "alias_history": "see `loradex alias history {adapter}`",
    "show_digest": "see `loradex show NAME --json` for a version's digest",
    "store_base": "run `loradex base add PATH --store` where the base folder is",
    "base_list": "see `loradex base list`",
    "base_add": "see `loradex base list`, or add it with `loradex base add PATH`",
    "versions": "see `loradex versions {adapter}`",
    "alias_set": "move it with `loradex alias set {adapter}@VERSION {alias}`",
    "alias_rm": "remove them with `loradex alias rm {adapter} ALIAS`",
    "token_list": "see `loradex token list` for the ids",
    "token_create": "create one with `loradex token create --scope SCOPE` where the registry is",
    "check_report": "run `loradex check` with the same adapters and base for the full report",
    "publish": "run `loradex publish NAME@VERSION --alias {alias}` so that its gates run",
}


def render_hint(exc: LoradexError) -> str | None:
    """The hint line for ``exc``: the CLI's wording of its ``hint_action`` when it has one
    (filled from ``exc.fields``), else the core's neutral ``hint``."""
    template = HINT_TEXT.get(exc.hint_action or "")
    if template is not None:
        try:
            fields = {
                key: (f"{value[:60]}…" if isinstance(value, str) and len(value) > 80 else value)
                for key, value in exc.fields.items()
            }  # a 10,000-character name is echoed by the message already, cut
            return template.format(**fields)
        except (KeyError, IndexError, ValueError):
            pass  # a field the message did not carry: fall back to the neutral sentence
    return exc.hint


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class CliState:
    """What the root group hands every command (``ctx.obj``): the settings, built once.

    ``settings`` is read from the ``LORADEX_`` environment on first use only, so ``--help``, and
    ``check``/``inspect`` of plain folders, neither pay for nor fail on settings they never use.
    This is the only place the CLI builds :class:`registry.settings.Settings`.
    """

    def __init__(self, *, verbose: int = 0, debug: bool = False, server: str | None = None) -> None:
        self.verbose = verbose
        self.debug = debug
        self.server = server

    @functools.cached_property
    def settings(self) -> Settings:
        from registry.settings import Settings

        return Settings(server=self.server) if self.server is not None else Settings()

    def require_local(self, what: str) -> None:
        """Refuse ``what`` (a command) when a registry server is configured: it needs the
        registry's own database or files, which only the server's machine has."""
        from registry.errors import NotRemoteError

        server = self.settings.server
        if server:
            raise NotRemoteError(
                f"`{what}` works on the registry of this machine (its database and blob store); "
                f"it cannot run against the registry server {server}",
                hint="unset LORADEX_SERVER and drop --server to use the local registry, or run "
                "it on the server's machine",
            )

    def protected_paths(self) -> list[ProtectedPath]:
        """What an output folder must never replace: the registry home and the current folder."""
        from mergetools.outdir import ProtectedPath

        return [
            ProtectedPath(self.settings.home, "LORADEX_HOME"),
            ProtectedPath(Path.cwd(), "the current folder", inside_ok=True),
        ]

    def settings_factory(self) -> Settings:
        """``settings``, as a callable for use cases that need them only for some inputs."""
        return self.settings

    @contextlib.contextmanager
    def open_registry(self) -> Iterator[Registry]:
        """Open the registry for these settings; closed on exit. With a registry server set
        (``--server`` or ``LORADEX_SERVER``) it is a :class:`registry.remote.RemoteRegistry`:
        the same methods and records, over HTTP."""
        from registry.sources import open_registry

        registry = open_registry(self.settings)
        try:
            yield registry
        finally:
            registry.close()


pass_state = click.make_pass_decorator(CliState, ensure=True)


_LOG_HANDLER_FLAG = "_loradex_cli_handler"


def _configure_logging(verbose: int) -> None:
    """Log to stderr only when asked (``-v``); otherwise nothing, not even Python's fallback."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _LOG_HANDLER_FLAG, False):
            root.removeHandler(handler)
    new: logging.Handler
    if verbose:
        new = logging.StreamHandler(sys.stderr)
        new.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        new = logging.NullHandler()
    setattr(new, _LOG_HANDLER_FLAG, True)
    root.addHandler(new)
    root.setLevel(logging.INFO if verbose == 1 else logging.DEBUG if verbose else logging.WARNING)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="loradex", prog_name="loradex")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) to stderr.")
@click.option(
    "--debug", is_flag=True, help="Print the Python traceback of an error instead of one line."
)
@click.option(
    "--server",
    metavar="URL",
    help="Use the registry server at URL (`loradex serve`) instead of the local registry "
    "[env LORADEX_SERVER; token: LORADEX_TOKEN].",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, debug: bool, server: str | None) -> None:
    """loradex: the registry and merge toolkit for LoRA adapters."""
    _configure_logging(verbose)
    ctx.obj = CliState(verbose=verbose, debug=debug, server=server)


_INTERRUPTED = threading.Event()
"""Set once the ``error: interrupted`` line is printed."""

INTERRUPT_GRACE_S = 3.0
"""How long Ctrl-C may take to unwind before the process exits anyway."""


def _exit_after_interrupt() -> None:
    if not _INTERRUPTED.is_set():
        with contextlib.suppress(Exception):
            sys.stderr.write("error: interrupted\n")
            sys.stderr.flush()
    os._exit(130)


def _on_sigint(signum: int, frame: object) -> None:
    """Ctrl-C: unwind as usual (temp files removed), but never hang. A KeyboardInterrupt that
    lands while a background thread imports torch can leave an import lock held forever; a
    timer makes the process exit 130 anyway once the grace period has passed."""
    timer = threading.Timer(INTERRUPT_GRACE_S, _exit_after_interrupt)
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt


def _unraisable(args: sys.UnraisableHookArgs) -> None:
    """Python reports an exception it cannot raise (a Ctrl-C landing in an import lock's
    callback) with a traceback on stderr; after Ctrl-C the one ``error: interrupted`` is enough."""
    if isinstance(args.exc_value, KeyboardInterrupt):
        return
    sys.__unraisablehook__(args)


def main() -> None:
    """Console-script entry point."""
    code: int | str | None = 0
    sys.unraisablehook = _unraisable
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        cli.main(prog_name="loradex")
    except SystemExit as exc:
        code = exc.code
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        code = code or 1
    if "torch" in sys.modules and not _other_threads_alive():
        _exit_without_teardown(code)
    sys.exit(code)


def _other_threads_alive() -> bool:
    """Whether a thread the interpreter would wait for at exit still runs (an executor a library
    keeps, a worker not joined): then the exit stays the interpreter's own."""
    main = threading.main_thread()
    return any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate())


def _exit_without_teardown(code: int | str | None) -> NoReturn:
    """Exit as the interpreter would (no other thread left to wait for; atexit handlers run:
    loggers flushed, temp folders removed), minus the module teardown that follows: once torch
    is imported that alone takes ~0.6 s, 13% of a 2 GB merge's wall time."""
    if isinstance(code, str):
        sys.stderr.write(code + "\n")
    status = code if isinstance(code, int) else (0 if code is None else 1)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        status = status or 120  # what the interpreter exits with when the final flush fails
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
