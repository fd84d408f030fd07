"""The poller: brings back durable work that no in-process hint is driving.

Every ``interval`` it looks for (1) conversations with inbox entries older than ``grace`` (left by a
crash, a full queue, a lease held by a process that died, or another process's webhook), (2) due
timers, and (3) outbox entries whose lease expired or whose retry is due. This is what makes a
restart after ``kill -9`` finish every acknowledged message and every committed send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from bot.errors import StoreError
from bot.runtime.clock import utc_now
from bot.runtime.dispatcher import Dispatcher
from bot.runtime.outbox import Sender
from bot.store.base import Store

log = logging.getLogger("consentbot.scheduler")


class Poller:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        sender: Sender,
        owner: str,
        *,
        interval: float = 0.5,
        grace: float = 2.0,
        lease_seconds: float = 60.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.sender = sender
        self.owner = owner
        self.interval = interval
        self.grace = grace
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[object]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except StoreError as exc:
                log.warning("poll failed: database unavailable", extra={"error": str(exc)})
            except Exception:
                log.exception("poll failed")
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        """One round of recovery (also called directly by tests)."""
        now = self.clock()
        started = time.monotonic()
        keys = await self.store.inbox.pending_keys(limit=500, not_after=now - timedelta(seconds=self.grace))
        if keys:
            log.debug("inbox work waiting", extra={"conversations": len(keys)})
        self.dispatcher.notify_recovered(keys, since=started)
        self.dispatcher.timers_due(await self.store.conversations.due_timers(now, limit=500))
        if len(self._sending) < 64:
            claimed = await self.store.transcript.claim(self.owner, now, self.lease_seconds, limit=64)
            for entry in claimed:
                task: asyncio.Task[object] = asyncio.create_task(self.sender.resume(entry))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
