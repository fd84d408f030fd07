"""``consentbot chat``: be a sandbox test customer in the terminal.

Talks to the simulator's JSON API (``/_sim/api/``): what you type is sent as a WhatsApp text through the
real signed webhook; the bot's messages are printed, with reply buttons, list rows and template quick
replies as numbered choices (type the number to tap it). ``/quit`` exits. ``input()`` runs in a thread
so the event loop keeps following the conversation.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import aiohttp

from bot.errors import BotError, ConfigError

ReadLine = Callable[[], Awaitable[str | None]]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("chat", help="talk to the bot in the terminal as a sandbox test customer")
    p.add_argument(
        "--url",
        default="http://127.0.0.1:8080/sandbox",
        help="the sandbox (default: http://127.0.0.1:8080/sandbox, as mounted by serve)",
    )
    p.add_argument("--customer", default="34600000001", help="the test customer's number (digits)")
    p.add_argument("--name", default="Sandbox Customer", help="the test customer's profile name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(chat(args.url, args.customer, args.name))


async def _stdin_line() -> str | None:
    try:
        return await asyncio.to_thread(input, "")
    except EOFError:
        return None


class ChatView:
    """Prints the conversation and remembers the latest numbered choices."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.seen: set[str] = set()
        self.failed: set[str] = set()
        self.choices: list[tuple[str, str, str]] = []  # (message id, choice id, label)
        self.typing = False

    def show(self, messages: list[dict[str, Any]], typing: bool) -> None:
        for m in messages:
            if m["direction"] == "bot" and m["id"] not in self.seen:
                self.seen.add(m["id"])
                self._bot(m)
            if m["status"] == "failed" and m["id"] not in self.failed:
                self.failed.add(m["id"])
                error = m.get("error") or {}
                who = "bot message" if m["direction"] == "bot" else "your message"
                self.print(f"  ! {who} failed: {error.get('code', '')} {error.get('title', '')}".rstrip())
        if typing and not self.typing:
            self.print("  (bot is typing…)")
        self.typing = typing

    def _bot(self, m: dict[str, Any]) -> None:
        lines = []
        if m.get("header"):
            lines.append(f"*{m['header']}*")
        lines.append(m.get("text", ""))
        if m.get("footer"):
            lines.append(f"_{m['footer']}_")
        self.print("bot: " + "\n     ".join("\n".join(lines).splitlines() or [""]))
        choices: list[tuple[str, str, str]] = []
        for b in m.get("buttons") or []:
            choices.append((m["id"], b["id"], b["title"]))
        for q in m.get("quick_replies") or []:
            choices.append((m["id"], q["payload"], q["title"]))
        menu = m.get("list")
        if menu:
            self.print(f"     [{menu['button']}]")
            for section in menu["sections"]:
                if section.get("title"):
                    self.print(f"     {section['title']}:")
                for row in section["rows"]:
                    label = row["title"] + (f" — {row['description']}" if row.get("description") else "")
                    choices.append((m["id"], row["id"], label))
        if choices:
            self.choices = choices
            for i, (_, _, label) in enumerate(choices, 1):
                self.print(f"  [{i}] {label}")

    def choice(self, line: str) -> tuple[str, str] | None:
        """(message id, choice id) when ``line`` is the number of a current choice."""
        text = line.strip()
        if text.isdigit() and 1 <= int(text) <= len(self.choices):
            message_id, choice_id, _ = self.choices[int(text) - 1]
            return message_id, choice_id
        return None

    def print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


async def chat(
    url: str,
    customer: str,
    name: str,
    *,
    read_line: ReadLine | None = None,
    out: TextIO | None = None,
    poll_wait: float = 20.0,
) -> int:
    """Run the terminal chat until ``/quit`` or end of input; returns the exit code."""
    api = url.rstrip("/") + "/_sim/api/"
    view = ChatView(out or sys.stdout)
    read = read_line or _stdin_line
    timeout = aiohttp.ClientTimeout(total=poll_wait + 15)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        created = await _call(session, "POST", api + "customers", {"name": name, "number": customer})
        number = created["number"]
        view.print(f"You are {created['name']} (+{number}). Type a message, a number to tap, /quit to leave.")
        follower = asyncio.create_task(_follow(session, api, number, view, poll_wait))
        try:
            while True:
                line = await read()
                if line is None or line.strip() == "/quit":
                    return 0
                if not line.strip():
                    continue
                picked = view.choice(line)
                try:
                    if picked is not None:
                        await _call(session, "POST", f"{api}customers/{number}/taps",
                                    {"message_id": picked[0], "choice_id": picked[1]})
                    else:
                        await _call(session, "POST", f"{api}customers/{number}/messages", {"text": line})
                except BotError as exc:
                    view.print(f"  ! {exc}")
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)


async def _follow(session: aiohttp.ClientSession, api: str, number: str, view: ChatView, wait: float) -> None:
    cursor = 0
    while True:
        try:
            data = await _call(session, "GET", f"{api}customers/{number}/messages?since={cursor}&wait={wait}")
        except BotError as exc:
            view.print(f"  ! {exc}")
            await asyncio.sleep(1.0)
            continue
        view.show(data["messages"], bool(data.get("typing")))
        cursor = int(data["cursor"])


async def _call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> dict[str, Any]:
    try:
        async with session.request(method, url, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                message = data.get("error") if isinstance(data, dict) else None
                raise ConfigError("sandbox", f"{method} {url} answered {resp.status}: {message or ''}".strip())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ConfigError("--url", f"cannot reach the sandbox at {url}: {type(exc).__name__}") from exc
    if not isinstance(data, dict):
        raise ConfigError("sandbox", f"{method} {url}: unexpected answer")
    return data
