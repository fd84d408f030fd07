"""Security of the support console, through the real aiohttp app (no browser): every route needs a
login, forms need their CSRF token, customer-controlled text renders inert, failed logins are
throttled, cookies carry the right flags, roles are enforced server-side, reveals are audited."""

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

from bot.core.consent import Actor, ConsentAction, ConsentEventDraft
from bot.core.conversation import Cause, Conversation, PurposeState, PurposeStatus, Step, Transition
from bot.core.messages import Category, Inbound, InboundKind, Outbound, OutboundKind
from bot.runtime.services import Services
from bot.settings import load_settings
from bot.store.accounts import Agent, AuditQuery
from bot.store.accounts_memory import MemoryAccountStore
from bot.store.memory import MemoryStore
from bot.web import console_auth
from bot.web.app import create_app
from bot.web.console import CONSOLE, PREFIX, ConsoleOptions, add_console

ROOT = Path(__file__).resolve().parents[2]
PNID = "100000000000001"
XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
PASSWORDS = {"ana": "ana-secret-pass-1", "sam": "sam-secret-pass-1", "dpo": "dpo-secret-pass-1"}
ROLES = {"ana": "agent", "sam": "supervisor", "dpo": "privacy"}
_HASHES: dict[str, str] = {}


def password_hash(name: str) -> str:
    if name not in _HASHES:
        _HASHES[name] = console_auth.hash_password(PASSWORDS[name])
    return _HASHES[name]


async def seed_conversation(
    store: MemoryStore, subject: str, name: str, text: str, at: datetime, restricted: bool = False
) -> Conversation:
    key = f"{PNID}:{subject}"
    lease = await store.conversations.acquire(key, "seed", at, 30)
    assert lease.acquired
    head = Conversation.start(PNID, subject, "consent", "1", "notice", "en", at, wa_id=subject, profile_name=name)
    head = head.evolve(
        version=1,
        window_opened_at=at,
        restricted=restricted,
        consent={"offers": PurposeStatus(PurposeState.GRANTED, at, "1.0")},
    )
    inbound = Inbound(id=f"wamid.in.{subject}", phone_number_id=PNID, subject=subject, timestamp=int(at.timestamp()),
                      kind=InboundKind.TEXT, wa_id=subject, profile_name=name, text=text)
    outbound = Outbound(to=subject, kind=OutboundKind.TEXT, body=f"Hello {name}", category=Category.UTILITY)
    consent = ConsentEventDraft(subject, "offers", ConsentAction.CONFIRMED, at, Actor.CUSTOMER, "consent", "1", "1.0",
                                "ab" * 32, "en", "button", {"message_id": f"wamid.in.{subject}"})
    step = Step(conversation=head, seq=1, at=at, cause=Cause.INBOUND, cause_id=inbound.id,
                transitions=(Transition("inbound", "start", "notice"),), inbound=(inbound,), outbox=(outbound,),
                consent=(consent,))
    await store.steps.commit(step, "seed", release=True)
    return head


@dataclass
class Kit:
    client: TestClient[web.Request, web.Application]
    app: web.Application
    store: MemoryStore
    accounts: MemoryAccountStore

    async def login(self, name: str, password: str | None = None) -> str:
        """Sign in; returns the session's CSRF token."""
        page = await self.client.get(f"{PREFIX}/login")
        token = re.search(r'name="_csrf" value="([^"]+)"', await page.text())
        assert token is not None
        r = await self.client.post(
            f"{PREFIX}/login",
            data={"name": name, "password": password or PASSWORDS[name], "_csrf": token.group(1)},
            allow_redirects=False,
        )
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
        await accounts.agents.add(Agent(name, role, await asyncio.to_thread(password_hash, name), now))
    await seed_conversation(store, "34600000012", XSS, XSS, now - timedelta(minutes=5))
    await seed_conversation(store, "34600000099", "Rita Restricted", "hello", now - timedelta(minutes=4),
                            restricted=True)
    services = Services(settings=settings, store=store)
    options = ConsoleOptions(auth=console_auth.AuthPolicy(lock_base_seconds=60))
    services.web_extensions.append(lambda app: add_console(app, accounts, options=options))
    app = create_app(services)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Kit(client, app, store, accounts)
    finally:
        await client.close()


