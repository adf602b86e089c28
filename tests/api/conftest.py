"""Fixtures of the HTTP API tests: the app over the parametrized registry, tokens, uploads."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def app(registry: Any) -> Any:
    from registry.api.app import create_app

    return create_app(registry.settings, registry=registry)


@pytest.fixture
def client(app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def token(registry: Any) -> Callable[..., dict[str, str]]:
    """``token("write", prefix=None, name=None)`` -> Authorization headers for a new token."""

    def make(scope: str = "write", **kwargs: Any) -> dict[str, str]:
        created = registry.create_token(scope=scope, **kwargs)
        return {"Authorization": f"Bearer {created.secret}"}

    return make


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def upload(client: Any, token: Callable[..., dict[str, str]]) -> Callable[..., dict[str, str]]:
    """``upload(folder)`` -> {file name: sha256} of its files, each PUT as a blob."""
    headers = token("write", name="uploader")

    def put(folder: Path) -> dict[str, str]:
        files = {}
        for path in sorted(folder.iterdir()):
            data = path.read_bytes()
            sha = sha256_of(data)
            response = client.put(f"/api/v1/blobs/{sha}", content=data, headers=headers)
            assert response.status_code in (200, 201), response.text
            files[path.name] = sha
        return files

    return put
