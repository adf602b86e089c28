"""adapter_config.json fields are checked against what PEFT's LoraConfig accepts: ``check`` reports
each bad field as ``invalid_config_field``; register, merge and inspect refuse with one line. Base
config.json fields loradex uses are checked too."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from mergetools.config_check import base_config_problems, config_problems

MakeAdapter = Callable[..., Path]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def set_raw(config: Path, key: str, raw: str) -> None:
    """Set ``key`` to the literal JSON text ``raw`` (e.g. 400 digits, which json.dumps can't write from a float)."""
    data = json.loads(config.read_text())
    data[key] = "@@RAW@@"
    config.write_text(json.dumps(data).replace('"@@RAW@@"', raw))


BAD_FIELDS = [
    ("r", 0),
    ("r", -4),
    ("r", 4.0),
    ("r", True),
    ("r", "4"),
    ("lora_alpha", "eight"),
    ("target_modules", 5),
    ("target_modules", ["q_proj", 3]),
    ("rank_pattern", {"q_proj": "8"}),
    ("rank_pattern", {"q_proj": 0}),
    ("rank_pattern", ["q_proj"]),
    ("alpha_pattern", {"q_proj": None}),
    ("layers_to_transform", [0, "1"]),
    ("layers_to_transform", -1),
    ("use_rslora", "yes"),
    ("use_dora", 1),
    ("fan_in_fan_out", "false"),
    ("bias", "some"),
    ("modules_to_save", "lm_head"),
    ("trainable_token_indices", [1, -2]),
    ("base_model_name_or_path", 7),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_each_bad_field_is_a_problem(field: str, value: object) -> None:
    problems = config_problems({"peft_type": "LORA", "r": 4, field: value})
    assert len(problems) == 1, problems
    assert problems[0].field.split("[")[0] == field


def test_peft_defaults_and_nulls_are_accepted() -> None:
    config = {
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 16.5,
        "target_modules": "q_proj|v_proj",
        "rank_pattern": {"q_proj": 4},
        "alpha_pattern": {"q_proj": 2.5},
        "layers_to_transform": 1,
        "modules_to_save": None,
        "bias": "lora_only",
        "use_rslora": False,
        "trainable_token_indices": {"embed_tokens": [1, 2]},
        "init_lora_weights": "gaussian",
        "layers_pattern": None,
    }
    assert config_problems(config) == []


def test_explicit_null_scale_fields_and_broken_regexes_are_problems() -> None:
    """PEFT keeps an explicit null (``lora_alpha / r`` then fails at load) and compiles a string
    ``target_modules`` as a regex; a missing field takes PEFT's default and is fine."""
    problems = config_problems({"r": None, "lora_alpha": None, "target_modules": "(("})
    assert [p.field for p in problems] == ["r", "lora_alpha", "target_modules"]
    assert problems[1].message == "lora_alpha must be a finite number, got null"
    assert problems[2].message.startswith("target_modules must be a list of module names or a valid regex, got '((' (")
    assert config_problems({"peft_type": "LORA"}) == []
    assert config_problems({"exclude_modules": "[a-"})[0].field == "exclude_modules"


def test_numbers_too_large_for_a_float_are_problems_not_crashes() -> None:
    config = json.loads(
        '{"r": 1' + "0" * 400 + ', "lora_alpha": 1e999, "alpha_pattern": {"q": NaN}}'
    )
    fields = {p.field: p for p in config_problems(config)}
    assert set(fields) == {"r", "lora_alpha", "alpha_pattern['q']"}
    assert "401 digits" in fields["r"].actual


def test_base_config_fields() -> None:
    assert base_config_problems({"vocab_size": 32, "tie_word_embeddings": True}) == []
    problems = base_config_problems(
        {
            "vocab_size": "32",
            "hidden_size": 10**400,
            "tie_word_embeddings": "no",
            "text_config": {"vocab_size": 0},
        }
    )
    assert [p.field for p in problems] == [
        "vocab_size",
        "hidden_size",
        "tie_word_embeddings",
        "text_config.vocab_size",
    ]


# --- the commands -------------------------------------------------------------------------------


def test_check_reports_target_modules_peft_cannot_load(
    cli_env: dict[str, str], make_adapter: MakeAdapter, tiny_base: Path
) -> None:
    adapter = make_adapter()
    set_raw(adapter / "adapter_config.json", "target_modules", "5")
    result = run("check", "--adapter", adapter, "--base", tiny_base, "--format", "json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    codes = [f["code"] for f in report["findings"]]
    assert codes == ["invalid_config_field"], report["findings"]
    assert (
        "target_modules must be a list of module names or a regex string, got 5"
        in report["findings"][0]["message"]
    )


@pytest.mark.parametrize(
    ("key", "raw", "needle"),
    [
        ("r", "1" + "0" * 400, "r must be a positive integer, got an integer of 401 digits"),
        ("lora_alpha", "1e999", "lora_alpha must be a finite number, got inf"),
        ("lora_alpha", "NaN", "lora_alpha must be a finite number, got nan"),
        (
            "rank_pattern",
            '{"q_proj": 1' + "0" * 400 + "}",
            "rank_pattern['q_proj'] must be a positive integer",
        ),
    ],
)
def test_huge_numbers_are_findings_and_one_line_errors(
    cli_env: dict[str, str],
    make_adapter: MakeAdapter,
    tiny_base: Path,
    tmp_path: Path,
    key: str,
    raw: str,
    needle: str,
) -> None:
    adapter = make_adapter()
    set_raw(adapter / "adapter_config.json", key, raw)
    check = run("check", "--adapter", adapter, "--base", tiny_base, "--format", "json")
    assert check.exit_code == 1 and "Traceback" not in check.output
    findings = json.loads(check.stdout)["findings"]
    assert [f["code"] for f in findings] == ["invalid_config_field"] and needle in findings[0][
        "message"
    ]
    for args in (
        ("register", adapter, "--name", "huge"),
        ("merge", "--base", tiny_base, "--adapter", adapter, "--out", tmp_path / "merged"),
        ("inspect", adapter),
    ):
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and needle in errors[0], result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "merged").exists()


def test_base_config_with_a_bad_vocab_size_is_refused(
    cli_env: dict[str, str], make_adapter: MakeAdapter, tiny_base: Path, tmp_path: Path
) -> None:
    set_raw(tiny_base / "config.json", "vocab_size", "1" + "0" * 400)
    set_raw(tiny_base / "config.json", "tie_word_embeddings", '"yes"')
    result = run("merge", "--base", tiny_base, "--adapter", make_adapter(), "--out", tmp_path / "m")
    assert result.exit_code == 1
    assert (
        result.stderr.startswith("error: ")
        and "vocab_size must be a positive integer" in result.stderr
    )
    check = run("check", "--adapter", make_adapter(), "--base", tiny_base, "--format", "json")
    assert check.exit_code == 1
    assert [f["code"] for f in json.loads(check.stdout)["findings"]] == ["invalid_checkpoint"]
