"""Publish: move an alias only when every gate passes; the report of those gates.

:func:`publish` evaluates, for a version ``REF`` and an alias of its adapter:

- **ready**: ``REF`` is ready (not yanked, not deleted);
- **compatibility**: the check of ``REF`` against a base (:func:`registry.checks.check`): the
  base given, else the registered base of the version the alias holds now, else ``REF``'s own
  registered base (a registered base is checked through its stored structural signature, so no
  weights are needed); any error finding fails it, and so does having no base at all;
- **serving**: one gate per serving profile (:mod:`mergetools.serving`): the check's serving
  findings;
- **require**: one gate per threshold, on ``REF``'s best score for the metric (by its direction,
  :mod:`registry.metrics`) on the dataset and split named; a missing score fails;
- **no_regress**: one gate per metric, ``REF``'s score against the score of the version the
  alias holds now, by the metric's direction, within an absolute tolerance; it passes when the
  alias is unset (no previous version) or the previous version has no such score, and fails
  when ``REF`` has none.

The gates of the alias's policy (:mod:`registry.policies`) run on top of those the request
names. Only when every gate passes does the alias move, as a compare-and-swap against the
version the gates were evaluated on (and against the policy they were read with): a concurrent
move makes the publish fail with :class:`~registry.errors.AliasMovedError`, nothing moved.
The move's alias history row and journal event carry the report and the actor; a refused
publish is journaled too (``alias.publish_refused``); a dry run writes nothing.

:func:`rollback` moves the alias back to the version it held before its last move, running
the ready, compatibility and serving gates only. :func:`render` turns a report into text, JSON,
JUnit XML or GitHub workflow commands (:func:`render_summary`: the step summary in Markdown).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from xml.etree import ElementTree

from sqlalchemy import select

from mergetools.errors import ConflictError, InvalidInputError, LoradexError, NotFoundError
from mergetools.serving import parse_serving
from registry.core import journal
from registry.errors import AliasMovedError, PermissionDeniedError, PublishRefusedError
from registry.inputs import check_alias, shown
from registry.metrics import Direction, better, directions_for
from registry.models import (
    AdapterVersion,
    Alias,
    AliasMove,
    BaseModel,
    utcnow,
)
from registry.policies import (
    Gates,
    NoRegress,
    Threshold,
    describe_error,
    gates_from_dict,
    is_protected,
    parse_gates,
    policy_of,
)
from registry.records import EvalRow, _jsonable
from registry.search import metric_passes

if TYPE_CHECKING:
    import datetime as dt

    from registry.service import Registry

logger = logging.getLogger(__name__)

FORMATS = ("text", "json", "junit", "github")
Kind = Literal["publish", "rollback"]
MAX_FINDINGS = 20
"""At most this many findings of a check are copied into a gate's values."""

# Called between the evaluation of the gates and the move (a module-level name looked up at call
# time, so that a test can make two publishes evaluate before either moves).
_before_move: Callable[[], None] | None = None


# ------------------------------------------------------------------------------ the report


@dataclass(frozen=True)
class GateResult:
    """One gate: what it checked, whether it passed, why, and the values it compared."""

    gate: str  # ready, compatibility, serving, require, no_regress
    name: str  # the gate's spec (accuracy>=0.82@squad), the profile, the base, the version
    source: str  # "always", "policy" or "request"
    passed: bool
    message: str
    values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "name": self.name,
            "source": self.source,
            "passed": self.passed,
            "message": self.message,
            "values": _jsonable(self.values),
        }


