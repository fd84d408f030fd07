"""One message end to end through the real service: signed webhook -> inbox -> dispatcher -> engine ->
atomic step -> outbox -> send gate -> Graph API (the sandbox's fake, over HTTP) -> status webhooks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from service_kit import (
    PNID,
    Running,
    post_webhook,
    preferences_payload,
    start_service,
    status_payload,
    text_payload,
    wait_until,
)

from bot.core.consent import Actor, ConsentAction
from bot.core.conversation import Cause, PurposeState, Step, Timer
from bot.core.messages import Category, DeliveryStatus, Outbound, OutboundKind, TemplateRef
from bot.core.proof import suppression_key
from bot.runtime.dispatcher import Dispatcher
from bot.store.base import OutState

NUMBER = "34600111222"
KEY = f"{PNID}:{NUMBER}"


@pytest.fixture(params=["mongo", "memory"])
async def service(request: pytest.FixtureRequest, mongo_uri: str, mongo_database: str) -> AsyncIterator[Running]:
    env = {"MONGODB_URI": mongo_uri, "CONSENTBOT_DATABASE": mongo_database}
    running = await start_service(env, store_kind=request.param)
    running.sim.add_customer(NUMBER, "Ana")
    yield running
    await running.sim.drain()
    await running.stop()


async def bot_messages(service: Running, n: int) -> list[dict[str, object]]:
    async def enough() -> bool:
        return len(service.sim.sent_to(NUMBER)) >= n

    await wait_until(enough, what=f"{n} bot message(s)")
    return service.sim.sent_to(NUMBER)


def last_bot_bubble_id(service: Running) -> str:
    return [b for b in service.sim.conversation(NUMBER) if b.direction == "bot"][-1].id


async def subscribe(service: Running) -> None:
    """Walk the shipped flow's double opt-in by taps, as the customer would."""
    await service.sim.customer_sends_text(NUMBER, "hola")
    taps = ["consent_yes", "age_yes", "purpose_yes", "purpose_yes", "set_frequency:weekly", "confirm_yes"]
    for i, tap in enumerate(taps, start=1):
        await bot_messages(service, i)
        await service.sim.customer_taps(NUMBER, last_bot_bubble_id(service), tap)
    await bot_messages(service, len(taps) + 1)

    async def granted() -> bool:
        head = await service.services.store.conversations.get(KEY)
        return head is not None and head.granted("offers") and head.state == "subscribed"

    await wait_until(granted, what="consent granted")


async def test_text_in_reply_out_and_statuses_recorded(service: Running) -> None:
    wamid = await service.sim.customer_sends_text(NUMBER, "hola")
    sent = await bot_messages(service, 1)
    assert sent[0]["type"] == "interactive"
    assert "Café Aurora SL" in str(sent[0])  # the first-layer notice names the business
    store = service.services.store

    async def read() -> bool:
        entries = await store.transcript.for_conversation(KEY)
        out = [e for e in entries if e.direction == "out"]
        return bool(out) and out[0].delivery is DeliveryStatus.READ

    await wait_until(read, what="sent/delivered/read statuses on the transcript")
    entries = await store.transcript.for_conversation(KEY)
    assert [e.direction for e in entries] == ["in", "out"]
    assert entries[0].inbound is not None and entries[0].inbound.id == wamid
    out = entries[1]
    assert out.out_state is OutState.ACCEPTED and out.wamid.startswith("wamid.")
    assert [s for s, _ in out.statuses] == ["sent", "delivered", "read"]
    history = await store.steps.history(KEY)
    assert len(history) == 1
    assert history[0].cause == str(Cause.INBOUND) and history[0].cause_id == wamid
    assert [(t.source, t.dest) for t in history[0].transitions][-1][1] == "notice"
    async def drained() -> bool:
        return await store.inbox.count_pending() == 0

    await wait_until(drained, what="inbox drained")


async def test_same_webhook_three_times_gives_one_step_and_one_reply(service: Running) -> None:
    payload = text_payload(NUMBER, "wamid.DUPLICATE-1", "hola", name="Ana")
    secret = service.settings.app_secret.reveal()
    statuses = [await post_webhook(service.base, payload, secret) for _ in range(3)]
    assert statuses == [200, 200, 200]
    await bot_messages(service, 1)
    dispatcher = service.services.components["dispatcher"]
    await dispatcher.idle()
    await service.services.components["poller"].tick()
    await dispatcher.idle()
    assert len(service.sim.sent_to(NUMBER)) == 1
    history = await service.services.store.steps.history(KEY)
    assert [h.cause_id for h in history] == ["wamid.DUPLICATE-1"]


