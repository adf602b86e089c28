"""The use cases the shells share: merge-and-record and check-by-reference, on a real registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mergetools.errors import NotFoundError
from mergetools.requests import MergeRequest
from registry.checks import check
from registry.merges import merge

MakeAdapter = Callable[..., Path]


def test_merge_of_registered_versions_records_the_request(
    registry: Any, make_adapter: MakeAdapter, tiny_base: Path, tmp_path: Path
) -> None:
    registry.register(make_adapter(seed=1), name="sts")
    registry.set_alias("sts@1", "production")
    local = make_adapter(seed=2)
    request = MergeRequest(
        base=str(tiny_base),
        adapters=("sts@production", str(local)),
        out=str(tmp_path / "merged"),
        weights=(1.0, 0.5),
        device="cpu",
        fsync=False,
    )
    outcome = merge(registry, request)
    assert outcome.recorded and outcome.checkpoint is not None
    assert [a.label for a in outcome.adapters] == ["sts@production -> sts@1", str(local)]
    assert outcome.checkpoint.members == [
        {"ref": "sts@1", "name": "sts", "version": 1, "weight": 1.0}
    ]
    # The record names what was asked for (references as given), in the folder and the row.
    recorded = outcome.checkpoint.metadata["request"]
    assert MergeRequest.from_dict(recorded) == request
    provenance = json.loads((tmp_path / "merged" / "loradex.json").read_text())
    assert MergeRequest.from_dict(provenance["request"]) == request
    assert outcome.checkpoint.fingerprint == outcome.result.fingerprint is not None
    summary = outcome.to_dict()
    assert summary["recorded_checkpoint"]["id"] == outcome.checkpoint.id


def test_merge_of_folders_opens_no_registry(
    settings: Any, make_adapter: MakeAdapter, tiny_base: Path, tmp_path: Path
) -> None:
    """Settings are built only when a reference needs them: plain folders never need them."""
    calls: list[int] = []

    def lazy_settings() -> Any:
        calls.append(1)
        return settings

    request = MergeRequest(
        base=str(tiny_base),
        adapters=(str(make_adapter(seed=1)),),
        out=str(tmp_path / "merged"),
        device="cpu",
        fsync=False,
    )
    outcome = merge(lazy_settings, request)
    assert not outcome.recorded and outcome.checkpoint is None
    assert "recorded_checkpoint" not in outcome.to_dict()
    assert calls == []
    assert json.loads((tmp_path / "merged" / "loradex.json").read_text())["request"] == (
        request.to_dict()
    )


def test_merge_from_settings_opens_the_registry_on_need(
    registry: Any, settings: Any, make_adapter: MakeAdapter, tiny_base: Path, tmp_path: Path
) -> None:
    registry.register(make_adapter(seed=1), name="sts")
    request = MergeRequest(
        base=str(tiny_base), adapters=("sts",), out=str(tmp_path / "m"), device="cpu", fsync=False
    )
    outcome = merge(settings, request)
    assert outcome.checkpoint is not None
    assert [c.id for c in registry.list_checkpoints(ref="sts@1").items] == [outcome.checkpoint.id]


def test_check_by_reference_names_references(
    registry: Any, make_adapter: MakeAdapter, tiny_base: Path
) -> None:
    registry.register(make_adapter(seed=1), name="sts")
    registry.register(make_adapter(seed=2, hidden=8), name="narrow")
    notes: list[str] = []
    good = check(registry, ["sts"], base=str(tiny_base), notify=notes.append)
    assert good.report.ok(True) and notes == []
    assert [a.label for a in good.adapters] == ["sts -> sts@1"]
    bad = check(registry, ["narrow@1"], base=str(tiny_base))
    assert not bad.report.ok(False)
    errors = [f for f in bad.report.findings if f.severity == "error"]
    assert errors and {f.adapter for f in errors} == {"narrow@1"}
    assert not any(str(registry.settings.cache_dir) in f.message for f in errors)
    with pytest.raises(NotFoundError):
        check(registry, ["no-such-adapter"], base=str(tiny_base))
