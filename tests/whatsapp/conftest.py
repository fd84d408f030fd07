"""Real loopback servers for the WhatsApp channel tests: a webhook receiver and the sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from wa_kit import DISPLAY, PNID, SECRET, TOKEN, Receiver, Sandbox

from bot.whatsapp.signature import HEADER, verify_signature
from bot.whatsapp.simulator import SIMULATOR, create_simulator_app


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        header = request.headers.get(HEADER)
        rec.posts.append((raw, header, verify_signature(raw, header, SECRET)))
        rec.arrived.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/webhook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    rec.url = str(server.make_url("/webhook"))
    yield rec
    await server.close()


@pytest.fixture
async def sandbox(receiver: Receiver) -> AsyncIterator[Sandbox]:
    app = create_simulator_app(
        app_secret=SECRET,
        webhook_url=receiver.url,
        access_token=TOKEN,
        phone_numbers={PNID: DISPLAY},
        status_delays=(0.01, 0.02, 0.03),
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    sim = app[SIMULATOR]
    sim.timeout_hold = 1.0
    yield Sandbox(server, sim)
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
