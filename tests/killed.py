"""Writers that die mid-write: real ``python -c`` processes that create a loradex temp file or
folder, print its path, and block until the test SIGKILLs them (or leaves them alive).

A test module makes a ``children`` fixture of :func:`reaped` so that every process a test
starts is killed at its end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WRITE_FOLDER = """
import sys, time
from pathlib import Path
from mergetools.outdir import atomic_output_folder
with atomic_output_folder(Path(sys.argv[1]), kind="test", fsync=False) as tmp:
    (tmp / "big.bin").write_bytes(b"x" * 100_000)
    print(tmp, flush=True)
    time.sleep(120)
"""
"""Builds the output folder ``argv[1]`` and blocks with its temp folder half written."""

TEMP_FOLDER = """
import sys, time
from pathlib import Path
from mergetools.outdir import create_temp_folder
tmp = create_temp_folder(Path(sys.argv[1]), sys.argv[2])
(tmp / "part").write_bytes(b"x" * 100_000)
print(tmp, flush=True)
time.sleep(120)
"""
"""A temp folder for target name ``argv[2]`` in folder ``argv[1]`` (a materialisation)."""

TEMP_FILE = """
import os, sys, time
from pathlib import Path
from mergetools.outdir import create_temp_file
folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
fd, tmp = create_temp_file(folder, sys.argv[2])
os.write(fd, b"x" * 100_000)
print(tmp, flush=True)
time.sleep(120)
"""
"""A temp file labelled ``argv[2]`` in folder ``argv[1]`` (a blob being stored)."""


class Child:
    """A writer process blocked mid-write; ``path`` is the temp it created."""

    def __init__(self, code: str, *args: str | Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *map(str, args)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, "the writer died before creating its temp"
        self.path = Path(line)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def reaped() -> Iterator[list[Child]]:
    """A list to add started :class:`Child` processes to; all are killed after the test."""
    started: list[Child] = []
    yield started
    for child in started:
        child.stop()
