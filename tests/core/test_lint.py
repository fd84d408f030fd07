"""The checker: every broken flow in tests/data/flows/broken fails with a precise message and line; the
shipped flow passes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bot.core.audience import declarations_from
from bot.core.flowspec import Problem, read_flow
from bot.core.lint import lint_flow
from bot.core.rendering import TemplateSet
from bot.core.sample import SAMPLE_PROJECT
from bot.runtime.catalog import approved_templates, build_catalog, read_specs, template_sources

ROOT = Path(__file__).resolve().parents[2]
BROKEN = ROOT / "tests" / "data" / "flows" / "broken"
CASES = sorted((BROKEN / "flows").glob("*.yaml"))


def _problems(path: Path) -> list[Problem]:
    text = path.read_text(encoding="utf-8")
    spec, problems = read_flow(text, path.name)
    if spec is None:
        return problems
    sources = template_sources(ROOT) + template_sources(BROKEN)
    return (
        problems
        + list(TemplateSet(sources, spec.default_locale).problems)
        + lint_flow(spec, TemplateSet(sources, spec.default_locale), SAMPLE_PROJECT)
    )


def test_every_broken_case_declares_its_expectation() -> None:
    assert len(CASES) >= 15
    for case in CASES:
        assert re.match(r"# expect: \d+: .+", case.read_text(encoding="utf-8").splitlines()[0]), case.name


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_broken_flow_fails_with_precise_message(case: Path) -> None:
    m = re.match(r"# expect: (\d+): (.+)", case.read_text(encoding="utf-8").splitlines()[0])
    assert m is not None
    line, message = int(m.group(1)), m.group(2).strip()
    errors = [p for p in _problems(case) if p.severity == "error"]
    hits = [p for p in errors if message in p.message]
    assert hits, f"{case.name}: no error containing {message!r}; got {[p.format() for p in errors]}"
    assert hits[0].line == line, hits[0].format()


def test_problem_format_is_file_line_severity_message_hint() -> None:
    problems = _problems(BROKEN / "flows" / "unknown_state.yaml")
    line = next(p.format() for p in problems if "nowhere" in p.message)
    assert re.fullmatch(r"unknown_state\.yaml:10: error: unknown state `nowhere` \[.+\] \(hint: .+\)", line), line


def test_shipped_flow_has_no_problem() -> None:
    specs, problems = read_specs(ROOT)
    assert [s.id for s in specs] == ["consent"]
    approved, approved_problems = approved_templates(ROOT)
    assert [s.name for s in approved if s.category == "UTILITY"] == ["consent_refresh", "consent_refresh"]
    catalog = build_catalog(specs, template_sources(ROOT), SAMPLE_PROJECT, strict=False, approved=approved)
    assert [p.format() for p in (*problems, *approved_problems, *catalog.problems)] == []


def _shipped_with(approved_yaml: str | None) -> list[str]:
    """Problems of the shipped flow when whatsapp_templates.yaml says ``approved_yaml`` (None: absent)."""
    spec, _ = read_flow((ROOT / "flows" / "consent.yaml").read_text(encoding="utf-8"), "consent.yaml")
    assert spec is not None
    approved = declarations_from(yaml.safe_load(approved_yaml)) if approved_yaml else []
    found = lint_flow(spec, TemplateSet(template_sources(ROOT), "en", approved), SAMPLE_PROJECT)
    return [p.format() for p in found if "fallback" in p.message or "parameter" in p.message]


def test_a_fallback_must_be_an_approved_template_of_the_right_category_with_known_variables() -> None:
    assert any("fallback template `consent_refresh` is not declared for `en`" in p for p in _shipped_with(None))
    shipped = (ROOT / "whatsapp_templates.yaml").read_text(encoding="utf-8")
    assert _shipped_with(shipped) == []
    marketing = shipped.replace("category: UTILITY", "category: MARKETING")
    assert any("is APPROVED MARKETING, not APPROVED UTILITY" in p for p in _shipped_with(marketing))
    pending = shipped.replace("status: APPROVED\n    body: \"Some time", "status: PENDING\n    body: \"Some time")
    assert any("(en) is PENDING UTILITY" in p for p in _shipped_with(pending))
    unknown = shipped.replace("parameters: [business, granted]", "parameters: [business, shoe_size]")
    assert any("no variable `shoe_size`" in p for p in _shipped_with(unknown))
    dead = shipped.replace("payload: refresh_no", "payload: nowhere")
    assert any("quick reply `nowhere`" in p and "does nothing" in p for p in _shipped_with(dead))


def test_button_doing_nothing_is_a_warning() -> None:
    text = """id: w
version: "1"
locales: [en]
initial: start
optin: start
states:
  start:
    send: [ask_age]
    on:
      - {trigger: inbound, internal: true}
"""
    spec, problems = read_flow(text, "w.yaml")
    assert spec is not None and problems == []
    found = lint_flow(spec, TemplateSet(template_sources(ROOT), "en"), SAMPLE_PROJECT)
    warnings = [p for p in found if p.severity == "warning"]
    assert any("button `age_yes`" in p.message and p.line == 8 for p in warnings), [p.format() for p in found]
    assert not [p for p in found if p.severity == "error"]


def test_unknown_project_purpose_is_an_error() -> None:
    text = (
        (ROOT / "flows" / "consent.yaml")
        .read_text(encoding="utf-8")
        .replace("purposes: all", "purposes: [offers, vip]")
    )
    spec, _ = read_flow(text, "consent.yaml")
    assert spec is not None
    found = lint_flow(spec, TemplateSet(template_sources(ROOT), "en"), SAMPLE_PROJECT)
    assert any("purpose `vip` is not declared" in p.message for p in found)
