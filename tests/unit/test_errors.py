"""The error hierarchy: unique stable codes, documented, and core messages that name no CLI flag."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import mergetools
import registry
from mergetools.errors import HINT_ACTIONS, LoradexError, NotFoundError
from registry.errors import ERROR_CODES

REPO = Path(__file__).resolve().parents[2]
CORE = ("mergetools", "registry")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
COMMAND = re.compile(r"`loradex [a-z][a-z -]*")
"""A whole command quoted in a message (``see `loradex base list```): the CLI's hint wording."""
# Flags of other programs that core messages may name on purpose: (file, flag).
ALLOWED_FLAGS = {("mergetools/serving.py", "--max-lora-rank")}  # vLLM's own option


def _import_core() -> None:
    for package in (mergetools, registry):
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            if ".api" in info.name or ".ui" in info.name:
                continue  # the shells' own packages may need extras (FastAPI)
            importlib.import_module(info.name)


def _subclasses() -> list[type[LoradexError]]:
    found, pending = [], [LoradexError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_error_class_has_a_unique_code_and_lives_in_the_two_error_modules() -> None:
    _import_core()
    classes = [c for c in _subclasses() if not c.__module__.startswith("tests")]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    # The HTTP layer's own error (bad Range headers...) lives with the HTTP layer.
    assert {c.__module__ for c in classes} <= {"mergetools.errors", "registry.errors", "registry.api.errors"}
    core = [c for c in classes if c.__module__ in ("mergetools.errors", "registry.errors")]
    assert set(ERROR_CODES) == {c.code for c in core}
    assert all(ERROR_CODES[c.code] is c for c in core)
    assert all(not hasattr(c, "http_status") for c in classes), "statuses belong to registry/api"


def test_every_code_is_documented() -> None:
    docs = (REPO / "docs" / "registry.md").read_text()
    section = docs.split("### Errors", 1)[1].split("\n### ", 1)[0]
    missing = [code for code in ERROR_CODES if f"`{code}`" not in section]
    assert not missing, f"codes missing from docs/registry.md 'Errors': {missing}"


def test_every_hint_action_has_cli_wording() -> None:
    from cli.main import HINT_TEXT

    assert set(HINT_TEXT) == set(HINT_ACTIONS)


def test_error_carries_fields_and_hint_and_refuses_unknown_actions() -> None:
    exc = NotFoundError(
        "adapter 'x' is not registered", fields={"name": "x"}, hint="h", hint_action="register"
    )
    assert exc.to_dict() == {
        "code": "not_found",
        "message": "adapter 'x' is not registered",
        "fields": {"name": "x"},
        "hint": "h",
        "hint_action": "register",
    }
    assert str(exc) == "adapter 'x' is not registered" and isinstance(exc, LookupError)
    with pytest.raises(ValueError, match="unknown hint_action"):
        LoradexError("m", hint_action="nope")


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            ids.add(id(node.value))  # attribute docstrings (a bare string after an assignment)
    return ids


def _flags_in_strings(source: str) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:
                continue
            hits.extend((node.lineno, flag) for flag in FLAG.findall(node.value))
            hits.extend((node.lineno, cmd.strip()) for cmd in COMMAND.findall(node.value))
    return hits


def test_core_messages_name_no_cli_flag() -> None:
    found = []
    for package in CORE:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(("registry/api/", "registry/ui/")):
                continue  # shells
            for line, flag in _flags_in_strings(path.read_text()):
                if (rel, flag) not in ALLOWED_FLAGS:
                    found.append(f"{rel}:{line}: {flag}")
    assert not found, (
        "core messages name CLI flags or commands (move them into a hint_action):\n"
        + "\n".join(found)
    )


def test_the_flag_scan_finds_flags() -> None:
    sample = 'def f():\n    """Doc --doc is fine."""\n    raise E(f"bad {x}; pass --force")\n'
    assert _flags_in_strings(sample) == [(3, "--force")]
    sample = 'raise E(f"no alias; set it with `loradex alias set {name}@VERSION`")\n'
    assert _flags_in_strings(sample) == [(1, "`loradex alias set")]
