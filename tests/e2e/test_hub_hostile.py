"""Hub errors and hostile inputs: every error the Hub answers becomes one line naming the repo and
what to do (pull, base add, push, check), odd references, a fake Hub that answers garbage, a huge
card, links out of a cached snapshot, a listed file that 404s, and a download killed mid-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_tiny_adapter, write_tiny_base
from tests.e2e.test_hub import CARD, REPO, hub_adapter, one_error, run
from tests.hub_fixtures import FakeHub, fake_hub, folder_files, use_hub, write_hub_cache

__all__ = ["fake_hub"]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, bytes]:
    found = folder_files(write_tiny_adapter(tmp_path / "src-adapter"))
    found["README.md"] = CARD
    return found


@pytest.fixture(autouse=True)
def no_retry_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda s: None, raising=False)


@pytest.mark.parametrize(
    "ref",
    ["hf://", "hf://a/b/c", "hf://a/b@", "hf://a/b@..", "hf://a/b@main/../x", "hf://a/b@../main",
     "hf://../b", "hf://a/b@main/", "hf://a/b@x.lock", "hf://a/b@v1.", "hf://a/b@x//y", "hf://a b/c"],
)
def test_odd_references_are_malformed_before_any_request(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, ref: str
) -> None:
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    base = str(write_tiny_base(tmp_path / "base"))
    for args in (("pull", ref), ("base", "add", ref), ("check", "--adapter", ref, "--base", base),
                 ("merge", "--base", ref, "--adapter", base, "--out", str(tmp_path / "o")),
                 ("push", "x@1", "--to", ref)):
        error = one_error(run(tmp_path, *args, code=1))
        assert "malformed" in error, (args, error)
    assert not fake_hub.requests


def test_a_bare_model_id_is_a_repo(tmp_path: Path, fake_hub: FakeHub, files: dict[str, bytes],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.add_repo("gpt-lora", files)  # canonical ids have no org
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    assert json.loads(run(tmp_path, "pull", "hf://gpt-lora", "--json").stdout)["ref"] == "gpt-lora@1"


@pytest.mark.parametrize(
    ("setup", "expect"),
    [
        (lambda hub: None, "check the repo name"),
        (lambda hub: hub.add_repo("org/x", {"a": b"1"}, gated=True), "accept its terms"),
        (lambda hub: hub.add_repo("org/x", {"a": b"1"}, token="secret"), "set HF_TOKEN"),
        (lambda hub: hub.sticky_errors.update({"/api/models/org/x": 429}), "rate-limiting"),
        (lambda hub: hub.sticky_errors.update({"/api/models/org/x": 500}), "answered 500"),
        (lambda hub: hub.raw.update({"/api/models/org/x": b"<html>garbage"}), "cannot read"),
        (lambda hub: hub.raw.update({"/api/models/org/x": b'{"id": "org/x", "sha": "../../etc", "siblings": []}'}),
         "malformed commit id"),
    ],
    ids=["404", "gated-403", "private-401", "429", "500", "garbage", "bad-commit"],
)
@pytest.mark.parametrize("command", ["pull", "base add", "check --base"])
def test_hub_errors_are_one_line_for_every_command(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, setup: object, expect: str,
    command: str
) -> None:
    setup(fake_hub)  # type: ignore[operator]
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    args = {"pull": ("pull", "hf://org/x"), "base add": ("base", "add", "hf://org/x"),
            "check --base": ("check", "--adapter", str(write_tiny_adapter(tmp_path / "a")),
                             "--base", "hf://org/x")}[command]
    error = one_error(run(tmp_path, *args, code=1))
    assert "hf://org/x" in error and expect in error, error


def test_revision_not_found_and_unreachable_hub(tmp_path: Path, fake_hub: FakeHub, files: dict[str, bytes],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    hub_adapter(fake_hub, files, repo="org/x")
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    error = one_error(run(tmp_path, "pull", "hf://org/x@nope", code=1))
    assert "hf://org/x@nope" in error and "check the branch, tag or commit" in error
    use_hub(monkeypatch, cache=tmp_path / "hub2", endpoint="http://127.0.0.1:9")
    for args in (("pull", "hf://org/x"), ("base", "add", "hf://org/x")):
        error = one_error(run(tmp_path, *args, code=1))
        assert "hf://org/x" in error and ("HF_ENDPOINT" in error or "HF_HUB_OFFLINE" in error), error


@pytest.mark.parametrize(
    ("where", "status", "expect"),
    [("/api/repos/create", 401, "set HF_TOKEN"), ("/commit/", 403, "write access"),
     ("/preupload/", 429, "rate-limiting"), ("/commit/", 412, "retry the push")],
    ids=["create-401", "commit-403", "preupload-429", "commit-412"],
)
def test_push_errors_are_one_line(tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch,
                                  where: str, status: int, expect: str) -> None:
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    write_tiny_adapter(tmp_path / "adapter", base_model_name_or_path="org/tiny-base")
    run(tmp_path, "register", str(tmp_path / "adapter"), "--name", "support")
    fake_hub.sticky_errors[where] = status
    error = one_error(run(tmp_path, "push", "support@1", "--to", "hf://team/support", code=1))
    assert "hf://team/support" in error and expect in error, error
    shown = json.loads(run(tmp_path, "show", "support@1", "--json").stdout)
    assert "hub.commit" not in shown["tags"]  # nothing recorded


def test_a_listed_file_that_404s(tmp_path: Path, fake_hub: FakeHub, files: dict[str, bytes],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    hub_adapter(fake_hub, files, repo="org/x")
    fake_hub.errors["/resolve/"] = 404  # listed in the model info, then missing
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    error = one_error(run(tmp_path, "pull", "hf://org/x", code=1))
    assert "hf://org/x" in error, error
    fake_hub.add_repo("org/b", {"config.json": b"{}", "model.safetensors.index.json":
                                json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}).encode()})
    error = one_error(run(tmp_path, "base", "add", "hf://org/b", "--store", code=1))
    assert "hf://org/b" in error and "model-00001-of-00002.safetensors" in error, error
    fake_hub.add_repo("org/c", {"config.json": b"{}", "model.safetensors.index.json":
                                json.dumps({"weight_map": {"a": "../../outside.safetensors"}}).encode()})
    error = one_error(run(tmp_path, "base", "add", "hf://org/c", "--store", code=1))
    assert "hf://org/c" in error and "top folder" in error, error


def test_a_huge_card_is_neither_downloaded_nor_read(
    tmp_path: Path, fake_hub: FakeHub, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergetools.files import SIZE_LIMITS

    huge = CARD + b"x" * (SIZE_LIMITS["card"] + 1)
    fake_hub.add_repo("org/x", {**files, "README.md": huge})
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    data = json.loads(run(tmp_path, "pull", "hf://org/x", "--json").stdout)
    assert "README.md" not in data["files"] and data["ref"] == "x@1"
    assert data["base_model"] is None or data["base_model"] != "org/tiny-base"  # the card unread
    assert not [p for p in fake_hub.paths("GET") if p.endswith("/README.md")]


def test_links_out_of_a_cached_snapshot_are_refused(
    tmp_path: Path, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(files["adapter_model.safetensors"])
    snapshot = write_hub_cache(cache, "org/x", files, commit="e" * 40)
    (snapshot / "adapter_model.safetensors").unlink()
    (snapshot / "adapter_model.safetensors").symlink_to(secret)
    base = folder_files(write_tiny_base(tmp_path / "base"))
    base_snapshot = write_hub_cache(cache, "org/b", base, commit="f" * 40)
    (base_snapshot / "model.safetensors").unlink()
    (base_snapshot / "model.safetensors").symlink_to(tmp_path / "base" / "model.safetensors")
    (cache / "models--org--y" / "refs").mkdir(parents=True)
    (cache / "models--org--y" / "refs" / "main").write_text("../../models--org--x/snapshots/" + "e" * 40)
    use_hub(monkeypatch, cache=cache, offline=True)
    for args in (("pull", "hf://org/x"), ("base", "add", "hf://org/b"), ("base", "add", "hf://org/b", "--store")):
        error = one_error(run(tmp_path, *args, code=1))
        assert "outside the folder" in error, (args, error)
    for args in (("pull", "hf://org/y"), ("base", "add", "hf://org/y")):
        error = one_error(run(tmp_path, *args, code=1))
        assert "hf://org/y" in error, (args, error)


def test_a_download_killed_mid_way_is_resumed(
    tmp_path: Path, fake_hub: FakeHub, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = files["adapter_model.safetensors"]
    commit = fake_hub.add_repo("org/x", files)
    fake_hub.stall["adapter_model.safetensors"] = len(weights) // 2
    env = use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    child = {k: v for k, v in os.environ.items() if not k.startswith("LORADEX_")}
    child.update(env, LORADEX_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "pull", "hf://org/x", "--json"],
                            env=child, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    blobs = tmp_path / "hub" / "models--org--x" / "blobs"

    def half_written() -> bool:
        for p in blobs.iterdir() if blobs.is_dir() else []:
            try:
                if p.name.endswith(".incomplete") and p.stat().st_size >= len(weights) // 2:
                    return True
            except FileNotFoundError:
                pass
        return False

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not half_written():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    orphans = [p.name for p in blobs.iterdir() if p.name.endswith(".incomplete")]
    assert orphans  # the killed process's half file
    fake_hub.stall.clear()
    fake_hub.release.set()
    fake_hub.requests.clear()
    data = json.loads(run(tmp_path, "pull", "hf://org/x", "--json").stdout)
    assert data["hub"]["commit"] == commit
    snapshot = tmp_path / "hub" / "models--org--x" / "snapshots" / commit
    assert (snapshot / "adapter_model.safetensors").read_bytes() == weights
    # huggingface_hub 2.4.0 downloads into a per-process `<etag>.<uuid>.incomplete`: the retry
    # fetches the file whole again (no Range), and the killed process's half file stays behind.
    gets = [r for r in fake_hub.requests if r.method == "GET" and r.path.endswith("/adapter_model.safetensors")]
    assert gets and not any("Range" in r.headers for r in gets)
    assert [p.name for p in blobs.iterdir() if p.name.endswith(".incomplete")] == orphans
    shown = json.loads(run(tmp_path, "show", "x@1", "--json").stdout)
    assert shown["status"] == "ready" and shown["weights_sha256"] == data["weights_sha256"]


@pytest.mark.parametrize("command", ["pull", "base add", "base add --store", "check --base"])
def test_garbage_file_answers(tmp_path: Path, fake_hub: FakeHub, files: dict[str, bytes],
                              monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    hub_adapter(fake_hub, files, repo="org/x")
    fake_hub.add_repo("org/x", {**files, **folder_files(write_tiny_base(tmp_path / "base"))})
    fake_hub.raw["/resolve/"] = b"<html>not a file</html>"  # no ETag, no X-Repo-Commit
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    args = {"pull": ("pull", "hf://org/x"), "base add": ("base", "add", "hf://org/x"),
            "base add --store": ("base", "add", "hf://org/x", "--store"),
            "check --base": ("check", "--adapter", str(write_tiny_adapter(tmp_path / "a")),
                             "--base", "hf://org/x")}[command]
    error = one_error(run(tmp_path, *args, code=1))
    assert "hf://org/x" in error and "HF_ENDPOINT" in error, error


def test_garbage_commit_answer(tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    write_tiny_adapter(tmp_path / "adapter", base_model_name_or_path="org/tiny-base")
    run(tmp_path, "register", str(tmp_path / "adapter"), "--name", "support")
    fake_hub.raw["/commit/"] = b'{"nothing": "useful"}'
    error = one_error(run(tmp_path, "push", "support@1", "--to", "hf://team/support", code=1))
    assert "hf://team/support" in error and "cannot read" in error, error
    url = f"{fake_hub.endpoint}/team/support/commit/{'0' * 40}"
    fake_hub.raw["/commit/"] = json.dumps({"commitOid": "../../x", "commitUrl": url, "success": True}).encode()
    error = one_error(run(tmp_path, "push", "support@1", "--to", "hf://team/support", code=1))
    assert "malformed commit id" in error, error
    assert "hub.commit" not in json.loads(run(tmp_path, "show", "support@1", "--json").stdout)["tags"]


def test_a_header_fetch_killed_mid_way_leaves_no_view_and_its_scratch_is_cleaned(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.add_repo("org/b", folder_files(write_tiny_base(tmp_path / "base")))
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    root = tmp_path / "home" / "cache" / "hub-headers" / "org--b"
    stale = root / ".fetch-killed"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    fresh = root / ".fetch-running"
    fresh.mkdir()
    row = json.loads(run(tmp_path, "base", "add", "hf://org/b", "--json").stdout)
    assert not stale.exists() and fresh.exists()  # a live fetch's folder is left alone
    assert sorted(p.name for p in root.iterdir()) == sorted([".fetch-running", row["source_revision"]])
