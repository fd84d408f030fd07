"""One turn, durably: lease -> load -> decide -> commit -> hand to the outbox.

A fixed pool of workers takes conversation keys from a bounded queue (the webhook only ever enqueues
keys; the events themselves are already durable in the inbox). For one key a worker takes the
conversation's lease, loads the head *after* taking it, drains that conversation's pending inbox
entries in Meta's timestamp order, and commits one step per event. A version conflict (another
process committed first) reloads and decides again. Outbound messages are sent right after their
step commits, in order. Work that cannot run now (lease held elsewhere, queue full, database away)
stays in the inbox and the poller (``bot.runtime.scheduler``) brings it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from bot import logs
from bot.core.conversation import Cause, Conversation, Step, Timer
from bot.core.messages import DeliveryStatus, Inbound, PreferenceUpdate, StatusUpdate
from bot.core.rendering import NoticeText
from bot.errors import StaleVersion, StoreError
from bot.runtime.clock import utc_now
from bot.runtime.inbox import ERROR_SIGNAL, STATUS_KEY_PREFIX, consent_error_entry
from bot.runtime.metrics import Metrics
from bot.runtime.outbox import Sender
from bot.runtime.turn import Decider, Event, Signal, Turn
from bot.settings import DEFAULT_STORE_SLOTS, DEFAULT_WORKERS
from bot.store.base import InboxEntry, Store

log = logging.getLogger("consentbot.dispatcher")

CONSENT_ERROR = 131050
STATUS_RETRIES = 20  # polls (about 0.5 s apart, after a 2 s grace) a status waits for its message's wamid
FINISHED_HORIZON = 60.0  # seconds a finished turn is remembered (far longer than a poller query takes)
MAX_ATTEMPTS = 5  # an entry that fails this often is parked (logged, marked done) instead of blocking its queue

RequestHandler = Callable[[str, Conversation, datetime], Awaitable[None]]


class _TurnSlot:
    """One worker's share of the dispatcher's store slots (see :class:`bot.runtime.outbox.StoreSlot`);
    knows whether it holds it, so giving it back is never done twice."""

    __slots__ = ("_slots", "held")

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self.held = False

    async def acquire(self) -> None:
        await self._slots.acquire()
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._slots.release()


_TURN_SLOT: contextvars.ContextVar[_TurnSlot | None] = contextvars.ContextVar("dispatcher_turn_slot", default=None)


@dataclass(frozen=True, slots=True)
class TimerWork:
    key: str
    name: str


def _notice_key(notice: NoticeText) -> tuple[str, str, str]:
    return (notice.version, notice.locale, notice.sha256)


class Dispatcher:
    def __init__(
        self,
        store: Store,
        decide: Decider,
        sender: Sender,
        metrics: Metrics,
        owner: str,
        *,
        workers: int = DEFAULT_WORKERS,
        store_slots: int | None = DEFAULT_STORE_SLOTS,
        queue_size: int = 10_000,
        lease_seconds: float = 60.0,
        on_request: RequestHandler | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.decide = decide
        self.sender = sender
        self.metrics = metrics
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.on_request = on_request
        self.clock = clock
        self._queue: asyncio.Queue[str | TimerWork] = asyncio.Queue(queue_size)
        self._queued: set[str | TimerWork] = set()
        self._busy: set[str] = set()
        self._workers_n = workers
        # None: no bound (a store whose calls never wait, the memory store, has no database to queue on)
        self._store_slots = asyncio.Semaphore(store_slots) if store_slots is not None else None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._notices_stored: set[tuple[str, str, str]] = set()
        self._finished: OrderedDict[str, float] = OrderedDict()  # key -> monotonic end of its last turn, oldest first

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(), name=f"dispatcher-{i}") for i in range(self._workers_n)]

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking work, let in-flight turns finish (bounded), then cancel the workers."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), timeout)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _drain(self) -> None:
        while self._busy:
            await asyncio.sleep(0.01)

    async def idle(self) -> None:
        """Wait until the queue is empty and no turn is running (tests, benchmarks)."""
        while self._queued or self._busy or not self._queue.empty():
            await asyncio.sleep(0.005)

    # --- enqueueing ------------------------------------------------------------------------------
    def notify(self, keys: Iterable[str]) -> None:
        """Ask for these conversations to be processed. Never blocks; a full queue drops the hint
        (the entries are durable and the poller picks them up)."""
        for key in keys:
            self._enqueue(key)

    def notify_recovered(self, keys: Iterable[str], since: float) -> None:
        """Hints from the poller, whose query started at ``since`` (monotonic): skip conversations this
        process is running, or finished after that query began (their entries were already done)."""
        for key in keys:
            if key in self._busy or self._finished.get(key, -1.0) >= since:
                continue
            self._enqueue(key)

    def notify_timer(self, key: str, name: str) -> None:
        self._enqueue(TimerWork(key, name))

    def _enqueue(self, item: str | TimerWork) -> None:
        if self._closing or item in self._queued:
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            return
        self._queued.add(item)

    async def _worker(self) -> None:
        # this worker's, for every turn it runs (each task has its context)
        slot = _TurnSlot(self._store_slots) if self._store_slots is not None else None
        _TURN_SLOT.set(slot)
        while True:
            item = await self._queue.get()
            self._queued.discard(item)
            key = item.key if isinstance(item, TimerWork) else item
            if key in self._busy:
                # another worker of this process runs this conversation: retry after it
                await asyncio.sleep(0.005)
                self._enqueue(item)
                continue
            self._busy.add(key)
            token = logs.conversation.set(key)
            try:
                if slot is not None:
                    await slot.acquire()
                if isinstance(item, TimerWork):
                    await self._run_timer(item)
                elif key.startswith(STATUS_KEY_PREFIX):
                    await self._run_statuses(key)
                else:
                    await self._run_conversation(key)
            except StoreError as exc:
                log.warning("database unavailable; work stays in the inbox", extra={"error": str(exc)})
            except Exception:
                log.exception("turn failed; work stays in the inbox")
            finally:
                if slot is not None:
                    slot.release()
                logs.conversation.reset(token)
                self._busy.discard(key)
                self._mark_finished(key, time.monotonic())

    def _mark_finished(self, key: str, now: float) -> None:
        """Remember when ``key``'s last turn ended, for :meth:`notify_recovered`; forget turns that
        ended more than :data:`FINISHED_HORIZON` ago (in order, O(1) per turn at any rate)."""
        finished = self._finished
        finished[key] = now
        finished.move_to_end(key)
        horizon = now - FINISHED_HORIZON
        while finished:
            oldest = next(iter(finished.values()))
            if oldest >= horizon:
                break
            finished.popitem(last=False)

    # --- conversations ---------------------------------------------------------------------------
    async def _run_conversation(self, key: str) -> None:
        lease = await self.store.conversations.acquire(key, self.owner, self.clock(), self.lease_seconds)
        if not lease.acquired:
            log.debug("conversation leased elsewhere; the poller retries")
            return  # another process holds it; it drains the inbox itself, the poller re-checks
        conversation = lease.conversation
        released = False
        try:
            entries = await self.store.inbox.pending(key)
            seen = set(conversation.consumed) if conversation else set()
            stale = [e.id for e in entries if e.id in seen]
            entries = [e for e in entries if e.id not in seen]
            if stale:
                await self.store.inbox.mark_done(stale, self.clock())
            for i, entry in enumerate(entries):
                last = i == len(entries) - 1
                try:
                    conversation, released = await self._apply(key, conversation, entry, release=last)
                except StaleVersion:
                    # Another writer committed first: reload after the lease and decide again.
                    self.metrics.step_conflicts.inc()
                    lease = await self.store.conversations.acquire(key, self.owner, self.clock(), self.lease_seconds)
                    if not lease.acquired:
                        return
                    conversation = lease.conversation
                    if conversation is not None and entry.id in conversation.consumed:
                        continue
                    conversation, released = await self._apply(key, conversation, entry, release=last)
                except StoreError:
                    raise
                except Exception:
                    # A poison entry (the engine or a template failed on it): retried by the poller a
                    # few times, then parked so the rest of the conversation goes on.
                    if await self.store.inbox.bump_attempts(entry.id) < MAX_ATTEMPTS:
                        raise
                    log.exception("inbox entry parked after repeated failures", extra={"entry": entry.id})
                    await self.store.inbox.mark_done([entry.id], self.clock())
        finally:
            if not released:
                await self.store.conversations.release(key, self.owner)

    async def _apply(
        self, key: str, conversation: Conversation | None, entry: InboxEntry, release: bool
    ) -> tuple[Conversation | None, bool]:
        """Decide and commit one inbox entry. Returns the new head and whether the lease was released."""
        event: Event
        cause = Cause.INBOUND
        inbound: tuple[Inbound, ...] = ()
        msg = entry.event
        if isinstance(msg, Inbound):
            event, inbound = msg, (msg,)
            pnid, subject = msg.phone_number_id, msg.subject
        elif isinstance(pref := entry.event, PreferenceUpdate):
            if pref.detail.startswith(ERROR_SIGNAL):
                kind = "error_131050"
                evidence = {"message_id": pref.detail.removeprefix(ERROR_SIGNAL)}
            else:
                kind = "marketing_stop" if pref.value == "stop" else "marketing_resume"
                evidence = {"webhook": entry.id, "category": pref.category, "detail": pref.detail}
            event = Signal(kind, self.clock(), evidence)
            cause, pnid, subject = Cause.META, pref.phone_number_id, pref.subject
        else:
            await self.store.inbox.mark_done([entry.id], self.clock())
            return conversation, False
        started = time.perf_counter()
        now = self.clock()
        turn = self.decide(conversation, event, pnid, subject, now)
        if turn is None:
            await self.store.inbox.mark_done([entry.id], now)
            return conversation, False
        head = await self._commit(conversation, turn, cause, entry.id, inbound, (entry.id,), release, now)
        self.metrics.step_latency.observe(time.perf_counter() - started)
        return head, release

    async def _commit(
        self,
        conversation: Conversation | None,
        turn: Turn,
        cause: Cause,
        cause_id: str,
        inbound: tuple[Inbound, ...],
        inbox_ids: tuple[str, ...],
        release: bool,
        now: datetime,
    ) -> Conversation:
        """Commit ``turn`` as one step at ``now`` (the time it was decided at), then send its outbox."""
        seq = (conversation.version if conversation is not None else 0) + 1
        consumed = turn.conversation.consumed
        if inbox_ids and consumed[-len(inbox_ids):] != inbox_ids:  # the engine records an inbound's own id
            consumed = (*tuple(i for i in consumed if i not in inbox_ids), *inbox_ids)[-64:]
        head = turn.conversation.evolve(version=seq, updated_at=now, consumed=consumed)
        # The notice texts its messages show (consent events will hash them), committed with the step;
        # each distinct text with the first step of this process that shows it (the store's write is
        # idempotent, and notices are immutable).
        fresh = tuple(n for n in turn.notices if _notice_key(n) not in self._notices_stored) if turn.notices else ()
        step = Step(
            conversation=head,
            seq=seq,
            at=now,
            cause=cause,
            cause_id=cause_id,
            transitions=turn.transitions,
            inbound=inbound,
            outbox=turn.outbox,
            consent=turn.consent,
            inbox_ids=inbox_ids,
            notices=fresh,
        )
        ids = await self.store.steps.commit(step, self.owner, self.lease_seconds, release=release)
        self._notices_stored.update(_notice_key(n) for n in fresh)
        self.metrics.steps.inc(cause=cause.value)
        for entry_id, message in zip(ids, turn.outbox, strict=True):
            await self.sender.send(entry_id, message, head, store_slot=_TURN_SLOT.get())
        if self.on_request is not None:
            for request in turn.requests:
                await self.on_request(request, head, now)
        return head

    # --- timers ----------------------------------------------------------------------------------
    async def _run_timer(self, work: TimerWork) -> None:
        now = self.clock()
        lease = await self.store.conversations.acquire(work.key, self.owner, now, self.lease_seconds)
        if not lease.acquired:
            return
        conversation = lease.conversation
        released = False
        try:
            timer = next((t for t in conversation.timers if t.name == work.name), None) if conversation else None
            if conversation is None or timer is None or timer.due > now:
                return  # already fired, cancelled or moved
            # The engine takes the fired timer off the conversation itself (it must see it set to fire it).
            turn = self.decide(conversation, timer, conversation.phone_number_id, conversation.subject, now)
            if turn is None:  # no flow for it: just drop the timer
                rest = tuple(t for t in conversation.timers if t is not timer)
                turn = Turn(conversation=conversation.evolve(timers=rest))
            await self._commit(conversation, turn, Cause.TIMER, timer.name, (), (), True, now)
            released = True
        finally:
            if not released:
                await self.store.conversations.release(work.key, self.owner)

    # --- statuses --------------------------------------------------------------------------------
    async def _run_statuses(self, key: str) -> None:
        entries = await self.store.inbox.pending(key, limit=500)
        done: list[str] = []
        for entry in entries:
            if isinstance(update := entry.event, StatusUpdate) and not await self._apply_status(update):
                # A status can overtake the send's own answer (Meta is fast, our settle write is not
                # done yet): keep it for the poller, a bounded number of times.
                if await self.store.inbox.bump_attempts(entry.id) < STATUS_RETRIES:
                    continue
                log.info("status for an unknown message dropped", extra={"wamid": update.message_id})
            done.append(entry.id)
        if done:
            await self.store.inbox.mark_done(done, self.clock())

    async def _apply_status(self, update: StatusUpdate) -> bool:
        """Record a delivery status; False when no sent message has that wamid (yet)."""
        now = self.clock()
        entry = await self.store.transcript.apply_status(update, now)
        # The send's own answer never came (timeout, crash) but the status names the entry: adopt the
        # wamid so the entry counts as sent and is never sent again.
        if (
            entry is None
            and update.callback_data
            and await self.store.transcript.adopt(update.callback_data, update.message_id, now)
        ):
            entry = await self.store.transcript.apply_status(update, now)
        if entry is None:
            return False
        if update.status is not DeliveryStatus.FAILED:
            return True
        for err in update.errors:
            self.metrics.graph_errors.inc(code=str(err.code))
        codes = {e.code for e in update.errors}
        if CONSENT_ERROR in codes:
            # Durable and ordered: the withdrawal runs as its own step on the conversation's inbox.
            await self.store.inbox.put(
                [consent_error_entry(entry.key, entry.subject, update.message_id, update.timestamp, now)]
            )
            self.notify([entry.key])
        elif self.sender.window_codes & codes and entry.outbound is not None:
            await self.sender.fall_back(entry, now)
        return True

    def timers_due(self, items: Iterable[tuple[str, Timer]]) -> None:
        for key, timer in items:
            self.notify_timer(key, timer.name)
