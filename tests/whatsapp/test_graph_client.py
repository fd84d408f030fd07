"""GraphClient against the sandbox over real HTTP: bodies, limits, error classes, retries, pacing."""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp
import pytest
from wa_kit import CUSTOMER, PNID, TOKEN, Receiver, Sandbox, make_client

from bot.core.messages import (
    Button,
    DeliveryStatus,
    ListRow,
    ListSection,
    Outbound,
    OutboundKind,
    TemplateRef,
)
from bot.errors import ChannelError, LimitError
from bot.whatsapp import graph_errors
from bot.whatsapp.graph_errors import (
    AuthError,
    ConsentRefused,
    OutcomeUnknown,
    PairRateLimited,
    RetryClass,
    TransientGraphError,
    WindowClosed,
)
from bot.whatsapp.payloads import Notification


def text(body: str = "Hello", to: str = CUSTOMER) -> Outbound:
    return Outbound(to=to, kind=OutboundKind.TEXT, body=body)


def buttons(to: str = CUSTOMER) -> Outbound:
    return Outbound(
        to=to,
        kind=OutboundKind.BUTTONS,
        body="Do you want our offers on WhatsApp?",
        header="Offers",
        footer="Reply STOP at any time",
        buttons=(Button("yes", "Yes, subscribe"), Button("no", "No, thanks")),
    )


def listing(to: str = CUSTOMER) -> Outbound:
    return Outbound(
        to=to,
        kind=OutboundKind.LIST,
        body="What would you like to hear about?",
        list_button="Choose topics",
        sections=(
            ListSection("Topics", (ListRow("offers", "Offers", "Weekly deals"), ListRow("news", "News"))),
        ),
    )


def template(to: str = CUSTOMER) -> Outbound:
    return Outbound(
        to=to,
        kind=OutboundKind.TEMPLATE,
        template=TemplateRef(
            name="consent_confirm",
            language="es_ES",
            components=(
                {"type": "body", "parameters": [{"type": "text", "text": "Ana"}]},
                {"type": "button", "sub_type": "quick_reply", "index": "0",
                 "parameters": [{"type": "payload", "payload": "CONFIRM:offers"}]},
            ),
        ),
    )


def requests_to(sandbox: Sandbox, number: str = CUSTOMER) -> list[float]:
    return [r.at for r in sandbox.sim.requests if r.kind == "message" and r.to == number]


def statuses_for(wamid: str):  # type: ignore[no-untyped-def]
    def match(n: Notification) -> bool:
        return any(s.message_id == wamid for s in n.statuses)

    return match


