"""The campaign pages of the console, through the real aiohttp app: the console's own login, roles and
CSRF protect them; the JSON progress endpoint reports live counts; cancel stops a campaign."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.core.audience import TemplateButton, TemplateDeclaration
from bot.core.messages import DeliveryStatus
from bot.runtime.services import Services
from bot.settings import load_settings
from bot.store.accounts import Agent, AuditQuery
from bot.store.accounts_memory import MemoryAccountStore
from bot.store.broadcasts import Campaign, CampaignState, Finish, Receipt, Recipient, RecipientState
from bot.store.broadcasts_memory import MemoryBroadcasts
from bot.store.memory import MemoryStore
from bot.web import console_auth
from bot.web.app import create_app
from bot.web.console import PREFIX, add_console
from bot.web.console_broadcasts import add_broadcast_routes

ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = {"ana": "ana-secret-pass-1", "sam": "sam-secret-pass-1"}
ROLES = {"ana": "agent", "sam": "supervisor"}
DECL = TemplateDeclaration(name="spring_offer", language="en", footer="Reply STOP to opt out",
                           buttons=(TemplateButton("quick_reply", "Stop promotions", "optout"),))


@dataclass
class Kit:
    client: TestClient[web.Request, web.Application]
    broadcasts: MemoryBroadcasts
    accounts: MemoryAccountStore

    async def login(self, name: str) -> str:
        page = await self.client.get(f"{PREFIX}/login")
        token = re.search(r'name="_csrf" value="([^"]+)"', await page.text())
        assert token is not None
        r = await self.client.post(f"{PREFIX}/login", allow_redirects=False,
                                   data={"name": name, "password": PASSWORDS[name], "_csrf": token.group(1)})
        assert r.status == 303, await r.text()
        home = await self.client.get(f"{PREFIX}/conversations")
        csrf = re.search(r'name="_csrf" value="([^"]+)"', await home.text())
        assert csrf is not None
        return csrf.group(1)


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    settings = load_settings(ROOT, env={})
    store = MemoryStore()
    await store.open()
    accounts = MemoryAccountStore()
    now = datetime.now(UTC)
    for name, role in ROLES.items():
        hashed = await asyncio.to_thread(console_auth.hash_password, PASSWORDS[name])
        await accounts.agents.add(Agent(name, role, hashed, now))
    broadcasts = MemoryBroadcasts(store)
    await broadcasts.create(Campaign(id="c1", name="Spring <b>sale</b>", template=DECL, purpose="offers",
                                     phone_number_id="100000000000001", created_at=now, updated_at=now, rate=80,
                                     state=CampaignState.RUNNING, audience_done=True))
    await broadcasts.add_recipients([
        Recipient("c1", f"3460000000{i}", f"k{i}", RecipientState.PENDING, seq=i) for i in range(4)
    ] + [Recipient("c1", "34600000009", "k9", RecipientState.EXCLUDED, seq=9, reason="no_consent")])
    await broadcasts.lease("c1", "run", now, 2)
    await broadcasts.finish("c1", [Finish("34600000000", RecipientState.ACCEPTED),
                                   Finish("34600000001", RecipientState.FAILED, error_code=131026)], now)
    await broadcasts.record_receipt(Receipt("c1", "34600000000", "wamid.x", DeliveryStatus.READ, now))
    services = Services(settings=settings, store=store)

    def extend(app: web.Application) -> None:
        add_console(app, accounts)
        add_broadcast_routes(app, broadcasts)

    services.web_extensions.append(extend)
    client = TestClient(TestServer(create_app(services)))
    await client.start_server()
    try:
        yield Kit(client, broadcasts, accounts)
    finally:
        await client.close()


async def test_campaign_pages_need_a_console_login(kit: Kit) -> None:
    r = await kit.client.get(f"{PREFIX}/campaigns/c1", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"].startswith(f"{PREFIX}/login")
    r = await kit.client.get(f"{PREFIX}/campaigns/c1/progress.json", headers={"Accept": "application/json"})
    assert r.status == 401
    r = await kit.client.post(f"{PREFIX}/campaigns/c1/cancel", allow_redirects=False)
    assert r.status == 401
    assert (await kit.broadcasts.get("c1")).state is CampaignState.RUNNING  # type: ignore[union-attr]


async def test_agents_may_not_see_campaigns(kit: Kit) -> None:
    csrf = await kit.login("ana")
    assert (await kit.client.get(f"{PREFIX}/campaigns/c1")).status == 403
    assert (await kit.client.get(f"{PREFIX}/campaigns/c1/progress.json")).status == 403
    r = await kit.client.post(f"{PREFIX}/campaigns/c1/cancel", data={"_csrf": csrf}, allow_redirects=False)
    assert r.status == 403
    assert (await kit.broadcasts.get("c1")).state is CampaignState.RUNNING  # type: ignore[union-attr]


async def test_supervisors_see_live_progress_and_can_cancel(kit: Kit) -> None:
    csrf = await kit.login("sam")
    listing = await kit.client.get(f"{PREFIX}/campaigns")
    assert listing.status == 200
    text = await listing.text()
    assert "Spring &lt;b&gt;sale&lt;/b&gt;" in text and "<b>sale</b>" not in text
    page = await kit.client.get(f"{PREFIX}/campaigns/c1")
    html = await page.text()
    assert page.status == 200 and "no_consent" in html and "131026" in html
    assert f'{PREFIX}/campaigns/progress.js' in html
    js = await kit.client.get(f"{PREFIX}/campaigns/progress.js")
    assert js.status == 200 and "progress" in await js.text()
    p = await (await kit.client.get(f"{PREFIX}/campaigns/c1/progress.json")).json()
    assert p["accepted"] == 1 and p["failed"] == 1 and p["excluded"] == 1 and p["pending"] == 2
    assert p["total"] == 5 and p["read"] == 1 and p["reasons"] == {"no_consent": 1} and p["errors"] == {"131026": 1}
    assert (await kit.client.get(f"{PREFIX}/campaigns/nope/progress.json")).status == 404
    r = await kit.client.post(f"{PREFIX}/campaigns/c1/cancel", allow_redirects=False)  # no CSRF token
    assert r.status == 403
    r = await kit.client.post(f"{PREFIX}/campaigns/c1/cancel", data={"_csrf": csrf}, allow_redirects=False)
    assert r.status == 303
    assert (await kit.broadcasts.get("c1")).state is CampaignState.CANCELLED  # type: ignore[union-attr]
    audit = await kit.accounts.audit.find(AuditQuery(actor="sam"))
    assert {"campaign.view", "campaign.cancel", "campaigns.list"} <= {e.action for e in audit}
