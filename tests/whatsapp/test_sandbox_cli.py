"""``consentbot sandbox`` and ``consentbot chat``: argument handling and a terminal chat round trip."""

from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from wa_kit import DISPLAY, PNID, SECRET, TOKEN

from bot.cli import chat as chat_cli
from bot.cli import sandbox as sandbox_cli
from bot.cli.chat import ChatView, chat
from bot.cli.sandbox import phone_numbers
from bot.core.messages import Button, InboundKind, ListRow, ListSection, Outbound, OutboundKind
from bot.errors import ConfigError
from bot.runtime.catalog import APPROVED_TEMPLATES_FILE
from bot.whatsapp.client import GraphClient
from bot.whatsapp.payloads import parse_raw
from bot.whatsapp.signature import HEADER, verify_signature
from bot.whatsapp.simulator import create_simulator_app


def test_parsers_are_registered() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    sandbox_cli.register(sub)
    chat_cli.register(sub)
    args = parser.parse_args(["sandbox", "--port", "9001", "--webhook-url", "http://127.0.0.1:1/webhook"])
    assert args.port == 9001 and callable(args.func)
    args = parser.parse_args(["chat", "--customer", "34600111222", "--name", "Ana"])
    assert args.url == "http://127.0.0.1:8080/sandbox" and callable(args.func)


def test_phone_numbers_from_flags_env_or_default() -> None:
    assert phone_numbers(["1=+34911222333", "2=15550008888"], {}) == {"1": "34911222333", "2": "15550008888"}
    assert phone_numbers([], {"WHATSAPP_PHONE_NUMBER_ID": "42", "WHATSAPP_DISPLAY_NUMBER": "+3491"}) == {"42": "3491"}
    assert phone_numbers([], {}) == {"100000000000001": "15550009999"}
    with pytest.raises(ConfigError, match="--number"):
        phone_numbers(["nope"], {})


def test_chat_view_numbers_buttons_and_rows() -> None:
    out = io.StringIO()
    view = ChatView(out)
    view.show([{"id": "w1", "direction": "bot", "status": "sent", "text": "Pick", "header": "Hi", "footer": "",
                "buttons": [], "quick_replies": [],
                "list": {"button": "Open", "sections": [{"title": "S", "rows": [
                    {"id": "a", "title": "Alpha", "description": "first"}, {"id": "b", "title": "Beta"}]}]}}],
              typing=True)
    text = out.getvalue()
    assert "bot: *Hi*" in text and "[1] Alpha — first" in text and "[2] Beta" in text and "typing" in text
    assert view.choice("2") == ("w1", "b")
    assert view.choice("3") is None and view.choice("hello") is None


class EchoBot:
    """A minimal bot behind a real webhook: answers "hi" with buttons and a tap with a text."""

    def __init__(self) -> None:
        self.client: GraphClient | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.seen: list[tuple[InboundKind, str | None]] = []

    async def hook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if not verify_signature(raw, request.headers.get(HEADER), SECRET):
            return web.Response(status=401)
        for m in parse_raw(raw).messages:
            self.seen.append((m.kind, m.payload or m.text))
            task = asyncio.create_task(self.answer(m.subject, m.kind, m.payload))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return web.Response(text="ok")

    async def answer(self, subject: str, kind: InboundKind, payload: str | None) -> None:
        assert self.client is not None
        if kind is InboundKind.TEXT:
            await self.client.send(PNID, Outbound(to=subject, kind=OutboundKind.BUTTONS, body="Want offers?",
                                                  buttons=(Button("yes", "Yes"), Button("no", "No"))))
            await self.client.send(PNID, Outbound(
                to=subject, kind=OutboundKind.LIST, body="Topics?", list_button="Topics",
                sections=(ListSection("Pick", (ListRow("news", "News"),)),)))
        else:
            await self.client.send(PNID, Outbound(to=subject, kind=OutboundKind.TEXT, body=f"You chose {payload}"))


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, EchoBot]]:
    bot = EchoBot()
    hook_app = web.Application()
    hook_app.router.add_post("/webhook", bot.hook)
    hook = TestServer(hook_app, host="127.0.0.1")
    await hook.start_server()
    sim_app = create_simulator_app(app_secret=SECRET, webhook_url=str(hook.make_url("/webhook")),
                                   access_token=TOKEN, phone_numbers={PNID: DISPLAY},
                                   status_delays=(0.01, 0.02, 0.03))
    sim = TestServer(sim_app, host="127.0.0.1")
    await sim.start_server()
    async with aiohttp.ClientSession() as session:
        bot.client = GraphClient(session, base_url=str(sim.make_url("/graph")), api_version="v23.0",
                                 access_token=TOKEN)
        yield str(sim.make_url("/")), bot
        await asyncio.gather(*bot.tasks, return_exceptions=True)
    await sim.close()
    await hook.close()


async def test_terminal_chat_round_trip(echo: tuple[str, EchoBot]) -> None:
    url, bot = echo
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    out = io.StringIO()

    async def until(text: str) -> None:
        async def wait() -> None:
            while text not in out.getvalue():
                await asyncio.sleep(0.01)

        await asyncio.wait_for(wait(), 5)

    run = asyncio.create_task(chat(url, "34600111222", "Ana", read_line=lines.get, out=out, poll_wait=2))
    await until("You are Ana (+34600111222)")
    await lines.put("hi there")
    await until("[1] News")  # the list replaced the buttons as the current choices
    assert "bot: Want offers?" in out.getvalue() and "[1] Yes" in out.getvalue()
    await lines.put("1")
    await until("You chose news")
    await lines.put("/quit")
    assert await asyncio.wait_for(run, 5) == 0
    assert bot.seen == [(InboundKind.TEXT, "hi there"), (InboundKind.LIST_REPLY, "news")]


async def test_chat_reports_an_unreachable_sandbox() -> None:
    from aiohttp.test_utils import unused_port

    async def nothing() -> str | None:
        return None

    with pytest.raises(ConfigError, match="cannot reach the sandbox"):
        await chat(f"http://127.0.0.1:{unused_port()}/sandbox", "34600111222", "Ana", read_line=nothing,
                   out=io.StringIO())


def test_the_standalone_sandbox_shows_the_projects_declared_templates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(__file__).resolve().parents[2]
    declared = sandbox_cli._declared(root)
    assert {(d.name, d.language) for d in declared} >= {("consent_refresh", "en"), ("consent_refresh", "es")}
    broken = tmp_path
    (broken / APPROVED_TEMPLATES_FILE).write_text("templates: [{name: X}]\n", encoding="utf-8")
    assert sandbox_cli._declared(broken) == []
    assert "templates show by name" in capsys.readouterr().err
    assert sandbox_cli._declared(broken / "nowhere") == []
