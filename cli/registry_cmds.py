"""Registry commands: thin shells over :class:`registry.service.Registry`.

Each command takes the settings the root group built once (``CliState``), calls one use case and renders text or ``--json``.
None of them imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from cli.main import CliState, pass_state
from cli.progress import progress_bar, quiet_option
from cli.render import (
    echo_fields,
    echo_finding,
    echo_json,
    echo_next,
    echo_note,
    echo_table,
    echo_warning,
    format_number,
    json_option,
    short_time,
)
from registry.inputs import ParentInput, parse_eval_spec, parse_tag_spec
from registry.records import AliasMoveRow, RegisterResult
from registry.search import SearchQuery, parse_metric_filter, query_metrics

logger = logging.getLogger(__name__)


def _not_nan(value: float, option: str) -> float:
    if value != value:
        raise click.BadParameter(f"expected a number of seconds >= 0, got nan ({option})")
    return value


def _tags(specs: tuple[str, ...]) -> dict[str, str]:
    return dict(parse_tag_spec(s) for s in specs)


# ------------------------------------------------------------------------------ register


@click.command("register")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Adapter name (letters, digits, . _ -).")
@click.option("--base", help="Base checkpoint folder or registered base name to check against.")
@click.option(
    "--eval",
    "evals",
    multiple=True,
    metavar="M=V[,dataset=D][,split=S]",
    help="Eval score (repeatable).",
)
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="Tag (repeatable).")
@click.option("--description", default="", help="Free text.")
@click.option("--source", help="Where it came from (run URL, repo); default: the folder path.")
@click.option(
    "--parent", "parents", multiple=True, metavar="REF", help="Lineage parent version (repeatable)."
)
@click.option(
    "--relation",
    type=click.Choice(["derived-from", "combined-from", "rescaled-from", "extracted-from"]),
    default="derived-from",
    show_default=True,
    help="How this version relates to its --parent versions.",
)
@click.option(
    "--include", "includes", multiple=True, metavar="GLOB",
    help="Also store files matching GLOB (posix path relative to PATH; repeatable).",
)
@click.option(
    "--exclude", "excludes", multiple=True, metavar="GLOB",
    help="Do not store files matching GLOB (repeatable).",
)
@quiet_option
@json_option
@pass_state
def register(
    state: CliState,
    path: Path,
    name: str,
    base: str | None,
    evals: tuple[str, ...],
    tags: tuple[str, ...],
    description: str,
    source: str | None,
    parents: tuple[str, ...],
    relation: str,
    includes: tuple[str, ...],
    excludes: tuple[str, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """Register the PEFT adapter folder PATH as a new version of NAME; prints NAME@VERSION.

    Stores the adapter's own files (config, weights, tokenizer, README.md); --include and
    --exclude change that selection."""
    with state.open_registry() as registry, progress_bar("registering", enabled=not quiet) as bar:
        result = registry.register(
            path,
            name=name,
            base=base,
            evals=[parse_eval_spec(e) for e in evals],
            tags=_tags(tags),
            description=description,
            source=source,
            parents=[ParentInput(ref=p, relation=relation) for p in parents],
            include=includes,
            exclude=excludes,
            progress=bar,
        )
    for warning in result.warnings:
        echo_warning(warning)
    for finding in result.findings:
        echo_finding(finding)
    if not result.created:
        echo_note(_already_registered(result))
    if as_json:
        echo_json(result)
        return
    click.echo(result.ref)


def _already_registered(result: RegisterResult) -> str:
    """``identical content is already registered as x@1; attached 2 eval(s), 1 tag(s)``."""
    status = "" if result.status == "ready" else f" ({result.status})"
    parts = []
    if result.attached_evals:
        parts.append(f"{len(result.attached_evals)} eval(s)")
    if result.attached_tags:
        parts.append(f"{len(result.attached_tags)} tag(s)")
    if result.attached_description is not None:
        parts.append("the description")
    attached = f"attached {', '.join(parts)}" if parts else "nothing new to attach"
    return f"identical content is already registered as {result.ref}{status}; {attached}"


# ------------------------------------------------------------------------------ read


@click.command("list")
@click.argument("pattern", required=False)
@click.option("--limit", default=50, show_default=True)
@click.option("--after", help="Cursor printed by the previous page.")
@json_option
@pass_state
def list_(state: CliState, pattern: str | None, limit: int, after: str | None, as_json: bool) -> None:
    """List adapters (optionally those whose name matches the glob PATTERN)."""
    with state.open_registry() as registry:
        page = registry.list_adapters(pattern=pattern, limit=limit, after=after)
    if as_json:
        echo_json(page)
        return
    echo_table(
        ["name", "latest", "versions", "created", "by", "description"],
        [
            [
                a.name,
                a.latest or "-",
                a.versions,
                short_time(a.to_dict()["created_at"]),
                a.created_by,
                a.description,
            ]
            for a in page.items
        ],
    )
    echo_next(page.next_cursor)


def _version_rows(items: list, metrics: list[str]) -> None:  # type: ignore[type-arg]
    echo_table(
        ["ref", "status", "base", "rank", "modules", "aliases", *metrics],
        [
            [
                v.ref,
                v.status,
                v.base or (v.base_fingerprint or "")[:12],
                v.max_rank,
                ",".join(v.target_modules),
                ",".join(v.aliases),
                *[format_number(v.scores.get(m)) for m in metrics],
            ]
            for v in items
        ],
    )


@click.command("search")
@click.argument("filters", nargs=-1, metavar="[METRIC>=VALUE]...")
@click.option("--name", help="Adapter name glob, e.g. 'support-*'.")
@click.option("--base", help="Base model name, fingerprint, or base_model_name_or_path.")
@click.option("--module", "target_module", help="Target module leaf name, e.g. q_proj.")
@click.option("--max-rank", type=int, help="Only versions whose largest rank is <= this.")
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="Tag filter (repeatable).")
@click.option(
    "--sort",
    help="Sort by this metric, best first (lowest for loss-like metrics); "
    "'+metric' ascending, '-metric' descending values.",
)
@click.option("--dataset", help="Use only scores measured on this dataset.")
@click.option("--split", help="Use only scores measured on this split.")
@click.option("--all", "include_yanked", is_flag=True, help="Include yanked versions.")
@click.option("--limit", default=50, show_default=True)
@click.option("--after", help="Cursor printed by the previous page.")
@json_option
@pass_state
def search(
    state: CliState,
    filters: tuple[str, ...],
    name: str | None,
    base: str | None,
    target_module: str | None,
    max_rank: int | None,
    tags: tuple[str, ...],
    sort: str | None,
    dataset: str | None,
    split: str | None,
    include_yanked: bool,
    limit: int,
    after: str | None,
    as_json: bool,
) -> None:
    """Search versions by name, base, module, rank, tag and metric thresholds (accuracy>=0.8)."""
    query = SearchQuery(
        name=name,
        base=base,
        target_module=target_module,
        max_rank=max_rank,
        tags=_tags(tags),
        metrics=tuple(parse_metric_filter(f) for f in filters),
        sort=sort,
        dataset=dataset,
        split=split,
        include_yanked=include_yanked,
        limit=limit,
        after=after,
    )
    with state.open_registry() as registry:
        page = registry.search(query)
    if as_json:
        echo_json(page)
        return
    metrics = query_metrics(query)
    _version_rows(page.items, metrics)
    echo_next(page.next_cursor)


@click.command("show")
@click.argument("ref")
@json_option
@pass_state
def show(state: CliState, ref: str, as_json: bool) -> None:
    """Show one version: summary, files, tags, evals, aliases."""
    with state.open_registry() as registry:
        detail = registry.show(ref)
    if as_json:
        echo_json(detail)
        return
    data = detail.to_dict()
    status = detail.status + (f" ({detail.status_reason})" if detail.status_reason else "")
    lines = [
        ("ref", detail.ref + ("  [latest]" if detail.latest else "")),
        ("status", status),
        ("created", f"{short_time(data['created_at'])} by {detail.created_by}"),
        ("description", detail.description),
        ("base", (detail.base or {}).get("name") or detail.base_name_or_path or "-"),
        ("base fingerprint", detail.base_fingerprint or "-"),
        ("target modules", ", ".join(detail.target_modules)),
        ("rank (max)", str(detail.max_rank)),
        ("alpha", format_number(detail.alpha)),
        ("dora / rslora", f"{detail.use_dora} / {detail.use_rslora}"),
        ("dtype", detail.dtype),
        ("params", f"{detail.param_count:,}"),
        ("bytes", f"{detail.nbytes:,}"),
        ("weights sha256", detail.weights_sha256),
        ("aliases", ", ".join(detail.aliases) or "-"),
        ("tags", ", ".join(f"{k}={v}" for k, v in detail.tags.items()) or "-"),
        ("source", detail.source or "-"),
    ]
    echo_fields(lines)
    if detail.evals:
        click.echo("evals:")
        for e in detail.evals:
            where = "/".join(x for x in (e.dataset, e.split) if x)
            click.echo(
                f"  {e.metric} = {format_number(e.value)}"
                + (f"  ({where})" if where else "")
                + f"  [{e.direction} is better{', best' if e.best else ''}]"
            )
    if detail.files:
        click.echo("files:")
        for f in detail.files:
            click.echo(f"  {f.path}  {f.size:,} bytes  sha256:{f.sha256[:16]}")


@click.command("versions")
@click.argument("name")
@json_option
@pass_state
def versions(state: CliState, name: str, as_json: bool) -> None:
    """List every version of NAME, newest first (yanked and deleted ones included)."""
    with state.open_registry() as registry:
        rows = registry.versions(name)
    if as_json:
        echo_json(rows)
        return
    _version_rows(rows, [])


# ------------------------------------------------------------------------------ eval / tag


@click.group("eval")
def eval_() -> None:
    """Eval scores of versions."""


@eval_.command("add")
@click.argument("ref")
@click.argument("specs", nargs=-1, required=True, metavar="METRIC=VALUE[,dataset=D][,split=S]...")
@json_option
@pass_state
def eval_add(state: CliState, ref: str, specs: tuple[str, ...], as_json: bool) -> None:
    """Record eval scores for REF."""
    evals = [parse_eval_spec(s) for s in specs]
    with state.open_registry() as registry:
        rows = registry.add_evals(ref, evals)
    if as_json:
        echo_json(rows)
    else:
        for r in rows:
            click.echo(f"{r.metric} = {format_number(r.value)}")
    if len(rows) < len(evals):
        known = len(evals) - len(rows)
        echo_note(f"{known} eval(s) were already recorded for {ref}; not recorded again")


@eval_.command("list")
@click.argument("ref")
@json_option
@pass_state
def eval_list(state: CliState, ref: str, as_json: bool) -> None:
    """List the eval scores of REF."""
    with state.open_registry() as registry:
        rows = registry.list_evals(ref)
    if as_json:
        echo_json(rows)
        return
    echo_table(
        ["metric", "value", "better", "best", "dataset", "split", "recorded", "by"],
        [
            [
                r.metric,
                format_number(r.value),
                r.direction,
                "*" if r.best else "",
                r.dataset,
                r.split,
                short_time(r.to_dict()["recorded_at"]),
                r.recorded_by,
            ]
            for r in rows
        ],
    )


@click.command("tag")
@click.argument("ref")
@click.argument("tags", nargs=-1, metavar="KEY=VALUE...")
@click.option("--rm", "remove", multiple=True, metavar="KEY", help="Remove this tag (repeatable).")
@json_option
@pass_state
def tag(state: CliState, ref: str, tags: tuple[str, ...], remove: tuple[str, ...], as_json: bool) -> None:
    """Set (KEY=VALUE) and remove (--rm KEY) tags of REF; prints its tags."""
    if not tags and not remove:
        raise click.UsageError("give KEY=VALUE to set or --rm KEY to remove")
    with state.open_registry() as registry:
        result = registry.set_tags(ref, set_tags=_tags(tags), remove=list(remove))
    if as_json:
        echo_json(result)
        return
    for key, value in result.items():
        click.echo(f"{key}={value}")


# ------------------------------------------------------------------------------ aliases


@click.group("alias")
def alias() -> None:
    """Movable pointers (production, staging, ...) with a history of every move."""


@alias.command("set")
@click.argument("ref")
@click.argument("alias_name", metavar="ALIAS")
@json_option
@pass_state
def alias_set(state: CliState, ref: str, alias_name: str, as_json: bool) -> None:
    """Point ALIAS of REF's adapter at REF (e.g. `alias set support@7 production`)."""
    with state.open_registry() as registry:
        move = registry.set_alias(ref, alias_name)
        key = registry.resolve(ref)
    if as_json:
        echo_json(_alias_move(key.name, move))
        return
    before = f" (was @{move.from_version})" if move.from_version else ""
    click.echo(f"{key.name}@{alias_name} -> {key.name}@{move.to_version}{before}")


