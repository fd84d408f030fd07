"""The support console in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

One browser for the module; the tests run in order on shared pages: sign in, search, open a
transcript, watch a customer message arrive live, take over and reply (the reply reaches the
sandbox's fake Graph API over HTTP), hand back, download a consent receipt, check that an agent sees
no privacy actions while a privacy officer does (and restricts a customer after confirming).
Screenshots of the main pages go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from bot.core.consent import Actor, ConsentAction, ConsentEventDraft
from bot.core.conversation import Cause, Conversation, PurposeState, PurposeStatus, Step, Transition
from bot.core.messages import Category, Inbound, InboundKind, Outbound, OutboundKind
from bot.settings import load_settings
from bot.store.accounts import Agent
from bot.store.memory import MemoryStore
from bot.web import console_auth
from bot.web.app import create_app
from bot.web.console import PREFIX, ConsoleOptions
from bot.whatsapp.simulator import SIMULATOR, Simulator
from bot.wiring import build_services

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PNID = "100000000000001"
NUMBER = "34600000012"
KEY = f"{PNID}:{NUMBER}"
LIVE = "34611122233"
LIVE_KEY = f"{PNID}:{LIVE}"
PASSWORD = "browser-test-password"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
]


async def commit(store: MemoryStore, head: Conversation | None, new: Conversation, at: datetime, **parts: Any) -> None:
    owner = "browser-test"
    lease = await store.conversations.acquire(new.key, owner, at, 30)
    assert lease.acquired
    await store.steps.commit(Step(new, new.version, at, parts.pop("cause", Cause.INBOUND), **parts), owner)


async def seed(store: MemoryStore) -> None:
    now = datetime.now(UTC)
    names = ["Ana García", "Luis Pérez", "Marta Ruiz", "Jon Smith", "Eva Lind", "Omar Haddad"]
    for i, name in enumerate(names):
        number = NUMBER if i == 0 else f"3460000{i:04d}"
        at = now - timedelta(minutes=30 - i * 4)
        state = "subscribed" if i % 3 != 2 else "confirm"
        granted = PurposeStatus(PurposeState.GRANTED if state == "subscribed" else PurposeState.REQUESTED, at, "1.0")
        head = Conversation.start(PNID, number, "consent", "1", state, "es" if i % 2 else "en", at,
                                  wa_id=number, profile_name=name).evolve(
            version=1, window_opened_at=at, consent={"offers": granted}, needs_person=i == 3)
        msg = Inbound(id=f"wamid.{number}.1", phone_number_id=PNID, subject=number, timestamp=int(at.timestamp()),
                      kind=InboundKind.BUTTON_REPLY, wa_id=number, profile_name=name, text="Confirm",
                      payload="confirm_yes")
        reply = Outbound(to=number, kind=OutboundKind.TEXT, body="Thanks! You are subscribed to offers. "
                         "Reply STOP at any time.", category=Category.UTILITY)
        events = (
            ConsentEventDraft(number, "offers", ConsentAction.REQUESTED, at - timedelta(minutes=1), Actor.CUSTOMER,
                              "consent", "1", "1.0", "ab" * 32, "en", "button", {"message_id": f"wamid.{number}.0"}),
            ConsentEventDraft(number, "offers", ConsentAction.CONFIRMED, at, Actor.CUSTOMER, "consent", "1", "1.0",
                              "ab" * 32, "en", "button", {"message_id": msg.id}),
        ) if state == "subscribed" else ()
        await commit(store, None, head, at, cause_id=msg.id, transitions=(Transition("confirm_yes", "confirm", state),),
                     inbound=(msg,), outbox=(reply,), consent=events)


@dataclass
class World:
    base: str
    store: MemoryStore
    sim: Simulator
    context: BrowserContext
    page: Page
    downloads: Path
    pages: dict[str, Page] = field(default_factory=dict)


async def sign_in(page: Page, base: str, name: str) -> None:
    await page.goto(f"{base}{PREFIX}/")
    await expect(page).to_have_url(re.compile(re.escape(f"{base}{PREFIX}/login?next=")))
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Conversations")).to_be_visible()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world() -> AsyncIterator[World]:
    """The real process as ``consentbot serve --store memory`` wires it (sandbox mode: the fake Graph
    API and signed webhooks over loopback HTTP, the dispatcher and the flow engine), plus the console."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    settings = load_settings(ROOT, env={})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stack = AsyncExitStack()
    services = await build_services(
        settings, stack, store_kind="memory", base_url=base, console_options=ConsoleOptions(stream_poll=0.2)
    )
    store = services.store
    assert isinstance(store, MemoryStore)
    await seed(store)
    accounts = services.components["accounts"]
    password_hash = await asyncio.to_thread(console_auth.hash_password, PASSWORD)
    for name, role in (("ana", "agent"), ("dpo", "privacy")):
        await accounts.agents.add(Agent(name, role, password_hash, datetime.now(UTC)))
    parts = services.components
    server = TestServer(create_app(services), host="127.0.0.1", port=port)
    await server.start_server()
    services.start()
    sim = parts["simulator"][SIMULATOR]
    profile = Path(tempfile.mkdtemp(prefix="console-chromium-"))
    downloads = Path(tempfile.mkdtemp(prefix="console-downloads-"))
    playwright = await async_playwright().start()
    context = await playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, args=ARGS, headless=True, accept_downloads=True,
        viewport={"width": 1280, "height": 860}, locale="en-GB",
    )
    page = context.pages[0] if context.pages else await context.new_page()
    try:
        yield World(base, store, sim, context, page, downloads)
    finally:
        await context.close()
        await playwright.stop()
        await services.stop()
        await server.close()
        await stack.aclose()
        shutil.rmtree(profile, ignore_errors=True)
        shutil.rmtree(downloads, ignore_errors=True)


