"""Render a :class:`~mergetools.findings.CheckReport` as text, JSON, JUnit XML or GitHub annotations.

Pure string functions (no I/O), so the CLI and the API render the same way.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from xml.etree import ElementTree

from mergetools.findings import CheckReport, Finding

logger = logging.getLogger(__name__)

FORMATS = ("text", "json", "junit", "github")
_GITHUB_LEVEL = {"error": "error", "warning": "warning", "info": "notice"}


def render(report: CheckReport, fmt: str, *, strict: bool = False) -> str:
    """Render ``report`` in one of :data:`FORMATS`."""
    if fmt == "text":
        return render_text(report, strict=strict)
    if fmt == "json":
        return render_json(report, strict=strict)
    if fmt == "junit":
        return render_junit(report, strict=strict)
    if fmt == "github":
        return render_github(report, strict=strict)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _where(finding: Finding) -> str:
    parts = [p for p in (finding.adapter, finding.module) if p]
    return " ".join(f"[{p}]" for p in parts)


def render_text(report: CheckReport, *, strict: bool = False) -> str:
    lines: list[str] = []
    if report.base:
        lines.append(
            f"base: {report.base}"
            + (f" (fingerprint {report.base_fingerprint})" if report.base_fingerprint else "")
        )
    if report.serving:
        lines.append(f"serving: {report.serving}")
    for adapter in report.adapters:
        fingerprint = report.adapter_fingerprints.get(adapter)
        lines.append(
            f"adapter: {adapter}" + (f" (fingerprint {fingerprint})" if fingerprint else "")
        )
    order = {"error": 0, "warning": 1, "info": 2}
    for finding in sorted(report.findings, key=lambda f: order[f.severity]):
        where = _where(finding)
        lines.append(
            f"{finding.severity.upper():7} {finding.code}{' ' + where if where else ''}: {finding.message}"
        )
    errors, warnings = len(report.errors), len(report.warnings)
    infos = len(report.findings) - errors - warnings
    verdict = "compatible" if report.ok(strict) else "INCOMPATIBLE"
    lines.append(
        f"{verdict}: {errors} error(s), {warnings} warning(s), {infos} note(s)"
        + (" [strict]" if strict else "")
    )
    return "\n".join(lines) + "\n"


def render_json(report: CheckReport, *, strict: bool = False) -> str:
    data = report.to_dict()
    data["strict"] = strict
    data["passed"] = report.ok(strict)
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def render_junit(report: CheckReport, *, strict: bool = False) -> str:
    """One test case per adapter (plus one for the base and one for the adapters together)."""
    groups: dict[str, list[Finding]] = {"base": []}
    for adapter in report.adapters:
        groups.setdefault(adapter, [])
    groups["adapters together"] = []
    for finding in report.findings:
        key = finding.adapter or (
            "adapters together" if finding.code.startswith(("group_", "merge_")) else "base"
        )
        groups.setdefault(key, []).append(finding)
    suites = ElementTree.Element("testsuites", name="loradex check")
    suite = ElementTree.SubElement(suites, "testsuite", name="loradex check")
    failures = 0
    for name, findings in groups.items():
        case = ElementTree.SubElement(suite, "testcase", classname="loradex.check", name=name)
        failing = [
            f for f in findings if f.severity == "error" or (strict and f.severity == "warning")
        ]
        if failing:
            failures += 1
            failure = ElementTree.SubElement(
                case,
                "failure",
                message=f"{len(failing)} problem(s): "
                + ", ".join(sorted({f.code for f in failing})),
                type="incompatible",
            )
            failure.text = "\n".join(
                f"{f.severity} {f.code} {_where(f)}: {f.message}" for f in failing
            )
        rest = [f for f in findings if f not in failing]
        if rest:
            out = ElementTree.SubElement(case, "system-out")
            out.text = "\n".join(f"{f.severity} {f.code} {_where(f)}: {f.message}" for f in rest)
    suite.set("tests", str(len(groups)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suites.set("tests", str(len(groups)))
    suites.set("failures", str(failures))
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


def _annotation_file(adapter: str | None, references: list[str]) -> str | None:
    """The adapter's config file, relative to the working directory when inside it.

    None for an adapter named by a registry reference: its folder is a cache copy, not a
    file of the repository the workflow runs in.
    """
    if not adapter or adapter in references:
        return None
    config = Path(adapter) / "adapter_config.json"
    try:
        relative = os.path.relpath(config)
    except ValueError:  # another drive on Windows
        return str(config)
    return str(config) if relative.startswith("..") else relative


def render_github(report: CheckReport, *, strict: bool = False) -> str:
    """GitHub Actions workflow commands: ``::error file=...,title=CODE::message``.

    Findings about an adapter given as a folder point at its ``adapter_config.json``; those
    about an adapter named by a reference name it in the title instead.
    """
    lines: list[str] = []
    for finding in report.findings:
        level = _GITHUB_LEVEL[finding.severity]
        if strict and level == "warning":
            level = "error"
        props = []
        file = _annotation_file(finding.adapter, report.references)
        if file:
            props.append(f"file={_escape_property(file)}")
        title = finding.code + (f" ({finding.module})" if finding.module else "")
        if finding.adapter and finding.adapter in report.references:
            title = f"{finding.adapter}: {title}"
        props.append(f"title={_escape_property(title)}")
        lines.append(f"::{level} {','.join(props)}::{_escape_data(finding.message)}")
    errors, warnings = len(report.errors), len(report.warnings)
    verdict = "compatible" if report.ok(strict) else "incompatible"
    lines.append(f"loradex check: {verdict} ({errors} error(s), {warnings} warning(s))")
    return "\n".join(lines) + "\n"