@alias.command("rm")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@json_option
@pass_state
def alias_rm(state: CliState, name: str, alias_name: str, as_json: bool) -> None:
    """Remove ALIAS of adapter NAME."""
    with state.open_registry() as registry:
        move = registry.remove_alias(name, alias_name)
    if as_json:
        echo_json(_alias_move(name, move))
        return
    click.echo(f"removed {name}@{alias_name} (was @{move.from_version})")


@alias.command("history")
@click.argument("name")
@click.argument("alias_name", metavar="[ALIAS]", required=False)
@json_option
@pass_state
def alias_history(state: CliState, name: str, alias_name: str | None, as_json: bool) -> None:
    """Every move of NAME's aliases: when, who, from, to."""
    with state.open_registry() as registry:
        rows = registry.alias_history(name, alias_name)
    if as_json:
        echo_json([_alias_move(name, m) for m in rows])
        return
    echo_table(
        ["alias", "from", "to", "how", "when", "by"],
        [
            [
                m.alias,
                m.from_version or "-",
                m.to_version or "(removed)",
                m.kind or "-",
                short_time(m.to_dict()["moved_at"]),
                m.moved_by,
            ]
            for m in rows
        ],
    )


def _alias_move(name: str, move: AliasMoveRow) -> dict[str, object]:
    """An alias move as JSON: the adapter's ``name``, the alias, from/to versions and refs."""
    data = move.to_dict()
    return {
        "name": name,
        **data,
        "from_ref": f"{name}@{move.from_version}" if move.from_version else None,
        "to_ref": f"{name}@{move.to_version}" if move.to_version else None,
    }