async def test_bad_signature_stores_nothing(service: Running) -> None:
    payload = text_payload(NUMBER, "wamid.FORGED", "hola")
    assert await post_webhook(service.base, payload, "not-the-secret") == 401
    assert await service.services.store.inbox.count_pending() == 0
    assert await service.services.store.conversations.get(KEY) is None


async def test_double_opt_in_then_meta_stop_records_withdrawal(service: Running) -> None:
    await subscribe(service)
    store = service.services.store
    chain = await store.ledger.history(NUMBER)
    confirmed = [r for r in chain if r.event.action is ConsentAction.CONFIRMED]
    assert {r.event.purpose for r in confirmed} == {"offers", "news"}
    assert all(r.event.evidence and r.event.evidence.get("message_id", "").startswith("wamid.") for r in confirmed)
    assert all(r.event.notice_sha256 for r in confirmed)
    # The texts the events hash were stored with the steps that showed them, where receipts read them.
    notices = service.services.components["privacy_store"].notices
    hashes = {r.event.notice_sha256 for r in chain}
    stored = await notices.many(sorted(hashes))
    assert {n.sha256 for n in stored} == hashes and all(n.locale == "es" for n in stored)
    assert any("Café Aurora SL" in n.text and n.kind == "first_layer" for n in stored)

    status = await post_webhook(service.base, preferences_payload(NUMBER, "stop"), service.settings.app_secret.reveal())
    assert status == 200

    async def withdrawn() -> bool:
        head = await store.conversations.get(KEY)
        return head is not None and not head.granted("offers") and not head.granted("news")

    await wait_until(withdrawn, what="withdrawal after user_preferences stop")
    chain = await store.ledger.history(NUMBER)
    meta = [r for r in chain if r.event.action is ConsentAction.WITHDRAWN]
    assert {r.event.purpose for r in meta} == {"offers", "news"}
    assert all(r.event.actor is Actor.META for r in meta)
    # A later resume from Meta never revives consent.
    await post_webhook(service.base, preferences_payload(NUMBER, "resume"), service.settings.app_secret.reveal())
    await service.services.components["dispatcher"].idle()
    head = await store.conversations.get(KEY)
    assert head is not None and not head.granted("offers")


async def test_status_131050_records_withdrawal(service: Running) -> None:
    await subscribe(service)
    store = service.services.store
    out = [e for e in await store.transcript.for_conversation(KEY) if e.direction == "out" and e.wamid]
    target = out[-1].wamid
    secret = service.settings.app_secret.reveal()
    assert await post_webhook(service.base, status_payload(NUMBER, target, "failed", 131050), secret) == 200

    async def withdrawn() -> bool:
        head = await store.conversations.get(KEY)
        return head is not None and head.consent["offers"].state is PurposeState.WITHDRAWN

    await wait_until(withdrawn, what="withdrawal after 131050")
    chain = await store.ledger.history(NUMBER)
    last = [r for r in chain if r.event.action is ConsentAction.WITHDRAWN]
    assert last and last[-1].event.actor is Actor.META
    entry = await store.transcript.by_wamid(target)
    assert entry is not None and entry.delivery is DeliveryStatus.FAILED


async def _gate(service: Running, message: Outbound, entry_id: str) -> tuple[OutState, str]:
    store = service.services.store
    sender = service.services.components["sender"]
    now = datetime.now(UTC)
    assert await store.transcript.add_outbound(KEY, NUMBER, message, now, "test", entry_id)
    [claimed] = await store.transcript.claim(sender.owner, now, 30, entry_ids=[entry_id])
    head = await store.conversations.get(KEY)
    state = await sender.send(claimed.id, message, head)
    entries = {e.id: e for e in await store.transcript.for_conversation(KEY)}
    return state, entries[entry_id].reason


