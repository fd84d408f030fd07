"""The send gate: one table row per reason, plus the rules' edges (window, staleness, cap)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.core.conversation import Conversation, PurposeState, PurposeStatus
from bot.core.messages import Category, Outbound, OutboundKind, TemplateRef
from bot.core.policy import (
    ALLOWED_REASONS,
    GateInput,
    Reason,
    cap_period_start,
    decide_send,
    notice_major,
)
from bot.core.project import Controller, Project, Purpose, Retention

NOW = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
PROJECT = Project(
    controller=Controller("Ejemplo SL", "hola@example.com", "dpo@example.com", "https://example.com/p", "AEPD"),
    purposes=(Purpose("offers", {"en": "Offers"}), Purpose("news", {"en": "News"})),
    notice_version="3.1",
    min_age=14,
    marketing_cap_per_week=3,
    retention=Retention(consent_refresh_days=730),
)
OFFERS_TEMPLATE = TemplateRef("weekly_offers", "es")
GRANTED = {"offers": PurposeStatus(PurposeState.GRANTED, NOW - timedelta(days=10), "3.0")}


def text(category: Category = Category.SERVICE, purpose: str = "", fallback: TemplateRef | None = None) -> Outbound:
    return Outbound(to="34600000001", kind=OutboundKind.TEXT, body="hola", category=category,
                    purpose=purpose, fallback=fallback)


def template(category: Category = Category.MARKETING, purpose: str = "offers") -> Outbound:
    return Outbound(to="34600000001", kind=OutboundKind.TEMPLATE, template=OFFERS_TEMPLATE,
                    category=category, purpose=purpose)


def gate(message: Outbound, **facts: Any) -> GateInput:
    base: dict[str, Any] = {
        "message": message,
        "project": PROJECT,
        "now": NOW,
        "suppressed": False,
        "minor": False,
        "marketing_sent_in_period": 0,
        "consent": GRANTED,
        "window_opened_at": NOW - timedelta(hours=1),
        "restricted": False,
    }
    base.update(facts)
    return GateInput(**base)


CLOSED = NOW - timedelta(hours=24)  # exactly 24 h ago: the window has just closed

# (id, input, allowed, reason)
CASES: list[tuple[str, GateInput, bool, Reason]] = [
    ("service in window", gate(text()), True, Reason.ALLOWED_IN_WINDOW),
    ("utility in window, no consent needed", gate(text(Category.UTILITY), consent={}), True, Reason.ALLOWED_IN_WINDOW),
    ("marketing free-form in window", gate(text(Category.MARKETING, "offers")), True, Reason.ALLOWED_IN_WINDOW),
    ("marketing template, window closed", gate(template(), window_opened_at=None), True, Reason.ALLOWED_TEMPLATE),
    ("service outside window with fallback",
     gate(text(fallback=OFFERS_TEMPLATE), window_opened_at=CLOSED), True, Reason.ALLOWED_FALLBACK),
    ("no recipient", gate(replace(text(), to="")), False, Reason.INVALID_INPUT),
    ("naive now", gate(text(), now=NOW.replace(tzinfo=None)), False, Reason.INVALID_INPUT),
    ("suppression not consulted", gate(text(), suppressed=None), False, Reason.SUPPRESSION_UNKNOWN),
    ("suppressed service", gate(text()), True, Reason.ALLOWED_IN_WINDOW),  # control row for the next
    ("suppressed, service category", gate(text(), suppressed=True), False, Reason.SUPPRESSED),
    ("suppressed, utility template", gate(template(Category.UTILITY, ""), suppressed=True), False, Reason.SUPPRESSED),
    ("suppressed, marketing", gate(template(), suppressed=True), False, Reason.SUPPRESSED),
    ("restricted, service", gate(text(), restricted=True), False, Reason.RESTRICTED),
    ("restricted, utility template", gate(template(Category.UTILITY, ""), restricted=True), False, Reason.RESTRICTED),
    ("marketing without purpose", gate(template(purpose="")), False, Reason.MISSING_PURPOSE),
    ("marketing, undeclared purpose", gate(template(purpose="partners")), False, Reason.UNKNOWN_PURPOSE),
    ("marketing, age unknown", gate(template(), minor=None), False, Reason.AGE_UNKNOWN),
    ("marketing to a minor", gate(template(), minor=True), False, Reason.MINOR),
    ("marketing, never asked", gate(template(), consent={}), False, Reason.NO_CONSENT),
    ("marketing, consent for another purpose only", gate(template(purpose="news")), False, Reason.NO_CONSENT),
    ("marketing, requested but not confirmed",
     gate(template(), consent={"offers": PurposeStatus(PurposeState.REQUESTED, NOW, "3.1")}), False, Reason.NO_CONSENT),
    ("marketing, withdrawn",
     gate(template(), consent={"offers": PurposeStatus(PurposeState.WITHDRAWN, NOW, "3.1")}), False, Reason.NO_CONSENT),
    ("marketing, declined",
     gate(template(), consent={"offers": PurposeStatus(PurposeState.DECLINED, NOW, "3.1")}), False, Reason.NO_CONSENT),
    ("marketing, expired",
     gate(template(), consent={"offers": PurposeStatus(PurposeState.EXPIRED, NOW, "3.1")}), False, Reason.NO_CONSENT),
    ("marketing, consent older than the refresh period",
     gate(template(), consent={"offers": PurposeStatus(PurposeState.GRANTED, NOW - timedelta(days=730), "3.1")}),
     False, Reason.CONSENT_STALE),
    ("marketing, consent under an older major notice",
     gate(template(), consent={"offers": PurposeStatus(PurposeState.GRANTED, NOW, "2.9")}), False, Reason.CONSENT_STALE),
    ("marketing, consent without a notice version",
     gate(template(), consent={"offers": PurposeStatus(PurposeState.GRANTED, NOW, "")}), False, Reason.CONSENT_STALE),
    ("marketing, consent time not aware",
     gate(template(), consent={"offers": PurposeStatus(PurposeState.GRANTED, NOW.replace(tzinfo=None), "3.1")}),
     False, Reason.INVALID_INPUT),
    ("marketing, count unknown", gate(template(), marketing_sent_in_period=None), False, Reason.FREQUENCY_UNKNOWN),
    ("marketing, cap reached", gate(template(), marketing_sent_in_period=3), False, Reason.FREQUENCY_CAP),
    ("marketing, one below the cap", gate(template(), marketing_sent_in_period=2), True, Reason.ALLOWED_TEMPLATE),
    ("template message without template",
     gate(replace(template(Category.UTILITY, ""), template=None)), False, Reason.MISSING_TEMPLATE),
    ("free-form, window never opened", gate(text(), window_opened_at=None), False, Reason.WINDOW_CLOSED_NO_TEMPLATE),
    ("free-form, window just closed", gate(text(), window_opened_at=CLOSED), False, Reason.WINDOW_CLOSED_NO_TEMPLATE),
    ("free-form, naive window time", gate(text(), window_opened_at=CLOSED.replace(tzinfo=None) + timedelta(hours=23)),
     False, Reason.WINDOW_CLOSED_NO_TEMPLATE),
    ("marketing free-form outside window, no fallback",
     gate(text(Category.MARKETING, "offers"), window_opened_at=CLOSED), False, Reason.WINDOW_CLOSED_NO_TEMPLATE),
]


@pytest.mark.parametrize(("request_", "allowed", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide_send(request_: GateInput, allowed: bool, reason: Reason) -> None:
    verdict = decide_send(request_)
    assert (verdict.allowed, verdict.reason) == (allowed, reason)
    assert verdict.detail
    assert (verdict.reason in ALLOWED_REASONS) is verdict.allowed


def test_every_reason_is_covered_by_the_table() -> None:
    covered = {decide_send(c[1]).reason for c in CASES}
    assert covered == set(Reason)


def test_blocked_verdict_keeps_the_original_message() -> None:
    message = template()
    verdict = decide_send(gate(message, suppressed=True))
    assert verdict.message is message


def test_outside_window_message_is_rewritten_to_its_fallback() -> None:
    message = Outbound(to="34600000001", kind=OutboundKind.BUTTONS, body="¿Seguimos?", header="h", footer="f",
                       category=Category.UTILITY, fallback=TemplateRef("follow_up", "es"), reply_to="wamid.X")
    verdict = decide_send(gate(message, window_opened_at=NOW - timedelta(hours=30)))
    assert verdict.allowed
    sent = verdict.message
    assert sent.kind is OutboundKind.TEMPLATE
    assert sent.template == TemplateRef("follow_up", "es")
    assert (sent.body, sent.header, sent.footer, sent.buttons, sent.fallback) == ("", "", "", (), None)
    assert (sent.to, sent.category, sent.reply_to) == (message.to, message.category, message.reply_to)


def test_inside_window_free_form_is_sent_as_is_even_with_a_fallback() -> None:
    message = text(fallback=OFFERS_TEMPLATE)
    verdict = decide_send(gate(message, window_opened_at=NOW - timedelta(hours=23, minutes=59)))
    assert verdict.reason is Reason.ALLOWED_IN_WINDOW
    assert verdict.message is message


def test_consent_just_inside_the_refresh_period_is_current() -> None:
    since = NOW - timedelta(days=730) + timedelta(seconds=1)
    verdict = decide_send(gate(template(), consent={"offers": PurposeStatus(PurposeState.GRANTED, since, "3.0.2")}))
    assert verdict.reason is Reason.ALLOWED_TEMPLATE


def test_minor_notice_change_keeps_consent_and_major_change_makes_it_stale() -> None:
    consent = {"offers": PurposeStatus(PurposeState.GRANTED, NOW, "3.0")}
    assert decide_send(gate(template(), consent=consent, project=replace(PROJECT, notice_version="3.7"))).allowed
    verdict = decide_send(gate(template(), consent=consent, project=replace(PROJECT, notice_version="4.0")))
    assert verdict.reason is Reason.CONSENT_STALE


def test_suppression_beats_everything_else() -> None:
    verdict = decide_send(gate(template(), suppressed=True, restricted=True, minor=True, consent={}))
    assert verdict.reason is Reason.SUPPRESSED


def test_cap_of_zero_blocks_all_marketing_but_not_service() -> None:
    project = replace(PROJECT, marketing_cap_per_week=0)
    assert decide_send(gate(template(), project=project)).reason is Reason.FREQUENCY_CAP
    assert decide_send(gate(text(), project=project)).allowed


def test_for_conversation_reads_consent_window_and_restriction() -> None:
    conv = Conversation.start("pn1", "34600000001", "doi", "1", "idle", "es", NOW - timedelta(days=1))
    conv = conv.evolve(consent=dict(GRANTED), window_opened_at=NOW - timedelta(hours=2))
    request = GateInput.for_conversation(text(), conv, PROJECT, NOW, suppressed=False, minor=False,
                                         marketing_sent_in_period=0)
    assert decide_send(request).reason is Reason.ALLOWED_IN_WINDOW
    assert decide_send(replace(request, message=template())).reason is Reason.ALLOWED_TEMPLATE
    restricted = GateInput.for_conversation(text(), conv.evolve(restricted=True), PROJECT, NOW, suppressed=False,
                                            minor=False, marketing_sent_in_period=0)
    assert decide_send(restricted).reason is Reason.RESTRICTED
    extra = GateInput.for_conversation(text(), conv, PROJECT, NOW, suppressed=False, minor=False,
                                       marketing_sent_in_period=0, restricted=True)
    assert decide_send(extra).reason is Reason.RESTRICTED


def test_no_conversation_means_no_consent_and_closed_window() -> None:
    request = GateInput.for_conversation(template(), None, PROJECT, NOW, suppressed=False, minor=False,
                                         marketing_sent_in_period=0)
    assert decide_send(request).reason is Reason.NO_CONSENT
    request = GateInput.for_conversation(text(), None, PROJECT, NOW, suppressed=False, minor=None,
                                         marketing_sent_in_period=None)
    assert decide_send(request).reason is Reason.WINDOW_CLOSED_NO_TEMPLATE


def test_helpers() -> None:
    assert cap_period_start(NOW) == NOW - timedelta(days=7)
    assert notice_major("3.1.0") == "3"
    assert notice_major("v2") == "v2"
    assert notice_major("") == ""
