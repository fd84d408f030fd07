"""One transitions.Machine per flow version, one long-lived model; built-ins in every state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.core.engine import decide
from bot.core.flowspec import OPTED_OUT, load_flow
from bot.core.machine import FlowFamily, compile_flow, duration, version_key
from bot.core.messages import Inbound, InboundKind
from bot.core.rendering import TemplateSet
from bot.core.sample import SAMPLE_PROJECT, sample_project
from bot.runtime.catalog import template_sources

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (ROOT / "flows" / "consent.yaml").read_text(encoding="utf-8")
TEMPLATES = TemplateSet(template_sources(ROOT), "en")


def test_compiles_one_machine_without_auto_transitions() -> None:
    flow = compile_flow(load_flow(SHIPPED), TEMPLATES)
    assert flow.machine.auto_transitions is False
    assert set(flow.machine.states) == set(flow.spec.states) | {OPTED_OUT}
    assert not any(name.startswith("to_") for name in flow.machine.events)


def test_builtins_exist_from_every_state() -> None:
    flow = compile_flow(load_flow(SHIPPED), TEMPLATES)
    for state in flow.states:
        optout = flow.machine.events["optout"].transitions[state]
        assert [t.dest for t in optout] == [OPTED_OUT]
        assert [t.dest for t in flow.machine.events["resubscribe"].transitions[state]] == ["notice"]
        for internal in ("help", "human", "export", "erase"):
            assert flow.machine.events[internal].transitions[state][0].dest is None


def test_conversations_are_never_registered_as_models() -> None:
    flow = compile_flow(load_flow(SHIPPED), TEMPLATES)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(50):
        inbound = Inbound(
            id=f"w{i}", phone_number_id="p", subject=f"3460000{i:04d}", timestamp=0, kind=InboundKind.TEXT, text="hola"
        )
        decide(None, inbound, flow, SAMPLE_PROJECT, now)
    assert flow.machine.models == [flow.model]
    assert flow.model.turn is None


def test_durations() -> None:
    project = sample_project(confirm_expiry_hours=48, decline_cooloff_days=7)
    assert duration("confirm_expiry", project) == timedelta(hours=48)
    assert duration("confirm_reminder", project) == timedelta(hours=24)
    assert duration("decline_cooloff", project) == timedelta(days=7)
    assert duration("90m", project) == timedelta(minutes=90)


def test_family_picks_newest_by_natural_version_order() -> None:
    v2 = compile_flow(load_flow(SHIPPED.replace('version: "1"', 'version: "2"')), TEMPLATES)
    v10 = compile_flow(load_flow(SHIPPED.replace('version: "1"', 'version: "10"')), TEMPLATES)
    family = FlowFamily([v10, v2])
    assert family.newest is v10 and family.get("2") is v2
    assert version_key("1.2") < version_key("1.10")