async def test_gate_blocks_marketing_without_consent_and_records_why(service: Running) -> None:
    promo = Outbound(to=NUMBER, kind=OutboundKind.TEXT, body="20% off", category=Category.MARKETING, purpose="offers")
    await service.sim.customer_sends_text(NUMBER, "hola")
    await bot_messages(service, 1)
    await service.services.components["dispatcher"].idle()
    state, reason = await _gate(service, promo, "test:promo-1")
    assert (state, reason) == (OutState.BLOCKED, "age_unknown")  # the age gate comes first
    for i, tap in enumerate(["consent_yes", "age_yes"], start=1):
        await service.sim.customer_taps(NUMBER, last_bot_bubble_id(service), tap)
        await bot_messages(service, i + 1)
    await service.services.components["dispatcher"].idle()
    state, reason = await _gate(service, promo, "test:promo-2")
    assert (state, reason) == (OutState.BLOCKED, "no_consent")
    assert len(service.sim.sent_to(NUMBER)) == 3  # nothing more reached the Graph API
    assert service.services.metrics.gate_blocks.value(reason="no_consent") == 1


async def test_gate_outside_the_window_needs_a_template(service: Running) -> None:
    await service.sim.customer_sends_text(NUMBER, "hola")
    await bot_messages(service, 1)
    dispatcher = service.services.components["dispatcher"]
    await dispatcher.idle()
    store = service.services.store
    # Close the window: the customer's last message was 25 hours ago.
    head = await store.conversations.get(KEY)
    assert head is not None
    lease = await store.conversations.acquire(KEY, "test", datetime.now(UTC), 10)
    assert lease.acquired
    old = head.evolve(window_opened_at=datetime.now(UTC) - timedelta(hours=25), version=head.version + 1)
    await store.steps.commit(Step(conversation=old, seq=old.version, at=datetime.now(UTC), cause=Cause.SYSTEM), "test")
    free_form = Outbound(to=NUMBER, kind=OutboundKind.TEXT, body="Are you still there?")
    state, reason = await _gate(service, free_form, "test:late")
    assert (state, reason) == (OutState.BLOCKED, "window_closed_no_template")
    with_template = Outbound(
        to=NUMBER, kind=OutboundKind.TEXT, body="Are you still there?",
        fallback=TemplateRef(name="follow_up", language="en"), category=Category.UTILITY,
    )
    state, _ = await _gate(service, with_template, "test:late-template")
    assert state is OutState.ACCEPTED
    assert service.sim.sent_to(NUMBER)[-1]["type"] == "template"


async def test_gate_blocks_suppressed_subject(service: Running) -> None:
    await subscribe(service)
    privacy = service.services.components["privacy"]
    key = suppression_key(privacy.suppression_secret, NUMBER)
    await privacy.privacy.suppression.add(key, "marketing", datetime.now(UTC))
    before = len(service.sim.sent_to(NUMBER))
    promo = Outbound(to=NUMBER, kind=OutboundKind.TEXT, body="20% off", category=Category.MARKETING, purpose="offers")
    state, reason = await _gate(service, promo, "test:promo-suppressed")
    assert (state, reason) == (OutState.BLOCKED, "suppressed")
    assert len(service.sim.sent_to(NUMBER)) == before


async def test_due_timer_fires_from_the_store(service: Running) -> None:
    """Timers live on the conversation head in the database: whoever polls fires them (also after a
    restart, since nothing about them is kept in memory)."""
    await service.sim.customer_sends_text(NUMBER, "hola")
    await bot_messages(service, 1)
    await service.services.components["dispatcher"].idle()
    store = service.services.store
    head = await store.conversations.get(KEY)
    assert head is not None and head.state == "notice"
    lease = await store.conversations.acquire(KEY, "test", datetime.now(UTC), 10)
    assert lease.acquired
    due = head.evolve(timers=(Timer("no_such_trigger", datetime.now(UTC) - timedelta(seconds=1)),), version=head.version + 1)
    await store.steps.commit(Step(conversation=due, seq=due.version, at=datetime.now(UTC), cause=Cause.SYSTEM), "test")
    await service.services.components["poller"].tick()

    async def fired() -> bool:
        h = await store.conversations.get(KEY)
        return h is not None and not h.timers

    await wait_until(fired, what="the due timer to fire")
    history = await store.steps.history(KEY)
    assert history[-1].cause == str(Cause.TIMER) and history[-1].cause_id == "no_such_trigger"


