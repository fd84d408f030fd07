"""Runs the real service in-process (real aiohttp server on loopback, real store, real engine, the
sandbox's fake Graph API) for the runtime tests, plus signed-webhook helpers."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.runtime.services import Services
from bot.settings import Settings, load_settings
from bot.web.app import create_app
from bot.whatsapp.signature import sign
from bot.whatsapp.simulator import SIMULATOR, Simulator
from bot.wiring import build_services

ROOT = Path(__file__).resolve().parents[2]
PNID = "100000000000001"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    services: Services
    base: str
    runner: web.AppRunner
    stack: AsyncExitStack

    @property
    def sim(self) -> Simulator:
        app = self.services.components["simulator"]
        return app[SIMULATOR]  # type: ignore[no-any-return]

    @property
    def settings(self) -> Settings:
        return self.services.settings

    async def stop(self) -> None:
        await self.services.stop()
        await self.runner.cleanup()
        await self.stack.aclose()


async def start_service(env: Mapping[str, str], store_kind: str = "mongo", project: Path = ROOT) -> Running:
    settings = load_settings(project, env=dict(env))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stack = AsyncExitStack()
    services = await build_services(settings, stack, store_kind=store_kind, base_url=base)
    runner = web.AppRunner(create_app(services), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    services.start()
    return Running(services, base, runner, stack)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def envelope(value: dict[str, Any], field: str = "messages") -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "100000000000099", "changes": [{"field": field, "value": value}]}],
    }


def text_payload(wa_id: str, wamid: str, text: str, ts: int | None = None, name: str = "Test") -> dict[str, Any]:
    return envelope(
        {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550009999", "phone_number_id": PNID},
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "messages": [
                {"from": wa_id, "id": wamid, "timestamp": str(ts or int(time.time())), "type": "text",
                 "text": {"body": text}}
            ],
        }
    )


def status_payload(wa_id: str, wamid: str, status: str, code: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(int(time.time())), "recipient_id": wa_id}
    if code is not None:
        item["errors"] = [{"code": code, "title": "error", "message": "error", "error_data": {"details": "x"}}]
    return envelope(
        {"messaging_product": "whatsapp",
         "metadata": {"display_phone_number": "15550009999", "phone_number_id": PNID},
         "statuses": [item]}
    )


def preferences_payload(wa_id: str, value: str) -> dict[str, Any]:
    return envelope(
        {"messaging_product": "whatsapp",
         "metadata": {"display_phone_number": "15550009999", "phone_number_id": PNID},
         "user_preferences": [{"wa_id": wa_id, "detail": "User requested to stop marketing messages",
                               "category": "marketing_messages", "value": value, "timestamp": int(time.time())}]},
        field="user_preferences",
    )


async def post_webhook(base: str, payload: dict[str, Any], secret: str) -> int:
    raw = json.dumps(payload).encode()
    async with aiohttp.ClientSession() as session, session.post(
        f"{base}/webhook",
        data=raw,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, secret)},
    ) as response:
        return response.status