# ------------------------------------------------------------------------------ status changes


@click.command("yank")
@click.argument("ref")
@click.option("--reason", required=True, help="Why (shown wherever the version is).")
@json_option
@pass_state
def yank(state: CliState, ref: str, reason: str, as_json: bool) -> None:
    """Hide REF from `latest` and aliases; it stays fetchable as NAME@VERSION."""
    with state.open_registry() as registry:
        key = registry.yank(ref, reason=reason)
    if as_json:
        echo_json({**key.to_dict(), "reason": reason})
        return
    click.echo(f"yanked {key.ref}")


@click.command("unyank")
@click.argument("ref")
@json_option
@pass_state
def unyank(state: CliState, ref: str, as_json: bool) -> None:
    """Make a yanked version ready again."""
    with state.open_registry() as registry:
        key = registry.unyank(ref)
    if as_json:
        echo_json(key)
        return
    click.echo(f"unyanked {key.ref}")


@click.command("delete")
@click.argument("ref")
@click.option("--purge", is_flag=True, help="Confirm: remove the files for good.")
@json_option
@pass_state
def delete(state: CliState, ref: str, purge: bool, as_json: bool) -> None:
    """Delete version REF and remove its files; the number stays retired."""
    with state.open_registry() as registry:
        key = registry.delete(ref, purge=purge)
    if as_json:
        echo_json(key)
        return
    click.echo(f"deleted {key.ref}")