def console_routes(app: web.Application) -> list[tuple[str, str, str]]:
    """(method, path with sample parameters, route name) of every route mounted under /console."""
    console = app[CONSOLE]
    assert console is not None
    out: list[tuple[str, str, str]] = []
    for resource in app.router.resources():
        sub = getattr(resource, "_app", None)
        if sub is None:
            continue
        for route in sub.router.routes():
            info = route.resource.get_info() if route.resource is not None else {}
            path = info.get("path") or info.get("formatter") or info.get("prefix") or ""
            path = path.replace("{key}", f"{PNID}:34600000012").replace("{action}", "export")
            if "prefix" in info:
                path = info["prefix"] + "/console.css"
            out.append((route.method, path, route.name or ""))
    return out


async def test_every_console_route_needs_a_login(kit: Kit) -> None:
    routes = console_routes(kit.app)
    names = {name for _, _, name in routes}
    assert {"conversations", "conversation", "events", "reply", "takeover", "privacy_do", "audit", "flows"} <= names
    public = {"login", "login_post", "static"}
    checked = 0
    for method, path, name in routes:
        if name in public or method == "HEAD":
            continue
        r = await kit.client.request(method, path, allow_redirects=False, data={"x": "1"} if method == "POST" else None)
        if method == "GET" and name != "events":
            assert r.status == 303, (method, path, r.status)
            assert r.headers["Location"].startswith(f"{PREFIX}/login?next="), path
        else:
            assert r.status == 401, (method, path, r.status)
            assert (await r.json()) == {"error": "login required"}
        checked += 1
    assert checked >= 14
    r = await kit.client.get("/console", allow_redirects=False)
    assert r.status == 303  # the bare prefix only redirects (to the list, which then needs a login)
    r = await kit.client.get(f"{PREFIX}/static/console.css")
    assert r.status == 200 and "timeline" in await r.text()


async def test_a_bogus_or_expired_session_is_refused(kit: Kit) -> None:
    kit.client.session.cookie_jar.update_cookies({console_auth.SESSION_COOKIE: "forged-token"})
    r = await kit.client.get(f"{PREFIX}/conversations", allow_redirects=False)
    assert r.status == 303
    await kit.login("ana")
    sessions = kit.accounts.sessions._sessions
    (sid, session), = sessions.items()
    from dataclasses import replace
    sessions[sid] = replace(session, idle_until=datetime.now(UTC) - timedelta(seconds=1))
    r = await kit.client.get(f"{PREFIX}/conversations", allow_redirects=False)
    assert r.status == 303
    assert sid not in sessions  # ended sessions are deleted when seen


async def test_forms_without_their_csrf_token_get_403(kit: Kit) -> None:
    csrf = await kit.login("ana")
    key = f"{PNID}:34600000012"
    for path in (f"/c/{key}/takeover", f"/c/{key}/reveal", "/logout", f"/c/{key}/reply"):
        r = await kit.client.post(PREFIX + path, data={"text": "hi"}, allow_redirects=False)
        assert r.status == 403, path
        r = await kit.client.post(PREFIX + path, data={"text": "hi", "_csrf": "wrong" + csrf[5:]}, allow_redirects=False)
        assert r.status == 403, path
    # with the token the same form works
    r = await kit.client.post(f"{PREFIX}/c/{key}/reveal", data={"_csrf": csrf}, allow_redirects=False)
    assert r.status == 200
    rejected = await kit.accounts.audit.count(AuditQuery(action="csrf.rejected"))
    assert rejected == 8


async def test_the_login_form_needs_its_csrf_token(kit: Kit) -> None:
    r = await kit.client.post(f"{PREFIX}/login", data={"name": "ana", "password": PASSWORDS["ana"]},
                              allow_redirects=False)
    assert r.status == 403
    assert console_auth.SESSION_COOKIE not in {c.key for c in kit.client.session.cookie_jar}


