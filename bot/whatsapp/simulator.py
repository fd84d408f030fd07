"""The sandbox: a fake WhatsApp Cloud API (Graph ``/messages``) plus a phone page, no Meta account needed.

Serve it alone (``consentbot sandbox``) or mount it inside the bot::

    app.add_subapp("/sandbox", create_simulator_app(...))
    # Graph base URL for the client: http://host:port/sandbox/graph ; phone page: /sandbox/

What it does, like Meta would:

- ``POST /graph/{version}/{phone_number_id}/messages`` checks the bearer token and the business number,
  validates the body with the same limit checks the client uses (:func:`~bot.whatsapp.outgoing.check_body`),
  answers ``{"messaging_product", "contacts": [{"input", "wa_id"}], "messages": [{"id": "wamid..."}]}``
  or a Meta-shaped error (``{"error": {"message", "type", "code", "error_data", "fbtrace_id", ...}}``),
  records the message in the customer's conversation, then posts **signed** status webhooks
  (sent, delivered, read) to ``webhook_url``. Mark-as-read / typing bodies turn the customer's ticks blue.
- A test customer (phone page, terminal chat or the JSON API under ``/_sim/api/``) sends text or taps a
  reply button / list row / template quick reply: the simulator builds the Meta-shaped inbound webhook
  (with ``context`` for taps), gives it a wamid and POSTs it signed to ``webhook_url`` - the real path.
- Error injection: ``POST /_sim/inject {"code": 131047|131050|131056|130429|500|"timeout", "count": n,
  "to": optional customer}`` or :meth:`Simulator.inject`. 131047 and 131050 (and other async-only codes)
  are reported as Meta does: 200 + wamid, then a ``failed`` status webhook; the others synchronously.
  ``"timeout"`` accepts the message but answers only after :attr:`Simulator.timeout_hold` seconds.

It signs webhooks with the app secret and its API is unauthenticated: never mount it in production.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import logging
import re
import secrets
import string
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import aiohttp
from aiohttp import web

from bot.core.audience import TemplateDeclaration
from bot.errors import LimitError
from bot.whatsapp.outgoing import check_body
from bot.whatsapp.signature import HEADER, sign

log = logging.getLogger("bot.whatsapp.simulator")

WABA_ID = "100000000000099"
ASYNC_CODES = frozenset({131047, 131050, 131049, 131026, 132015, 130472})
"""Codes the simulator reports as Meta does: 200 + wamid, then a ``failed`` status webhook."""

_ERRORS: dict[int, tuple[int, str, str]] = {
    # code: (http status, title, details)
    131047: (400, "Re-engagement message",
             "Message failed to send because more than 24 hours have passed since the customer last "
             "replied to this number."),
    131050: (400, "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
             "messages on WhatsApp from your business",
             "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
             "messages on WhatsApp from your business"),
    131049: (400, "This message was not delivered to maintain healthy ecosystem engagement.",
             "In order to maintain a healthy ecosystem engagement, the message failed to be delivered."),
    131026: (400, "Message undeliverable", "Unable to deliver message."),
    132015: (400, "Template is paused", "Template is paused due to low quality."),
    131056: (400, "(Business Account, Consumer Account) pair rate limit hit",
             "Message failed to send because there were too many messages sent from this phone number "
             "to the same phone number in a short period of time."),
    130429: (400, "Rate limit hit",
             "Message failed to send because there were too many messages sent from this phone number "
             "in a short period of time."),
    1: (500, "An unknown error occurred", "Please retry your request later."),
    2: (503, "Service temporarily unavailable", "Please retry your request later."),
    131000: (500, "Something went wrong", "Message failed to send due to an unknown error."),
    131016: (503, "Service unavailable", "A service is temporarily unavailable."),
    100: (400, "Invalid parameter", ""),
    131008: (400, "Required parameter is missing", ""),
    131009: (400, "Parameter value is not valid", ""),
    190: (401, "Invalid OAuth access token - Cannot parse access token", ""),
}
_SUBCODES = {131056: 2494055, 190: 2500, 33: 33}


@dataclass(slots=True)
class Customer:
    """A test customer: ``number`` is the wa_id (digits); ``business`` the phone_number_id they talk to."""

    number: str
    name: str
    business: str
    user_id: str | None = None
    seq: int = 0  # last change touching this customer's conversation
    typing_until: float = 0.0
    inbound_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "name": self.name, "business": self.business, "user_id": self.user_id}


@dataclass(slots=True)
class Bubble:
    """One message in a test conversation. ``direction``: ``customer`` (to the bot) or ``bot``."""

    id: str
    direction: str
    kind: str
    text: str
    time: float
    seq: int = 0
    status: str = "sent"
    header: str = ""
    footer: str = ""
    buttons: list[dict[str, str]] = field(default_factory=list)
    menu: dict[str, Any] | None = None  # a list message: {"button", "sections": [...]}
    quick_replies: list[dict[str, str]] = field(default_factory=list)
    context_id: str | None = None
    error: dict[str, Any] | None = None
    callback_data: str | None = None
    body: dict[str, Any] | None = None  # the Graph body the bot sent (bot bubbles)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "direction": self.direction, "kind": self.kind, "text": self.text,
            "time": self.time, "seq": self.seq, "status": self.status, "header": self.header,
            "footer": self.footer, "buttons": self.buttons, "list": self.menu,
            "quick_replies": self.quick_replies, "context_id": self.context_id, "error": self.error,
        }


@dataclass(slots=True)
class RequestRecord:
    """One request to the fake Graph API. ``at`` is ``time.monotonic()`` on arrival."""

    at: float
    phone_number_id: str
    kind: str  # "message" | "mark_read" | "invalid"
    to: str
    status: int
    code: int | None
    body: Any


@dataclass(slots=True)
class WebhookRecord:
    """One webhook POST attempt to ``webhook_url`` (``status`` -1: could not connect)."""

    at: float
    kind: str  # "message" | "status:sent" | "status:delivered" | "status:read" | "status:failed"
    wamid: str
    status: int
    attempt: int


@dataclass(slots=True)
class Injection:
    code: int | str
    remaining: int
    to: str | None = None


SIMULATOR: web.AppKey[Simulator] = web.AppKey("simulator")


class Simulator:
    """State and behaviour of the fake Graph API and the test customers (one per application)."""

    def __init__(
        self,
        *,
        app_secret: str,
        webhook_url: str,
        access_token: str,
        phone_numbers: dict[str, str],
        status_delays: tuple[float, float, float] = (0.05, 0.15, 0.3),
        waba_id: str = WABA_ID,
        webhook_attempts: int = 4,
        timeout_hold: float = 15.0,
        templates: Mapping[tuple[str, str], ApprovedText] | None = None,
    ) -> None:
        """``templates``: the approved texts by (name, language), so a template message shows its body
        (parameters filled in) and its quick replies' titles instead of just its name."""
        if not phone_numbers:
            raise ValueError("phone_numbers: at least one phone_number_id -> display number")
        self.app_secret = app_secret
        self.webhook_url = webhook_url
        self.access_token = access_token
        self.phone_numbers = dict(phone_numbers)
        self.status_delays = status_delays
        self.waba_id = waba_id
        self.webhook_attempts = webhook_attempts
        self.timeout_hold = timeout_hold
        self.templates = dict(templates or {})
        self.customers: dict[str, Customer] = {}
        self.conversations: dict[str, list[Bubble]] = {}
        self.requests: list[RequestRecord] = []
        self.webhooks: list[WebhookRecord] = []
        self.injections: list[Injection] = []
        self._by_id: dict[str, tuple[str, Bubble]] = {}
        self._seq = 0
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    # --- customers and conversations ------------------------------------------------------------
    def add_customer(self, number: str, name: str = "", business: str | None = None,
                     user_id: str | None = None) -> Customer:
        """Create (or rename) a test customer. ``number`` is normalised to digits."""
        digits = _digits(number)
        if digits is None:
            raise ValueError(f"number: expected 6-15 digits, got {number!r}")
        biz = business or next(iter(self.phone_numbers))
        if biz not in self.phone_numbers:
            raise ValueError(f"business: unknown phone_number_id {biz!r}")
        existing = self.customers.get(digits)
        if existing is not None:
            if name:
                existing.name = name
            if user_id:
                existing.user_id = user_id
            return existing
        customer = Customer(number=digits, name=name or f"Customer {digits[-4:]}", business=biz, user_id=user_id)
        self.customers[digits] = customer
        self.conversations[digits] = []
        self._touch(customer)
        return customer

    def conversation(self, number: str, since: int = 0) -> list[Bubble]:
        """The customer's bubbles changed after ``since`` (all by default), in order of creation."""
        digits = _digits(number) or number
        return [b for b in self.conversations.get(digits, []) if b.seq > since]

    def sent_to(self, number: str) -> list[dict[str, Any]]:
        """The Graph bodies the bot sent to this customer, in order."""
        return [b.body for b in self.conversation(number) if b.direction == "bot" and b.body is not None]

    async def wait_for_change(self, number: str, since: int, timeout: float) -> int:
        """Wait until the customer's conversation changes after ``since`` (or ``timeout``); returns cursor."""
        customer = self.customers.get(_digits(number) or number)
        if customer is None:
            return since
        deadline = time.monotonic() + max(0.0, timeout)
        while customer.seq <= since:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            event = self._changed
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                break
        return customer.seq

    def inject(self, code: int | str, count: int = 1, to: str | None = None) -> None:
        """Make the next ``count`` sends (to ``to`` only, if given) fail with ``code`` or ``"timeout"``."""
        if isinstance(code, str) and code != "timeout":
            code = int(code)
        self.injections.append(Injection(code=code, remaining=max(1, int(count)), to=_digits(to) if to else None))

    # --- the customer's side: inbound webhooks ---------------------------------------------------
    async def customer_sends_text(self, number: str, text: str, *, context_id: str | None = None) -> str:
        """The customer types ``text``; returns its wamid. The signed webhook is posted in the background."""
        customer = self._customer(number)
        if not text.strip():
            raise ValueError("text: must not be empty")
        message: dict[str, Any] = {"type": "text", "text": {"body": text}}
        bubble = Bubble(id=new_wamid(), direction="customer", kind="text", text=text, time=time.time(),
                        context_id=context_id)
        return self._customer_message(customer, bubble, message)

    async def customer_taps(self, number: str, message_id: str, choice_id: str) -> str:
        """The customer taps button/row/quick reply ``choice_id`` of the bot's message ``message_id``."""
        customer = self._customer(number)
        found = self._by_id.get(message_id)
        if found is None or found[0] != customer.number or found[1].direction != "bot":
            raise LookupError(f"message_id: no bot message {message_id!r} for this customer")
        source = found[1]
        for b in source.buttons:
            if b["id"] == choice_id:
                reply = {"type": "interactive",
                         "interactive": {"type": "button_reply", "button_reply": {"id": b["id"], "title": b["title"]}}}
                bubble = Bubble(id=new_wamid(), direction="customer", kind="button_reply", text=b["title"],
                                time=time.time(), context_id=message_id)
                return self._customer_message(customer, bubble, reply)
        for section in (source.menu or {}).get("sections", []):
            for row in section["rows"]:
                if row["id"] == choice_id:
                    list_reply = {"id": row["id"], "title": row["title"]}
                    if row.get("description"):
                        list_reply["description"] = row["description"]
                    reply = {"type": "interactive", "interactive": {"type": "list_reply", "list_reply": list_reply}}
                    bubble = Bubble(id=new_wamid(), direction="customer", kind="list_reply", text=row["title"],
                                    time=time.time(), context_id=message_id)
                    return self._customer_message(customer, bubble, reply)
        for qr in source.quick_replies:
            if qr["payload"] == choice_id:
                reply = {"type": "button", "button": {"payload": qr["payload"], "text": qr["title"]}}
                bubble = Bubble(id=new_wamid(), direction="customer", kind="button", text=qr["title"],
                                time=time.time(), context_id=message_id)
                return self._customer_message(customer, bubble, reply)
        raise LookupError(f"choice_id: message {message_id!r} has no button or row {choice_id!r}")

    def _customer(self, number: str) -> Customer:
        digits = _digits(number)
        customer = self.customers.get(digits or "")
        if customer is None:
            raise LookupError(f"number: no test customer {number!r}; create it first")
        return customer

    def _customer_message(self, customer: Customer, bubble: Bubble, content: dict[str, Any]) -> str:
        message: dict[str, Any] = {"from": customer.number, "id": bubble.id, "timestamp": str(int(bubble.time))}
        if customer.user_id:
            message["from_user_id"] = customer.user_id
        if bubble.context_id:
            message["context"] = {"from": self.phone_numbers[customer.business], "id": bubble.context_id}
        message.update(content)
        contact: dict[str, Any] = {"profile": {"name": customer.name}, "wa_id": customer.number}
        if customer.user_id:
            contact["user_id"] = customer.user_id
        payload = self._envelope(customer.business, {"contacts": [contact], "messages": [message]})
        self._add_bubble(customer, bubble)
        self._spawn(self._deliver_inbound(customer, bubble, payload))
        return bubble.id

    async def _deliver_inbound(self, customer: Customer, bubble: Bubble, payload: dict[str, Any]) -> None:
        async with customer.inbound_lock:  # one customer's messages reach the bot in order
            status = await self._post_webhook(payload, "message", bubble.id)
        if bubble.status == "sent":
            bubble.status = "delivered" if status == 200 else "failed"
            if status != 200:
                bubble.error = {"code": status, "title": f"webhook answered {status}"}
            self._touch(customer, bubble)

    # --- the bot's side: the fake Graph API ------------------------------------------------------
    async def handle_graph(self, request: web.Request) -> web.Response:
        pnid = request.match_info["phone_number_id"]
        arrived = time.monotonic()
        auth = request.headers.get("Authorization", "")
        if not secrets.compare_digest(auth.encode(), f"Bearer {self.access_token}".encode()):
            return self._error(arrived, pnid, "invalid", "", 190, None, subcode=_SUBCODES[190])
        if pnid not in self.phone_numbers:
            return self._error(arrived, pnid, "invalid", "", 100, None, subcode=33,
                               details=f"Unsupported post request. Object with ID '{pnid}' does not exist")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._error(arrived, pnid, "invalid", "", 100, None, details="request body is not JSON")
        if not isinstance(body, dict):
            return self._error(arrived, pnid, "invalid", "", 100, body, details="request body is not an object")
        if body.get("status") == "read":
            return self._mark_read(arrived, pnid, body)
        try:
            check_body(body)
        except LimitError as exc:
            code = 131008 if exc.actual in ("missing", None) else 100
            return self._error(arrived, pnid, "message", "", code, body, details=str(exc))
        customer = self._recipient(body)
        if customer is None:
            return self._error(arrived, pnid, "message", "", 100, body,
                               details="recipient: no test customer with that business-scoped user id")
        if customer.business != pnid:
            customer.business = pnid
        injected = self._take_injection(customer.number)
        if injected is not None and injected != "timeout" and injected not in ASYNC_CODES:
            code = int(injected)
            return self._error(arrived, pnid, "message", customer.number, code, body)
        self.requests.append(RequestRecord(arrived, pnid, "message", customer.number, 200, None, body))
        bubble = _bubble_from_body(body, self.templates)
        self._add_bubble(customer, bubble)
        customer.typing_until = 0.0
        if isinstance(injected, int):
            self._spawn(self._fail_later(customer, bubble, injected))
        else:
            self._spawn(self._deliver_statuses(customer, bubble))
        answer: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": str(body.get("to") or body.get("recipient")), "wa_id": customer.number}],
            "messages": [{"id": bubble.id}],
        }
        if body.get("type") == "template":
            answer["messages"][0]["message_status"] = "accepted"
        if injected == "timeout":
            await asyncio.sleep(self.timeout_hold)
        return web.json_response(answer)

    def _mark_read(self, arrived: float, pnid: str, body: dict[str, Any]) -> web.Response:
        wamid = body.get("message_id")
        found = self._by_id.get(wamid) if isinstance(wamid, str) else None
        if found is None or found[1].direction != "customer":
            return self._error(arrived, pnid, "mark_read", "", 100, body,
                               details="message_id: not an inbound message of this number")
        customer = self.customers[found[0]]
        self.requests.append(RequestRecord(arrived, pnid, "mark_read", customer.number, 200, None, body))
        target = found[1]
        for bubble in self.conversations[customer.number]:  # this and every earlier inbound message
            if bubble.direction == "customer" and bubble.status in ("sent", "delivered"):
                bubble.status = "read"
                self._touch(customer, bubble)
            if bubble is target:
                break
        if isinstance(body.get("typing_indicator"), dict):
            customer.typing_until = time.monotonic() + 25.0
            self._touch(customer)
        return web.json_response({"success": True})

    def _recipient(self, body: dict[str, Any]) -> Customer | None:
        if "to" in body:
            digits = _digits(str(body["to"]))
            if digits is None:
                return None
            return self.customers.get(digits) or self.add_customer(digits)
        uid = body.get("recipient")
        return next((c for c in self.customers.values() if c.user_id == uid), None)

    def _take_injection(self, number: str) -> int | str | None:
        for inj in self.injections:
            if inj.remaining > 0 and (inj.to is None or inj.to == number):
                inj.remaining -= 1
                if inj.remaining == 0:
                    self.injections.remove(inj)
                return inj.code
        return None

    def _error(self, arrived: float, pnid: str, kind: str, to: str, code: int, body: Any, *,
               subcode: int | None = None, details: str = "") -> web.Response:
        http_status, title, default_details = _ERRORS.get(code, (400, "Simulated error", ""))
        error: dict[str, Any] = {
            "message": f"(#{code}) {title}",
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details or default_details or title},
            "fbtrace_id": "A" + secrets.token_urlsafe(15),
        }
        sub = subcode if subcode is not None else _SUBCODES.get(code)
        if sub is not None:
            error["error_subcode"] = sub
        if http_status >= 500:
            error["is_transient"] = True
        self.requests.append(RequestRecord(arrived, pnid, kind, to, http_status, code, body))
        return web.json_response({"error": error}, status=http_status)

    # --- status webhooks -------------------------------------------------------------------------
    async def _deliver_statuses(self, customer: Customer, bubble: Bubble) -> None:
        start = time.monotonic()
        for status, delay in zip(("sent", "delivered", "read"), self.status_delays, strict=True):
            await asyncio.sleep(max(0.0, start + delay - time.monotonic()))
            if bubble.status == "failed":
                return
            bubble.status = status
            self._touch(customer, bubble)
            await self._post_webhook(self._status_payload(customer, bubble, status), f"status:{status}", bubble.id)

    async def _fail_later(self, customer: Customer, bubble: Bubble, code: int) -> None:
        await asyncio.sleep(self.status_delays[0])
        _, title, details = _ERRORS.get(code, (400, "Simulated error", "Simulated failure"))
        bubble.status = "failed"
        bubble.error = {"code": code, "title": title}
        self._touch(customer, bubble)
        error = {"code": code, "title": title, "message": title, "error_data": {"details": details or title},
                 "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"}
        payload = self._status_payload(customer, bubble, "failed", errors=[error])
        await self._post_webhook(payload, "status:failed", bubble.id)

    def _status_payload(self, customer: Customer, bubble: Bubble, status: str,
                        errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        item: dict[str, Any] = {"id": bubble.id, "status": status, "timestamp": str(int(time.time())),
                                "recipient_id": customer.number}
        if customer.user_id:
            item["recipient_user_id"] = customer.user_id
        if status in ("sent", "delivered"):
            template = bubble.kind == "template"
            item["pricing"] = {"billable": template, "pricing_model": "PMP",
                               "type": "regular" if template else "free_customer_service",
                               "category": "utility" if template else "service"}
        if bubble.callback_data is not None:
            item["biz_opaque_callback_data"] = bubble.callback_data
        if errors:
            item["errors"] = errors
        return self._envelope(customer.business, {"statuses": [item]})

    def _envelope(self, pnid: str, value: dict[str, Any]) -> dict[str, Any]:
        full = {"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": self.phone_numbers[pnid], "phone_number_id": pnid}}
        full.update(value)
        return {"object": "whatsapp_business_account",
                "entry": [{"id": self.waba_id, "changes": [{"value": full, "field": "messages"}]}]}

    async def _post_webhook(self, payload: dict[str, Any], kind: str, wamid: str) -> int:
        """POST ``payload`` signed, like Meta: ASCII-escaped JSON, retried with backoff on non-200."""
        raw = encode_webhook(payload)
        headers = {"Content-Type": "application/json", HEADER: sign(raw, self.app_secret)}
        status = -1
        for attempt in range(1, self.webhook_attempts + 1):
            try:
                session = self._client()
                timeout = aiohttp.ClientTimeout(total=10)
                async with session.post(self.webhook_url, data=raw, headers=headers, timeout=timeout) as resp:
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("sandbox webhook %s to %s failed: %s", kind, self.webhook_url, type(exc).__name__)
                status = -1
            self.webhooks.append(WebhookRecord(time.monotonic(), kind, wamid, status, attempt))
            if status == 200:
                return status
            await asyncio.sleep(0.2 * 2 ** (attempt - 1))
        return status

    # --- plumbing ----------------------------------------------------------------------------------
    def _add_bubble(self, customer: Customer, bubble: Bubble) -> None:
        self.conversations.setdefault(customer.number, []).append(bubble)
        self._by_id[bubble.id] = (customer.number, bubble)
        self._touch(customer, bubble)

    def _touch(self, customer: Customer, bubble: Bubble | None = None) -> None:
        self._seq += 1
        customer.seq = self._seq
        if bubble is not None:
            bubble.seq = self._seq
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for pending webhook deliveries (tests)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def close(self) -> None:
        """Cancel pending deliveries and close the HTTP session (runs on application shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


# --- wire helpers ---------------------------------------------------------------------------------
def new_wamid() -> str:
    """A fresh message id shaped like Meta's (``wamid.`` + base64)."""
    return "wamid." + base64.b64encode(b"\x15\x02\x00\x12\x18\x14" + secrets.token_bytes(20)).decode("ascii")


