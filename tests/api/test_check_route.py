"""``POST /api/v1/check`` in-process (httpx over ASGI), on SQLite and PostgreSQL.

The route answers exactly what ``loradex check --json`` prints for the same references, reads
only what the registry holds, and has one problem+json answer per way a request can be wrong.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.api.test_api import assert_problem

Headers = Callable[..., dict[str, str]]


def post(app: Any, body: Any, headers: dict[str, str] | None = None) -> Any:
    """POST /api/v1/check through httpx's ASGI transport (no server, no socket)."""
    import httpx

    async def go() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loradex.test") as http:
            if isinstance(body, bytes):
                return await http.post(
                    "/api/v1/check",
                    content=body,
                    headers={**(headers or {}), "Content-Type": "application/json"},
                )
            return await http.post("/api/v1/check", json=body, headers=headers or {})

    return asyncio.run(go())


def cli_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["check", *args, "--json"])
    assert result.exit_code in (0, 1), result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.fixture
def setup(
    registry: Any, cli_env: dict[str, str], make_adapter: Callable[..., Path], tiny_base: Path
) -> dict[str, Any]:
    """support@1 (fits), support@2 (rank 32, aliased production), wide@1 (hidden 32), base tiny."""
    registry.add_base(tiny_base, name="tiny", store=True)
    good = registry.register(make_adapter(seed=1), name="support")
    ranked = registry.register(make_adapter(seed=2, rank=32), name="support")
    registry.set_alias("support@2", "production")
    registry.register(make_adapter(seed=3, hidden=32), name="wide")
    return {"good": good, "ranked": ranked, "base": tiny_base}


def test_a_reference_is_checked_exactly_as_the_cli_does(
    app: Any, setup: dict[str, Any], token: Headers, registry: Any
) -> None:
    read = token("read")
    for ref, serving in (
        ("support@1", None),
        ("support", "vllm"),
        ("support@production", "vllm:max_rank=16"),
        ("support@2", "vllm:max_rank=64"),
        (f"sha256:{setup['good'].weights_sha256[:16]}", "lorax"),
        ("wide@1", None),
    ):
        body: dict[str, Any] = {"adapter": ref, "base": "tiny"}
        args = ["--adapter", ref, "--base", "tiny"]
        if serving is not None:
            body["serving"] = serving
            args += ["--serving", serving]
        response = post(app, body, read)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json() == cli_json(*args), ref
    codes = {f["code"] for f in post(app, {"adapter": "support@2", "base": "tiny", "serving": "vllm"}, read).json()["findings"]}
    assert "vllm_rank_too_large" in codes
    wide = post(app, {"adapter": "wide", "base": "tiny"}, read).json()
    assert wide["passed"] is False and "shape_mismatch" in {f["code"] for f in wide["findings"]}
    assert [a["name"] for a in wide["adapters"]] == ["wide -> wide@1"]
    strict = post(app, {"adapter": "support@1", "base": "tiny", "strict": True}, read).json()
    assert strict["strict"] is True


def test_uploaded_files_against_a_signature(
    app: Any,
    setup: dict[str, Any],
    token: Headers,
    upload: Callable[[Path], dict[str, str]],
    make_adapter: Callable[..., Path],
    registry: Any,
    tmp_path: Path,
) -> None:
    from mergetools.signature import read_signature

    signature = read_signature(setup["base"])
    signature_file = tmp_path / "signature.json"
    signature_file.write_text(json.dumps(signature))
    read = token("read")
    for folder, serving in ((make_adapter(seed=7), None), (make_adapter(seed=8, rank=32), "vllm")):
        body: dict[str, Any] = {"files": upload(folder), "signature": signature}
        args = ["--adapter", str(folder), "--base-signature", str(signature_file)]
        if serving:
            body["serving"] = serving
            args += ["--serving", serving]
        response = post(app, body, read)
        assert response.status_code == 200, response.text
        remote, local = response.json(), cli_json(*args)
        fingerprint = local["adapters"][0]["fingerprint"]
        assert remote["adapters"] == [
            {"name": "upload", "path": None, "reference": "upload", "fingerprint": fingerprint}
        ]
        assert [(f["code"], f["severity"], f["module"]) for f in remote["findings"]] == [
            (f["code"], f["severity"], f["module"]) for f in local["findings"]
        ]
        assert remote["passed"] == local["passed"] and remote["serving"] == local["serving"]
        assert str(folder) not in response.text and "cache" not in response.text
    uploads = registry.settings.cache_dir / "uploads"
    assert not any(uploads.iterdir()), "the temp folder of a checked upload is removed"
    broken = post(app, {"adapter": "support@1", "signature": {"tensors": "nope"}}, read).json()
    assert broken["passed"] is False and broken["findings"][0]["severity"] == "error"


