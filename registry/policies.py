"""Alias policies and protected aliases: the gates an alias moves through, and who may move it.

A **policy** stores the gates of one alias (``require`` thresholds, ``no_regress`` comparisons,
``serving`` profiles): every publish to that alias runs them, whoever publishes, on top of the
gates the publish itself names; a plain move (set or remove) of an alias with a policy is
refused (:class:`~registry.errors.AliasHasPolicyError`). A **protected** alias is moved only by
an admin (over the HTTP API: an admin token; locally, the user of the registry is admin), or by
a publish through its policy.

Gate grammar (parsed here, evaluated by :mod:`registry.publish`):

- ``require``: ``METRIC OP VALUE[@DATASET[/SPLIT]]`` — the threshold grammar of search
  (:func:`registry.search.parse_metric_filter`, ``OP`` one of ``>= <= > < ==``), then the
  dataset and split the score must be measured on. The split is what follows the last ``/``
  (a dataset name with a ``/`` in it must be followed by its split).
- ``no_regress``: ``METRIC[@DATASET[/SPLIT]][:TOLERANCE]`` — the score may be worse than the
  previous version's by at most ``TOLERANCE`` (absolute, default 0), by the metric's direction.
- ``serving``: a profile of :func:`mergetools.serving.parse_serving` (``vllm:max_rank=64``).

:func:`guard_alias_move` is the one call the alias use cases make into this module.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mergetools.errors import InvalidInputError, LoradexError, NotFoundError
from mergetools.serving import parse_serving, serving_label
from registry.core import RegistryCore, journal
from registry.errors import AliasHasPolicyError, PermissionDeniedError
from registry.inputs import DATASET_MAX, SPLIT_MAX, check_alias, check_text, parse_number, shown
from registry.models import (
    Adapter,
    AdapterVersion,
    Alias,
    AliasMove,
    AliasPolicy,
    AliasProtection,
    utcnow,
)
from registry.records import _Record
from registry.search import MetricFilter, parse_metric_filter

logger = logging.getLogger(__name__)

MAX_GATES = 50
"""At most this many gates of each kind in one policy or one publish."""


# ------------------------------------------------------------------------------ gate specs


def _split_scope(text: str, rest: str, *, what: str) -> tuple[str | None, str | None]:
    """``DATASET[/SPLIT]`` after the ``@`` of a gate spec -> (dataset, split)."""
    if not rest:
        raise InvalidInputError(
            f"{what} {shown(text)}: nothing after '@'; expected @DATASET[/SPLIT]"
        )
    dataset, slash, split = rest.rpartition("/")
    if not slash:
        dataset, split = rest, ""
    if not dataset or (slash and not split):
        raise InvalidInputError(
            f"{what} {shown(text)}: {shown(rest)} is not DATASET or DATASET/SPLIT (both non-empty)"
        )
    check_text(dataset, what=f"{what} dataset", limit=DATASET_MAX)
    if split:
        check_text(split, what=f"{what} split", limit=SPLIT_MAX)
    return dataset, (split or None)


def _number(value: float) -> str:
    """A number as a spec writes it, exactly (it is parsed again from a stored policy):
    ``0.82``, ``1``, ``0.8234567``, ``1e+308``."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def _scope_label(dataset: str | None, split: str | None) -> str:
    if dataset is None:
        return ""
    return f"@{dataset}" + (f"/{split}" if split else "")


@dataclass(frozen=True)
class Threshold:
    """``accuracy>=0.82@squad/validation``: the version's score must meet the threshold."""

    metric: str
    op: str
    value: float
    dataset: str | None = None
    split: str | None = None

    @property
    def spec(self) -> str:
        return (
            f"{self.metric}{self.op}{_number(self.value)}{_scope_label(self.dataset, self.split)}"
        )

    @property
    def filter(self) -> MetricFilter:
        return MetricFilter(metric=self.metric, op=self.op, value=self.value)


@dataclass(frozen=True)
class NoRegress:
    """``accuracy@squad:0.01``: no worse than the previous version's score, within ``tolerance``."""

    metric: str
    dataset: str | None = None
    split: str | None = None
    tolerance: float = 0.0

    @property
    def spec(self) -> str:
        tolerance = f":{_number(self.tolerance)}" if self.tolerance else ""
        return f"{self.metric}{_scope_label(self.dataset, self.split)}{tolerance}"


def parse_threshold(text: str) -> Threshold:
    """Parse ``METRIC OP VALUE[@DATASET[/SPLIT]]`` (see the module docstring)."""
    what = "threshold"
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} must be text, got {type(text).__name__}")
    check_text(text, what=what, limit=1000)
    expression, at, rest = text.partition("@")
    dataset, split = _split_scope(text, rest, what=what) if at else (None, None)
    flt = parse_metric_filter(expression)
    if not math.isfinite(flt.value):
        raise InvalidInputError(
            f"{what} {shown(text)}: {flt.value!r} is not a finite number; a score can only be "
            "compared with one such as 0.82"
        )
    return Threshold(flt.metric, flt.op, flt.value, dataset, split)


