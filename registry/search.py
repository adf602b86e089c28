"""Search over registered versions: filters, metric sort, keyset pagination — one SQL query.

A version's score for a metric is its best recorded value by the metric's direction (the
lowest for a lower-is-better metric such as ``loss``, the highest otherwise; see
:mod:`registry.metrics`), over the scores on ``dataset=`` and ``split=`` when given, else over
all of them. Threshold filters (``loss<=0.2``) compare that score with the value as written;
``sort="loss"`` lists the best first, ``"+loss"`` ascending and ``"-loss"`` descending values.
All of it runs in SQL, so a query never runs per row: without a dataset or split the scores are
read from ``version_scores`` (each version's best score per metric, kept by every write), and a
sort by a metric walks its (metric, value) index up to the limit; with a dataset or split they
are aggregated from ``eval_scores`` (MIN or MAX per metric). Pages are keyset-paginated: the
cursor encodes the last row's sort key.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, or_, select, true
from sqlalchemy.orm import Session

from mergetools.errors import ConflictError, InvalidInputError, NotFoundError
from registry.inputs import NAME_MAX, shown
from registry.metrics import Direction, default_direction
from registry.models import (
    Adapter,
    AdapterVersion,
    BaseModel,
    EvalScore,
    Tag,
    VersionModule,
    VersionScore,
)

logger = logging.getLogger(__name__)

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "=": operator.eq,
}
# A filter that agrees with how a version's score is aggregated also bounds the rows that can
# matter: the best (max) score is >= x only through rows >= x, and is then their max.
_ROW_BOUNDS: dict[str, dict[str, Callable[[Any, Any], Any]]] = {
    "higher": {">=": operator.ge, ">": operator.gt, "==": operator.ge, "=": operator.ge},
    "lower": {"<=": operator.le, "<": operator.lt, "==": operator.le, "=": operator.le},
}
_METRIC_RE = re.compile(r"^\s*([A-Za-z_][\w.\-/]*)\s*(>=|<=|==|=|>|<)\s*(\S+)\s*\Z")
MAX_LIMIT = 1000
# A sort key: (column or ORM attribute, descending).
SortKey = tuple[Any, bool]


@dataclass(frozen=True)
class MetricFilter:
    """``metric op value``, e.g. ``accuracy>=0.8``."""

    metric: str
    op: str
    value: float


@dataclass(frozen=True)
class SearchQuery:
    """Filters of ``loradex search``; every one maps to an indexed column."""

    name: str | None = None  # glob: support-*
    base: str | None = None  # base model name, fingerprint or base_model_name_or_path
    target_module: str | None = None  # leaf name: q_proj
    max_rank: int | None = None  # versions whose largest rank is <= this
    tags: dict[str, str] = field(default_factory=dict)
    metrics: tuple[MetricFilter, ...] = ()
    sort: str | None = None  # metric: best first; "+metric" ascending, "-metric" descending
    dataset: str | None = None  # restrict metric scores to one dataset
    split: str | None = None  # restrict metric scores to one split
    include_yanked: bool = False
    limit: int = 50
    after: str | None = None  # cursor from a previous page


def parse_metric_filter(text: str) -> MetricFilter:
    """Parse ``accuracy>=0.8`` (operators ``>= <= > < ==``)."""
    match = _METRIC_RE.match(text)
    if not match:
        raise InvalidInputError(
            f"metric filter {text!r} is not understood; expected METRIC OP VALUE with OP one of "
            ">=, <=, >, <, == (e.g. accuracy>=0.8)"
        )
    metric, op, raw = match.groups()
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInputError(
            f"metric filter {text!r}: {raw!r} is not a number; e.g. accuracy>=0.8"
        ) from None
    return MetricFilter(metric=metric, op="==" if op == "=" else op, value=value)


def metric_passes(flt: MetricFilter, score: float) -> bool:
    """Whether ``score`` meets the threshold ``flt`` (the comparison the SQL filter makes)."""
    return bool(_compare(flt, score))


def _compare(flt: MetricFilter, score: Any) -> Any:
    """``score OP value`` of the filter ``flt``: a bool for a number, a SQL condition for a
    column."""
    if flt.op not in _OPS:
        raise InvalidInputError(f"metric filter operator {flt.op!r} is not one of {sorted(_OPS)}")
    return _OPS[flt.op](score, flt.value)


def glob_to_like(pattern: str) -> str:
    """``support-*`` -> ``support-%`` with LIKE's own wildcards escaped (escape char ``\\``).

    Runs of ``*`` are one ``*``. A pattern that could match no name (more than
    :data:`~registry.inputs.NAME_MAX` characters besides its stars) is refused: it is a mistake,
    and a database may refuse to evaluate it.
    """
    pattern = re.sub(r"\*{2,}", "*", pattern)
    if len(pattern) - pattern.count("*") > NAME_MAX:
        raise InvalidInputError(
            f"name pattern {shown(pattern)} can match no adapter name: names are at most "
            f"{NAME_MAX} characters",
            fields={"pattern": pattern[:NAME_MAX]},
        )
    out = []
    for char in pattern:
        if char in "%_\\":
            out.append("\\" + char)
        elif char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        else:
            out.append(char)
    return "".join(out)


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


# The kinds of value a sort key (hence a cursor position) can hold.
CursorKind = Literal["str", "int", "float"]
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1  # what every backend binds as an integer


def decode_cursor(cursor: str, *, kinds: Sequence[CursorKind]) -> list[Any]:
    """The sort-key values encoded in ``cursor``, one per entry of ``kinds``, else raise.

    Each value must be of its key's kind: ``str`` (no NUL), ``int`` (64-bit, not a bool) or
    ``float`` (a finite number; an int is accepted). ``None`` is never valid: sort keys are
    never NULL.
    """
    hint = "pass the next_cursor printed by the previous page of the same query (same sort order)"
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, json.JSONDecodeError):
        values = None
    if not isinstance(values, list) or len(values) != len(kinds):
        raise InvalidInputError(
            f"cursor {cursor!r} is not valid for this query: expected {len(kinds)} encoded "
            f"values ({', '.join(kinds)}); {hint}"
        )
    for position, (value, kind) in enumerate(zip(values, kinds, strict=True)):
        if not _is_kind(value, kind):
            raise InvalidInputError(
                f"cursor {cursor!r} is not valid for this query: value {position + 1} is "
                f"{value!r} but this query's sort key {position + 1} is a {kind}; {hint}"
            )
    return values


def _is_kind(value: Any, kind: CursorKind) -> bool:
    if kind == "str":
        return isinstance(value, str) and "\x00" not in value
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int) and _INT_MIN <= value <= _INT_MAX
    return (isinstance(value, int) and _INT_MIN <= value <= _INT_MAX) or (
        isinstance(value, float) and math.isfinite(value)
    )


def keyset_after(keys: list[SortKey], values: list[Any]) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the order of ``keys`` ((column, descending) pairs)."""
    clauses = []
    for i, (column, descending) in enumerate(keys):
        equal = [keys[j][0] == values[j] for j in range(i)]
        step = column < values[i] if descending else column > values[i]
        clauses.append(and_(*equal, step))
    return or_(*clauses) if clauses else true()


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"limit {limit} is out of range; expected 1..{MAX_LIMIT}")
    return limit