def encode_webhook(payload: dict[str, Any]) -> bytes:
    """Serialise like Meta: non-ASCII as ``\\uXXXX`` and ``/`` escaped, so only raw-byte signing works."""
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).replace("/", "\\/").encode("ascii")


def _digits(number: str | None) -> str | None:
    if not isinstance(number, str):
        return None
    compact = number.strip().replace(" ", "").replace("-", "").lstrip("+")
    return compact if compact.isascii() and compact.isdigit() and 6 <= len(compact) <= 15 else None


@dataclass(frozen=True, slots=True)
class ApprovedText:
    """What a customer sees of an approved template: its body (``{{1}}`` or ``{{name}}`` placeholders)
    and its buttons' titles, in order."""

    body: str
    buttons: tuple[str, ...] = ()


def approved_texts(declarations: Iterable[TemplateDeclaration]) -> dict[tuple[str, str], ApprovedText]:
    """What the phone page shows of each declared template (``whatsapp_templates.yaml``)."""
    return {(d.name, d.language): ApprovedText(d.body, tuple(b.text for b in d.buttons)) for d in declarations}


def _filled(text: str, positional: list[str], named: dict[str, str]) -> str:
    def value(m: re.Match[str]) -> str:
        key = m.group(1)
        if key.isdigit() and 0 < int(key) <= len(positional):
            return positional[int(key) - 1]
        return named.get(key, m.group(0))

    return re.sub(r"\{\{\s*(\w+)\s*\}\}", value, text)