@dataclass(frozen=True)
class PublishReport:
    """The gates of one publish (or rollback) and what came of it."""

    kind: Kind
    name: str
    alias: str
    ref: str  # as asked
    version: int
    previous_version: int | None
    actor: str
    dry_run: bool
    gates: list[GateResult]
    policy: dict[str, list[str]] | None = None
    published: bool = False
    moved_at: dt.datetime | None = None

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    @property
    def target(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "alias": self.alias,
            "ref": self.ref,
            "version": self.version,
            "to_ref": self.target,
            "previous_version": self.previous_version,
            "from_ref": f"{self.name}@{self.previous_version}" if self.previous_version else None,
            "actor": self.actor,
            "dry_run": self.dry_run,
            "passed": self.passed,
            "published": self.published,
            "moved_at": _jsonable(self.moved_at),
            "policy": self.policy,
            "counts": {"gates": len(self.gates), "failed": len(self.failed)},
            "gates": [g.to_dict() for g in self.gates],
        }


def refused_error(report: PublishReport) -> PublishRefusedError:
    """The error a shell raises for a report whose gates did not all pass."""
    failed = report.failed
    names = ", ".join(f"{g.gate} {g.name}" for g in failed[:5]) + (
        " ..." if len(failed) > 5 else ""
    )
    what = "rollback" if report.kind == "rollback" else "publish"
    return PublishRefusedError(
        f"{what} of {report.target} to alias {report.name}@{report.alias} refused: "
        f"{len(failed)} of {len(report.gates)} gate(s) failed ({names}); the alias did not move",
        report=report.to_dict(),
    )


# ------------------------------------------------------------------------------ state read once


@dataclass(frozen=True)
class _State:
    name: str
    adapter_id: int
    alias: str
    version: int
    version_id: int
    status: str
    status_reason: str | None
    previous_version: int | None
    previous_id: int | None
    previous_status: str | None
    policy: dict[str, list[str]] | None
    protected: bool
    base_name: str | None
    base_of: str  # whose registered base it is, as the report words it
    base_signature: dict[str, Any] | None
    evals: list[EvalRow]
    previous_evals: list[EvalRow]
    directions: dict[str, Direction]


def _read_state(
    registry: Registry, *, ref: str | None, rollback_of: str | None, alias: str, request: Gates
) -> _State:
    with registry._read() as session:
        if rollback_of is not None:
            adapter = registry._adapter(session, rollback_of)
        else:
            assert ref is not None
            adapter, version = registry._resolve(session, ref, allow_deleted=True)
        current = session.scalars(
            select(Alias).where(Alias.adapter_id == adapter.id, Alias.name == alias)
        ).one_or_none()
        previous = session.get(AdapterVersion, current.version_id) if current is not None else None
        if rollback_of is not None:
            if previous is None:
                raise NotFoundError(
                    f"alias {adapter.name}@{shown(alias)} is unset: there is nothing to roll back",
                    fields={"adapter": adapter.name, "alias": alias},
                    hint="the alias's history shows where it pointed",
                    hint_action="alias_history",
                )
            last = session.scalars(
                select(AliasMove)
                .where(AliasMove.adapter_id == adapter.id, AliasMove.alias == alias)
                .order_by(AliasMove.id.desc())
                .limit(1)
            ).one_or_none()
            before_id = (
                last.from_version_id
                if last is not None and last.to_version_id == previous.id
                else None
            )
            if before_id is None:
                raise ConflictError(
                    f"alias {adapter.name}@{alias} held no version before it was set to "
                    f"{adapter.name}@{previous.version}: there is nothing to roll back to",
                    fields={"adapter": adapter.name, "alias": alias},
                    hint="the alias's history shows where it pointed",
                    hint_action="alias_history",
                )
            before = session.get(AdapterVersion, before_id)
            assert before is not None
            version = before
        policy_row = policy_of(session, adapter.id, alias)
        policy = dict(policy_row.gates) if policy_row is not None else None
        policy_gates = gates_from_dict(policy) if policy is not None else Gates()
        base_from_previous = previous is not None and previous.base_model_id is not None
        base_id = (
            previous.base_model_id
            if previous is not None and base_from_previous
            else version.base_model_id
        )
        base = session.get(BaseModel, base_id) if base_id is not None else None
        metrics = [g.metric for g in (*policy_gates.require, *request.require)] + [
            g.metric for g in (*policy_gates.no_regress, *request.no_regress)
        ]
        return _State(
            name=adapter.name,
            adapter_id=adapter.id,
            alias=alias,
            version=version.version,
            version_id=version.id,
            status=version.status,
            status_reason=version.status_reason,
            previous_version=previous.version if previous is not None else None,
            previous_id=previous.id if previous is not None else None,
            previous_status=previous.status if previous is not None else None,
            policy=policy,
            protected=is_protected(session, adapter.id, alias),
            base_name=base.name if base is not None else None,
            base_of=(
                f"the version the alias holds ({adapter.name}@{previous.version})"
                if base_from_previous and previous is not None
                else f"{adapter.name}@{version.version}"
            ),
            base_signature=dict(base.signature) if base is not None and base.signature else None,
            evals=registry._evals(session, version.id),
            previous_evals=registry._evals(session, previous.id) if previous is not None else [],
            directions=directions_for(session, metrics),
        )


