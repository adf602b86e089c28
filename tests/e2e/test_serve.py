"""``loradex serve`` for real (a uvicorn subprocess on 127.0.0.1) and ``loradex token``."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli


def loradex(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, (result.output, result.stderr if hasattr(result, "stderr") else "")
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(cli_env: dict[str, str]) -> Iterator[str]:
    """A real `loradex serve` on a free port; yields its base URL."""
    import httpx

    port = _free_port()
    env = {**os.environ, **cli_env}
    process = subprocess.Popen(
        [sys.executable, "-c", "from cli.main import main; main()", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/api/v1/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"loradex serve did not start: {output}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _create_token(*args: str) -> str:
    out = json.loads(loradex("token", "create", *args, "--json").output)
    assert out["secret"].startswith("ldx_")
    return str(out["secret"])


def test_upload_register_download_cas_over_http(
    server: str, cli_env: dict[str, str], make_adapter: Callable[..., Path]
) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {_create_token('--scope', 'write', '--name', 'trainer')}"}
    api = f"{server}/api/v1"
    with httpx.Client(headers=headers, timeout=30) as http:
        assert http.get(f"{api}/adapters", headers={"Authorization": ""}).status_code == 401
        no_token = httpx.get(f"{api}/adapters")
        assert no_token.status_code == 401
        assert no_token.headers["content-type"] == "application/problem+json"
        versions, seen = [], set()
        for seed in (1, 2):
            folder = make_adapter(seed=seed)
            files = {}
            for path in sorted(folder.iterdir()):
                data = path.read_bytes()
                sha = hashlib.sha256(data).hexdigest()
                new = sha not in seen  # the configs of both adapters are the same bytes
                assert http.head(f"{api}/blobs/{sha}").status_code == (404 if new else 200)
                assert http.put(f"{api}/blobs/{sha}", content=data).status_code == (201 if new else 200)
                seen.add(sha)
                files[path.name] = sha
            created = http.post(f"{api}/adapters/support/versions", json={"files": files})
            assert created.status_code == 201, created.text
            versions.append(created.json()["version"])
        assert versions == [1, 2]

        record = http.get(f"{api}/adapters/support/versions/latest").json()
        weights = next(f for f in record["files"] if f["path"] == "adapter_model.safetensors")
        url = f"{api}/adapters/support/versions/2/files/adapter_model.safetensors"
        whole = http.get(url)
        assert hashlib.sha256(whole.content).hexdigest() == weights["sha256"]
        part = http.get(url, headers={"Range": "bytes=8-15"})
        assert part.status_code == 206 and part.content == whole.content[8:16]
        assert part.headers["content-range"] == f"bytes 8-15/{weights['size']}"

        alias = f"{api}/adapters/support/aliases/production"
        assert http.put(alias, json={"version": 1, "expected_version": None}).status_code == 200
        assert http.put(alias, json={"version": 2, "expected_version": 1}).status_code == 200
        conflict = http.put(alias, json={"version": 1, "expected_version": 1})
        assert conflict.status_code == 409 and conflict.json()["code"] == "alias_moved"
        assert conflict.json()["current_version"] == 2

    assert "trainer" in loradex("journal", "--json").output


def test_a_huge_declared_content_length_is_413_before_the_body(server: str) -> None:
    secret = _create_token("--scope", "write")
    port = int(server.rsplit(":", 1)[1])
    sha = "0" * 64
    request = (
        f"PUT /api/v1/blobs/{sha} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Length: {10**15}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request + b"x" * 1024)  # a few bytes of a body that never ends
        response = b""
        while b"\r\n\r\n" not in response or b'"code"' not in response:
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"application/problem+json" in head
    assert b'"upload_too_large"' in body


def test_token_commands(cli_env: dict[str, str]) -> None:
    created = json.loads(
        loradex("token", "create", "--scope", "read", "--prefix", "support-", "--expires", "30d",
                "--name", "fleet", "--json").output
    )
    assert created["scope"] == "read" and created["prefix"] == "support-" and created["expires_at"]
    text = loradex("token", "create", "--scope", "admin").output
    assert "ldx_" in text and "scope admin" in text
    listed = json.loads(loradex("token", "list", "--json").output)
    assert [t["name"] for t in listed] == ["fleet", "tester"]
    assert all("secret" not in t for t in listed) and created["secret"] not in json.dumps(listed)
    assert "fleet" in loradex("token", "list").output
    revoked = json.loads(loradex("token", "revoke", str(created["id"]), "--json").output)
    assert revoked["state"] == "revoked"
    assert "revoked token" in loradex("token", "revoke", str(created["id"])).output

    bad = loradex("token", "create", "--scope", "read", "--expires", "soon", code=1)
    assert bad.output.startswith("error: token lifetime 'soon' is not a duration")
    missing = loradex("token", "revoke", "999", code=1)
    assert "no API token 999" in missing.output
    assert loradex("token", "create", "--scope", "root", code=2).exit_code == 2
