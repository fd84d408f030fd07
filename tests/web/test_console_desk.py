"""Takeover, agent replies through the send gate, hand-back and live updates, through the console's
HTTP surface. Replies travel over HTTP to the sandbox's fake Graph API (the real Graph client), and
the sandbox's signed status webhooks come back to the real webhook route."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.core.conversation import Cause, Conversation, Step
from bot.core.messages import DeliveryStatus, Inbound, InboundKind, StatusUpdate
from bot.runtime.desk import Desk, DeskRefused
from bot.runtime.inbox import InboxWriter
from bot.runtime.outbox import Sender
from bot.runtime.services import Services
from bot.settings import SANDBOX_APP_SECRET, SANDBOX_TOKEN, SANDBOX_VERIFY_TOKEN, load_settings
from bot.store.accounts import Agent, AuditQuery
from bot.store.accounts_memory import MemoryAccountStore
from bot.store.base import OutState
from bot.store.memory import MemoryStore
from bot.web import console_auth
from bot.web.app import create_app
from bot.web.console import PREFIX, Console, ConsoleOptions, add_console
from bot.web.webhook import WebhookStats, add_webhook_routes
from bot.whatsapp.client import GraphClient
from bot.whatsapp.simulator import SIMULATOR, Simulator, create_simulator_app

ROOT = Path(__file__).resolve().parents[2]
PNID = "100000000000001"
NUMBER = "34600000012"
KEY = f"{PNID}:{NUMBER}"


async def seed(store: MemoryStore, at: datetime, window: bool = True) -> Conversation:
    lease = await store.conversations.acquire(KEY, "seed", at, 30)
    assert lease.acquired
    head = Conversation.start(PNID, NUMBER, "consent", "1", "subscribed", "en", at, wa_id=NUMBER,
                              profile_name="Ana Test").evolve(version=1, needs_person=True,
                                                             window_opened_at=at if window else None)
    inbound = Inbound(id="wamid.first", phone_number_id=PNID, subject=NUMBER, timestamp=int(at.timestamp()),
                      kind=InboundKind.TEXT, wa_id=NUMBER, profile_name="Ana Test", text="I want a person")
    await store.steps.commit(Step(head, 1, at, Cause.INBOUND, inbound.id, inbound=(inbound,)), "seed")
    return head


async def customer_writes(store: MemoryStore, text: str, wamid: str) -> None:
    """A customer message committed as a step (what the dispatcher does for the webhook's entry)."""
    now = datetime.now(UTC)
    lease = await store.conversations.acquire(KEY, "test-dispatcher", now, 30)
    assert lease.acquired and lease.conversation is not None
    head = lease.conversation
    inbound = Inbound(id=wamid, phone_number_id=PNID, subject=NUMBER, timestamp=int(now.timestamp()),
                      kind=InboundKind.TEXT, wa_id=NUMBER, text=text)
    new = head.evolve(version=head.version + 1, updated_at=now, window_opened_at=now)
    await store.steps.commit(Step(new, new.version, now, Cause.INBOUND, wamid, inbound=(inbound,)), "test-dispatcher")


@dataclass
class Kit:
    client: TestClient[web.Request, web.Application]
    store: MemoryStore
    accounts: MemoryAccountStore
    sim: Simulator
    console: Console
    desk: Desk
    csrf: str = ""

    async def login(self, name: str = "ana") -> None:
        page = await self.client.get(f"{PREFIX}/login")
        token = re.search(r'name="_csrf" value="([^"]+)"', await page.text())
        assert token is not None
        r = await self.client.post(f"{PREFIX}/login", data={"name": name, "password": "a-long-password-1",
                                                            "_csrf": token.group(1)})
        found = re.search(r'name="_csrf" value="([^"]+)"', await r.text())
        assert r.status == 200 and found is not None
        self.csrf = found.group(1)

    async def post(self, suffix: str, **data: str) -> aiohttp.ClientResponse:
        return await self.client.post(f"{PREFIX}/c/{KEY}{suffix}", data={"_csrf": self.csrf, **data})


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    settings = load_settings(ROOT, env={})
    store = MemoryStore()
    await store.open()
    accounts = MemoryAccountStore()
    password_hash = await asyncio.to_thread(console_auth.hash_password, "a-long-password-1")
    await accounts.agents.add(Agent("ana", "agent", password_hash, datetime.now(UTC)))
    await seed(store, datetime.now(UTC) - timedelta(minutes=3))
    services = Services(settings=settings, store=store)
    sim_app = create_simulator_app(app_secret=SANDBOX_APP_SECRET, webhook_url="http://127.0.0.1:1/webhook",
                                   access_token=SANDBOX_TOKEN, phone_numbers={PNID: "15550009999"},
                                   status_delays=(0.01, 0.02, 0.03))
    sim = sim_app[SIMULATOR]
    sim.add_customer(NUMBER, "Ana Test")
    http = aiohttp.ClientSession()
    holder: dict[str, str] = {}
    graph = GraphClient(http, base_url="http://placeholder", api_version=settings.api_version,
                        access_token=SANDBOX_TOKEN, max_retries=0)

    async def not_suppressed(subject: str) -> bool:
        return False

    sender = Sender(store, graph, settings.project, services.metrics, "test-process", is_suppressed=not_suppressed)
    desk = Desk(store, sender, "test-process")
    writer = InboxWriter(store.inbox, services.metrics, notify=lambda keys: None)
    consoles: list[Console] = []
    services.web_extensions += [
        lambda app: app.add_subapp("/sandbox", sim_app),
        lambda app: add_webhook_routes(app, verify_token=SANDBOX_VERIFY_TOKEN, app_secret=SANDBOX_APP_SECRET,
                                       sink=writer, known_numbers=lambda p: p == PNID, stats=WebhookStats()),
        lambda app: consoles.append(add_console(app, accounts, desk=desk,
                                                options=ConsoleOptions(stream_poll=0.1))),
    ]
    client = TestClient(TestServer(create_app(services)))
    await client.start_server()
    base = str(client.make_url("")).rstrip("/")
    holder["base"] = base
    graph._base = f"{base}/sandbox/graph"
    sim.webhook_url = f"{base}/webhook"
    try:
        yield Kit(client, store, accounts, sim, consoles[0], desk)
    finally:
        await client.close()
        await http.close()


async def test_take_over_reply_and_hand_back(kit: Kit) -> None:
    await kit.login()
    queue = await (await kit.client.get(f"{PREFIX}/queue")).text()
    assert "Ana Test" in queue
    r = await kit.post("/reply", text="too early", nonce="n0")
    assert "Take the conversation over before replying" in await r.text()

    r = await kit.post("/takeover")
    page = await r.text()
    assert r.status == 200 and "is-paused" in page and "agent took over" in page
    head = await kit.store.conversations.get(KEY)
    assert head is not None and head.paused and not head.needs_person
    (record,) = [s for s in await kit.store.steps.history(KEY) if s.cause == "agent"]
    assert record.cause_id == "ana" and record.notes == ("agent took over",)
    assert "Ana Test" not in await (await kit.client.get(f"{PREFIX}/queue")).text()

    r = await kit.post("/reply", text="Hi, this is Ana from support <b>!</b>", nonce="n1")
    page = await r.text()
    assert "Reply sent through the send gate" in page
    assert "Hi, this is Ana from support &lt;b&gt;!&lt;/b&gt;" in page
    sent = kit.sim.sent_to(NUMBER)
    assert [b["text"]["body"] for b in sent] == ["Hi, this is Ana from support <b>!</b>"]
    (entry,) = [e for e in await kit.store.transcript.for_conversation(KEY) if e.sent_by == "agent:ana"]
    assert entry.out_state is OutState.ACCEPTED and entry.wamid
    # the same form submitted twice sends once
    await kit.post("/reply", text="Hi, this is Ana from support <b>!</b>", nonce="n1")
    assert len(kit.sim.sent_to(NUMBER)) == 1

    r = await kit.post("/handback")
    assert "is-paused" not in await r.text()
    head = await kit.store.conversations.get(KEY)
    assert head is not None and not head.paused
    actions = [e.action for e in await kit.accounts.audit.find(AuditQuery(action="desk."))]
    assert actions == ["desk.handback", "desk.reply", "desk.reply", "desk.takeover", "desk.reply"]


async def test_outside_the_window_the_gate_blocks_free_text(kit: Kit) -> None:
    await kit.desk.take_over(KEY, "ana")
    lease = await kit.store.conversations.acquire(KEY, "t", datetime.now(UTC), 30)
    assert lease.conversation is not None
    old = lease.conversation
    stale = old.evolve(version=old.version + 1, window_opened_at=datetime.now(UTC) - timedelta(hours=25))
    await kit.store.steps.commit(Step(stale, stale.version, datetime.now(UTC), Cause.SYSTEM), "t")
    await kit.login()
    r = await kit.post("/reply", text="Are you still there?", nonce="n2")
    page = await r.text()
    assert "Not sent." in page and "window_closed_no_template" in page
    assert "24-hour window is closed" in page
    assert kit.sim.sent_to(NUMBER) == []
    (entry,) = [e for e in await kit.store.transcript.for_conversation(KEY) if e.sent_by == "agent:ana"]
    assert entry.out_state is OutState.BLOCKED and entry.reason == "window_closed_no_template"


async def test_desk_refuses_empty_and_unknown_templates(kit: Kit) -> None:
    await kit.desk.take_over(KEY, "ana")
    with pytest.raises(DeskRefused, match="empty"):
        await kit.desk.reply(KEY, "ana", "x", text="   ")
    with pytest.raises(DeskRefused, match="not one of the approved templates"):
        await kit.desk.reply(KEY, "ana", "y", template="nope")
    again = await kit.desk.take_over(KEY, "ana")  # idempotent: no new step
    assert again.version == len(await kit.store.steps.history(KEY))


async def read_events(response: aiohttp.ClientResponse, until: str, timeout: float = 5.0) -> list[tuple[str, dict[str, object]]]:
    """Server-sent events read until one whose data contains ``until``."""
    events: list[tuple[str, dict[str, object]]] = []
    name = ""
    async with asyncio.timeout(timeout):
        while True:
            line = (await response.content.readline()).decode()
            if not line:
                return events
            if line.startswith("event: "):
                name = line[7:].strip()
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if until in line:
                    return events


async def test_live_updates_stream_new_messages_and_state(kit: Kit) -> None:
    await kit.login()
    page = await (await kit.client.get(f"{PREFIX}/c/{KEY}")).text()
    events_url = re.search(r'data-events="([^"]+)"', page)
    assert events_url is not None
    url = events_url.group(1).replace("&amp;", "&")
    async with kit.client.get(url) as stream:
        assert stream.status == 200 and stream.headers["Content-Type"] == "text/event-stream"
        await customer_writes(kit.store, "Where is my order? <script>alert(1)</script>", "wamid.live.1")
        events = await read_events(stream, "Where is my order")
        items = [data for name, data in events if name == "item"]
        assert items and "&lt;script&gt;alert(1)&lt;/script&gt;" in str(items[-1]["html"])
        assert "<script>" not in str(items[-1]["html"])
        await kit.desk.take_over(KEY, "ana")
        events = await read_events(stream, '"paused": true')
        assert ("head", {"state": "subscribed", "paused": True, "needs_person": False, "version": 3}) in events
        assert len(kit.console.live.tasks) == 1
        await kit.console.live.close()
        rest = await read_events(stream, "never-there", timeout=5)
        assert all(name != "item" for name, _ in rest)
    assert kit.console.live.tasks == set()
    r = await kit.client.get(url)
    assert r.status == 503  # after shutdown began, no new streams


async def test_a_stream_redraws_a_row_when_its_ticks_change(kit: Kit) -> None:
    await kit.login()
    await kit.desk.take_over(KEY, "ana")
    page = await (await kit.client.get(f"{PREFIX}/c/{KEY}")).text()
    url = re.search(r'data-events="([^"]+)"', page)
    assert url is not None
    async with kit.client.get(url.group(1).replace("&amp;", "&")) as stream:
        result = await kit.desk.reply(KEY, "ana", "tick-1", text="Let me check")
        assert result.sent
        events = await read_events(stream, "Let me check")
        row = [d for _, d in events if "Let me check" in str(d.get("html"))][-1]
        assert row["id"] == f"t-{result.entry_id}" and "t-accepted" in str(row["html"])
        entry = await kit.desk.entry(KEY, result.entry_id, datetime.now(UTC) - timedelta(minutes=1))
        assert entry is not None
        update = StatusUpdate(entry.wamid, PNID, DeliveryStatus.READ, int(datetime.now(UTC).timestamp()), NUMBER)
        await kit.store.transcript.apply_status(update, datetime.now(UTC))  # what the dispatcher does
        events = await read_events(stream, "t-read")
        assert [d["id"] for _, d in events if "t-read" in str(d.get("html"))] == [row["id"]]
