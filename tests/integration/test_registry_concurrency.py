"""Real processes registering at once, and a register killed mid-way (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from registry.blobstore import LocalBlobStore
from registry.models import Adapter, AdapterVersion, Event, VersionFile
from registry.service import Registry

MakeAdapter = Callable[..., Path]
REPO = Path(__file__).resolve().parents[2]
WORKERS = 8

# Each worker imports everything, waits for the start signal, registers, prints JSON.
WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from registry.service import Registry
    from registry.settings import Settings
    import mergetools.inspect  # noqa: F401  (import before the start signal)

    home, url, folder, name, go = sys.argv[1:6]
    registry = Registry(Settings(home=Path(home), database_url=url, user="worker"), auto_upgrade=False)
    Path(folder + ".ready").write_text("ready")
    while not os.path.exists(go):
        time.sleep(0.005)
    result = registry.register(Path(folder), name=name)
    print(json.dumps({"version": result.version, "created": result.created}))
    """
)

# Registers, but SIGKILLs itself inside the transaction, after the blobs were written and the
# version rows flushed, just before the commit (the journal write is the last step).
KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import registry.adapters as adapters
    from registry.service import Registry
    from registry.settings import Settings

    home, url, folder, name = sys.argv[1:5]
    real_journal = adapters._journal

    def dying_journal(session, **kwargs):
        if kwargs.get("kind") == "version.registered":
            session.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_journal(session, **kwargs)

    adapters._journal = dying_journal
    registry = Registry(Settings(home=Path(home), database_url=url, user="victim"), auto_upgrade=False)
    registry.register(Path(folder), name=name)
    print("not reached")
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_workers(
    registry: Registry, folders: list[Path], name: str, tmp_path: Path
) -> list[dict[str, object]]:
    go = tmp_path / "go"
    url = registry.settings.effective_database_url
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(registry.settings.home), url, str(f), name, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for f in folders
    ]
    # Start them together once they have all imported and connected (they poll for the file).
    deadline = time.monotonic() + 120
    while not all(Path(f"{f}.ready").exists() for f in folders):
        assert time.monotonic() < deadline, "workers did not start"
        assert all(p.poll() is None for p in procs), [
            p.communicate() for p in procs if p.poll() is not None
        ]
        time.sleep(0.01)
    go.write_text("go")
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.slow
def test_concurrent_registers_get_consecutive_versions(
    registry: Registry, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    folders = [make_adapter(seed=100 + i) for i in range(WORKERS)]
    results = _run_workers(registry, folders, "race", tmp_path)
    assert sorted(r["version"] for r in results) == list(range(1, WORKERS + 1))
    assert all(r["created"] for r in results)
    versions = registry.versions("race")
    assert sorted(v.version for v in versions) == list(range(1, WORKERS + 1))
    assert len({v.weights_sha256 for v in versions}) == WORKERS  # no lost write
    with registry.engine.connect() as conn:
        assert conn.scalar(select(Adapter.last_version).where(Adapter.name == "race")) == WORKERS
        assert (
            conn.scalar(
                select(func.count()).select_from(Event).where(Event.kind == "version.registered")
            )
            == WORKERS
        )


@pytest.mark.slow
def test_concurrent_identical_registers_yield_one_version(
    registry: Registry, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    folders = [make_adapter(seed=7) for _ in range(WORKERS)]  # byte-identical copies
    results = _run_workers(registry, folders, "same", tmp_path)
    assert {r["version"] for r in results} == {1}
    assert sum(bool(r["created"]) for r in results) == 1
    assert [v.version for v in registry.versions("same")] == [1]
    # The rolled-back counter increments left no gap: the next version is 2.
    assert registry.register(make_adapter(seed=8), name="same").version == 2


def test_register_killed_midway_leaves_no_version(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    assert registry.register(make_adapter(seed=1), name="crash").version == 1
    folder = make_adapter(seed=2)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED,
            str(registry.settings.home),
            registry.settings.effective_database_url,
            str(folder),
            "crash",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "not reached" not in proc.stdout

    # The blobs were written (before the transaction) but nothing names them.
    weights_sha = (
        __import__("hashlib")
        .sha256((folder / "adapter_model.safetensors").read_bytes())
        .hexdigest()
    )
    assert LocalBlobStore(registry.settings.blob_dir).exists(weights_sha)
    with registry.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(AdapterVersion)) == 1
        assert conn.scalar(select(Adapter.last_version).where(Adapter.name == "crash")) == 1
        assert (
            conn.scalar(
                select(func.count())
                .select_from(VersionFile)
                .where(VersionFile.sha256 == weights_sha)
            )
            == 0
        )
        assert (
            conn.scalar(select(func.count()).select_from(Event).where(Event.actor == "victim")) == 0
        )
    assert [v.version for v in registry.versions("crash")] == [1]

    # The next register gets the next consecutive number; gc would have collected the orphan.
    assert registry.gc(grace_s=0, dry_run=True).removed == [weights_sha]
    assert registry.register(folder, name="crash").version == 2
    assert registry.gc(grace_s=0).removed == []
