"""How many threads a server process runs requests in: a setting, and the pool it sizes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio.to_thread
import pytest

from mergetools.errors import InvalidInputError
from registry.api.app import create_app
from registry.service import Registry
from registry.settings import DEFAULT_SERVER_THREADS, Settings


def test_the_thread_count_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LORADEX_SERVER_THREADS", raising=False)
    assert Settings(home=tmp_path).server_threads == DEFAULT_SERVER_THREADS == 2
    monkeypatch.setenv("LORADEX_SERVER_THREADS", "6")
    assert Settings(home=tmp_path).server_threads == 6
    assert Settings(home=tmp_path, server_threads=3).server_threads == 3


@pytest.mark.parametrize("raw", ["many", "0", "-2", "1.5", "257"])
def test_a_nonsense_thread_count_is_one_clear_error(
    raw: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LORADEX_SERVER_THREADS", raw)
    with pytest.raises(InvalidInputError, match="LORADEX_SERVER_THREADS") as info:
        Settings(home=tmp_path)
    assert "\n" not in str(info.value)


def test_the_pool_keeps_a_connection_per_request_thread(tmp_path: Path) -> None:
    registry = Registry(Settings(home=tmp_path, server_threads=5))
    try:
        assert registry.engine.pool.size() == 5 + 2  # type: ignore[attr-defined]
    finally:
        registry.close()


def test_the_server_runs_requests_in_that_many_threads(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path, server_threads=3))

    async def tokens_while_serving() -> float:
        async with app.router.lifespan_context(app):
            return anyio.to_thread.current_default_thread_limiter().total_tokens

    assert asyncio.run(tokens_while_serving()) == 3
