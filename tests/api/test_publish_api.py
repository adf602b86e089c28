"""The publish routes in-process: scopes, policies, protection, the report, problem+json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from registry.inputs import parse_eval_spec
from tests.conftest import write_tiny_adapter, write_tiny_base

URL = "/api/v1/adapters/support"


@pytest.fixture
def world(registry: Any, tmp_path: Path) -> Any:
    registry.add_base(write_tiny_base(tmp_path / "base"), name="tiny")
    for seed, accuracy in ((0, 0.85), (1, 0.80)):
        registry.register(
            write_tiny_adapter(tmp_path / f"a{seed}", seed=seed),
            name="support",
            base="tiny",
            evals=[parse_eval_spec(f"accuracy={accuracy},dataset=squad")],
        )
    return registry


def test_publish_needs_the_publish_scope(
    world: Any, client: Any, token: Callable[..., dict[str, str]]
) -> None:
    body = {"alias": "production", "version": 1}
    denied = client.post(f"{URL}/publish", json=body, headers=token("write"))
    assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
    assert client.post(f"{URL}/publish", json=body).status_code == 401
    dry = client.post(f"{URL}/publish", json={**body, "dry_run": True}, headers=token("write"))
    assert dry.status_code == 200 and dry.json()["published"] is False  # a dry run moves nothing
    assert (
        client.post(
            f"{URL}/publish", json={**body, "dry_run": True}, headers=token("read")
        ).status_code
        == 403
    )
    ok = client.post(f"{URL}/publish", json=body, headers=token("publish", name="ci"))
    assert ok.status_code == 200, ok.text
    report = ok.json()
    assert report["published"] and report["actor"] == "ci" and report["to_ref"] == "support@1"
    assert [g["gate"] for g in report["gates"]] == ["ready", "compatibility"]
    history = client.get(f"{URL}/aliases/production/history", headers=token("read")).json()
    assert history[-1]["kind"] == "publish" and history[-1]["moved_by"] == "ci"
    assert history[-1]["report"]["gates"][1]["passed"] is True


def test_a_failed_gate_is_problem_json_carrying_the_report(
    world: Any, client: Any, token: Callable[..., dict[str, str]]
) -> None:
    headers = token("publish")
    client.post(f"{URL}/publish", json={"alias": "production", "version": 1}, headers=headers)
    body = {
        "alias": "production",
        "version": 2,
        "no_regress": ["accuracy@squad"],
        "require": ["accuracy>=0.5"],
    }
    refused = client.post(f"{URL}/publish", json=body, headers=headers)
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["code"] == "publish_refused" and "no_regress accuracy@squad" in problem["detail"]
    gates = {g["gate"]: g for g in problem["report"]["gates"]}
    assert gates["no_regress"]["values"]["previous_score"] == 0.85 and gates["require"]["passed"]
    assert client.get(f"{URL}/versions/production", headers=headers).json()["version"] == 1
    junit = client.post(f"{URL}/publish?format=junit", json=body, headers=headers)
    assert junit.status_code == 422 and junit.headers["content-type"].startswith("application/xml")
    suite = ElementTree.fromstring(junit.text).find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("failures") == "1"
    dry = client.post(
        f"{URL}/publish?format=text",
        json={**body, "no_regress": ["accuracy:0.1"], "dry_run": True},
        headers=headers,
    )
    assert dry.status_code == 200 and "would publish" in dry.text
    bad = client.post(
        f"{URL}/publish", json={**body, "require": ["accuracy>=nan"]}, headers=headers
    )
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_input"
    boolean = client.post(f"{URL}/publish", json={**body, "version": True}, headers=headers)
    assert boolean.status_code == 422 and boolean.json()["code"] == "invalid_request"
    server_path = client.post(f"{URL}/publish", json={**body, "base": "/etc"}, headers=headers)
    assert (
        server_path.status_code == 422
        and "registered base model name" in server_path.json()["detail"]
    )


def test_policies_need_admin_and_stop_plain_moves(
    world: Any, client: Any, token: Callable[..., dict[str, str]]
) -> None:
    admin, publisher, writer = (
        token("admin", name="root"),
        token("publish", name="ci"),
        token("write"),
    )
    policy = {"require": ["accuracy>=0.82@squad"], "serving": ["vllm:max_rank=64"]}
    assert (
        client.put(f"{URL}/aliases/production/policy", json=policy, headers=publisher).status_code
        == 403
    )
    created = client.put(f"{URL}/aliases/production/policy", json=policy, headers=admin)
    assert created.status_code == 200, created.text
    assert created.json()["gates"]["serving"] == ["vllm:max_rank=64"]
    assert (
        client.get(f"{URL}/aliases/production/policy", headers=token("read")).json()["updated_by"]
        == "root"
    )
    plain = client.put(f"{URL}/aliases/production", json={"version": 1}, headers=admin)
    assert plain.status_code == 409 and plain.json()["code"] == "alias_has_policy"
    assert plain.json()["hint_action"] == "publish"
    refused = client.post(
        f"{URL}/publish", json={"alias": "production", "version": 2}, headers=publisher
    )
    assert refused.status_code == 422
    assert [g["source"] for g in refused.json()["report"]["gates"]][-2:] == ["policy", "policy"]
    ok = client.post(
        f"{URL}/publish", json={"alias": "production", "version": 1}, headers=publisher
    )
    assert ok.status_code == 200 and ok.json()["policy"] == created.json()["gates"]
    listed = client.get(f"{URL}/aliases", headers=token("read")).json()
    assert [(a["alias"], a["version"], a["last_move"]["kind"]) for a in listed] == [
        ("production", 1, "publish")
    ]
    assert client.delete(f"{URL}/aliases/production/policy", headers=writer).status_code == 403
    assert client.delete(f"{URL}/aliases/production/policy", headers=admin).status_code == 200
    assert client.get(f"{URL}/aliases/production/policy", headers=admin).status_code == 404


def test_protected_aliases_move_only_for_admin_tokens(
    world: Any, client: Any, token: Callable[..., dict[str, str]]
) -> None:
    admin, publisher, writer = token("admin"), token("publish"), token("write")
    assert client.put(f"{URL}/aliases/production/protect", headers=publisher).status_code == 403
    protected = client.put(f"{URL}/aliases/production/protect", headers=admin)
    assert protected.status_code == 200 and protected.json()["protected"] is True
    moved = client.put(f"{URL}/aliases/production", json={"version": 1}, headers=writer)
    assert moved.status_code == 403 and "protected" in moved.json()["detail"]
    published = client.post(
        f"{URL}/publish", json={"alias": "production", "version": 1}, headers=publisher
    )
    assert published.status_code == 403 and published.json()["needed"] == "admin"
    assert (
        client.post(
            f"{URL}/publish", json={"alias": "production", "version": 1}, headers=admin
        ).status_code
        == 200
    )
    # Under a policy, a publish token publishes to the protected alias.
    client.put(
        f"{URL}/aliases/production/policy", json={"require": ["accuracy>=0.5"]}, headers=admin
    )
    assert (
        client.post(
            f"{URL}/publish", json={"alias": "production", "version": 2}, headers=publisher
        ).status_code
        == 200
    )
    assert (
        client.delete(f"{URL}/aliases/production/protect", headers=admin).json()["protected"]
        is False
    )


def test_rollback_over_the_api(
    world: Any, client: Any, token: Callable[..., dict[str, str]]
) -> None:
    headers = token("publish")
    for version in (1, 2):
        assert (
            client.post(
                f"{URL}/publish", json={"alias": "production", "version": version}, headers=headers
            ).status_code
            == 200
        )
    wrong = client.post(
        f"{URL}/publish",
        json={"alias": "production", "rollback": True, "version": 1},
        headers=headers,
    )
    assert wrong.status_code == 422
    back = client.post(
        f"{URL}/publish", json={"alias": "production", "rollback": True}, headers=headers
    )
    assert back.status_code == 200, back.text
    assert (back.json()["kind"], back.json()["version"], back.json()["previous_version"]) == (
        "rollback",
        1,
        2,
    )
    github = client.post(
        f"{URL}/publish?format=github",
        json={"alias": "production", "rollback": True, "dry_run": True},
        headers=headers,
    )
    assert github.status_code == 200 and github.text.startswith(
        "::notice title=support@production%3A gates pass::"
    )


def test_token_prefix_limits_publish(
    world: Any, client: Any, token: Callable[..., dict[str, str]]
) -> None:
    other = token("publish", prefix="sales-")
    denied = client.post(
        f"{URL}/publish", json={"alias": "production", "version": 1}, headers=other
    )
    assert denied.status_code == 403
    assert json.loads(denied.text)["code"] == "forbidden"