# ------------------------------------------------------------------------------ lineage, files


@click.command("lineage")
@click.argument("ref")
@json_option
@pass_state
def lineage(state: CliState, ref: str, as_json: bool) -> None:
    """Parents, children and merged checkpoints of REF."""
    with state.open_registry() as registry:
        view = registry.lineage(ref)
    if as_json:
        echo_json(view)
        return
    click.echo(view.ref)
    for p in view.parents:
        extra = ", ".join(
            f"{k}={v}"
            for k, v in (("method", p.method), ("weight", p.weight), ("seed", p.seed))
            if v is not None
        )
        click.echo(f"  {p.relation} {p.ref}" + (f" ({extra})" if extra else ""))
    for c in view.children:
        click.echo(f"  parent-of {c.ref} ({c.relation})")
    for cp in view.checkpoints:
        click.echo(
            f"  merged-into checkpoint {cp['id']} {cp['location']} (weight {format_number(cp['weight'])})"
        )


@click.command("export")
@click.argument("ref")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to write.")
@click.option(
    "--force", is_flag=True,
    help="Replace --out if it is an earlier loradex output (never any other non-empty folder).",
)
@quiet_option
@json_option
@pass_state
def export(state: CliState, ref: str, out: Path, force: bool, quiet: bool, as_json: bool) -> None:
    """Write REF's stored files, verified byte for byte, to --out (a PEFT folder)."""
    with state.open_registry() as registry, progress_bar("exporting", enabled=not quiet) as bar:
        key = registry.resolve(ref)
        path = registry.export(key.ref, out, force=force, progress=bar)
    if as_json:
        echo_json({**key.to_dict(), "out": str(path)})
        return
    click.echo(f"exported {key.ref} to {path}")


