"""An adapter's tokenizer files replace the base's only when every one parses and together they
form a complete tokenizer; an overlay without a vocabulary (chat template, tokenizer config) is
laid over the base's; anything else is refused before a merge writes, and ``check`` reports it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from tests.factories import write_tokenizer

MakeAdapter = Callable[..., Path]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def base(tiny_base: Path) -> Path:
    write_tokenizer(tiny_base, vocab_size=32, marker="base")
    (tiny_base / "special_tokens_map.json").write_text(json.dumps({"unk_token": "base_0"}))
    return tiny_base


def merge(base: Path, adapter: Path, out: Path) -> Result:
    return run("merge", "--base", base, "--adapter", adapter, "--out", out)


BROKEN = [
    ("tokenizer.json", '{"model": {"type": "WordLevel"'),
    ("tokenizer.json", "[1, 2]"),
    ("tokenizer_config.json", "not json"),
    ("special_tokens_map.json", "{"),
    ("chat_template.jinja", b"\xff\xfe{{ bad }}"),
    ("tokenizer.model", b""),
    ("vocab.txt", b"\xff\xff\xff"),
]


@pytest.mark.parametrize(
    ("name", "content"), BROKEN, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BROKEN)]
)
def test_an_unparsable_adapter_tokenizer_file_is_refused(
    cli_env: dict[str, str],
    make_adapter: MakeAdapter,
    base: Path,
    tmp_path: Path,
    name: str,
    content: str | bytes,
) -> None:
    adapter = make_adapter()
    if name != "tokenizer.json":
        write_tokenizer(adapter, vocab_size=32, marker="adapter")
    path = adapter / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "merged"
    result = merge(base, adapter, out)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and name in errors[0] and "Traceback" not in result.stderr
    assert not out.exists()
    check = run("check", "--adapter", adapter, "--base", base, "--format", "json")
    assert check.exit_code == 1
    findings = json.loads(check.stdout)["findings"]
    assert [f["code"] for f in findings if f["severity"] == "error"] == ["unreadable_tokenizer"]
    # Also without a base: the adapter by itself.
    from mergetools.check import check_adapters

    alone = check_adapters([adapter])
    assert [f.code for f in alone.errors] == ["unreadable_tokenizer"]


@pytest.mark.parametrize(
    "names", [("vocab.json",), ("merges.txt",), ("vocab.json", "tokenizer_config.json")]
)
def test_an_incomplete_adapter_vocabulary_is_refused_not_mixed(
    cli_env: dict[str, str],
    make_adapter: MakeAdapter,
    base: Path,
    tmp_path: Path,
    names: tuple[str, ...],
) -> None:
    adapter = make_adapter()
    for name in names:
        (adapter / name).write_text("{}" if name.endswith(".json") else "#version: 0.2\na b\n")
    out = tmp_path / "merged"
    result = merge(base, adapter, out)
    assert result.exit_code == 1
    assert "do not form a complete tokenizer" in result.stderr and not out.exists()


def test_a_complete_adapter_tokenizer_replaces_the_base_tokenizer_whole(
    cli_env: dict[str, str], make_adapter: MakeAdapter, base: Path, tmp_path: Path
) -> None:
    adapter = make_adapter()
    write_tokenizer(adapter, vocab_size=32, marker="adapter")
    out = tmp_path / "merged"
    result = merge(base, adapter, out)
    assert result.exit_code == 0, result.stderr
    assert "adapter_0" in (out / "tokenizer.json").read_text()
    assert "adapter_0" in (out / "tokenizer_config.json").read_text()
    assert not (out / "special_tokens_map.json").exists()  # the base's tokenizer is replaced whole
    assert "note: tokenizer: the adapter's" in result.stderr
    provenance = json.loads((out / "loradex.json").read_text())
    assert any(n.startswith("tokenizer: the adapter's") for n in provenance["notes"])
    from transformers import PreTrainedTokenizerFast

    assert PreTrainedTokenizerFast.from_pretrained(out).convert_tokens_to_ids("adapter_5") == 5


def test_a_chat_template_overlay_is_laid_over_the_base_tokenizer(
    cli_env: dict[str, str], make_adapter: MakeAdapter, base: Path, tmp_path: Path
) -> None:
    adapter = make_adapter()
    (adapter / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    (adapter / "tokenizer_config.json").write_text(
        json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "base_0", "x": "adapter"}
        )
    )
    out = tmp_path / "merged"
    result = merge(base, adapter, out)
    assert result.exit_code == 0, result.stderr
    assert "base_0" in (out / "tokenizer.json").read_text()
    assert json.loads((out / "tokenizer_config.json").read_text())["x"] == "adapter"
    assert (out / "special_tokens_map.json").exists() and (out / "chat_template.jinja").exists()
    assert (
        "note: tokenizer: the base's, with the adapter's chat_template.jinja, tokenizer_config.json"
        in result.stderr
    )


def test_a_merge_without_adapter_tokenizer_says_the_base_one_is_used(
    cli_env: dict[str, str], make_adapter: MakeAdapter, base: Path, tmp_path: Path
) -> None:
    result = merge(base, make_adapter(), tmp_path / "merged")
    assert result.exit_code == 0, result.stderr
    assert "note: tokenizer: the base's" in result.stderr
    assert "base_0" in (tmp_path / "merged" / "tokenizer.json").read_text()
