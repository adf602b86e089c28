"""The shortcuts of the per-request read path give what the long way gives.

``built_search`` remembers statements (never results) keyed on everything that shapes them;
``_Record.to_dict`` converts in one pass what ``dataclasses.asdict`` + ``_jsonable`` did.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from registry import search
from registry.records import (
    EvalRow,
    FileRow,
    LineageEdgeRow,
    LineageView,
    Page,
    VersionDetail,
    VersionKey,
    VersionRow,
    _jsonable,
)
from registry.search import SearchQuery, build_search, built_search, parse_metric_filter

AT = dt.datetime(2026, 1, 2, 3, 4, 5)  # naive: written in UTC


def sql(stmt: object) -> str:
    return str(stmt.compile(compile_kwargs={"literal_binds": True}))  # type: ignore[attr-defined]


def test_built_search_is_build_search_and_keyed_on_every_part() -> None:
    base = SearchQuery(metrics=(parse_metric_filter("accuracy>=0.8"),), sort="accuracy", limit=20)
    same = SearchQuery(metrics=(parse_metric_filter("accuracy>=0.8"),), sort="accuracy", limit=20)
    assert built_search(base, directions={}) is built_search(same, directions={})
    assert sql(built_search(base, directions={})[0]) == sql(build_search(base, directions={})[0])
    variants = [
        dataclasses.replace(base, metrics=(parse_metric_filter("accuracy>=0.9"),)),
        dataclasses.replace(base, limit=21),
        dataclasses.replace(base, tags={"team": "cx"}),
        dataclasses.replace(base, tags={"team": "ops"}),
        dataclasses.replace(base, include_yanked=True),
        dataclasses.replace(base, name="support-*"),
    ]
    built = sql(built_search(base, directions={})[0])
    for variant in variants:
        got = sql(built_search(variant, directions={})[0])
        assert got == sql(build_search(variant, directions={})[0])
        assert got != built, variant
    # A declared direction changes the statement (min instead of max, the sort order).
    lower = built_search(base, directions={"accuracy": "lower"})
    assert sql(lower[0]) == sql(build_search(base, directions={"accuracy": "lower"})[0])
    assert sql(lower[0]) != built


def test_built_search_stays_bounded() -> None:
    for limit in range(1, search._BUILT_SEARCHES_MAX + 50):
        built_search(SearchQuery(limit=limit), directions={})
    assert len(search._BUILT_SEARCHES) <= search._BUILT_SEARCHES_MAX


def test_to_dict_is_asdict_then_jsonable() -> None:
    evals = [
        EvalRow(id=1, metric="accuracy", value=0.5, dataset=None, split="test", recorded_at=AT,
                recorded_by="ci", direction="higher", best=True),
    ]
    detail = VersionDetail(
        ref="a@1", name="a", version=1, status="ready", status_reason=None, latest=True,
        description="", created_at=AT, created_by="me", base={"name": "b", "architectures": ["X"]},
        base_fingerprint=None, base_name_or_path="tiny", target_modules=["q_proj"],
        ranks={"q_proj": 8}, max_rank=8, alpha=16.0, use_dora=False, use_rslora=False,
        flags={"x": True}, dtype="float32", param_count=10, nbytes=40, adapter_fingerprint=None,
        content_sha256=None, weights_sha256="0" * 64, source=None,
        metadata={"path": str(Path("/x")), "when": [AT.isoformat()], "nested": {"t": (1, 2)}},
        files=[FileRow(path="adapter_config.json", sha256="1" * 64, size=3)],
        tags={"team": "cx"}, aliases=["prod"], evals=evals,
    )
    lineage = LineageView(
        ref="a@1", name="a", version=1,
        parents=[LineageEdgeRow(ref="p@2", name="p", version=2, relation="merge", method="ties",
                                weight=0.5, seed=None, params={"k": [1, 2]})],
        children=[], checkpoints=[{"id": 1, "created_at": AT.isoformat()}],
    )
    row = VersionRow(ref="a@1", name="a", version=1, status="ready", max_rank=8, alpha=16.0,
                     target_modules=["q_proj"], base=None, base_fingerprint=None,
                     weights_sha256="0" * 64, created_at=AT.replace(tzinfo=dt.UTC),
                     created_by="me", aliases=[], scores={"accuracy": 0.5})
    page = Page(items=[row], next_cursor=None)
    for record in (detail, lineage, row, page, evals[0]):
        assert record.to_dict() == _jsonable(dataclasses.asdict(record))
    key = VersionKey(name="a", version=1, version_id=3, status="ready", weights_sha256="0" * 64)
    assert key.to_dict() == {"ref": "a@1", **_jsonable(dataclasses.asdict(key))}
    out = detail.to_dict()
    assert out["created_at"] == "2026-01-02T03:04:05+00:00"
    out["tags"]["team"] = "changed"  # the result shares no container with the record
    assert detail.tags == {"team": "cx"}
