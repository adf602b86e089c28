"""Re-registering identical content attaches its new facts; evals are never recorded twice;
metrics have a direction that scores, thresholds and sorting follow (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mergetools.errors import ConflictError, InvalidInputError
from registry.inputs import EvalInput, ParentInput
from registry.metrics import default_direction
from registry.models import EvalScore
from registry.search import SearchQuery, parse_metric_filter
from registry.service import Registry

MakeAdapter = Callable[..., Path]


def _eval_count(registry: Registry) -> int:
    with registry._read() as session:
        return int(session.scalar(select(func.count()).select_from(EvalScore)) or 0)


# ------------------------------------------------------------------------------ re-register


def test_reregister_attaches_new_evals_tags_and_description(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    first = registry.register(
        make_adapter(seed=1),
        name="x",
        evals=[EvalInput("accuracy", 0.8, dataset="mmlu")],
        tags={"team": "cx"},
    )
    again = registry.register(
        make_adapter(seed=1),  # same bytes, another folder
        name="x",
        evals=[
            EvalInput("accuracy", 0.8, dataset="mmlu"),  # known: not recorded again
            EvalInput("accuracy", 0.82, dataset="mmlu", split="test"),
            EvalInput("loss", 0.3),
            EvalInput("loss", 0.3),  # repeated within the request: once
        ],
        tags={"team": "cx", "stage": "prod"},
        description="second look",
    )
    assert (again.ref, again.created, again.version_id) == ("x@1", False, first.version_id)
    assert [(e.metric, e.value, e.dataset, e.split) for e in again.attached_evals] == [
        ("accuracy", 0.82, "mmlu", "test"),
        ("loss", 0.3, None, None),
    ]
    assert again.attached_tags == {"stage": "prod"}
    assert again.attached_description == "second look"
    data = again.to_dict()
    assert [e["metric"] for e in data["attached_evals"]] == ["accuracy", "loss"]
    assert data["attached_tags"] == {"stage": "prod"}

    detail = registry.show("x@1")
    assert detail.tags == {"stage": "prod", "team": "cx"}
    assert detail.description == "second look"
    assert sorted((e.metric, e.value, e.split) for e in detail.evals) == [
        ("accuracy", 0.8, None),
        ("accuracy", 0.82, "test"),
        ("loss", 0.3, None),
    ]
    kinds = [e.kind for e in registry.events(name="x")]
    assert kinds[0] == "version.facts_attached"
    payload = registry.events(name="x")[0].payload
    assert payload["tags"] == {"stage": "prod"} and len(payload["evals"]) == 2

    # A new value for a known tag key replaces it; the counter was never consumed.
    changed = registry.register(make_adapter(seed=1), name="x", tags={"stage": "dev"})
    assert changed.attached_tags == {"stage": "dev"} and changed.attached_evals == []
    assert registry.show("x@1").tags == {"stage": "dev", "team": "cx"}
    assert registry.register(make_adapter(seed=2), name="x").ref == "x@2"


def test_a_retried_register_records_nothing_twice(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    folder = make_adapter(seed=3)
    request = {
        "name": "retry",
        "evals": [EvalInput("accuracy", 0.9), EvalInput("f1", 0.7, dataset="d", split="s")],
        "tags": {"team": "cx"},
    }
    registry.register(folder, **request)  # type: ignore[arg-type]
    events_before = len(registry.events(name="retry"))
    for _ in range(3):
        again = registry.register(folder, **request)  # type: ignore[arg-type]
        assert (again.created, again.attached_evals, again.attached_tags) == (False, [], {})
        assert again.attached_description is None
    assert _eval_count(registry) == 2
    assert len(registry.events(name="retry")) == events_before  # nothing changed, nothing journaled


def test_reregister_refuses_a_parent_the_version_does_not_have(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    registry.register(make_adapter(seed=10), name="parent")
    folder = make_adapter(seed=11)
    registry.register(folder, name="child", parents=[ParentInput(ref="parent@1")])
    # The same parent again is no change ...
    assert registry.register(folder, name="child", parents=[ParentInput(ref="parent@1")]).created is False
    # ... another one would rewrite lineage: refused, and nothing else is attached either.
    registry.register(make_adapter(seed=12), name="other")
    with pytest.raises(ConflictError, match=r"child@1, which has no parent 'other@1'"):
        registry.register(
            folder, name="child", parents=[ParentInput(ref="other@1")], tags={"k": "v"}
        )
    assert registry.show("child@1").tags == {}


def test_add_evals_skips_scores_already_recorded(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    registry.register(make_adapter(seed=4), name="e", evals=[EvalInput("accuracy", 0.5)])
    added = registry.add_evals(
        "e@1", [EvalInput("accuracy", 0.5), EvalInput("accuracy", 0.6), EvalInput("accuracy", 0.6)]
    )
    assert [(r.metric, r.value) for r in added] == [("accuracy", 0.6)]
    assert registry.add_evals("e@1", [EvalInput("accuracy", 0.6)]) == []
    # Same metric and value on another dataset or split is another score.
    assert len(registry.add_evals("e@1", [EvalInput("accuracy", 0.6, dataset="d")])) == 1
    assert len(registry.add_evals("e@1", [EvalInput("accuracy", 0.6, dataset="d", split="t")])) == 1
    assert _eval_count(registry) == 4
    assert [e.kind for e in registry.events(name="e")].count("eval.added") == 3


def test_concurrent_identical_add_evals_record_one_row(
    registry: Registry, make_adapter: MakeAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two transactions that both resolved the version before either wrote: one records."""
    registry.register(make_adapter(seed=5), name="race")
    barrier = threading.Barrier(2)
    real_lock = Registry._lock_version

    def lock_after_both_arrived(self: Registry, session: object, version_id: int) -> None:
        # SQLite: the second writer cannot begin before the first commits, so no rendezvous.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=2)
        real_lock(self, session, version_id)  # type: ignore[arg-type]

    monkeypatch.setattr(Registry, "_lock_version", lock_after_both_arrived)

    def add(_: int) -> int:
        return len(registry.add_evals("race@1", [EvalInput("accuracy", 0.75, dataset="d")]))

    with ThreadPoolExecutor(max_workers=2) as pool:
        added = list(pool.map(add, range(2)))
    assert sorted(added) == [0, 1]
    assert _eval_count(registry) == 1


