"""``loradex base add hf://...``: header-only and stored registration of Hub checkpoints, online
over real HTTP to the fake Hub and offline from a local Hub cache (tests/hub_fixtures.py); a
registered Hub base used by name in a merge."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import Result

from tests.conftest import write_tiny_adapter, write_tiny_base
from tests.e2e.test_hub import one_error, run
from tests.hub_fixtures import FakeHub, fake_hub, folder_files, use_hub, write_hub_cache

__all__ = ["fake_hub"]


def base_json(result: Result) -> dict[str, object]:
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_base_add_header_only_records_the_commit_and_reads_only_headers(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = folder_files(write_tiny_base(tmp_path / "base"))
    commit = fake_hub.add_repo("org/tiny-base", files)
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    row = base_json(run(tmp_path, "base", "add", "hf://org/tiny-base", "--json"))
    assert row["name"] == "tiny-base"
    assert (row["source_repo"], row["source_revision"]) == ("org/tiny-base", commit)
    assert row["fingerprint"] is None and row["source_path"] is None and row["stored_files"] == 0
    weights = [r for r in fake_hub.requests if r.path.endswith("/model.safetensors") and r.method == "GET"]
    assert weights and all("Range" in r.headers for r in weights)
    assert not list((tmp_path / "hub").rglob("*.safetensors"))
    shown = base_json(run(tmp_path, "base", "show", "tiny-base", "--json"))
    assert "model.layers.0.self_attn.q_proj.weight" in shown["signature"]["tensors"]  # type: ignore[index]
    assert "registered from its headers only" in run(tmp_path, "base", "show", "tiny-base").stdout
    text = run(tmp_path, "base", "add", "hf://org/tiny-base").stdout
    assert "headers only" in text and f"hf://org/tiny-base@{commit}" in text  # the same row again
    assert len(base_json(run(tmp_path, "base", "list", "--json"))) == 1  # type: ignore[arg-type]


def test_base_add_store_fingerprints_and_fills_a_header_only_base(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_tiny_base(tmp_path / "base")
    commit = fake_hub.add_repo("org/tiny-base", folder_files(folder))
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    run(tmp_path, "base", "add", "hf://org/tiny-base", "--name", "tb")
    row = base_json(run(tmp_path, "base", "add", f"hf://org/tiny-base@{commit}", "--store", "--json"))
    local = base_json(run(tmp_path / "other", "base", "add", str(folder), "--json"))
    assert row["name"] == "tb" and row["fingerprint"] == local["fingerprint"]
    assert row["stored_files"] == 2 and row["source_revision"] == commit
    assert len(base_json(run(tmp_path, "base", "list", "--json"))) == 1  # type: ignore[arg-type]
    kinds = [e["kind"] for e in json.loads(run(tmp_path, "journal", "--json").stdout)]
    assert "base.fingerprinted" in kinds and "base.stored" in kinds


def test_base_add_offline_from_the_cache_and_refuses_a_partial_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = folder_files(write_tiny_base(tmp_path / "base"))
    cache = tmp_path / "hub"
    write_hub_cache(cache, "org/tiny-base", files, commit="c" * 40)
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    write_hub_cache(cache, "org/sharded", {
        "config.json": files["config.json"],
        "model.safetensors.index.json": json.dumps(index).encode(),
        "model-00001-of-00002.safetensors": files["model.safetensors"],
    }, commit="d" * 40)
    use_hub(monkeypatch, cache=cache, offline=True)
    row = base_json(run(tmp_path, "base", "add", "hf://org/tiny-base", "--json"))
    assert row["source_revision"] == "c" * 40 and row["fingerprint"] is None
    stored = base_json(run(tmp_path, "base", "add", "hf://org/tiny-base", "--store", "--json"))
    assert stored["fingerprint"] and stored["stored_files"] == 2
    for extra in ((), ("--store",)):
        error = one_error(run(tmp_path, "base", "add", "hf://org/sharded", *extra, code=1))
        assert "partial snapshot" in error and "model-00002-of-00002.safetensors" in error, error
        assert "model-00001" not in error
    error = one_error(run(tmp_path, "base", "add", "hf://org/never", code=1))
    assert "hf://org/never" in error and "HF_HUB_OFFLINE" in error


def test_base_add_usage(tmp_path: Path) -> None:
    result = run(tmp_path, "base", "add", "hf://org/x", "--repo", "org/x", code=2)
    assert "hf://ORG/MODEL@REV names both" in result.stderr
    result = run(tmp_path, "base", "add", str(tmp_path / "missing"), code=2)
    assert "does not exist" in result.stderr
    assert "malformed" in one_error(run(tmp_path, "base", "add", "hf://a/b/c", code=1))


def test_merge_by_the_name_of_a_header_only_hub_base_downloads_its_commit(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_tiny_base(tmp_path / "base")
    commit = fake_hub.add_repo("org/tiny-base", folder_files(folder))
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    run(tmp_path, "base", "add", "hf://org/tiny-base")
    fake_hub.add_repo("org/tiny-base", {"model.safetensors": b"moved on"})  # main moves
    write_tiny_adapter(tmp_path / "adapter")
    run(tmp_path, "register", str(tmp_path / "adapter"), "--name", "support")
    data = json.loads(run(tmp_path, "merge", "--base", "tiny-base", "--adapter", "support@1",
                          "--out", str(tmp_path / "merged"), "--json").stdout)
    assert data["recorded_checkpoint"]["base"] == "tiny-base"
    snapshot = tmp_path / "hub" / "models--org--tiny-base" / "snapshots" / commit
    assert (snapshot / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def _merged_checkpoint(tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> int:
    fake_hub.add_repo("org/tiny-base", folder_files(write_tiny_base(tmp_path / "base")))
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    run(tmp_path, "base", "add", "hf://org/tiny-base")
    write_tiny_adapter(tmp_path / "adapter")
    run(tmp_path, "register", str(tmp_path / "adapter"), "--name", "support")
    write_tiny_adapter(tmp_path / "adapter2", seed=1)
    run(tmp_path, "register", str(tmp_path / "adapter2"), "--name", "tone")
    data = json.loads(run(tmp_path, "merge", "--base", "tiny-base", "--adapter", "support@1",
                          "--adapter", "tone@1", "--weight", "0.7", "--weight", "0.3",
                          "--out", str(tmp_path / "merged"), "--json").stdout)
    return int(data["recorded_checkpoint"]["id"])


def test_push_a_merged_checkpoint_with_its_card_and_records_the_hub_copy(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = _merged_checkpoint(tmp_path, fake_hub, monkeypatch)
    data = json.loads(run(tmp_path, "push", f"checkpoint:{cid}", "--to", "hf://team/merged", "--json").stdout)
    head = fake_hub.head("team/merged")
    assert data["commit"] == head and data["checkpoint"] == cid and data["base_model"] == "org/tiny-base"
    assert [p for p in fake_hub.paths("POST") if "/commit/" in p] == ["/api/models/team/merged/commit/main"]
    files = fake_hub.files("team/merged")
    merged = tmp_path / "merged"
    for name in ("config.json", "model.safetensors"):
        assert files[name] == (merged / name).read_bytes()
    assert "loradex.json" not in files  # the merge record names local paths
    card = files["README.md"].decode()
    support = json.loads(run(tmp_path, "show", "support@1", "--json").stdout)
    tone = json.loads(run(tmp_path, "show", "tone@1", "--json").stdout)
    assert "base_model: org/tiny-base" in card and "library_name: transformers" in card
    assert f"| support@1 | 0.7 | {support['weights_sha256']} |" in card
    assert f"| tone@1 | 0.3 | {tone['weights_sha256']} |" in card
    listed = json.loads(run(tmp_path, "checkpoints", "--ref", "support@1", "--json").stdout)["items"]
    hub_copy = next(c for c in listed if c["id"] == data["recorded_checkpoint"])
    assert hub_copy["location"] == f"hf://team/merged@{head}"
    assert hub_copy["metadata"]["pushed_from"] == cid and hub_copy["base"] == "tiny-base"
    assert [m["weight"] for m in hub_copy["members"]] == [0.7, 0.3]
    error = one_error(run(tmp_path, "push", f"checkpoint:{hub_copy['id']}", "--to", "hf://team/x", code=1))
    assert "not in a local folder" in error


def test_push_checkpoint_refusals(tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    cid = _merged_checkpoint(tmp_path, fake_hub, monkeypatch)
    before = len(fake_hub.paths("POST"))
    assert "malformed" in one_error(run(tmp_path, "push", "checkpoint:x1", "--to", "hf://team/m", code=1))
    result = run(tmp_path, "push", "checkpoint:999", "--to", "hf://team/m", code=1)
    assert result.stderr.splitlines() == [
        "error: checkpoint 999 is not recorded in this registry",
        "hint: list the recorded checkpoints",
    ]
    from safetensors.numpy import load_file, save_file

    weights = tmp_path / "merged" / "model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(weights))
    error = one_error(run(tmp_path, "push", f"checkpoint:{cid}", "--to", "hf://team/m", code=1))
    assert f"checkpoint {cid}" in error and "files changed" in error
    assert len(fake_hub.paths("POST")) == before  # nothing sent


def test_hub_behaviour_is_pinned_to_the_installed_huggingface_hub() -> None:
    import huggingface_hub

    from tests.e2e.test_hub import REPO

    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().split()
                if "==" in line)
    assert huggingface_hub.__version__ == pins["huggingface_hub"]
    doc = (REPO / "docs" / "hub.md").read_text()
    assert f"pinned to {huggingface_hub.__version__}" in doc
    assert f"## Endpoints used (huggingface_hub {huggingface_hub.__version__})" in doc


def test_pull_with_a_token_links_a_hub_base_and_reads_the_config_without_a_card(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.add_repo("org/tiny-base", folder_files(write_tiny_base(tmp_path / "base")))
    adapter = folder_files(write_tiny_adapter(tmp_path / "a", base_model_name_or_path="org/tiny-base"))
    fake_hub.add_repo("org/private-lora", adapter, token="secret")  # no README.md
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint, token="secret")
    run(tmp_path, "base", "add", "hf://org/tiny-base", "--name", "tb")
    data = json.loads(run(tmp_path, "pull", "hf://org/private-lora", "--json").stdout)
    assert data["base_model"] == "org/tiny-base"
    gets = [r for r in fake_hub.requests if "private-lora" in r.path]
    auth = [{k.lower(): v for k, v in r.headers.items()}.get("authorization") for r in gets]
    assert gets and auth == ["Bearer secret"] * len(gets), auth
    shown = json.loads(run(tmp_path, "show", data["ref"], "--json").stdout)
    assert shown["base"]["name"] == "tb"


def test_hf_home_and_an_offline_header_check(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    from tests.e2e.test_hub import REPO

    fake_hub.add_repo("org/tiny-base", folder_files(write_tiny_base(tmp_path / "base")))
    adapter = str(write_tiny_adapter(tmp_path / "a"))
    env = use_hub(monkeypatch, cache=tmp_path / "unused", endpoint=fake_hub.endpoint)
    child = {k: v for k, v in os.environ.items() if not k.startswith(("LORADEX_", "HF_"))}
    child.update(env, LORADEX_HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf-home"))
    del child["HF_HUB_CACHE"]  # HF_HOME/hub is the cache then

    def check(offline: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", "check", "--adapter", adapter, "--base",
             "hf://org/tiny-base", "--json"],
            env={**child, "HF_HUB_OFFLINE": offline}, cwd=REPO, capture_output=True, text=True,
            timeout=120,
        )

    online = check("0")
    assert online.returncode == 0 and json.loads(online.stdout)["ok"], online.stderr
    assert (tmp_path / "hf-home" / "hub" / "models--org--tiny-base" / "refs" / "main").is_file()
    assert not (tmp_path / "unused").exists()
    fake_hub.stop()  # nothing answers now
    offline = check("1")
    assert offline.returncode == 0 and json.loads(offline.stdout)["ok"], offline.stderr


def test_push_to_a_branch_and_the_card_carries_lineage(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    write_tiny_adapter(tmp_path / "adapter", base_model_name_or_path="org/tiny-base")
    run(tmp_path, "register", str(tmp_path / "adapter"), "--name", "support")
    run(tmp_path, "resize", "support@1", "--rank", "2", "--name", "small", "--quiet")
    data = json.loads(run(tmp_path, "push", "small@1", "--to", "hf://team/small", "--revision", "dev",
                          "--json").stdout)
    assert data["revision"] == "dev" and fake_hub.head("team/small", "dev") == data["commit"]
    assert "README.md" not in fake_hub.files("team/small", "main")  # main untouched
    card = fake_hub.files("team/small", "dev")["README.md"].decode()
    assert "- parent support@1" in card, card
    shown = json.loads(run(tmp_path, "show", "small@1", "--json").stdout)
    assert shown["tags"]["hub.revision"] == "dev" and shown["tags"]["hub.commit"] == data["commit"]


def test_an_online_pull_then_offline_by_branch(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = folder_files(write_tiny_adapter(tmp_path / "a"))
    commit = fake_hub.add_repo("org/lora", files)
    fake_hub.add_repo("org/tiny-base", folder_files(write_tiny_base(tmp_path / "base")))
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    run(tmp_path, "pull", "hf://org/lora")
    run(tmp_path, "base", "add", "hf://org/tiny-base", "--store")
    refs = tmp_path / "hub" / "models--org--lora" / "refs" / "main"
    assert refs.read_text() == commit  # as huggingface_hub writes it
    use_hub(monkeypatch, cache=tmp_path / "hub", offline=True)
    data = json.loads(run(tmp_path, "pull", "hf://org/lora", "--name", "again", "--json").stdout)
    assert data["hub"]["commit"] == commit
    assert base_json(run(tmp_path, "base", "add", "hf://org/tiny-base", "--json"))["fingerprint"]


def test_check_by_the_name_of_a_header_only_hub_base_reads_headers_only(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.add_repo("org/tiny-base", folder_files(write_tiny_base(tmp_path / "base")))
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    run(tmp_path, "base", "add", "hf://org/tiny-base")
    fake_hub.requests.clear()
    adapter = str(write_tiny_adapter(tmp_path / "a"))
    assert json.loads(run(tmp_path, "check", "--adapter", adapter, "--base", "tiny-base", "--json").stdout)["ok"]
    assert not [r for r in fake_hub.requests if r.path.endswith(".safetensors") and "Range" not in r.headers]
    assert not list((tmp_path / "hub").rglob("*.safetensors"))


def test_merge_with_an_hf_base_records_the_registered_base_of_that_commit(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = fake_hub.add_repo("org/tiny-base", folder_files(write_tiny_base(tmp_path / "base")))
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    write_tiny_adapter(tmp_path / "adapter")
    run(tmp_path, "register", str(tmp_path / "adapter"), "--name", "support")
    data = json.loads(run(tmp_path, "merge", "--base", "hf://org/tiny-base", "--adapter", "support@1",
                          "--out", str(tmp_path / "m1"), "--json").stdout)
    assert data["recorded_checkpoint"]["base"] is None  # nothing registered from that commit yet
    run(tmp_path, "base", "add", "hf://org/tiny-base", "--name", "tb")
    data = json.loads(run(tmp_path, "merge", "--base", f"hf://org/tiny-base@{commit}", "--adapter",
                          "support@1", "--out", str(tmp_path / "m2"), "--json").stdout)
    assert data["recorded_checkpoint"]["base"] == "tb"
