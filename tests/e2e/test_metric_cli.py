"""CLI: re-register reports what it attached; `loradex metric`; direction in search/show/eval list."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result

from cli.main import cli

MakeAdapter = Callable[..., Path]


def run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, (args, result.output, result.stderr)
    return result


def test_reregister_says_what_it_attached(cli_env: dict[str, str], make_adapter: MakeAdapter) -> None:
    run("register", str(make_adapter(seed=1)), "--name", "x", "--eval", "accuracy=0.8")
    again = run(
        "register", str(make_adapter(seed=1)), "--name", "x",
        "--eval", "accuracy=0.8", "--eval", "loss=0.3", "--eval", "f1=0.5,dataset=d", "--tag", "team=cx",
    )  # fmt: skip
    assert again.stdout == "x@1\n"
    assert again.stderr == "note: identical content is already registered as x@1; attached 2 eval(s), 1 tag(s)\n"
    retry = run("register", str(make_adapter(seed=1)), "--name", "x", "--eval", "loss=0.3", "--json")
    data = json.loads(retry.stdout)
    assert (data["created"], data["attached_evals"], data["attached_tags"]) == (False, [], {})
    described = json.loads(
        run("register", str(make_adapter(seed=1)), "--name", "x", "--description", "d", "--json").stdout
    )
    assert described["attached_description"] == "d"
    nothing = run("register", str(make_adapter(seed=1)), "--name", "x", "--tag", "team=cx")
    assert "identical content is already registered as x@1; nothing new to attach" in nothing.stderr
    evals = json.loads(run("eval", "list", "x@1", "--json").stdout)
    assert sorted(e["metric"] for e in evals) == ["accuracy", "f1", "loss"]

    added = run("eval", "add", "x@1", "loss=0.3", "loss=0.2")
    assert added.stdout == "loss = 0.2\n"
    assert "1 eval(s) were already recorded for x@1; not recorded again" in added.stderr


def test_metric_set_list_and_search_follow_the_direction(
    cli_env: dict[str, str], make_adapter: MakeAdapter
) -> None:
    run("register", str(make_adapter(seed=2)), "--name", "good", "--eval", "loss=0.5", "--eval", "loss=0.1")
    run("register", str(make_adapter(seed=3)), "--name", "bad", "--eval", "loss=0.9", "--eval", "tps=50")
    found = json.loads(run("search", "loss<=0.2", "--json").stdout)
    assert [v["ref"] for v in found["items"]] == ["good@1"]
    text = run("search", "--sort", "loss").stdout.splitlines()
    assert [line.split()[0] for line in text[1:]] == ["good@1", "bad@1"]

    listed = json.loads(run("metric", "list", "--json").stdout)
    assert [(m["metric"], m["direction"], m["declared"]) for m in listed] == [
        ("loss", "lower", False),
        ("tps", "higher", False),
    ]
    assert run("metric", "set", "tps", "--lower-is-better").stdout == "tps: lower is better\n"
    table = run("metric", "list").stdout.splitlines()
    assert table[0].split() == ["METRIC", "BETTER", "SOURCE", "DECLARED", "BY"]
    assert table[1].split()[:3] == ["loss", "lower", "default"]
    assert table[2].split()[:3] == ["tps", "lower", "declared"]
    assert json.loads(run("metric", "set", "tps", "--higher-is-better", "--json").stdout)["direction"] == "higher"

    shown = run("show", "good@1").stdout
    assert "loss = 0.1  [lower is better, best]" in shown and "loss = 0.5  [lower is better]" in shown
    table = run("eval", "list", "good@1").stdout.splitlines()
    assert table[0].split()[:4] == ["METRIC", "VALUE", "BETTER", "BEST"]
    rows = [line.split() for line in table[1:]]
    assert [(r[0], r[1], r[2], "*" in r) for r in rows] == [
        ("loss", "0.5", "lower", False),
        ("loss", "0.1", "lower", True),
    ]


def test_metric_set_mistakes(cli_env: dict[str, str]) -> None:
    usage = run("metric", "set", "loss", code=2)
    assert "give --lower-is-better or --higher-is-better" in usage.stderr
    bad = run("metric", "set", "", "--lower-is-better", code=1)
    assert bad.stderr.startswith("error: metric name '' is not valid; expected a letter or '_'")
    spaced = run("metric", "set", "bad metric", "--lower-is-better", code=1)
    assert spaced.stderr.startswith("error: metric name 'bad metric' is not valid")