# ------------------------------------------------------------------------------ the gates


def _scope(dataset: str | None, split: str | None) -> str:
    if dataset is None:
        return " (any dataset)"
    return f" on dataset {dataset!r}" + (f", split {split!r}" if split else "")


def _best(
    evals: Sequence[EvalRow],
    metric: str,
    dataset: str | None,
    split: str | None,
    direction: Direction,
) -> EvalRow | None:
    best: EvalRow | None = None
    for row in evals:
        if row.metric != metric or (dataset is not None and row.dataset != dataset):
            continue
        if split is not None and row.split != split:
            continue
        if best is None or better(direction, row.value, best.value):
            best = row
    return best


def _recorded(evals: Sequence[EvalRow], metric: str) -> str:
    """The scores a version has for ``metric`` (or, without any, the metrics it has)."""
    rows = [e for e in evals if e.metric == metric]
    if rows:
        places = sorted({f"{e.dataset or '-'}/{e.split or '-'}" for e in rows})
        return f"its {metric} scores are on (dataset/split) {', '.join(places[:10])}"
    metrics = sorted({e.metric for e in evals})
    return f"its recorded metrics: {', '.join(metrics[:10]) if metrics else 'none'}"


def _ready_gate(state: _State) -> GateResult:
    ref = f"{state.name}@{state.version}"
    passed = state.status == "ready"
    message = (
        f"{ref} is ready"
        if passed
        else f"{ref} is {state.status} ({state.status_reason or 'no reason given'}); only a ready version can be published"
    )
    return GateResult("ready", ref, "always", passed, message, {"status": state.status})


@dataclass(frozen=True)
class _Base:
    """What the compatibility and serving gates check against."""

    label: str | None
    base: str | None = None
    signature: Path | dict[str, Any] | None = None
    problem: str | None = None  # why there is no base to check against


def _base_for(
    state: _State, base: str | None, base_signature: Path | dict[str, Any] | None
) -> _Base:
    if base is not None:
        return _Base(label=base, base=base)
    if base_signature is not None:
        label = (
            f"signature {base_signature}"
            if isinstance(base_signature, Path)
            else "signature (given)"
        )
        return _Base(label=label, signature=base_signature)
    if state.base_name is not None:
        label = f"{state.base_name} (registered base of {state.base_of})"
        if state.base_signature is not None:
            return _Base(label=label, signature=state.base_signature)
        return _Base(label=label, base=state.base_name)
    return _Base(
        label=None,
        problem=(
            f"no base to check against: neither the version the alias holds nor "
            f"{state.name}@{state.version} records a registered base; name the base"
        ),
    )


def _run_check(registry: Registry, state: _State, target: _Base, serving: str | None) -> Any:
    from registry.checks import check

    return check(
        registry,
        [f"{state.name}@{state.version}"],
        base=target.base,
        base_signature=target.signature,
        serving=parse_serving(serving) if serving is not None else None,
    ).report