def _bubble_from_body(body: dict[str, Any], known: Mapping[tuple[str, str], ApprovedText] | None = None) -> Bubble:
    kind = body.get("type")
    context = body.get("context")
    bubble = Bubble(id=new_wamid(), direction="bot", kind=str(kind), text="", time=time.time(), body=body,
                    context_id=context.get("message_id") if isinstance(context, dict) else None)
    callback = body.get("biz_opaque_callback_data")
    bubble.callback_data = callback if isinstance(callback, str) else None
    if kind == "text":
        bubble.text = body["text"]["body"]
    elif kind == "interactive":
        inter = body["interactive"]
        bubble.text = inter["body"]["text"]
        bubble.header = (inter.get("header") or {}).get("text", "")
        bubble.footer = (inter.get("footer") or {}).get("text", "")
        if inter["type"] == "button":
            bubble.kind = "buttons"
            bubble.buttons = [
                {"id": b["reply"]["id"], "title": b["reply"]["title"]} for b in inter["action"]["buttons"]
            ]
        else:
            bubble.kind = "list"
            bubble.menu = {"button": inter["action"]["button"], "sections": [
                {"title": s.get("title", ""), "rows": [
                    {"id": r["id"], "title": r["title"], "description": r.get("description", "")} for r in s["rows"]
                ]} for s in inter["action"]["sections"]
            ]}
    elif kind == "template":
        template = body["template"]
        approved = (known or {}).get((str(template["name"]), str(template["language"]["code"])))
        params: list[str] = []
        named: dict[str, str] = {}
        for comp in template.get("components", []):
            quick_reply = comp.get("type") == "button" and comp.get("sub_type") == "quick_reply"
            index = int(comp["index"]) if str(comp.get("index", "")).isdigit() else -1
            for p in comp.get("parameters", []):
                if not isinstance(p, dict):
                    continue
                if quick_reply and p.get("type") == "payload":
                    title = p["payload"]
                    if approved is not None and 0 <= index < len(approved.buttons):
                        title = approved.buttons[index]
                    bubble.quick_replies.append({"payload": p["payload"], "title": title})
                elif p.get("type") == "text" and comp.get("type") != "button":
                    params.append(str(p.get("text", "")))
                    if p.get("parameter_name"):
                        named[str(p["parameter_name"])] = str(p.get("text", ""))
        if approved is not None:
            bubble.text = _filled(approved.body, params, named)
        else:
            bubble.text = f"[template {template['name']} · {template['language']['code']}]"
            if params:
                bubble.text += " " + " | ".join(params)
    elif kind == "reaction":
        bubble.text = body["reaction"].get("emoji", "")
        bubble.context_id = body["reaction"]["message_id"]
    return bubble


