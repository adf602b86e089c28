"""Team mode: two users with their own LORADEX_HOME on one database (PostgreSQL, and a shared
SQLite file) see, export, merge and verify each other's versions when LORADEX_BLOB_URL points
both at one store; without it, a missing blob is reported as missing (not corrupt), naming the
store and the setting."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli

MakeAdapter = Callable[..., Path]


class User:
    def __init__(self, name: str, *, home: Path, db_url: str, blob_url: str | None) -> None:
        self.home = home
        self.env: dict[str, str | None] = {
            "LORADEX_HOME": str(home),
            "LORADEX_DATABASE_URL": db_url,
            "LORADEX_BLOB_URL": blob_url,
            "LORADEX_USER": name,
        }

    def run(self, *args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(cli, list(args), env=self.env)
        assert result.exit_code == code, (args, result.output, result.stderr)
        assert "Traceback" not in result.output + result.stderr
        return result


@pytest.fixture
def team_db(db_url: str, tmp_path: Path) -> str:
    """The team's database: a PostgreSQL copy, or an SQLite file outside both homes."""
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'team' / 'registry.db'}"
    return db_url


def test_a_shared_blob_url_lets_each_user_use_the_others_versions(
    team_db: str, tmp_path: Path, make_adapter: MakeAdapter, tiny_base: Path
) -> None:
    store = f"file://{tmp_path / 'shared-blobs'}"
    alice = User("alice", home=tmp_path / "alice", db_url=team_db, blob_url=store)
    bob = User("bob", home=tmp_path / "bob", db_url=team_db, blob_url=store)
    folder = make_adapter(seed=1)
    assert alice.run("register", str(folder), "--name", "support").stdout.strip() == "support@1"

    assert json.loads(bob.run("show", "support@1", "--json").stdout)["created_by"] == "alice"
    bob.run("export", "support@1", "--out", str(tmp_path / "bob-export"))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "bob-export" / name).read_bytes() == (folder / name).read_bytes()
    bob.run("check", "--adapter", "support@1", "--base", str(tiny_base))
    bob.run("merge", "--base", str(tiny_base), "--adapter", "support@1", "--out",
            str(tmp_path / "merged"), "--no-fsync", "--quiet")  # fmt: skip
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert json.loads(bob.run("verify", "--json").stdout) == {
        "ok": True,
        "missing": [],
        "corrupt": [],
    }
    assert not (tmp_path / "alice" / "blobs").exists() and not (tmp_path / "bob" / "blobs").exists()


def test_an_unshared_empty_store_is_refused_naming_the_setting(
    team_db: str, tmp_path: Path, make_adapter: MakeAdapter
) -> None:
    alice = User("alice", home=tmp_path / "alice", db_url=team_db, blob_url=None)
    bob = User("bob", home=tmp_path / "bob", db_url=team_db, blob_url=None)
    alice.run("register", str(make_adapter(seed=1)), "--name", "support")
    refused = bob.run("export", "support@1", "--out", str(tmp_path / "out"), code=1)
    assert refused.stderr.count("\n") == 1
    assert f"the blob store at {tmp_path / 'bob' / 'blobs'} (the default" in refused.stderr
    assert "set LORADEX_BLOB_URL to the team's shared store on every machine" in refused.stderr
    assert "corrupt" not in refused.stderr