async def test_each_kind_is_accepted_and_recorded(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(session, sandbox)
    results = [await client.send(PNID, m) for m in (text(), buttons(), listing(), template())]
    assert all(r.wamid.startswith("wamid.") for r in results)
    assert len({r.wamid for r in results}) == 4
    assert results[0].wa_id == CUSTOMER and results[0].input == "+" + CUSTOMER
    assert results[3].message_status == "accepted"
    sent = sandbox.sim.sent_to(CUSTOMER)
    assert [b["type"] for b in sent] == ["text", "interactive", "interactive", "template"]
    assert sent[0]["to"] == "+15550001111"
    assert sent[1]["interactive"]["action"]["buttons"][0]["reply"] == {"id": "yes", "title": "Yes, subscribe"}
    assert sent[2]["interactive"]["action"]["sections"][0]["rows"][1] == {"id": "news", "title": "News"}
    assert sent[3]["template"]["components"][1]["parameters"][0]["payload"] == "CONFIRM:offers"
    bubbles = sandbox.sim.conversation(CUSTOMER)
    assert [b.kind for b in bubbles] == ["text", "buttons", "list", "template"]
    assert bubbles[3].quick_replies == [{"payload": "CONFIRM:offers", "title": "CONFIRM:offers"}]


async def test_status_webhooks_are_signed_and_complete(
    sandbox: Sandbox, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    client = make_client(session, sandbox)
    result = await client.send(PNID, text("Thanks!"), callback_data="turn-42")

    def all_three(n: Notification) -> bool:
        return any(s.message_id == result.wamid and s.status is DeliveryStatus.READ for s in n.statuses)

    await receiver.wait_for(all_three)
    assert receiver.posts and all(ok for _, _, ok in receiver.posts)
    got = [s for n in receiver.notifications() for s in n.statuses if s.message_id == result.wamid]
    assert [s.status for s in got] == [DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.READ]
    assert all(s.phone_number_id == PNID and s.subject == CUSTOMER for s in got)
    assert all(s.callback_data == "turn-42" for s in got)
    assert got[0].pricing == {"billable": False, "pricing_model": "PMP", "type": "free_customer_service",
                              "category": "service"}
    assert got[2].pricing is None


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (text("x" * 4097), "text.body"),
        (text(""), "text.body"),
        (Outbound(to=CUSTOMER, kind=OutboundKind.BUTTONS, body="Pick",
                  buttons=(Button("a", "x" * 21),)), "interactive.action.buttons[0].reply.title"),
        (Outbound(to=CUSTOMER, kind=OutboundKind.BUTTONS, body="Pick",
                  buttons=tuple(Button(str(i), f"B{i}") for i in range(4))), "interactive.action.buttons"),
        (Outbound(to=CUSTOMER, kind=OutboundKind.LIST, body="Pick", list_button="Open",
                  sections=(ListSection("S", tuple(ListRow(str(i), f"R{i}") for i in range(11))),)),
         "interactive.action.sections[].rows"),
        (Outbound(to=CUSTOMER, kind=OutboundKind.LIST, body="Pick", list_button="Open",
                  sections=(ListSection("S", (ListRow("r", "x" * 25),)),)),
         "interactive.action.sections[0].rows[0].title"),
        (Outbound(to="not-a-number", kind=OutboundKind.TEXT, body="hi"), "to"),
    ],
)
async def test_limit_violations_raise_before_sending(
    sandbox: Sandbox, session: aiohttp.ClientSession, message: Outbound, field: str
) -> None:
    client = make_client(session, sandbox)
    with pytest.raises(LimitError) as info:
        await client.send(PNID, message)
    assert info.value.field == field
    assert info.value.limit
    assert sandbox.sim.requests == []


