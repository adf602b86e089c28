"""``loradex serve``: the registry's HTTP API (``registry/api``) under uvicorn."""

from __future__ import annotations

import logging

import click

from cli.main import CliState, pass_state
from cli.render import echo_warning

logger = logging.getLogger(__name__)

# An import string, not an import: the CLI and registry.api never import each other, and each
# worker process builds its own app from the environment.
APP_FACTORY = "registry.api.app:app_from_environment"


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port."
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Worker processes: one per CPU core serves the most (each runs requests in "
    "LORADEX_SERVER_THREADS threads).",
)
@pass_state
def serve(state: CliState, host: str, port: int, workers: int) -> None:
    """Serve the registry's HTTP API (routes under /api/v1; tokens from `loradex token`)."""
    import uvicorn

    state.require_local("loradex serve")
    with state.open_registry():  # a registry that cannot open fails here, as one error line
        pass
    if host not in ("127.0.0.1", "localhost", "::1"):
        echo_warning(
            f"listening on {host}: anyone who can reach it can try tokens; put TLS in front"
        )
    uvicorn.run(APP_FACTORY, factory=True, host=host, port=port, workers=workers, log_level="info")