def test_a_blob_missing_from_an_unshared_store_is_missing_not_corrupt(
    team_db: str, tmp_path: Path, make_adapter: MakeAdapter
) -> None:
    alice = User("alice", home=tmp_path / "alice", db_url=team_db, blob_url=None)
    bob = User("bob", home=tmp_path / "bob", db_url=team_db, blob_url=None)
    # Before joining the team bob used a registry of his own: his blob store is not empty.
    mine_folder = make_adapter(seed=2)
    solo = User("bob", home=tmp_path / "bob", db_url="", blob_url=None)
    solo.run("register", str(mine_folder), "--name", "mine")
    alice.run("register", str(make_adapter(seed=1)), "--name", "support")
    bob.run("register", str(mine_folder), "--name", "mine")
    weights = json.loads(bob.run("show", "support@1", "--json").stdout)["weights_sha256"]

    failed = bob.run("export", "support@1", "--out", str(tmp_path / "out"), code=1)
    assert failed.stderr == (
        f"error: blob {weights} is missing from the blob store at {tmp_path / 'bob' / 'blobs'} "
        "(the default, LORADEX_HOME/blobs; LORADEX_BLOB_URL unset): the registry names it but "
        "the store does not have it — if the registry is shared, set LORADEX_BLOB_URL to the "
        "team's store on every machine; otherwise restore the store from a backup\n"
    )
    assert not (tmp_path / "out").exists()

    # bob's own weights rot too: verify tells the two apart
    mine = json.loads(bob.run("show", "mine@1", "--json").stdout)["weights_sha256"]
    blob = tmp_path / "bob" / "blobs" / mine[:2] / mine[2:4] / mine
    blob.chmod(0o644)
    blob.write_bytes(b"rot" + blob.read_bytes()[3:])
    text = bob.run("verify", code=1)
    assert "missing: support@1 adapter_model.safetensors" in text.stderr
    assert "support@1 adapter_config.json" not in text.stderr  # same bytes as mine@1's: present
    assert "corrupt: mine@1 adapter_model.safetensors" in text.stderr
    assert "corrupt: support@1" not in text.stderr
    assert "1 stored file(s) are missing from the blob store" in text.stderr
    assert "LORADEX_BLOB_URL" in text.stderr
    report = json.loads(bob.run("verify", "--json", code=1).stdout)
    assert report["ok"] is False
    assert [(m["ref"], m["path"], m["sha256"]) for m in report["missing"]] == [
        ("support@1", "adapter_model.safetensors", weights)
    ]
    assert [(c["ref"], c["path"], c["problem"]) for c in report["corrupt"]] == [
        ("mine@1", "adapter_model.safetensors", "corrupt")
    ]


def test_a_stored_base_merges_on_a_machine_without_its_folder_as_from_the_folder(
    team_db: str, tmp_path: Path, make_adapter: MakeAdapter
) -> None:
    from tests.integration.test_base_store import write_sharded_base

    store = f"file://{tmp_path / 'shared-blobs'}"
    alice = User("alice", home=tmp_path / "alice", db_url=team_db, blob_url=store)
    worker = User("worker", home=tmp_path / "worker", db_url=team_db, blob_url=store)
    base = write_sharded_base(tmp_path / "alice-disk" / "tiny-base")
    added = alice.run("base", "add", str(base), "--name", "tiny", "--store")
    assert added.stdout.strip().endswith("(stored: 7 files)")
    alice.run("register", str(make_adapter(seed=1)), "--name", "support", "--base", "tiny")
    assert "stored         yes (7 files" in worker.run("base", "show", "tiny").stdout
    merge = ("merge", "--adapter", "support@1", "--no-fsync", "--quiet")
    alice.run(*merge, "--base", str(base), "--out", str(tmp_path / "from-folder"))

    (tmp_path / "alice-disk").rename(tmp_path / "elsewhere")  # the worker never saw the folder
    worker.run(*merge, "--base", "tiny", "--out", str(tmp_path / "from-store"))
    worker.run("check", "--adapter", "support@1", "--base", "tiny")
    cached = tmp_path / "worker" / "cache" / "bases"
    assert [p.name for p in cached.iterdir() if p.is_dir()] == [
        json.loads(worker.run("base", "show", "tiny", "--json").stdout)["fingerprint"]
    ]
    produced = sorted(p.name for p in (tmp_path / "from-folder").iterdir())
    assert produced == sorted(p.name for p in (tmp_path / "from-store").iterdir())
    for name in produced:
        if name.endswith((".safetensors", ".json")) and name != "loradex.json":
            assert (tmp_path / "from-store" / name).read_bytes() == (
                tmp_path / "from-folder" / name
            ).read_bytes(), name
    stored_base = json.loads((tmp_path / "from-store" / "loradex.json").read_text())["base"]
    assert stored_base["name"] == "tiny" and stored_base["ref"] == "tiny"
