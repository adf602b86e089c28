"""Evals and tags of a version: record scores (deduplicated), set and remove tags."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from mergetools.errors import InvalidInputError
from registry.core import RegistryCore
from registry.inputs import (
    EvalInput,
    check_eval,
    check_tag,
)
from registry.metrics import Direction, better, default_direction, refresh_version_scores
from registry.models import (
    EvalScore,
    MetricDirection,
    Tag,
    utcnow,
)
from registry.records import (
    EvalRow,
)

logger = logging.getLogger(__name__)

# Built once (building a SELECT costs more CPU than running it), over the tables rather than the
# ORM classes (plain rows: half the per-query cost; the session still autoflushes before them);
# see registry/core.py.
_TAGS = Tag.__table__.c
_SCORES = EvalScore.__table__.c
_DIRECTIONS = MetricDirection.__table__.c
_TAGS_OF_VERSION = (
    select(_TAGS.key, _TAGS.value)
    .where(_TAGS.version_id == bindparam("version_id"))
    .order_by(_TAGS.key)
)
_EVALS_OF_VERSION = (  # with each metric's declared direction, if any
    select(
        _SCORES.id,
        _SCORES.metric,
        _SCORES.value,
        _SCORES.dataset,
        _SCORES.split,
        _SCORES.recorded_at,
        _SCORES.recorded_by,
        _DIRECTIONS.direction,
    )
    .outerjoin_from(
        EvalScore.__table__,
        MetricDirection.__table__,
        _DIRECTIONS.metric == _SCORES.metric,
    )
    .where(_SCORES.version_id == bindparam("version_id"))
    .order_by(_SCORES.metric, _SCORES.id)
)


class EvalsMixin(RegistryCore):
    """Use cases of a version's eval scores and tags."""

    def add_evals(
        self, ref: str, evals: Sequence[EvalInput], *, actor: str | None = None
    ) -> list[EvalRow]:
        """Record eval scores for a version; returns the rows recorded.

        Scores the version already has (same metric, value, dataset and split) are not recorded
        again, so the result lists only new rows (empty when every score was known).
        """
        if not evals:
            raise InvalidInputError(
                "no eval score given; expected METRIC=VALUE[,dataset=D][,split=S]"
            )
        actor = self._actor(actor)
        now = utcnow()
        with self._write() as session:
            adapter, v = self._resolve(session, ref)
            self._lock_version(session, v.id)
            ids = set(self._attach_evals(session, v.id, evals, now=now, actor=actor))
            added = [r for r in self._evals(session, v.id) if r.id in ids]
            if added:
                self._journal_version(
                    session,
                    adapter,
                    v,
                    kind="eval.added",
                    actor=actor,
                    payload={
                        "evals": [
                            {"metric": e.metric, "value": e.value, "dataset": e.dataset, "split": e.split}
                            for e in added
                        ]
                    },
                )
            return added

    def list_evals(self, ref: str) -> list[EvalRow]:
        with self._read() as session:
            _, v = self._resolve(session, ref, allow_deleted=True)
            return self._evals(session, v.id)

    def set_tags(
        self,
        ref: str,
        *,
        set_tags: Mapping[str, str] | None = None,
        remove: Sequence[str] = (),
        actor: str | None = None,
    ) -> dict[str, str]:
        """Set and remove tags of a version; returns its tags afterwards."""
        actor = self._actor(actor)
        for key, value in (set_tags or {}).items():
            check_tag(key, value)
        with self._write() as session:
            adapter, v = self._resolve(session, ref)
            self._lock_version(session, v.id)
            for key in remove:
                session.execute(delete(Tag).where(Tag.version_id == v.id, Tag.key == key))
            self._upsert_tags(session, v.id, set_tags or {})
            self._journal_version(
                session,
                adapter,
                v,
                kind="tags.changed",
                actor=actor,
                payload={"set": dict(set_tags or {}), "removed": list(remove)},
            )
            return self._tags_of(session, v.id)

    @staticmethod
    def _eval_row(
        version_id: int, spec: EvalInput, now: dt.datetime, *, actor: str
    ) -> dict[str, Any]:
        check_eval(spec)
        return {
            "version_id": version_id,
            "metric": spec.metric,
            "value": float(spec.value),
            "dataset": spec.dataset,
            "split": spec.split,
            "recorded_at": now,
            "recorded_by": actor,
        }

    def _attach_evals(
        self,
        session: Session,
        version_id: int,
        evals: Sequence[EvalInput],
        *,
        now: dt.datetime,
        actor: str,
    ) -> list[int]:
        """Record the evals of ``evals`` the version does not have yet; return the new rows' ids.

        An eval is the same as a recorded one when metric, value, dataset and split are equal,
        so repeating a call (a retried request) records nothing twice. The caller holds the
        version's lock (:meth:`_lock_version`) or created the version in this transaction.
        """
        if not evals:
            return []
        seen = {
            (m, float(val), d, sp)
            for m, val, d, sp in session.execute(
                select(
                    EvalScore.metric, EvalScore.value, EvalScore.dataset, EvalScore.split
                ).where(EvalScore.version_id == version_id)
            )
        }
        scores = []
        for spec in evals:
            row = self._eval_row(version_id, spec, now, actor=actor)
            key = (row["metric"], row["value"], row["dataset"], row["split"])
            if key in seen:
                continue
            seen.add(key)
            scores.append(EvalScore(**row))
        if scores:
            session.add_all(scores)
            session.flush()
            refresh_version_scores(session, version_id, {score.metric for score in scores})
        return [score.id for score in scores]

    def _upsert_tags(
        self, session: Session, version_id: int, tags: Mapping[str, str]
    ) -> dict[str, str]:
        """Set ``tags`` on the version (a new value replaces the key's old one); return the
        tags that were added or changed (unchanged ones are left alone)."""
        if not tags:
            return {}
        current = self._tags_of(session, version_id)
        changed = {k: v for k, v in sorted(tags.items()) if current.get(k) != v}
        new = [{"version_id": version_id, "key": k, "value": v} for k, v in changed.items() if k not in current]
        if new:
            session.execute(insert(Tag), new)
        for key, value in changed.items():
            if key in current:
                session.execute(
                    update(Tag)
                    .where(Tag.version_id == version_id, Tag.key == key)
                    .values(value=value)
                )
        return changed

    @staticmethod
    def _tags_of(session: Session, version_id: int) -> dict[str, str]:
        return dict(session.execute(_TAGS_OF_VERSION, {"version_id": version_id}).all())

    @staticmethod
    def _evals(session: Session, version_id: int) -> list[EvalRow]:
        """The version's eval rows, each with its metric's direction and whether it is the best
        value of that metric on its dataset and split (ties: the first recorded)."""
        scores = session.execute(_EVALS_OF_VERSION, {"version_id": version_id}).all()
        directions: dict[str, Direction] = {
            e.metric: cast(Direction, e.direction) if e.direction else default_direction(e.metric)
            for e in scores
        }
        best: dict[tuple[str, str | None, str | None], tuple[float, int]] = {}  # value, id
        for e in scores:
            key = (e.metric, e.dataset, e.split)
            if key not in best or better(directions[e.metric], e.value, best[key][0]):
                best[key] = (e.value, e.id)
        best_ids = {score_id for _, score_id in best.values()}
        return [
            EvalRow(
                id=e.id,
                metric=e.metric,
                value=e.value,
                dataset=e.dataset,
                split=e.split,
                recorded_at=e.recorded_at,
                recorded_by=e.recorded_by,
                direction=directions[e.metric],
                best=e.id in best_ids,
            )
            for e in scores
        ]

