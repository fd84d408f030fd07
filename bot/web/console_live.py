"""Live transcript updates: a server-sent-events endpoint (``GET /console/c/{key}/events``).

The open transcript page listens with ``EventSource``. Each stream polls the store every
``ConsoleOptions.stream_poll`` seconds for what is newer than the client's cursor (a step sequence,
a consent sequence and a transcript time) and for outbound messages whose delivery state is still
moving (ticks, failures, gate blocks), and sends each changed timeline row as server-rendered,
escaped HTML. A poll costs one indexed read of the head plus one indexed transcript range; steps and
consent are read only when the head's version moved (and consent every tenth poll, for events
appended outside a step).

Streams are bounded: at most ``max_streams`` at once (503 beyond), each lives at most
``stream_max_seconds`` (the browser reconnects by itself with ``Last-Event-ID`` and resumes from its
cursor), a stream ends when the client goes away, and :meth:`LiveStreams.close` (run on application
shutdown) wakes every stream, lets it finish and cancels stragglers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from aiohttp import web

from bot.errors import StoreError
from bot.store.base import Store, TranscriptEntry
from bot.web import console_views as views

if TYPE_CHECKING:
    from bot.web.console import Console

log = logging.getLogger("consentbot.console.live")

WATCH = timedelta(hours=24)  # outbound rows keep being watched for ticks this long
HEARTBEAT = 15.0
CLOSE_WAIT = 3.0


@dataclass
class Cursor:
    """What the client already shows."""

    seq: int = 0
    cseq: int = 0
    at: datetime | None = None
    open: dict[str, tuple[datetime, str]] = field(default_factory=dict)  # entry id -> (at, signature)

    def token(self) -> str:
        return f"{self.seq}|{self.cseq}|{self.at.isoformat() if self.at else ''}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        parts = [*text.split("|"), "", "", ""][:3]
        try:
            seq, cseq = int(parts[0] or 0), int(parts[1] or 0)
            at = datetime.fromisoformat(parts[2]) if parts[2] else None
        except ValueError:
            return cls()
        if at is not None and at.tzinfo is None:
            at = None
        return cls(max(0, seq), max(0, cseq), at)


def _unsettled(item: views.TimelineItem) -> bool:
    return item.kind == "out" and item.ticks in {"pending", "accepted", "sent", "delivered"}


class LiveStreams:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.tasks: set[asyncio.Task[object]] = set()
        self.closing = asyncio.Event()

    async def close(self) -> None:
        """Wake every stream so it ends, wait briefly, cancel what is left."""
        self.closing.set()
        pending = {t for t in self.tasks if not t.done()}
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=CLOSE_WAIT)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)

    async def handler(self, request: web.Request) -> web.StreamResponse:
        from bot.web.console import VIEWER, _store

        console = self.console
        viewer = request[VIEWER]
        key = request.match_info["key"]
        store = _store(request)
        head = await store.conversations.get(key)
        if head is None:
            return web.json_response({"error": "not found"}, status=404)
        if head.restricted and not viewer.can("restricted"):
            return web.json_response({"error": "restricted"}, status=403)
        if self.closing.is_set() or len(self.tasks) >= console.options.max_streams:
            return web.json_response({"error": "too many live views"}, status=503, headers={"Retry-After": "5"})
        cursor = Cursor.parse(request.headers.get("Last-Event-ID") or request.query.get("cursor", ""))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        loop = asyncio.get_running_loop()
        try:
            await response.write(b"retry: 2000\n\n")
            await self._prime(store, key, cursor)
            deadline = loop.time() + console.options.stream_max_seconds
            beat = loop.time() + HEARTBEAT
            polls = 0
            while not self.closing.is_set() and loop.time() < deadline:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                try:
                    events = await self._poll(store, key, head.subject, cursor, consent=polls % 10 == 0)
                except StoreError:
                    log.warning("live view: store unavailable; closing the stream (the browser reconnects)")
                    break
                polls += 1
                for event in events:
                    await response.write(event)
                if loop.time() >= beat:
                    await response.write(b": keep-alive\n\n")
                    beat = loop.time() + HEARTBEAT
                if events and events[-1].startswith(b"event: gone"):
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closing.wait(), console.options.stream_poll)
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away
        finally:
            if task is not None:
                self.tasks.discard(task)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
        return response

    async def _prime(self, store: Store, key: str, cursor: Cursor) -> None:
        """Watch the recent outbound rows the client shows: they are re-sent once (unknown
        signature) and then whenever their ticks change."""
        if cursor.at is None:
            return
        since = cursor.at - WATCH
        for entry in await store.transcript.for_conversation(key, after=since, limit=500):
            if entry.at <= cursor.at and entry.direction == "out":
                item = views.entry_item(entry)
                if _unsettled(item) or entry.at > cursor.at - timedelta(minutes=5):
                    cursor.open[item.id] = (entry.at, "")

    async def _poll(self, store: Store, key: str, subject: str, cursor: Cursor, consent: bool) -> list[bytes]:
        out: list[views.TimelineItem] = []
        head = await store.conversations.get(key)
        if head is None:
            return [b"event: gone\ndata: {}\n\n"]
        moved = head.version > cursor.seq
        if moved:
            for record in await store.steps.history(key, after_seq=cursor.seq, limit=200):
                item = views.step_item(record)
                if item is not None:
                    out.append(item)
                cursor.seq = max(cursor.seq, record.seq)
        if moved or consent:
            for consent_record in await store.ledger.history(subject):
                if consent_record.seq > cursor.cseq:
                    out.append(views.consent_item(consent_record))
                    cursor.cseq = consent_record.seq
        out += await self._transcript(store, key, cursor)
        out.sort(key=lambda i: (i.at, i.rank))
        events = [self._event("item", item, cursor) for item in out]
        if moved:
            payload = {
                "state": head.state, "paused": head.paused, "needs_person": head.needs_person,
                "version": head.version,
            }
            events.append(f"event: head\ndata: {json.dumps(payload)}\n\n".encode())
        return events

    async def _transcript(self, store: Store, key: str, cursor: Cursor) -> list[views.TimelineItem]:
        since = cursor.at
        if cursor.open:
            oldest = min(at for at, _ in cursor.open.values()) - timedelta(milliseconds=1)
            since = oldest if since is None else min(since, oldest)
        entries: list[TranscriptEntry] = await store.transcript.for_conversation(key, after=since, limit=500)
        changed: list[views.TimelineItem] = []
        for entry in entries:
            item = views.entry_item(entry)
            new = cursor.at is None or entry.at > cursor.at
            known = cursor.open.get(item.id)
            if new or (known is not None and known[1] != item.signature):
                changed.append(item)
            if item.kind == "out" and _unsettled(item) and entry.at > (entries[-1].at - WATCH):
                cursor.open[item.id] = (entry.at, item.signature)
            else:
                cursor.open.pop(item.id, None)
            if cursor.at is None or entry.at > cursor.at:
                cursor.at = entry.at
        return changed

    def _event(self, name: str, item: views.TimelineItem, cursor: Cursor) -> bytes:
        html = self.console.render_text("_item.html", item=item)
        data = json.dumps({"id": item.id, "kind": item.kind, "html": html})
        return f"event: {name}\nid: {cursor.token()}\ndata: {data}\n\n".encode()