async def test_metrics_expose_the_pipeline(service: Running) -> None:

    await service.sim.customer_sends_text(NUMBER, "hola")
    await bot_messages(service, 1)
    await service.services.components["dispatcher"].idle()
    async with aiohttp.ClientSession() as session, session.get(f"{service.base}/metrics") as response:
        text = await response.text()
    assert response.status == 200
    assert 'consentbot_steps_total{cause="inbound"} 1' in text
    assert 'consentbot_sends_total{result="accepted"}' in text
    assert "consentbot_inbox_pending" in text
    assert 'consentbot_webhooks_total{result="received"}' in text


async def test_every_response_carries_a_request_id(service: Running) -> None:
    async with aiohttp.ClientSession() as session:
        ids = []
        for _ in range(3):
            async with session.get(f"{service.base}/healthz") as response:
                ids.append(response.headers["X-Request-Id"])
        async with session.get(f"{service.base}/healthz", headers={"X-Request-Id": "from-the-proxy"}) as response:
            given = response.headers["X-Request-Id"]
    assert len(set(ids)) == 3 and all(i.isalnum() and 8 < len(i) <= 64 for i in ids)
    assert given == "from-the-proxy"


async def test_a_status_naming_the_entry_settles_a_send_whose_answer_was_lost(service: Running) -> None:
    """The Graph API accepted a message but its answer never reached us (timeout, crash): the status
    webhook carries the entry id as biz_opaque_callback_data, and the entry is adopted, never resent."""
    await service.sim.customer_sends_text(NUMBER, "hola")
    await bot_messages(service, 1)
    store = service.services.store
    now = datetime.now(UTC)
    message = Outbound(to=NUMBER, kind=OutboundKind.TEXT, body="Are you still there?")
    assert await store.transcript.add_outbound(KEY, NUMBER, message, now, "test", "test:lost-answer")
    [claimed] = await store.transcript.claim("a-process-that-died", now, 30, entry_ids=["test:lost-answer"])
    payload = status_payload(NUMBER, "wamid.LOST-ANSWER", "sent")
    payload["entry"][0]["changes"][0]["value"]["statuses"][0]["biz_opaque_callback_data"] = claimed.id
    assert await post_webhook(service.base, payload, service.settings.app_secret.reveal()) == 200

    async def adopted() -> bool:
        entry = await store.transcript.by_wamid("wamid.LOST-ANSWER")
        return entry is not None and entry.id == claimed.id and entry.out_state is OutState.ACCEPTED

    await wait_until(adopted, what="the entry to be adopted from its status")
    entry = await store.transcript.by_wamid("wamid.LOST-ANSWER")
    assert entry is not None and entry.delivery is DeliveryStatus.SENT
    await service.services.components["poller"].tick()
    await service.services.components["dispatcher"].idle()
    assert len(service.sim.sent_to(NUMBER)) == 1  # the lost-answer message was not sent again


async def test_status_131047_queues_the_approved_fallback_template(service: Running) -> None:
    """Meta reports later that a free-form message fell outside the window: its fallback template goes."""
    await service.sim.customer_sends_text(NUMBER, "hola")
    await bot_messages(service, 1)
    await service.services.components["dispatcher"].idle()
    message = Outbound(
        to=NUMBER, kind=OutboundKind.TEXT, body="Your table is ready", category=Category.UTILITY,
        fallback=TemplateRef(name="table_ready", language="en"),
    )
    state, _ = await _gate(service, message, "test:late-131047")
    assert state is OutState.ACCEPTED
    store = service.services.store
    entries = {e.id: e for e in await store.transcript.for_conversation(KEY)}
    wamid = entries["test:late-131047"].wamid
    secret = service.settings.app_secret.reveal()
    assert await post_webhook(service.base, status_payload(NUMBER, wamid, "failed", 131047), secret) == 200
    sent = await bot_messages(service, 3)
    assert sent[-1]["type"] == "template" and sent[-1]["template"]["name"] == "table_ready"
    entries = {e.id: e for e in await store.transcript.for_conversation(KEY)}
    assert entries["test:late-131047:fallback"].outbound is not None
    assert entries["test:late-131047:fallback"].outbound.kind is OutboundKind.TEMPLATE


