"""version_scores (each version's best score per metric) stays equal to what eval_scores and the
metric directions say after every write: register, re-register, add_evals, a direction change,
delete; and revision 0009 backfills it (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select, text

from registry.db import SCHEMA_HEAD, create_registry_engine, current_revision
from registry.inputs import EvalInput
from registry.metrics import directions_for
from registry.models import EvalScore, VersionScore
from registry.schema import upgrade
from registry.search import SearchQuery, parse_metric_filter
from registry.service import Registry
from registry.settings import Settings

MakeAdapter = Callable[..., Path]


def _table(registry: Registry) -> dict[tuple[int, str], float]:
    with registry._read() as session:
        rows = session.execute(
            select(VersionScore.version_id, VersionScore.metric, VersionScore.value)
        ).all()
    return {(v, m): x for v, m, x in rows}


def _reference(registry: Registry) -> dict[tuple[int, str], float]:
    """The best value per (version, metric) over every eval row, by each metric's direction."""
    with registry._read() as session:
        rows = session.execute(
            select(EvalScore.version_id, EvalScore.metric, EvalScore.value)
        ).all()
        directions = directions_for(session, {m for _, m, _ in rows})
    best: dict[tuple[int, str], float] = {}
    for version_id, metric, value in rows:
        key = (version_id, metric)
        pick = min if directions[metric] == "lower" else max
        best[key] = pick(best[key], value) if key in best else value
    return best


def _assert_exact(registry: Registry) -> dict[tuple[int, str], float]:
    table = _table(registry)
    assert table == _reference(registry)
    return table


def test_version_scores_follow_every_write(registry: Registry, make_adapter: MakeAdapter) -> None:
    a = registry.register(
        make_adapter(seed=1),
        name="x",
        evals=[EvalInput("accuracy", 0.7), EvalInput("accuracy", 0.6, dataset="mmlu")],
    )
    b = registry.register(make_adapter(seed=2), name="x", evals=[EvalInput("loss", 0.4)])
    assert _assert_exact(registry) == {
        (a.version_id, "accuracy"): 0.7,
        (b.version_id, "loss"): 0.4,
    }
    # re-register identical content with new evals: a better and a worse one
    registry.register(
        make_adapter(seed=1),
        name="x",
        evals=[EvalInput("accuracy", 0.9, split="test"), EvalInput("loss", 0.5)],
    )
    assert _assert_exact(registry)[(a.version_id, "accuracy")] == 0.9
    # add_evals: a better value, then a worse one (the better stays)
    registry.add_evals("x@2", [EvalInput("loss", 0.2)])
    registry.add_evals("x@2", [EvalInput("loss", 0.3), EvalInput("accuracy", 0.1)])
    table = _assert_exact(registry)
    assert (table[(b.version_id, "loss")], table[(b.version_id, "accuracy")]) == (0.2, 0.1)
    # a direction change recomputes the metric for every version
    registry.set_metric_direction("accuracy", "lower")
    table = _assert_exact(registry)
    assert table[(a.version_id, "accuracy")] == 0.6
    registry.set_metric_direction("accuracy", "lower")  # unchanged: still exact
    registry.set_metric_direction("loss", "higher")
    table = _assert_exact(registry)
    assert (table[(a.version_id, "loss")], table[(b.version_id, "loss")]) == (0.5, 0.4)
    registry.set_metric_direction("accuracy", "higher")
    _assert_exact(registry)
    # delete: the version leaves search results; its scores stay as recorded
    registry.delete("x@1", purge=True)
    _assert_exact(registry)
    page = registry.search(SearchQuery(sort="accuracy", limit=10))
    assert [item.ref for item in page.items] == ["x@2"]


