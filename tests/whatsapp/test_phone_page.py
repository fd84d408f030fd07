"""The phone page in a real headless Chromium: create a customer, chat, tap a reply button."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import playwright.async_api as playwright_api
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from test_sandbox_cli import EchoBot
from wa_kit import DISPLAY, PNID, SECRET, TOKEN

from bot.core.messages import InboundKind
from bot.whatsapp.client import GraphClient
from bot.whatsapp.simulator import create_simulator_app

pytestmark = pytest.mark.browser


def chromium() -> tuple[bool, str | None]:
    """(available, executable): Playwright's own browser when installed (executable None), else a system one."""
    cache = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH", Path.home() / ".cache" / "ms-playwright"))
    if any(cache.glob("chromium*")):
        return True, None
    system = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    return system is not None, system


@pytest.fixture
async def mounted() -> AsyncIterator[tuple[str, EchoBot]]:
    bot = EchoBot()
    hook_app = web.Application()
    hook_app.router.add_post("/webhook", bot.hook)
    hook = TestServer(hook_app, host="127.0.0.1")
    await hook.start_server()
    outer = web.Application()
    outer.add_subapp("/sandbox", create_simulator_app(
        app_secret=SECRET, webhook_url=str(hook.make_url("/webhook")), access_token=TOKEN,
        phone_numbers={PNID: DISPLAY}, status_delays=(0.01, 0.02, 0.03)))
    server = TestServer(outer, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        bot.client = GraphClient(session, base_url=str(server.make_url("/sandbox/graph")), api_version="v23.0",
                                 access_token=TOKEN)
        yield str(server.make_url("/sandbox/")), bot
    await server.close()
    await hook.close()


async def test_chat_on_the_phone_page(mounted: tuple[str, EchoBot]) -> None:
    url, bot = mounted
    available, executable = chromium()
    assert available, "Debian's chromium is needed for the browser tests (.ci/browser installs it)"
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(url)
            await page.fill("#new-name", "Ana")
            await page.fill("#new-number", "34600111222")
            await page.click("#new-customer button[type=submit]")
            await page.wait_for_selector("#send-text:not([disabled])")
            await page.fill("#send-text", "hola \u00bfqu\u00e9 tal?")
            await page.press("#send-text", "Enter")
            await page.wait_for_selector("text=Want offers?", timeout=5000)
            await page.click(".choices button:has-text('Yes')")
            await page.wait_for_selector("text=You chose yes", timeout=5000)
            await page.wait_for_selector(".bubble.bot .meta.read", timeout=5000)  # the bot's ticks arrive
            customer_ticks = await page.locator(".bubble.customer .meta").all_text_contents()
            assert all("\u2713\u2713" in t for t in customer_ticks)  # delivered to the bot's webhook
            assert errors == []
        finally:
            await browser.close()
    assert bot.seen == [(InboundKind.TEXT, "hola \u00bfqu\u00e9 tal?"), (InboundKind.BUTTON_REPLY, "yes")]
