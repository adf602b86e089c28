"""``loradex merge``: fold adapters into a base checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from cli.main import CliState, pass_state
from cli.progress import progress_bar, quiet_option
from cli.render import echo_json, echo_note


@click.command("merge")
@click.option(
    "--base", "base", required=True, help="Base checkpoint folder (Hugging Face layout) or a registered base name."
)
@click.option(
    "--adapter", "adapters", required=True, multiple=True,
    help="PEFT adapter folder or registry reference (NAME, NAME@7, NAME@production, sha256:<hex>); repeat for several.",
)
@click.option(
    "--weight", "weights", type=float, multiple=True,
    help="Scale of each adapter's delta, in --adapter order (default 1; negatives allowed).",
)
@click.option("--out", "out", required=True, type=click.Path(), help="Output folder (created atomically).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]), default="auto", show_default=True,
    help="Convert floating tensors of the output; auto keeps the base's dtypes.",
)
@click.option("--max-shard-size", default="5GB", show_default=True, help="Shard size limit, decimal units (5GB = 5e9 bytes).")
@click.option(
    "--force", is_flag=True,
    help="Replace --out if it is an empty folder or an earlier loradex output (never anything else).",
)
@click.option("--no-fsync", is_flag=True, help="Skip fsync of the output (faster, not crash-safe).")
@quiet_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@pass_state
def merge(
    state: CliState,
    base: str,
    adapters: tuple[str, ...],
    weights: tuple[float, ...],
    out: str,
    device: str,
    dtype: str,
    max_shard_size: str,
    force: bool,
    no_fsync: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Merge LoRA adapters into a base checkpoint and write a deployable folder."""
    if weights and len(weights) != len(adapters):
        raise click.UsageError(f"got {len(weights)} --weight for {len(adapters)} --adapter; give one per adapter")
    from mergetools.checkpoint import parse_size
    from mergetools.errors import InvalidInputError
    from mergetools.outdir import ProtectedPath
    from mergetools.requests import MergeRequest
    from registry.merges import merge as merge_and_record

    try:
        parse_size(max_shard_size)
    except ValueError as exc:
        raise InvalidInputError(f"--max-shard-size: {exc}") from None
    request = MergeRequest(
        base=base,
        adapters=adapters,
        out=out,
        weights=weights or None,
        dtype=dtype,
        device=device,
        max_shard_size=max_shard_size,
        fsync=not no_fsync,
        force=force,
    )
    settings = state.settings
    with progress_bar("merging", enabled=not quiet and not as_json) as progress:
        outcome = merge_and_record(
            settings,
            request,
            protected=[
                ProtectedPath(settings.home, "LORADEX_HOME"),
                ProtectedPath(Path.cwd(), "the current folder", inside_ok=True),
            ],
            progress=progress,
            notify=echo_note,
        )
    result = outcome.result
    if not as_json:
        click.echo(
            f"merged {len(adapters)} adapter(s) into {result.out}: {result.tensors_changed} tensors changed, "
            f"{result.tensors_copied} copied, {result.bytes_written / 1e9:.2f} GB in {result.seconds:.1f}s "
            f"on {result.device}"
        )
    for note in result.notes:
        echo_note(note)
    row = outcome.checkpoint
    if not as_json and row is not None:
        click.echo(f"recorded checkpoint #{row.id}: {', '.join(r.ref for r in outcome.adapters if r.registered)}")
    if as_json:
        echo_json(outcome.to_dict())