def parse_sort(sort: str) -> tuple[str, Literal["best", "asc", "desc"]]:
    """``loss`` -> (``loss``, best first); ``+loss`` ascending; ``-loss`` descending values."""
    if sort.startswith("+"):
        return sort[1:], "asc"
    if sort.startswith("-"):
        return sort[1:], "desc"
    return sort, "best"


def query_metrics(query: SearchQuery) -> list[str]:
    """The metrics whose scores ``query`` needs (filters, then the sort), each once."""
    names = [f.metric for f in query.metrics] + ([parse_sort(query.sort)[0]] if query.sort else [])
    return list(dict.fromkeys(names))


def _score_rows(
    query: SearchQuery, metric_names: Sequence[str], direction: Mapping[str, str]
) -> ColumnElement[bool]:
    """Which eval rows the score aggregation reads: those of the query's metrics, and of a metric
    filtered the way its score is aggregated (``accuracy>=0.8``, higher is better) only the rows
    that pass the filter. The HAVING clause still decides; this only keeps the rows that cannot
    change its answer out of the aggregation, so a selective filter reads an index range instead
    of every score of the metric."""
    bounded = False
    per_metric: list[ColumnElement[bool]] = []
    for metric in metric_names:
        row = [EvalScore.metric == metric]
        bounds = _ROW_BOUNDS[direction[metric]]
        for flt in query.metrics:
            if flt.metric == metric and flt.op in bounds:
                row.append(bounds[flt.op](EvalScore.value, flt.value))
        bounded = bounded or len(row) > 1
        per_metric.append(and_(*row))
    if not bounded:
        return EvalScore.metric.in_(metric_names)
    return or_(*per_metric)