def _findings(
    report: Any, *, codes: Callable[[str], bool] = lambda c: True
) -> list[dict[str, Any]]:
    rows = [f for f in report.findings if codes(f.code) and f.severity in ("error", "warning")]
    rows.sort(key=lambda f: f.severity != "error")
    return [
        {"code": f.code, "severity": f.severity, "module": f.module, "message": f.message}
        for f in rows[:MAX_FINDINGS]
    ]


def _compatibility_gate(
    registry: Registry, state: _State, target: _Base, *, explicit: bool
) -> GateResult:
    if state.status == "deleted":
        return GateResult(
            "compatibility",
            target.label or "-",
            "always",
            False,
            f"not checked: {state.name}@{state.version} is deleted (its files are purged)",
        )
    if target.problem is not None:
        return GateResult("compatibility", "-", "always", False, target.problem)
    assert target.label is not None
    try:
        report = _run_check(registry, state, target, None)
    except LoradexError as exc:
        if explicit:
            raise  # the base the caller named is wrong: an error, not a gate
        return GateResult(
            "compatibility",
            target.label,
            "always",
            False,
            f"the base could not be checked against: {describe_error(exc)}",
        )
    errors, warnings = len(report.errors), len(report.warnings)
    notes = len(report.findings) - errors - warnings
    passed = errors == 0
    summary = f"{errors} error(s), {warnings} warning(s), {notes} note(s)"
    if not passed:
        first = report.errors[0]
        summary += f"; first: {first.code}: {first.message}"
    return GateResult(
        "compatibility",
        target.label,
        "always",
        passed,
        summary,
        {
            "base": target.label,
            "errors": errors,
            "warnings": warnings,
            "notes": notes,
            "findings": _findings(report),
        },
    )


def _is_serving_code(code: str) -> bool:
    return code.startswith(("vllm_", "lorax_"))


def _serving_gate(
    registry: Registry, state: _State, target: _Base, profile: str, source: str
) -> GateResult:
    if state.status == "deleted":
        return GateResult(
            "serving",
            profile,
            source,
            False,
            f"not checked: {state.name}@{state.version} is deleted (its files are purged)",
        )
    try:
        # vLLM's limits need no base; LoRAX compares architectures with the base when there is one.
        report = _run_check(
            registry, state, target if target.problem is None else _Base(None), profile
        )
    except LoradexError as exc:
        return GateResult("serving", profile, source, False, f"not checked: {describe_error(exc)}")
    found = [f for f in report.findings if _is_serving_code(f.code)]
    errors = [f for f in found if f.severity == "error"]
    passed = not errors
    message = (
        f"{profile} serves it" + (f" ({len(found)} note(s))" if found else "")
        if passed
        else f"{profile} refuses or mis-serves it: "
        + "; ".join(f"{f.code}: {f.message}" for f in errors[:3])
    )
    return GateResult(
        "serving",
        profile,
        source,
        passed,
        message,
        {
            "profile": profile,
            "errors": len(errors),
            "findings": _findings(report, codes=_is_serving_code),
        },
    )


def _require_gate(state: _State, threshold: Threshold, source: str) -> GateResult:
    direction = state.directions.get(threshold.metric, "higher")
    ref = f"{state.name}@{state.version}"
    values: dict[str, Any] = {
        "metric": threshold.metric,
        "op": threshold.op,
        "threshold": threshold.value,
        "dataset": threshold.dataset,
        "split": threshold.split,
        "direction": direction,
        "score": None,
    }
    best = _best(state.evals, threshold.metric, threshold.dataset, threshold.split, direction)
    if best is None:
        return GateResult(
            "require",
            threshold.spec,
            source,
            False,
            f"{ref} has no {threshold.metric} score{_scope(threshold.dataset, threshold.split)}; "
            f"{_recorded(state.evals, threshold.metric)}",
            values,
        )
    passed = metric_passes(threshold.filter, best.value)
    values.update(score=best.value, score_dataset=best.dataset, score_split=best.split)
    verdict = "meets" if passed else "does not meet"
    return GateResult(
        "require",
        threshold.spec,
        source,
        passed,
        f"{threshold.metric} = {best.value:g} {verdict} {threshold.op} {threshold.value:g}",
        values,
    )