async def test_script_payloads_render_as_inert_text(kit: Kit) -> None:
    await kit.login("ana")
    listing = await (await kit.client.get(f"{PREFIX}/conversations")).text()
    page = await (await kit.client.get(f"{PREFIX}/c/{PNID}:34600000012")).text()
    for html in (listing, page):
        assert "<script>window.__pwned" not in html
        assert "<img src=x" not in html
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert page.count("&lt;script&gt;window.__pwned=1&lt;/script&gt;") >= 2  # the name and the message


async def test_numbers_are_masked_and_the_reveal_is_audited(kit: Kit) -> None:
    csrf = await kit.login("ana")
    key = f"{PNID}:34600000012"
    listing = await (await kit.client.get(f"{PREFIX}/conversations")).text()
    assert "+34 6\u2022\u2022 \u2022\u2022\u2022 \u202212" in listing
    assert "600 000 012" not in listing and "34600000012</" not in listing
    revealed = await (await kit.client.post(f"{PREFIX}/c/{key}/reveal", data={"_csrf": csrf})).text()
    assert "+34 600 000 012" in revealed
    (entry,) = await kit.accounts.audit.find(AuditQuery(action="reveal.number"))
    assert (entry.actor, entry.role, entry.target, entry.outcome) == ("ana", "agent", key, "ok")


async def test_repeated_wrong_passwords_are_throttled(kit: Kit) -> None:
    page = await kit.client.get(f"{PREFIX}/login")
    token = re.search(r'name="_csrf" value="([^"]+)"', await page.text())
    assert token is not None
    statuses = []
    for _ in range(6):
        r = await kit.client.post(f"{PREFIX}/login", data={"name": "ana", "password": "wrong", "_csrf": token.group(1)},
                                  allow_redirects=False)
        statuses.append(r.status)
    assert statuses[:4] == [401] * 4
    assert statuses[4:] == [429, 429]
    assert int(r.headers["Retry-After"]) > 0
    # locked: even the right password is refused until the delay has passed
    r = await kit.client.post(f"{PREFIX}/login", data={"name": "ana", "password": PASSWORDS["ana"],
                                                       "_csrf": token.group(1)}, allow_redirects=False)
    assert r.status == 429
    assert await kit.accounts.audit.count(AuditQuery(action="login.failed")) == 5
    assert await kit.accounts.audit.count(AuditQuery(action="login.throttled")) == 2


async def test_session_cookie_flags(kit: Kit) -> None:
    page = await kit.client.get(f"{PREFIX}/login")
    token = re.search(r'name="_csrf" value="([^"]+)"', await page.text())
    assert token is not None
    r = await kit.client.post(f"{PREFIX}/login", data={"name": "ana", "password": PASSWORDS["ana"],
                                                       "_csrf": token.group(1)}, allow_redirects=False)
    assert r.status == 303
    raw = [h for h in r.headers.getall("Set-Cookie") if h.startswith(console_auth.SESSION_COOKIE + "=")]
    assert len(raw) == 1
    flags = raw[0].lower()
    assert "httponly" in flags and "samesite=strict" in flags and "path=/console" in flags
    assert "secure" not in flags.replace("samesite", "")  # plain http in tests...
    assert "expires" not in flags and "max-age" not in flags  # a browser-session cookie; the server ends it
    value = raw[0].split(";", 1)[0].split("=", 1)[1]
    assert len(value) >= 40
    assert kit.accounts.sessions._sessions.get(value) is None  # only the token's hash is stored
    assert kit.accounts.sessions._sessions.get(console_auth.session_id(value)) is not None


