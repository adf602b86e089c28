"""Pull from and push to the Hugging Face Hub, over real HTTP to a fake Hub on 127.0.0.1 and
offline from a local Hub cache laid out as huggingface_hub lays it out (tests/hub_fixtures.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from tests.conftest import write_tiny_adapter, write_tiny_base
from tests.hub_fixtures import FakeHub, fake_hub, folder_files, use_hub, write_hub_cache

__all__ = ["fake_hub"]

REPO = Path(__file__).resolve().parents[2]
CARD = b"---\nbase_model: org/tiny-base\nlibrary_name: peft\n---\n# an adapter\n"


def run(tmp: Path, *args: str, code: int = 0) -> Result:
    env = {"LORADEX_HOME": str(tmp / "home"), "LORADEX_USER": "tester",
           "LORADEX_DATABASE_URL": None, "LORADEX_BLOB_URL": None}
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == code, (args, result.output, result.exception)
    return result


def one_error(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def adapter_files(tmp_path: Path) -> dict[str, bytes]:
    folder = write_tiny_adapter(tmp_path / "src-adapter")
    files = folder_files(folder)
    files["README.md"] = CARD
    return files


def hub_adapter(hub: FakeHub, files: dict[str, bytes], repo: str = "org/tiny-lora", **kw: object) -> str:
    extra = {
        "checkpoint-100/adapter_model.safetensors": b"x" * 10,  # a training checkpoint: not pulled
        "training_args.bin": b"x",
        "adapter_model.bin": b"x",  # only when no safetensors
        "model.onnx": b"x",
    }
    return hub.add_repo(repo, {**files, **extra}, **kw)  # type: ignore[arg-type]


def test_pull_online_downloads_only_the_adapter_files_and_registers(
    tmp_path: Path, fake_hub: FakeHub, adapter_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = hub_adapter(fake_hub, adapter_files)
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    data = json.loads(run(tmp_path, "pull", "hf://org/tiny-lora", "--json").stdout)
    assert data["ref"] == "tiny-lora@1"
    assert data["source"] == f"hf://org/tiny-lora@{commit}"
    assert data["hub"] == {"repo": "org/tiny-lora", "revision": None, "commit": commit, "subfolder": None}
    assert data["base_model"] == "org/tiny-base"
    gets = [p.rsplit("/", 1)[-1] for p in fake_hub.paths("GET") if "/resolve/" in p]
    assert sorted(gets) == sorted(adapter_files)  # no .bin, no checkpoint, no onnx
    shown = json.loads(run(tmp_path, "show", "tiny-lora@1", "--json").stdout)
    assert shown["source"] == f"hf://org/tiny-lora@{commit}"
    assert shown["metadata"]["hub"]["commit"] == commit
    # the same again: nothing new
    again = json.loads(run(tmp_path, "pull", f"hf://org/tiny-lora@{commit}", "--json").stdout)
    assert again["created"] is False and again["version"] == 1


def test_pull_offline_from_the_local_cache_and_refuses_a_partial_snapshot(
    tmp_path: Path, adapter_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    commit = "a" * 40
    write_hub_cache(cache, "org/tiny-lora", adapter_files, commit=commit)
    partial = {k: v for k, v in adapter_files.items() if k != "adapter_model.safetensors"}
    write_hub_cache(cache, "org/partial", partial, commit="b" * 40)
    use_hub(monkeypatch, cache=cache, offline=True)
    data = json.loads(run(tmp_path, "pull", "hf://org/tiny-lora", "--name", "cx", "--json").stdout)
    assert (data["ref"], data["source"]) == ("cx@1", f"hf://org/tiny-lora@{commit}")
    error = one_error(run(tmp_path, "pull", "hf://org/partial", code=1))
    assert "partial snapshot" in error and "adapter_model.safetensors" in error
    error = one_error(run(tmp_path, "pull", "hf://org/never-pulled", code=1))
    assert "hf://org/never-pulled" in error and "HF_HUB_OFFLINE" in error


def test_pull_subfolder(tmp_path: Path, fake_hub: FakeHub, adapter_files: dict[str, bytes],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    files = {f"adapters/cx/{k}": v for k, v in adapter_files.items() if k != "README.md"}
    files["README.md"] = CARD
    commit = fake_hub.add_repo("org/many", files)
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    data = json.loads(run(tmp_path, "pull", "hf://org/many", "--subfolder", "adapters/cx", "--json").stdout)
    assert data["hub"]["subfolder"] == "adapters/cx" and data["hub"]["commit"] == commit
    assert data["base_model"] == "org/tiny-base"


@pytest.mark.parametrize(
    ("setup", "expect"),
    [
        (lambda hub: None, "check the repo name"),
        (lambda hub: hub.add_repo("org/x", {"a": b"1"}, gated=True), "accept its terms"),
        (lambda hub: hub.add_repo("org/x", {"a": b"1"}, token="secret"), "set HF_TOKEN"),
        (lambda hub: hub.errors.update({"/api/models/org/x": 429}), "retry later"),
        (lambda hub: hub.add_repo("org/x", {"README.md": b"hi"}), "adapter_config.json"),
    ],
    ids=["404", "gated-403", "private-401", "rate-limit-429", "not-an-adapter"],
)
def test_hub_errors_are_one_line(tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch,
                                 setup: object, expect: str) -> None:
    setup(fake_hub)  # type: ignore[operator]
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda s: None, raising=False)
    error = one_error(run(tmp_path, "pull", "hf://org/x", code=1))
    assert "hf://org/x" in error and expect in error, error


def test_bad_reference_is_one_line(tmp_path: Path) -> None:
    error = one_error(run(tmp_path, "pull", "hf://not a repo", code=1))
    assert "malformed" in error


def _registered_for_push(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_hub: FakeHub,
                         *, base_name: str | None = "org/tiny-base") -> None:
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    write_tiny_adapter(tmp_path / "adapter", base_model_name_or_path=base_name)
    run(tmp_path, "register", str(tmp_path / "adapter"), "--name", "support", "--eval", "accuracy=0.9")


def test_push_one_commit_with_a_card_and_records_it(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    _registered_for_push(tmp_path, monkeypatch, fake_hub)
    data = json.loads(run(tmp_path, "push", "support@1", "--to", "hf://team/support", "--private", "--json").stdout)
    head = fake_hub.head("team/support")
    assert data["commit"] == head and data["parent_commit"] is not None
    assert [p for p in fake_hub.paths("POST") if "/commit/" in p] == ["/api/models/team/support/commit/main"]
    files = fake_hub.files("team/support")
    assert files["adapter_model.safetensors"] == (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes()
    card = files["README.md"].decode()
    assert "base_model: org/tiny-base" in card and "library_name: peft" in card
    assert "model-index" in card and "accuracy" in card
    shown = json.loads(run(tmp_path, "show", "support@1", "--json").stdout)
    assert shown["weights_sha256"] in card
    assert shown["tags"]["hub.commit"] == head and shown["tags"]["hub.repo"] == "team/support"
    assert fake_hub.repos["team/support"].private
    # pulled back, the same bytes
    pulled = json.loads(run(tmp_path, "pull", "hf://team/support", "--name", "back", "--json").stdout)
    assert pulled["weights_sha256"] == shown["weights_sha256"]


def test_push_refuses_a_local_base_path_and_a_moved_branch(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    _registered_for_push(tmp_path, monkeypatch, fake_hub, base_name="/home/me/models/llama")
    error = one_error(run(tmp_path, "push", "support@1", "--to", "hf://team/support", code=1))
    assert "base_model_name_or_path" in error and "/home/me/models/llama" in error
    assert not fake_hub.paths("POST")  # nothing sent


def test_concurrent_push_fails_instead_of_interleaving(
    tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    _registered_for_push(tmp_path, monkeypatch, fake_hub)
    fake_hub.add_repo("team/support", {"x": b"1"})
    from huggingface_hub import HfApi

    real = HfApi.create_commit

    def racing(self: HfApi, *args: object, **kwargs: object) -> object:
        fake_hub.add_repo("team/support", {"other": b"2"})  # another push lands first
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(HfApi, "create_commit", racing)
    error = one_error(run(tmp_path, "push", "support@1", "--to", "hf://team/support", code=1))
    assert "retry the push" in error
    assert "adapter_model.safetensors" not in fake_hub.files("team/support")


def test_hf_references_for_check_merge_and_base(
    tmp_path: Path, fake_hub: FakeHub, adapter_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_adapter(fake_hub, adapter_files)
    base = write_tiny_base(tmp_path / "base")
    fake_hub.add_repo("org/tiny-base", folder_files(base))
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    result = run(tmp_path, "check", "--adapter", "hf://org/tiny-lora", "--base", "hf://org/tiny-base", "--json")
    assert json.loads(result.stdout)["ok"] is True
    weights = [r for r in fake_hub.requests if r.path.endswith("/model.safetensors") and r.method == "GET"]
    assert weights and all("Range" in r.headers for r in weights)  # headers only
    cached = tmp_path / "hub" / "models--org--tiny-base" / "snapshots"
    assert not list(cached.rglob("*.safetensors"))  # config and index only
    run(tmp_path, "merge", "--base", "hf://org/tiny-base", "--adapter", "hf://org/tiny-lora",
        "--out", str(tmp_path / "merged"))
    assert (tmp_path / "merged" / "config.json").exists()


def test_header_check_falls_back_when_the_server_ignores_range(
    tmp_path: Path, fake_hub: FakeHub, adapter_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_adapter(fake_hub, adapter_files)
    fake_hub.add_repo("org/tiny-base", folder_files(write_tiny_base(tmp_path / "base")))
    fake_hub.honour_range = False
    use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    result = run(tmp_path, "check", "--adapter", "hf://org/tiny-lora", "--base", "hf://org/tiny-base", "--json")
    assert json.loads(result.stdout)["ok"] is True


def test_real_process_reads_the_hub_environment(
    tmp_path: Path, fake_hub: FakeHub, adapter_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = hub_adapter(fake_hub, adapter_files)
    env = use_hub(monkeypatch, cache=tmp_path / "hub", endpoint=fake_hub.endpoint)
    child = {k: v for k, v in os.environ.items() if not k.startswith("LORADEX_")}
    child.update(env, LORADEX_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "cli.main", "pull", "hf://org/tiny-lora", "--json"],
                          env=child, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["hub"]["commit"] == commit
    assert (tmp_path / "hub" / "models--org--tiny-lora" / "snapshots" / commit).is_dir()