async def test_simulator_rejects_bad_bodies_like_meta(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    url = f"{sandbox.graph_url}/v23.0/{PNID}/messages"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    body = {"messaging_product": "whatsapp", "to": "+" + CUSTOMER, "type": "interactive",
            "interactive": {"type": "button", "body": {"text": "Pick"}, "action": {"buttons": [
                {"type": "reply", "reply": {"id": "a", "title": "This title is far too long"}}]}}}
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == 100
    assert error["type"] == "OAuthException"
    assert error["fbtrace_id"]
    assert "interactive.action.buttons[0].reply.title" in error["error_data"]["details"]
    async with session.post(url, json={"messaging_product": "whatsapp", "to": "+" + CUSTOMER, "type": "text",
                                       "text": {"body": "hi"}}, headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == 190


async def test_wrong_token_is_an_auth_error_not_retried(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(session, sandbox)
    client._headers["Authorization"] = "Bearer expired"
    with pytest.raises(AuthError) as info:
        await client.send(PNID, text())
    assert info.value.code == 190 and info.value.operator_action
    assert info.value.retry is RetryClass.PERMANENT
    assert len(sandbox.sim.requests) == 1


async def test_server_errors_are_retried_with_backoff(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(session, sandbox, backoff_base=0.05)
    sandbox.sim.inject(1, count=2)  # Graph's HTTP 500 (code 1, is_transient)
    result = await client.send(PNID, text())
    assert result.attempts == 3
    log = sandbox.sim.requests
    assert [r.status for r in log] == [500, 500, 200]
    gaps = [b.at - a.at for a, b in itertools.pairwise(log)]
    assert gaps[0] >= 0.05 * 0.5 * 0.9  # first backoff: base x (0.5..1.0)
    assert gaps[1] >= 0.10 * 0.5 * 0.9  # doubled


async def test_transient_errors_give_up_after_max_retries(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(session, sandbox, max_retries=2)
    sandbox.sim.inject(131016, count=5)
    with pytest.raises(TransientGraphError) as info:
        await client.send(PNID, text())
    assert info.value.code == 131016 and info.value.http_status == 503
    assert len(sandbox.sim.requests) == 3


async def test_code_1_is_retried_at_most_three_times(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(session, sandbox, max_retries=10)
    sandbox.sim.inject(1, count=10)
    with pytest.raises(TransientGraphError):
        await client.send(PNID, text())
    assert len(sandbox.sim.requests) == 4


async def test_throughput_limit_is_retried(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(session, sandbox)
    sandbox.sim.inject(130429, count=2)
    result = await client.send(PNID, text())
    assert result.attempts == 3
    assert [r.code for r in sandbox.sim.requests] == [130429, 130429, None]
    assert graph_errors.classify(130429) is RetryClass.RATE_LIMITED


async def test_pair_rate_limit_pauses_only_that_customer(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    unit = 0.1
    client = make_client(session, sandbox, pair_backoff_unit=unit)
    other = "15550002222"
    sandbox.sim.inject(131056, count=1, to=CUSTOMER)
    first = asyncio.create_task(client.send(PNID, text()))
    await asyncio.sleep(0.02)  # the 131056 has happened; the customer is paused for 4^0 x unit
    await client.send(PNID, text(to=other))
    result = await first
    assert result.attempts == 2
    mine = requests_to(sandbox)
    assert len(mine) == 2
    assert mine[1] - mine[0] >= unit * 0.95  # waited 4^0 units (plus jitter)
    assert requests_to(sandbox, other)[0] < mine[1]  # the other customer was not held up


async def test_pair_rate_limit_gives_up_beyond_max_wait(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(session, sandbox, pair_backoff_unit=0.01, max_pair_wait=0.1, pair_interval=0.001)
    sandbox.sim.inject(131056, count=5)
    with pytest.raises(PairRateLimited) as info:
        await client.send(PNID, text())
    # waits 4^0 and 4^1 units (0.01, 0.04), then 4^2 = 0.16 > 0.1: raised with the suggested wait
    assert len(sandbox.sim.requests) == 3
    assert info.value.retry_after is not None and info.value.retry_after >= 0.16
    assert info.value.retry is RetryClass.RATE_LIMITED


@pytest.mark.parametrize(("code", "cls", "retry"), [
    (131047, WindowClosed, RetryClass.WINDOW),
    (131050, ConsentRefused, RetryClass.CONSENT),
])
async def test_async_failures_arrive_as_failed_status(
    sandbox: Sandbox, session: aiohttp.ClientSession, receiver: Receiver, code: int,
    cls: type[graph_errors.GraphError], retry: RetryClass,
) -> None:
    client = make_client(session, sandbox)
    sandbox.sim.inject(code)
    result = await client.send(PNID, template())  # Meta answers 200 + wamid first
    assert result.wamid.startswith("wamid.")
    found = await receiver.wait_for(statuses_for(result.wamid))
    status = next(s for n in found for s in n.statuses if s.message_id == result.wamid)
    assert status.status is DeliveryStatus.FAILED
    assert [e.code for e in status.errors] == [code]
    err = graph_errors.from_error_info(status.errors[0])
    assert isinstance(err, cls) and err.retry is retry
    await asyncio.sleep(0.05)
    later = [s.status for n in receiver.notifications() for s in n.statuses if s.message_id == result.wamid]
    assert later == [DeliveryStatus.FAILED]  # no sent/delivered/read after a failure
    assert sandbox.sim.conversation(CUSTOMER)[0].status == "failed"


async def test_timeout_is_outcome_unknown_and_not_resent(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(session, sandbox, timeout=0.3)
    sandbox.sim.inject("timeout")
    with pytest.raises(OutcomeUnknown) as info:
        await client.send(PNID, text(), callback_data="turn-7")
    assert info.value.callback_data == "turn-7"
    assert isinstance(info.value, ChannelError)
    assert len(sandbox.sim.requests) == 1  # no blind resend
    assert client.stats.outcome_unknown == 1
    # Meta may well have accepted it: the sandbox did
    assert [b.text for b in sandbox.sim.conversation(CUSTOMER)] == ["Hello"]


async def test_connection_refused_is_retried_then_network_error(session: aiohttp.ClientSession) -> None:
    from aiohttp.test_utils import unused_port

    from bot.whatsapp.client import GraphClient

    client = GraphClient(session, base_url=f"http://127.0.0.1:{unused_port()}", api_version="v23.0",
                         access_token="t", max_retries=1, backoff_base=0.01, timeout=1)
    with pytest.raises(graph_errors.NetworkError):
        await client.send(PNID, text())
    assert client.stats.requests == 2


async def test_pair_pacing_spaces_a_chatty_conversation(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    interval = 0.05
    client = make_client(session, sandbox, pair_interval=interval, pair_burst=3)
    await asyncio.gather(*(client.send(PNID, text(f"bubble {i}")) for i in range(7)))
    at = requests_to(sandbox)
    assert len(at) == 7
    assert at[2] - at[0] < interval  # a 3-bubble answer goes out at once
    for k in range(3, 7):  # then one per interval (arrival times: allow 20 ms of loopback jitter)
        assert at[k] - at[0] >= (k - 2) * interval - 0.02
    # the bodies kept their order
    assert [b["text"]["body"] for b in sandbox.sim.sent_to(CUSTOMER)] == [f"bubble {i}" for i in range(7)]


async def test_number_rate_limit_is_respected(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    rate = 100.0
    client = make_client(session, sandbox, rate_per_second=rate, burst=5)
    started = time.monotonic()
    await asyncio.gather(*(client.send(PNID, text(to=f"1555000{i:04d}")) for i in range(25)))
    at = sorted(r.at for r in sandbox.sim.requests)
    assert len(at) == 25
    assert at[-1] - started >= (25 - 5) / rate * 0.9
    # never more than burst + rate x window in any window
    for i, start in enumerate(at):
        in_window = sum(1 for t in at[i:] if t - start < 0.1)
        assert in_window <= 5 + rate * 0.1 + 3  # a little slack for loopback jitter


async def test_mark_read_and_typing_turn_the_customers_ticks_blue(
    sandbox: Sandbox, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sandbox.sim.add_customer(CUSTOMER, "Ana")
    wamid = await sandbox.sim.customer_sends_text(CUSTOMER, "hola")
    await receiver.wait_for(lambda n: any(m.id == wamid for m in n.messages))
    client = make_client(session, sandbox)
    await client.mark_read(PNID, wamid, typing=True)
    bubble = sandbox.sim.conversation(CUSTOMER)[0]
    assert bubble.status == "read"
    assert sandbox.sim.customers[CUSTOMER].typing_until > time.monotonic()
    assert sandbox.sim.requests[-1].kind == "mark_read"
    assert sandbox.sim.requests[-1].body["typing_indicator"] == {"type": "text"}


async def test_mark_read_of_unknown_message_is_invalid(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(session, sandbox)
    with pytest.raises(graph_errors.InvalidRequest) as info:
        await client.mark_read(PNID, "wamid.nope")
    assert info.value.code == 100 and "message_id" in info.value.details


async def test_injection_over_http_targets_one_customer(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    async with session.post(sandbox.url("/_sim/inject"), json={"code": 131056, "count": 1, "to": "15550002222"}) as r:
        assert r.status == 200
    async with session.post(sandbox.url("/_sim/inject"), json={"code": "nonsense"}) as r:
        assert r.status == 400
    client = make_client(session, sandbox, max_retries=0)
    await client.send(PNID, text())  # another customer: unaffected
    with pytest.raises(PairRateLimited):
        await client.send(PNID, text(to="15550002222"))


async def test_unknown_phone_number_id(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(session, sandbox)
    with pytest.raises(graph_errors.InvalidRequest) as info:
        await client.send("999", text())
    assert info.value.code == 100 and info.value.subcode == 33
    assert info.value.fbtrace_id
