"""Flow files to FlowSpec values; errors carry a path and a line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bot.core.flowspec import OPTED_OUT, load_flow, node_lines, parse_mapping, read_flow
from bot.core.messages import Category
from bot.errors import FlowError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (ROOT / "flows" / "consent.yaml").read_text(encoding="utf-8")


def test_shipped_flow_parses_into_frozen_values() -> None:
    spec = load_flow(SHIPPED, "flows/consent.yaml")
    assert (spec.id, spec.version, spec.locales, spec.default_locale) == ("consent", "1", ("en", "es"), "en")
    assert spec.initial == "start" and spec.optin == "notice" and spec.purposes is None
    confirm = spec.states["confirm"]
    assert [t.trigger for t in confirm.timers] == ["remind", "expire"]
    assert confirm.on[0].trigger == "confirm_yes" and confirm.on[0].keywords == ("confirm",)
    remind = next(t for t in confirm.on if t.trigger == "remind")
    assert remind.dest is None and remind.when == ("in_window",)
    assert spec.keywords["yes"]["es"][0] == "si"  # `yes:` is a string key, not a YAML 1.1 boolean
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.initial = "x"  # type: ignore[misc]
    assert OPTED_OUT not in spec.states


def test_lines_map_to_paths() -> None:
    spec = load_flow(SHIPPED, "flows/consent.yaml")
    lines = SHIPPED.splitlines()
    line = spec.line("states.confirm.on[2]")
    assert "confirm_no" in lines[line - 1]
    assert "confirm:" in lines[spec.line("states.confirm") - 1]
    assert spec.line("states.confirm.on[2].when[0]") == line  # nearest ancestor


def test_error_has_path_and_line() -> None:
    text = SHIPPED.replace("dest: subscribed, do: [confirm_consent]", "dest: nowhere, do: [confirm_consent]")
    with pytest.raises(FlowError) as err:
        load_flow(text, "flows/consent.yaml")
    e = err.value
    assert e.path == "states.confirm.on[0].dest"
    assert "confirm_yes" in text.splitlines()[(e.line or 0) - 1]
    assert str(e).startswith(f"flows/consent.yaml:{e.line}: unknown state `nowhere`")


def test_read_flow_collects_every_problem() -> None:
    text = SHIPPED.replace("do: [confirm_consent]", "do: [grant_everything]").replace(
        "when: [cooloff_over]", "when: [always]"
    )
    spec, problems = read_flow(text, "f.yaml")
    assert spec is None
    messages = [p.message for p in problems]
    assert "unknown action `grant_everything`" in messages and "unknown guard `always`" in messages


def test_marketing_send_needs_a_purpose() -> None:
    text = SHIPPED.replace("send: [subscribed]", "send: [{template: subscribed, category: marketing}]")
    _, problems = read_flow(text, "f.yaml")
    assert any(p.message == "a marketing message needs a purpose" for p in problems)
    ok = SHIPPED.replace("send: [subscribed]", "send: [{template: subscribed, category: marketing, purpose: offers}]")
    spec = load_flow(ok)
    assert spec.states["subscribed"].send[0].category is Category.MARKETING


def test_internal_transition_cannot_have_dest() -> None:
    text = SHIPPED.replace(
        "{trigger: inbound, internal: true, send: [support_reply]}",
        "{trigger: inbound, internal: true, dest: notice}",
        1,
    )
    _, problems = read_flow(text, "f.yaml")
    assert any("internal transition has no `dest`" in p.message for p in problems)


def test_parse_mapping_and_node_lines() -> None:
    spec = parse_mapping(
        {
            "id": "m",
            "version": 2,
            "locales": ["en"],
            "initial": "a",
            "optin": "a",
            "states": {"a": {"on": [{"trigger": "inbound", "internal": True}]}},
        }
    )
    assert spec.version == "2"
    assert node_lines("a:\n  b: [1, 2]\n")["a.b[1]"] == 2


def test_duplicate_keys_are_errors() -> None:
    _, problems = read_flow(SHIPPED.replace("  start:\n", "  start:\n    description: x\n    description: y\n", 1))
    assert any(p.message == "duplicate key `description`" for p in problems)