async def test_consent_refresh_question_goes_as_the_approved_template_when_the_window_is_closed(
    service: Running,
) -> None:
    """700 days after the confirmation (730 - 30), with the customer silent for days: the refresh question
    leaves through the gate as the approved template `consent_refresh`, and its quick reply renews consent."""
    await subscribe(service)
    await service.services.components["dispatcher"].idle()
    store = service.services.store
    head = await store.conversations.get(KEY)
    assert head is not None and head.state == "subscribed"
    now = datetime.now(UTC)
    old = now - timedelta(days=701)
    aged = head.evolve(
        consent={p: s.__class__(s.state, old, s.notice_version) for p, s in head.consent.items()},
        window_opened_at=now - timedelta(days=3),
        timers=(Timer("refresh", now - timedelta(seconds=1)),),
        version=head.version + 1,
    )
    lease = await store.conversations.acquire(KEY, "test", now, 10)
    assert lease.acquired
    await store.steps.commit(Step(conversation=aged, seq=aged.version, at=now, cause=Cause.SYSTEM), "test")
    before = len(service.sim.sent_to(NUMBER))
    await service.services.components["poller"].tick()
    sent = (await bot_messages(service, before + 1))[-1]
    assert sent["type"] == "template"
    template = sent["template"]
    assert isinstance(template, dict) and template["name"] == "consent_refresh"
    assert template["language"] == {"code": "es"}
    payloads = [c["parameters"][0]["payload"] for c in template["components"] if c["type"] == "button"]
    assert payloads == ["refresh_yes", "refresh_no"]

    async def settled() -> bool:  # the simulator has the message before the send's answer is recorded
        return (await store.transcript.for_conversation(KEY))[-1].out_state is OutState.ACCEPTED

    await wait_until(settled, what="the question's send recorded")
    question = (await store.transcript.for_conversation(KEY))[-1]
    assert question.outbound is not None
    assert question.outbound.fallback is not None and question.outbound.fallback.name == "consent_refresh"
    assert question.reason == "allowed_fallback"  # the gate's reason: sent as its approved template

    await service.sim.customer_taps(NUMBER, last_bot_bubble_id(service), "refresh_yes")

    async def refreshed() -> bool:
        h = await store.conversations.get(KEY)
        return h is not None and h.state == "subscribed" and all(
            s.since > now for s in h.consent.values() if s.state is PurposeState.GRANTED)

    await wait_until(refreshed, what="consent refreshed")
    events = await store.ledger.history(NUMBER)
    assert [e.event.action for e in events[-2:]] == [ConsentAction.REFRESHED, ConsentAction.REFRESHED]


async def test_an_unconfirmed_request_expires_through_the_poller(service: Running) -> None:
    """The confirmation request's `expire` timer, due (as after a restart), fires the flow's transition:
    EXPIRED events in the ledger and the conversation moves on (not only the timer removed)."""
    await service.sim.customer_sends_text(NUMBER, "hola")
    for i, tap in enumerate(["consent_yes", "age_yes", "purpose_yes", "purpose_yes", "set_frequency:weekly"], 1):
        await bot_messages(service, i)
        await service.sim.customer_taps(NUMBER, last_bot_bubble_id(service), tap)
    await bot_messages(service, 6)
    await service.services.components["dispatcher"].idle()
    store = service.services.store
    head = await store.conversations.get(KEY)
    assert head is not None and head.state == "confirm" and {t.name for t in head.timers} == {"remind", "expire"}
    now = datetime.now(UTC)
    due = head.evolve(timers=tuple(Timer(t.name, now - timedelta(seconds=1)) if t.name == "expire" else t
                                   for t in head.timers), version=head.version + 1)
    assert (await store.conversations.acquire(KEY, "test", now, 10)).acquired
    await store.steps.commit(Step(conversation=due, seq=due.version, at=now, cause=Cause.SYSTEM), "test")
    await service.services.components["poller"].tick()

    async def expired() -> bool:
        h = await store.conversations.get(KEY)
        return h is not None and h.state == "declined"

    await wait_until(expired, what="the request to expire")
    h = await store.conversations.get(KEY)
    assert h is not None and not h.timers
    assert {p: s.state for p, s in h.consent.items()} == {"offers": PurposeState.EXPIRED, "news": PurposeState.EXPIRED}
    actions = [r.event.action for r in await store.ledger.history(NUMBER)]
    assert actions[-2:] == [ConsentAction.EXPIRED, ConsentAction.EXPIRED]


