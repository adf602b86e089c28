"""The ``loradex`` process, once torch is imported, exits without tearing every module down:
its exit status, its output and the atexit work it owes (log handlers flushed, temp folders
removed) must be exactly what a normal interpreter exit gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def loradex(*args: str, home: Path, code: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``loradex ARGS`` as a real process (``code`` runs first, in the same process)."""
    env = {**os.environ, "LORADEX_HOME": str(home)}
    env.pop("LORADEX_SERVER", None)
    program = code + "\nfrom cli.main import main\nimport sys\nsys.argv = ['loradex', *sys.argv[1:]]\nmain()\n"
    return subprocess.run(
        [sys.executable, "-c", program, *args], capture_output=True, text=True, cwd=ROOT, env=env
    )


def test_a_merge_exits_0_with_its_whole_json_summary(
    tmp_path: Path, tiny_base: Path, make_adapter: Callable[..., Path]
) -> None:
    out = tmp_path / "merged"
    result = loradex(
        "merge", "--base", str(tiny_base), "--adapter", str(make_adapter()), "--out", str(out),
        "--quiet", "--json", home=tmp_path / "home",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert Path(summary["out"]) == out
    assert (out / "model.safetensors").is_file()


def test_a_failure_after_torch_is_imported_keeps_status_1_and_one_error_line(
    tmp_path: Path, tiny_base: Path
) -> None:
    broken = tmp_path / "broken-adapter"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    result = loradex(
        "merge", "--base", str(tiny_base), "--adapter", str(broken), "--out", str(tmp_path / "o"),
        home=tmp_path / "home", code="import torch",
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_atexit_work_still_runs_when_torch_is_imported(tmp_path: Path) -> None:
    marker = tmp_path / "atexit-ran"
    scratch = tmp_path / "scratch"
    code = (
        "import atexit, pathlib, tempfile, weakref, torch\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
        f"_keep = tempfile.TemporaryDirectory(dir={str(tmp_path)!r}, prefix='scratch-')\n"
        f"pathlib.Path({str(scratch)!r}).write_text(_keep.name)\n"
    )
    result = loradex("--version", home=tmp_path / "home", code=code)
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "yes"
    assert not Path(scratch.read_text()).exists()  # TemporaryDirectory's finalizer ran


def test_a_usage_error_after_torch_is_imported_exits_2(tmp_path: Path) -> None:
    result = loradex("merge", "--no-such-flag", home=tmp_path / "home", code="import torch")
    assert result.returncode == 2


def test_a_thread_a_library_keeps_still_lets_the_process_exit(tmp_path: Path) -> None:
    """An executor kept alive at module level (its idle worker is a non-daemon thread): the exit
    is then the interpreter's own, which stops that worker, instead of waiting on it forever."""
    code = "import torch, concurrent.futures as cf\n_pool = cf.ThreadPoolExecutor(1)\n_pool.submit(int).result()\n"
    env = {**os.environ, "LORADEX_HOME": str(tmp_path / "home")}
    program = code + "from cli.main import main\nimport sys\nsys.argv = ['loradex', '--version']\nmain()\n"
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "loradex" in result.stdout