def _no_regress_gate(state: _State, gate: NoRegress, source: str) -> GateResult:
    direction = state.directions.get(gate.metric, "higher")
    ref = f"{state.name}@{state.version}"
    values: dict[str, Any] = {
        "metric": gate.metric,
        "dataset": gate.dataset,
        "split": gate.split,
        "tolerance": gate.tolerance,
        "direction": direction,
        "score": None,
        "previous_version": state.previous_version,
        "previous_score": None,
    }
    current = _best(state.evals, gate.metric, gate.dataset, gate.split, direction)
    if current is None:
        return GateResult(
            "no_regress",
            gate.spec,
            source,
            False,
            f"{ref} has no {gate.metric} score{_scope(gate.dataset, gate.split)}; "
            f"{_recorded(state.evals, gate.metric)}",
            values,
        )
    values["score"] = current.value
    if state.previous_id is None:
        return GateResult(
            "no_regress",
            gate.spec,
            source,
            True,
            f"no previous version: alias {state.name}@{state.alias} is unset",
            values,
        )
    previous_ref = f"{state.name}@{state.previous_version}"
    old = _best(state.previous_evals, gate.metric, gate.dataset, gate.split, direction)
    if old is None:
        return GateResult(
            "no_regress",
            gate.spec,
            source,
            True,
            f"the previous version {previous_ref} has no {gate.metric} score"
            f"{_scope(gate.dataset, gate.split)}: nothing to regress from",
            values,
        )
    values["previous_score"] = old.value
    change = current.value - old.value
    worse_by = -change if direction == "higher" else change
    values["change"] = change if math.isfinite(change) else None
    passed = not worse_by > gate.tolerance
    verdict = "within" if passed else "beyond"
    message = (
        f"{gate.metric} {current.value:g} vs {old.value:g} on {previous_ref} ({direction} is better): "
        + (
            "no worse"
            if worse_by <= 0
            else f"worse by {worse_by:g}, {verdict} the tolerance {gate.tolerance:g}"
        )
    )
    return GateResult("no_regress", gate.spec, source, passed, message, values)


def _evaluate(
    registry: Registry,
    state: _State,
    *,
    kind: Kind,
    request: Gates,
    base: str | None,
    base_signature: Path | dict[str, Any] | None,
) -> list[GateResult]:
    policy = gates_from_dict(state.policy) if state.policy is not None else Gates()
    target = _base_for(state, base, base_signature)
    results = [
        _ready_gate(state),
        _compatibility_gate(
            registry, state, target, explicit=base is not None or base_signature is not None
        ),
    ]

    def sourced(policy_items: Sequence[Any], request_items: Sequence[Any]) -> list[tuple[Any, str]]:
        out = {item: "policy" for item in policy_items}
        for item in request_items:
            out.setdefault(item, "request")
        return list(out.items())

    for profile, source in sourced(policy.serving, request.serving):
        results.append(_serving_gate(registry, state, target, profile, source))
    if kind == "publish":
        for threshold, source in sourced(policy.require, request.require):
            results.append(_require_gate(state, threshold, source))
        for gate, source in sourced(policy.no_regress, request.no_regress):
            results.append(_no_regress_gate(state, gate, source))
    return results


# ------------------------------------------------------------------------------ use cases