def test_concurrent_identical_registers_attach_once(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    folders = [make_adapter(seed=6) for _ in range(6)]  # byte-identical copies

    def register(folder: Path) -> bool:
        return registry.register(
            folder, name="same", evals=[EvalInput("loss", 0.25)], tags={"t": "1"}
        ).created

    with ThreadPoolExecutor(max_workers=6) as pool:
        created = list(pool.map(register, folders))
    assert created.count(True) == 1
    assert [v.version for v in registry.versions("same")] == [1]
    assert _eval_count(registry) == 1
    assert registry.show("same@1").tags == {"t": "1"}


# ------------------------------------------------------------------------------ directions


@pytest.mark.parametrize(
    ("metric", "direction"),
    [
        ("loss", "lower"),
        ("val_loss", "lower"),
        ("eval/loss", "lower"),
        ("train-loss", "lower"),
        ("perplexity", "lower"),
        ("PPL", "lower"),
        ("wer", "lower"),
        ("cer", "lower"),
        ("word_error_rate", "lower"),
        ("mae", "lower"),
        ("mse", "lower"),
        ("test.rmse", "lower"),
        ("top1_error", "lower"),
        ("accuracy", "higher"),
        ("f1", "higher"),
        ("bleu", "higher"),
        ("rouge-l", "higher"),
        ("glossary_hits", "higher"),  # "loss" inside another word is not a loss
        ("terms", "higher"),
    ],
)
def test_default_direction(metric: str, direction: str) -> None:
    assert default_direction(metric) == direction


def _refs(registry: Registry, **kwargs: object) -> list[str]:
    return [v.ref for v in registry.search(SearchQuery(**kwargs)).items]  # type: ignore[arg-type]


def test_search_scores_thresholds_and_sort_follow_the_direction(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    # good@1 has a bad early loss and a good final one: its score is the best (lowest), 0.1.
    registry.register(
        make_adapter(seed=20), name="good", evals=[EvalInput("loss", 0.5), EvalInput("loss", 0.1)]
    )
    registry.register(make_adapter(seed=21), name="mid", evals=[EvalInput("loss", 0.2)])
    registry.register(make_adapter(seed=22), name="bad", evals=[EvalInput("loss", 0.9)])

    assert _refs(registry, metrics=(parse_metric_filter("loss<=0.2"),)) == ["good@1", "mid@1"]
    assert _refs(registry, sort="loss") == ["good@1", "mid@1", "bad@1"]
    assert _refs(registry, sort="+loss") == ["good@1", "mid@1", "bad@1"]
    assert _refs(registry, sort="-loss") == ["bad@1", "mid@1", "good@1"]
    page = registry.search(SearchQuery(sort="loss", metrics=(parse_metric_filter("loss<0.3"),)))
    assert [(v.ref, v.scores["loss"]) for v in page.items] == [("good@1", 0.1), ("mid@1", 0.2)]
    # Paging through the best-first order visits every row once, in order.
    seen, after = [], None
    while True:
        page = registry.search(SearchQuery(sort="loss", limit=1, after=after))
        seen += [v.ref for v in page.items]
        if page.next_cursor is None:
            break
        after = page.next_cursor
    assert seen == ["good@1", "mid@1", "bad@1"]


def test_score_is_per_dataset_and_split(registry: Registry, make_adapter: MakeAdapter) -> None:
    registry.register(
        make_adapter(seed=30),
        name="a",
        evals=[
            EvalInput("accuracy", 0.9, dataset="mmlu", split="val"),
            EvalInput("accuracy", 0.6, dataset="mmlu", split="test"),
        ],
    )
    registry.register(
        make_adapter(seed=31), name="b", evals=[EvalInput("accuracy", 0.7, dataset="mmlu", split="test")]
    )
    assert _refs(registry, sort="accuracy") == ["a@1", "b@1"]
    assert _refs(registry, sort="accuracy", split="test") == ["b@1", "a@1"]
    assert _refs(registry, sort="accuracy", dataset="mmlu", split="val") == ["a@1"]


def test_declared_direction_overrides_the_rule_registry_wide(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    registry.register(make_adapter(seed=40), name="fast", evals=[EvalInput("latency_ms", 12.0)])
    registry.register(
        make_adapter(seed=41),
        name="slow",
        evals=[EvalInput("latency_ms", 30.0), EvalInput("latency_ms", 90.0)],
    )
    assert _refs(registry, sort="latency_ms") == ["slow@1", "fast@1"]  # default: higher
    assert [(m.metric, m.direction, m.declared) for m in registry.list_metrics()] == [
        ("latency_ms", "higher", False)
    ]

    row = registry.set_metric_direction("latency_ms", "lower")
    assert (row.metric, row.direction, row.declared, row.declared_by) == (
        "latency_ms", "lower", True, "tester",
    )  # fmt: skip
    assert _refs(registry, sort="latency_ms") == ["fast@1", "slow@1"]
    # slow@1's score is now its lowest value, 30: it passes <=40 (it did not at 90).
    assert _refs(registry, metrics=(parse_metric_filter("latency_ms<=40"),)) == ["fast@1", "slow@1"]
    evals = {e.value: e for e in registry.list_evals("slow@1")}
    assert (evals[30.0].direction, evals[30.0].best, evals[90.0].best) == ("lower", True, False)

    registry.set_metric_direction("latency_ms", "higher")  # declared again: replaced
    registry.set_metric_direction("bits", "lower")  # declared before any score exists
    assert [(m.metric, m.direction, m.declared) for m in registry.list_metrics()] == [
        ("bits", "lower", True),
        ("latency_ms", "higher", True),
    ]
    assert _refs(registry, sort="latency_ms") == ["slow@1", "fast@1"]
    assert [e.kind for e in registry.events()][:3] == ["metric.direction_set"] * 3


def test_show_and_eval_list_mark_the_best_score_by_direction(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    registry.register(
        make_adapter(seed=50),
        name="s",
        evals=[
            EvalInput("loss", 0.4),
            EvalInput("loss", 0.2),
            EvalInput("accuracy", 0.7),
            EvalInput("accuracy", 0.8),
            EvalInput("accuracy", 0.1, dataset="other"),
        ],
    )
    best = {(e.metric, e.value, e.dataset): (e.direction, e.best) for e in registry.show("s@1").evals}
    assert best == {
        ("loss", 0.4, None): ("lower", False),
        ("loss", 0.2, None): ("lower", True),
        ("accuracy", 0.7, None): ("higher", False),
        ("accuracy", 0.8, None): ("higher", True),
        ("accuracy", 0.1, "other"): ("higher", True),  # the only score on that dataset
    }


def test_set_metric_direction_refuses_bad_input(registry: Registry) -> None:
    with pytest.raises(InvalidInputError, match="metric name .. is not valid"):
        registry.set_metric_direction("", "lower")
    with pytest.raises(InvalidInputError, match="direction 'down' is not one of higher, lower"):
        registry.set_metric_direction("loss", "down")


def test_threshold_search_matches_a_reference_over_every_row(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    """Versions with several rows per metric (one on each side of the thresholds) and a metric of
    each direction: every filter and sort answers what scoring each version by all its rows
    (best = max, or min for a lower-is-better metric) and then filtering gives."""
    import operator
    import random

    rng = random.Random(7)
    values = [0.2, 0.5, 0.8, 0.9]
    rows: dict[str, dict[str, list[float]]] = {}
    for i in range(12):
        evals = {
            "accuracy": rng.sample(values, rng.randint(1, 3)),
            "loss": rng.sample(values, rng.randint(1, 3)),
        }
        if i % 4 == 0:
            del evals["loss"]  # no score at all for that metric
        name = f"v{i:02d}"
        registry.register(
            make_adapter(seed=100 + i),
            name=name,
            evals=[EvalInput(metric, value) for metric, vs in evals.items() for value in vs],
        )
        rows[f"{name}@1"] = evals

    best = {"accuracy": max, "loss": min}
    ops = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}

    def expected(filters: list[tuple[str, str, float]], sort: str) -> list[tuple[str, float]]:
        out = []
        for ref, evals in rows.items():
            scores = {m: best[m](vs) for m, vs in evals.items()}
            if all(m in scores and ops[op](scores[m], x) for m, op, x in filters) and sort in scores:
                out.append((ref, scores[sort]))
        # best first: highest accuracy (ties: the newer version first), lowest loss (ties: the
        # older first)
        out.sort(key=lambda r: (r[1], r[0]), reverse=sort == "accuracy")
        return out

    cases = [
        [("accuracy", op, x)] for op in ops for x in (0.5, 0.8)
    ] + [
        [("loss", op, x)] for op in ops for x in (0.5, 0.8)
    ] + [
        [("accuracy", ">=", 0.8), ("loss", "<=", 0.5)],
        [("accuracy", ">=", 0.5), ("accuracy", "<", 0.9)],
        [("loss", "==", 0.2), ("accuracy", ">", 0.2)],
    ]
    for filters in cases:
        for sort in ("accuracy", "loss"):
            query = SearchQuery(
                metrics=tuple(parse_metric_filter(f"{m}{op}{x}") for m, op, x in filters),
                sort=sort,
                limit=100,
            )
            got = [(v.ref, v.scores[sort]) for v in registry.search(query).items]
            assert got == expected(filters, sort), (filters, sort)
