"""``consentbot flows check|graph|test`` on the shipped project and on broken flows."""

from __future__ import annotations

import argparse
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bot.cli import flows

ROOT = Path(__file__).resolve().parents[2]
BROKEN = ROOT / "tests" / "data" / "flows" / "broken"


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="consentbot")
    flows.register(parser.add_subparsers())
    args = parser.parse_args(["flows", *argv])
    result: int = args.func(args)
    return result


def test_check_passes_on_the_shipped_project(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("check", str(ROOT)) == 0
    out, err = capsys.readouterr()
    assert out == "" and "0 error(s), 0 warning(s)" in err


def test_check_passes_on_the_shipped_flow_file() -> None:
    assert cli("check", str(ROOT / "flows" / "consent.yaml")) == 0


def test_check_fails_with_one_line_per_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "flows").mkdir()
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    shutil.copy(BROKEN / "flows" / "unknown_state.yaml", tmp_path / "flows" / "bad.yaml")
    shutil.copy(BROKEN / "flows" / "unreachable.yaml", tmp_path / "flows" / "island.yaml")
    assert cli("check", str(tmp_path)) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert any(
        line.startswith("flows/bad.yaml:10: error: unknown state `nowhere`") and "(hint: " in line for line in lines
    )
    assert any(line.startswith("flows/island.yaml:11: error: state `island` is unreachable") for line in lines)
    assert "no consentbot.yaml" in err


def test_graph_mermaid_and_svg(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("graph", "consent", "--project", str(ROOT)) == 0
    out = capsys.readouterr().out
    assert out.startswith("stateDiagram-v2\n    [*] --> start")
    assert "confirm --> subscribed: confirm_yes" in out and "any_state --> opted_out: optout (built in)" in out
    assert cli("graph", str(ROOT / "flows" / "consent.yaml"), "--format", "svg") == 0
    svg = capsys.readouterr().out
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    names = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {"start", "notice", "confirm", "subscribed", "opted_out", "any state"} <= names
    assert cli("graph", "nope", "--project", str(ROOT)) == 1


def test_test_runs_the_shipped_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("test", str(ROOT)) == 0
    out, err = capsys.readouterr()
    assert "FAIL" not in out and out.count("ok    ") >= 50 and " 0 failed" in err


def test_test_reports_a_failing_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(ROOT / "flows", tmp_path / "flows", ignore=shutil.ignore_patterns("tests"))
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    shutil.copy(ROOT / "whatsapp_templates.yaml", tmp_path / "whatsapp_templates.yaml")
    (tmp_path / "flows" / "tests").mkdir()
    (tmp_path / "flows" / "tests" / "t.yaml").write_text(
        "scenarios:\n  - name: stop confirms\n    steps:\n      - send: STOP\n        says: 'welcome aboard'\n"
    )
    assert cli("test", str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "FAIL  flows/tests/t.yaml:2: stop confirms" in out and "no message says 'welcome aboard'" in out