def publish(
    registry: Registry,
    ref: str,
    *,
    alias: str,
    require: Sequence[str] = (),
    no_regress: Sequence[str] = (),
    serving: Sequence[str] = (),
    base: str | None = None,
    base_signature: Path | dict[str, Any] | None = None,
    dry_run: bool = False,
    actor: str | None = None,
) -> PublishReport:
    """Evaluate the gates of moving ``alias`` of ``ref``'s adapter to ``ref``; move it when
    they all pass (unless ``dry_run``). Returns the report whether or not they passed (a shell
    turns a failed one into :func:`refused_error`); raises for a bad call, a base that cannot be
    read, a protected alias without admin rights, or a concurrent move."""
    from registry.refs import is_path_argument

    if is_path_argument(ref):
        raise InvalidInputError(
            f"{shown(ref)} is a folder path; a publish moves an alias to a registered version "
            "(NAME@VERSION)",
            fields={"ref": ref},
            hint="register the folder, then publish the version it becomes",
        )
    request = _request(
        alias, base, base_signature, require=require, no_regress=no_regress, serving=serving
    )
    state = _read_state(registry, ref=ref, rollback_of=None, alias=alias, request=request)
    return _publish(
        registry,
        state,
        kind="publish",
        ref=ref,
        request=request,
        base=base,
        base_signature=base_signature,
        dry_run=dry_run,
        actor=actor,
    )


def rollback(
    registry: Registry,
    name: str,
    *,
    alias: str,
    serving: Sequence[str] = (),
    base: str | None = None,
    base_signature: Path | dict[str, Any] | None = None,
    dry_run: bool = False,
    actor: str | None = None,
) -> PublishReport:
    """Move ``alias`` of adapter ``name`` back to the version it held before its last move,
    when the ready, compatibility and serving gates pass; recorded as a rollback."""
    request = _request(alias, base, base_signature, serving=serving)
    state = _read_state(registry, ref=None, rollback_of=name, alias=alias, request=request)
    return _publish(
        registry,
        state,
        kind="rollback",
        ref=f"{state.name}@{state.alias}",
        request=request,
        base=base,
        base_signature=base_signature,
        dry_run=dry_run,
        actor=actor,
    )


def _request(
    alias: str,
    base: str | None,
    base_signature: Path | dict[str, Any] | None,
    *,
    require: Sequence[str] = (),
    no_regress: Sequence[str] = (),
    serving: Sequence[str] = (),
) -> Gates:
    check_alias(alias)
    if base is not None and base_signature is not None:
        raise InvalidInputError(
            "a publish checks against one base: give a base or a base signature, not both"
        )
    return parse_gates(require=require, no_regress=no_regress, serving=serving)


def _publish(
    registry: Registry,
    state: _State,
    *,
    kind: Kind,
    ref: str,
    request: Gates,
    base: str | None,
    base_signature: Path | dict[str, Any] | None,
    dry_run: bool,
    actor: str | None,
) -> PublishReport:
    who = registry._actor(actor)
    if state.protected and state.policy is None and not registry.admin:
        raise PermissionDeniedError(
            f"alias {state.name}@{state.alias} is protected and has no publish policy: only an "
            "admin moves it",
            needed="admin",
        )
    gates = _evaluate(
        registry, state, kind=kind, request=request, base=base, base_signature=base_signature
    )
    report = PublishReport(
        kind=kind,
        name=state.name,
        alias=state.alias,
        ref=ref,
        version=state.version,
        previous_version=state.previous_version,
        actor=who,
        dry_run=dry_run,
        gates=gates,
        policy=state.policy,
    )
    if dry_run:
        return report
    if not report.passed:
        with registry._write() as session:
            journal(
                session,
                actor=who,
                kind=f"alias.{kind}_refused",
                subject=f"{state.name}@{state.alias}",
                adapter_id=state.adapter_id,
                version_id=state.version_id,
                payload={
                    "alias": state.alias,
                    "from": state.previous_version,
                    "to": state.version,
                    "report": report.to_dict(),
                },
            )
        logger.info("%s of %s to %s@%s refused", kind, report.target, state.name, state.alias)
        return report
    hook = _before_move
    if hook is not None:
        hook()
    return _move(registry, state, report)