async def test_sign_in_search_and_open_a_transcript(world: World) -> None:
    page = world.page
    await page.goto(f"{world.base}{PREFIX}/conversations")
    await page.screenshot(path=str(SHOTS / "login.png"))
    await sign_in(page, world.base, "ana")
    rows = page.locator("table.list tbody tr")
    await expect(rows).to_have_count(6)
    await expect(page.get_by_text("+34 6•• ••• •12")).to_be_visible()  # masked by default
    await page.screenshot(path=str(SHOTS / "conversations.png"), full_page=True)
    await page.get_by_label("Search").fill("ana")
    await page.get_by_role("button", name="Search").click()
    await expect(rows).to_have_count(1)
    await page.get_by_label("Search").fill("+34 600 000 012")
    await page.get_by_role("button", name="Search").click()
    await expect(rows).to_have_count(1)
    await page.get_by_role("link", name="Ana García").click()
    await expect(page.get_by_role("heading", name="Ana García")).to_be_visible()
    await expect(page.locator("#timeline .k-consent")).to_have_count(2)
    await expect(page.locator("#chain")).to_contain_text("Chain verified: 2 events")
    await page.get_by_role("button", name="Reveal number").click()
    await expect(page.get_by_text("+34 600 000 012")).to_be_visible()


async def wait_for_conversation(store: MemoryStore, key: str) -> Conversation:
    async with asyncio.timeout(10):
        while True:
            head = await store.conversations.get(key)
            if head is not None:
                return head
            await asyncio.sleep(0.05)


async def test_a_new_customer_message_arrives_live(world: World) -> None:
    """The customer writes on the sandbox phone: signed webhook -> inbox -> dispatcher -> flow
    engine -> store; the open transcript shows the message and the bot's answer without a reload."""
    page = world.page
    world.sim.add_customer(LIVE, "Lucía Live")
    await world.sim.customer_sends_text(LIVE, "Hola")
    await wait_for_conversation(world.store, LIVE_KEY)
    await page.goto(f"{world.base}{PREFIX}/c/{LIVE_KEY}")
    await expect(page.locator("#live.on")).to_be_visible()
    await expect(page.locator("#timeline .k-out").first).to_be_visible()
    bot_rows = await page.locator("#timeline .k-out").count()
    await world.sim.customer_sends_text(LIVE, "Una pregunta <b>rápida</b>")
    await expect(page.locator("#timeline").get_by_text("Una pregunta <b>rápida</b>")).to_be_visible()
    await expect(page.locator("#timeline .k-out")).not_to_have_count(bot_rows)  # the bot answered, live
    await page.screenshot(path=str(SHOTS / "transcript-live.png"), full_page=True)


