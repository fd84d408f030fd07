"""The outbox: every outbound message goes through the send gate, then the Graph client.

:class:`Sender` is the only path from the framework to the Graph API (flows, agents and campaigns all
call it). Each attempt is recorded on the transcript entry: accepted (with its wamid), blocked (with
the gate's reason), failed (permanent Graph error), or re-queued with backoff (transient errors).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Protocol

from bot.core.conversation import Conversation
from bot.core.messages import Category, ErrorInfo, Outbound
from bot.core.policy import GateInput, Verdict, as_template, cap_period_start, decide_send
from bot.core.project import Project
from bot.errors import ChannelError
from bot.runtime.clock import utc_now
from bot.runtime.inbox import consent_error_entry
from bot.runtime.metrics import Metrics
from bot.store.base import IN_DOUBT, OutState, SendOutcome, Store, TranscriptEntry

log = logging.getLogger("consentbot.outbox")

WINDOW_ERROR = 131047
MAX_SEND_ATTEMPTS = 8
OUTCOME_UNKNOWN = "outcome_unknown"  # re-queued: waiting for a status before sending again


class Accepted(Protocol):
    @property
    def wamid(self) -> str: ...


class SendsMessages(Protocol):
    """What the sender needs of the Graph client (``bot.whatsapp.client.GraphClient``)."""

    async def send(self, phone_number_id: str, message: Outbound, *, callback_data: str | None = None) -> Accepted:
        """Send; the result's ``wamid`` is what status webhooks reference. Raises a ``ChannelError``
        with ``retry`` (transient, rate_limited, permanent, consent, window) and ``code``, or an
        outcome-unknown error (the request may have been accepted: never resent blindly)."""


SuppressionCheck = Callable[[str], Awaitable[bool]]


class StoreSlot(Protocol):
    """A share of the database its holder may use (the dispatcher bounds how many turns run their
    store work at once); a send gives it up while it waits for the Graph API."""

    def release(self) -> None: ...

    async def acquire(self) -> None: ...


def age_fact(conversation: Conversation | None) -> bool | None:
    """The age-gate result the flow recorded (``slots['minor']`` / ``slots['age_ok']``): True = minor,
    None = not answered yet."""
    if conversation is None:
        return None
    if conversation.slots.get("minor") is not None:
        return bool(conversation.slots["minor"])
    ok = conversation.slots.get("age_ok")
    return None if ok is None else not bool(ok)


class Sender:
    def __init__(
        self,
        store: Store,
        client: SendsMessages,
        project: Project,
        metrics: Metrics,
        owner: str,
        *,
        is_suppressed: SuppressionCheck,
        notify: Callable[[Iterable[str]], None] = lambda keys: None,
        lease_seconds: float = 60.0,
        unknown_outcome_wait: float = 120.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.client = client
        self.project = project
        self.metrics = metrics
        self.owner = owner
        self.is_suppressed = is_suppressed
        self.notify = notify
        self.unknown_outcome_wait = unknown_outcome_wait
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.window_codes = frozenset({WINDOW_ERROR})

    async def verdict(self, message: Outbound, conversation: Conversation | None) -> Verdict:
        """Ask the gate, with the facts it needs. Suppression is consulted for every message that is
        marketing or business-initiated; a customer's own open window lets us answer them."""
        now = self.clock()
        in_window = conversation is not None and conversation.in_window(now)
        marketing = message.category is Category.MARKETING
        suppressed = await self.is_suppressed(message.to) if (marketing or not in_window) else False
        count: int | None = 0
        if marketing:
            count = await self.store.transcript.count_sent_since(message.to, Category.MARKETING, cap_period_start(now))
        return decide_send(
            GateInput.for_conversation(
                message,
                conversation,
                self.project,
                now,
                suppressed=suppressed,
                minor=age_fact(conversation) if marketing else False,
                marketing_sent_in_period=count,
            )
        )

    async def send(
        self,
        entry_id: str,
        message: Outbound,
        conversation: Conversation | None,
        attempts: int = 0,
        *,
        store_slot: StoreSlot | None = None,
    ) -> OutState:
        """Gate and send one outbox entry this process holds the lease on; record the outcome.
        ``attempts`` is how many earlier attempts failed transiently (from the entry).

        ``store_slot``: a slot the caller holds to bound its database work (the dispatcher's); it is
        given up while the Graph API answers and taken again before the outcome is recorded."""
        verdict = await self.verdict(message, conversation)
        if not verdict.allowed:
            self.metrics.gate_blocks.inc(reason=str(verdict.reason))
            self.metrics.sends.inc(result="blocked")
            await self._settle(entry_id, SendOutcome(OutState.BLOCKED, reason=str(verdict.reason)))
            log.info("send blocked", extra={"reason": str(verdict.reason), "detail": verdict.detail})
            return OutState.BLOCKED
        return await self._deliver(entry_id, verdict.message, conversation, attempts, str(verdict.reason), store_slot)

    async def _deliver(
        self,
        entry_id: str,
        message: Outbound,
        conversation: Conversation | None,
        attempts: int,
        allowed: str = "",
        store_slot: StoreSlot | None = None,
    ) -> OutState:
        """Send ``message`` (the gate's version of the entry: its fallback template outside the window);
        an accepted send records ``allowed``, the gate's reason, on the entry."""
        pnid = conversation.phone_number_id if conversation is not None else ""
        started = time.perf_counter()
        if store_slot is not None:
            store_slot.release()  # no database work while Meta answers
        result: Accepted | ChannelError
        try:
            result = await self.client.send(pnid, message, callback_data=entry_id)
        except ChannelError as exc:
            result = exc
        finally:
            if store_slot is not None:
                await store_slot.acquire()  # the outcome is recorded below
        self.metrics.send_latency.observe(time.perf_counter() - started)
        if isinstance(result, ChannelError):
            return await self._failed(entry_id, message, conversation, result, attempts)
        self.metrics.sends.inc(result="accepted")
        await self._settle(entry_id, SendOutcome(OutState.ACCEPTED, wamid=result.wamid, reason=allowed))
        return OutState.ACCEPTED

    async def _failed(
        self, entry_id: str, message: Outbound, conversation: Conversation | None, exc: ChannelError, attempts: int
    ) -> OutState:
        code = int(getattr(exc, "code", 0) or 0)
        retry = str(getattr(exc, "retry", "unknown"))
        now = self.clock()
        info = ErrorInfo(code=code, title=type(exc).__name__, message=str(exc)[:500])
        if code:
            self.metrics.graph_errors.inc(code=str(code))
        if retry == "unknown":
            return await self._await_status(entry_id, error=info)
        if retry in {"transient", "rate_limited"} and attempts + 1 < MAX_SEND_ATTEMPTS:
            wait = float(getattr(exc, "retry_after", None) or min(300.0, 2.0 ** (attempts + 1)))
            delay = wait * (0.5 + random.random() / 2)
            self.metrics.sends.inc(result="retry")
            retry_at = now + timedelta(seconds=delay)
            await self._settle(entry_id, SendOutcome(OutState.PENDING, error=info, retry_at=retry_at))
            return OutState.PENDING
        self.metrics.sends.inc(result="failed")
        await self._settle(entry_id, SendOutcome(OutState.FAILED, error=info, reason=retry))
        log.warning("send failed", extra={"code": code, "retry_class": retry})
        if conversation is not None and retry == "consent":
            entry = consent_error_entry(conversation.key, conversation.subject, entry_id, int(now.timestamp()), now)
            await self.store.inbox.put([entry])
            self.notify([conversation.key])
        if conversation is not None and retry == "window" and message.fallback is not None:
            await self._queue_fallback(conversation.key, conversation.subject, entry_id, message, "flow", now)
        return OutState.FAILED

    async def _await_status(self, entry_id: str, *, error: ErrorInfo | None = None, reason: str = "") -> OutState:
        """The attempt may have reached Meta: do not resend blindly. Re-queue the entry after
        ``unknown_outcome_wait``; a status webhook carrying its callback data adopts it meanwhile, and
        only if none comes does the retry send it again."""
        self.metrics.sends.inc(result="outcome_unknown")
        retry_at = self.clock() + timedelta(seconds=self.unknown_outcome_wait)
        await self._settle(entry_id, SendOutcome(OutState.PENDING, reason=reason, error=error, retry_at=retry_at))
        return OutState.PENDING

    async def _settle(self, entry_id: str, outcome: SendOutcome) -> None:
        if not await self.store.transcript.settle(entry_id, self.owner, outcome, self.clock()):
            log.warning("lost the lease on an outbox entry before settling it", extra={"entry": entry_id})

    async def resume(self, entry: TranscriptEntry) -> OutState:
        """Send an entry claimed by the recovery loop (a previous holder died or a retry is due).

        An entry whose holder stopped in the middle of an attempt (``reason`` :data:`IN_DOUBT`) may
        already be at Meta: it is not sent now but re-queued after ``unknown_outcome_wait``, like a
        timed-out send. A status webhook naming it (its callback data) adopts it meanwhile, and it is
        never sent again; only if none comes is it sent a second time."""
        if entry.outbound is None:
            return OutState.FAILED
        if entry.reason == IN_DOUBT:
            log.info("outbox entry in doubt after its sender stopped; waiting for a status before resending",
                     extra={"entry": entry.id})
            return await self._await_status(entry.id, reason=OUTCOME_UNKNOWN)
        conversation = await self.store.conversations.get(entry.key)
        return await self.send(entry.id, entry.outbound, conversation, entry.attempts)

    async def fall_back(self, entry: TranscriptEntry, now: datetime) -> None:
        """Meta refused a free-form message because the 24-hour window had closed (131047, reported in
        a status webhook): queue its approved fallback template, or leave it failed (the transcript
        shows why)."""
        if entry.outbound is None or entry.outbound.fallback is None:
            return
        await self._queue_fallback(entry.key, entry.subject, entry.id, entry.outbound, entry.sent_by or "flow", now)

    async def _queue_fallback(
        self, key: str, subject: str, entry_id: str, message: Outbound, sent_by: str, now: datetime
    ) -> None:
        retry = as_template(message)
        fallback_id = f"{entry_id}:fallback"
        await self.store.transcript.add_outbound(key, subject, retry, now, sent_by=sent_by, entry_id=fallback_id)