def parse_no_regress(text: str) -> NoRegress:
    """Parse ``METRIC[@DATASET[/SPLIT]][:TOLERANCE]`` (see the module docstring)."""
    from registry.inputs import check_key

    what = "no-regress gate"
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} must be text, got {type(text).__name__}")
    check_text(text, what=what, limit=1000)
    body, tolerance = text, 0.0
    head, colon, tail = text.rpartition(":")
    if colon:
        tolerance = parse_number(tail, what=f"{what} {shown(text)} tolerance")
        if tolerance < 0:
            raise InvalidInputError(
                f"{what} {shown(text)}: tolerance {tail} is negative; expected an absolute "
                "amount >= 0 the score may be worse by"
            )
        body = head
    metric, at, rest = body.partition("@")
    check_key(metric, what=f"{what} metric")
    dataset, split = _split_scope(text, rest, what=what) if at else (None, None)
    return NoRegress(metric, dataset, split, tolerance)


def parse_serving_gate(text: str) -> str:
    """A serving profile, as its canonical label (``vllm:max_rank=64``, ``lorax``)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"serving profile must be text, got {type(text).__name__}")
    label = serving_label(parse_serving(text))
    assert label is not None
    return label


@dataclass(frozen=True)
class Gates:
    """The gates a publish runs (besides readiness and compatibility, which always run)."""

    require: tuple[Threshold, ...] = ()
    no_regress: tuple[NoRegress, ...] = ()
    serving: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.require or self.no_regress or self.serving)

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "require": [t.spec for t in self.require],
            "no_regress": [n.spec for n in self.no_regress],
            "serving": list(self.serving),
        }


def parse_gates(
    *,
    require: Iterable[str] = (),
    no_regress: Iterable[str] = (),
    serving: Iterable[str] = (),
) -> Gates:
    """Parse gate specs (as given on a command line or stored in a policy); raise on the first
    bad one. A spec given twice counts once."""
    gates = Gates(
        require=tuple(dict.fromkeys(parse_threshold(t) for t in require)),
        no_regress=tuple(dict.fromkeys(parse_no_regress(n) for n in no_regress)),
        serving=tuple(dict.fromkeys(parse_serving_gate(s) for s in serving)),
    )
    for kind, items in (
        ("require", gates.require),
        ("no_regress", gates.no_regress),
        ("serving", gates.serving),
    ):
        if len(items) > MAX_GATES:
            raise InvalidInputError(f"{len(items)} {kind} gates given; at most {MAX_GATES}")
    return gates


def gates_from_dict(data: Mapping[str, Any]) -> Gates:
    """The gates of a stored policy (``{"require": [...], "no_regress": [...], "serving": [...]}``)."""

    def items(key: str) -> list[str]:
        value = data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidInputError(f"policy gates {key!r} must be a list of strings")
        return value

    return parse_gates(
        require=items("require"), no_regress=items("no_regress"), serving=items("serving")
    )


# ------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class PolicyRow(_Record):
    name: str
    alias: str
    gates: dict[str, list[str]]
    updated_at: dt.datetime
    updated_by: str
    protected: bool = False


@dataclass(frozen=True)
class ProtectionRow(_Record):
    name: str
    alias: str
    protected: bool
    changed: bool
    """False when the alias already was (or was not) protected."""
    at: dt.datetime
    by: str


@dataclass(frozen=True)
class AliasRow(_Record):
    """One alias in ``alias list``: where it points, its policy, its protection, its last move."""

    name: str
    alias: str
    version: int | None
    ref: str | None
    status: str | None
    policy: dict[str, list[str]] | None
    protected: bool
    last_move: dict[str, Any] | None = field(default=None)


# ------------------------------------------------------------------------------ storage helpers


def policy_of(session: Session, adapter_id: int, alias: str) -> AliasPolicy | None:
    return session.get(AliasPolicy, (adapter_id, alias))


def is_protected(session: Session, adapter_id: int, alias: str) -> bool:
    return session.get(AliasProtection, (adapter_id, alias)) is not None


def guard_alias_move(
    session: Session, registry: PoliciesMixin, adapter: Adapter, alias: str
) -> None:
    """Refuse a plain move (set or remove) of ``alias``: when it has a policy (for everyone),
    or when it is protected and ``registry`` does not act as an admin. Called inside the
    move's transaction, with the adapter row locked."""
    if policy_of(session, adapter.id, alias) is not None:
        raise AliasHasPolicyError(
            f"alias {adapter.name}@{alias} has a publish policy: it moves only through a publish, "
            "which runs the policy's gates",
            adapter=adapter.name,
            alias=alias,
        )
    if not registry.admin and is_protected(session, adapter.id, alias):
        raise PermissionDeniedError(
            f"alias {adapter.name}@{alias} is protected: only an admin moves it", needed="admin"
        )


