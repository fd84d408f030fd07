"""The console's data-subject requests page and the open requests on the consent panel, through the
real aiohttp app and the real privacy service (memory stores): due dates and days left, overdue
requests marked, masked subjects, roles enforced server-side, views audited."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.core.conversation import Cause, Conversation, Step
from bot.runtime.privacy import PrivacyService
from bot.runtime.services import Services
from bot.settings import load_settings
from bot.store.accounts import Agent, AuditQuery
from bot.store.accounts_memory import MemoryAccountStore
from bot.store.memory import MemoryStore
from bot.store.privacy import DataRequest, RequestKind
from bot.store.privacy_memory import MemoryPrivacyStore
from bot.web import console_auth
from bot.web.app import create_app
from bot.web.console import PREFIX, PrivacyServiceActions, add_console

ROOT = Path(__file__).resolve().parents[2]
PNID = "100000000000001"
NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
PASSWORDS = {"ana": "ana-secret-pass-1", "sam": "sam-secret-pass-1", "dpo": "dpo-secret-pass-1"}
ROLES = {"ana": "agent", "sam": "supervisor", "dpo": "privacy"}
OPEN_KEY = f"{PNID}:34600000012"  # an access request asked in the chat today
RESTRICTED_KEY = f"{PNID}:34600000099"  # a restriction request, due in 4 days
_HASHES: dict[str, str] = {}


def password_hash(name: str) -> str:
    if name not in _HASHES:
        _HASHES[name] = console_auth.hash_password(PASSWORDS[name])
    return _HASHES[name]


async def seed_conversation(store: MemoryStore, subject: str, name: str, restricted: bool = False) -> Conversation:
    key = f"{PNID}:{subject}"
    at = NOW - timedelta(minutes=5)
    lease = await store.conversations.acquire(key, "seed", at, 30)
    assert lease.acquired
    head = Conversation.start(PNID, subject, "consent", "1", "notice", "en", at, wa_id=subject, profile_name=name)
    head = head.evolve(version=1, restricted=restricted)
    await store.steps.commit(Step(conversation=head, seq=1, at=at, cause=Cause.INBOUND, cause_id=f"w.{subject}"),
                             "seed", release=True)
    return head


@dataclass
class Kit:
    client: TestClient[web.Request, web.Application]
    accounts: MemoryAccountStore

    async def login(self, name: str) -> None:
        self.client.session.cookie_jar.clear()
        page = await self.client.get(f"{PREFIX}/login")
        token = re.search(r'name="_csrf" value="([^"]+)"', await page.text())
        assert token is not None
        r = await self.client.post(f"{PREFIX}/login", allow_redirects=False,
                                   data={"name": name, "password": PASSWORDS[name], "_csrf": token.group(1)})
        assert r.status == 303, await r.text()


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    settings = load_settings(ROOT, env={})
    store = MemoryStore()
    await store.open()
    accounts = MemoryAccountStore()
    for name, role in ROLES.items():
        await accounts.agents.add(Agent(name, role, await asyncio.to_thread(password_hash, name), NOW))
    customer = await seed_conversation(store, "34600000012", "Carla Customer")
    await seed_conversation(store, "34600000099", "Rita Restricted", restricted=True)
    privacy_store = MemoryPrivacyStore()
    service = PrivacyService(store, privacy_store, settings.project, b"test-secret", clock=lambda: NOW)
    await service.handle_request("export", customer, NOW)  # received now: due 2025-04-10
    # received 31 Jan: due 28 Feb (the month is shorter), 10 days late at NOW; no conversation (erased)
    received = datetime(2025, 1, 31, 9, 0, tzinfo=UTC)
    await privacy_store.requests.open(DataRequest("late", "+34 611 111 111", RequestKind.ERASURE, received,
                                                  datetime(2025, 2, 28, 9, 0, tzinfo=UTC), actor="operator"))
    received = datetime(2025, 2, 14, 12, 0, tzinfo=UTC)
    await privacy_store.requests.open(DataRequest("soon", "34600000099", RequestKind.RESTRICTION, received,
                                                  datetime(2025, 3, 14, 12, 0, tzinfo=UTC), actor="operator"))
    services = Services(settings=settings, store=store)
    services.web_extensions.append(
        lambda app: add_console(app, accounts, privacy=PrivacyServiceActions(service), clock=lambda: NOW)
    )
    client = TestClient(TestServer(create_app(services)))
    await client.start_server()
    try:
        yield Kit(client, accounts)
    finally:
        await client.close()


def rows(html: str) -> dict[str, str]:
    """The requests table's rows by request id (row id ``r-<id>``)."""
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    found = re.findall(r'<tr class="([^"]*)" id="r-([^"]+)">(.*?)</tr>', body, flags=re.S)
    return {rid: f"class={cls} {cells}" for cls, rid, cells in found}