def build_search(
    query: SearchQuery,
    *,
    directions: Mapping[str, Direction] | None = None,
) -> tuple[Select, list[SortKey], list[str]]:  # type: ignore[type-arg]
    """The search statement, its sort keys and the metric names whose scores it selects.

    ``directions`` gives each metric's direction (from :func:`registry.metrics.directions_for`,
    which knows the declared ones); a metric missing there follows the default rule.
    """
    check_limit(query.limit)
    v, a, b = AdapterVersion, Adapter, BaseModel
    statuses = ["ready", "yanked"] if query.include_yanked else ["ready"]

    metric_names = query_metrics(query)
    direction = {m: (directions or {}).get(m) or default_direction(m) for m in metric_names}

    score_columns: dict[str, ColumnElement[Any]] = {}
    # The version id column beside each score: the sort's tie-breaker, so that an index on
    # (metric, value, version_id) gives the whole order.
    score_versions: dict[str, ColumnElement[Any]] = {}
    score_filters: list[ColumnElement[bool]] = []
    stmt_from = v.__table__.join(a.__table__, a.id == v.adapter_id).outerjoin(
        b.__table__, b.id == v.base_model_id
    )
    if metric_names and query.dataset is None and query.split is None:
        # Each version's best score per metric is a row of version_scores: one join per metric,
        # filters on the joined value. A sort by a metric walks ix_version_scores_metric_value
        # (metric, value, version_id) in order and stops at the limit.
        for i, metric in enumerate(metric_names):
            best = VersionScore.__table__.alias(f"s{i}")
            stmt_from = stmt_from.join(
                best, and_(best.c.version_id == v.id, best.c.metric == metric)
            )
            score_columns[metric] = best.c.value
            score_versions[metric] = best.c.version_id
        score_filters += [_compare(flt, score_columns[flt.metric]) for flt in query.metrics]
        if query.sort:
            # Always true (scores are finite), but a range on the index's second column: without
            # it SQLite may start from adapters and sort every version by the score.
            score_filters.append(score_columns[parse_sort(query.sort)[0]] > -math.inf)
    elif metric_names:
        # Scores restricted to a dataset or split: one pass over eval_scores (index-only on
        # (metric, version_id, value)) computes every needed score per version by conditional
        # aggregation; filters go into HAVING.
        conditions: list[ColumnElement[bool]] = [_score_rows(query, metric_names, direction)]
        if query.dataset is not None:
            conditions.append(EvalScore.dataset == query.dataset)
        if query.split is not None:
            conditions.append(EvalScore.split == query.split)
        aggregates = [
            (func.min if direction[metric] == "lower" else func.max)(
                case((EvalScore.metric == metric, EvalScore.value))
            ).label(f"m{i}")
            for i, metric in enumerate(metric_names)
        ]
        having: list[ColumnElement[bool]] = [agg.isnot(None) for agg in aggregates]
        by_metric = dict(zip(metric_names, aggregates, strict=True))
        having += [_compare(flt, by_metric[flt.metric]) for flt in query.metrics]
        scores = (
            select(EvalScore.version_id, *aggregates)
            .where(*conditions)
            .group_by(EvalScore.version_id)
            .having(and_(*having))
            .subquery("scores")
        )
        stmt_from = stmt_from.join(scores, scores.c.version_id == v.id)
        score_columns = {metric: scores.c[f"m{i}"] for i, metric in enumerate(metric_names)}
        score_versions = {metric: scores.c.version_id for metric in metric_names}

    stmt = (
        select(
            v.id,
            a.name,
            v.version,
            v.status,
            v.max_rank,
            v.alpha,
            v.target_modules,
            v.base_fingerprint,
            b.name.label("base_name"),
            v.weights_sha256,
            v.created_at,
            v.created_by,
            *[column.label(f"metric_{i}") for i, column in enumerate(score_columns.values())],
        )
        .select_from(stmt_from)
        .where(v.status.in_(statuses), *score_filters)
    )
    if query.name:
        stmt = stmt.where(a.name.like(glob_to_like(query.name), escape="\\"))
    if query.base:
        stmt = stmt.where(
            or_(
                b.name == query.base,
                v.base_fingerprint == query.base,
                v.base_name_or_path == query.base,
            )
        )
    if query.target_module:
        stmt = stmt.where(
            exists().where(
                VersionModule.version_id == v.id, VersionModule.module == query.target_module
            )
        )
    if query.max_rank is not None:
        stmt = stmt.where(v.max_rank <= query.max_rank)
    for key, value in sorted(query.tags.items()):
        stmt = stmt.where(
            exists().where(Tag.version_id == v.id, Tag.key == key, Tag.value == value)
        )

    keys: list[SortKey]
    kinds: list[CursorKind]
    if query.sort:
        metric, order = parse_sort(query.sort)
        descending = order == "desc" or (order == "best" and direction[metric] == "higher")
        keys = [(score_columns[metric], descending), (score_versions[metric], descending)]
        kinds = ["float", "int"]
    else:
        keys = [(a.name, False), (v.version, True)]
        kinds = ["str", "int"]
    if query.after:
        stmt = stmt.where(keyset_after(keys, decode_cursor(query.after, kinds=kinds)))
    stmt = stmt.order_by(*[col.desc() if desc else col.asc() for col, desc in keys])
    stmt = stmt.limit(query.limit + 1)
    return stmt, keys, metric_names


