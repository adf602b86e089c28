""":class:`registry.remote.RemoteRegistry` in-process: over the real app (through starlette's
test transport) for records and errors, and over a scripted transport for retries, broken
downloads and a server that is down."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mergetools.errors import ConflictError, InvalidInputError, NotFoundError
from registry.errors import (
    AliasMovedError,
    AuthenticationError,
    CorruptBlobError,
    NotRemoteError,
    PermissionDeniedError,
    ServerUnavailableError,
)


class _Buffered(httpx.BaseTransport):
    """starlette's test transport, its responses read into plain httpx ones."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.seen: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path))
        response = self.inner.handle_request(request)
        content = response.read()
        return httpx.Response(response.status_code, headers=response.headers, content=content)


def _client_settings(tmp_path: Path, token: str | None, server: str = "http://loradex.test") -> Any:
    from registry.settings import Settings

    return Settings(home=tmp_path / "client", server=server, token=token, user="client")


@pytest.fixture
def remote(app: Any, registry: Any, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``remote(scope="write", **token_kwargs)`` -> a RemoteRegistry over the in-process app."""
    from fastapi.testclient import TestClient

    from registry.remote import RemoteRegistry

    made: list[Any] = []
    test_client = TestClient(app, raise_server_exceptions=False)

    def make(scope: str = "admin", **kwargs: Any) -> Any:
        secret = registry.create_token(scope=scope, **kwargs).secret
        client = RemoteRegistry(
            _client_settings(tmp_path, secret),
            transport=_Buffered(test_client._transport),
            sleep=lambda _s: None,
        )
        made.append(client)
        return client

    with test_client:
        yield make
    for client in made:
        client.close()


def test_records_and_errors_are_the_local_registrys(
    remote: Callable[..., Any], registry: Any, make_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    client = remote("admin", name="tester")
    folder = make_adapter(seed=1, extra_files={"notes.txt": "n"})
    (folder / "sub").mkdir()
    (folder / "sub" / "extra.txt").write_text("nested")
    result = client.register(folder, name="support", include=["notes.txt", "sub/*"])
    assert result.created and result.ref == "support@1"
    again = client.register(folder, name="support", include=["notes.txt", "sub/*"])
    assert not again.created and again.version == 1  # retried register: same version
    # the same records (as rendered: SQLite hands the local registry naive UTC times)
    for method, args in (
        ("show", ("support@1",)),
        ("resolve", ("support",)),
        ("list_adapters", ()),
        ("lineage", ("support@1",)),
    ):
        assert getattr(client, method)(*args).to_dict() == getattr(registry, method)(*args).to_dict()
    assert [v.to_dict() for v in client.versions("support")] == [v.to_dict() for v in registry.versions("support")]
    client.set_alias("support@1", "production")
    assert [m.to_dict() for m in client.alias_history("support")] == [
        m.to_dict() for m in registry.alias_history("support")
    ]
    with pytest.raises(AliasMovedError) as moved:
        client.set_alias("support@1", "production", expected_version=None)
    assert moved.value.current_version == 1 and moved.value.code == "alias_moved"
    with pytest.raises(NotFoundError, match="nope"):
        client.show("nope@1")
    with pytest.raises(ConflictError):
        client.delete("support@1", purge=True)  # the alias points at it
    out = client.export("support@1", tmp_path / "exported")
    assert (out / "sub" / "extra.txt").read_text() == "nested"
    with pytest.raises(NotRemoteError, match="gc"):
        client.gc(grace_s=0, dry_run=True)


def test_scopes_and_tokens_come_back_as_their_errors(remote: Callable[..., Any], tmp_path: Path, app: Any) -> None:
    from fastapi.testclient import TestClient

    from registry.remote import RemoteRegistry

    reader = remote("read", name="reader")
    with pytest.raises(PermissionDeniedError) as denied:
        reader.set_tags("x@1", set_tags={"a": "b"})
    assert denied.value.code == "forbidden"
    with TestClient(app) as test_client:
        anonymous = RemoteRegistry(_client_settings(tmp_path, "ldx_not_a_token"), transport=_Buffered(test_client._transport))
        with pytest.raises(AuthenticationError):
            anonymous.list_adapters()


def _scripted(responses: list[Any]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = responses.pop(0)
        if isinstance(step, Exception):
            raise step
        return step  # type: ignore[no-any-return]

    return httpx.MockTransport(handler), seen


def _page() -> httpx.Response:
    return httpx.Response(200, json={"items": [], "next_cursor": None})


def test_connection_errors_and_gateway_answers_are_retried_with_backoff(tmp_path: Path) -> None:
    from registry.remote import RemoteRegistry

    waits: list[float] = []
    transport, seen = _scripted(
        [httpx.ConnectError("refused"), httpx.Response(503, text="upstream down"), _page()]
    )
    client = RemoteRegistry(_client_settings(tmp_path, "t"), transport=transport, sleep=waits.append)
    assert client.list_adapters().items == []
    assert len(seen) == 3 and waits == [0.25, 0.5]
    assert seen[0].headers["authorization"] == "Bearer t"


def test_a_server_that_stays_down_is_one_error(tmp_path: Path) -> None:
    from registry.remote import RemoteRegistry

    transport, seen = _scripted([httpx.ConnectError("refused")] * 4)
    client = RemoteRegistry(_client_settings(tmp_path, None), transport=transport, sleep=lambda _s: None)
    with pytest.raises(ServerUnavailableError, match="could not be reached .*refused.* after 4 attempt"):
        client.list_adapters()
    assert len(seen) == 4


def test_a_schema_mismatch_is_not_retried(tmp_path: Path) -> None:
    from registry.errors import SchemaVersionError
    from registry.remote import RemoteRegistry

    problem = {"type": "x", "title": "t", "status": 503, "detail": "schema is newer", "code": "schema_version"}
    transport, seen = _scripted([httpx.Response(503, json=problem)])
    client = RemoteRegistry(_client_settings(tmp_path, None), transport=transport, sleep=lambda _s: None)
    with pytest.raises(SchemaVersionError, match="schema is newer"):
        client.list_adapters()
    assert len(seen) == 1


def test_a_download_that_does_not_match_its_digest_is_never_written(tmp_path: Path) -> None:
    import hashlib

    from registry.remote import RemoteRegistry

    good = b"the right bytes"
    sha = hashlib.sha256(good).hexdigest()
    transport, seen = _scripted(
        [httpx.Response(200, content=b"the wrong bytes")] * 3 + [httpx.Response(200, content=good)]
    )
    client = RemoteRegistry(_client_settings(tmp_path, None), transport=transport, sleep=lambda _s: None)
    dest = tmp_path / "out" / "f.bin"
    client._download("/x", dest, sha256=sha, size=len(good), what="f.bin")
    assert dest.read_bytes() == good and len(seen) == 4
    transport, _ = _scripted([httpx.Response(200, content=b"the wrong bytes")] * 4)
    client = RemoteRegistry(_client_settings(tmp_path, None), transport=transport, sleep=lambda _s: None)
    with pytest.raises(CorruptBlobError, match="does not match its sha256"):
        client._download("/x", tmp_path / "out" / "g.bin", sha256=sha, size=len(good), what="g.bin")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f.bin"]  # no temp left


def test_a_server_that_goes_away_mid_export_leaves_no_folder(
    registry: Any, make_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    """The record and the first file arrive, then the server is gone: one error, and neither
    the output folder nor a temp folder beside it is left."""
    from registry.remote import RemoteRegistry

    registry.register(make_adapter(seed=1, extra_files={"README.md": "r"}), name="support")
    detail = registry.show("support@1")
    first = min(detail.files, key=lambda f: f.path)

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/versions/1") or path.endswith("/versions/latest"):
            return httpx.Response(200, json=detail.to_dict())
        if path.endswith(f"/files/{first.path}"):
            return httpx.Response(200, content=registry.blobs.path_for(first.sha256).read_bytes())
        raise httpx.ConnectError("connection refused")

    client = RemoteRegistry(
        _client_settings(tmp_path, "t"), transport=httpx.MockTransport(handler), sleep=lambda _s: None
    )
    (tmp_path / "exports").mkdir()
    out = tmp_path / "exports" / "support"
    with pytest.raises(ServerUnavailableError, match="could not be reached"):
        client.export("support@1", out)
    assert not out.exists()
    assert list((tmp_path / "exports").iterdir()) == []


@pytest.mark.parametrize(
    ("server", "token", "message"),
    [
        ("ftp://registry", None, "not an http:// or https:// URL"),
        ("http://", None, "not an http:// or https:// URL"),
        ("http://host:0", None, "not an http:// or https:// URL"),
        ("http://a b", None, "not an http:// or https:// URL"),
        ("http://" + "h" * 3000, None, "…"),
        ("http://ok", "ldx_ä", "LORADEX_TOKEN is not an API token"),
        ("http://ok", "ldx a", "LORADEX_TOKEN is not an API token"),
    ],
)
def test_server_and_token_settings_are_checked(tmp_path: Path, server: str, token: str | None, message: str) -> None:
    from mergetools.errors import InvalidInputError
    from registry.settings import Settings

    with pytest.raises(InvalidInputError, match=message):
        Settings(home=tmp_path, server=server, token=token)


def test_server_url_is_kept_without_its_trailing_slash(tmp_path: Path) -> None:
    from registry.settings import Settings

    assert Settings(home=tmp_path, server=" https://loradex.internal/ ").server == "https://loradex.internal"
    assert Settings(home=tmp_path, server="").server is None


def test_a_server_that_accepts_and_never_answers_is_one_error_not_a_hang(tmp_path: Path) -> None:
    import socket
    import time

    from registry.remote import RemoteRegistry

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepted by the kernel, never read or answered
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        client = RemoteRegistry(
            _client_settings(tmp_path, None, server=url), read_timeout_s=0.5, sleep=lambda _s: None
        )
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError, match=r"did not answer GET /api/v1/adapters within 0.5 s"):
            client.list_adapters()
        assert time.monotonic() - started < 5  # asked once, not four times
        client.close()


def test_register_uploads_only_the_blobs_the_server_lacks(
    app: Any, registry: Any, make_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from registry.remote import RemoteRegistry

    secret = registry.create_token(scope="write", name="uploader").secret
    with TestClient(app) as test_client:
        transport = _Buffered(test_client._transport)
        client = RemoteRegistry(_client_settings(tmp_path, secret), transport=transport)
        first, second = make_adapter(seed=1), make_adapter(seed=2)  # the same config bytes
        client.register(first, name="a")
        puts = [path for method, path in transport.seen if method == "PUT"]
        assert len(puts) == 2
        transport.seen.clear()
        client.register(second, name="a")
        puts = [path for method, path in transport.seen if method == "PUT"]
        assert len(puts) == 1  # the weights only: the config is on the server already
        transport.seen.clear()
        assert not client.register(second, name="a").created  # a retry: nothing uploaded again
        assert [m for m, _ in transport.seen] == ["HEAD", "HEAD", "POST"]
        client.close()


def test_a_redirect_is_not_followed_and_names_where_it_points(tmp_path: Path) -> None:
    from mergetools.errors import InvalidInputError
    from registry.remote import RemoteRegistry

    transport, seen = _scripted(
        [httpx.Response(301, headers={"Location": "https://loradex.test/api/v1/adapters"})]
    )
    client = RemoteRegistry(_client_settings(tmp_path, "t"), transport=transport)
    with pytest.raises(InvalidInputError, match=r"redirects GET /api/v1/adapters to https://loradex.test"):
        client.list_adapters()
    assert len(seen) == 1


def test_through_a_server_the_token_owner_acts(
    app: Any, registry: Any, make_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    """The server records the token's owner as the actor; naming another one is refused before
    anything is sent, and what the token does is recorded as its owner's."""
    from fastapi.testclient import TestClient

    from registry.remote import RemoteRegistry

    secret = registry.create_token(scope="write", name="trainer").secret
    with TestClient(app) as test_client:
        transport = _Buffered(test_client._transport)
        client = RemoteRegistry(_client_settings(tmp_path, secret), transport=transport)
        with pytest.raises(InvalidInputError, match="made by the owner of LORADEX_TOKEN"):
            client.register(make_adapter(seed=1), name="a", actor="someone-else")
        assert transport.seen == []
        client.register(make_adapter(seed=1), name="a")
        client.set_alias("a@1", "production")
        client.close()
    assert registry.get_adapter("a").created_by == "trainer"
    assert [m.moved_by for m in registry.alias_history("a", "production")] == ["trainer"]
