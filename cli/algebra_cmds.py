"""``loradex combine`` and ``loradex rescale``: new adapters from existing ones."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from cli.main import CliState, pass_state
from cli.progress import progress_bar
from cli.render import echo_json, echo_note, json_option

if TYPE_CHECKING:
    from registry.service import Registry

METHOD_HELP = """Methods (d_i = w_i * s_i * B_i @ A_i, source i's weighted delta; s_i its alpha/r):

\b
  cat              B = [w_i s_i B_i], A = [A_i] stacked: exactly sum_i d_i (rank = sum of ranks)
  linear, svd      best rank-R approximation of sum_i d_i (exact factored SVD, no dense SVD)
  ties             trim each d_i to its top --density fraction by magnitude, elect a sign per
                   entry (--majority-sign total: sign of the sum; frequency: sign count),
                   mean of the values that agree; then rank-R SVD
  dare_linear      sum_i m_i d_i / density, m_i seeded Bernoulli(density) masks; rank-R SVD
  dare_ties        DARE's drop-and-rescale, then TIES's election and mean; rank-R SVD
  magnitude_prune  sum_i of d_i trimmed to its top --density fraction; rank-R SVD

\b
PEFT's names ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd are aliases.
R is --rank (default: the largest source rank). A module missing from a source is a zero term."""


@contextmanager
def _registry_for(
    state: CliState, refs: Sequence[str], name: str | None
) -> Iterator[Registry | None]:
    """An open registry when a reference or ``--name`` needs one, else None (plain folders)."""
    from registry.refs import is_path_argument

    if name is None and all(is_path_argument(r) for r in refs):
        yield None
        return
    with state.open_registry() as registry:
        yield registry


def _resolve(state: CliState, registry: Registry | None, refs: Sequence[str]) -> list[Any]:
    from registry.refs import resolve_adapter_refs
    from registry.sources import registry_source

    return resolve_adapter_refs(
        registry if registry is not None else registry_source(state.settings_factory), list(refs)
    )


def _render(summary: dict[str, Any], text: str, notes: Sequence[str], as_json: bool) -> None:
    if as_json:
        echo_json(summary)
        return
    click.echo(text)
    for note in notes:
        echo_note(note)


def _destination(outcome: Any) -> str:
    if outcome.registered is not None:
        return f"registered {outcome.registered.name}@{outcome.registered.version}"
    return f"wrote {outcome.result.out}"


@click.command("combine", epilog=METHOD_HELP)
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--weight",
    "weights",
    type=float,
    multiple=True,
    help="Weight of each SRC's delta, in SRC order (default 1; negatives allowed).",
)
@click.option("--method", required=True, help="Combination method (see below).")
@click.option(
    "--rank", type=int, help="Rank of the result (not for cat; default: the largest source rank)."
)
@click.option(
    "--density",
    type=float,
    help="Fraction of each delta kept, in (0, 1] (ties, dare_*, magnitude_prune).",
)
@click.option("--seed", type=int, help="Seed of DARE's masks (dare_linear, dare_ties; default 0).")
@click.option(
    "--majority-sign",
    type=click.Choice(["total", "frequency"]),
    help="TIES sign election: sign of the sum (total, default) or sign count (frequency).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the dense methods compute.",
)
@click.option("--out", "out", type=click.Path(), help="Output folder (created atomically).")
@click.option("--name", help="Register the result under this name (with lineage) instead of --out.")
@click.option(
    "--force",
    is_flag=True,
    help="Replace --out if it is an empty folder or an earlier loradex output.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@json_option
@pass_state
def combine(
    state: CliState,
    sources: tuple[str, ...],
    weights: tuple[float, ...],
    method: str,
    rank: int | None,
    density: float | None,
    seed: int | None,
    majority_sign: str | None,
    device: str,
    out: str | None,
    name: str | None,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Combine weighted LoRA adapters SRC... (folders or registry references) into one adapter.

    The result has scale 1 everywhere (lora_alpha == r), so PEFT and vLLM apply exactly the
    stored delta.
    """
    if weights and len(weights) != len(sources):
        raise click.UsageError(
            f"got {len(weights)} --weight for {len(sources)} SRC; give one per SRC"
        )
    if (out is None) == (name is None):
        raise click.UsageError("give exactly one of --out DIR or --name NAME")
    from cli.check_cmd import print_notes
    from mergetools.algebra.combine import CombineResult
    from mergetools.algebra.requests import CombineRequest
    from registry.algebra import combine as combine_use_case

    request = CombineRequest(
        sources=sources,
        method=method,
        weights=weights,
        rank=rank,
        density=density,
        seed=seed,
        majority_sign=majority_sign,
        out=out,
        name=name,
        force=force,
        device=device,
    )
    with _registry_for(state, sources, name) as registry:
        resolved = _resolve(state, registry, sources)
        print_notes(resolved)
        with progress_bar(
            "combining", enabled=not quiet and not as_json and request.dense
        ) as progress:
            outcome = combine_use_case(
                registry, request, resolved, protected=state.protected_paths(), progress=progress
            )
    result = outcome.result
    if not isinstance(result, CombineResult):
        raise TypeError("combine returned no combine result")
    rank_text = f"rank {result.rank}" if result.rank is not None else "ranks summed"
    _render(
        outcome.to_dict(),
        f"combined {len(sources)} adapter(s) by {result.method} ({rank_text}): {_destination(outcome)}, "
        f"{len(result.modules)} modules, relative error {result.rel_error:.3g} "
        f"(max {result.max_rel_error:.3g}) in {result.seconds:.1f}s on {result.device}",
        result.notes,
        as_json,
    )


@click.command("rescale")
@click.argument("source")
@click.option(
    "--scale",
    type=float,
    required=True,
    help="Multiply the adapter's delta (and lora_bias) by this.",
)
@click.option("--out", "out", type=click.Path(), help="Output folder (created atomically).")
@click.option("--name", help="Register the result under this name (with lineage) instead of --out.")
@click.option(
    "--force",
    is_flag=True,
    help="Replace --out if it is an empty folder or an earlier loradex output.",
)
@json_option
@pass_state
def rescale(
    state: CliState,
    source: str, scale: float, out: str | None, name: str | None, force: bool, as_json: bool
) -> None:
    """Write SOURCE (a folder or registry reference) with its delta exactly SCALE times as large.

    The scale is folded into lora_B; the result has scale 1 everywhere.
    """
    if (out is None) == (name is None):
        raise click.UsageError("give exactly one of --out DIR or --name NAME")
    from cli.check_cmd import print_notes
    from mergetools.algebra.requests import RescaleRequest
    from registry.algebra import rescale as rescale_use_case

    request = RescaleRequest(source=source, scale=scale, out=out, name=name, force=force)
    with _registry_for(state, [source], name) as registry:
        resolved = _resolve(state, registry, [source])
        print_notes(resolved)
        outcome = rescale_use_case(registry, request, resolved[0], protected=state.protected_paths())
    from mergetools.algebra.combine import RescaleResult

    if not isinstance(outcome.result, RescaleResult):
        raise TypeError("rescale returned no rescale result")
    _render(
        outcome.to_dict(),
        f"rescaled {resolved[0].label} by {scale:g}: {_destination(outcome)}, "
        f"{outcome.result.modules} modules",
        [],
        as_json,
    )
