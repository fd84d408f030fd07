"""decide(): the engine paths that scenario files cannot express, and invariants over every state."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.core.consent import Actor, ConsentAction
from bot.core.conversation import Conversation, PurposeState, PurposeStatus, Timer
from bot.core.engine import Decision, MetaSignal, TimerFired, decide, guess_locale
from bot.core.flowspec import OPTED_OUT, load_flow
from bot.core.intents import OPTOUT_EXACT_ONLY, OPTOUT_WORDS
from bot.core.machine import CompiledFlow, FlowFamily, compile_flow
from bot.core.messages import Category, Inbound, InboundKind
from bot.core.sample import SAMPLE_PROJECT as P
from bot.errors import FlowError
from bot.runtime.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(ROOT, P)
FAMILY = CATALOG.family("consent")
FLOW = FAMILY.newest
NOW = datetime(2025, 3, 3, 10, 0, tzinfo=UTC)
_n = [0]


def msg(
    text: str | None = None, payload: str | None = None, kind: InboundKind | None = None, subject: str = "34600111222"
) -> Inbound:
    _n[0] += 1
    k = kind or (InboundKind.BUTTON_REPLY if payload is not None else InboundKind.TEXT)
    return Inbound(
        id=f"wamid.t{_n[0]}",
        phone_number_id="pn",
        subject=subject,
        timestamp=0,
        kind=k,
        wa_id=subject,
        text=text,
        payload=payload,
        context_id="wamid.prompt",
        profile_name="Ana",
    )


def run(*events: Inbound, conv: Conversation | None = None, now: datetime = NOW) -> tuple[Conversation, list[Decision]]:
    out = []
    for e in events:
        d = decide(conv, e, FAMILY, P, now)
        conv = d.conversation
        out.append(d)
    assert conv is not None
    return conv, out


def subscribed() -> Conversation:
    conv, _ = run(
        msg("hola"),
        msg(payload="consent_yes"),
        msg(payload="age_yes"),
        msg(payload="purpose_yes"),
        msg(payload="purpose_yes"),
        msg(payload="set_frequency:weekly"),
        msg(payload="confirm_yes"),
    )
    assert conv.state == "subscribed"
    return conv


def test_first_contact_starts_on_newest_version_with_guessed_locale() -> None:
    conv, (d,) = run(msg("hola"))
    assert (conv.flow_id, conv.flow_version, conv.locale, conv.state) == ("consent", FLOW.version, "es", "notice")
    assert conv.version == 0 and conv.window_opened_at == NOW and conv.consumed == (d.conversation.consumed[0],)
    assert conv.profile_name == "Ana" and conv.key == "pn:34600111222"
    assert d.transitions[0].trigger == "inbound" and d.consent == ()
    assert guess_locale(msg("hi", subject="447700900123"), ("en", "es"), "es") == "en"
    assert guess_locale(msg("hi", subject="4915112345678"), ("en", "es"), "en") == "en"  # de not offered


def test_version_is_not_touched_and_consumed_keeps_64() -> None:
    conv = subscribed().evolve(version=7)
    for i in range(70):
        conv = decide(conv, msg(f"question {i}"), FAMILY, P, NOW).conversation
    assert conv.version == 7 and len(conv.consumed) == 64 and conv.consumed[-1] == f"wamid.t{_n[0]}"


def test_duplicate_inbound_is_a_no_op() -> None:
    first = msg("hola")
    conv, _ = run(first)
    d = decide(conv, first, FAMILY, P, NOW + timedelta(minutes=1))
    assert d.conversation == conv and d.outbox == () and d.notes


def test_notice_hash_is_of_the_exact_text_and_events_carry_the_evidence() -> None:
    conv, ds = run(msg("hi", subject="447700900123"))
    (notice,) = ds[0].notices
    assert notice.kind == "first_layer" and notice.locale == "en" and notice.version == P.notice_version
    assert notice.sha256 == hashlib.sha256(notice.text.encode()).hexdigest()
    assert P.controller.name in notice.text and P.controller.privacy_policy_url in notice.text
    tap = msg(payload="confirm_yes", subject="447700900123")
    conv, ds = run(
        msg(payload="consent_yes", subject="447700900123"),
        msg(payload="age_yes", subject="447700900123"),
        msg(payload="purpose_yes", subject="447700900123"),
        msg(payload="purpose_no", subject="447700900123"),
        msg(payload="set_frequency:weekly", subject="447700900123"),
        tap,
        conv=conv,
    )
    (requested,) = ds[4].consent
    assert requested.action is ConsentAction.REQUESTED and requested.notice_sha256 == notice.sha256
    (prompt,) = ds[4].notices
    assert prompt.kind == "prompt" and "Please confirm" in prompt.text
    (confirmed,) = ds[5].consent
    assert confirmed.action is ConsentAction.CONFIRMED and confirmed.purpose == "offers"
    assert confirmed.notice_sha256 == prompt.sha256  # the exact confirmation text the tap answered
    assert confirmed.evidence is not None
    assert confirmed.evidence["message_id"] == tap.id and confirmed.evidence["payload"] == "confirm_yes"
    assert confirmed.evidence["first_layer_sha256"] == notice.sha256
    assert (confirmed.method, confirmed.actor, confirmed.flow_id, confirmed.flow_version, confirmed.locale) == (
        "button",
        Actor.CUSTOMER,
        "consent",
        FLOW.version,
        "en",
    )
    assert conv.consent["offers"].state is PurposeState.GRANTED


def test_consent_cache_follows_the_events() -> None:
    conv = subscribed()
    d = decide(conv, msg("STOP"), FAMILY, P, NOW)
    assert [(e.purpose, e.action) for e in d.consent] == [
        ("offers", ConsentAction.WITHDRAWN),
        ("news", ConsentAction.WITHDRAWN),
    ]
    assert {p: s.state for p, s in d.conversation.consent.items()} == {
        "offers": PurposeState.WITHDRAWN,
        "news": PurposeState.WITHDRAWN,
    }
    (out,) = d.outbox
    assert out.category is Category.UTILITY and "Ofertas, Novedades" in out.body and "ALTA" in out.body
    assert "Lista Robinson" in out.body


def _in_state(state: str, granted: bool) -> Conversation:
    conv = Conversation.start("pn", "34600999000", "consent", FLOW.version, state, "es", NOW - timedelta(hours=1))
    if granted:
        conv = conv.evolve(
            consent={
                "offers": PurposeStatus(PurposeState.GRANTED, NOW),
                "news": PurposeStatus(PurposeState.REQUESTED, NOW),
            },
            timers=(Timer("expire", NOW + timedelta(hours=3)),),
        )
    return conv


@pytest.mark.parametrize("state", sorted(FLOW.states))
def test_optout_from_every_state_with_every_keyword_and_the_button(state: str) -> None:
    for word in (*OPTOUT_WORDS, *OPTOUT_EXACT_ONLY, None):
        for paused in (False, True):
            conv = _in_state(state, granted=True).evolve(paused=paused)
            event = msg(payload="optout", subject=conv.subject) if word is None else msg(word, subject=conv.subject)
            d = decide(conv, event, FAMILY, P, NOW)
            assert d.conversation.state == OPTED_OUT, (state, word)
            assert [(e.purpose, e.action) for e in d.consent] == [
                ("offers", ConsentAction.WITHDRAWN),
                ("news", ConsentAction.WITHDRAWN),
            ]
            assert len(d.outbox) == 1 and d.outbox[0].template_id == "optout_confirm"
            assert d.conversation.timers == () and d.timers_cancelled == ("expire",)
            assert all(o.category is not Category.MARKETING for o in d.outbox)


@pytest.mark.parametrize("state", sorted(FLOW.states))
@pytest.mark.parametrize("kind", list(InboundKind))
def test_any_inbound_kind_in_any_state_never_crashes_nor_grants(state: str, kind: InboundKind) -> None:
    conv = _in_state(state, granted=False)
    for text, payload in ((None, None), ("", ""), ("🙂", "nonsense:payload"), ("x" * 5000, "x" * 300)):
        d = decide(
            conv,
            Inbound(
                id=f"w-{kind}-{text!r:.5}",
                phone_number_id="pn",
                subject=conv.subject,
                timestamp=0,
                kind=kind,
                text=text,
                payload=payload,
                data={"weird": [1, {"a": None}]},
            ),
            FAMILY,
            P,
            NOW,
        )
        assert all(e.action is not ConsentAction.CONFIRMED for e in d.consent)
        assert d.conversation.window_opened_at == NOW


def test_paused_answers_nothing_but_still_raises_requests() -> None:
    conv = subscribed().evolve(paused=True)
    for text in ("hola", "AYUDA", "PREFERENCIAS", "ALTA"):
        d = decide(conv, msg(text), FAMILY, P, NOW)
        assert d.outbox == () and d.conversation.state == "subscribed" and d.consent == ()
    d = decide(conv, msg("BORRAR MIS DATOS"), FAMILY, P, NOW)
    assert d.requests == ("erase",) and d.outbox == ()


def test_timer_that_is_not_set_does_nothing() -> None:
    conv = subscribed()
    d = decide(conv, TimerFired("expire"), FAMILY, P, NOW + timedelta(days=2))
    assert d.conversation.state == "subscribed" and d.outbox == () and d.consent == () and d.notes


def test_expiry_while_paused_records_but_sends_nothing() -> None:
    conv, _ = run(
        msg("hola"),
        msg(payload="consent_yes"),
        msg(payload="age_yes"),
        msg(payload="purpose_yes"),
        msg(payload="purpose_no"),
        msg(payload="set_frequency:weekly"),
    )
    conv = conv.evolve(paused=True)
    d = decide(conv, TimerFired("remind"), FAMILY, P, NOW + timedelta(hours=12))
    assert d.outbox == () and d.conversation.timers == (conv.timers[1],)
    d = decide(d.conversation, TimerFired("expire"), FAMILY, P, NOW + timedelta(hours=24))
    assert [e.action for e in d.consent] == [ConsentAction.EXPIRED] and d.consent[0].actor is Actor.SYSTEM
    assert d.outbox == () and d.conversation.state == "declined"


def test_meta_stop_on_first_contact_and_resume_never_revives() -> None:
    d = decide(None, MetaSignal("marketing_stop", "34600111333", "pn", id="pref:1"), FAMILY, P, NOW)
    assert d.conversation.state == OPTED_OUT and d.outbox == () and d.consent == ()
    conv = subscribed()
    d = decide(conv, MetaSignal("error_131050", conv.subject, "pn", id="e1"), FAMILY, P, NOW)
    assert {e.actor for e in d.consent} == {Actor.META} and {e.method for e in d.consent} == {"status_131050"}
    assert all(e.evidence is not None and e.evidence["signal_id"] == "e1" for e in d.consent)
    d2 = decide(d.conversation, MetaSignal("marketing_resume", conv.subject, "pn", id="r1"), FAMILY, P, NOW)
    assert d2.consent == () and not d2.conversation.granted("offers") and d2.conversation.state == OPTED_OUT


def test_timer_without_conversation_is_an_error() -> None:
    with pytest.raises(FlowError):
        decide(None, TimerFired("expire"), FAMILY, P, NOW)


def test_conversation_stays_on_its_version_and_migrates_only_when_it_is_gone() -> None:
    text = (ROOT / "flows" / "consent.yaml").read_text(encoding="utf-8")
    v2: CompiledFlow = compile_flow(load_flow(text.replace('version: "1"', 'version: "2"')), FLOW.templates)
    family = FlowFamily([FLOW, v2])
    old = subscribed()
    assert decide(old, msg("hola"), family, P, NOW).conversation.flow_version == "1"
    assert decide(None, msg("hola"), family, P, NOW).conversation.flow_version == "2"
    with pytest.raises(FlowError, match="version"):
        decide(old, msg("hola"), v2, P, NOW)
    only_v2 = FlowFamily([v2])
    d = decide(old, msg("hola"), only_v2, P, NOW)
    assert d.conversation.flow_version == "2" and d.transitions[0].trigger == "migrate" and d.notes


def test_human_request_sets_needs_person() -> None:
    d = decide(subscribed(), msg("AGENTE"), FAMILY, P, NOW)
    assert d.conversation.needs_person and d.requests == ("human",) and d.outbox[0].category is Category.SERVICE


def test_refresh_question_carries_its_approved_template_and_the_taps_come_back() -> None:
    conv = subscribed()
    timer = next(t for t in conv.timers if t.name == "refresh")
    granted = min(s.since for s in conv.consent.values() if s.state is PurposeState.GRANTED)
    assert timer.due == granted + timedelta(days=P.retention.consent_refresh_days - 30)
    d = decide(conv, TimerFired("refresh"), FAMILY, P, timer.due)
    assert d.conversation.state == "refresh"
    (question,) = d.outbox
    assert question.category is Category.UTILITY and question.fallback is not None
    assert conv.locale == "es"  # a Spanish number
    assert (question.fallback.name, question.fallback.language) == ("consent_refresh", "es")
    body, keep, stop = question.fallback.components
    titles = ", ".join(p.title("es", "en") for p in P.purposes if conv.consent.get(p.id) is not None
                       and conv.consent[p.id].state is PurposeState.GRANTED)
    assert body == {"type": "body", "parameters": [{"type": "text", "text": P.controller.name},
                                                   {"type": "text", "text": titles}]}
    assert [keep["parameters"][0]["payload"], stop["parameters"][0]["payload"]] == ["refresh_yes", "refresh_no"]
    assert [keep["index"], stop["index"]] == ["0", "1"]
    # the template's quick reply comes back as a template button tap, months later
    tap = Inbound(id="wamid.tpl", phone_number_id="pn", subject=conv.subject, timestamp=0,
                  kind=InboundKind.TEMPLATE_BUTTON, wa_id=conv.subject, text="Sí, seguir", payload="refresh_yes")
    later = timer.due + timedelta(days=20)
    kept = decide(d.conversation, tap, FAMILY, P, later)
    assert kept.conversation.state == "subscribed"
    assert [(e.purpose, e.action) for e in kept.consent] == [
        (p, ConsentAction.REFRESHED) for p, s in conv.consent.items() if s.state is PurposeState.GRANTED]
    assert all(s.since == later for s in kept.conversation.consent.values() if s.state is PurposeState.GRANTED)
    next_timer = next(t for t in kept.conversation.timers if t.name == "refresh")
    assert next_timer.due == later + timedelta(days=P.retention.consent_refresh_days - 30)


def test_refresh_due_during_a_takeover_waits_instead_of_being_muted() -> None:
    conv = subscribed().evolve(paused=True)
    timer = next(t for t in conv.timers if t.name == "refresh")
    d = decide(conv, TimerFired("refresh"), FAMILY, P, timer.due)
    assert d.conversation.state == "subscribed" and d.outbox == () and d.transitions == ()
    (again,) = [t for t in d.conversation.timers if t.name == "refresh"]
    assert again.due == timer.due + timedelta(hours=6)
    back = decide(d.conversation.evolve(paused=False), TimerFired("refresh"), FAMILY, P, again.due)
    assert back.conversation.state == "refresh" and len(back.outbox) == 1
