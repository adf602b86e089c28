"""``loradex check`` (adapter compatibility for CI) and ``loradex inspect`` (summaries, signatures).

Exit codes of ``check``: 0 compatible, 1 incompatible or an input is corrupt, unreadable or
refused, 2 called wrong. Neither command imports torch for safetensors inputs.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.main import CliState, pass_state
from cli.progress import progress_bar, quiet_option
from cli.render import echo_note
from mergetools.errors import LoradexError

if TYPE_CHECKING:
    from registry.refs import ResolvedAdapter, ResolvedBase

logger = logging.getLogger(__name__)


_cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Fingerprint cache folder [default: $LORADEX_HOME/cache].",
)


def _default_cache_dir(state: CliState) -> Path | None:
    """``$LORADEX_HOME/cache``, from the registry's settings (read only when a fingerprint is needed)."""
    try:
        return state.settings.cache_dir
    except LoradexError as exc:  # settings that fail to load only cost the cache
        logger.warning("no fingerprint cache: %s", exc)
        return None


@click.command("check")
@click.option(
    "--adapter",
    "adapters",
    required=True,
    multiple=True,
    help="PEFT adapter folder or registry reference (NAME, NAME@7, NAME@alias, sha256:<hex>); repeat to check several together.",
)
@click.option(
    "--base",
    help="Base checkpoint folder (read header-only), a registered base name, or hf://ORG/MODEL[@REV].",
)
@click.option(
    "--base-signature",
    type=click.Path(path_type=Path),
    help="Signature file of the base (`loradex inspect BASE --signature`), instead of --base.",
)
@click.option(
    "--verify-weights",
    is_flag=True,
    help="Also fingerprint the base and compare it with the fingerprint an adapter records.",
)
@click.option(
    "--serving", metavar="vllm[:max_rank=N]|lorax", help="Check what this server accepts too."
)
@click.option("--strict", is_flag=True, help="Warnings fail the check too.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "junit", "github"]),
    default="text",
    show_default=True,
    help="Report format; github prints workflow annotations.",
)
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report to this file.",
)
@_cache_dir_option
@quiet_option
@pass_state
def check(
    state: CliState,
    adapters: tuple[str, ...],
    base: str | None,
    base_signature: Path | None,
    verify_weights: bool,
    serving: str | None,
    strict: bool,
    fmt: str,
    as_json: bool,
    output: Path | None,
    cache_dir: Path | None,
    quiet: bool,
) -> None:
    """Check that adapters fit a base model (and a server) before publishing or merging.

    Exit status 0: compatible; 1: incompatible, or an input is corrupt or refused; 2: usage error.
    """
    from mergetools.errors import InvalidInputError
    from mergetools.report import render
    from mergetools.serving import parse_serving

    if as_json:
        if fmt not in ("text", "json"):
            raise click.UsageError(f"--json is --format json; it cannot go with --format {fmt}")
        fmt = "json"
    if (base is None) == (base_signature is None):
        raise click.UsageError("give exactly one of --base FOLDER or --base-signature FILE")
    profile = None
    if serving is not None:
        try:
            profile = parse_serving(serving)
        except InvalidInputError as exc:
            raise click.BadParameter(str(exc), param_hint="--serving") from None
    from registry.checks import check as check_by_reference

    # Settings are read only when a reference needs them: plain folders never open a registry.
    with progress_bar("fingerprinting", enabled=not quiet and verify_weights) as bar:
        report = check_by_reference(
            state.settings_factory,
            list(adapters),
            base=base,
            base_signature=base_signature,
            verify_weights=verify_weights,
            serving=profile,
            cache_dir=cache_dir if cache_dir is not None else (lambda: state.settings.cache_dir),
            progress=bar,
            notify=echo_note,
        ).report
    text = render(report, fmt, strict=strict)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        if fmt != "text":
            click.echo(render(report, "text", strict=strict), nl=False, err=True)
    else:
        click.echo(text, nl=False)
    if not report.ok(strict):
        raise click.exceptions.Exit(1)


def print_notes(resolved: Sequence[ResolvedAdapter | ResolvedBase | None]) -> None:
    """Say on stderr which of a same-named folder and registered entry was used."""
    for item in resolved:
        if item is not None and item.note:
            echo_note(item.note)