# ------------------------------------------------------------------------------ use cases


class PoliciesMixin(RegistryCore):
    """Use cases of alias policies and protection, and the alias listing."""

    admin: bool = True
    """Whether this registry acts as an admin: locally always; over the HTTP API only for an
    admin token (see :meth:`with_rights`)."""

    def with_rights(self, *, admin: bool) -> Self:
        """A view of this registry that acts with (or without) admin rights."""
        view = copy.copy(self)
        view.admin = admin
        return view

    def _require_admin(self, what: str) -> None:
        if not self.admin:
            raise PermissionDeniedError(f"{what} needs admin rights", needed="admin")

    def set_alias_policy(
        self,
        name: str,
        alias: str,
        *,
        require: Sequence[str] = (),
        no_regress: Sequence[str] = (),
        serving: Sequence[str] = (),
        actor: str | None = None,
    ) -> PolicyRow:
        """Store (or replace) the gates every publish to ``name``'s ``alias`` runs (admin)."""
        actor = self._actor(actor)
        self._require_admin(f"setting the policy of alias {name}@{alias}")
        check_alias(alias)
        gates = parse_gates(require=require, no_regress=no_regress, serving=serving)
        if not gates:
            raise InvalidInputError(
                f"a policy for alias {name}@{alias} needs at least one gate (a threshold, a "
                "no-regress metric or a serving profile)"
            )
        now = utcnow()
        with self._write() as session:
            adapter = self._adapter(session, name, lock=True)
            row = policy_of(session, adapter.id, alias)
            before = dict(row.gates) if row is not None else None
            if row is None:
                row = AliasPolicy(
                    adapter_id=adapter.id,
                    alias=alias,
                    gates=gates.to_dict(),
                    updated_at=now,
                    updated_by=actor,
                )
                session.add(row)
            else:
                row.gates, row.updated_at, row.updated_by = gates.to_dict(), now, actor
            session.flush()
            journal(
                session,
                actor=actor,
                kind="alias.policy_set",
                subject=f"{adapter.name}@{alias}",
                adapter_id=adapter.id,
                payload={"alias": alias, "gates": gates.to_dict(), "before": before},
            )
            protected = is_protected(session, adapter.id, alias)
            return PolicyRow(adapter.name, alias, gates.to_dict(), now, actor, protected)

    def alias_policy(self, name: str, alias: str) -> PolicyRow:
        """The policy of ``name``'s ``alias`` (NotFoundError when it has none)."""
        with self._read() as session:
            adapter = self._adapter(session, name)
            row = policy_of(session, adapter.id, alias)
            if row is None:
                raise NotFoundError(
                    f"alias {adapter.name}@{shown(alias)} has no publish policy",
                    fields={"adapter": adapter.name, "alias": alias},
                )
            return PolicyRow(
                adapter.name,
                alias,
                dict(row.gates),
                row.updated_at,
                row.updated_by,
                is_protected(session, adapter.id, alias),
            )

    def remove_alias_policy(self, name: str, alias: str, *, actor: str | None = None) -> PolicyRow:
        """Remove the policy of ``name``'s ``alias`` (admin); returns the policy removed."""
        actor = self._actor(actor)
        self._require_admin(f"removing the policy of alias {name}@{alias}")
        now = utcnow()
        with self._write() as session:
            adapter = self._adapter(session, name, lock=True)
            row = policy_of(session, adapter.id, alias)
            if row is None:
                raise NotFoundError(
                    f"alias {adapter.name}@{shown(alias)} has no publish policy",
                    fields={"adapter": adapter.name, "alias": alias},
                )
            removed = PolicyRow(
                adapter.name,
                alias,
                dict(row.gates),
                now,
                actor,
                is_protected(session, adapter.id, alias),
            )
            session.delete(row)
            journal(
                session,
                actor=actor,
                kind="alias.policy_removed",
                subject=f"{adapter.name}@{alias}",
                adapter_id=adapter.id,
                payload={"alias": alias, "gates": removed.gates},
            )
            return removed

    def protect_alias(
        self, name: str, alias: str, *, protect: bool = True, actor: str | None = None
    ) -> ProtectionRow:
        """Protect (or, with ``protect=False``, unprotect) ``name``'s ``alias`` (admin)."""
        actor = self._actor(actor)
        self._require_admin(f"{'protecting' if protect else 'unprotecting'} alias {name}@{alias}")
        check_alias(alias)
        now = utcnow()
        with self._write() as session:
            adapter = self._adapter(session, name, lock=True)
            row = session.get(AliasProtection, (adapter.id, alias))
            changed = (row is None) == protect
            if changed and protect:
                session.add(
                    AliasProtection(
                        adapter_id=adapter.id,
                        alias=alias,
                        protected_at=now,
                        protected_by=actor,
                    )
                )
            elif changed:
                session.delete(row)
            if changed:
                journal(
                    session,
                    actor=actor,
                    kind="alias.protected" if protect else "alias.unprotected",
                    subject=f"{adapter.name}@{alias}",
                    adapter_id=adapter.id,
                    payload={"alias": alias},
                )
            return ProtectionRow(adapter.name, alias, protect, changed, now, actor)

    def list_aliases(self, name: str | None = None) -> list[AliasRow]:
        """Every alias (of one adapter, or of all), with its version, its policy, whether it is
        protected and its last move; aliases with a policy or protection but no version yet are
        listed too. Four queries, whatever the number of aliases."""
        with self._read() as session:
            adapter_ids: list[int] | None = None
            if name is not None:
                adapter_ids = [self._adapter(session, name).id]

            def scoped(stmt: Any, column: Any) -> Any:
                return stmt.where(column.in_(adapter_ids)) if adapter_ids is not None else stmt

            pointers = session.execute(
                scoped(
                    select(
                        Adapter.name,
                        Alias.adapter_id,
                        Alias.name,
                        AdapterVersion.version,
                        AdapterVersion.status,
                    )
                    .join(Adapter, Adapter.id == Alias.adapter_id)
                    .join(AdapterVersion, AdapterVersion.id == Alias.version_id),
                    Alias.adapter_id,
                )
            ).all()
            policies = session.execute(
                scoped(
                    select(Adapter.name, AliasPolicy).join(
                        Adapter, Adapter.id == AliasPolicy.adapter_id
                    ),
                    AliasPolicy.adapter_id,
                )
            ).all()
            protections = session.execute(
                scoped(
                    select(Adapter.name, AliasProtection.adapter_id, AliasProtection.alias).join(
                        Adapter, Adapter.id == AliasProtection.adapter_id
                    ),
                    AliasProtection.adapter_id,
                )
            ).all()
            last_ids = scoped(
                select(func.max(AliasMove.id)).group_by(AliasMove.adapter_id, AliasMove.alias),
                AliasMove.adapter_id,
            )
            moves = session.execute(
                select(AliasMove, Adapter.name)
                .join(Adapter, Adapter.id == AliasMove.adapter_id)
                .where(AliasMove.id.in_(last_ids))
            ).all()
            version_ids = {m.from_version_id for m, _ in moves} | {
                m.to_version_id for m, _ in moves
            }
            numbers = dict(
                session.execute(
                    select(AdapterVersion.id, AdapterVersion.version).where(
                        AdapterVersion.id.in_([v for v in version_ids if v is not None])
                    )
                ).all()
            )
        keys: dict[tuple[str, str], dict[str, Any]] = {}

        def entry(adapter_name: str, alias: str) -> dict[str, Any]:
            return keys.setdefault(
                (adapter_name, alias),
                {
                    "version": None,
                    "status": None,
                    "policy": None,
                    "protected": False,
                    "last_move": None,
                },
            )

        for adapter_name, _, alias, version, status in pointers:
            entry(adapter_name, alias).update(version=version, status=status)
        for adapter_name, policy in policies:
            entry(adapter_name, policy.alias)["policy"] = dict(policy.gates)
        for adapter_name, _, alias in protections:
            entry(adapter_name, alias)["protected"] = True
        for move, adapter_name in moves:
            entry(adapter_name, move.alias)["last_move"] = {
                "kind": move.kind or ("set" if move.to_version_id else "removed"),
                "from_version": numbers.get(move.from_version_id) if move.from_version_id else None,
                "to_version": numbers.get(move.to_version_id) if move.to_version_id else None,
                "moved_at": move.moved_at,
                "moved_by": move.moved_by,
            }
        rows = []
        for (adapter_name, alias), data in sorted(keys.items()):
            if data["version"] is None and data["policy"] is None and not data["protected"]:
                continue  # a removed alias with nothing attached: its history has it
            rows.append(
                AliasRow(
                    name=adapter_name,
                    alias=alias,
                    version=data["version"],
                    ref=f"{adapter_name}@{data['version']}"
                    if data["version"] is not None
                    else None,
                    status=data["status"],
                    policy=data["policy"],
                    protected=data["protected"],
                    last_move=data["last_move"],
                )
            )
        return rows


def describe_error(exc: LoradexError) -> str:
    """One line for a gate that failed because of an error (the error's message)."""
    return " ".join(str(exc).split())