# --- HTTP: the JSON API and the phone page --------------------------------------------------------
async def _api_customers(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    return web.json_response({
        "customers": [c.to_json() for c in sim.customers.values()],
        "businesses": [{"phone_number_id": k, "display": v} for k, v in sim.phone_numbers.items()],
    })


async def _api_create_customer(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    data = await _json(request)
    existed = _digits(str(data.get("number", ""))) in sim.customers
    try:
        customer = sim.add_customer(str(data.get("number", "")), str(data.get("name", "") or ""),
                                    data.get("business") or None, data.get("user_id") or None)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": str(exc)}), content_type="application/json") from exc
    return web.json_response(customer.to_json(), status=200 if existed else 201)


async def _api_send_text(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    data = await _json(request)
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise _bad("text: required")
    try:
        wamid = await sim.customer_sends_text(request.match_info["number"], text)
    except LookupError as exc:
        raise web.HTTPNotFound(text=json.dumps({"error": str(exc)}), content_type="application/json") from exc
    return web.json_response({"id": wamid}, status=201)


async def _api_tap(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    data = await _json(request)
    try:
        wamid = await sim.customer_taps(request.match_info["number"], str(data.get("message_id", "")),
                                        str(data.get("choice_id", "")))
    except LookupError as exc:
        raise web.HTTPNotFound(text=json.dumps({"error": str(exc)}), content_type="application/json") from exc
    return web.json_response({"id": wamid}, status=201)


async def _api_messages(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    number = request.match_info["number"]
    customer = sim.customers.get(_digits(number) or "")
    if customer is None:
        raise web.HTTPNotFound(text=json.dumps({"error": "no such customer"}), content_type="application/json")
    try:
        since = int(request.query.get("since", "0"))
        wait = min(30.0, max(0.0, float(request.query.get("wait", "0"))))
    except ValueError as exc:
        raise _bad("since and wait must be numbers") from exc
    cursor = await sim.wait_for_change(number, since, wait) if wait else customer.seq
    return web.json_response({
        "cursor": cursor,
        "messages": [b.to_json() for b in sim.conversation(number, since)],
        "typing": customer.typing_until > time.monotonic(),
    })


async def _api_inject(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    data = await _json(request)
    code = data.get("code")
    if not (code == "timeout" or (isinstance(code, int) and not isinstance(code, bool))
            or (isinstance(code, str) and code.isdigit())):
        raise _bad('code: an error code (e.g. 131047, 131056, 500) or "timeout"')
    if code == 500:
        code = 1  # Graph's generic HTTP 500: code 1, is_transient
    count = data.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1000:
        raise _bad("count: an integer from 1 to 1000")
    to = data.get("to")
    sim.inject(code, count, str(to) if to else None)
    return web.json_response({"pending": [{"code": i.code, "remaining": i.remaining, "to": i.to}
                                          for i in sim.injections]})


async def _api_log(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    return web.json_response({
        "requests": [{"at": r.at, "phone_number_id": r.phone_number_id, "kind": r.kind, "to": r.to,
                      "status": r.status, "code": r.code} for r in sim.requests[-500:]],
        "webhooks": [{"at": w.at, "kind": w.kind, "wamid": w.wamid, "status": w.status, "attempt": w.attempt}
                     for w in sim.webhooks[-500:]],
    })


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError as exc:
        raise _bad("body: expected a JSON object") from exc
    if not isinstance(data, dict):
        raise _bad("body: expected a JSON object")
    return data


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def _asset(name: str) -> str:
    return resources.files("bot.whatsapp").joinpath(name).read_text(encoding="utf-8")


def create_simulator_app(
    *,
    app_secret: str,
    webhook_url: str,
    access_token: str,
    phone_numbers: dict[str, str],
    status_delays: tuple[float, float, float] = (0.05, 0.15, 0.3),
    templates: Mapping[tuple[str, str], ApprovedText] | None = None,
) -> web.Application:
    """The sandbox application. Its :class:`Simulator` is ``app[SIMULATOR]`` (inject errors, read logs).

    Routes (relative to where it is mounted): ``GET /`` phone page, ``GET /static/phone.js``,
    ``POST /graph/{version}/{phone_number_id}/messages``, ``POST /_sim/inject``, ``GET /_sim/log`` and
    the JSON API ``/_sim/api/customers[/{number}/messages|/taps]``.
    """
    sim = Simulator(app_secret=app_secret, webhook_url=webhook_url, access_token=access_token,
                    phone_numbers=phone_numbers, status_delays=status_delays, templates=templates)
    page = string.Template(_asset("templates/phone.html"))
    script = _asset("static/phone.js")
    businesses = json.dumps([{"phone_number_id": k, "display": v} for k, v in phone_numbers.items()])

    async def phone_page(request: web.Request) -> web.Response:
        base = request.path if request.path.endswith("/") else request.path + "/"
        text = page.substitute(base=html.escape(base), businesses=html.escape(businesses))
        return web.Response(text=text, content_type="text/html")

    async def phone_script(request: web.Request) -> web.Response:
        return web.Response(text=script, content_type="application/javascript")

    async def on_shutdown(app: web.Application) -> None:
        await sim.close()

    app = web.Application()
    app[SIMULATOR] = sim
    app.router.add_get("/", phone_page)
    app.router.add_get("/static/phone.js", phone_script)
    app.router.add_post("/graph/{version}/{phone_number_id}/messages", sim.handle_graph)
    app.router.add_post("/_sim/inject", _api_inject)
    app.router.add_get("/_sim/log", _api_log)
    app.router.add_get("/_sim/api/customers", _api_customers)
    app.router.add_post("/_sim/api/customers", _api_create_customer)
    app.router.add_post("/_sim/api/customers/{number}/messages", _api_send_text)
    app.router.add_get("/_sim/api/customers/{number}/messages", _api_messages)
    app.router.add_post("/_sim/api/customers/{number}/taps", _api_tap)
    app.on_shutdown.append(on_shutdown)
    return app
