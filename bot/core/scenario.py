"""Scenario files (``flows/tests/*.yaml``): conversations run against the real engine with a fake clock.

::

    flow: consent                      # optional when the project has one flow
    scenarios:
      - name: double opt-in (es)
        locale: es                     # picks a Spanish number for first contact (or give `contact:`)
        project: {min_age: 16}         # optional overrides of the project settings
        steps:
          - send: "hola"               # the customer types
            state: notice              # expectations (all optional) on what this step did:
            says: "Acme"               #   substring(s), case-insensitive, in any message sent
          - tap: consent_yes           # the customer taps a button / list row (its id)
          - advance: 25h               # the clock moves on; due timers fire in order
            says_regex: "(?i)remind"
            consent: {offers: expired}
          - meta: marketing_stop       # Meta: marketing_stop | marketing_resume | error_131050
            events: ["offers:withdrawn"]
          - notice_version: "2.0"      # the business publishes a new notice version (nothing is sent)
            marketing: {offers: consent_stale}

Other actions: ``react: "👍"``, ``media: image`` (any inbound kind without text), ``template_button``.
Expectations: ``state``, ``says`` (string or list; ``{business}`` stands for the controller's name),
``says_regex``, ``not_says``, ``silent`` (nothing
sent), ``consent`` (purpose -> none|requested|granted|declined|withdrawn|expired), ``events`` (exact
list of ``purpose:action`` emitted by the step), ``requests`` (exact list), ``needs_person``,
``buttons`` (titles that must be offered), ``category`` (of every message sent), ``marketing``
(purpose -> ``allowed`` or the send gate's reason: ``no_consent``, ``consent_stale``; what the gate
would say of the recorded consent at that moment).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from bot.core.conversation import Conversation, PurposeState
from bot.core.engine import Decision, MetaSignal, TimerFired, decide
from bot.core.flowspec import load_yaml, node_lines
from bot.core.machine import FlowFamily, literal_duration
from bot.core.messages import Inbound, InboundKind
from bot.core.policy import consent_problem
from bot.core.project import Project
from bot.core.rendering import shown_text
from bot.core.sample import sample_project

START = datetime(2025, 3, 3, 10, 0, tzinfo=UTC)
PHONE_NUMBER_ID = "100000000000001"
CONTACTS = {
    "en": "447700900123",
    "es": "34600111222",
    "pt": "351910000000",
    "fr": "33612345678",
    "de": "4915112345678",
    "it": "393471234567",
}
_ACTIONS = ("send", "tap", "advance", "meta", "react", "media", "template_button", "notice_version")
_EXPECT = (
    "state",
    "says",
    "says_regex",
    "not_says",
    "silent",
    "consent",
    "events",
    "requests",
    "needs_person",
    "buttons",
    "category",
    "marketing",
)


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    file: str
    name: str
    line: int
    failures: tuple[str, ...] = ()  # "file:line: step N (action): what went wrong"
    steps: int = 0

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(slots=True)
class _Run:
    family: FlowFamily
    project: Project
    contact: str
    now: datetime = START
    conv: Conversation | None = None
    seq: int = 0
    decisions: list[Decision] = field(default_factory=list)

    def apply(self, event: Inbound | TimerFired | MetaSignal) -> None:
        d = decide(self.conv, event, self.family, self.project, self.now)
        self.conv = d.conversation.evolve(version=d.conversation.version + 1)
        self.decisions.append(d)

    def inbound(
        self, kind: InboundKind, text: str | None = None, payload: str | None = None, data: dict[str, Any] | None = None
    ) -> None:
        self.seq += 1
        self.now += timedelta(seconds=1)
        self.apply(
            Inbound(
                id=f"wamid.scenario.{self.seq}",
                phone_number_id=PHONE_NUMBER_ID,
                subject=self.contact,
                timestamp=int(self.now.timestamp()),
                kind=kind,
                wa_id=self.contact,
                text=text,
                payload=payload,
                data=data or {},
            )
        )

    def advance(self, span: timedelta) -> None:
        target = self.now + span
        while self.conv is not None:
            due = sorted((t for t in self.conv.timers if t.due <= target), key=lambda t: t.due)
            if not due:
                break
            self.now = max(self.now, due[0].due)
            self.apply(TimerFired(due[0].name))
        self.now = target


def parse_duration(text: str) -> timedelta:
    """An ``advance:`` step's duration: a flow timer's literal (``30s``, ``10m``, ``25h``, ``31d``),
    spaces allowed."""
    known = literal_duration("".join(str(text).split()))
    if known is None:
        raise ValueError(f"bad duration {text!r} (use 30s, 10m, 25h, 31d)")
    return known


def _check(step: Mapping[str, Any], decisions: list[Decision], run: _Run) -> list[str]:
    problems: list[str] = []
    conv, business = run.conv, run.project.controller.name
    outbox = [o for d in decisions for o in d.outbox]
    texts = [shown_text(o) for o in outbox]
    joined = "\n---\n".join(texts)
    if "state" in step and (conv is None or conv.state != step["state"]):
        problems.append(f"state is {conv.state if conv else None!r}, expected {step['state']!r}")
    says = step.get("says")
    for item in [says] if isinstance(says, str) else says or []:
        s = str(item).replace("{business}", business)
        if s.casefold() not in joined.casefold():
            problems.append(f"no message says {s!r}; sent: {texts!r}")
    if "says_regex" in step and not re.search(str(step["says_regex"]), joined, re.S):
        problems.append(f"no message matches /{step['says_regex']}/; sent: {texts!r}")
    not_says = step.get("not_says")
    for item in [not_says] if isinstance(not_says, str) else not_says or []:
        s = str(item).replace("{business}", business)
        if s.casefold() in joined.casefold():
            problems.append(f"a message says {s!r}, it should not")
    if step.get("silent") is True and outbox:
        problems.append(f"expected no message, sent: {texts!r}")
    if step.get("silent") is False and not outbox:
        problems.append("expected a message, nothing was sent")
    for purpose, want in (step.get("consent") or {}).items():
        status = conv.consent.get(purpose) if conv else None
        got = status.state if status is not None else PurposeState.NONE
        if str(got) != str(want):
            problems.append(f"consent for {purpose!r} is {str(got)!r}, expected {want!r}")
    if "events" in step:
        got_events = [f"{e.purpose}:{e.action}" for d in decisions for e in d.consent]
        if got_events != list(step["events"] or []):
            problems.append(f"consent events {got_events!r}, expected {list(step['events'] or [])!r}")
    if "requests" in step:
        got_requests = [r for d in decisions for r in d.requests]
        if got_requests != list(step["requests"] or []):
            problems.append(f"requests {got_requests!r}, expected {list(step['requests'] or [])!r}")
    if "needs_person" in step and (conv is None or conv.needs_person is not bool(step["needs_person"])):
        problems.append(f"needs_person is {conv.needs_person if conv else None}, expected {step['needs_person']}")
    for title in step.get("buttons") or []:
        if not any(b.title == title for o in outbox for b in o.buttons):
            problems.append(f"no button titled {title!r}")
    if "category" in step:
        bad = [str(o.category) for o in outbox if str(o.category) != step["category"]]
        if bad or not outbox:
            problems.append(f"categories {[str(o.category) for o in outbox]!r}, expected all {step['category']!r}")
    for purpose, want in (step.get("marketing") or {}).items():
        problem = consent_problem(conv.consent.get(purpose) if conv else None, run.project, run.now)
        verdict = "allowed" if problem is None else str(problem[0])
        if verdict != str(want):
            detail = f" ({problem[1]})" if problem is not None else ""
            problems.append(f"marketing for {purpose!r} is {verdict}{detail}, expected {want!r}")
    return problems


def _step(run: _Run, step: Mapping[str, Any]) -> str:
    actions = [a for a in _ACTIONS if a in step]
    unknown = set(step) - set(_ACTIONS) - set(_EXPECT)
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r}")
    if len(actions) > 1:
        raise ValueError(f"one action per step, got {actions}")
    if not actions:
        return "expect"
    action = actions[0]
    value = step[action]
    if action == "send":
        run.inbound(InboundKind.TEXT, text=str(value))
    elif action == "tap":
        kind = InboundKind.LIST_REPLY if str(value).startswith("row:") else InboundKind.BUTTON_REPLY
        payload = str(value).removeprefix("row:")
        run.inbound(kind, text=payload, payload=payload)
    elif action == "template_button":
        run.inbound(InboundKind.TEMPLATE_BUTTON, text=str(value), payload=str(value))
    elif action == "react":
        run.inbound(InboundKind.REACTION, data={"emoji": str(value)})
    elif action == "media":
        run.inbound(InboundKind(str(value)))
    elif action == "advance":
        run.advance(parse_duration(str(value)))
    elif action == "notice_version":
        run.project = replace(run.project, notice_version=str(value))
    elif action == "meta":
        run.seq += 1
        run.now += timedelta(seconds=1)
        run.apply(MetaSignal(str(value), run.contact, PHONE_NUMBER_ID, id=f"meta.{run.seq}", wa_id=run.contact))
    return f"{action} {value}"


def run_scenarios(text: str, file: str, families: Mapping[str, FlowFamily], project: Project) -> list[ScenarioResult]:
    """Run every scenario of one scenario file; a broken file is one failed result."""
    try:
        data = load_yaml(text)
        lines = node_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return [ScenarioResult(file, "<file>", mark.line + 1 if mark else 1, (f"{file}: not valid YAML: {exc}",))]
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), list):
        return [ScenarioResult(file, "<file>", 1, (f"{file}:1: a scenario file needs a `scenarios:` list",))]
    flow_id = data.get("flow") or (next(iter(families)) if len(families) == 1 else "consent")
    results: list[ScenarioResult] = []
    for i, sc in enumerate(data["scenarios"]):
        path = f"scenarios[{i}]"
        line = lines.get(path, 1)
        name = str(sc.get("name", f"scenario {i + 1}")) if isinstance(sc, dict) else f"scenario {i + 1}"
        failures: list[str] = []
        steps = sc.get("steps", []) if isinstance(sc, dict) else []
        try:
            family = families[sc.get("flow", flow_id)]
            proj = sample_project(project, **(sc.get("project") or {}))
            locale = str(sc.get("locale", family.newest.spec.default_locale))
            run = _Run(family, proj, str(sc.get("contact", CONTACTS.get(locale, CONTACTS["en"]))))
        except (KeyError, TypeError, ValueError) as exc:
            results.append(ScenarioResult(file, name, line, (f"{file}:{line}: {name}: {exc}",)))
            continue
        for j, step in enumerate(steps):
            sline = lines.get(f"{path}.steps[{j}]", line)
            before = len(run.decisions)
            try:
                label = _step(run, step)
                problems = _check(step, run.decisions[before:], run)
            except Exception as exc:  # a scenario reports every failure as a result
                problems = [f"{type(exc).__name__}: {exc}"]
                label = "?"
            failures += [f"{file}:{sline}: {name}: step {j + 1} ({label}): {p}" for p in problems]
            if problems:
                break
        results.append(ScenarioResult(file, name, line, tuple(failures), len(steps)))
    return results
