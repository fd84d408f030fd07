"""Campaign audiences, pure: template declarations and their opt-out element, segments, parameters
rendered per recipient, and the order of the eligibility checks (the send gate first)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.core.audience import (
    EXCLUSION_REASONS,
    Audience,
    AudienceReason,
    CampaignError,
    Facts,
    Segment,
    TemplateDeclaration,
    assess,
    compile_params,
    declarations_from,
    has_optout_footer,
    parse_params,
    render_params,
    template_components,
    template_problems,
)
from bot.core.conversation import Conversation, PurposeState, PurposeStatus
from bot.core.messages import Category, OutboundKind
from bot.core.policy import Reason
from bot.core.project import Controller, Project, Purpose
from bot.errors import RenderError

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
PROJECT = Project(Controller("Café Aurora SL", "a@x.es", "d@x.es", "https://x.es/p", "AEPD"),
                  (Purpose("offers", {"en": "Offers"}),), marketing_cap_per_week=3)
DOC = {"templates": [
    {"name": "spring_offer", "language": "en", "parameters": ["first_name", "shop"], "named": True,
     "footer": "Reply STOP to opt out",
     "buttons": [{"type": "url", "text": "Shop"}, {"type": "quick_reply", "text": "Stop promotions",
                                                    "payload": "optout"}]},
    {"name": "oferta", "language": "es", "footer": "Responde BAJA para darte de baja"},
    {"name": "bare", "language": "en_US"},
]}
OK = Facts(suppressed=False, restricted=False, marketing_sent_in_period=0)


def subscriber(**changes: object) -> Conversation:
    conv = Conversation.start("100000000000001", "34600000001", "consent", "1", "subscribed", "en", NOW,
                              wa_id="34600000001", profile_name="Ana")
    defaults: dict[str, object] = {
        "consent": {"offers": PurposeStatus(PurposeState.GRANTED, NOW - timedelta(days=3), "1.0")},
        "slots": {"age_ok": True, "freq": "weekly", "topics": ["coffee", "cakes"], "shop": "Sol"},
    }
    defaults.update(changes)
    return conv.evolve(**defaults)


def test_declarations_parse_and_name_the_bad_entry() -> None:
    spring, oferta, bare = declarations_from(DOC)
    assert spring.parameters == ("first_name", "shop") and spring.named and spring.optout_index == 1
    assert oferta.optout_index is None and has_optout_footer(oferta.footer)
    assert template_problems(spring) == [] and template_problems(oferta) == []
    assert "no opt-out element" in template_problems(bare)[0]
    assert TemplateDeclaration.from_doc(spring.to_doc()) == spring
    with pytest.raises(CampaignError, match=r"templates\[0\]\.language"):
        declarations_from({"templates": [{"name": "x", "language": "english"}]})
    with pytest.raises(CampaignError, match="declared twice"):
        declarations_from({"templates": [{"name": "x", "language": "en"}, {"name": "x", "language": "en"}]})
    with pytest.raises(CampaignError, match="templates"):
        declarations_from({"nothing": 1})


def test_a_footer_without_an_opt_out_word_is_not_an_opt_out() -> None:
    assert not has_optout_footer("Thanks for shopping with us")
    assert has_optout_footer("Antworte STOPP zum Abmelden")
    paused = TemplateDeclaration("x", "en", status="PAUSED", footer="Reply STOP to opt out")
    utility = TemplateDeclaration("x", "en", category="UTILITY", footer="Reply STOP to opt out")
    assert "not APPROVED" in template_problems(paused)[0]
    assert "MARKETING" in template_problems(utility)[0]


def test_segments_match_slots_and_list_slots() -> None:
    slots = {"freq": "weekly", "topics": ["coffee", "cakes"], "vip": True}
    assert Segment.parse("freq=weekly").matches(slots)
    assert not Segment.parse("freq=monthly").matches(slots)
    assert Segment.parse("topics=cakes").matches(slots)
    assert Segment.parse("vip=true").matches(slots)
    assert not Segment.parse("city=Madrid").matches(slots)
    for bad in ("freq", "=weekly", "freq=", "a b=c"):
        with pytest.raises(CampaignError, match="--segment"):
            Segment.parse(bad)


def test_parameters_render_per_recipient_in_a_sandbox() -> None:
    spring = declarations_from(DOC)[0]
    params = parse_params(["first_name={{ profile_name }}", "shop={{ shop | upper }}"])
    compiled = compile_params(spring, params)
    assert render_params(compiled, subscriber()) == {"first_name": "Ana", "shop": "SOL"}
    with pytest.raises(RenderError, match="shop"):
        render_params(compiled, subscriber(slots={"age_ok": True}))  # StrictUndefined
    with pytest.raises(RenderError, match="empty"):
        render_params(compiled, subscriber(profile_name=""))
    unsafe = compile_params(spring, {"first_name": "{{ ''.__class__.__mro__ }}", "shop": "x"})
    with pytest.raises(RenderError):
        render_params(unsafe, subscriber())
    with pytest.raises(CampaignError, match="needs shop"):
        compile_params(spring, {"first_name": "x"})
    with pytest.raises(CampaignError, match="no parameter city"):
        compile_params(spring, {"first_name": "x", "shop": "y", "city": "z"})
    with pytest.raises(CampaignError, match="given twice"):
        parse_params(["a=1", "a=2"])
    comps = template_components(spring, {"first_name": "Ana", "shop": "Sol"})
    assert comps[0] == {"type": "body", "parameters": [
        {"type": "text", "text": "Ana", "parameter_name": "first_name"},
        {"type": "text", "text": "Sol", "parameter_name": "shop"}]}
    assert comps[1] == {"type": "button", "sub_type": "quick_reply", "index": "1",
                        "parameters": [{"type": "payload", "payload": "optout"}]}


def test_assess_asks_the_gate_first_then_preferences_then_rendering() -> None:
    spring = declarations_from(DOC)[0]
    audience = Audience("offers", "en", (Segment("freq", "weekly"),), spring,
                        {"first_name": "{{ profile_name }}", "shop": "{{ shop }}"})
    compiled = compile_params(spring, audience.params)

    def reason(conv: Conversation, facts: Facts = OK) -> str | None:
        return assess(conv, audience, compiled, PROJECT, NOW, facts, "c1").reason

    ok = assess(subscriber(), audience, compiled, PROJECT, NOW, OK, "c1")
    assert ok.eligible and ok.message is not None
    assert ok.message.kind is OutboundKind.TEMPLATE and ok.message.category is Category.MARKETING
    assert ok.message.purpose == "offers" and ok.message.template is not None
    assert ok.message.template.name == "spring_offer"
    withdrawn = {"offers": PurposeStatus(PurposeState.WITHDRAWN, NOW, "1.0")}
    # the gate wins over every preference: a withdrawn customer in Spanish outside the segment is no_consent
    assert reason(subscriber(consent=withdrawn, locale="es", slots={"age_ok": True})) == Reason.NO_CONSENT
    assert reason(subscriber(), Facts(True, False, 0)) == Reason.SUPPRESSED
    assert reason(subscriber(), Facts(None, False, 0)) == Reason.SUPPRESSION_UNKNOWN
    assert reason(subscriber(), Facts(False, True, 0)) == Reason.RESTRICTED
    assert reason(subscriber(), Facts(False, False, 3)) == Reason.FREQUENCY_CAP
    assert reason(subscriber(slots={"freq": "weekly", "shop": "Sol"})) == Reason.AGE_UNKNOWN
    assert reason(subscriber(locale="es")) == AudienceReason.LOCALE
    assert reason(subscriber(slots={"age_ok": True, "freq": "monthly", "shop": "Sol"})) == AudienceReason.SEGMENT
    assert reason(subscriber(slots={"age_ok": True, "freq": "weekly"})) == AudienceReason.RENDER_FAILED
    assert set(EXCLUSION_REASONS) >= {"no_consent", "suppressed", "segment", "locale", "render_failed"}
    assert not any(r.startswith("allowed") for r in EXCLUSION_REASONS)
