"""``loradex pull`` and ``loradex push``: adapters from and to the Hugging Face Hub.

Thin shells over :mod:`registry.hub`; huggingface_hub reads ``HF_ENDPOINT``, ``HF_TOKEN``,
``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE``/``HF_HOME`` itself.
"""

from __future__ import annotations

import logging

import click

from cli.main import CliState, pass_state
from cli.render import echo_fields, echo_json, echo_note, echo_warning, json_option

logger = logging.getLogger(__name__)


@click.command("pull")
@click.argument("ref", metavar="hf://ORG/REPO[@REVISION]")
@click.option("--name", help="Register under this name (default: the repo's last component).")
@click.option("--subfolder", help="The adapter lives in this folder of the repo.")
@json_option
@pass_state
def pull(
    state: CliState, ref: str, name: str | None, subfolder: str | None, as_json: bool
) -> None:
    """Download an adapter from the Hub (or the local Hub cache offline) and register it."""
    from registry.hub_sync import pull_adapter

    state.require_local("loradex pull")
    with state.open_registry() as registry:
        result = pull_adapter(registry, ref, name=name, subfolder=subfolder)
    for warning in result.registered.warnings:
        echo_warning(warning)
    if as_json:
        echo_json(result.to_dict())
        return
    reg = result.registered
    if not reg.created:
        echo_note(f"{reg.ref} already holds these bytes; nothing new was registered")
    echo_fields(
        [
            ("ref", reg.ref),
            ("source", result.snapshot.source),
            ("base_model", result.base_model or "(not recorded)"),
            ("files", ", ".join(result.snapshot.files)),
        ]
    )


@click.command("push")
@click.argument("ref", metavar="REF|checkpoint:ID")
@click.option("--to", "to", required=True, metavar="hf://ORG/REPO", help="The Hub repo to push to.")
@click.option("--private", is_flag=True, help="Create the repo private (when it does not exist).")
@click.option("--revision", help="The branch to commit to (default: main; created if missing).")
@json_option
@pass_state
def push(
    state: CliState, ref: str, to: str, private: bool, revision: str | None, as_json: bool
) -> None:
    """Upload a registered adapter version, or a recorded merged checkpoint (checkpoint:ID,
    see `loradex checkpoints`), with a generated model card, in one commit."""
    from registry.hub_sync import push as push_to_hub

    state.require_local("loradex push")
    with state.open_registry() as registry:
        result = push_to_hub(registry, ref, to=to, private=private, revision=revision)
    for warning in result.warnings:
        echo_warning(warning)
    if as_json:
        echo_json(result.to_dict())
        return
    echo_fields(
        [
            ("ref", result.ref),
            ("repo", f"hf://{result.repo}@{result.revision}"),
            ("commit", result.commit),
            *([("recorded", f"checkpoint {result.recorded_checkpoint}")] if result.recorded_checkpoint else []),
            ("url", result.commit_url),
            ("files", ", ".join(result.files)),
        ]
    )
