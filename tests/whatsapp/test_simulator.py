"""The sandbox over HTTP: phone page, JSON API round trips, signed inbound webhooks, mounting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from wa_kit import CUSTOMER, DISPLAY, PNID, SECRET, TOKEN, Receiver, Sandbox, make_client

from bot.core.messages import Button, InboundKind, ListRow, ListSection, Outbound, OutboundKind, TemplateRef
from bot.whatsapp.client import GraphClient
from bot.whatsapp.payloads import Notification
from bot.whatsapp.signature import verify_signature
from bot.whatsapp.simulator import SIMULATOR, ApprovedText, create_simulator_app


async def api(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with session.request(method, url, json=body) as resp:
        return resp.status, await resp.json()


def has_message(wamid: str):  # type: ignore[no-untyped-def]
    def match(n: Notification) -> bool:
        return any(m.id == wamid for m in n.messages)

    return match


async def test_phone_page_and_script_are_served(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    async with session.get(sandbox.url("/")) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        page = await resp.text()
    assert '<form id="send-form"' in page and '<form id="new-customer"' in page
    assert 'data-base="/"' in page and 'src="/static/phone.js"' in page
    assert "15550009999" in page  # the business number is offered
    async with session.get(sandbox.url("/static/phone.js")) as resp:
        assert resp.status == 200 and "javascript" in resp.content_type
        script = await resp.text()
    assert "_sim/api/" in script and "innerHTML" not in script  # text only: no markup injection


async def test_json_api_round_trip(sandbox: Sandbox, session: aiohttp.ClientSession, receiver: Receiver) -> None:
    base = sandbox.url("/_sim/api/")
    status, created = await api(session, "POST", base + "customers", {"name": "Ana Garc\u00eda", "number": "+34 600 111 222"})
    assert status == 201 and created["number"] == "34600111222" and created["business"] == PNID
    status, again = await api(session, "POST", base + "customers", {"name": "Ana", "number": "34600111222"})
    assert status == 200 and again["name"] == "Ana"
    status, listing = await api(session, "GET", base + "customers")
    assert [c["number"] for c in listing["customers"]] == ["34600111222"]
    assert listing["businesses"] == [{"phone_number_id": PNID, "display": DISPLAY}]

    text = "\u00a1S\u00ed, quiero ofertas! \U0001f389"
    status, sent = await api(session, "POST", base + "customers/34600111222/messages", {"text": text})
    assert status == 201 and sent["id"].startswith("wamid.")
    (n,) = await receiver.wait_for(has_message(sent["id"]))
    raw, header, ok = receiver.posts[-1]
    assert ok and verify_signature(raw, header, SECRET)
    assert raw.isascii() and b"\\u00a1" in raw  # escaped like Meta, signed over those bytes
    m = n.messages[0]
    assert (m.kind, m.text, m.subject, m.profile_name, m.phone_number_id) == (
        InboundKind.TEXT, text, "34600111222", "Ana", PNID)

    # the bot answers with buttons through the real client; the customer taps one
    client = make_client(session, sandbox)
    result = await client.send(PNID, Outbound(to="34600111222", kind=OutboundKind.BUTTONS, body="Confirm?",
                                              buttons=(Button("yes", "Yes"), Button("no", "No"))))
    status, convo = await api(session, "GET", base + "customers/34600111222/messages?since=0")
    assert status == 200
    bot = [b for b in convo["messages"] if b["direction"] == "bot"]
    assert [(b["id"], b["kind"], b["text"], b["buttons"]) for b in bot] == [
        (result.wamid, "buttons", "Confirm?", [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}])]
    status, tap = await api(session, "POST", base + "customers/34600111222/taps",
                            {"message_id": result.wamid, "choice_id": "yes"})
    assert status == 201
    (n,) = await receiver.wait_for(has_message(tap["id"]))
    m = n.messages[0]
    assert (m.kind, m.payload, m.text, m.context_id) == (InboundKind.BUTTON_REPLY, "yes", "Yes", result.wamid)
    assert m.data["context_from"] == DISPLAY

    status, err = await api(session, "POST", base + "customers/34600111222/taps",
                            {"message_id": result.wamid, "choice_id": "maybe"})
    assert status == 404 and "maybe" in err["error"]
    status, err = await api(session, "POST", base + "customers/999999999/messages", {"text": "hi"})
    assert status == 404
    status, err = await api(session, "POST", base + "customers", {"name": "x", "number": "12"})
    assert status == 400 and "number" in err["error"]


async def test_list_rows_and_template_quick_replies_can_be_tapped(
    sandbox: Sandbox, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sim = sandbox.sim
    sim.add_customer(CUSTOMER, "Ana")
    client = make_client(session, sandbox)
    listed = await client.send(PNID, Outbound(
        to=CUSTOMER, kind=OutboundKind.LIST, body="Topics?", list_button="Choose",
        sections=(ListSection("Topics", (ListRow("offers", "Offers", "Weekly deals"), ListRow("news", "News"))),)))
    templ = await client.send(PNID, Outbound(to=CUSTOMER, kind=OutboundKind.TEMPLATE, template=TemplateRef(
        "promo", "en", ({"type": "button", "sub_type": "quick_reply", "index": "0",
                         "parameters": [{"type": "payload", "payload": "STOP_PROMOS"}]},))))
    row_tap = await sim.customer_taps(CUSTOMER, listed.wamid, "offers")
    qr_tap = await sim.customer_taps(CUSTOMER, templ.wamid, "STOP_PROMOS")
    await receiver.wait_for(has_message(qr_tap))
    got = {m.id: m for n in receiver.notifications() for m in n.messages}
    row, qr = got[row_tap], got[qr_tap]
    assert (row.kind, row.payload, row.text, row.data["description"], row.context_id) == (
        InboundKind.LIST_REPLY, "offers", "Offers", "Weekly deals", listed.wamid)
    assert (qr.kind, qr.payload, qr.context_id) == (InboundKind.TEMPLATE_BUTTON, "STOP_PROMOS", templ.wamid)
    # customer messages reach the bot in the order they were sent
    order = [m.id for n in receiver.notifications() for m in n.messages]
    assert order.index(row_tap) < order.index(qr_tap)


async def test_long_poll_wakes_on_a_bot_message(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    sandbox.sim.add_customer(CUSTOMER, "Ana")
    base = sandbox.url(f"/_sim/api/customers/{CUSTOMER}/messages")
    status, first = await api(session, "GET", base + "?since=0")
    cursor = first["cursor"]
    started = time.monotonic()
    poll = asyncio.create_task(api(session, "GET", f"{base}?since={cursor}&wait=5"))
    await asyncio.sleep(0.1)
    assert not poll.done()
    client = make_client(session, sandbox)
    await client.send(PNID, Outbound(to=CUSTOMER, kind=OutboundKind.TEXT, body="Welcome!"))
    status, update = await poll
    assert time.monotonic() - started < 2
    assert update["cursor"] > cursor
    assert [m["text"] for m in update["messages"]] == ["Welcome!"]
    # and the delivery ticks of that message arrive as later changes
    await asyncio.sleep(0.1)
    status, later = await api(session, "GET", f"{base}?since={update['cursor']}")
    assert status == 200
    assert later["messages"][-1]["status"] == "read"


async def test_customer_ticks_follow_webhook_and_read_receipt(
    sandbox: Sandbox, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sim = sandbox.sim
    sim.add_customer(CUSTOMER, "Ana")
    wamid = await sim.customer_sends_text(CUSTOMER, "hello")
    assert sim.conversation(CUSTOMER)[0].status == "sent"
    await receiver.wait_for(has_message(wamid))
    await asyncio.sleep(0.02)
    assert sim.conversation(CUSTOMER)[0].status == "delivered"  # the bot's webhook answered 200
    await make_client(session, sandbox).mark_read(PNID, wamid)
    assert sim.conversation(CUSTOMER)[0].status == "read"


async def test_webhook_failures_are_retried_like_meta(session: aiohttp.ClientSession) -> None:
    answers = [503, 500, 200]
    seen: list[int] = []

    async def flaky(request: web.Request) -> web.Response:
        await request.read()
        status = answers[len(seen)] if len(seen) < len(answers) else 200
        seen.append(status)
        return web.Response(status=status)

    hook_app = web.Application()
    hook_app.router.add_post("/webhook", flaky)
    hook = TestServer(hook_app, host="127.0.0.1")
    await hook.start_server()
    sim_app = create_simulator_app(app_secret=SECRET, webhook_url=str(hook.make_url("/webhook")),
                                   access_token=TOKEN, phone_numbers={PNID: DISPLAY})
    sim = sim_app[SIMULATOR]
    sim_server = TestServer(sim_app, host="127.0.0.1")
    await sim_server.start_server()
    try:
        sim.add_customer(CUSTOMER, "Ana")
        wamid = await sim.customer_sends_text(CUSTOMER, "anyone there?")
        await sim.drain()
        assert seen == [503, 500, 200]
        assert [(w.status, w.attempt) for w in sim.webhooks] == [(503, 1), (500, 2), (200, 3)]
        assert sim.conversation(CUSTOMER)[0].id == wamid and sim.conversation(CUSTOMER)[0].status == "delivered"
    finally:
        await sim_server.close()
        await hook.close()


async def test_mounted_inside_another_app(session: aiohttp.ClientSession, receiver: Receiver) -> None:
    bot_app = web.Application()
    sim_app = create_simulator_app(app_secret=SECRET, webhook_url=receiver.url, access_token=TOKEN,
                                   phone_numbers={PNID: DISPLAY, "100000000000002": "15550008888"},
                                   status_delays=(0.01, 0.01, 0.01))
    bot_app.add_subapp("/sandbox", sim_app)
    server = TestServer(bot_app, host="127.0.0.1")
    await server.start_server()
    try:
        async with session.get(server.make_url("/sandbox/")) as resp:
            page = await resp.text()
        assert 'data-base="/sandbox/"' in page and 'src="/sandbox/static/phone.js"' in page
        client = GraphClient(session, base_url=str(server.make_url("/sandbox/graph")), api_version="v26.0",
                             access_token=TOKEN)
        result = await client.send("100000000000002", Outbound(to=CUSTOMER, kind=OutboundKind.TEXT, body="hi"))
        await receiver.wait_for(lambda n: any(s.message_id == result.wamid for s in n.statuses))
        statuses = [s for n in receiver.notifications() for s in n.statuses]
        assert statuses[0].phone_number_id == "100000000000002"
        customer = sim_app[SIMULATOR].customers[CUSTOMER]
        assert customer.business == "100000000000002"
    finally:
        await server.close()  # the simulator's shutdown hook runs as part of the parent's


async def test_bsuid_customer_gets_from_user_id(sandbox: Sandbox, receiver: Receiver,
                                                session: aiohttp.ClientSession) -> None:
    sandbox.sim.add_customer(CUSTOMER, "Uma", user_id="ES.abc123")
    wamid = await sandbox.sim.customer_sends_text(CUSTOMER, "hola")
    (n,) = await receiver.wait_for(has_message(wamid))
    assert n.messages[0].subject == "ES.abc123" and n.messages[0].wa_id == CUSTOMER
    result = await make_client(session, sandbox).send(
        PNID, Outbound(to="ES.abc123", kind=OutboundKind.TEXT, body="hola Uma"))
    assert sandbox.sim.sent_to(CUSTOMER)[0]["recipient"] == "ES.abc123"
    assert result.wa_id == CUSTOMER


def test_simulator_needs_a_number() -> None:
    with pytest.raises(ValueError, match="phone_numbers"):
        create_simulator_app(app_secret=SECRET, webhook_url="http://127.0.0.1:1/webhook", access_token=TOKEN,
                             phone_numbers={})


async def test_known_templates_show_their_approved_text_and_button_titles(
    sandbox: Sandbox, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sim = sandbox.sim
    sim.templates[("consent_refresh", "en")] = ApprovedText(
        "You agreed to messages from {{1}} about {{2}}. Keep them?", ("Yes, keep them", "No, stop them"))
    sim.add_customer(CUSTOMER, "Ana")
    client = make_client(session, sandbox)
    components = (
        {"type": "body", "parameters": [{"type": "text", "text": "Café Aurora"}, {"type": "text", "text": "Offers"}]},
        {"type": "button", "sub_type": "quick_reply", "index": "0",
         "parameters": [{"type": "payload", "payload": "refresh_yes"}]},
        {"type": "button", "sub_type": "quick_reply", "index": "1",
         "parameters": [{"type": "payload", "payload": "refresh_no"}]},
    )
    known = await client.send(PNID, Outbound(to=CUSTOMER, kind=OutboundKind.TEMPLATE,
                                             template=TemplateRef("consent_refresh", "en", components)))
    unknown = await client.send(PNID, Outbound(to=CUSTOMER, kind=OutboundKind.TEMPLATE,
                                               template=TemplateRef("other", "en", components[:1])))
    bubbles = {b.id: b for b in sim.conversation(CUSTOMER)}
    shown = bubbles[known.wamid]
    assert shown.text == "You agreed to messages from Café Aurora about Offers. Keep them?"
    assert shown.quick_replies == [{"payload": "refresh_yes", "title": "Yes, keep them"},
                                   {"payload": "refresh_no", "title": "No, stop them"}]
    assert bubbles[unknown.wamid].text == "[template other · en] Café Aurora | Offers"
    tap = await sim.customer_taps(CUSTOMER, known.wamid, "refresh_yes")
    await receiver.wait_for(has_message(tap))
    got = {m.id: m for n in receiver.notifications() for m in n.messages}
    assert (got[tap].kind, got[tap].payload, got[tap].text) == (InboundKind.TEMPLATE_BUTTON, "refresh_yes",
                                                                "Yes, keep them")