def _move(registry: Registry, state: _State, report: PublishReport) -> PublishReport:
    """Move the alias, if it still points where the gates saw it (compare-and-swap)."""
    from registry.db import is_sqlite

    now = utcnow()
    with registry._write() as session:
        adapter = registry._adapter(session, state.name, lock=True)
        stmt = select(Alias).where(Alias.adapter_id == adapter.id, Alias.name == state.alias)
        if not is_sqlite(registry.engine):
            stmt = stmt.with_for_update()
        current = session.scalars(stmt).one_or_none()
        current_id = current.version_id if current is not None else None
        if current_id != state.previous_id:
            number = (
                session.scalar(
                    select(AdapterVersion.version).where(AdapterVersion.id == current_id)
                )
                if current_id
                else None
            )
            expected = "unset" if state.previous_version is None else f"@{state.previous_version}"
            now_at = "is unset" if number is None else f"points at @{number}"
            raise AliasMovedError(
                f"alias {state.name}@{state.alias} {now_at}, not {expected} as when its gates were "
                "evaluated; it was moved meanwhile, nothing was published — publish again",
                adapter=state.name,
                alias=state.alias,
                expected_version=state.previous_version,
                current_version=number,
            )
        policy = policy_of(session, adapter.id, state.alias)
        if (dict(policy.gates) if policy is not None else None) != state.policy:
            raise ConflictError(
                f"the publish policy of alias {state.name}@{state.alias} changed while its gates "
                "were evaluated; nothing was published — publish again"
            )
        if policy is None and not registry.admin and is_protected(session, adapter.id, state.alias):
            raise PermissionDeniedError(
                f"alias {state.name}@{state.alias} was protected meanwhile: only an admin moves it",
                needed="admin",
            )
        version = session.get(AdapterVersion, state.version_id)
        if version is None or version.status != "ready":
            status = version.status if version is not None else "gone"
            raise ConflictError(
                f"{state.name}@{state.version} became {status} while its gates were evaluated; "
                "nothing was published"
            )
        final = replace(report, published=True, moved_at=now)
        stored = final.to_dict()
        if current is None:
            session.add(
                Alias(
                    adapter_id=adapter.id,
                    name=state.alias,
                    version_id=version.id,
                    updated_at=now,
                    updated_by=report.actor,
                )
            )
        else:
            current.version_id, current.updated_at, current.updated_by = (
                version.id,
                now,
                report.actor,
            )
        session.add(
            AliasMove(
                adapter_id=adapter.id,
                alias=state.alias,
                from_version_id=current_id,
                to_version_id=version.id,
                moved_at=now,
                moved_by=report.actor,
                kind=report.kind,
                report=stored,
            )
        )
        journal(
            session,
            actor=report.actor,
            kind="alias.published" if report.kind == "publish" else "alias.rolled_back",
            subject=f"{state.name}@{state.alias}",
            adapter_id=adapter.id,
            version_id=version.id,
            payload={
                "alias": state.alias,
                "from": state.previous_version,
                "to": state.version,
                "report": stored,
            },
        )
    logger.info("%s: %s@%s -> %s", report.kind, state.name, state.alias, report.target)
    return final


# ------------------------------------------------------------------------------ rendering


def render(report: PublishReport, fmt: str) -> str:
    """``report`` in one of :data:`FORMATS` (pure string functions: the CLI and API agree)."""
    if fmt == "text":
        return render_text(report)
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2) + "\n"
    if fmt == "junit":
        return render_junit(report)
    if fmt == "github":
        return render_github(report)
    raise InvalidInputError(f"report format {fmt!r} is not one of {', '.join(FORMATS)}")


def _headline(report: PublishReport) -> str:
    if report.previous_version == report.version:
        was = f" (already @{report.version})"
    else:
        was = f" (now @{report.previous_version})" if report.previous_version else " (unset now)"
    what = "rollback" if report.kind == "rollback" else "publish"
    return f"{what} {report.target} to alias {report.name}@{report.alias}{was}" + (
        " [dry run]" if report.dry_run else ""
    )


