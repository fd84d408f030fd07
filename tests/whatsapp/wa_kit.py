"""Shared helpers for the WhatsApp channel tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp.test_utils import TestServer

from bot.whatsapp.client import GraphClient
from bot.whatsapp.payloads import Notification, parse_raw
from bot.whatsapp.simulator import Simulator

SECRET = "test-app-secret"
TOKEN = "test-access-token"
PNID = "100000000000001"
DISPLAY = "15550009999"
CUSTOMER = "15550001111"


@dataclass
class Receiver:
    """Stands in for the bot's webhook: keeps every POST and whether its signature was valid."""

    url: str = ""
    posts: list[tuple[bytes, str | None, bool]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def notifications(self) -> list[Notification]:
        return [parse_raw(raw) for raw, _, ok in self.posts if ok]

    async def wait_for(self, predicate: Callable[[Notification], bool], timeout: float = 5.0) -> list[Notification]:
        async def loop() -> list[Notification]:
            while True:
                found = [n for n in self.notifications() if predicate(n)]
                if found:
                    return found
                self.arrived.clear()
                await self.arrived.wait()

        return await asyncio.wait_for(loop(), timeout)


@dataclass
class Sandbox:
    server: TestServer
    sim: Simulator

    @property
    def graph_url(self) -> str:
        return str(self.server.make_url("/graph"))

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


def make_client(session: aiohttp.ClientSession, sandbox: Sandbox, **kwargs: object) -> GraphClient:
    options: dict[str, object] = {
        "rate_per_second": 1000,
        "backoff_base": 0.02,
        "pair_backoff_unit": 0.02,
        "timeout": 2.0,
    }
    options.update(kwargs)
    return GraphClient(
        session, base_url=sandbox.graph_url, api_version="v23.0", access_token=TOKEN, **options  # type: ignore[arg-type]
    )


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()
