"""The support console: a server-rendered web UI under ``/console`` for agents, supervisors and
privacy officers (see ``docs/console.md``).

:func:`add_console` mounts it on the bot's aiohttp application (as a sub-application with its own
guard middleware). Pages are Jinja templates from ``bot/web/templates/console`` (autoescaped; one
environment created at start); a small stylesheet and script come from ``bot/web/static/console``.

Who may do what (enforced here, server-side; the templates only hide what a role cannot use):

==============================  =======  ==========  =======
action                          agent    supervisor  privacy
==============================  =======  ==========  =======
conversations, queue, flows     yes      yes         yes
transcript, consent panel,
receipt, reveal a number        yes      yes         yes
take over / reply / hand back   yes      yes         yes
restricted conversations        no       no          yes
audit log                       no       yes         yes
data-subject requests page      no       yes         yes
export / erase / (un)restrict   no       no          yes
==============================  =======  ==========  =======

Every page view and action is written to the audit trail (who, what, when, target, outcome).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web
from markupsafe import Markup

from bot.core import diagram
from bot.core.consent import ConsentRecord
from bot.core.conversation import Conversation
from bot.core.flowspec import FlowSpec
from bot.core.project import Controller
from bot.core.proof import ChainCheck, build_receipt, normalise_number, verify_chain
from bot.errors import BotError, NotFound, StoreError
from bot.runtime.catalog import Catalog
from bot.runtime.clock import utc_now
from bot.runtime.desk import Desk, DeskRefused
from bot.runtime.services import Services
from bot.store.accounts import AccountStore, AuditEntry, AuditQuery, Session
from bot.store.base import ConversationQuery, Store
from bot.store.privacy import DataRequest, Principal, Role
from bot.web import console_auth as auth
from bot.web import console_views as views
from bot.web.app import SERVICES
from bot.web.console_live import LiveStreams

log = logging.getLogger("consentbot.console")

PREFIX = "/console"
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static" / "console"
PURPOSE_STATES = ("none", "requested", "granted", "declined", "withdrawn", "expired")
PRIVACY_ACTIONS = ("export", "erase", "restrict", "unrestrict")


# --- what the console needs from others ----------------------------------------------------------
class PrivacyActions(Protocol):
    """The privacy service as the console uses it (``bot.runtime.privacy.PrivacyService`` adapted by
    :func:`privacy_adapter` or any object with these methods)."""

    async def export(self, subject: str, actor: Principal) -> dict[str, Any]: ...
    async def erase(self, subject: str, actor: Principal) -> dict[str, Any]: ...
    async def restrict(self, subject: str, actor: Principal) -> dict[str, Any]: ...
    async def unrestrict(self, subject: str, actor: Principal) -> dict[str, Any]: ...
    async def receipt(self, subject: str) -> dict[str, Any]: ...
    async def verify(self, subject: str) -> ChainCheck: ...
    async def open_requests(self, limit: int = 100) -> list[DataRequest]:
        """Open data-subject requests, the earliest deadline first (at most ``limit``)."""
        ...


class PrivacyServiceLike(Protocol):
    """What :class:`PrivacyServiceActions` needs of ``bot.runtime.privacy.PrivacyService``."""

    async def export(self, subject: str, actor: str = ...) -> dict[str, Any]: ...
    async def erase(self, subject: str, actor: str) -> Any: ...
    async def restrict(self, subject: str, actor: str) -> Any: ...
    async def unrestrict(self, subject: str, actor: str) -> Any: ...
    async def receipt(self, subject: str) -> dict[str, Any]: ...
    async def verify(self, subject: str | None = None) -> list[ChainCheck]: ...
    async def open_requests(self, limit: int = 100) -> list[DataRequest]: ...


@dataclass(frozen=True, slots=True)
class PrivacyServiceActions:
    """Adapts ``bot.runtime.privacy.PrivacyService`` to :class:`PrivacyActions` (the acting
    officer's name goes to the data-subject request records)."""

    service: PrivacyServiceLike

    async def export(self, subject: str, actor: Principal) -> dict[str, Any]:
        return await self.service.export(subject, actor=actor.name)

    async def erase(self, subject: str, actor: Principal) -> dict[str, Any]:
        report = await self.service.erase(subject, actor.name)
        doc = report.to_doc()
        deleted = doc.get("deleted", {})
        out: dict[str, Any] = {"request": doc.get("request_id", ""), "erased at": doc.get("erased_at", "")}
        out["conversations deleted"] = len(deleted.get("conversations", []))
        out["messages deleted"] = deleted.get("transcript_entries", 0)
        out["history records deleted"] = deleted.get("history_records", 0)
        for i, kept in enumerate(doc.get("kept", []), 1):
            until = f" until {kept['until']}" if kept.get("until") else ""
            out[f"kept ({i})"] = f"{kept['what']}{until}: {kept['why']}"
        out["answer for the customer"] = report.summary()
        return out

    async def restrict(self, subject: str, actor: Principal) -> dict[str, Any]:
        request = await self.service.restrict(subject, actor.name)
        return {"request": request.id, "status": str(request.status),
                "conversations restricted": len(request.result.get("conversations", []))}

    async def unrestrict(self, subject: str, actor: Principal) -> dict[str, Any]:
        request = await self.service.unrestrict(subject, actor.name)
        return {"request": request.id, "status": str(request.status),
                "restriction lifted on conversations": len(request.result.get("conversations", []))}

    async def receipt(self, subject: str) -> dict[str, Any]:
        return await self.service.receipt(subject)

    async def verify(self, subject: str) -> ChainCheck:
        checks = await self.service.verify(subject)
        return checks[0] if checks else verify_chain([], subject)

    async def open_requests(self, limit: int = 100) -> list[DataRequest]:
        return await self.service.open_requests(limit)


@dataclass(frozen=True, slots=True)
class FlowVersion:
    """One flow version as the flows page shows it: its states in order and its diagram (an SVG
    document produced by the flow engine, or diagram source text shown as-is)."""

    flow_id: str
    version: str
    states: tuple[str, ...]
    diagram: str = ""
    description: str = ""


FlowSource = Callable[[], Sequence[FlowVersion]]


def flow_versions(specs: Sequence[FlowSpec], diagram: Callable[[FlowSpec], str] | None = None) -> list[FlowVersion]:
    """FlowVersion values for the flows page from flow specs and the flow engine's diagram function."""
    out = []
    for spec in specs:
        drawing = ""
        if diagram is not None:
            try:
                drawing = diagram(spec)
            except BotError as exc:
                drawing = f"(diagram unavailable: {exc})"
        out.append(FlowVersion(spec.id, spec.version, tuple(spec.states), drawing, spec.description))
    return out


def catalog_flows(catalog: Catalog) -> FlowSource:
    """The flows page's source for a loaded flow catalog: every version of every flow with its SVG
    diagram (``bot.core.diagram.svg``), drawn once here, at start."""
    specs = [v.spec for family in catalog.flows.values() for v in family.versions.values()]
    drawn = flow_versions(sorted(specs, key=lambda s: (s.id, s.version)), diagram.svg)
    return lambda: drawn


@dataclass(frozen=True, slots=True)
class ConsoleOptions:
    page_size: int = 25
    max_page: int = 400  # deeper pages: narrow the search (skip cost grows with depth)
    stream_poll: float = 0.75
    stream_max_seconds: float = 300.0
    max_streams: int = 200
    requests_limit: int = 200  # rows of the data-subject requests page (earliest deadline first)
    panel_requests_scan: int = 500  # open requests searched for the conversation page's subject
    auth: auth.AuthPolicy = field(default_factory=auth.AuthPolicy)


@dataclass(frozen=True, slots=True)
class Viewer:
    """The logged-in person of one request."""

    name: str
    role: str
    session: Session

    @property
    def principal(self) -> Principal:
        return Principal(self.name, frozenset({self.role}))

    def can(self, what: str) -> bool:
        return self.role in CAN[what]


CAN: dict[str, frozenset[str]] = {
    "audit": frozenset({Role.SUPERVISOR, Role.PRIVACY}),
    "requests": frozenset({Role.SUPERVISOR, Role.PRIVACY}),
    "privacy": frozenset({Role.PRIVACY}),
    "restricted": frozenset({Role.PRIVACY}),
}

VIEWER: web.RequestKey[Viewer] = web.RequestKey("console_viewer", Viewer)
CONSOLE: web.AppKey[Console] = web.AppKey("console")
PUBLIC = frozenset({"login", "login_post", "static"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def conversation_url(key: str, suffix: str = "") -> str:
    return f"{PREFIX}/c/{quote(key, safe=':')}{suffix}"


class Console:
    """State of the console for one application: the template environment, the throttle, the live
    streams, and the services it reads and acts through."""

    def __init__(
        self,
        accounts: AccountStore,
        *,
        desk: Desk | None = None,
        privacy: PrivacyActions | None = None,
        flows: FlowSource | None = None,
        options: ConsoleOptions | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.accounts = accounts
        self.desk = desk
        self.privacy = privacy
        self.flows = flows
        self.options = options or ConsoleOptions()
        self.clock = clock
        policy = self.options.auth
        self.throttle = auth.Throttle(
            base=policy.lock_base_seconds, cap=policy.lock_max_seconds, forget=policy.forget_after_seconds
        )
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=jinja2.select_autoescape(["html"], default=True),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["utc"] = views.utc
        self.env.filters["day"] = views.day
        self.env.filters["curl"] = conversation_url
        self.env.filters["reason"] = views.describe_reason
        self.env.globals["PREFIX"] = PREFIX
        self.live = LiveStreams(self)

    # --- rendering ---------------------------------------------------------------------------------
    def render_text(self, template: str, /, **context: Any) -> str:
        return self.env.get_template(f"console/{template}").render(**context)

    def page(self, request: web.Request, template: str, /, status: int = 200, **context: Any) -> web.Response:
        viewer = request.get(VIEWER)
        now = self.clock()
        html = self.render_text(
            template,
            viewer=viewer,
            csrf=viewer.session.csrf if viewer is not None else "",
            can_audit=viewer is not None and viewer.can("audit"),
            can_privacy=viewer is not None and viewer.can("privacy"),
            now=now,
            ago=lambda at: views.ago(at, now),
            **context,
        )
        response = web.Response(text=html, content_type="text/html", charset="utf-8", status=status)
        response.headers["Cache-Control"] = "no-store"
        return response

    # --- audit -------------------------------------------------------------------------------------
    async def audit(
        self, request: web.Request, action: str, /, target: str = "", outcome: str = "ok", **detail: Any
    ) -> None:
        viewer = request.get(VIEWER)
        entry = AuditEntry(
            at=self.clock(),
            actor=viewer.name if viewer is not None else str(detail.pop("actor", "")),
            role=viewer.role if viewer is not None else "",
            action=action,
            target=target,
            outcome=outcome,
            ip=auth.client_ip(request),
            detail={k: v for k, v in detail.items() if v not in (None, "")},
        )
        try:
            await self.accounts.audit.append(entry)
        except StoreError:
            log.exception("audit write failed", extra={"action": action})
            raise

    def deny(self, request: web.Request, message: str) -> web.Response:
        return self.page(request, "error.html", status=403, title="Not allowed", message=message)


def _store(request: web.Request) -> Store:
    return request.config_dict[SERVICES].store


def _services(request: web.Request) -> Services:
    return request.config_dict[SERVICES]


def _console(request: web.Request) -> Console:
    return request.config_dict[CONSOLE]


def _wants_json(request: web.Request) -> bool:
    return (
        request.path.endswith("/events")
        or request.path.startswith(f"{PREFIX}/api/")
        or "application/json" in request.headers.get("Accept", "")
        or "text/event-stream" in request.headers.get("Accept", "")
    )


# --- the guard -----------------------------------------------------------------------------------
@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every console route needs a live session (except the login page and static files): pages
    redirect to the login, JSON and event-stream endpoints answer 401. Every POST needs the
    session's CSRF token (403 without it)."""
    console = _console(request)
    route = request.match_info.route
    name = route.name or ""
    if name in PUBLIC or (route.resource is not None and name.startswith("static")):
        return await handler(request)
    now = console.clock()
    token = request.cookies.get(auth.SESSION_COOKIE, "")
    session = await console.accounts.sessions.get(auth.session_id(token)) if token else None
    if session is not None and not session.live(now):
        await console.accounts.sessions.delete(session.id)
        session = None
    if session is None:
        if _wants_json(request) or request.method != "GET":
            response: web.StreamResponse = web.json_response({"error": "login required"}, status=401)
        else:
            target = request.path_qs if request.method == "GET" else PREFIX
            raise web.HTTPSeeOther(f"{PREFIX}/login?" + urlencode({"next": target}))
        auth.clear_session_cookie(response)
        return response
    request[VIEWER] = Viewer(session.agent, session.role, session)
    if request.method not in {"GET", "HEAD", "OPTIONS"}:
        sent = request.headers.get(auth.CSRF_HEADER, "")
        if not sent and request.content_type in {"application/x-www-form-urlencoded", "multipart/form-data"}:
            form = await request.post()
            sent = str(form.get(auth.CSRF_FIELD, ""))
        if not auth.same_token(sent, session.csrf):
            await console.audit(request, "csrf.rejected", request.path, outcome="denied")
            return console.page(request, "error.html", status=403, title="Form expired",
                                message="This form is missing its security token. Reload the page and try again.")
    if now + console.options.auth.idle - session.idle_until > console.options.auth.touch_every:
        await console.accounts.sessions.touch(session.id, now + console.options.auth.idle)
    response = await handler(request)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


# --- login ---------------------------------------------------------------------------------------
def _safe_next(value: str) -> str:
    """Only a path inside the console (no scheme, no host, no ``//``)."""
    if value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value and "://" not in value:
        return value
    return f"{PREFIX}/conversations"


async def login_page(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    token, fresh = auth.login_csrf_token(request)
    response = _login_again(console, request, "", _safe_next(request.query.get("next", "")), "", 200, token)
    if fresh:
        auth.set_login_csrf_cookie(response, request, token, console.options.auth)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    policy = console.options.auth
    form = await request.post()
    name = str(form.get("name", "")).strip().lower()[:64]
    password = str(form.get("password", ""))
    nxt = _safe_next(str(form.get("next", "")))
    cookie_token = request.cookies.get(LOGIN_CSRF, "")
    if not auth.same_token(str(form.get(auth.CSRF_FIELD, "")), cookie_token):
        return web.Response(status=403, text="The sign-in form expired: reload the page and try again.")
    ip = auth.client_ip(request)
    locked = max(console.throttle.locked_for(f"ip:{ip}"), console.throttle.locked_for(f"acct:{name}"))
    if locked > 0:
        await console.audit(request, "login.throttled", name, outcome="denied", actor=name)
        return _throttled(console, request, locked, name)
    agent = await console.accounts.agents.get(name) if name else None
    if not await auth.check_login(agent, password):
        lock = max(
            console.throttle.failed(f"ip:{ip}", policy.free_failures_ip),
            console.throttle.failed(f"acct:{name}", policy.free_failures_account),
        )
        await console.audit(request, "login.failed", name, outcome="denied", actor=name)
        if lock > 0:
            return _throttled(console, request, lock, name)
        return _login_again(console, request, name, nxt, "Wrong name or password.", 401)
    assert agent is not None  # check_login refuses a missing agent
    console.throttle.succeeded(f"acct:{name}")
    if auth.needs_rehash(agent.password_hash):
        new_hash = await asyncio.to_thread(auth.hash_password, password)
        await console.accounts.agents.set_password(agent.name, new_hash, console.clock())
    token, session = auth.new_session(agent, console.clock(), policy, ip)
    await console.accounts.sessions.create(session)
    request[VIEWER] = Viewer(agent.name, agent.role, session)
    await console.audit(request, "login", agent.name)
    response = web.HTTPSeeOther(nxt)
    auth.set_session_cookie(response, request, token, policy)
    response.del_cookie(LOGIN_CSRF, path=auth.COOKIE_PATH + "/login")
    raise response


LOGIN_CSRF = auth.LOGIN_CSRF_COOKIE


def _login_again(
    console: Console, request: web.Request, name: str, nxt: str, error: str, status: int, token: str = ""
) -> web.Response:
    token = token or request.cookies.get(LOGIN_CSRF, "")
    html = console.render_text("login.html", viewer=None, csrf="", can_audit=False, can_privacy=False,
                               now=console.clock(), ago=str, title="Sign in", error=error, name=name, next=nxt,
                               login_csrf=token)
    return web.Response(text=html, content_type="text/html", charset="utf-8", status=status,
                        headers={"Cache-Control": "no-store"})


def _throttled(console: Console, request: web.Request, seconds: float, name: str) -> web.Response:
    wait = int(seconds) + 1
    response = _login_again(
        console, request, name, f"{PREFIX}/conversations",
        f"Too many failed sign-ins. Try again in {wait} seconds.", 429,
    )
    response.headers["Retry-After"] = str(wait)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    viewer = request[VIEWER]
    await console.accounts.sessions.delete(viewer.session.id)
    await console.audit(request, "logout", viewer.name)
    response = web.HTTPSeeOther(f"{PREFIX}/login")
    auth.clear_session_cookie(response)
    raise response


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(f"{PREFIX}/conversations")


# --- conversation list ---------------------------------------------------------------------------
def _date(value: str, end: bool = False) -> datetime | None:
    try:
        day = datetime.strptime(value.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return day + timedelta(days=1) if end else day - timedelta(milliseconds=1)


def _tri(value: str) -> bool | None:
    return {"yes": True, "no": False}.get(value)


def parse_filters(q: Mapping[str, str]) -> tuple[ConversationQuery, dict[str, str]]:
    """The list's query string -> (store query, the cleaned form values to show back)."""
    form = {k: str(q.get(k, "")).strip()[:100] for k in
            ("q", "state", "purpose", "purpose_state", "needs_person", "paused", "from", "to", "flow")}
    if form["purpose_state"] not in PURPOSE_STATES:
        form["purpose_state"] = ""
    query = ConversationQuery(
        text=views.search_text(form["q"]),
        state=form["state"],
        flow_id=form["flow"],
        purpose=form["purpose"],
        purpose_state=form["purpose_state"],
        needs_person=_tri(form["needs_person"]),
        paused=_tri(form["paused"]),
        updated_after=_date(form["from"]),
        updated_before=_date(form["to"], end=True),
    )
    return query, form


def _page_number(q: Mapping[str, str], max_page: int) -> int:
    try:
        return min(max(1, int(q.get("page", "1"))), max_page)
    except ValueError:
        return 1


@dataclass(frozen=True, slots=True)
class Row:
    conversation: Conversation
    label: str
    hidden: bool  # restricted and the viewer may not see it


def _rows(conversations: Sequence[Conversation], viewer: Viewer) -> list[Row]:
    return [
        Row(c, views.customer_label(c), c.restricted and not viewer.can("restricted"))
        for c in conversations
    ]


async def conversations_page(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    viewer = request[VIEWER]
    store = _store(request)
    query, form = parse_filters(request.query)
    size = console.options.page_size
    page = _page_number(request.query, console.options.max_page)
    found, total = await asyncio.gather(
        store.conversations.find(query, skip=(page - 1) * size, limit=size), store.conversations.count(query)
    )
    await console.audit(request, "view.conversations", detail_query(form), page=page)
    return console.page(
        request, "conversations.html", title="Conversations", rows=_rows(found, viewer), total=total, page=page,
        pages=max(1, min(console.options.max_page, -(-total // size))), form=form,
        purposes=_purposes(request), states=PURPOSE_STATES, qs=_qs(form),
    )


def detail_query(form: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in form.items() if v and k != "q") + (" q=…" if form.get("q") else "")


def _qs(form: Mapping[str, str]) -> str:
    return urlencode({k: v for k, v in form.items() if v})


def _purposes(request: web.Request) -> list[tuple[str, str]]:
    project = _services(request).settings.project
    return [(p.id, p.title(project.default_locale, project.default_locale)) for p in project.purposes]


async def queue_page(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    viewer = request[VIEWER]
    store = _store(request)
    page = _page_number(request.query, console.options.max_page)
    size = console.options.page_size
    query = ConversationQuery(needs_person=True)
    found, total = await asyncio.gather(
        store.conversations.find(query, skip=(page - 1) * size, limit=size), store.conversations.count(query)
    )
    await console.audit(request, "view.queue", page=page)
    return console.page(request, "queue.html", title="Needs a person", rows=_rows(found, viewer), total=total,
                        page=page, pages=max(1, -(-total // size)))


# --- one conversation ----------------------------------------------------------------------------
async def _conversation_or_deny(
    request: web.Request, action: str
) -> tuple[Conversation | None, web.StreamResponse | None]:
    console = _console(request)
    viewer = request[VIEWER]
    key = request.match_info["key"]
    conversation = await _store(request).conversations.get(key)
    if conversation is None:
        return None, console.page(request, "error.html", status=404, title="Not found",
                                  message="There is no conversation with this key (it may have been erased).")
    if conversation.restricted and not viewer.can("restricted"):
        await console.audit(request, action, key, outcome="denied", reason="restricted")
        return None, console.deny(request, "Processing of this customer's data is restricted (GDPR 18). "
                                           "Only a privacy officer can open it.")
    return conversation, None


async def _timeline(
    store: Store, conversation: Conversation
) -> tuple[list[views.TimelineItem], list[ConsentRecord], dict[str, Any]]:
    after_seq = max(0, conversation.version - 300)
    steps = await store.steps.history(conversation.key, after_seq=after_seq, limit=300)
    since = steps[0].at - timedelta(milliseconds=1) if after_seq and steps else None
    entries, consent = await asyncio.gather(
        store.transcript.for_conversation(conversation.key, after=since, limit=1000),
        store.ledger.history(conversation.subject),
    )
    items = views.timeline(entries, steps, consent)
    cursor = {
        "seq": steps[-1].seq if steps else conversation.version,
        "cseq": consent[-1].seq if consent else 0,
        "at": entries[-1].at.isoformat() if entries else "",
    }
    return items, consent, cursor


async def conversation_page(request: web.Request, revealed: bool = False) -> web.StreamResponse:
    console = _console(request)
    conversation, denied = await _conversation_or_deny(request, "view.transcript")
    if denied is not None or conversation is None:
        return denied or web.HTTPNotFound()
    store = _store(request)
    items, consent, cursor = await _timeline(store, conversation)
    check = await _verify(console, conversation.subject, consent)
    rows = views.consent_rows(_purposes(request), consent, conversation)
    now = console.clock()
    reply_id = request.query.get("reply", "")
    reply = next((i for i in items if i.id == f"t-{reply_id}"), None) if reply_id else None
    open_requests: list[views.RequestRow] = []
    if console.privacy is not None and request[VIEWER].can("privacy"):
        scanned = await console.privacy.open_requests(console.options.panel_requests_scan)
        open_requests = [views.request_row(r, conversation, now, True) for r in scanned
                         if views.is_subject_of(r.subject, conversation)]
    if not revealed:
        await console.audit(request, "view.transcript", conversation.key)
    return console.page(
        request, "conversation.html", title=views.customer_label(conversation, revealed),
        c=conversation, label=views.customer_label(conversation, revealed), revealed=revealed, items=items,
        rows=rows, check=check, cursor=cursor, in_window=conversation.in_window(now),
        desk=console.desk is not None, templates=sorted(console.desk.templates) if console.desk else [],
        nonce=secrets.token_urlsafe(12), reply=reply, privacy=console.privacy is not None,
        error=request.query.get("error", "")[:40], open_requests=open_requests,
    )


async def _verify(console: Console, subject: str, records: Sequence[ConsentRecord]) -> ChainCheck:
    if console.privacy is not None:
        return await console.privacy.verify(subject)
    return verify_chain(records, subject)


async def reveal(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    conversation, denied = await _conversation_or_deny(request, "reveal.number")
    if denied is not None or conversation is None:
        return denied or web.HTTPNotFound()
    await console.audit(request, "reveal.number", conversation.key)
    return await conversation_page(request, revealed=True)


ERRORS = {
    "busy": "The bot is busy with this conversation; try again in a moment.",
    "not_taken": "Take the conversation over before replying.",
    "empty": "The reply is empty.",
    "refused": "The desk refused this action.",
}


async def takeover(request: web.Request) -> web.StreamResponse:
    return await _pause(request, True)


async def handback(request: web.Request) -> web.StreamResponse:
    return await _pause(request, False)


async def _pause(request: web.Request, paused: bool) -> web.StreamResponse:
    console = _console(request)
    viewer = request[VIEWER]
    action = "desk.takeover" if paused else "desk.handback"
    conversation, denied = await _conversation_or_deny(request, action)
    if denied is not None or conversation is None:
        return denied or web.HTTPNotFound()
    if console.desk is None:
        return console.page(request, "error.html", status=503, title="Unavailable",
                            message="Takeover is not available in this deployment.")
    try:
        if paused:
            await console.desk.take_over(conversation.key, viewer.name)
        else:
            await console.desk.hand_back(conversation.key, viewer.name)
    except DeskRefused as exc:
        await console.audit(request, action, conversation.key, outcome="failed", reason=str(exc))
        raise web.HTTPSeeOther(conversation_url(conversation.key, "?error=busy")) from None
    except NotFound:
        raise web.HTTPNotFound() from None
    await console.audit(request, action, conversation.key)
    raise web.HTTPSeeOther(conversation_url(conversation.key))


async def reply(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    viewer = request[VIEWER]
    conversation, denied = await _conversation_or_deny(request, "desk.reply")
    if denied is not None or conversation is None:
        return denied or web.HTTPNotFound()
    if console.desk is None:
        return console.page(request, "error.html", status=503, title="Unavailable",
                            message="Replies are not available in this deployment.")
    form = await request.post()
    nonce = str(form.get("nonce", ""))[:40] or secrets.token_urlsafe(12)
    text = str(form.get("text", ""))
    template = str(form.get("template", ""))[:100]
    try:
        result = await console.desk.reply(conversation.key, viewer.name, nonce, text=text, template=template)
    except DeskRefused as exc:
        await console.audit(request, "desk.reply", conversation.key, outcome="failed", reason=str(exc))
        code = "not_taken" if not conversation.paused else ("empty" if not text.strip() else "refused")
        raise web.HTTPSeeOther(conversation_url(conversation.key, f"?error={code}")) from None
    await console.audit(request, "desk.reply", conversation.key, outcome="ok" if result.sent else "failed",
                        state=str(result.state), reason=result.reason, template=template)
    target = conversation_url(conversation.key, "?" + urlencode({"reply": result.entry_id}))
    raise web.HTTPSeeOther(target + "#t-" + quote(result.entry_id))


async def receipt(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    conversation, denied = await _conversation_or_deny(request, "download.receipt")
    if denied is not None or conversation is None:
        return denied or web.HTTPNotFound()
    if console.privacy is not None:
        doc = await console.privacy.receipt(conversation.subject)
    else:
        records = await _store(request).ledger.history(conversation.subject)
        controller: Controller = _services(request).settings.project.controller
        doc = build_receipt(conversation.subject, records, controller, (), console.clock())
    await console.audit(request, "download.receipt", conversation.key, receipt=str(doc.get("consentReceiptID", "")))
    return _download(doc, f"consent-receipt-{_filename(conversation.subject)}.json")


def _filename(subject: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in subject)[:40]


def _download(doc: Mapping[str, Any], filename: str) -> web.Response:
    body = json.dumps(doc, indent=2, ensure_ascii=False, default=str)
    return web.Response(
        text=body, content_type="application/json", charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


# --- privacy actions -----------------------------------------------------------------------------
async def privacy_confirm(request: web.Request) -> web.StreamResponse:
    return await _privacy(request, confirm=False)


async def privacy_do(request: web.Request) -> web.StreamResponse:
    return await _privacy(request, confirm=True)


async def _privacy(request: web.Request, confirm: bool) -> web.StreamResponse:
    console = _console(request)
    viewer = request[VIEWER]
    action = request.match_info["action"]
    key = request.match_info["key"]
    if action not in PRIVACY_ACTIONS:
        raise web.HTTPNotFound()
    if not viewer.can("privacy"):
        await console.audit(request, f"privacy.{action}", key, outcome="denied")
        return console.deny(
            request, "Only a privacy officer can export, erase, restrict or lift a restriction on a customer's data."
        )
    conversation, denied = await _conversation_or_deny(request, f"privacy.{action}")
    if denied is not None or conversation is None:
        return denied or web.HTTPNotFound()
    if console.privacy is None:
        return console.page(request, "error.html", status=503, title="Unavailable",
                            message="The privacy service is not available in this deployment.")
    if not confirm:
        await console.audit(request, f"view.privacy.{action}", key)
        return console.page(request, "privacy_confirm.html", title=f"Confirm {action}", c=conversation,
                            action=action, label=views.customer_label(conversation))
    form = await request.post()
    if form.get("confirm") != "yes":
        raise web.HTTPSeeOther(conversation_url(key, f"/privacy/{action}"))
    try:
        if action == "export":
            doc = await console.privacy.export(conversation.subject, viewer.principal)
            await console.audit(request, "privacy.export", key)
            return _download(doc, f"export-{_filename(conversation.subject)}.json")
        if action == "erase":
            result = await console.privacy.erase(conversation.subject, viewer.principal)
        elif action == "unrestrict":
            result = await console.privacy.unrestrict(conversation.subject, viewer.principal)
        else:
            result = await console.privacy.restrict(conversation.subject, viewer.principal)
    except BotError as exc:
        await console.audit(request, f"privacy.{action}", key, outcome="failed", error=type(exc).__name__)
        return console.page(request, "error.html", status=500, title=f"{action.capitalize()} failed",
                            message=str(exc))
    summary = {k.replace(" ", "_"): str(v) for k, v in result.items() if not k.startswith("answer")}
    await console.audit(request, f"privacy.{action}", key, result=summary)
    title = "Restriction lifted" if action == "unrestrict" else f"{action.capitalize()} done"
    return console.page(request, "privacy_done.html", title=title, action=action, key=key, result=result)


# --- data-subject requests -----------------------------------------------------------------------
async def _subject_conversation(store: Store, subject: str) -> Conversation | None:
    """The first conversation of a request's subject (by subject or wa_id, also typed as a number)."""
    found = await store.conversations.by_subject(subject)
    digits = normalise_number(subject)
    if not found and len(digits) >= 7 and digits != subject:
        found = await store.conversations.by_subject(digits)
    return found[0] if found else None


async def requests_page(request: web.Request) -> web.StreamResponse:
    """Open data-subject requests, the earliest deadline first, read through the privacy service:
    subject (masked), kind, received, due date, days left; overdue ones highlighted."""
    console = _console(request)
    viewer = request[VIEWER]
    if not viewer.can("requests"):
        await console.audit(request, "view.requests", outcome="denied")
        return console.deny(request, "Data-subject requests are for supervisors and privacy officers.")
    if console.privacy is None:
        return console.page(request, "error.html", status=503, title="Unavailable",
                            message="The privacy service is not available in this deployment.")
    limit = console.options.requests_limit
    found = await console.privacy.open_requests(limit)
    store = _store(request)
    subjects = list(dict.fromkeys(r.subject for r in found))
    heads = dict(zip(subjects, await asyncio.gather(*(_subject_conversation(store, s) for s in subjects)),
                     strict=True))
    now = console.clock()
    rows = [views.request_row(r, heads[r.subject], now, viewer.can("restricted")) for r in found]
    overdue = sum(1 for row in rows if row.overdue)
    await console.audit(request, "view.requests", count=len(rows), overdue=overdue)
    return console.page(request, "requests.html", title="Data-subject requests", rows=rows,
                        overdue=overdue, limit=limit, capped=len(found) >= limit)


# --- flows and audit -----------------------------------------------------------------------------
async def flows_page(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    store = _store(request)
    versions = list(console.flows()) if console.flows is not None else []
    if not versions:
        ids = sorted({n.flow for n in _services(request).settings.numbers})
        versions = [FlowVersion(i, "", ()) for i in ids]
    purposes = _purposes(request)
    purpose = request.query.get("purpose", "") or (purposes[0][0] if purposes else "")
    cards = []
    for flow_id in dict.fromkeys(v.flow_id for v in versions):
        counts = await store.conversations.count_by_state(flow_id)
        started = sum(counts.values())
        by_state: dict[str, int] = {}
        if purpose:
            for state in ("requested", "granted", "withdrawn", "expired"):
                by_state[state] = await store.conversations.count(
                    ConversationQuery(flow_id=flow_id, purpose=purpose, purpose_state=state)
                )
        for v in (x for x in versions if x.flow_id == flow_id):
            mine = {s: n for (ver, s), n in counts.items() if ver == v.version or not v.version}
            cards.append({
                "flow": v, "bars": views.state_bars(mine, v.states), "total": sum(mine.values()),
                "svg": Markup(v.diagram) if v.diagram.lstrip().startswith("<svg") else None,  # noqa: S704
            })
        cards.append({"funnel_of": flow_id, "bars": views.funnel(started, by_state)})
    await console.audit(request, "view.flows", purpose=purpose)
    return console.page(request, "flows.html", title="Flows", cards=cards, purposes=purposes, purpose=purpose)


async def audit_page(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    viewer = request[VIEWER]
    if not viewer.can("audit"):
        await console.audit(request, "view.audit", outcome="denied")
        return console.deny(request, "The audit log is for supervisors and privacy officers.")
    form = {k: request.query.get(k, "").strip()[:100] for k in ("actor", "action", "target")}
    query = AuditQuery(actor=form["actor"], action=form["action"], target=form["target"])
    size = 50
    page = _page_number(request.query, console.options.max_page)
    entries, total = await asyncio.gather(
        console.accounts.audit.find(query, skip=(page - 1) * size, limit=size), console.accounts.audit.count(query)
    )
    await console.audit(request, "view.audit", page=page)
    return console.page(request, "audit.html", title="Audit log", entries=entries, total=total, page=page,
                        pages=max(1, -(-total // size)), form=form, qs=_qs(form))


# --- mounting ------------------------------------------------------------------------------------
def add_console(
    app: web.Application,
    accounts: AccountStore,
    *,
    desk: Desk | None = None,
    privacy: PrivacyActions | None = None,
    flows: FlowSource | None = None,
    options: ConsoleOptions | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> Console:
    """Mount the console under ``/console`` on ``app`` (which holds ``SERVICES``). ``accounts`` is
    the account store (opened by the caller); ``desk`` enables takeover and replies, ``privacy`` the
    privacy actions and chain-verified receipts, ``flows`` the flows page's diagrams. Returns the
    :class:`Console` (its live streams are closed on the application's shutdown)."""
    console = Console(accounts, desk=desk, privacy=privacy, flows=flows, options=options, clock=clock)
    sub = web.Application(middlewares=[security_headers, guard])
    sub[CONSOLE] = console
    r = sub.router
    r.add_get("/", home, name="home")
    r.add_get("/login", login_page, name="login")
    r.add_post("/login", login, name="login_post")
    r.add_post("/logout", logout, name="logout")
    r.add_get("/conversations", conversations_page, name="conversations")
    r.add_get("/queue", queue_page, name="queue")
    r.add_get("/c/{key}", conversation_page, name="conversation")
    r.add_get("/c/{key}/events", console.live.handler, name="events")
    r.add_post("/c/{key}/reveal", reveal, name="reveal")
    r.add_post("/c/{key}/takeover", takeover, name="takeover")
    r.add_post("/c/{key}/handback", handback, name="handback")
    r.add_post("/c/{key}/reply", reply, name="reply")
    r.add_get("/c/{key}/receipt.json", receipt, name="receipt")
    r.add_get("/c/{key}/privacy/{action}", privacy_confirm, name="privacy_confirm")
    r.add_post("/c/{key}/privacy/{action}", privacy_do, name="privacy_do")
    r.add_get("/flows", flows_page, name="flows")
    r.add_get("/audit", audit_page, name="audit")
    r.add_get("/requests", requests_page, name="requests")
    r.add_static("/static/", STATIC, name="static")
    sub.on_shutdown.append(lambda _app: console.live.close())
    app.add_subapp(PREFIX, sub)
    app.router.add_get(PREFIX, home)
    app[CONSOLE] = console
    return console