def test_search_on_version_scores_matches_the_aggregation(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    """The same answers and pages as the eval_scores aggregation (reached with a split filter
    that every score has)."""
    for seed, (acc, loss) in enumerate(
        [(0.5, 0.3), (0.9, 0.3), (0.7, 0.1), (0.9, 0.2), (0.2, 0.9)]
    ):
        registry.register(
            make_adapter(seed=seed),
            name=f"m{seed % 2}",
            evals=[
                EvalInput("accuracy", acc, split="all"),
                EvalInput("accuracy", acc - 0.1, split="all"),
                EvalInput("loss", loss, split="all"),
            ],
        )
    queries = [
        SearchQuery(sort="accuracy", limit=2),
        SearchQuery(sort="+accuracy", limit=2),
        SearchQuery(sort="-loss", limit=3),
        SearchQuery(sort="loss", limit=1, metrics=(parse_metric_filter("accuracy>=0.5"),)),
        SearchQuery(metrics=(parse_metric_filter("accuracy>0.6"), parse_metric_filter("loss<0.3"))),
        SearchQuery(metrics=(parse_metric_filter("accuracy==0.9"),), sort="-accuracy", limit=1),
    ]
    for query in queries:
        pages = []
        for q in (query, SearchQuery(**{**query.__dict__, "split": "all"})):
            refs, after = [], None
            while True:
                page = registry.search(SearchQuery(**{**q.__dict__, "after": after}))
                refs.append([(i.ref, i.scores) for i in page.items])
                after = page.next_cursor
                if after is None:
                    break
            pages.append(refs)
        assert pages[0] == pages[1], query


def test_revision_0009_backfills_version_scores(empty_db_url: str, tmp_path: Path) -> None:
    engine = create_registry_engine(empty_db_url)
    upgrade(engine, "0008")
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO adapters (id, name, description, last_version, created_at, created_by) "
                "VALUES (1, 'old', '', 2, :now, 'alice')"
            ),
            {"now": now},
        )
        for vid in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO adapter_versions (id, adapter_id, version, status, "
                    "content_sha256, weights_sha256, weights_path, max_rank, alpha, use_dora, "
                    "use_rslora, dtype, param_count, nbytes, target_modules, ranks, flags, "
                    "summary, metadata, description, created_at, created_by) VALUES (:v, 1, :v, "
                    "'ready', :c, :w, 'adapter_model.safetensors', 8, 16.0, false, false, "
                    "'float32', 100, 400, '[\"q_proj\"]', '{}', '{}', '{}', '{}', '', :now, "
                    "'alice')"
                ),
                {"v": vid, "c": str(vid) * 64, "w": str(vid) * 64, "now": now},
            )
        conn.execute(
            text(
                "INSERT INTO metric_directions (metric, direction, declared_at, declared_by) "
                "VALUES ('bleu', 'lower', :now, 'alice')"
            ),
            {"now": now},
        )
        scores = [
            (1, "accuracy", 0.5, "mmlu"),
            (1, "accuracy", 0.8, None),
            (1, "loss", 0.4, None),
            (1, "loss", 0.2, "mmlu"),
            (2, "accuracy", 0.3, None),
            (2, "bleu", 20.0, None),
            (2, "bleu", 10.0, "wmt"),
            (2, "eval/loss", 1.5, None),
            (2, "eval/loss", 2.5, None),
        ]
        for i, (vid, metric, value, dataset) in enumerate(scores, start=1):
            conn.execute(
                text(
                    "INSERT INTO eval_scores (id, version_id, metric, value, dataset, split, "
                    "recorded_at, recorded_by) VALUES (:i, :v, :m, :x, :d, NULL, :now, 'alice')"
                ),
                {"i": i, "v": vid, "m": metric, "x": value, "d": dataset, "now": now},
            )
    upgrade(engine)
    assert current_revision(engine) == SCHEMA_HEAD
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT version_id, metric, value FROM version_scores")).all()
    engine.dispose()
    assert sorted(rows) == [
        (1, "accuracy", 0.8),
        (1, "loss", 0.2),
        (2, "accuracy", 0.3),
        (2, "bleu", 10.0),
        (2, "eval/loss", 1.5),
    ]
    with Registry(
        Settings(home=tmp_path / "home", database_url=empty_db_url, user="bob"),
        auto_upgrade=True,
    ) as registry:
        page = registry.search(SearchQuery(sort="bleu", limit=5))
        assert [(i.ref, i.scores) for i in page.items] == [("old@2", {"bleu": 10.0})]
        assert _table(registry) == _reference(registry)


def test_concurrent_writers_keep_version_scores_exact(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    """Scores added at once to one version, while the metric's direction flips, lose nothing."""
    from concurrent.futures import ThreadPoolExecutor

    registry.register(make_adapter(seed=1), name="x", evals=[EvalInput("accuracy", 0.5)])
    registry.register(make_adapter(seed=2), name="x", evals=[EvalInput("accuracy", 0.5)])

    def work(i: int) -> None:
        if i % 4 == 3:
            registry.set_metric_direction("accuracy", "lower" if i % 8 == 3 else "higher")
        else:
            registry.add_evals(f"x@{1 + i % 2}", [EvalInput("accuracy", i / 100)])

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(work, range(24)))
    _assert_exact(registry)