_BUILT_SEARCHES: dict[tuple[Any, ...], tuple[Select, list[SortKey], list[str]]] = {}  # type: ignore[type-arg]
_BUILT_SEARCHES_MAX = 256


def built_search(
    query: SearchQuery, *, directions: Mapping[str, Direction]
) -> tuple[Select, list[SortKey], list[str]]:  # type: ignore[type-arg]
    """:func:`build_search`, remembered for the last few hundred (query, directions) pairs.

    Building the statement cost about as much CPU as running it; the same statement object also
    keeps SQLAlchemy's cache key. Only the statement is kept, never a result: it is a function of
    the query and the directions (read from the database by the caller each time). Treat the
    returned lists as read-only.
    """
    key = (
        tuple(
            tuple(sorted(value.items())) if isinstance(value, dict) else value
            for value in (getattr(query, name) for name in query.__dataclass_fields__)
        ),
        tuple(sorted(directions.items())),
    )
    built = _BUILT_SEARCHES.get(key)
    if built is None:
        built = build_search(query, directions=directions)
        if len(_BUILT_SEARCHES) >= _BUILT_SEARCHES_MAX:
            _BUILT_SEARCHES.clear()
        _BUILT_SEARCHES[key] = built
    return built


def validate_search(session: Session, query: SearchQuery) -> SearchQuery:
    """``query`` with its ``sha256:`` base prefix resolved, else raise for a filter naming nothing.

    A base, metric (to filter or sort by), dataset, target module or tag key that no registered
    version has is a mistake (a typo, most often), not a query that matched nothing: raise
    :class:`NotFoundError`. Each check is one indexed ``EXISTS`` query, run only for the filters
    given. Called at the start of the search use case, before :func:`build_search`.
    """
    from registry.inputs import parse_sha256_prefix, shown

    def present(*conditions: ColumnElement[bool]) -> bool:
        return bool(session.scalar(select(exists().where(*conditions))))

    v, b = AdapterVersion, BaseModel
    if query.base is not None:
        if query.base.startswith("sha256:"):
            prefix = parse_sha256_prefix(query.base, what="a base's fingerprint")
            fingerprints = sorted(
                {
                    fp
                    for column in (b.fingerprint, v.base_fingerprint)
                    for fp in session.scalars(
                        select(column).where(column.startswith(prefix)).distinct().limit(2)
                    )
                    if fp is not None
                }
            )
            if not fingerprints:
                raise NotFoundError(
                    f"base {shown(query.base)}: no base model or version has a fingerprint "
                    "starting with that",
                    fields={"base": query.base},
                    hint_action="base_list",
                )
            if len(fingerprints) > 1:
                raise ConflictError(
                    f"base {shown(query.base)} is ambiguous: several base fingerprints start "
                    "with it; give more hex digits"
                )
            query = replace(query, base=fingerprints[0])
        elif not (
            present(b.name == query.base)
            or present(v.base_fingerprint == query.base)
            or present(v.base_name_or_path == query.base)
        ):
            raise NotFoundError(
                f"base {shown(query.base)} is not a registered base model name, and no version "
                "records it as its base fingerprint or base_model_name_or_path",
                fields={"base": query.base},
                hint_action="base_list",
            )
    metrics = list(
        dict.fromkeys(
            [f.metric for f in query.metrics] + ([query.sort.lstrip("+-")] if query.sort else [])
        )
    )
    for metric in metrics:
        if not present(EvalScore.metric == metric):
            known = list(
                session.scalars(
                    select(EvalScore.metric).distinct().order_by(EvalScore.metric).limit(10)
                )
            )
            raise NotFoundError(
                f"metric {shown(metric)}: no version has an eval score for it; recorded "
                f"metrics: {', '.join(known) if known else 'none yet'}"
            )
    for value, column, what in (
        (query.dataset, EvalScore.dataset, "dataset"),
        (query.split, EvalScore.split, "split"),
    ):
        if value is None:
            continue
        if metrics and present(EvalScore.metric.in_(metrics), column == value):
            continue  # the indexed check; the scan below runs only when it fails
        if not present(column == value):
            raise NotFoundError(
                f"{what} {shown(value)}: no eval score was measured on a {what} of that name"
            )
    if query.target_module is not None and not present(
        VersionModule.module == query.target_module
    ):
        raise NotFoundError(
            f"target module {shown(query.target_module)}: no version targets a module of that "
            "name; expected a leaf name such as q_proj"
        )
    for key in sorted(query.tags):
        if not present(Tag.key == key):
            raise NotFoundError(f"tag key {shown(key)}: no version has a tag with that key")
    return query
