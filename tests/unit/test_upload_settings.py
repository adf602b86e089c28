"""The HTTP API's upload limits as settings: read from the environment, refused when nonsense."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergetools.errors import InvalidInputError
from registry.settings import DEFAULT_UPLOAD_IDLE_TIMEOUT_S, Settings


def test_the_idle_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LORADEX_UPLOAD_IDLE_TIMEOUT", raising=False)
    assert Settings(home=tmp_path).upload_idle_timeout_s == DEFAULT_UPLOAD_IDLE_TIMEOUT_S == 30.0
    monkeypatch.setenv("LORADEX_UPLOAD_IDLE_TIMEOUT", "2.5")
    assert Settings(home=tmp_path).upload_idle_timeout_s == 2.5
    assert Settings(home=tmp_path, upload_idle_timeout_s=7).upload_idle_timeout_s == 7


@pytest.mark.parametrize("raw", ["soon", "0", "-1", "inf", "nan"])
def test_a_nonsense_idle_timeout_is_one_clear_error(
    raw: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LORADEX_UPLOAD_IDLE_TIMEOUT", raw)
    with pytest.raises(InvalidInputError, match="LORADEX_UPLOAD_IDLE_TIMEOUT"):
        Settings(home=tmp_path)
