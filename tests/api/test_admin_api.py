"""Tokens and metric directions over HTTP (admin routes), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.api.test_api import assert_problem

Headers = Callable[..., dict[str, str]]


def test_an_admin_creates_lists_and_revokes_tokens(client: Any, registry: Any, token: Headers) -> None:
    admin = token("admin", name="root")
    created = client.post(
        "/api/v1/tokens", json={"scope": "write", "name": "ci", "prefix": "support-", "expires": "30d"},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    secret = body["secret"]
    assert secret.startswith("ldx_")
    assert body["token"]["scope"] == "write" and body["token"]["prefix"] == "support-"
    assert body["token"]["created_by"] == "root" and body["token"]["expires_at"]

    listed = client.get("/api/v1/tokens", headers=admin)
    assert listed.status_code == 200
    rows = listed.json()
    assert [t["name"] for t in rows] == ["root", "ci"]
    assert all("secret" not in t and "secret_sha256" not in t for t in rows)
    assert secret not in listed.text

    ci = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/adapters", headers=ci).status_code == 200
    revoked = client.delete(f"/api/v1/tokens/{body['token']['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert_problem(client.get("/api/v1/adapters", headers=ci), 401, "unauthenticated")
    # revoking again changes nothing; an unknown token is 404
    assert client.delete(f"/api/v1/tokens/{body['token']['id']}", headers=admin).status_code == 200
    assert_problem(client.delete("/api/v1/tokens/999999", headers=admin), 404, "not_found")
    events = [e.kind for e in registry.events(after=0)]
    assert events.count("token.created") == 2 and events.count("token.revoked") == 1


@pytest.mark.parametrize("scope", ["read", "write", "publish"])
def test_token_routes_need_admin(client: Any, token: Headers, scope: str) -> None:
    headers = token(scope)
    assert_problem(client.get("/api/v1/tokens", headers=headers), 403, "forbidden")
    assert_problem(client.post("/api/v1/tokens", json={"scope": "admin"}, headers=headers), 403, "forbidden")
    assert_problem(client.delete("/api/v1/tokens/1", headers=headers), 403, "forbidden")
    assert_problem(client.post("/api/v1/tokens", json={"scope": "admin"}), 401, "unauthenticated")


def test_a_prefixed_admin_cannot_mint_or_see_tokens(client: Any, token: Headers) -> None:
    narrow = token("admin", prefix="support-")
    body = assert_problem(client.post("/api/v1/tokens", json={"scope": "admin"}, headers=narrow), 403, "forbidden")
    assert "support-" in body["detail"]
    assert_problem(client.get("/api/v1/tokens", headers=narrow), 403, "forbidden")
    assert_problem(client.delete("/api/v1/tokens/1", headers=narrow), 403, "forbidden")
    assert_problem(
        client.put("/api/v1/metrics/loss", json={"direction": "lower"}, headers=narrow), 403, "forbidden"
    )


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"scope": "root"}, "invalid_input"),
        ({"scope": "write", "name": "has space"}, "invalid_input"),
        ({"scope": "write", "prefix": "../x"}, "invalid_input"),
        ({"scope": "write", "expires": "soon"}, "invalid_input"),
        ({"scope": "write", "expires": "0d"}, "invalid_input"),
        ({"scope": "write", "expires": "99999999999999999999d"}, "invalid_input"),
        ({"scope": "write", "expires": "4000d"}, "invalid_input"),
        ({"scope": 3}, "invalid_request"),  # the request's shape: refused before the use case
        ({"scope": "write", "extra": 1}, "invalid_request"),
        ({"scope": "write", "name": "x" * 201}, "invalid_request"),
    ],
)
def test_a_bad_token_request_is_422_and_creates_nothing(
    client: Any, registry: Any, token: Headers, payload: dict[str, Any], code: str
) -> None:
    admin = token("admin", name="root")
    response = client.post("/api/v1/tokens", json=payload, headers=admin)
    assert_problem(response, 422, code)
    assert [t.name for t in registry.list_tokens()] == ["root"]


def test_metric_directions_over_http(client: Any, registry: Any, token: Headers) -> None:
    admin, reader = token("admin", name="root"), token("read")
    assert client.get("/api/v1/metrics", headers=reader).json() == []
    set_ = client.put("/api/v1/metrics/latency_ms", json={"direction": "lower"}, headers=admin)
    assert set_.status_code == 200, set_.text
    assert set_.json()["direction"] == "lower" and set_.json()["declared_by"] == "root"
    listed = client.get("/api/v1/metrics", headers=reader).json()
    assert [(m["metric"], m["direction"], m["declared"]) for m in listed] == [("latency_ms", "lower", True)]
    assert [m.direction for m in registry.list_metrics()] == ["lower"]
    assert_problem(
        client.put("/api/v1/metrics/latency_ms", json={"direction": "up"}, headers=admin), 422, "invalid_input"
    )
    assert_problem(
        client.put("/api/v1/metrics/latency_ms", json={"direction": "lower"}, headers=token("write")),
        403,
        "forbidden",
    )


def test_every_alias_of_every_adapter(client: Any, registry: Any, token: Headers, make_adapter: Any) -> None:
    first = registry.register(make_adapter(seed=1), name="support")
    other = registry.register(make_adapter(seed=2), name="billing")
    registry.set_alias(first.ref, "production")
    registry.set_alias(other.ref, "staging")
    listed = client.get("/api/v1/aliases", headers=token("read"))
    assert listed.status_code == 200, listed.text
    assert [(a["name"], a["alias"], a["version"]) for a in listed.json()] == [
        (row.name, row.alias, row.version) for row in registry.list_aliases()
    ]
    assert {(a["name"], a["alias"]) for a in listed.json()} == {
        ("support", "production"), ("billing", "staging")
    }
    narrow = token("read", prefix="support")
    assert_problem(client.get("/api/v1/aliases", headers=narrow), 403, "forbidden")
    assert client.get("/api/v1/adapters/support/aliases", headers=narrow).status_code == 200


def test_metric_names_with_a_slash_and_not_with_a_line_break(client: Any, token: Headers) -> None:
    admin = token("admin", name="root")
    slash = client.put("/api/v1/metrics/eval/loss", json={"direction": "lower"}, headers=admin)
    assert slash.status_code == 200, slash.text
    assert slash.json()["metric"] == "eval/loss"
    broken = client.put("/api/v1/metrics/ac%0Ac", json={"direction": "lower"}, headers=admin)
    assert broken.status_code in (404, 422), broken.text
    client.put("/api/v1/metrics/acc%0A", json={"direction": "lower"}, headers=admin)
    assert not any("\n" in m["metric"] for m in client.get("/api/v1/metrics", headers=admin).json())
    assert_problem(client.post("/api/v1/tokens", json={"scope": "read", "name": "root\n"}, headers=admin), 422, "invalid_input")
    assert_problem(client.post("/api/v1/tokens", json={"scope": "read", "prefix": "sup-\n"}, headers=admin), 422, "invalid_input")
