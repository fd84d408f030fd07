"""The WhatsApp webhook: ``GET /webhook`` (verification handshake) and ``POST /webhook`` (events).

POST pipeline, in this order:

1. read the raw body (the application must be created with ``client_max_size >= 3 MiB``, e.g.
   ``web.Application(client_max_size=WEBHOOK_CLIENT_MAX_SIZE)``: Meta batches up to 3 MB; larger bodies
   get 413 from aiohttp). :func:`add_webhook_routes` refuses an application with a smaller limit;
2. verify ``X-Hub-Signature-256`` over those bytes: missing/wrong -> **401**, nothing stored;
3. parse (:func:`bot.whatsapp.payloads.parse_raw`). Malformed JSON or not a WhatsApp notification ->
   **200** (Meta would otherwise redeliver a body that can never succeed for 7 days), logged and counted;
4. drop items for business numbers this service does not serve (logged, counted);
5. ``await sink.accept(notification)`` makes the rest durable; **200 only after it returns**. If it
   raises (database down) -> **503**, so Meta redelivers later and nothing is lost.

The handler never waits on flow logic or on the Graph API.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Protocol

from aiohttp import web

from bot.errors import ConfigError, PayloadError
from bot.whatsapp.payloads import Notification, parse_raw
from bot.whatsapp.signature import HEADER, verify_signature

log = logging.getLogger("bot.web.webhook")

WEBHOOK_CLIENT_MAX_SIZE = 3 * 1024 * 1024
"""Smallest ``client_max_size`` the application may use (Meta's payloads reach 3 MB)."""


class WebhookSink(Protocol):
    """Where accepted notifications go. ``accept`` returns only once they are durable."""

    async def accept(self, n: Notification) -> None: ...


@dataclass(slots=True)
class WebhookStats:
    """Counters for /metrics (monotonic, per process)."""

    received: int = 0
    rejected_signature: int = 0
    rejected_payload: int = 0
    unknown_number: int = 0
    messages: int = 0
    statuses: int = 0
    preferences: int = 0
    errors: int = 0
    sink_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


def add_webhook_routes(
    app: web.Application,
    *,
    verify_token: str,
    app_secret: str,
    sink: WebhookSink,
    known_numbers: Callable[[str], bool],
    stats: WebhookStats,
    path: str = "/webhook",
) -> None:
    """Register ``GET`` and ``POST`` ``path`` on ``app``.

    ``known_numbers(phone_number_id)`` says whether this service handles that business number.
    Raises :class:`ConfigError` when the secrets are empty or ``app`` cannot receive 3 MB bodies.
    """
    if not verify_token:
        raise ConfigError("verify_token", "must not be empty")
    if not app_secret:
        raise ConfigError("app_secret", "must not be empty")
    max_size = getattr(app, "_client_max_size", None)
    if isinstance(max_size, int) and max_size < WEBHOOK_CLIENT_MAX_SIZE:
        raise ConfigError(
            "client_max_size",
            f"is {max_size} bytes; the webhook needs at least {WEBHOOK_CLIENT_MAX_SIZE} (Meta sends up to 3 MB)",
        )
    expected_token = verify_token.encode("utf-8")

    async def handshake(request: web.Request) -> web.Response:
        query = request.rel_url.query
        token = query.get("hub.verify_token", "").encode("utf-8")
        token_ok = hmac.compare_digest(token, expected_token)
        if query.get("hub.mode") == "subscribe" and token_ok:
            return web.Response(text=query.get("hub.challenge", ""), content_type="text/plain")
        log.warning("webhook handshake refused (mode=%r)", query.get("hub.mode", "")[:20])
        return web.Response(status=403, text="forbidden")

    async def receive(request: web.Request) -> web.Response:
        raw = await request.read()  # raises 413 beyond client_max_size
        stats.received += 1
        if not verify_signature(raw, request.headers.get(HEADER), app_secret):
            stats.rejected_signature += 1
            log.warning("webhook signature missing or wrong (%d bytes); check the app secret", len(raw))
            return web.Response(status=401, text="bad signature")
        try:
            notification = parse_raw(raw)
        except PayloadError as exc:
            stats.rejected_payload += 1
            log.warning("webhook body rejected: %s", exc)
            return web.Response(text="ignored")
        if notification.problems:
            skipped = "; ".join(notification.problems[:5])
            log.info("webhook: %d item(s) skipped: %s", len(notification.problems), skipped)
        notification = _only_known(notification, known_numbers, stats)
        if notification.empty:
            return web.Response(text="ok")
        try:
            await sink.accept(notification)
        except Exception:
            stats.sink_failures += 1
            log.exception("webhook sink failed; answering 503 so Meta redelivers")
            return web.Response(status=503, text="try again later")
        stats.messages += len(notification.messages)
        stats.statuses += len(notification.statuses)
        stats.preferences += len(notification.preferences)
        stats.errors += len(notification.errors)
        return web.Response(text="ok")

    app.router.add_get(path, handshake)
    app.router.add_post(path, receive)


def _only_known(n: Notification, known: Callable[[str], bool], stats: WebhookStats) -> Notification:
    """Drop every item addressed to a business number this service does not serve."""
    groups = (n.messages, n.statuses, n.preferences, n.errors)
    unknown = {pnid for pnid in {item.phone_number_id for group in groups for item in group} if not known(pnid)}
    if not unknown:
        return n
    for pnid in sorted(unknown):
        log.warning("webhook for unknown phone_number_id %s ignored", pnid)
    messages = tuple(m for m in n.messages if m.phone_number_id not in unknown)
    statuses = tuple(s for s in n.statuses if s.phone_number_id not in unknown)
    preferences = tuple(p for p in n.preferences if p.phone_number_id not in unknown)
    errors = tuple(e for e in n.errors if e.phone_number_id not in unknown)
    stats.unknown_number += sum(map(len, groups)) - len(messages) - len(statuses) - len(preferences) - len(errors)
    return replace(n, messages=messages, statuses=statuses, preferences=preferences, errors=errors)
