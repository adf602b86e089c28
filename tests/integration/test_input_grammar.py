"""One input grammar: names unique regardless of case, finite eval values, filters that name
nothing are errors (a valid query that matches nothing is an empty page)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from cli.main import cli
from mergetools.errors import ConflictError, InvalidInputError, NotFoundError
from mergetools.labels import relabel_text, shorten
from registry.db import create_registry_engine
from registry.inputs import EvalInput, parse_eval_spec, parse_tag_spec
from registry.schema import upgrade
from registry.search import SearchQuery, parse_metric_filter
from registry.service import Registry

MakeAdapter = Callable[..., Path]


# ------------------------------------------------------------------ names regardless of case


def test_register_refuses_a_name_that_differs_only_in_case(
    registry: Registry, make_adapter: MakeAdapter
) -> None:
    registry.register(make_adapter(seed=1), name="support")
    with pytest.raises(ConflictError) as caught:
        registry.register(make_adapter(seed=2), name="Support")
    assert str(caught.value) == (
        "adapter name 'Support' differs only in case from the registered 'support'; names are "
        "unique regardless of case — register it as 'support' or pick another name"
    )
    assert registry.register(make_adapter(seed=2), name="support").version == 2
    assert [a.name for a in registry.list_adapters().items] == ["support"]


def test_the_database_enforces_case_insensitive_names(registry: Registry) -> None:
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    insert = text(
        "INSERT INTO adapters (name, description, last_version, created_at, created_by) "
        "VALUES (:name, '', 0, :now, 'x')"
    )
    with registry.engine.begin() as conn:
        conn.execute(insert, {"name": "billing", "now": now})
    with pytest.raises(IntegrityError), registry.engine.begin() as conn:
        conn.execute(insert, {"name": "BILLING", "now": now})


def test_migration_lists_names_that_already_collide(empty_db_url: str) -> None:
    engine = create_registry_engine(empty_db_url)
    try:
        upgrade(engine, "0002")
        now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
        with engine.begin() as conn:
            for name in ("support", "Support", "SUPPORT", "billing", "Billing", "other"):
                conn.execute(
                    text(
                        "INSERT INTO adapters (name, description, last_version, created_at, "
                        "created_by) VALUES (:name, '', 0, :now, 'x')"
                    ),
                    {"name": name, "now": now},
                )
        with pytest.raises(ConflictError) as caught:
            upgrade(engine)
        message = str(caught.value)
        assert "'Billing' and 'billing'; 'SUPPORT' and 'Support' and 'support' differ only in case" in message
        assert "UPDATE adapters SET name" in message and "other" not in message
        with engine.begin() as conn:
            conn.execute(text("UPDATE adapters SET name = 'support-2' WHERE name = 'Support'"))
            conn.execute(text("UPDATE adapters SET name = 'support-3' WHERE name = 'SUPPORT'"))
            conn.execute(text("UPDATE adapters SET name = 'billing-2' WHERE name = 'Billing'"))
        upgrade(engine)
    finally:
        engine.dispose()


# ------------------------------------------------------------------ eval specs and tag keys


def test_eval_values_are_finite_decimals() -> None:
    assert parse_eval_spec("loss=1e-3").value == 0.001
    assert parse_eval_spec("delta=-2.5E+2,dataset=a").value == -250.0
    assert parse_eval_spec("delta=0e-400").value == 0.0  # a written zero is a zero
    assert parse_eval_spec("tiny=5e-324").value > 0
    for raw, reason in (
        ("nan", "is not a number"),
        ("inf", "is not a number"),
        ("-Infinity", "is not a number"),
        ("0x10", "is not a number"),
        ("1_000", "is not a number"),
        ("1e400", "too large"),
        ("1e-400", "too small for a number: it would be stored as 0"),
        (" 1", "is not a number"),
    ):
        with pytest.raises(InvalidInputError, match=reason):
            parse_eval_spec(f"accuracy={raw}")


def test_eval_spec_keys_once_and_metric_names_without_spaces() -> None:
    with pytest.raises(InvalidInputError, match="dataset is given twice \\('a' and 'b'\\)"):
        parse_eval_spec("accuracy=0.9,dataset=a,dataset=b")
    with pytest.raises(InvalidInputError, match="eval metric name 'exact match' is not valid"):
        parse_eval_spec("exact match=0.9")
    with pytest.raises(InvalidInputError, match="tag key 'my team' is not valid"):
        parse_tag_spec("my team=search")
    assert parse_eval_spec("exact_match/em-1.v2=0.5").metric == "exact_match/em-1.v2"
    assert parse_tag_spec("owner.team=search") == ("owner.team", "search")


def test_long_inputs_are_cut_in_messages() -> None:
    assert shorten("abc") == "'abc'"
    cut = shorten("x" * 2000)
    assert cut == repr("x" * 80) + "… (2000 characters)"
    with pytest.raises(InvalidInputError) as caught:
        parse_eval_spec("a" * 2000)
    assert len(str(caught.value)) < 300


def test_relabel_text_names_the_reference() -> None:
    labels = {"/h/cache/versions/ab": "sts@production -> sts@3"}
    assert relabel_text("adapter /h/cache/versions/ab module 'q'", labels) == (
        "adapter 'sts@production -> sts@3' module 'q'"
    )
    assert relabel_text("'/h/cache/versions/ab': bad", labels) == "'sts@production -> sts@3': bad"
    assert relabel_text("/h/cache/versions/ab/adapter_config.json: bad", labels) == (
        "adapter_config.json of 'sts@production -> sts@3': bad"
    )
    assert relabel_text("/h/cache/versions/abc is another", labels) == "/h/cache/versions/abc is another"


# ------------------------------------------------------------------ filters that name nothing


def _seed(registry: Registry, make_adapter: MakeAdapter, tiny_base: Path) -> str:
    registry.add_base(tiny_base, name="tiny")
    registry.register(
        make_adapter(seed=1),
        name="support",
        base="tiny",
        evals=[EvalInput("accuracy", 0.8, dataset="mmlu")],
        tags={"team": "search"},
    )
    fingerprint = registry.get_base("tiny").fingerprint
    assert fingerprint is not None
    return fingerprint


def test_search_filters_that_name_nothing_raise(
    registry: Registry, make_adapter: MakeAdapter, tiny_base: Path
) -> None:
    fingerprint = _seed(registry, make_adapter, tiny_base)

    def refs(**kwargs: object) -> list[str]:
        return [v.ref for v in registry.search(SearchQuery(**kwargs)).items]  # type: ignore[arg-type]

    cases: list[tuple[dict[str, object], str]] = [
        ({"base": "nosuch"}, "base 'nosuch' is not a registered base model name"),
        ({"base": "sha256:" + "0" * 12}, "no base model or version has a fingerprint starting"),
        ({"sort": "nosuchmetric"}, "metric 'nosuchmetric': no version has an eval score for it; recorded metrics: accuracy"),
        ({"sort": "+nosuchmetric"}, "metric 'nosuchmetric'"),
        ({"metrics": (parse_metric_filter("f1>=0.5"),)}, "metric 'f1'"),
        ({"sort": "accuracy", "dataset": "nosuch"}, "dataset 'nosuch': no eval score was measured"),
        ({"dataset": "nosuch"}, "dataset 'nosuch': no eval score was measured"),
        ({"split": "nosuch"}, "split 'nosuch': no eval score was measured"),
        ({"sort": "accuracy", "split": "nosuch"}, "split 'nosuch'"),
        ({"target_module": "nosuch"}, "target module 'nosuch': no version targets"),
        ({"tags": {"nosuch": "x"}}, "tag key 'nosuch': no version has a tag with that key"),
    ]
    for kwargs, message in cases:
        with pytest.raises(NotFoundError) as caught:
            refs(**kwargs)
        assert message in str(caught.value), (kwargs, str(caught.value))

    # Valid queries that match nothing are empty pages, not errors.
    assert refs(name="nomatch-*") == []
    assert refs(tags={"team": "other"}) == []
    assert refs(metrics=(parse_metric_filter("accuracy>=0.9"),)) == []
    # A base named by its name, full fingerprint or a sha256: prefix of it.
    for base in ("tiny", fingerprint, "sha256:" + fingerprint[:12]):
        assert refs(base=base) == ["support@1"], base


def test_cli_search_filter_naming_nothing_exits_1(
    cli_env: dict[str, str], make_adapter: MakeAdapter
) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["register", str(make_adapter(seed=1)), "--name", "a"]).exit_code == 0
    for args in (["--base", "nosuch"], ["--sort", "nosuchmetric"], ["--module", "nosuch"],
                 ["--tag", "nosuch=1"], ["--base", "sha256:" + "f" * 12], ["--base", "b" * 2000]):
        result = runner.invoke(cli, ["search", *args])
        assert result.exit_code == 1, (args, result.output)
        first, *rest = result.stderr.splitlines()
        assert first.startswith("error: ") and all(line.startswith("hint: ") for line in rest)
        assert len(rest) <= 1 and len(first) < 300, result.stderr
    empty = runner.invoke(cli, ["search", "--name", "nomatch*"])
    assert empty.exit_code == 0 and empty.stderr == ""


def test_free_text_is_plain_and_bounded(registry: Registry, make_adapter: MakeAdapter) -> None:
    """Tag values, datasets, reasons and sources are one line of plain text; a description may
    span lines; terminal escapes and bells are refused everywhere; each has a length limit."""
    from registry.inputs import DESCRIPTION_MAX, REASON_MAX

    adapter = make_adapter()
    with pytest.raises(InvalidInputError, match="contains a control character \\(U\\+001B\\)"):
        registry.register(adapter, name="esc", description="ok\x1b[2Jcleared")
    with pytest.raises(InvalidInputError, match="source .* contains a line break"):
        registry.register(adapter, name="esc", source="a\nb")
    with pytest.raises(InvalidInputError, match="is 10001 characters long; the limit is 10000"):
        registry.register(adapter, name="esc", description="x" * (DESCRIPTION_MAX + 1))
    key = registry.register(adapter, name="esc", description="line one\nline two")
    assert registry.show(key.ref).description == "line one\nline two"
    with pytest.raises(InvalidInputError, match="tag 'k' value .* contains a line break"):
        registry.set_tags(key.ref, set_tags={"k": "line1\nline2"})
    with pytest.raises(InvalidInputError, match="contains a control character \\(U\\+0007\\)"):
        parse_eval_spec("accuracy=0.9,dataset=bell\a")
    with pytest.raises(InvalidInputError, match="yank reason .* characters long"):
        registry.yank(key.ref, reason="r" * (REASON_MAX + 1))
    with pytest.raises(InvalidInputError, match="yank reason .* contains a line break"):
        registry.yank(key.ref, reason="bad\nreason")
    assert registry.show(key.ref).status == "ready"


def test_a_name_pattern_that_can_match_nothing_is_one_line(
    cli_env: dict[str, str], make_adapter: MakeAdapter
) -> None:
    """A pasted-junk glob longer than any name is refused in one line (SQLite would refuse to
    evaluate it, "LIKE or GLOB pattern too complex"); runs of stars are one star."""
    runner = CliRunner()
    assert runner.invoke(cli, ["register", str(make_adapter(seed=1)), "--name", "a"]).exit_code == 0
    huge = "*a" * 30000
    for args in (["list", huge], ["search", "--name", huge]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, (args[0], result.output)
        first, *rest = result.stderr.splitlines()
        assert first.startswith("error: name pattern '*a*a") and "can match no adapter name" in first
        assert len(first) < 300 and all(line.startswith("hint: ") for line in rest)
    stars = runner.invoke(cli, ["list", "*" * 10000 + "a"])
    assert stars.exit_code == 0 and "a " in stars.stdout


@pytest.mark.parametrize("text", ["support\n", "support\r\n", "a\nb"])
def test_a_name_with_a_line_break_is_refused_everywhere(text: str) -> None:
    from registry.inputs import ALIAS_RE, KEY_RE, NAME_RE, check_name

    assert not NAME_RE.match(text) and not KEY_RE.match(text) and not ALIAS_RE.match(text)
    with pytest.raises(InvalidInputError):
        check_name(text)
