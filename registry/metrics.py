"""Metric directions: whether a higher or a lower value of a metric is better.

The rule, stated once: a metric is **lower is better** when one of the words of its name
(lower-cased, split on anything but letters and digits: ``eval/loss`` -> ``eval``, ``loss``) is in
:data:`LOWER_IS_BETTER_WORDS` (losses, perplexity, error and error-rate names: ``loss``,
``val_loss``, ``perplexity``, ``ppl``, ``wer``, ``cer``, ``mae``, ``mse``, ``rmse``,
``word_error_rate``, ``test.error``...); **higher is better** otherwise. A direction declared
in the registry (``loradex metric set NAME --lower-is-better``) overrides the rule for that
exact name, registry-wide.

Everything that ranks scores (search thresholds and sorting, a version's best score in ``show``
and ``eval list``) takes the direction from :func:`directions_for`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Literal

from sqlalchemy import Select, bindparam, delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from mergetools.errors import InvalidInputError
from registry.core import RegistryCore, journal
from registry.db import is_sqlite
from registry.inputs import check_key
from registry.models import EvalScore, MetricDirection, VersionScore, utcnow
from registry.records import MetricRow

logger = logging.getLogger(__name__)

_DIRECTIONS = MetricDirection.__table__.c
_DECLARED = select(_DIRECTIONS.metric, _DIRECTIONS.direction)  # built once, over the table
_DECLARED_OF = _DECLARED.where(_DIRECTIONS.metric.in_(bindparam("metrics", expanding=True)))

Direction = Literal["higher", "lower"]
DIRECTIONS: tuple[Direction, ...] = ("higher", "lower")

LOWER_IS_BETTER_WORDS: frozenset[str] = frozenset(
    {
        # losses and likelihoods
        "loss",
        "nll",
        "perplexity",
        "ppl",
        "bpc",
        "bpb",
        # errors and error rates
        "error",
        "err",
        "wer",
        "cer",
        "ter",
        "mer",
        "eer",
        "mae",
        "mse",
        "rmse",
        "msle",
        "rmsle",
        "mape",
        "smape",
    }
)
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")


def default_direction(metric: str) -> Direction:
    """The direction of ``metric`` when none is declared (see the module docstring)."""
    words = _WORD_SPLIT.split(metric.lower())
    return "lower" if LOWER_IS_BETTER_WORDS.intersection(words) else "higher"


def declared_directions(session: Session, metrics: Iterable[str] | None = None) -> dict[str, Direction]:
    """Directions declared in the registry (for ``metrics`` only, when given): one query."""
    if metrics is None:
        rows = session.execute(_DECLARED)
    else:
        names = sorted(set(metrics))
        if not names:
            return {}
        rows = session.execute(_DECLARED_OF, {"metrics": names})
    return {name: direction for name, direction in rows}  # type: ignore[misc]


def directions_for(session: Session, metrics: Iterable[str]) -> dict[str, Direction]:
    """The direction of each of ``metrics``: declared if declared, else the default rule."""
    names = list(dict.fromkeys(metrics))
    declared = declared_directions(session, names)
    return {name: declared.get(name) or default_direction(name) for name in names}


def better(direction: Direction, a: float, b: float) -> bool:
    """Whether ``a`` is strictly better than ``b`` for a metric of ``direction``."""
    return a < b if direction == "lower" else a > b


def refresh_version_scores(session: Session, version_id: int, metrics: Iterable[str]) -> None:
    """Recompute the version's best scores (``version_scores``) for ``metrics`` from its eval
    scores, in the caller's transaction. The caller holds the version's lock or created the
    version in this transaction, so a concurrent writer of the same version waits for it and
    then recomputes from every committed score: no better value is lost."""
    names = sorted(set(metrics))
    if not names:
        return
    _lock_metrics(session, names, exclusive=False)
    directions = directions_for(session, names)
    session.execute(
        delete(VersionScore).where(
            VersionScore.version_id == version_id, VersionScore.metric.in_(names)
        )
    )
    for direction in DIRECTIONS:
        chosen = [m for m in names if directions[m] == direction]
        if chosen:
            session.execute(
                insert(VersionScore).from_select(
                    ["version_id", "metric", "value"], _best_scores(direction, chosen, version_id)
                )
            )


def refresh_metric_scores(session: Session, metric: str, direction: Direction) -> None:
    """Recompute every version's best score of ``metric`` by ``direction`` (its new direction)
    from the eval scores, in the caller's transaction.

    Every version with a score of the metric has its row already, so this only updates values:
    no foreign key check, hence no wait on the version rows that writers of scores lock."""
    best = (func.min if direction == "lower" else func.max)(EvalScore.value)
    session.execute(
        update(VersionScore)
        .where(VersionScore.metric == metric)
        .values(
            value=select(best)
            .where(EvalScore.version_id == VersionScore.version_id, EvalScore.metric == metric)
            .scalar_subquery()
        )
    )


# The first key of the advisory locks on metric names (PostgreSQL): "lxmt".
_PG_METRIC_LOCK_CLASS = 0x6C786D74


def _lock_metrics(session: Session, metrics: list[str], *, exclusive: bool) -> None:
    """On PostgreSQL, lock the metric names until commit: shared by writers of scores,
    exclusive by a direction change. A writer of scores then reads the direction a concurrent
    change committed, or the change (waiting for it) recomputes over the writer's committed
    scores; either way version_scores ends exact. SQLite runs one writing transaction at a
    time (BEGIN IMMEDIATE), so there is nothing to do."""
    if session.get_bind().dialect.name != "postgresql":
        return
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    for metric in metrics:  # sorted by the callers: no lock-order deadlock between writers
        session.execute(
            text(f"SELECT {function}(:cls, hashtext(:metric))"),
            {"cls": _PG_METRIC_LOCK_CLASS, "metric": metric},
        )


def _best_scores(direction: Direction, metrics: list[str], version_id: int) -> Select[int, str, float]:
    best = (func.min if direction == "lower" else func.max)(EvalScore.value)
    return (
        select(EvalScore.version_id, EvalScore.metric, best)
        .where(EvalScore.metric.in_(metrics), EvalScore.version_id == version_id)
        .group_by(EvalScore.version_id, EvalScore.metric)
    )


class MetricsMixin(RegistryCore):
    """Use cases of metric directions: declare one, list them all."""

    def set_metric_direction(
        self, metric: str, direction: str, *, actor: str | None = None
    ) -> MetricRow:
        """Declare, registry-wide, whether a higher or a lower value of ``metric`` is better."""
        actor = self._actor(actor)
        check_key(metric, what="metric name")
        if direction not in DIRECTIONS:
            raise InvalidInputError(
                f"metric {metric!r}: direction {direction!r} is not one of {', '.join(DIRECTIONS)}"
            )
        now = utcnow()
        values = {
            "metric": metric,
            "direction": direction,
            "declared_at": now,
            "declared_by": actor,
        }
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        dialect_insert = sqlite_insert if is_sqlite(self.engine) else pg_insert
        with self._write() as session:
            _lock_metrics(session, [metric], exclusive=True)
            before = declared_directions(session, [metric]).get(metric)
            stmt = dialect_insert(MetricDirection).values(**values)
            session.execute(
                stmt.on_conflict_do_update(  # type: ignore[attr-defined]
                    index_elements=["metric"],
                    set_={k: stmt.excluded[k] for k in ("direction", "declared_at", "declared_by")},  # type: ignore[attr-defined]
                )
            )
            if (before or default_direction(metric)) != direction:
                refresh_metric_scores(session, metric, direction)  # type: ignore[arg-type]
            journal(
                session,
                actor=actor,
                kind="metric.direction_set",
                subject=metric,
                payload={
                    "metric": metric,
                    "direction": direction,
                    "from": before or f"{default_direction(metric)} (default)",
                },
            )
        logger.info("metric %s: %s is better", metric, direction)
        return MetricRow(
            metric=metric, direction=direction, declared=True, declared_at=now, declared_by=actor
        )

    def list_metrics(self) -> list[MetricRow]:
        """Every metric with a recorded score or a declared direction, by name."""
        with self._read() as session:
            recorded = session.scalars(select(EvalScore.metric).distinct()).all()
            declared = {
                row.metric: row for row in session.scalars(select(MetricDirection))
            }
        rows = []
        for metric in sorted({*recorded, *declared}):
            row = declared.get(metric)
            rows.append(
                MetricRow(
                    metric=metric,
                    direction=row.direction if row else default_direction(metric),
                    declared=row is not None,
                    declared_at=row.declared_at if row else None,
                    declared_by=row.declared_by if row else None,
                )
            )
        return rows