def test_cookies_are_secure_over_https() -> None:
    from aiohttp.test_utils import make_mocked_request

    request = make_mocked_request("GET", "/console/login", headers={"Host": "bot.example"})
    response = web.Response()
    console_auth.set_session_cookie(response, request, "t" * 43, console_auth.AuthPolicy(secure_cookies=True))
    header = response.cookies[console_auth.SESSION_COOKIE].OutputString().lower()
    assert "secure" in header.replace("samesite", "") and "httponly" in header


async def test_agents_see_no_privacy_actions_and_get_403(kit: Kit) -> None:
    key = f"{PNID}:34600000012"
    for who in ("ana", "sam"):
        kit.client.session.cookie_jar.clear()
        csrf = await kit.login(who)
        page = await (await kit.client.get(f"{PREFIX}/c/{key}")).text()
        assert "privacy-actions" not in page and "/privacy/erase" not in page
        for action in ("export", "erase", "restrict", "unrestrict"):
            r = await kit.client.get(f"{PREFIX}/c/{key}/privacy/{action}")
            assert r.status == 403
            r = await kit.client.post(f"{PREFIX}/c/{key}/privacy/{action}", data={"_csrf": csrf, "confirm": "yes"})
            assert r.status == 403
    assert await kit.accounts.audit.count(AuditQuery(action="privacy.", actor="ana")) == 8
    denied = await kit.accounts.audit.find(AuditQuery(action="privacy.erase"))
    assert {e.outcome for e in denied} == {"denied"}


async def test_restricted_conversations_are_for_privacy_officers_only(kit: Kit) -> None:
    key = f"{PNID}:34600000099"
    await kit.login("ana")
    listing = await (await kit.client.get(f"{PREFIX}/conversations")).text()
    assert "Rita Restricted" not in listing and "Processing restricted" in listing
    assert (await kit.client.get(f"{PREFIX}/c/{key}")).status == 403
    assert (await kit.client.get(f"{PREFIX}/c/{key}/events")).status == 403
    assert (await kit.client.get(f"{PREFIX}/c/{key}/receipt.json")).status == 403
    kit.client.session.cookie_jar.clear()
    await kit.login("dpo")
    page = await kit.client.get(f"{PREFIX}/c/{key}")
    assert page.status == 200 and "Rita Restricted" in await page.text()


async def test_the_audit_log_is_for_supervisors_and_privacy(kit: Kit) -> None:
    await kit.login("ana")
    r = await kit.client.get(f"{PREFIX}/audit")
    assert r.status == 403
    assert "Audit log" not in (await (await kit.client.get(f"{PREFIX}/conversations")).text()).split("<main", 1)[0]
    kit.client.session.cookie_jar.clear()
    await kit.login("sam")
    page = await (await kit.client.get(f"{PREFIX}/audit?actor=ana")).text()
    assert "view.audit" in page and "login" in page and "denied" in page


async def test_logout_ends_the_session_server_side(kit: Kit) -> None:
    csrf = await kit.login("ana")
    (sid,) = kit.accounts.sessions._sessions
    r = await kit.client.post(f"{PREFIX}/logout", data={"_csrf": csrf}, allow_redirects=False)
    assert r.status == 303
    assert sid not in kit.accounts.sessions._sessions
    r = await kit.client.get(f"{PREFIX}/conversations", allow_redirects=False)
    assert r.status == 303


async def test_login_redirects_only_inside_the_console(kit: Kit) -> None:
    page = await kit.client.get(f"{PREFIX}/login?next=https://evil.example/")
    html = await page.text()
    assert "evil.example" not in html
    token = re.search(r'name="_csrf" value="([^"]+)"', html)
    assert token is not None
    r = await kit.client.post(f"{PREFIX}/login", data={"name": "ana", "password": PASSWORDS["ana"],
                                                       "_csrf": token.group(1), "next": "//evil.example/x"},
                              allow_redirects=False)
    assert r.headers["Location"] == f"{PREFIX}/conversations"


async def test_pages_send_a_strict_content_security_policy(kit: Kit) -> None:
    await kit.login("ana")
    r = await kit.client.get(f"{PREFIX}/conversations")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["X-Frame-Options"] == "DENY"
