"""``loradex publish`` (gated alias moves, rollback) and the alias policy, protection and list
commands: thin shells over :mod:`registry.publish` and :mod:`registry.policies`.

Exit codes of ``publish``: 0 published (or, with ``--dry-run``, would be), 1 a gate failed (the
alias did not move) or the publish was refused, 2 called wrong.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click

from cli.main import CliState, pass_state
from cli.render import echo_json, echo_table, echo_warning, json_option, short_time
from mergetools.errors import InvalidInputError

logger = logging.getLogger(__name__)

FORMATS = ("text", "json", "junit", "github")

_require_option = click.option(
    "--require",
    "require",
    multiple=True,
    metavar="METRIC>=V[@DATASET[/SPLIT]]",
    help="Threshold on the version's score (repeatable), e.g. accuracy>=0.82@squad/validation.",
)
_no_regress_option = click.option(
    "--no-regress",
    "no_regress",
    multiple=True,
    metavar="METRIC[@DATASET[/SPLIT]][:TOLERANCE]",
    help="No worse than the version the alias holds now, by the metric's direction, within an absolute tolerance (repeatable).",
)
_serving_option = click.option(
    "--serving",
    "serving",
    multiple=True,
    metavar="vllm[:max_rank=N]|lorax",
    help="Serving profile the version must fit (repeatable).",
)


def _check_gates(
    require: tuple[str, ...], no_regress: tuple[str, ...], serving: tuple[str, ...]
) -> None:
    """Parse the gate options now, so a bad one is a usage error (exit 2) naming its option."""
    from registry.policies import parse_no_regress, parse_serving_gate, parse_threshold

    for option, values, parse in (
        ("--require", require, parse_threshold),
        ("--no-regress", no_regress, parse_no_regress),
        ("--serving", serving, parse_serving_gate),
    ):
        for value in values:
            try:
                parse(value)
            except InvalidInputError as exc:
                raise click.BadParameter(str(exc), param_hint=option) from None


@click.command("publish")
@click.argument("ref", required=False)
@click.option(
    "--alias",
    "alias_name",
    required=True,
    metavar="ALIAS",
    help="The alias to move (e.g. production).",
)
@_require_option
@_no_regress_option
@_serving_option
@click.option(
    "--base",
    help="Base to check against (folder, registered base name, hf://...) [default: the registered base of the version the alias holds, else REF's].",
)
@click.option(
    "--base-signature",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Signature file of the base, instead of --base.",
)
@click.option(
    "--rollback",
    "rollback_name",
    metavar="NAME",
    help="Move ALIAS of adapter NAME back to the version it held before (instead of REF).",
)
@click.option("--dry-run", is_flag=True, help="Evaluate the gates; move nothing.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="Report format; github prints workflow annotations (and appends a summary to $GITHUB_STEP_SUMMARY).",
)
@json_option
@pass_state
def publish(
    state: CliState,
    ref: str | None,
    alias_name: str,
    require: tuple[str, ...],
    no_regress: tuple[str, ...],
    serving: tuple[str, ...],
    base: str | None,
    base_signature: Path | None,
    rollback_name: str | None,
    dry_run: bool,
    fmt: str,
    as_json: bool,
) -> None:
    """Move ALIAS to REF only when every gate passes (readiness, compatibility, serving,
    thresholds, no regression, and the alias's policy).

    Exit status 0: published (or, with --dry-run, would be); 1: a gate failed, nothing moved;
    2: usage error.
    """
    from registry import publish as use_case

    if as_json:
        if fmt not in ("text", "json"):
            raise click.UsageError(f"--json is --format json; it cannot go with --format {fmt}")
        fmt = "json"
    if (ref is None) == (rollback_name is None):
        raise click.UsageError("give REF to publish, or --rollback NAME (not both)")
    if rollback_name is not None and (require or no_regress):
        raise click.UsageError(
            "--rollback runs the compatibility and serving gates only; drop --require / --no-regress"
        )
    if base is not None and base_signature is not None:
        raise click.UsageError("give at most one of --base and --base-signature")
    if base_signature is not None and not base_signature.is_file():
        raise click.BadParameter(f"{base_signature} is not a file", param_hint="--base-signature")
    _check_gates(require, no_regress, serving)
    with state.open_registry() as registry:
        if state.settings.server:
            # The registry server runs the gates (POST .../publish): the same report comes back.
            report = use_case.report_from_dict(
                registry.publish_report(  # type: ignore[attr-defined]
                    ref,
                    alias=alias_name,
                    rollback_of=rollback_name,
                    require=require,
                    no_regress=no_regress,
                    serving=serving,
                    base=base,
                    base_signature=base_signature,
                    dry_run=dry_run,
                )
            )
        elif rollback_name is not None:
            report = use_case.rollback(
                registry,
                rollback_name,
                alias=alias_name,
                serving=serving,
                base=base,
                base_signature=base_signature,
                dry_run=dry_run,
            )
        else:
            assert ref is not None
            report = use_case.publish(
                registry,
                ref,
                alias=alias_name,
                require=require,
                no_regress=no_regress,
                serving=serving,
                base=base,
                base_signature=base_signature,
                dry_run=dry_run,
            )
    click.echo(use_case.render(report, fmt), nl=False)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if fmt == "github" and summary:
        try:
            with open(summary, "a", encoding="utf-8") as out:
                out.write(use_case.render_summary(report))
        except OSError as exc:  # the publish itself is done: say so, do not fail it
            echo_warning(
                f"the step summary could not be written to GITHUB_STEP_SUMMARY={summary!r}: {exc.strerror or exc}"
            )
    if not report.passed:
        raise use_case.refused_error(report)


# ------------------------------------------------------------------------------ alias subcommands


def _gates_text(gates: dict[str, list[str]] | None) -> str:
    if not gates:
        return "-"
    parts = [
        f"{kind.replace('_', '-')} {', '.join(items)}" for kind, items in gates.items() if items
    ]
    return "; ".join(parts) or "-"


@click.command("list")
@click.argument("name", required=False)
@json_option
@pass_state
def alias_list(state: CliState, name: str | None, as_json: bool) -> None:
    """Every alias (of NAME, or of all adapters): its version, policy, protection, last move."""
    with state.open_registry() as registry:
        rows = registry.list_aliases(name)
    if as_json:
        echo_json(rows)
        return
    table = []
    for row in rows:
        move = row.last_move
        last = "-"
        if move is not None:
            moved_at = row.to_dict()["last_move"]["moved_at"]
            last = f"{move['kind']} {short_time(moved_at)} by {move['moved_by']}"
        table.append(
            [
                f"{row.name}@{row.alias}",
                row.ref or "(unset)",
                row.status or "-",
                _gates_text(row.policy),
                "yes" if row.protected else "-",
                last,
            ]
        )
    echo_table(["alias", "version", "status", "policy", "protected", "last move"], table)


@click.group("policy")
def alias_policy() -> None:
    """The gates every publish to an alias runs (admin)."""


def _policy_text(data: dict[str, Any]) -> None:
    click.echo(
        f"{data['name']}@{data['alias']}: {_gates_text(data['gates'])}"
        + (" (protected)" if data.get("protected") else "")
    )


@alias_policy.command("set")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@_require_option
@_no_regress_option
@_serving_option
@json_option
@pass_state
def alias_policy_set(
    state: CliState,
    name: str,
    alias_name: str,
    require: tuple[str, ...],
    no_regress: tuple[str, ...],
    serving: tuple[str, ...],
    as_json: bool,
) -> None:
    """Store the gates of NAME's ALIAS (replacing any earlier ones): every publish runs them,
    and a plain `alias set` of it is refused."""
    if not (require or no_regress or serving):
        raise click.UsageError("give at least one of --require, --no-regress, --serving")
    _check_gates(require, no_regress, serving)
    with state.open_registry() as registry:
        row = registry.set_alias_policy(
            name, alias_name, require=require, no_regress=no_regress, serving=serving
        )
    if as_json:
        echo_json(row)
        return
    _policy_text(row.to_dict())


@alias_policy.command("show")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@json_option
@pass_state
def alias_policy_show(state: CliState, name: str, alias_name: str, as_json: bool) -> None:
    """The gates of NAME's ALIAS."""
    with state.open_registry() as registry:
        row = registry.alias_policy(name, alias_name)
    if as_json:
        echo_json(row)
        return
    _policy_text(row.to_dict())


@alias_policy.command("rm")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@json_option
@pass_state
def alias_policy_rm(state: CliState, name: str, alias_name: str, as_json: bool) -> None:
    """Remove the policy of NAME's ALIAS."""
    with state.open_registry() as registry:
        row = registry.remove_alias_policy(name, alias_name)
    if as_json:
        echo_json(row)
        return
    click.echo(f"removed the policy of {row.name}@{row.alias} (was: {_gates_text(row.gates)})")


def _protection(
    state: CliState, name: str, alias_name: str, as_json: bool, *, protect: bool
) -> None:
    with state.open_registry() as registry:
        row = registry.protect_alias(name, alias_name, protect=protect)
    if as_json:
        echo_json(row)
        return
    what = "protected" if protect else "not protected"
    click.echo(f"{row.name}@{row.alias} is {what}" + ("" if row.changed else " (unchanged)"))


@click.command("protect")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@json_option
@pass_state
def alias_protect(state: CliState, name: str, alias_name: str, as_json: bool) -> None:
    """Protect NAME's ALIAS: only an admin moves it (or a publish through its policy)."""
    _protection(state, name, alias_name, as_json, protect=True)


@click.command("unprotect")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@json_option
@pass_state
def alias_unprotect(state: CliState, name: str, alias_name: str, as_json: bool) -> None:
    """Lift the protection of NAME's ALIAS."""
    _protection(state, name, alias_name, as_json, protect=False)


ALIAS_COMMANDS = (alias_list, alias_policy, alias_protect, alias_unprotect)
"""Added to the ``alias`` group by :mod:`cli.registry_cmds`."""