def _human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _adapter_text(data: dict[str, object]) -> str:
    flags = data["flags"]
    assert isinstance(flags, dict)
    on = [k for k, v in flags.items() if v] or ["none"]
    ranks = data["ranks"]
    assert isinstance(ranks, dict)
    distinct = sorted(set(ranks.values()))
    lines = [
        f"adapter:        {data['name']}",
        f"peft_type:      {data['peft_type']}",
        f"base model:     {data['base_model_name_or_path'] or '(not recorded)'}"
        + (f" @ {data['revision']}" if data.get("revision") else ""),
        f"base fingerprint: {data['base_fingerprint'] or '(not recorded)'}",
        f"target modules: {', '.join(data['target_modules']) or '(none)'}",  # type: ignore[arg-type]
        f"modules:        {len(ranks)} (ranks {', '.join(map(str, distinct)) or '-'}; max {data['max_rank']})",
        f"alpha / scale:  {data['alpha']:g} / {data['scale']:g}"
        + (" (rslora)" if data["use_rslora"] else ""),
        f"flags:          {', '.join(on)}",
        f"dtype:          {data['dtype']}",
        f"parameters:     {data['param_count']:,} in {data['num_tensors']} tensors ({_human_bytes(int(data['nbytes']))})",  # type: ignore[call-overload]
        f"fingerprint:    {data['adapter_fingerprint']}",
        f"vLLM max_lora_rank: {data['vllm_max_lora_rank'] or 'above 512 (not servable)'}",
    ]
    if data.get("replaced_tensors"):
        lines.append(f"replaces:       {', '.join(data['replaced_tensors'])}")  # type: ignore[arg-type]
    return "\n".join(lines) + "\n"


def _checkpoint_text(data: dict[str, object]) -> str:
    lines = [
        f"checkpoint:     {data['name']}"
        + (f" ({data['path']})" if data.get("ref") else "")
        + f" ({data['format']}, {data['num_files']} file(s))",
        f"architectures:  {', '.join(data['architectures']) or '(none)'}",  # type: ignore[arg-type]
        f"model_type:     {data['model_type']}",
        f"dtype:          {data['dtype']} (tensors: "
        + ", ".join(f"{k} x{v}" for k, v in data["tensor_dtypes"].items())  # type: ignore[attr-defined]
        + ")",
        f"vocab_size:     {data['vocab_size']}  tie_word_embeddings: {data['tie_word_embeddings']}",
        f"tensors:        {data['num_tensors']}, {data['param_count']:,} parameters ({_human_bytes(int(data['nbytes']))})",  # type: ignore[call-overload]
        f"name prefix:    {data['name_prefix'] or '(none)'}",
        f"identity:       {data['name_or_path'] or '(not recorded)'}"
        + (f" @ {data['revision']}" if data.get("revision") else ""),
    ]
    if data.get("fingerprint"):
        lines.append(f"fingerprint:    {data['fingerprint']}")
    return "\n".join(lines) + "\n"


@click.command("inspect")
@click.argument("ref", metavar="PATH|REF")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format (--json is --format json), as for `loradex check`.",
)
@click.option(
    "--signature",
    is_flag=True,
    help="Print the base's structural signature (JSON; commit it and use `check --base-signature`).",
)
@click.option(
    "--fingerprint",
    is_flag=True,
    help="Also fingerprint a base checkpoint (reads every byte; cached).",
)
@_cache_dir_option
@click.option(
    "--name", "name_or_path", help="With --signature: record this base identity (e.g. org/model)."
)
@click.option("--revision", help="With --signature: record this base revision.")
@quiet_option
@pass_state
def inspect(
    state: CliState,
    ref: str,
    as_json: bool,
    fmt: str,
    signature: bool,
    fingerprint: bool,
    cache_dir: Path | None,
    name_or_path: str | None,
    revision: str | None,
    quiet: bool,
) -> None:
    """Summarise an adapter or a base checkpoint (or print a base's signature).

    PATH|REF is a folder, a registered adapter (NAME, NAME@7, NAME@alias, sha256:<hex>) or a
    registered base model name.
    """
    from registry.inspection import inspect as inspect_ref

    as_json = as_json or fmt == "json"
    if fingerprint and cache_dir is None:
        cache: Path | None | Callable[[], Path | None] = functools.partial(_default_cache_dir, state)
    else:
        cache = cache_dir
    with progress_bar("fingerprinting", enabled=not quiet and fingerprint) as progress:
        outcome = inspect_ref(
            state.settings_factory,
            ref,
            signature=signature,
            fingerprint=fingerprint,
            cache_dir=cache,
            name_or_path=name_or_path,
            revision=revision,
            progress=progress,
        )
    for note in outcome.notes:
        echo_note(note)
    if outcome.kind == "signature":
        click.echo(json.dumps(outcome.data, indent=1))
    elif as_json:
        click.echo(json.dumps(outcome.data, indent=2))
    elif outcome.kind == "adapter":
        click.echo(_adapter_text(outcome.data), nl=False)
    else:
        click.echo(_checkpoint_text(outcome.data), nl=False)