def _verdict(report: PublishReport) -> str:
    failed = len(report.failed)
    if not report.passed:
        return f"refused: {failed} of {len(report.gates)} gate(s) failed; the alias did not move"
    if report.published:
        return f"published: {report.name}@{report.alias} -> {report.target} (by {report.actor})"
    return f"would publish: all {len(report.gates)} gate(s) pass (dry run, nothing moved)"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_text(report: PublishReport) -> str:
    headers = ["GATE", "NAME", "SOURCE", "RESULT", "DETAIL"]
    rows = [
        [
            g.gate,
            _one_line(g.name, 60),
            g.source,
            "pass" if g.passed else "FAIL",
            _one_line(g.message),
        ]
        for g in report.gates
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        _headline(report),
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.append(_verdict(report))
    return "\n".join(lines) + "\n"


def render_junit(report: PublishReport) -> str:
    """One test case per gate; a failed gate is a failure with its message."""
    suite_name = f"loradex {report.kind} {report.target} -> {report.name}@{report.alias}"
    suites = ElementTree.Element("testsuites", name=f"loradex {report.kind}")
    suite = ElementTree.SubElement(suites, "testsuite", name=suite_name)
    for gate in report.gates:
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=f"loradex.{report.kind}.{gate.gate}",
            name=f"{gate.gate}: {gate.name}",
        )
        if gate.passed:
            out = ElementTree.SubElement(case, "system-out")
            out.text = gate.message
        else:
            failure = ElementTree.SubElement(
                case, "failure", message=_one_line(gate.message), type="gate_failed"
            )
            failure.text = json.dumps(_jsonable(gate.values), indent=2)
    failures = str(len(report.failed))
    for element in (suite, suites):
        element.set("tests", str(len(report.gates)))
        element.set("failures", failures)
        element.set("errors", "0")
    ElementTree.indent(suites)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        + ElementTree.tostring(suites, encoding="unicode")
        + "\n"
    )


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(report: PublishReport) -> str:
    """GitHub Actions workflow commands: ``::error title=...::`` per failed gate, a notice when
    every gate passes, then the verdict line."""
    lines = []
    for gate in report.failed:
        title = _escape_property(f"{report.name}@{report.alias}: {gate.gate} {gate.name}")
        lines.append(f"::error title={title}::{_escape_data(_one_line(gate.message, 2000))}")
    if report.passed:
        title = _escape_property(f"{report.name}@{report.alias}: gates pass")
        lines.append(f"::notice title={title}::{_escape_data(_verdict(report))}")
    lines.append(f"loradex {report.kind}: {_verdict(report)}")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


def render_summary(report: PublishReport) -> str:
    """The step summary (Markdown): the headline, a table of the gates, the verdict."""
    lines = [
        f"### {_md(_headline(report))}",
        "",
        "| gate | name | source | result | detail |",
        "|---|---|---|---|---|",
    ]
    for g in report.gates:
        lines.append(
            f"| {g.gate} | `{_md(g.name)}` | {g.source} | {'✅ pass' if g.passed else '❌ fail'} | {_md(g.message)} |"
        )
    lines += ["", f"**{_md(_verdict(report))}**", ""]
    return "\n".join(lines)


def report_from_dict(data: Mapping[str, Any]) -> PublishReport:
    """A report back from its :meth:`PublishReport.to_dict` (as stored in the alias history)."""
    import datetime as dt

    moved = data.get("moved_at")
    return PublishReport(
        kind=data["kind"],
        name=data["name"],
        alias=data["alias"],
        ref=data["ref"],
        version=data["version"],
        previous_version=data.get("previous_version"),
        actor=data["actor"],
        dry_run=bool(data.get("dry_run")),
        gates=[
            GateResult(
                g["gate"],
                g["name"],
                g["source"],
                g["passed"],
                g["message"],
                dict(g.get("values") or {}),
            )
            for g in data.get("gates", [])
        ],
        policy=data.get("policy"),
        published=bool(data.get("published")),
        moved_at=dt.datetime.fromisoformat(moved) if isinstance(moved, str) else None,
    )