@click.command("checkpoints")
@click.option("--ref", help="Only checkpoints that contain this version.")
@click.option("--limit", default=50, show_default=True)
@json_option
@pass_state
def checkpoints(state: CliState, ref: str | None, limit: int, as_json: bool) -> None:
    """Merged checkpoints recorded by `loradex merge`, newest first."""
    with state.open_registry() as registry:
        page = registry.list_checkpoints(ref=ref, limit=limit)
    if as_json:
        echo_json(page)
        return
    echo_table(
        ["id", "location", "members", "base", "created"],
        [
            [
                c.id,
                c.location,
                " + ".join(f"{m['ref']}*{format_number(m['weight'])}" for m in c.members),
                c.base or "-",
                short_time(c.to_dict()["created_at"]),
            ]
            for c in page.items
        ],
    )


@click.command("gc")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    callback=lambda _ctx, _param, value: _not_nan(value, "--grace"),
    default=3600.0,
    show_default=True,
    help="Keep unreferenced blobs younger than this many seconds.",
)
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@quiet_option
@json_option
@pass_state
def gc(state: CliState, grace: float, dry_run: bool, quiet: bool, as_json: bool) -> None:
    """Remove stored blobs that no version references (past a grace period), and temp files of killed writers."""
    state.require_local("loradex gc")
    with state.open_registry() as registry, progress_bar("scanning blobs", enabled=not quiet) as bar:
        result = registry.gc(grace_s=grace, dry_run=dry_run, progress=bar)
    if as_json:
        echo_json(result)
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"{verb} {len(result.removed)} of {result.scanned} blobs ({result.bytes_freed:,} bytes); {result.kept_in_grace} unreferenced kept in the grace period"
    )
    for temp in result.temps:
        click.echo(f"{temp['action']} {temp['path']} ({temp['size']:,} bytes; {temp['reason']})")


@click.command("verify")
@click.argument("ref", required=False)
@quiet_option
@json_option
@pass_state
def verify(state: CliState, ref: str | None, quiet: bool, as_json: bool) -> None:
    """Re-hash the stored files of REF (default: every version); exit 1 if any is missing or corrupt."""
    state.require_local("loradex verify")
    with state.open_registry() as registry, progress_bar("verifying", enabled=not quiet) as bar:
        bad = registry.verify(ref, progress=bar)
        store = registry.settings.blob_store_description
    missing = [item for item in bad if item["problem"] == "missing"]
    corrupt = [item for item in bad if item["problem"] == "corrupt"]
    if as_json:
        echo_json({"ok": not bad, "missing": missing, "corrupt": corrupt})
    for item in [] if as_json else missing + corrupt:
        click.echo(
            f"{item['problem']}: {item['ref']} {item['path']} (sha256:{item['sha256'][:16]})",
            err=True,
        )
    if not as_json and missing:
        click.echo(
            f"{len(missing)} stored file(s) are missing from the blob store at {store} — on a "
            "team registry set LORADEX_BLOB_URL to the shared store; otherwise restore it from a "
            "backup or register the same folder again",
            err=True,
        )
    if not as_json and corrupt:
        click.echo(
            f"{len(corrupt)} stored file(s) no longer match their sha256; they are never served — "
            "register the same folder again to repair them",
            err=True,
        )
    if not as_json and not bad:
        click.echo("all stored files match their sha256")
    if bad:
        raise click.exceptions.Exit(1)


@click.command("journal")
@click.argument("name", required=False)
@click.option("--limit", default=50, show_default=True)
@click.option(
    "--after",
    type=click.IntRange(min=0),
    help="Only events numbered above this one, oldest first (follow the journal).",
)
@json_option
@pass_state
def journal(state: CliState, name: str | None, limit: int, after: int | None, as_json: bool) -> None:
    """The append-only event journal, newest first (optionally of one adapter)."""
    with state.open_registry() as registry:
        rows = registry.events(name=name, limit=limit, after=after)
    if as_json:
        echo_json(rows)
        return
    echo_table(
        ["id", "when", "who", "event", "subject"],
        [[e.id, short_time(e.to_dict()["at"]), e.actor, e.kind, e.subject] for e in rows],
    )


