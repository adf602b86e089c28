"""The HTTP API in-process (FastAPI TestClient), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import sha256_of

Headers = Callable[..., dict[str, str]]
PROBLEM = "application/problem+json"


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"].endswith(code) and body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return body


def register(client: Any, headers: dict[str, str], name: str, files: dict[str, str], **extra: Any) -> Any:
    return client.post(f"/api/v1/adapters/{name}/versions", json={"files": files, **extra}, headers=headers)


# ------------------------------------------------------------------------------ auth


def test_no_token_is_401_and_anonymous_read_lets_gets_through(client: Any, registry: Any) -> None:
    body = assert_problem(client.get("/api/v1/adapters"), 401, "unauthenticated")
    assert "loradex token create" in body["detail"]
    assert client.get("/api/v1/adapters").headers["www-authenticate"] == "Bearer"
    assert_problem(
        client.get("/api/v1/adapters", headers={"Authorization": "Bearer ldx_nope"}),
        401,
        "unauthenticated",
    )
    assert_problem(
        client.get("/api/v1/adapters", headers={"Authorization": "Basic Zm9vOmJhcg=="}),
        401,
        "unauthenticated",
    )
    registry.settings.anonymous_read = True
    try:
        assert client.get("/api/v1/adapters").status_code == 200
        assert_problem(client.put("/api/v1/blobs/" + "0" * 64, content=b"x"), 401, "unauthenticated")
    finally:
        registry.settings.anonymous_read = False


def test_scopes_prefixes_revocation_and_expiry(
    client: Any, registry: Any, token: Headers, make_adapter: Callable[..., Path], upload: Any
) -> None:
    import datetime as dt

    files = upload(make_adapter(seed=1))
    read = token("read")
    body = assert_problem(register(client, read, "support", files), 403, "forbidden")
    assert body["scope"] == "read" and body["needed"] == "write"
    scoped = token("write", prefix="support-")
    assert_problem(register(client, scoped, "billing", files), 403, "forbidden")
    assert register(client, scoped, "support-bot", files).status_code == 201
    assert [a["name"] for a in client.get("/api/v1/adapters", headers=scoped).json()["items"]] == [
        "support-bot"
    ]
    assert_problem(client.get("/api/v1/events", headers=scoped), 403, "forbidden")
    assert_problem(client.delete("/api/v1/adapters/support-bot/versions/1", headers=scoped), 403, "forbidden")

    created = registry.create_token(scope="read")
    bearer = {"Authorization": f"Bearer {created.secret}"}
    assert client.get("/api/v1/adapters", headers=bearer).status_code == 200
    registry.revoke_token(created.token.id)
    assert "revoked" in assert_problem(client.get("/api/v1/adapters", headers=bearer), 401, "unauthenticated")["detail"]
    short = registry.create_token(scope="read", expires_in=dt.timedelta(seconds=1))
    from sqlalchemy import update

    from registry.models import ApiToken

    with registry._write() as session:  # age it instead of sleeping
        session.execute(update(ApiToken).where(ApiToken.id == short.token.id).values(
            expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)))
    expired = {"Authorization": f"Bearer {short.secret}"}
    assert "expired" in assert_problem(client.get("/api/v1/adapters", headers=expired), 401, "unauthenticated")["detail"]


def test_the_token_name_is_the_actor_of_its_changes(
    client: Any, registry: Any, token: Headers, make_adapter: Callable[..., Path], upload: Any
) -> None:
    files = upload(make_adapter(seed=2))
    ci = token("write", name="ci-bot")
    assert register(client, ci, "support", files).status_code == 201
    assert client.put("/api/v1/adapters/support/aliases/prod", json={"version": 1}, headers=ci).status_code == 200
    events = registry.events(after=0)
    assert {e.actor for e in events if e.kind in ("version.registered", "alias.set")} == {"ci-bot"}
    assert registry.versions("support")[0].created_by == "ci-bot"
    assert registry.actor == "tester"  # the shared registry is untouched


def test_tokens_are_stored_as_sha256_only(registry: Any) -> None:
    from sqlalchemy import select

    from registry.models import ApiToken

    created = registry.create_token(scope="admin", name="ops")
    with registry._read() as session:
        stored = session.scalars(select(ApiToken)).one()
    assert stored.secret_sha256 == hashlib.sha256(created.secret.encode()).hexdigest()
    assert created.secret not in repr(registry.list_tokens())
    assert registry.authenticate(created.secret).name == "ops"


# ------------------------------------------------------------------------------ blobs


def test_blob_upload_head_and_digest_check(client: Any, registry: Any, token: Headers) -> None:
    write = token("write")
    data = b"some bytes\n" * 1000
    sha = sha256_of(data)
    assert_problem(client.head(f"/api/v1/blobs/{sha}", headers=write), 404, "not_found") if False else None
    assert client.head(f"/api/v1/blobs/{sha}", headers=write).status_code == 404
    first = client.put(f"/api/v1/blobs/{sha}", content=data, headers=write)
    assert first.status_code == 201 and first.json() == {"sha256": sha, "size": len(data), "created": True}
    again = client.put(f"/api/v1/blobs/{sha}", content=data, headers=write)
    assert again.status_code == 200 and again.json()["created"] is False
    head = client.head(f"/api/v1/blobs/{sha}", headers=write)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))

    other = sha256_of(b"other")
    body = assert_problem(client.put(f"/api/v1/blobs/{other}", content=data, headers=write), 400, "digest_mismatch")
    assert body["expected_sha256"] == other and body["actual_sha256"] == sha
    assert not registry.blobs.exists(other)
    assert list((registry.blobs.root / "tmp").iterdir()) == []
    assert_problem(client.put("/api/v1/blobs/NOTASHA", content=data, headers=write), 422, "invalid_input")


def test_upload_over_the_limit_is_413_from_content_length(client: Any, registry: Any, token: Headers) -> None:
    write = token("write")
    registry.settings.max_upload_bytes = 100
    try:
        data = b"x" * 101
        body = assert_problem(
            client.put(f"/api/v1/blobs/{sha256_of(data)}", content=data, headers=write), 413, "upload_too_large"
        )
        assert body["max_bytes"] == 100 and body["size"] == 101

        def chunks() -> Any:  # no Content-Length: cut off at the limit while streaming
            yield b"x" * 60
            yield b"x" * 60

        assert_problem(
            client.put(f"/api/v1/blobs/{sha256_of(b'x' * 120)}", content=chunks(), headers=write),
            413,
            "upload_too_large",
        )
        assert not registry.blobs.exists(sha256_of(b"x" * 120))
    finally:
        registry.settings.max_upload_bytes = 10 * 1024**3


# ------------------------------------------------------------------------------ register


def test_register_from_blobs_then_identical_content(
    client: Any, registry: Any, token: Headers, make_adapter: Callable[..., Path], upload: Any
) -> None:
    write = token("write")
    files = upload(make_adapter(seed=3))
    response = register(
        client, write, "support", files,
        evals=[{"metric": "accuracy", "value": 0.91}], tags={"team": "cx"}, description="first",
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "support" and response.json()["version"] == 1
    same = register(client, write, "support", files, evals=[{"metric": "f1", "value": 0.5}], tags={"stage": "b"})
    assert same.status_code == 200 and same.json()["version"] == 1 and same.json()["created"] is False
    detail = registry.show("support@1")
    assert {e.metric for e in detail.evals} == {"accuracy", "f1"}
    assert detail.tags == {"team": "cx", "stage": "b"}
    assert detail.source == "upload by tester"
    assert list((registry.settings.cache_dir / "uploads").iterdir()) == []


def test_register_refusals(
    client: Any, token: Headers, make_adapter: Callable[..., Path], upload: Any, tmp_path: Path
) -> None:
    write = token("write")
    files = upload(make_adapter(seed=4))
    missing = sha256_of(b"never uploaded")
    body = assert_problem(
        register(client, write, "a", {**files, "README.md": missing}), 422, "blob_not_uploaded"
    )
    assert body["missing"] == {"README.md": missing} and "README.md" in body["detail"]
    for bad in ("../adapter_config.json", "sub/../x.json", "/abs.json", "sub//x", "sub/", "a\\b", ".."):
        assert_problem(register(client, write, "a", {**files, bad: files["adapter_config.json"]}), 422, "invalid_input")
    assert_problem(register(client, write, "a", {"adapter_config.json": files["adapter_config.json"]}), 422, "invalid_adapter")
    body = assert_problem(client.post("/api/v1/adapters/a/versions", json={"file": {}}, headers=write), 422, "invalid_request")
    assert body["errors"]

    import json

    bad = make_adapter(seed=5)  # a config whose rank disagrees with the tensors: refused
    config = json.loads((bad / "adapter_config.json").read_text())
    config["r"] = 7
    (bad / "adapter_config.json").write_text(json.dumps(config))
    response = register(client, write, "bad", upload(bad))
    assert response.status_code == 422 and response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["code"] in ("invalid_adapter", "incompatible", "invalid_input")


# ------------------------------------------------------------------------------ reads, downloads


@pytest.fixture
def registered(client: Any, token: Headers, make_adapter: Callable[..., Path], upload: Any) -> dict[str, str]:
    headers = token("write")
    for seed in (10, 11):
        response = register(client, headers, "support", upload(make_adapter(seed=seed)),
                            evals=[{"metric": "accuracy", "value": 0.8 + seed / 100}], tags={"team": "cx"})
        assert response.status_code == 201, response.text
    return headers


def test_reads(client: Any, registered: dict[str, str], token: Headers) -> None:
    read = token("read")
    page = client.get("/api/v1/adapters", params={"limit": 1}, headers=read).json()
    assert [a["name"] for a in page["items"]] == ["support"] and page["next_cursor"] is None
    assert client.get("/api/v1/adapters/support", headers=read).json()["latest"] == 2
    assert [v["version"] for v in client.get("/api/v1/adapters/support/versions", headers=read).json()] == [2, 1]
    latest = client.get("/api/v1/adapters/support/versions/latest", headers=read).json()
    assert latest["version"] == 2 and latest["tags"] == {"team": "cx"}
    assert {f["path"] for f in latest["files"]} == {"adapter_config.json", "adapter_model.safetensors"}
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in latest["files"])
    assert latest["ranks"] and latest["target_modules"] and "lineage" in latest
    assert latest["evals"][0]["metric"] == "accuracy"
    assert client.get("/api/v1/adapters/support/versions/1", headers=read).json()["version"] == 1
    assert_problem(client.get("/api/v1/adapters/nope", headers=read), 404, "not_found")
    assert_problem(client.get("/api/v1/adapters/support/versions/9", headers=read), 404, "not_found")
    assert_problem(client.get("/api/v1/adapters/support/versions/bad!ref", headers=read), 422, "invalid_input")
    assert_problem(client.get("/api/v1/nothing-here", headers=read), 404, "not_found")
    assert_problem(client.get("/api/v1/adapters", params={"limit": 0}, headers=read), 422, "invalid_request")


def test_keyset_pagination(client: Any, registry: Any, token: Headers, make_adapter: Callable[..., Path], upload: Any) -> None:
    write = token("write")
    files = upload(make_adapter(seed=20))
    for name in ("c", "a", "b"):
        assert register(client, write, name, files).status_code == 201
    seen, after = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        page = client.get("/api/v1/adapters", params=params, headers=write).json()
        seen += [a["name"] for a in page["items"]]
        after = page["next_cursor"]
        if after is None:
            break
    assert seen == ["a", "b", "c"]


def test_download_whole_range_etag(client: Any, registry: Any, registered: dict[str, str]) -> None:
    detail = registry.show("support@2")
    weights = next(f for f in detail.files if f.path == "adapter_model.safetensors")
    data = registry.blobs.path_for(weights.sha256).read_bytes()
    url = "/api/v1/adapters/support/versions/2/files/adapter_model.safetensors"
    whole = client.get(url, headers=registered)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["etag"] == f'"{weights.sha256}"'
    assert whole.headers["content-length"] == str(len(data))
    part = client.get(url, headers={**registered, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    tail = client.get(url, headers={**registered, "Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == data[-5:]
    open_end = client.get(url, headers={**registered, "Range": f"bytes={len(data) - 3}-"})
    assert open_end.content == data[-3:]
    assert_problem(client.get(url, headers={**registered, "Range": f"bytes={len(data)}-"}), 416, "range_not_satisfiable")
    assert_problem(client.get(url, headers={**registered, "Range": "pages=1-2"}), 400, "bad_range")
    assert client.get(url, headers={**registered, "If-None-Match": f'"{weights.sha256}"'}).status_code == 304
    assert_problem(client.get(url.replace("adapter_model", "nope"), headers=registered), 404, "not_found")
    latest = client.get(url.replace("/2/", "/latest/"), headers=registered)
    assert latest.content == data


def test_a_corrupt_blob_is_never_served(client: Any, registry: Any, registered: dict[str, str]) -> None:
    import os

    detail = registry.show("support@1")
    config = next(f for f in detail.files if f.path == "adapter_config.json")
    path = registry.blobs.path_for(config.sha256)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    url = "/api/v1/adapters/support/versions/1/files/adapter_config.json"
    body = assert_problem(client.get(url, headers=registered), 500, "corrupt_blob")
    assert "not served" in body["detail"]
    assert_problem(client.get(url, headers={**registered, "Range": "bytes=0-3"}), 500, "corrupt_blob")


def test_large_corrupt_blob_aborts_before_the_last_chunk(registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import registry.blobstore as blobstore
    from registry.errors import CorruptBlobError

    monkeypatch.setattr(blobstore, "VERIFY_BEFORE_SERVING_BYTES", 10)
    data = b"y" * (3 * (1 << 20) + 5)
    sha = sha256_of(data)
    registry.blobs.put_stream([data], expected_sha256=sha)
    path = registry.blobs.path_for(sha)
    import os

    os.chmod(path, 0o644)
    path.write_bytes(data[:-1] + b"z")
    received = b""
    with pytest.raises(CorruptBlobError):
        for chunk in registry.blobs.read_verified(sha, size=len(data)):
            received += chunk
    assert 0 < len(received) < len(data)
    path.write_bytes(data)
    assert b"".join(registry.blobs.read_verified(sha, size=len(data))) == data


# ------------------------------------------------------------------------------ aliases


def test_alias_compare_and_swap(client: Any, registry: Any, registered: dict[str, str]) -> None:
    url = "/api/v1/adapters/support/aliases/prod"
    h = registered
    assert client.put(url, json={"version": 1, "expected_version": None}, headers=h).json()["to_version"] == 1
    body = assert_problem(client.put(url, json={"version": 2, "expected_version": None}, headers=h), 409, "alias_moved")
    assert body["current_version"] == 1 and body["expected_version"] is None
    moved = client.put(url, json={"version": 2, "expected_version": 1}, headers=h).json()
    assert moved["from_version"] == 1 and moved["to_version"] == 2
    body = assert_problem(client.put(url, json={"version": 1, "expected_version": 1}, headers=h), 409, "alias_moved")
    assert body["current_version"] == 2
    assert client.put(url, json={"version": 1}, headers=h).status_code == 200  # unconditional
    history = client.get(url + "/history", headers=h).json()
    assert [(m["from_version"], m["to_version"]) for m in history] == [(None, 1), (1, 2), (2, 1)]
    assert client.delete(url, headers=h).json()["from_version"] == 1
    assert_problem(client.delete(url, headers=h), 404, "not_found")
    assert_problem(client.put(url, json={"version": 9}, headers=h), 404, "not_found")
    assert_problem(client.put(url, json={"version": "x"}, headers=h), 422, "invalid_request")


def test_set_alias_cas_in_the_use_case(registry: Any, make_adapter: Callable[..., Path]) -> None:
    from registry.errors import AliasMovedError

    registry.register(make_adapter(seed=30), name="m")
    registry.register(make_adapter(seed=31), name="m")
    registry.set_alias("m@1", "prod", expected_version=None)
    with pytest.raises(AliasMovedError):
        registry.set_alias("m@2", "prod", expected_version=None)
    with pytest.raises(AliasMovedError):
        registry.set_alias("m@2", "prod", expected_version=2)
    registry.set_alias("m@2", "prod", expected_version=1)
    assert registry.resolve("m@prod").version == 2
    assert len(registry.alias_history("m", "prod")) == 2  # refused moves left no history


# ------------------------------------------------------------------------------ facts, journal, search


def test_evals_tags_yank_delete_events_search_bases(
    client: Any, registry: Any, registered: dict[str, str], token: Headers
) -> None:
    h = registered
    base = "/api/v1/adapters/support/versions"
    added = client.post(f"{base}/1/evals", json={"evals": [{"metric": "f1", "value": 0.7}]}, headers=h)
    assert added.status_code == 201 and added.json()[0]["metric"] == "f1"
    assert {e["metric"] for e in client.get(f"{base}/1/evals", headers=h).json()} == {"accuracy", "f1"}
    assert client.patch(f"{base}/1/tags", json={"set": {"stage": "x"}, "remove": ["team"]}, headers=h).json() == {"stage": "x"}
    assert client.post(f"{base}/2/yank", json={"reason": "regressed"}, headers=h).json()["status"] == "yanked"
    assert client.get(f"{base}/latest", headers=h).json()["version"] == 1
    assert client.post(f"{base}/2/unyank", headers=h).json()["status"] == "ready"
    assert_problem(client.post(f"{base}/2/yank", json={"reason": ""}, headers=h), 422, "invalid_input")  # the use case says why

    found = client.get("/api/v1/search", params={"filter": "accuracy>=0.9", "tag": "team=cx"}, headers=h).json()
    assert [v["ref"] for v in found["items"]] == ["support@2"]
    everything = client.get("/api/v1/search", params={"sort": "accuracy"}, headers=h).json()
    from registry.search import SearchQuery

    assert [v["ref"] for v in everything["items"]] == [v.ref for v in registry.search(SearchQuery(sort="accuracy")).items]
    assert_problem(client.get("/api/v1/search", params={"filter": "accuracy>>1"}, headers=h), 422, "invalid_input")

    events = client.get("/api/v1/events", params={"after": 0}, headers=h).json()
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and {"token.created", "adapter.created", "version.registered"} <= {e["kind"] for e in events}
    later = client.get("/api/v1/events", params={"after": ids[-2]}, headers=h).json()
    assert [e["id"] for e in later] == ids[-1:]
    assert client.get("/api/v1/bases", headers=h).json() == []
    assert_problem(client.get("/api/v1/bases/nope", headers=h), 404, "not_found")

    assert_problem(client.delete(f"{base}/1", headers=h), 403, "forbidden")
    admin = token("admin")
    assert client.delete(f"{base}/1", headers=admin).json()["status"] == "deleted"
    assert_problem(client.get(f"{base}/1/files/adapter_config.json", headers=h), 404, "not_found")


# ------------------------------------------------------------------------------ the contract


def test_every_route_is_in_the_openapi_document_with_problem_errors(app: Any, client: Any) -> None:
    from fastapi.routing import APIRoute

    from registry.api.app import API_PREFIX, ROUTERS

    document = client.get("/api/v1/openapi.json").json()
    routes = [r for router in ROUTERS for r in router.routes if isinstance(r, APIRoute)]
    assert len(routes) >= 20
    paths = {API_PREFIX + r.path.replace(":path}", "}") for r in routes}  # {file:path} is {file}
    assert set(document["paths"]) == paths  # nothing outside /api/v1, nothing undocumented
    for route in routes:
        path = API_PREFIX + route.path.replace(":path}", "}")
        for method in route.methods:
            operation = document["paths"][path][method.lower()]
            for status in ("401", "404", "422", "500"):
                assert "application/problem+json" in operation["responses"][status]["content"], (route.path, method, status)


def test_unexpected_errors_are_a_generic_500(app: Any, client: Any, token: Headers, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    registry = app.state.registry

    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("secret internals at /srv/x")

    monkeypatch.setattr(type(registry), "list_adapters", lambda self, **kw: broken(**kw))
    response = client.get("/api/v1/adapters", headers=token("read"))
    body = assert_problem(response, 500, "internal")
    assert "secret internals" not in response.text
    assert body["detail"] == "the server failed to answer this request; the error was logged"
    assert "secret internals" in caplog.text


def test_status_mapping_follows_codes_and_classes() -> None:
    from mergetools.errors import (
        ConflictError,
        IncompatibleError,
        InvalidAdapterError,
        NotFoundError,
        OutputExistsError,
    )
    from registry.api.errors import status_for
    from registry.errors import (
        AliasMovedError,
        BlobMissingError,
        CorruptBlobError,
        DigestMismatchError,
        StorageError,
        UploadTooLargeError,
    )

    assert status_for(NotFoundError("x")) == 404
    assert status_for(BlobMissingError("x")) == 500
    assert status_for(ConflictError("x")) == 409
    assert status_for(OutputExistsError("x")) == 409
    assert status_for(AliasMovedError("x", adapter="a", alias="p", expected_version=1, current_version=2)) == 409
    assert status_for(InvalidAdapterError("x")) == 422
    assert status_for(IncompatibleError("x")) == 422
    assert status_for(DigestMismatchError("x", expected_sha256="a", actual_sha256="b")) == 400
    assert status_for(UploadTooLargeError("x", max_bytes=1, size=2)) == 413
    assert status_for(CorruptBlobError("x")) == 500
    assert status_for(StorageError("x")) == 507
