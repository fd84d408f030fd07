"""The shipped scenario files (flows/tests/*.yaml) run against the real engine, as pytest tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.sample import SAMPLE_PROJECT
from bot.core.scenario import run_scenarios
from bot.runtime.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "flows" / "tests").glob("*.yaml"))
CATALOG = load_catalog(ROOT, SAMPLE_PROJECT)


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_shipped_scenarios_pass(path: Path) -> None:
    results = run_scenarios(path.read_text(encoding="utf-8"), path.name, CATALOG.flows, SAMPLE_PROJECT)
    assert results and all(r.steps > 0 for r in results)
    failures = [f for r in results for f in r.failures]
    assert failures == []


def test_every_path_is_covered_in_both_locales() -> None:
    names = [
        r.name
        for f in FILES
        for r in run_scenarios(f.read_text(encoding="utf-8"), f.name, CATALOG.flows, SAMPLE_PROJECT)
    ]
    for topic in ("double opt-in", "decline", "expiry", "age", "topic", "opt-out from", "START", "HELP", "MY DATA"):
        assert any(topic.lower() in n.lower() for n in names), topic
    assert sum("(es)" in n for n in names) >= 20 and sum("(en)" in n for n in names) >= 20


def test_a_wrong_expectation_fails_with_file_and_line() -> None:
    text = "scenarios:\n  - name: wrong\n    steps:\n      - send: hi\n        state: subscribed\n"
    (result,) = run_scenarios(text, "x.yaml", CATALOG.flows, SAMPLE_PROJECT)
    assert not result.passed
    assert result.failures[0].startswith("x.yaml:4: wrong: step 1 (send hi): state is 'notice'")


def test_a_broken_scenario_file_is_reported() -> None:
    (result,) = run_scenarios("scenarios: [", "x.yaml", CATALOG.flows, SAMPLE_PROJECT)
    assert not result.passed and "not valid YAML" in result.failures[0]
    (result,) = run_scenarios("scenarios:\n  - steps:\n      - shout: hi\n", "y.yaml", CATALOG.flows, SAMPLE_PROJECT)
    assert "unknown key 'shout'" in result.failures[0]


def test_marketing_expectation_reads_the_gate_and_notice_version_changes_the_project() -> None:
    subscribe = (
        "scenarios:\n  - name: gate\n    locale: en\n    steps:\n"
        "      - send: hi\n        marketing: {offers: no_consent}\n"
        "      - tap: consent_yes\n      - tap: age_yes\n      - tap: purpose_yes\n      - tap: purpose_no\n"
        "      - tap: set_frequency:weekly\n      - tap: confirm_yes\n        marketing: {offers: allowed}\n"
        "      - notice_version: '3.0'\n        marketing: {offers: %s}\n"
    )
    (passed,) = run_scenarios(subscribe % "consent_stale", "g.yaml", CATALOG.flows, SAMPLE_PROJECT)
    assert passed.failures == ()
    (failed,) = run_scenarios(subscribe % "allowed", "g.yaml", CATALOG.flows, SAMPLE_PROJECT)
    assert len(failed.failures) == 1
    assert "g.yaml:14: gate: step 8 (notice_version 3.0)" in failed.failures[0]
    assert "marketing for 'offers' is consent_stale (consent given under notice 1.0; the current notice is 3.0)" in (
        failed.failures[0]
    )


def test_advance_takes_a_flow_timer_literal_and_names_a_bad_one() -> None:
    steps = "scenarios:\n  - name: wait\n    locale: en\n    steps:\n      - send: hi\n      - advance: '%s'\n"
    for good in ("25h", " 25 h ", "1d"):
        (result,) = run_scenarios(steps % good, "w.yaml", CATALOG.flows, SAMPLE_PROJECT)
        assert result.failures == (), good
    for bad in ("2w", "h", "-3h", "1.5h"):
        (result,) = run_scenarios(steps % bad, "w.yaml", CATALOG.flows, SAMPLE_PROJECT)
        assert len(result.failures) == 1 and f"bad duration '{bad}' (use 30s, 10m, 25h, 31d)" in result.failures[0], (
            bad, result.failures)