def test_every_error_is_one_problem(
    app: Any,
    setup: dict[str, Any],
    token: Headers,
    upload: Callable[[Path], dict[str, str]],
    make_adapter: Callable[..., Path],
    registry: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read = token("read")
    files = upload(make_adapter(seed=9))
    ok = {"adapter": "support@1", "base": "tiny"}
    assert_problem(post(app, ok), 401, "unauthenticated")
    assert_problem(post(app, ok, {"Authorization": "Bearer ldx_nope"}), 401, "unauthenticated")
    cases: list[tuple[Any, int, str]] = [
        ({"base": "tiny"}, 422, "invalid_input"),
        ({"adapter": "support@1", "files": files, "base": "tiny"}, 422, "invalid_input"),
        ({"adapter": "support@1"}, 422, "invalid_input"),
        ({**ok, "signature": {}}, 422, "invalid_input"),
        ({**ok, "serving": "tgi"}, 422, "invalid_input"),
        ({**ok, "serving": "vllm:max_rank=17"}, 422, "invalid_input"),
        ({**ok, "verify_weights": True}, 422, "invalid_request"),
        ({**ok, "adapter": 7}, 422, "invalid_request"),
        (b"{not json", 422, "invalid_request"),
        ({"adapter": "missing@1", "base": "tiny"}, 404, "not_found"),
        ({"adapter": "support@9", "base": "tiny"}, 404, "not_found"),
        ({"adapter": "support@staging", "base": "tiny"}, 404, "not_found"),
        ({"adapter": "sha256:" + "f" * 64, "base": "tiny"}, 404, "not_found"),
        ({"adapter": "support@1", "base": "other"}, 404, "not_found"),
        ({"adapter": "support@x y", "base": "tiny"}, 422, "invalid_input"),
        ({"files": {}, "base": "tiny"}, 422, "invalid_input"),
        ({"files": {"adapter_config.json": "f" * 64}, "base": "tiny"}, 422, "blob_not_uploaded"),
        ({"files": {"adapter_config.json": "xyz"}, "base": "tiny"}, 422, "invalid_input"),
        ({"files": {"../adapter_config.json": files["adapter_config.json"]}, "base": "tiny"}, 422, "invalid_input"),
        ({"files": {"/etc/adapter_config.json": files["adapter_config.json"]}, "base": "tiny"}, 422, "invalid_input"),
    ]
    # Folders of the server are never read, however the reference is spelled.
    outside = make_adapter(seed=10)
    monkeypatch.chdir(outside.parent)
    for ref in (str(outside), f"./{outside.name}", "~/x", "../x", "hf://org/repo"):
        cases.append(({"adapter": ref, "base": "tiny"}, 422, "invalid_input"))
        cases.append(({"adapter": "support@1", "base": ref}, 422, "invalid_input"))
    cases.append(({"adapter": outside.name, "base": "tiny"}, 404, "not_found"))
    cases.append(({"adapter": "support@1", "base": str(setup["base"])}, 422, "invalid_input"))
    cases.append(({"adapter": "support@1", "base": setup["base"].name}, 404, "not_found"))
    for body, status, code in cases:
        problem = assert_problem(post(app, body, read), status, code)
        assert str(outside) not in problem["detail"] or code == "invalid_input", body
    missing = assert_problem(
        post(app, {"files": {"adapter_config.json": "e" * 64}, "base": "tiny"}, read), 422, "blob_not_uploaded"
    )
    assert missing["missing"] == {"adapter_config.json": "e" * 64}

    scoped = token("read", prefix="billing-")
    assert_problem(post(app, ok, scoped), 403, "forbidden")
    sha_ref = {"adapter": f"sha256:{setup['good'].weights_sha256}", "base": "tiny"}
    assert_problem(post(app, sha_ref, scoped), 403, "forbidden")
    assert_problem(post(app, {"adapter": "support@404", "base": "tiny"}, scoped), 403, "forbidden")
    assert post(app, {"files": files, "base": "tiny"}, scoped).status_code == 200
    assert post(app, sha_ref, token("read", prefix="support")).status_code == 200