# ------------------------------------------------------------------------------ bases


@click.group("base")
def base() -> None:
    """Base models: fingerprint, structural signature, source."""


@base.command("add")
@click.argument("path", metavar="PATH|hf://ORG/MODEL[@REV]")
@click.option("--name", help="Name (default: config _name_or_path or the folder name; the repo's last component for hf://).")
@click.option("--repo", help="Hub repo it came from (org/name); not with hf://.")
@click.option("--revision", help="Hub revision it came from; not with hf://.")
@click.option("--description", default="", help="Free text.")
@click.option(
    "--store",
    is_flag=True,
    help="Also store every file of the folder in the blob store, so machines without it can use the base (hf://: download the weights).",
)
@quiet_option
@json_option
@pass_state
def base_add(
    state: CliState,
    path: str,
    name: str | None,
    repo: str | None,
    revision: str | None,
    description: str,
    store: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Register the base checkpoint folder PATH (fingerprints every byte once; cached), or a
    Hub checkpoint hf://ORG/MODEL[@REV] (headers only; with --store its weights too)."""
    hub = path.startswith("hf://")
    if hub and (repo is not None or revision is not None):
        raise click.UsageError("--repo and --revision are for a folder; hf://ORG/MODEL@REV names both")
    folder = None if hub else click.Path(exists=True, file_okay=False, path_type=Path).convert(path, None, None)
    label = "fingerprinting" if not hub or store else "reading headers"
    with state.open_registry() as registry, progress_bar(label, enabled=not quiet) as bar:
        if folder is None:
            from registry.hub_sync import add_hub_base

            row = add_hub_base(
                registry, path, name=name, description=description, store=store, progress=bar
            )
        else:
            row = registry.add_base(
                folder,
                name=name,
                repo=repo,
                revision=revision,
                description=description,
                store=store,
                progress=bar,
            )
    if as_json:
        echo_json(row)
        return
    stored = f" (stored: {row.stored_files} files)" if row.stored else ""
    fingerprint = f"sha256:{row.fingerprint[:16]}" if row.fingerprint else "(no fingerprint: headers only)"
    source = f" from hf://{row.source_repo}@{row.source_revision}" if hub else ""
    click.echo(f"{row.name} {fingerprint}{stored}{source}")


@base.command("list")
@json_option
@pass_state
def base_list(state: CliState, as_json: bool) -> None:
    """List registered base models."""
    with state.open_registry() as registry:
        rows = registry.list_bases()
    if as_json:
        echo_json(rows)
        return
    echo_table(
        ["name", "fingerprint", "architectures", "source"],
        [
            [
                b.name,
                (b.fingerprint or "")[:16],
                ",".join(b.architectures),
                b.source_path or b.source_repo or "",
            ]
            for b in rows
        ],
    )


@base.command("show")
@click.argument("ref")
@json_option
@pass_state
def base_show(state: CliState, ref: str, as_json: bool) -> None:
    """Show a registered base (by name or sha256:<fingerprint prefix>)."""
    with state.open_registry() as registry:
        row = registry.get_base(ref)
    if as_json:
        echo_json(row)
        return
    sig = row.signature or {}
    echo_fields(
        [
            ("name", row.name),
            ("fingerprint", row.fingerprint or "- (registered from its headers only)"),
            ("architectures", ", ".join(row.architectures)),
            ("source", row.source_path or "-"),
            ("repo", f"{row.source_repo or '-'}@{row.source_revision or '-'}"),
            (
                "stored",
                f"yes ({row.stored_files} files, {row.stored_bytes} bytes)" if row.stored else "no",
            ),
            ("tensors", str(len(sig.get("tensors") or {}))),
            ("vocab size", str(sig.get("vocab_size", "-"))),
        ]
    )


# The alias group's publish-related subcommands (list, policy, protect, unprotect) live with
# `loradex publish` in cli/publish_cmds.py.
def _add_alias_commands() -> None:
    from cli.publish_cmds import ALIAS_COMMANDS

    for command in ALIAS_COMMANDS:
        alias.add_command(command)


_add_alias_commands()
