"""The aiohttp application factory.

``create_app(services)`` builds the whole HTTP surface from an already-wired
:class:`bot.runtime.services.Services`: ``/healthz`` (the process is alive), ``/readyz`` (the database
answers), ``/metrics`` (Prometheus text), the WhatsApp webhook, and in sandbox mode the fake Graph API
and phone page under ``/sandbox``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot import logs
from bot.runtime.services import Services

log = logging.getLogger("consentbot.web")

SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
MAX_BODY = 4 * 1024 * 1024  # Meta's webhook payloads reach 3 MB
READY_TIMEOUT = 2.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ID_PREFIX = uuid.uuid4().hex[:8]  # this process; the counter numbers its requests (no random read each)
_ids = itertools.count(1)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (``X-Request-Id`` in and out) that every log line in it carries."""
    rid = request.headers.get("X-Request-Id", "")[:64] or f"{_ID_PREFIX}{next(_ids):08x}"
    token = logs.request_id.set(rid)
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers["X-Request-Id"] = rid
        raise
    finally:
        logs.request_id.reset(token)
    response.headers["X-Request-Id"] = rid
    elapsed = time.perf_counter() - started
    if elapsed > 1.0:
        log.warning("slow request", extra={"path": request.path, "seconds": round(elapsed, 3)})
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        ok = await asyncio.wait_for(services.store.ping(), READY_TIMEOUT)
    except (TimeoutError, Exception):  # readiness must answer, whatever the database does
        ok = False
    if not ok:
        return web.json_response({"status": "unavailable", "database": "unreachable"}, status=503)
    return web.json_response({"status": "ready", "database": "ok", "sandbox": services.settings.sandbox})


async def metrics(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    await services.refresh_gauges()
    return web.Response(text=services.metrics.render(), content_type="text/plain", charset="utf-8")


def create_app(services: Services) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[request_context])
    app[SERVICES] = services
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    for extend in services.web_extensions:
        extend(app)
    return app
