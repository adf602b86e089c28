"""``loradex check`` and ``loradex inspect`` end to end: exit codes, formats, no torch import."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.factories import edit_json, save_adapter, save_checkpoint, tiny_llama

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    base = save_checkpoint(tiny_llama(), root / "base", layout="sharded", dtype="bfloat16")
    wide = save_checkpoint(tiny_llama(intermediate_size=96), root / "wide")
    good = save_adapter(tiny_llama(), root / "good", target_modules=["q_proj", "v_proj"], r=4)
    mlp = save_adapter(
        tiny_llama(), root / "mlp", target_modules=["down_proj"], r=32, lora_alpha=64
    )
    warn = Path(shutil.copytree(good, root / "warn"))
    edit_json(warn / "adapter_config.json", alpha_pattern={"nothing": 2})
    return {"base": base, "wide": wide, "good": good, "mlp": mlp, "warn": warn, "root": root}


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_exit_codes(setup: dict[str, Path]) -> None:
    assert run("check", "--adapter", setup["good"], "--base", setup["base"])[0] == 0
    code, out, _ = run("check", "--adapter", setup["mlp"], "--base", setup["wide"])
    assert code == 1 and "shape_mismatch" in out and "INCOMPATIBLE" in out
    assert run("check", "--adapter", setup["warn"], "--base", setup["base"])[0] == 0
    assert run("check", "--adapter", setup["warn"], "--base", setup["base"], "--strict")[0] == 1
    assert run("check", "--adapter", setup["root"] / "absent", "--base", setup["base"])[0] == 1
    # Called wrong: 2.
    assert run("check", "--adapter", setup["good"])[0] == 2
    assert (
        run("check", "--adapter", setup["good"], "--base", setup["base"], "--base-signature", "x")[
            0
        ]
        == 2
    )
    code, _, err = run(
        "check", "--adapter", setup["good"], "--base", setup["base"], "--serving", "vllm:max_rank=7"
    )
    assert code == 2 and "max_lora_rank" in err
    assert run("check", "--base", setup["base"])[0] == 2
    assert (
        run("check", "--adapter", setup["good"], "--base", setup["base"], "--format", "xml")[0] == 2
    )


def test_serving_flag(setup: dict[str, Path]) -> None:
    code, out, _ = run(
        "check", "--adapter", setup["mlp"], "--base", setup["base"], "--serving", "vllm"
    )
    assert code == 1 and "vllm_rank_too_large" in out
    assert (
        run(
            "check",
            "--adapter",
            setup["mlp"],
            "--base",
            setup["base"],
            "--serving",
            "vllm:max_rank=32",
        )[0]
        == 0
    )


def test_json_format(setup: dict[str, Path]) -> None:
    code, out, _ = run(
        "check", "--adapter", setup["mlp"], "--base", setup["wide"], "--format", "json"
    )
    data = json.loads(out)
    assert code == 1 and data["ok"] is False and data["passed"] is False
    finding = data["findings"][0]
    assert set(finding) == {
        "code",
        "severity",
        "adapter",
        "module",
        "message",
        "expected",
        "actual",
    }
    assert finding["code"] == "shape_mismatch" and finding["expected"] == [32, 96]


def test_junit_format_is_valid_xml(setup: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "report.xml"
    code, out, err = run(
        "check",
        "--adapter",
        setup["good"],
        "--adapter",
        setup["mlp"],
        "--base",
        setup["wide"],
        "--format",
        "junit",
        "--output",
        report,
    )
    assert code == 1 and out == "" and "INCOMPATIBLE" in err
    tree = ElementTree.parse(report)
    suite = tree.getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases[str(setup["mlp"])].find("failure") is not None
    assert cases[str(setup["good"])].find("failure") is None
    assert "shape_mismatch" in cases[str(setup["mlp"])].find("failure").get("message")  # type: ignore[union-attr]
    code, out, _ = run(
        "check", "--adapter", setup["good"], "--base", setup["base"], "--format", "junit"
    )
    assert (
        code == 0
        and ElementTree.fromstring(out.split("\n", 1)[1]).find("testsuite").get("failures") == "0"
    )  # type: ignore[union-attr]


def test_github_annotations(setup: dict[str, Path]) -> None:
    code, out, _ = run(
        "check",
        "--adapter",
        setup["mlp"],
        "--adapter",
        setup["warn"],
        "--base",
        setup["wide"],
        "--format",
        "github",
    )
    lines = out.strip().splitlines()
    pattern = re.compile(r"^::(error|warning|notice) file=[^,:]+,title=[^:]+::.+$")
    annotations = [line for line in lines if line.startswith("::")]
    assert annotations and all(pattern.match(line) for line in annotations), annotations
    assert any(
        line.startswith("::error ")
        and "title=shape_mismatch (model.layers.0.mlp.down_proj)" in line
        for line in annotations
    )
    assert any(line.startswith("::warning ") and "unused_pattern" in line for line in annotations)
    assert code == 1 and lines[-1].startswith("loradex check: incompatible")
    _, strict_out, _ = run(
        "check",
        "--adapter",
        setup["warn"],
        "--base",
        setup["base"],
        "--format",
        "github",
        "--strict",
    )
    assert strict_out.startswith("::error ")


def test_signature_round_trip(setup: dict[str, Path], tmp_path: Path) -> None:
    code, out, _ = run(
        "inspect",
        setup["base"],
        "--signature",
        "--name",
        "org/tiny",
        "--fingerprint",
        "--cache-dir",
        tmp_path / "cache",
    )
    assert code == 0
    signature = json.loads(out)
    assert signature["format"] == "loradex.signature/1" and signature["name_or_path"] == "org/tiny"
    assert len(signature["fingerprint"]) == 64
    sig_file = tmp_path / "base.signature.json"
    sig_file.write_text(out)
    assert (
        run("check", "--adapter", setup["good"], "--base-signature", sig_file, "--verify-weights")[
            0
        ]
        == 0
    )
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "nope"}')
    code, out, _ = run("check", "--adapter", setup["good"], "--base-signature", bad)
    assert code == 1 and "corrupt_file" in out


def test_inspect_adapter_and_base(setup: dict[str, Path]) -> None:
    code, out, _ = run("inspect", setup["mlp"], "--json")
    data = json.loads(out)
    assert (
        code == 0
        and data["max_rank"] == 32
        and data["vllm_max_lora_rank"] == 32
        and data["target_modules"] == ["down_proj"]
    )
    code, out, _ = run("inspect", setup["mlp"])
    assert code == 0 and "vLLM max_lora_rank: 32" in out and "alpha / scale:  64 / 2" in out
    code, out, _ = run("inspect", setup["base"])
    assert code == 0 and "LlamaForCausalLM" in out and "name prefix:    model" in out
    code, _, err = run("inspect", setup["mlp"], "--signature")
    assert code == 1 and "is an adapter; a signature or a fingerprint is of a base" in err
    code, _, err = run("inspect", setup["base"], "--revision", "main")
    assert code == 1 and "only applies to a base signature" in err


def test_check_and_inspect_do_not_import_torch(setup: dict[str, Path]) -> None:
    code = (
        "import sys\n"
        "from cli.main import cli\n"
        "for args in (['inspect', {!r}], ['inspect', {!r}, '--signature'],\n"
        "             ['check', '--adapter', {!r}, '--base', {!r}, '--serving', 'vllm']):\n"
        "    try:\n"
        "        cli(args, prog_name='loradex')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), (args, exc.code)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    ).format(str(setup["good"]), str(setup["base"]), str(setup["good"]), str(setup["base"]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
