"""``loradex metric``: which metrics are better when lower, which when higher."""

from __future__ import annotations

import logging

import click

from cli.main import CliState, pass_state
from cli.render import echo_json, echo_table, json_option, short_time

logger = logging.getLogger(__name__)


@click.group("metric")
def metric() -> None:
    """Metric directions: lower is better for losses and error rates, higher otherwise."""


@metric.command("set")
@click.argument("name")
@click.option(
    "--lower-is-better", "direction", flag_value="lower", help="A lower value of NAME is better."
)
@click.option(
    "--higher-is-better", "direction", flag_value="higher", help="A higher value of NAME is better."
)
@json_option
@pass_state
def metric_set(state: CliState, name: str, direction: str | None, as_json: bool) -> None:
    """Declare, registry-wide, whether a lower or a higher value of metric NAME is better."""
    if direction is None:
        raise click.UsageError("give --lower-is-better or --higher-is-better")
    with state.open_registry() as registry:
        row = registry.set_metric_direction(name, direction)
    if as_json:
        echo_json(row)
        return
    click.echo(f"{row.metric}: {row.direction} is better")


@metric.command("list")
@json_option
@pass_state
def metric_list(state: CliState, as_json: bool) -> None:
    """Every metric with a recorded score or a declared direction: direction, declared or default."""
    with state.open_registry() as registry:
        rows = registry.list_metrics()
    if as_json:
        echo_json(rows)
        return
    echo_table(
        ["metric", "better", "source", "declared", "by"],
        [
            [
                r.metric,
                r.direction,
                "declared" if r.declared else "default",
                short_time(r.to_dict()["declared_at"]),
                r.declared_by or "",
            ]
            for r in rows
        ],
    )
