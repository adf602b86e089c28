"""Publish gates, policies, protection and rollback as use cases, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from mergetools.errors import ConflictError, InvalidInputError, NotFoundError
from registry import publish as pub
from registry.errors import AliasHasPolicyError, AliasMovedError, PermissionDeniedError
from registry.inputs import parse_eval_spec
from registry.policies import parse_no_regress, parse_threshold
from tests.conftest import write_tiny_adapter, write_tiny_base


def evals(*specs: str) -> list[Any]:
    return [parse_eval_spec(s) for s in specs]


@pytest.fixture
def world(registry: Any, tmp_path: Path) -> Any:
    """Base ``tiny``; support@1 (accuracy 0.85 on squad/validation, loss 0.30) and support@2
    (accuracy 0.80, loss 0.25), both registered on tiny."""
    registry.add_base(write_tiny_base(tmp_path / "base"), name="tiny")
    registry.register(
        write_tiny_adapter(tmp_path / "a1", seed=0),
        name="support",
        base="tiny",
        evals=evals(
            "accuracy=0.85,dataset=squad,split=validation",
            "loss=0.30,dataset=squad,split=validation",
        ),
    )
    registry.register(
        write_tiny_adapter(tmp_path / "a2", seed=1),
        name="support",
        base="tiny",
        evals=evals(
            "accuracy=0.80,dataset=squad,split=validation",
            "loss=0.25,dataset=squad,split=validation",
        ),
    )
    return registry


def gate(report: pub.PublishReport, kind: str, name: str | None = None) -> pub.GateResult:
    found = [g for g in report.gates if g.gate == kind and (name is None or g.name == name)]
    assert len(found) == 1, report.gates
    return found[0]


def alias_at(registry: Any, alias: str = "production") -> int | None:
    rows = [r for r in registry.list_aliases("support") if r.alias == alias]
    return rows[0].version if rows else None


# ------------------------------------------------------------------------------ grammar


def test_threshold_and_no_regress_grammar() -> None:
    t = parse_threshold("accuracy>=0.82@glue/sst2/validation")
    assert (t.metric, t.op, t.value, t.dataset, t.split) == (
        "accuracy",
        ">=",
        0.82,
        "glue/sst2",
        "validation",
    )
    assert parse_threshold("loss<0.3").dataset is None
    assert parse_threshold("f1==0.5@squad").split is None
    n = parse_no_regress("accuracy@squad/validation:0.005")
    assert (n.metric, n.dataset, n.split, n.tolerance) == ("accuracy", "squad", "validation", 0.005)
    assert parse_no_regress("loss").tolerance == 0.0
    for bad, message in [
        ("accuracy>=nan", "not a finite number"),
        ("accuracy>=inf", "not a finite number"),
        ("accuracy>=high", "not a number"),
        ("accuracy>>1", "not a number"),
        ("accuracy>=1e400", "not a finite number"),
        ("accuracy~0.8", "not understood"),
        ("accuracy>=0.8@", "nothing after '@'"),
        ("accuracy>=0.8@squad/", "DATASET/SPLIT"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            parse_threshold(bad)
    for bad, message in [
        ("accuracy:-1", "negative"),
        ("accuracy:1e400", "too large"),
        ("accuracy:nan", "not a number"),
        ("bad metric", "not valid"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            parse_no_regress(bad)


# ------------------------------------------------------------------------------ publish


def test_first_publish_passes_and_is_recorded(world: Any) -> None:
    report = pub.publish(
        world,
        "support@1",
        alias="production",
        require=["accuracy>=0.82@squad/validation"],
        no_regress=["accuracy@squad"],
        serving=["vllm:max_rank=64"],
    )
    assert report.passed and report.published
    assert [g.gate for g in report.gates] == [
        "ready",
        "compatibility",
        "serving",
        "require",
        "no_regress",
    ]
    assert (
        gate(report, "no_regress").message
        == "no previous version: alias support@production is unset"
    )
    assert gate(report, "require").values["score"] == 0.85
    assert gate(report, "compatibility").name == "tiny (registered base of support@1)"
    assert alias_at(world) == 1
    move = world.alias_history("support", "production")[-1]
    assert (move.kind, move.from_version, move.to_version, move.moved_by) == (
        "publish",
        None,
        1,
        "tester",
    )
    assert move.report is not None and move.report["passed"] and move.report["actor"] == "tester"
    event = world.events(name="support", limit=1)[0]
    assert event.kind == "alias.published" and event.actor == "tester"
    assert event.payload["report"]["gates"][3]["values"]["threshold"] == 0.82


def test_the_actor_a_publish_is_given_is_recorded(world: Any) -> None:
    world.set_alias_policy("support", "production", require=["accuracy>=0.5"], actor="platform")
    assert world.alias_policy("support", "production").updated_by == "platform"
    report = pub.publish(world, "support@1", alias="production", actor="ci-bot")
    assert report.passed and report.actor == "ci-bot"
    move = world.alias_history("support", "production")[-1]
    assert move.moved_by == "ci-bot" and move.report is not None and move.report["actor"] == "ci-bot"
    assert world.events(name="support", limit=1)[0].actor == "ci-bot"


def test_failed_gate_leaves_the_alias_and_is_journaled(world: Any) -> None:
    pub.publish(world, "support@1", alias="production")
    report = pub.publish(world, "support@2", alias="production", require=["accuracy>=0.82@squad"])
    assert not report.passed and not report.published
    failed = gate(report, "require")
    assert not failed.passed and failed.message == "accuracy = 0.8 does not meet >= 0.82"
    assert alias_at(world) == 1
    assert [m.to_version for m in world.alias_history("support", "production")] == [1]
    event = world.events(name="support", limit=1)[0]
    assert event.kind == "alias.publish_refused" and event.payload["report"]["passed"] is False
    error = pub.refused_error(report)
    assert error.code == "publish_refused" and "require accuracy>=0.82@squad" in str(error)


def test_missing_scores_fail_naming_what_is_missing(world: Any) -> None:
    report = pub.publish(
        world,
        "support@1",
        alias="production",
        require=["accuracy>=0.5@mmlu", "bleu>=1"],
        no_regress=["f1"],
    )
    assert not report.passed
    mmlu = gate(report, "require", "accuracy>=0.5@mmlu")
    assert "support@1 has no accuracy score on dataset 'mmlu'" in mmlu.message
    assert "squad/validation" in mmlu.message
    assert (
        "has no bleu score (any dataset); its recorded metrics: accuracy, loss"
        in gate(report, "require", "bleu>=1").message
    )
    assert not gate(
        report, "no_regress"
    ).passed  # a missing score on REF fails even with no previous version


def test_no_regress_follows_the_metric_direction_and_tolerance(world: Any) -> None:
    pub.publish(world, "support@1", alias="production")
    # loss is lower-is-better by the default rule: 0.25 after 0.30 is an improvement.
    report = pub.publish(
        world,
        "support@2",
        alias="production",
        no_regress=["loss@squad/validation", "accuracy"],
        dry_run=True,
    )
    assert (
        gate(report, "compatibility").name
        == "tiny (registered base of the version the alias holds (support@1))"
    )
    assert gate(report, "no_regress", "loss@squad/validation").passed
    acc = gate(report, "no_regress", "accuracy")
    assert not acc.passed and "worse by 0.05, beyond the tolerance 0" in acc.message
    assert acc.values["previous_score"] == 0.85 and acc.values["previous_version"] == 1
    assert gate(
        pub.publish(
            world, "support@2", alias="production", no_regress=["accuracy:0.06"], dry_run=True
        ),
        "no_regress",
    ).passed
    # Declared higher-is-better, loss 0.25 now regresses from 0.30.
    world.set_metric_direction("loss", "higher")
    assert not gate(
        pub.publish(world, "support@2", alias="production", no_regress=["loss"], dry_run=True),
        "no_regress",
    ).passed
    # A huge tolerance is what it says: anything passes (and is reported with its values).
    huge = gate(
        pub.publish(
            world, "support@2", alias="production", no_regress=["loss:1e308"], dry_run=True
        ),
        "no_regress",
    )
    assert huge.passed and huge.values["tolerance"] == 1e308


def test_dry_run_moves_and_journals_nothing(world: Any) -> None:
    before = world.events(limit=1)[0].id
    report = pub.publish(world, "support@1", alias="production", dry_run=True)
    assert report.passed and not report.published and report.dry_run
    assert alias_at(world) is None
    assert world.events(limit=1)[0].id == before


def test_yanked_and_deleted_refs_fail_the_ready_gate(world: Any) -> None:
    world.yank("support@2", reason="regressed")
    report = pub.publish(world, "support@2", alias="production")
    ready = gate(report, "ready")
    assert not ready.passed and "support@2 is yanked (regressed)" in ready.message
    world.delete("support@2", purge=True)
    deleted = pub.publish(world, "support@2", alias="production")
    assert not gate(deleted, "ready").passed
    assert "deleted" in gate(deleted, "compatibility").message
    assert alias_at(world) is None


def test_compatibility_and_serving_gates(registry: Any, tmp_path: Path) -> None:
    base = write_tiny_base(tmp_path / "base")
    registry.register(write_tiny_adapter(tmp_path / "wide", hidden=8), name="wide")
    no_base = pub.publish(registry, "wide@1", alias="production")
    compat = gate(no_base, "compatibility")
    assert not compat.passed and compat.message.startswith("no base to check against")
    report = pub.publish(registry, "wide@1", alias="production", base=str(base))
    compat = gate(report, "compatibility")
    assert not compat.passed and compat.values["errors"] >= 1
    assert any(f["code"] == "shape_mismatch" for f in compat.values["findings"])
    registry.register(write_tiny_adapter(tmp_path / "big", rank=32), name="big")
    big = pub.publish(
        registry, "big@1", alias="production", base=str(base), serving=["vllm", "vllm:max_rank=64"]
    )
    assert gate(big, "compatibility").passed
    assert not gate(big, "serving", "vllm:max_rank=16").passed
    assert "vllm_rank_too_large" in gate(big, "serving", "vllm:max_rank=16").message
    assert gate(big, "serving", "vllm:max_rank=64").passed
    with pytest.raises(NotFoundError):  # a base that the caller names wrong is an error, not a gate
        pub.publish(registry, "big@1", alias="production", base="nosuch")


# ------------------------------------------------------------------------------ policies, protection


def test_policy_gates_run_for_every_publish_and_block_plain_moves(world: Any) -> None:
    row = world.set_alias_policy(
        "support", "production", require=["accuracy>=0.82@squad"], serving=["vllm"]
    )
    assert row.gates == {
        "require": ["accuracy>=0.82@squad"],
        "no_regress": [],
        "serving": ["vllm:max_rank=16"],
    }
    with pytest.raises(AliasHasPolicyError) as raised:
        world.set_alias("support@1", "production")
    assert raised.value.code == "alias_has_policy"
    report = pub.publish(world, "support@2", alias="production", no_regress=["loss"])
    assert not report.passed and gate(report, "require").source == "policy"
    assert gate(report, "no_regress").source == "request"
    assert pub.publish(world, "support@1", alias="production").published
    with pytest.raises(AliasHasPolicyError):
        world.remove_alias("support", "production")
    assert [r.policy for r in world.list_aliases("support")] == [row.gates]
    world.remove_alias_policy("support", "production")
    with pytest.raises(NotFoundError, match="has no publish policy"):
        world.alias_policy("support", "production")
    assert world.set_alias("support@2", "production").to_version == 2


def test_policy_needs_a_gate_an_adapter_and_admin_rights(world: Any) -> None:
    with pytest.raises(InvalidInputError, match="at least one gate"):
        world.set_alias_policy("support", "production")
    with pytest.raises(NotFoundError):
        world.set_alias_policy("nosuch", "production", require=["accuracy>=0.5"])
    with pytest.raises(InvalidInputError, match="reserved"):
        world.set_alias_policy("support", "latest", require=["accuracy>=0.5"])
    with pytest.raises(PermissionDeniedError):
        world.with_rights(admin=False).set_alias_policy(
            "support", "production", require=["accuracy>=0.5"]
        )


def test_protected_alias_moves_only_for_admins(world: Any) -> None:
    assert world.protect_alias("support", "production").changed
    assert not world.protect_alias("support", "production").changed
    user = world.with_rights(admin=False)
    with pytest.raises(PermissionDeniedError, match="protected"):
        user.set_alias("support@1", "production")
    with pytest.raises(PermissionDeniedError, match="protected"):
        pub.publish(user, "support@1", alias="production")
    assert world.set_alias("support@1", "production").to_version == 1  # the admin
    # With a policy, a publish through it needs no admin.
    world.set_alias_policy("support", "production", no_regress=["loss"])
    assert pub.publish(user, "support@2", alias="production").published
    assert [(r.alias, r.protected, r.version) for r in world.list_aliases("support")] == [
        ("production", True, 2)
    ]
    world.protect_alias("support", "production", protect=False)


def test_policy_on_an_adapter_with_every_version_deleted(world: Any) -> None:
    world.set_alias_policy("support", "production", require=["accuracy>=0.5"])
    world.delete("support@1", purge=True)
    world.delete("support@2", purge=True)
    with pytest.raises(NotFoundError, match="no ready version"):
        pub.publish(world, "support", alias="production")
    report = pub.publish(world, "support@2", alias="production")
    assert not report.passed and not gate(report, "ready").passed
    assert [(r.alias, r.version) for r in world.list_aliases("support")] == [("production", None)]


# ------------------------------------------------------------------------------ rollback


def test_rollback_moves_back_and_runs_compatibility_and_serving_only(world: Any) -> None:
    with pytest.raises(NotFoundError, match="unset"):
        pub.rollback(world, "support", alias="production")
    pub.publish(world, "support@1", alias="production")
    with pytest.raises(ConflictError, match="nothing to roll back to"):
        pub.rollback(world, "support", alias="production")
    pub.publish(world, "support@2", alias="production")
    world.set_alias_policy("support", "production", require=["accuracy>=0.99"], serving=["vllm"])
    report = pub.rollback(world, "support", alias="production")
    assert report.published and report.kind == "rollback" and report.version == 1
    assert [g.gate for g in report.gates] == ["ready", "compatibility", "serving"]
    assert alias_at(world) == 1
    move = world.alias_history("support", "production")[-1]
    assert (move.kind, move.from_version, move.to_version) == ("rollback", 2, 1)
    assert world.events(name="support", limit=1)[0].kind == "alias.rolled_back"


def test_rollback_to_a_yanked_version_is_refused(world: Any) -> None:
    pub.publish(world, "support@1", alias="production")
    pub.publish(world, "support@2", alias="production")
    world.yank("support@1", reason="bad data")
    report = pub.rollback(world, "support", alias="production")
    assert not report.passed and alias_at(world) == 2


# ------------------------------------------------------------------------------ the race


def test_concurrent_publishes_move_the_alias_once(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two publishes evaluate their gates on the unset alias, then both try to move it: the
    compare-and-swap lets one through; the other fails and moves nothing."""
    barrier = threading.Barrier(2, timeout=30)
    monkeypatch.setattr(pub, "_before_move", barrier.wait)
    outcomes: dict[str, Any] = {}

    def run(ref: str) -> None:
        try:
            outcomes[ref] = pub.publish(world, ref, alias="production")
        except Exception as exc:  # noqa: BLE001 - the outcome is what is checked
            outcomes[ref] = exc

    threads = [threading.Thread(target=run, args=(ref,)) for ref in ("support@1", "support@2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    published = [r for r, o in outcomes.items() if isinstance(o, pub.PublishReport) and o.published]
    failed = [o for o in outcomes.values() if isinstance(o, AliasMovedError)]
    assert len(published) == 1 and len(failed) == 1, outcomes
    assert "it was moved meanwhile, nothing was published" in str(failed[0])
    history = world.alias_history("support", "production")
    assert [m.to_version for m in history] == [int(published[0].split("@")[1])]
    assert alias_at(world) == history[0].to_version


def test_policy_changed_between_evaluation_and_move_fails(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        pub,
        "_before_move",
        lambda: world.set_alias_policy("support", "production", require=["accuracy>=0.99"]),
    )
    with pytest.raises(ConflictError, match="policy of alias support@production changed"):
        pub.publish(world, "support@1", alias="production")
    assert alias_at(world) is None


def test_alias_list(world: Any) -> None:
    pub.publish(world, "support@1", alias="production")
    world.set_alias("support@2", "staging")
    world.protect_alias("support", "canary")
    rows = world.list_aliases()
    assert [(r.alias, r.version, r.protected) for r in rows] == [
        ("canary", None, True),
        ("production", 1, False),
        ("staging", 2, False),
    ]
    assert rows[1].last_move is not None and rows[1].last_move["kind"] == "publish"
    assert rows[2].last_move is not None and rows[2].last_move["kind"] == "set"
    world.remove_alias("support", "staging")
    assert [r.alias for r in world.list_aliases("support")] == ["canary", "production"]
    with pytest.raises(NotFoundError):
        world.list_aliases("nosuch")


def test_specs_round_trip_exactly_through_a_stored_policy(world: Any) -> None:
    """A policy stores each gate as its spec and parses it again: no digit may be lost."""
    row = world.set_alias_policy(
        "support",
        "production",
        require=["accuracy>=0.8234567891@squad", "loss<1e-7"],
        no_regress=["accuracy:0.00012345678"],
    )
    assert row.gates["require"] == ["accuracy>=0.8234567891@squad", "loss<1e-07"]
    assert row.gates["no_regress"] == ["accuracy:0.00012345678"]
    assert parse_threshold(row.gates["require"][0]).value == 0.8234567891
    assert parse_no_regress(row.gates["no_regress"][0]).tolerance == 0.00012345678
    report = pub.publish(world, "support@1", alias="production", dry_run=True)
    assert gate(report, "require", "accuracy>=0.8234567891@squad").passed


def test_longest_names_and_aliases_publish_and_journal(registry: Any, tmp_path: Path) -> None:
    """A 200-character adapter name with a 100-character alias: the journal subject (301
    characters) is cut to its column, and the moves go through on every backend."""
    name, alias = "a" * 200, "b" * 100
    registry.register(write_tiny_adapter(tmp_path / "a"), name=name)
    assert registry.set_alias(f"{name}@1", alias).to_version == 1
    report = pub.publish(
        registry, f"{name}@1", alias=alias, base=str(write_tiny_base(tmp_path / "base"))
    )
    assert report.published
    event = registry.events(limit=1)[0]
    assert (
        event.kind == "alias.published"
        and len(event.subject) == 300
        and event.subject.endswith("…")
    )
    assert event.payload["alias"] == alias


def test_base_falls_back_to_refs_own_when_the_alias_version_has_none(
    registry: Any, tmp_path: Path
) -> None:
    base = write_tiny_base(tmp_path / "base")
    registry.add_base(base, name="tiny")
    registry.register(
        write_tiny_adapter(tmp_path / "a1", seed=0), name="support"
    )  # no base recorded
    assert pub.publish(registry, "support@1", alias="production", base="tiny").published
    registry.register(write_tiny_adapter(tmp_path / "a2", seed=1), name="support", base="tiny")
    report = pub.publish(registry, "support@2", alias="production")
    assert gate(report, "compatibility").name == "tiny (registered base of support@2)"
    assert report.published