async def test_a_privacy_officer_sees_open_requests_with_due_dates_and_overdue_marked(kit: Kit) -> None:
    await kit.login("dpo")
    r = await kit.client.get(f"{PREFIX}/requests")
    assert r.status == 200
    html = await r.text()
    assert f'href="{PREFIX}/requests" aria-current="page"' in html  # the nav link, current
    table = rows(html)
    assert len(table) == 3
    ids = list(table)
    assert ids[0] == "late" and ids[1] == "soon"  # the earliest deadline first
    late = table["late"]
    assert "class=overdue" in late and "overdue by 10 days" in late
    assert "2025-02-28" in late and "2025-01-31" in late and "erasure (GDPR 17)" in late
    assert "+34 6\u2022\u2022 \u2022\u2022\u2022 \u202211" in late and "(no conversation)" in late and "href" not in late
    soon = table["soon"]
    assert "class=soon" in soon and "4 days left" in soon and "2025-03-14" in soon
    assert f'href="{PREFIX}/c/{RESTRICTED_KEY}"' in soon  # privacy officers may open restricted customers
    fresh = table[ids[2]]
    assert "class= " in fresh and "31 days left" in fresh and "overdue" not in fresh
    assert "2025-04-10" in fresh and "2025-03-10" in fresh and "access (GDPR 15)" in fresh
    assert f'href="{PREFIX}/c/{OPEN_KEY}"' in fresh and "+34 6\u2022\u2022 \u2022\u2022\u2022 \u202212" in fresh
    assert '<span class="badge bad">1 overdue</span>' in html
    for number in ("34611111111", "611 111 111", "34600000012", "600 000 012"):
        assert number not in html.replace(OPEN_KEY, "")  # masked (only the link's key carries it)
    (entry,) = await kit.accounts.audit.find(AuditQuery(action="view.requests"))
    assert (entry.actor, entry.outcome, entry.detail) == ("dpo", "ok", {"count": 3, "overdue": 1})


async def test_agents_get_403_and_no_nav_link_supervisors_see_restricted_customers_hidden(kit: Kit) -> None:
    await kit.login("ana")
    listing = await (await kit.client.get(f"{PREFIX}/conversations")).text()
    assert f"{PREFIX}/requests" not in listing
    r = await kit.client.get(f"{PREFIX}/requests")
    assert r.status == 403
    denied_page = await r.text()
    assert "overdue by" not in denied_page and "2025-02-28" not in denied_page
    (denied,) = await kit.accounts.audit.find(AuditQuery(action="view.requests"))
    assert (denied.actor, denied.outcome) == ("ana", "denied")

    await kit.login("sam")
    r = await kit.client.get(f"{PREFIX}/requests")
    assert r.status == 200
    table = rows(await r.text())
    assert set(table) >= {"late", "soon"} and len(table) == 3
    assert "Processing restricted" in table["soon"] and "href" not in table["soon"]
    assert "Rita" not in table["soon"] and "\u202299" not in table["soon"]
    assert f'href="{PREFIX}/c/{OPEN_KEY}"' in "".join(table.values())


async def test_the_requests_page_needs_a_login(kit: Kit) -> None:
    r = await kit.client.get(f"{PREFIX}/requests", allow_redirects=False)
    assert r.status == 303
    assert r.headers["Location"].startswith(f"{PREFIX}/login?next=")
    assert "requests" in r.headers["Location"]


async def test_the_consent_panel_shows_the_subjects_open_request_to_privacy_officers(kit: Kit) -> None:
    await kit.login("dpo")
    page = await (await kit.client.get(f"{PREFIX}/c/{OPEN_KEY}")).text()
    panel = page.split('id="open-requests"', 1)[1].split("</div>", 1)[0]
    assert "access (GDPR 15)" in panel and "due" in panel and "2025-04-10" in panel and "31 days left" in panel
    assert "erasure" not in panel and "restriction" not in panel  # other subjects' requests are not shown
    await kit.login("ana")
    page = await (await kit.client.get(f"{PREFIX}/c/{OPEN_KEY}")).text()
    assert "open-requests" not in page and "2025-04-10" not in page