async def test_take_over_reply_and_hand_back(world: World) -> None:
    page = world.page
    await expect(page.locator("#flag-paused")).to_be_hidden()
    await page.get_by_role("button", name="Take over").click()
    await expect(page.locator("#reply-text")).to_be_visible()
    await expect(page.locator("#flag-paused")).to_be_visible()
    await page.get_by_label("Reply as ana").fill("Hola Lucía, soy Ana de soporte. ¿En qué te ayudo?")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#reply-result")).to_contain_text("Reply sent through the send gate")
    bodies = [b.get("text", {}).get("body") for b in world.sim.sent_to(LIVE)]
    assert bodies[-1] == "Hola Lucía, soy Ana de soporte. ¿En qué te ayudo?"
    reply_row = page.locator(".k-out", has=page.locator(".by", has_text="agent:ana"))
    await expect(reply_row).to_have_count(1)
    # the sandbox's signed status webhooks travel the real path (webhook -> inbox -> dispatcher) and
    # the row's ticks move forward without a reload
    await expect(reply_row.locator(".t-delivered, .t-read")).to_be_visible(timeout=10_000)
    await page.screenshot(path=str(SHOTS / "takeover-reply.png"), full_page=True)
    # while an agent holds the conversation the bot stays quiet
    before = len(world.sim.sent_to(LIVE))
    await world.sim.customer_sends_text(LIVE, "Gracias")
    # exact: the notice's "No, gracias" button is in the timeline too
    await expect(page.locator("#timeline").get_by_text("Gracias", exact=True)).to_be_visible()
    await asyncio.sleep(0.5)
    assert len(world.sim.sent_to(LIVE)) == before
    await page.get_by_role("button", name="Hand back to the bot").click()
    await expect(page.get_by_role("button", name="Take over")).to_be_visible()
    await expect(page.locator("#flag-paused")).to_be_hidden()
    head = await world.store.conversations.get(LIVE_KEY)
    assert head is not None and not head.paused


async def test_download_a_consent_receipt(world: World) -> None:
    page = world.page
    await page.goto(f"{world.base}{PREFIX}/c/{KEY}")
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Download consent receipt (JSON)").click()
    download = await info.value
    path = world.downloads / download.suggested_filename
    await download.save_as(str(path))
    receipt = json.loads(path.read_text(encoding="utf-8"))
    assert receipt["piiPrincipalId"] == NUMBER
    assert receipt["chain"]["verified"] is True and receipt["chain"]["headSeq"] == 2
    (purpose,) = receipt["services"][0]["purposes"]
    assert purpose["purpose"] == "offers" and purpose["status"] == "granted"
    assert purpose["evidence"]["messageId"] == f"wamid.{NUMBER}.1"


async def test_an_agent_sees_no_privacy_actions(world: World) -> None:
    page = world.page
    await page.goto(f"{world.base}{PREFIX}/c/{KEY}")
    await expect(page.get_by_role("heading", name="Consent")).to_be_visible()
    await expect(page.locator("#privacy-actions")).to_have_count(0)
    await expect(page.get_by_role("link", name="Erase customer")).to_have_count(0)
    await expect(page.get_by_role("link", name="Audit log")).to_have_count(0)
    response = await page.goto(f"{world.base}{PREFIX}/c/{KEY}/privacy/erase")
    assert response is not None and response.status == 403
    await expect(page.get_by_text("Only a privacy officer")).to_be_visible()


async def test_a_privacy_officer_restricts_after_confirming(world: World) -> None:
    page = await world.context.new_page()
    await world.context.clear_cookies()
    await sign_in(page, world.base, "dpo")
    await page.goto(f"{world.base}{PREFIX}/c/{KEY}")
    await expect(page.locator("#privacy-actions")).to_be_visible()
    await page.screenshot(path=str(SHOTS / "transcript-privacy.png"), full_page=True)
    await page.get_by_role("link", name="Restrict processing").click()
    await page.get_by_role("button", name="Restrict").click()  # not confirmed yet: the form refuses
    await expect(page.get_by_role("heading", name="Restrict processing")).to_be_visible()
    await page.get_by_label("I have verified the request").check()
    await page.get_by_role("button", name="Restrict").click()
    await expect(page.get_by_role("heading", name="Restrict done")).to_be_visible()
    head = await world.store.conversations.get(KEY)
    assert head is not None and head.restricted
    # and lifts it again, also after confirming
    await page.goto(f"{world.base}{PREFIX}/c/{KEY}")
    await expect(page.get_by_role("link", name="Restrict processing")).to_have_count(0)
    await page.get_by_role("link", name="Lift the restriction").click()
    await expect(page.get_by_role("heading", name="Lift the restriction")).to_be_visible()
    await page.get_by_label("I have verified the request").check()
    await page.get_by_role("button", name="Lift restriction").click()
    await expect(page.get_by_role("heading", name="Restriction lifted")).to_be_visible()
    head = await world.store.conversations.get(KEY)
    assert head is not None and not head.restricted
    await page.goto(f"{world.base}{PREFIX}/flows")
    await expect(page.locator("svg.bars").first).to_be_visible()
    await expect(page.locator("figure.diagram svg")).to_have_count(1)
    await page.screenshot(path=str(SHOTS / "flows.png"), full_page=True)
    await page.goto(f"{world.base}{PREFIX}/audit")
    await expect(page.locator("table.audit")).to_contain_text("privacy.restrict")
    await expect(page.locator("table.audit")).to_contain_text("privacy.unrestrict")
    await expect(page.locator("table.audit")).to_contain_text("desk.reply")
    await page.screenshot(path=str(SHOTS / "audit.png"), full_page=True)
    await page.close()