async def test_asking_for_my_data_in_the_chat_opens_a_request_with_its_deadline(service: Running) -> None:
    """Typed in WhatsApp, through the whole service: the bot acknowledges, and the request is open for an
    operator with the one-month deadline (GDPR 12(3))."""
    await service.sim.customer_sends_text(NUMBER, "hola")
    await bot_messages(service, 1)
    await service.sim.customer_sends_text(NUMBER, "Mis datos")
    await service.sim.customer_sends_text(NUMBER, "borrar mis datos")
    await bot_messages(service, 3)
    privacy = service.services.components["privacy"]

    async def opened() -> bool:
        return len(await privacy.open_requests()) == 2

    await wait_until(opened, what="two open data requests")
    requests = {str(r.kind): r for r in await privacy.open_requests()}
    assert set(requests) == {"access", "erasure"}
    for r in requests.values():
        assert r.subject == NUMBER and r.actor == "customer"
        assert timedelta(days=28) <= r.due_at - r.received_at <= timedelta(days=31) and "asked in chat" in r.note


async def test_a_subscriber_types_baja_then_marketing_is_allowed_no_more(service: Running) -> None:
    """Opt-out as easy as opt-in, through the whole service: a typed keyword withdraws every purpose,
    the customer gets the confirmation, and the gate refuses the next promotion (no_consent)."""
    promo = Outbound(to=NUMBER, kind=OutboundKind.TEXT, body="20% off", category=Category.MARKETING, purpose="offers")
    await subscribe(service)
    await service.services.components["dispatcher"].idle()
    state, reason = await _gate(service, promo, "test:promo-before")
    assert (state, reason) == (OutState.ACCEPTED, "allowed_in_window")
    sent = len(service.sim.sent_to(NUMBER))
    await service.sim.customer_sends_text(NUMBER, "Báj a!!")
    confirmation = (await bot_messages(service, sent + 1))[-1]
    assert "ALTA" in str(confirmation)  # how to come back, in Spanish
    await service.services.components["dispatcher"].idle()
    head = await service.services.store.conversations.get(KEY)
    assert head is not None and not head.granted("offers") and not head.granted("news")
    actions = [r.event.action for r in await service.services.store.ledger.history(NUMBER)]
    assert actions[-2:] == [ConsentAction.WITHDRAWN, ConsentAction.WITHDRAWN]
    state, reason = await _gate(service, promo, "test:promo-after")
    assert (state, reason) == (OutState.BLOCKED, "no_consent")


async def test_a_send_whose_sender_died_mid_attempt_waits_for_its_status_instead_of_going_twice(
    service: Running,
) -> None:
    """A process committed a reply, handed it to the Graph API and died before recording the answer
    (kill -9). When its lease expires the poller takes the entry over *in doubt*: it is not sent again
    at once; the status webhook that names it (callback data) adopts Meta's wamid, and it is never
    sent twice, however late that status comes."""
    await service.sim.customer_sends_text(NUMBER, "hola")
    await bot_messages(service, 1)
    await service.services.components["dispatcher"].idle()
    store = service.services.store
    head = await store.conversations.get(KEY)
    assert head is not None
    now = datetime.now(UTC)
    reply = Outbound(to=NUMBER, kind=OutboundKind.TEXT, body="an answer", category=Category.SERVICE)
    nxt = head.evolve(version=head.version + 1, updated_at=now)
    assert (await store.conversations.acquire(KEY, "ghost", now, 10)).acquired
    [entry_id] = await store.steps.commit(
        Step(conversation=nxt, seq=nxt.version, at=now, cause=Cause.SYSTEM, outbox=(reply,)), "ghost", 0.3
    )
    service.sim.status_delays = (1.5, 1.6, 1.7)  # Meta's statuses come late (the bot was down)
    await service.services.components["client"].send(PNID, reply, callback_data=entry_id)  # the ghost's attempt
    await asyncio.sleep(0.4)  # the ghost's lease runs out
    await service.services.components["poller"].tick()
    await asyncio.sleep(0.2)

    def sends() -> int:
        return sum(1 for b in service.sim.sent_to(NUMBER) if b.get("biz_opaque_callback_data") == entry_id)

    assert sends() == 1  # taken over in doubt: not sent again
    waiting = next(e for e in await store.transcript.for_conversation(KEY) if e.id == entry_id)
    assert waiting.out_state is OutState.PENDING and waiting.reason == "outcome_unknown"

    async def adopted() -> bool:
        e = next(e for e in await store.transcript.for_conversation(KEY) if e.id == entry_id)
        return e.out_state is OutState.ACCEPTED and bool(e.wamid)

    await wait_until(adopted, what="the late status to adopt the wamid")
    await service.services.components["poller"].tick()
    await asyncio.sleep(0.2)
    assert sends() == 1


