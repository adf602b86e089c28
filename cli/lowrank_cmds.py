"""``loradex resize`` and ``loradex extract``: low-rank adapters from adapters and fine-tuned checkpoints."""

from __future__ import annotations

import click

from cli.main import CliState, pass_state
from cli.progress import progress_bar
from cli.render import echo_json, json_option


def _target_options(func):  # type: ignore[no-untyped-def]
    func = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(func)
    func = json_option(func)
    func = click.option(
        "--force", is_flag=True,
        help="Replace --out if it is an empty folder or an earlier loradex output (never anything else).",
    )(func)
    func = click.option("--name", default=None, help="Register the result under this adapter name (instead of --out).")(func)
    func = click.option("--out", default=None, type=click.Path(), help="Output adapter folder (created atomically).")(func)
    func = click.option(
        "--energy", type=float, default=None,
        help="Instead of --rank: per module, the smallest rank keeping this fraction of sum(s^2), e.g. 0.99.",
    )(func)
    func = click.option("--rank", type=int, default=None, help="Target rank of every module.")(func)
    return func


def _check_target(rank: int | None, energy: float | None, out: str | None, name: str | None) -> None:
    if (rank is None) == (energy is None):
        raise click.UsageError("give exactly one of --rank or --energy")
    if (out is None) == (name is None):
        raise click.UsageError("give exactly one of --out or --name")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3e}"


@click.command("resize")
@click.argument("src")
@_target_options
@pass_state
def resize(
    state: CliState,
    src: str, rank: int | None, energy: float | None, out: str | None, name: str | None,
    force: bool, as_json: bool, quiet: bool,
) -> None:
    """Resize the adapter SRC (folder or reference) to --rank or --energy, exactly from its factors."""
    _check_target(rank, energy, out, name)
    from mergetools.algebra.requests_lowrank import ResizeRequest
    from mergetools.algebra.resize import ResizeResult
    from registry.algebra_lowrank import resize_and_register

    request = ResizeRequest(source=src, rank=rank, energy=energy)
    with progress_bar("resizing", enabled=not quiet and not as_json) as progress:
        outcome = resize_and_register(
            state.settings, request, out=out, name=name, force=force, protected=state.protected_paths(),  # type: ignore[arg-type]
            progress=progress,
        )
    if as_json:
        echo_json(outcome.to_dict())
        return
    result = outcome.result
    assert isinstance(result, ResizeResult)
    click.echo(f"{'module':<60} {'rank':>11} {'kept energy':>12} {'rel. error':>11}")
    for m in result.modules:
        click.echo(f"{m.path:<60} {m.rank_before:>4} -> {m.rank_after:<4} {m.kept_energy:>12.6f} {_fmt(m.relative_error):>11}")
    where = outcome.registered.ref if outcome.registered else str(out)
    click.echo(
        f"resized {len(result.modules)} modules into {where}: worst relative error "
        f"{_fmt(result.max_relative_error)} in {result.seconds:.2f}s"
    )


@click.command("extract")
@click.option("--base", required=True, help="Base checkpoint folder (Hugging Face layout) or a registered base name.")
@click.option("--tuned", required=True, help="Fully fine-tuned checkpoint folder of the same architecture, or a registered base name.")
@_target_options
@click.option(
    "--keep-full", default="", metavar="norm,bias",
    help="Keep changed norms and/or biases as full tensors (modules_to_save / base_layer.bias); else they are listed.",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--verify", "verify", type=int, default=2, show_default=True,
    help="Also run the exact dense SVD on this many modules and report the optimum's error next to ours.",
)
@pass_state
def extract(
    state: CliState,
    base: str, tuned: str, rank: int | None, energy: float | None, out: str | None, name: str | None,
    force: bool, as_json: bool, quiet: bool, keep_full: str, device: str, verify: int,
) -> None:
    """Extract a LoRA adapter from a fully fine-tuned checkpoint (truncated SVD of tuned - base)."""
    _check_target(rank, energy, out, name)
    from mergetools.algebra.extract import ExtractResult
    from mergetools.algebra.requests_lowrank import ExtractRequest
    from registry.algebra_lowrank import extract_and_register

    kinds = tuple(k.strip() for k in keep_full.split(",") if k.strip())
    request = ExtractRequest(
        base=base, tuned=tuned, rank=rank, energy=energy, keep_full=kinds, device=device, verify_modules=verify
    )
    with progress_bar("extracting", enabled=not quiet and not as_json) as progress:
        outcome = extract_and_register(
            state.settings, request, out=out, name=name, force=force, protected=state.protected_paths(),  # type: ignore[arg-type]
            progress=progress,
        )
    if as_json:
        echo_json(outcome.to_dict())
        return
    result = outcome.result
    assert isinstance(result, ExtractResult)
    click.echo(f"{'module':<60} {'rank':>5} {'kept energy':>12} {'rel. error':>11} {'exact SVD':>11}")
    for m in result.modules:
        click.echo(
            f"{m.path:<60} {m.rank:>5} {m.kept_energy:>12.6f} {_fmt(m.relative_error):>11} {_fmt(m.exact_error):>11}"
        )
    for tensor in result.kept_full:
        click.echo(f"  kept in full: {tensor}")
    for tensor, why in result.not_extracted:
        click.echo(f"  not extracted: {tensor} ({why})")
    where = outcome.registered.ref if outcome.registered else str(out)
    click.echo(
        f"extracted {len(result.modules)} modules into {where} on {result.device}: worst relative error "
        f"{_fmt(result.max_relative_error)}; {result.unchanged} tensors unchanged; {result.seconds:.2f}s"
    )