async def test_the_dispatcher_runs_as_many_workers_as_configured() -> None:
    running = await start_service({"CONSENTBOT_WORKERS": "3"}, store_kind="memory")
    try:
        dispatcher = next(p for p in running.services.background if isinstance(p, Dispatcher))
        assert len(dispatcher._tasks) == 3
        running.sim.add_customer(NUMBER, "Ana")
        await running.sim.customer_sends_text(NUMBER, "hola")

        async def answered() -> bool:
            return len(running.sim.sent_to(NUMBER)) == 1

        await wait_until(answered, what="the first reply")
    finally:
        await running.sim.drain()
        await running.stop()


def test_finished_turns_are_remembered_for_the_horizon_only_and_in_order() -> None:
    from bot.runtime.dispatcher import FINISHED_HORIZON
    from bot.runtime.metrics import Metrics
    from bot.store.memory import MemoryStore

    d = Dispatcher(MemoryStore(), lambda *a: None, None, Metrics(), "svc")  # type: ignore[arg-type]
    for i in range(100_000):  # a busy minute and more: one new conversation every millisecond
        d._mark_finished(f"k{i}", i / 1000)
    assert len(d._finished) == FINISHED_HORIZON * 1000 + 1  # the last 60 s, nothing older
    assert next(iter(d._finished)) == f"k{100_000 - 60_001}"
    d._mark_finished("k50000", 100.0)  # a conversation that runs again moves to the newest end
    assert list(d._finished)[-1] == "k50000"
    d.notify_recovered(["k99999", "k10"], since=99.0)  # k99999 finished after the query began: skipped
    assert d._queued == {"k10"}


@pytest.mark.parametrize("store_kind", ["memory", "mongo"])
async def test_a_turn_gives_up_its_store_slot_while_meta_answers(
    store_kind: str, mongo_uri: str, mongo_database: str
) -> None:
    """Turns doing database work are few (a slow database serves the webhook's inbox writes first), but
    a turn waiting for the Graph API holds none: with one store slot, three customers' replies are
    still in flight at once. The memory store, whose calls never wait, runs without the bound."""
    env = {"CONSENTBOT_WORKERS": "8", "CONSENTBOT_STORE_SLOTS": "1", "MONGODB_URI": mongo_uri,
           "CONSENTBOT_DATABASE": mongo_database}
    running = await start_service(env, store_kind=store_kind)
    in_flight, most = 0, 0

    class SlowGraph:
        async def send(self, phone_number_id: str, message: Outbound, *, callback_data: str | None = None) -> Any:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.3)
            in_flight -= 1
            return SimpleNamespace(wamid=f"wamid.slow.{callback_data}")

    try:
        dispatcher = running.services.components["dispatcher"]
        running.services.components["sender"].client = SlowGraph()
        customers = ["34600000101", "34600000102", "34600000103"]
        for number in customers:
            running.sim.add_customer(number, "Ana")
            await running.sim.customer_sends_text(number, "hola")

        async def all_accepted() -> bool:
            states = [e.out_state for n in customers
                      for e in await running.services.store.transcript.for_conversation(f"{PNID}:{n}")
                      if e.direction == "out"]
            return states == [OutState.ACCEPTED] * 3

        await wait_until(all_accepted, what="three accepted replies")
        assert most == 3
        if store_kind == "memory":
            assert dispatcher._store_slots is None
        else:
            assert dispatcher._store_slots._value == 1  # every slot given back
    finally:
        await running.sim.drain()
        await running.stop()
