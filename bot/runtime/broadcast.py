"""The campaign runner: streams the audience, sends each recipient one template through the outbox and
the send gate, exactly once, at an even pace; plus the receipt tap that lets a restarted run know what
Meta already accepted.

One campaign, one run at a time (a run lease on the campaign, renewed by a heartbeat). A run:

1. **reconciles** recipients left ``sending`` by an earlier run that died (see *exactly once*);
2. **scans the audience** in batches from its saved cursor (conversations that recorded the purpose,
   by key), asks :func:`bot.core.audience.assess` about each candidate with fresh facts (suppression,
   restriction, marketing count) and records a recipient per candidate: ``pending`` or ``excluded``
   with the reason. Nothing is loaded whole: memory stays flat as the audience grows;
3. **sends**: leases pending recipients in small batches, paces them evenly at ``rate`` messages per
   second (:class:`CampaignClient`, in front of the Graph client's own per-number pacer) and, for each,
   reloads the conversation, renders the parameters, queues the outbox entry
   ``f"broadcast:{campaign}:{subject}"`` (:meth:`Transcript.add_outbound`, idempotent), claims it and
   hands it to :class:`~bot.runtime.outbox.Sender`, which asks the send gate again (a customer who
   opted out a second ago gets nothing) and calls the Graph API with the entry id as
   ``biz_opaque_callback_data``;
4. stops when every recipient is final (state ``done``), when an operator cancels (state
   ``cancelled``), or when asked to; queued but unsent recipients go back to ``pending``.

**Exactly once.** The outbox entry is leased to the campaign's own outbox owner ``broadcast:<id>``
for ``hold_seconds`` (default 10 minutes) so the service's outbox poller leaves it alone. If the run
dies between the Graph API accepting a message and the outcome being written, the entry stays
``sending`` and the recipient stays ``sending``: *in doubt*. The next run does not resend it blindly:
the :class:`CampaignReceipts` tap in the webhook path records every status webhook whose callback data
names a campaign entry (Meta sends ``sent`` within seconds of accepting). The next run settles an in
doubt entry as accepted when a receipt names it, and resends it only when no receipt arrived within
``receipt_wait`` seconds of the attempt. The same wait applies to a send whose HTTP answer was lost
(:class:`~bot.whatsapp.graph_errors.OutcomeUnknown`). ``docs/campaigns.md`` states the guarantee and
its assumptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import jinja2

from bot.core.audience import (
    Assessment,
    Audience,
    AudienceReason,
    CampaignError,
    Facts,
    Segment,
    TemplateDeclaration,
    assess,
    campaign_message,
    compile_params,
    render_params,
    template_problems,
)
from bot.core.conversation import Conversation, PurposeState
from bot.core.messages import Category, DeliveryStatus, Outbound
from bot.core.policy import Reason, cap_period_start
from bot.core.project import Project
from bot.errors import BotError, RenderError
from bot.runtime.clock import utc_now
from bot.runtime.metrics import Metrics
from bot.runtime.outbox import Accepted, Sender, SendsMessages
from bot.store.base import OutState, SendOutcome, Store, TranscriptEntry
from bot.store.broadcasts import (
    Broadcasts,
    Campaign,
    CampaignState,
    Finish,
    Receipt,
    Recipient,
    RecipientState,
    Tally,
    entry_id,
    parse_entry_id,
)
from bot.whatsapp.graph_errors import OutcomeUnknown
from bot.whatsapp.pacing import MAX_RATE, Gcra

log = logging.getLogger("consentbot.broadcast")

Check = Callable[[str], Awaitable[bool]]


class CampaignBusy(BotError):
    """Another run holds the campaign's run lease."""


class CampaignNotFound(BotError):
    def __init__(self, campaign_id: str) -> None:
        super().__init__(f"campaign {campaign_id!r} does not exist (see `consentbot broadcast list`)")


# --- creating ------------------------------------------------------------------------------------
def new_campaign(
    *,
    name: str,
    decl: TemplateDeclaration,
    purpose: str,
    project: Project,
    phone_number_id: str,
    now: datetime,
    segments: Iterable[Segment] = (),
    params: Mapping[str, str] | None = None,
    rate: float = 80.0,
    locale: str | None = None,
    campaign_id: str | None = None,
    created_by: str = "",
) -> Campaign:
    """Validate everything a campaign needs before it exists (raises :class:`CampaignError` naming the
    field): an approved MARKETING template with its opt-out element, a declared purpose, parameters for
    every template parameter (each a valid Jinja expression), a rate of 1..1000 messages per second."""
    if not name.strip():
        raise CampaignError("--name: must not be empty")
    problems = template_problems(decl)
    if problems:
        raise CampaignError("--template: " + "; ".join(problems))
    if project.purpose(purpose) is None:
        declared = ", ".join(p.id for p in project.purposes)
        raise CampaignError(f"--purpose: {purpose!r} is not declared in consentbot.yaml (declared: {declared})")
    if not 1 <= rate <= MAX_RATE:
        raise CampaignError(f"--rate: must be between 1 and {MAX_RATE:g} messages per second, got {rate:g}")
    params = dict(params or {})
    compile_params(decl, params)
    if locale is None:
        locale = decl.language.split("_")[0]
    return Campaign(
        id=campaign_id or uuid.uuid4().hex[:12],
        name=name.strip(),
        template=decl,
        purpose=purpose,
        phone_number_id=phone_number_id,
        created_at=now,
        updated_at=now,
        locale=locale,
        segments=tuple((s.key, s.value) for s in segments),
        params=params,
        rate=float(rate),
        created_by=created_by,
    )


def audience_of(campaign: Campaign) -> Audience:
    return Audience(
        purpose=campaign.purpose,
        locale=campaign.locale,
        segments=tuple(Segment(k, v) for k, v in campaign.segments),
        decl=campaign.template,
        params=dict(campaign.params),
    )


# --- progress ------------------------------------------------------------------------------------
@dataclass(slots=True)
class Progress:
    """Live counts of one campaign (what the terminal bar and the console page show)."""

    campaign_id: str
    rate: float
    state: str = "running"
    total: int = 0  # recipients recorded so far
    pending: int = 0
    sending: int = 0
    accepted: int = 0
    failed: int = 0
    excluded: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    audience_done: bool = False
    started: float = field(default_factory=time.monotonic)
    sent_this_run: int = 0
    _window: list[tuple[float, int]] = field(default_factory=list)

    @classmethod
    def of(cls, campaign: Campaign, tally: Tally) -> Progress:
        p = cls(campaign.id, campaign.rate, state=str(campaign.state), audience_done=campaign.audience_done)
        p.total = tally.total
        p.pending = tally.state(RecipientState.PENDING)
        p.sending = tally.state(RecipientState.SENDING)
        p.accepted = tally.state(RecipientState.ACCEPTED)
        p.failed = tally.state(RecipientState.FAILED)
        p.excluded = tally.state(RecipientState.EXCLUDED)
        p.reasons = dict(tally.reasons)
        p.errors = dict(tally.errors)
        return p

    def recorded(self, pending: int, excluded: Mapping[str, int]) -> None:
        self.total += pending + sum(excluded.values())
        self.pending += pending
        for reason, n in excluded.items():
            self.excluded += n
            self.reasons[reason] = self.reasons.get(reason, 0) + n

    def leased(self, n: int) -> None:
        self.pending -= n
        self.sending += n

    def released(self, n: int) -> None:
        self.pending += n
        self.sending -= n

    def finished(self, f: Finish) -> None:
        self.sending -= 1
        if f.state is RecipientState.ACCEPTED:
            self.accepted += 1
            self.sent_this_run += 1
        elif f.state is RecipientState.FAILED:
            self.failed += 1
            key = str(f.error_code or 0)
            self.errors[key] = self.errors.get(key, 0) + 1
        else:
            self.excluded += 1
            self.reasons[f.reason] = self.reasons.get(f.reason, 0) + 1

    def send_rate(self) -> float:
        """Messages accepted per second over the last ~5 seconds."""
        now = time.monotonic()
        self._window.append((now, self.sent_this_run))
        while len(self._window) > 2 and now - self._window[0][0] > 5.0:
            self._window.pop(0)
        t0, n0 = self._window[0]
        return (self.sent_this_run - n0) / (now - t0) if now - t0 > 0.2 else 0.0

    def eta_seconds(self) -> float | None:
        """Time left at the current rate (None while unknown: the audience scan is still running)."""
        left = self.pending + self.sending
        if left == 0:
            return 0.0
        rate = self.send_rate() or self.rate
        return left / rate if self.audience_done else None

    def snapshot(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign_id, "state": self.state, "total": self.total, "pending": self.pending,
            "sending": self.sending, "accepted": self.accepted, "failed": self.failed, "excluded": self.excluded,
            "reasons": dict(self.reasons), "errors": dict(self.errors), "audience_done": self.audience_done,
            "rate": round(self.send_rate(), 1), "target_rate": self.rate, "eta_seconds": self.eta_seconds(),
        }


ProgressHook = Callable[[dict[str, Any]], None]


# --- the receipt tap -----------------------------------------------------------------------------
class NotificationSink(Protocol):
    async def accept(self, n: Any) -> None: ...


class CampaignReceipts:
    """A webhook sink wrapper: hands every notification to ``inner`` (the inbox writer), then records the
    statuses whose ``biz_opaque_callback_data`` names a campaign outbox entry on that recipient
    (wamid, delivery status, error code). Returns only when both are durable (the webhook's 200)."""

    def __init__(self, broadcasts: Broadcasts, inner: NotificationSink | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.broadcasts = broadcasts
        self.inner = inner
        self.clock = clock

    async def accept(self, n: Any) -> None:
        if self.inner is not None:
            await self.inner.accept(n)
        for s in getattr(n, "statuses", ()):
            ref = parse_entry_id(s.callback_data or "")
            if ref is None:
                continue
            code = next((e.code for e in s.errors), 0) if s.status is DeliveryStatus.FAILED else 0
            await self.broadcasts.record_receipt(
                Receipt(campaign_id=ref[0], subject=ref[1], wamid=s.message_id, status=s.status,
                        at=self.clock(), error_code=code)
            )


RECOVER_ROUNDS = 5

SEND_SLOT: contextvars.ContextVar[float | None] = contextvars.ContextVar("campaign_send_slot", default=None)
"""The monotonic time this worker's next Graph request may start (set by the run's worker)."""
SLOT_LEAD = 0.1  # a worker starts its database work this long before its slot


@dataclass(frozen=True, slots=True)
class _Adopted:
    wamid: str


class CampaignClient:
    """The Graph client as the campaign's Sender sees it.

    - **Even pacing**: the run's worker reserved this send's slot on a GCRA with no burst (one every
      ``1/rate`` seconds) before doing its database work; the request waits here for that exact slot,
      so requests reach the Graph API evenly spaced (the Graph client's own per-number pacer still
      applies on top).
    - **Lost answers**: when a send's outcome is unknown (timeout after the request was written), wait
      up to ``wait`` seconds for a receipt naming the entry; a receipt means Meta accepted it (its wamid
      is the result), none means the error stands and the Sender re-queues the entry.
    """

    def __init__(self, client: SendsMessages, broadcasts: Broadcasts, wait: float, poll: float = 0.25) -> None:
        self.client = client
        self.broadcasts = broadcasts
        self.wait = wait
        self.poll = poll

    async def send(self, phone_number_id: str, message: Outbound, *, callback_data: str | None = None) -> Accepted:
        slot = SEND_SLOT.get()
        if slot is not None:
            delay = slot - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        try:
            return await self.client.send(phone_number_id, message, callback_data=callback_data)
        except OutcomeUnknown:
            ref = parse_entry_id(callback_data or "")
            if ref is None:
                raise
            deadline = time.monotonic() + self.wait
            while True:
                r = await self.broadcasts.recipient(*ref)
                if r is not None and r.wamid:
                    return _Adopted(r.wamid)
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(self.poll)


# --- the runner ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RunOptions:
    """``concurrency`` 0 = enough sends in flight for ``rate`` at ~0.25 s per Graph call."""

    batch: int = 200
    concurrency: int = 0
    lease_seconds: float = 15.0  # the campaign's run lease (renewed every third of it)
    hold_seconds: float = 600.0  # how long a claimed outbox entry stays the campaign's
    receipt_wait: float = 30.0  # how long an in-doubt send waits for a receipt before it is resent
    progress_every: float = 1.0


@dataclass(order=True, slots=True)
class _Later:
    due: float
    n: int
    recipient: Recipient = field(compare=False)
    in_doubt: bool = field(compare=False, default=False)


class CampaignRunner:
    """Runs campaigns. ``client`` is the Graph client (``GraphClient`` or the sandbox's); the runner
    builds its own :class:`Sender` around it with the outbox owner ``broadcast:<campaign id>``."""

    def __init__(
        self,
        broadcasts: Broadcasts,
        store: Store,
        client: SendsMessages,
        project: Project,
        *,
        is_suppressed: Check,
        is_restricted: Check,
        metrics: Metrics | None = None,
        owner: str | None = None,
        notify: Callable[[Iterable[str]], None] = lambda keys: None,
        options: RunOptions | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.broadcasts = broadcasts
        self.store = store
        self.client = client
        self.project = project
        self.is_suppressed = is_suppressed
        self.is_restricted = is_restricted
        self.metrics = metrics or Metrics()
        self.owner = owner or f"run:{uuid.uuid4().hex[:10]}"
        self.notify = notify
        self.options = options or RunOptions()
        self.clock = clock

    # --- audience --------------------------------------------------------------------------------
    async def facts(self, conversation: Conversation, now: datetime) -> Facts:
        subject = conversation.subject
        suppressed = await self.is_suppressed(subject)
        restricted = conversation.restricted or await self.is_restricted(subject)
        count = await self.store.transcript.count_sent_since(subject, Category.MARKETING, cap_period_start(now))
        return Facts(suppressed=suppressed, restricted=restricted, marketing_sent_in_period=count)

    async def assess_page(
        self, campaign: Campaign, compiled: Mapping[str, jinja2.Template], conversations: list[Conversation]
    ) -> list[Assessment]:
        audience = audience_of(campaign)
        out = []
        for conv in conversations:
            now = self.clock()
            out.append(assess(conv, audience, compiled, self.project, now, await self.facts(conv, now), campaign.id))
        return out

    async def dry_run(self, campaign: Campaign) -> dict[str, Any]:
        """Count the audience and the exclusions by reason without writing or sending anything."""
        compiled = compile_params(campaign.template, campaign.params)
        reasons: dict[str, int] = {}
        candidates = eligible = 0
        cursor = ""
        while True:
            page = await self.broadcasts.candidates(campaign.phone_number_id, campaign.purpose, cursor,
                                                    self.options.batch)
            if not page:
                break
            for a in await self.assess_page(campaign, compiled, page):
                candidates += 1
                if a.reason is None:
                    eligible += 1
                else:
                    reasons[a.reason] = reasons.get(a.reason, 0) + 1
            cursor = page[-1].key
            if len(page) < self.options.batch:
                break
        return {"campaign": campaign.id, "candidates": candidates, "eligible": eligible,
                "excluded": candidates - eligible, "reasons": dict(sorted(reasons.items()))}

    # --- running ---------------------------------------------------------------------------------
    async def run(
        self, campaign_id: str, *, on_progress: ProgressHook | None = None, stop: asyncio.Event | None = None,
        wait: float = 0.0,
    ) -> dict[str, Any]:
        """Run (or resume) a campaign until it is done, cancelled, or ``stop`` is set. Returns the last
        progress snapshot. When another run holds the campaign, wait up to ``wait`` seconds for its
        lease (a run that was killed holds it until it expires), then raise :class:`CampaignBusy`."""
        campaign = await self.broadcasts.get(campaign_id)
        if campaign is None:
            raise CampaignNotFound(campaign_id)
        if campaign.state is CampaignState.DONE:
            return Progress.of(campaign, await self.broadcasts.tally(campaign_id)).snapshot() | {"state": "done"}
        deadline = time.monotonic() + wait
        while not await self.broadcasts.acquire_run(campaign_id, self.owner, self.clock(), self.options.lease_seconds):
            if time.monotonic() >= deadline:
                current = await self.broadcasts.get(campaign_id) or campaign
                until = current.run_until.isoformat() if current.run_until else "?"
                raise CampaignBusy(f"campaign {campaign_id} is being run by {current.run_owner} (lease until {until})")
            await asyncio.sleep(0.25)
        now = self.clock()
        try:
            campaign = await self.broadcasts.set_state(campaign_id, CampaignState.RUNNING, now)
            run = _Run(self, campaign, on_progress, stop or asyncio.Event())
            return await run.go()
        finally:
            await self.broadcasts.release_run(campaign_id, self.owner)


class _Run:
    """The state of one run of one campaign (tasks, queue, counters)."""

    def __init__(self, runner: CampaignRunner, campaign: Campaign, on_progress: ProgressHook | None,
                 stop: asyncio.Event) -> None:
        self.r = runner
        self.c = campaign
        self.id = campaign.id
        self.on_progress = on_progress
        self.stop = stop
        self.opts = runner.options
        self.compiled = compile_params(campaign.template, campaign.params)
        self.out_owner = f"broadcast:{campaign.id}"
        self.sender = Sender(
            runner.store,
            CampaignClient(runner.client, runner.broadcasts, self.opts.receipt_wait),
            runner.project,
            runner.metrics,
            self.out_owner,
            is_suppressed=runner.is_suppressed,
            notify=runner.notify,
            lease_seconds=self.opts.hold_seconds,
            unknown_outcome_wait=0.0,  # the client already waited for a receipt
            clock=runner.clock,
        )
        rate = min(campaign.rate, MAX_RATE)
        self.pacer = Gcra(1.0 / rate, 1)
        concurrency = self.opts.concurrency or max(4, min(512, int(rate * 0.25) + 1))
        self.workers_n = concurrency
        self.lease_batch = max(1, min(self.opts.batch, int(rate * 0.5) + 1))
        self.queue: asyncio.Queue[Recipient | _Later] = asyncio.Queue(maxsize=self.lease_batch * 2)
        self.later: list[_Later] = []
        self.recover_rounds = 0
        self.counter = itertools.count()
        self.pending_finishes: list[Finish] = []
        self.in_flight = 0
        self.progress = Progress(campaign.id, campaign.rate)
        self.halt = asyncio.Event()  # stop leasing (cancel, stop, lost lease)
        self.lost_lease = False
        self.cancelled = False
        self.errors: dict[str, int] = {}

    # --- lifecycle -------------------------------------------------------------------------------
    async def go(self) -> dict[str, Any]:
        b = self.r.broadcasts
        self.progress = Progress.of(self.c, await b.tally(self.id))
        self.progress.state = "running"
        tasks = [asyncio.create_task(self._heartbeat(), name="campaign-heartbeat")]
        workers = [asyncio.create_task(self._worker(), name=f"campaign-send-{i}") for i in range(self.workers_n)]
        try:
            await self._recover()
            scan = asyncio.create_task(self._scan(), name="campaign-audience")
            tasks.append(scan)
            done = await self._feed(scan)
            await self.queue.join()
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self._flush()
            if not scan.done():
                scan.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scan
        finally:
            for t in (*tasks, *workers):
                t.cancel()
            await asyncio.gather(*tasks, *workers, return_exceptions=True)
            await self._flush()
        now = self.r.clock()
        if done:
            await b.set_state(self.id, CampaignState.DONE, now)
            self.progress.state = "done"
        elif self.cancelled:
            self.progress.state = "cancelled"
        else:
            self.progress.state = "stopped"
        current = await b.get(self.id)
        self.progress = _carry(self.progress, Progress.of(current, await b.tally(self.id)) if current else None)
        snap = self.progress.snapshot()
        await b.save_progress(self.id, snap, now)
        if self.on_progress is not None:
            self.on_progress(snap)
        return snap

    async def _heartbeat(self) -> None:
        b = self.r.broadcasts
        last_save = 0.0
        while True:
            await asyncio.sleep(min(self.opts.lease_seconds / 3, self.opts.progress_every))
            now = self.r.clock()
            if not await b.acquire_run(self.id, self.r.owner, now, self.opts.lease_seconds):
                log.error("lost the campaign's run lease; stopping", extra={"campaign": self.id})
                self.lost_lease = True
                self.halt.set()
                return
            current = await b.get(self.id)
            if current is not None and current.state is CampaignState.CANCELLED:
                self.cancelled = True
                self.halt.set()
            if self.stop.is_set():
                self.halt.set()
            if time.monotonic() - last_save >= self.opts.progress_every:
                last_save = time.monotonic()
                await self._flush()
                snap = self.progress.snapshot()
                await b.save_progress(self.id, snap, now)
                if self.on_progress is not None:
                    self.on_progress(snap)

    # --- recovery --------------------------------------------------------------------------------
    async def _recover(self) -> None:
        """Every recipient still ``sending`` belongs to a run that died: reconcile each before sending."""
        after = ""
        while True:
            page = await self.r.broadcasts.in_doubt(self.id, after, 500)
            for rec in page:
                self._defer(rec, 0.0, in_doubt=True)
            if len(page) < 500:
                return
            after = page[-1].subject

    # --- audience scan ---------------------------------------------------------------------------
    async def _scan(self) -> None:
        b, c = self.r.broadcasts, self.c
        current = await b.get(self.id)
        cursor = current.audience_cursor if current else ""
        if current is not None and current.audience_done:
            self.progress.audience_done = True
            return
        seq = self.progress.total
        while not self.halt.is_set():
            page = await b.candidates(c.phone_number_id, c.purpose, cursor, self.opts.batch)
            assessed = await self.r.assess_page(c, self.compiled, page)
            now = self.r.clock()
            recs = []
            for conv, a in zip(page, assessed, strict=True):
                seq += 1
                state = RecipientState.PENDING if a.reason is None else RecipientState.EXCLUDED
                recs.append(Recipient(self.id, conv.subject, conv.key, state, seq=seq, reason=a.reason or "",
                                      detail=a.detail[:300], finished_at=None if a.reason is None else now))
            if recs:
                added = await b.add_recipients(recs)
                if added == len(recs):
                    excluded: dict[str, int] = {}
                    for x in recs:
                        if x.state is RecipientState.EXCLUDED:
                            excluded[x.reason] = excluded.get(x.reason, 0) + 1
                    self.progress.recorded(sum(1 for x in recs if x.state is RecipientState.PENDING), excluded)
                else:  # a page re-scanned after a crash: some were recorded already; recount
                    await self._flush()
                    current = await b.get(self.id)
                    if current is not None:
                        self.progress = _carry(self.progress, Progress.of(current, await b.tally(self.id)))
                cursor = page[-1].key
            last = len(page) < self.opts.batch
            await b.save_progress(self.id, self.progress.snapshot(), now, cursor=cursor, audience_done=last or None)
            if last:
                self.progress.audience_done = True
                return

    # --- feeding the workers ---------------------------------------------------------------------
    async def _feed(self, scan: asyncio.Task[None]) -> bool:
        """Lease pending recipients and due deferred ones into the queue. Returns True when the
        campaign is complete, False when the run was halted."""
        b = self.r.broadcasts
        while True:
            if self.halt.is_set():
                await self._drain_queue()
                return False
            if scan.done() and scan.exception() is not None:
                raise scan.exception()  # type: ignore[misc]
            now_m = time.monotonic()
            while self.later and self.later[0].due <= now_m:
                await self.queue.put(heapq.heappop(self.later))
            leased: list[Recipient] = []
            if self.queue.qsize() < self.lease_batch:
                leased = await b.lease(self.id, self.r.owner, self.r.clock(), self.lease_batch)
                self.progress.leased(len(leased))
                for rec in leased:
                    await self.queue.put(rec)
            if leased:
                continue
            if scan.done() and not self.later and self.queue.empty() and self.in_flight == 0:
                await self._flush()
                tally = await b.tally(self.id)
                left = tally.state(RecipientState.PENDING) + tally.state(RecipientState.SENDING)
                if left == 0:
                    return True
                if tally.state(RecipientState.PENDING) == 0:
                    # Recipients still SENDING with nothing of this run in flight: this run holds the
                    # campaign's run lease, so they belong to a run that died (or to a send of this run
                    # that ended without an outcome). Reconcile them as in doubt, a bounded number of
                    # times, instead of stopping with the campaign unfinished.
                    if self.recover_rounds < RECOVER_ROUNDS:
                        self.recover_rounds += 1
                        await asyncio.sleep(0.2)
                        await self._recover()
                        continue
                    return False
            await asyncio.sleep(0.02 if not scan.done() else 0.1)

    async def _drain_queue(self) -> None:
        """Halted: recipients queued but not started go back to pending; in-flight ones finish."""
        fresh: list[str] = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            self.queue.task_done()
            if isinstance(item, Recipient):
                fresh.append(item.subject)
        if fresh:
            n = await self.r.broadcasts.release(self.id, fresh)
            self.progress.released(n)

    def _defer(self, rec: Recipient, delay: float, in_doubt: bool = False) -> None:
        heapq.heappush(self.later, _Later(time.monotonic() + delay, next(self.counter), rec, in_doubt))

    async def _worker(self) -> None:
        while True:
            item = await self.queue.get()
            self.in_flight += 1
            try:
                now = time.monotonic()
                slot = self.pacer.reserve(now)
                if slot - SLOT_LEAD > now:
                    await asyncio.sleep(slot - SLOT_LEAD - now)
                SEND_SLOT.set(slot)
                if self.halt.is_set() and isinstance(item, Recipient):
                    n = await self.r.broadcasts.release(self.id, [item.subject])
                    self.progress.released(n)
                    continue
                if isinstance(item, _Later):
                    await self._process(item.recipient, in_doubt=item.in_doubt)
                else:
                    await self._process(item, in_doubt=False)
            except Exception:
                rec = item.recipient if isinstance(item, _Later) else item
                self.errors[rec.subject] = self.errors.get(rec.subject, 0) + 1
                if self.errors[rec.subject] < 3 and not self.halt.is_set():
                    log.exception("campaign send failed; retrying in 5 s", extra={"campaign": self.id})
                    self._defer(rec, 5.0, in_doubt=True)
                else:  # left in doubt: the next run reconciles it
                    log.exception("campaign send failed; the recipient stays in doubt", extra={"campaign": self.id})
            finally:
                self.in_flight -= 1
                self.queue.task_done()

    # --- one recipient ---------------------------------------------------------------------------
    async def _finish(self, f: Finish) -> None:
        self.pending_finishes.append(f)
        self.progress.finished(f)
        if len(self.pending_finishes) >= 100:
            await self._flush()

    async def _flush(self) -> None:
        if not self.pending_finishes:
            return
        batch, self.pending_finishes = self.pending_finishes, []
        await self.r.broadcasts.finish(self.id, batch, self.r.clock())

    async def _process(self, rec: Recipient, *, in_doubt: bool) -> None:
        store = self.r.store
        eid = entry_id(self.id, rec.subject)
        conv = await store.conversations.get(rec.key)
        if in_doubt:
            entry = await _find_entry(store, rec.key, eid)
            if entry is not None:
                await self._reconcile(rec, conv, entry)
                return
        if conv is None:
            await self._finish(Finish(rec.subject, RecipientState.EXCLUDED, str(Reason.NO_CONSENT),
                                      "the conversation no longer exists (erased)"))
            return
        if await self.r.is_restricted(rec.subject):
            await self._finish(Finish(rec.subject, RecipientState.EXCLUDED, str(Reason.RESTRICTED),
                                      "processing is restricted for this subject"))
            return
        try:
            values = render_params(self.compiled, conv)
        except RenderError as exc:
            await self._finish(Finish(rec.subject, RecipientState.EXCLUDED, str(AudienceReason.RENDER_FAILED),
                                      str(exc)))
            return
        message = campaign_message(conv.subject, self.c.template, self.c.purpose, values, self.id)
        now = self.r.clock()
        added = await store.transcript.add_outbound(conv.key, conv.subject, message, now,
                                                    sent_by=self.out_owner, entry_id=eid)
        claimed = await store.transcript.claim(self.out_owner, now, self.opts.hold_seconds, 1, [eid])
        if not claimed:
            entry = await _find_entry(store, rec.key, eid)
            if entry is None:  # erased meanwhile
                await self._finish(Finish(rec.subject, RecipientState.EXCLUDED, str(Reason.NO_CONSENT),
                                          "the conversation was erased"))
                return
            await self._reconcile(rec, conv, entry)
            return
        entry = claimed[0]
        if not added and await self._adopt_receipt(rec, eid):
            return
        await self._send(rec, conv, entry)

    async def _send(self, rec: Recipient, conv: Conversation, entry: TranscriptEntry) -> None:
        assert entry.outbound is not None
        state = await self.sender.send(entry.id, entry.outbound, conv, entry.attempts)
        await self._after(rec, state, conv)

    async def _after(self, rec: Recipient, state: OutState, conv: Conversation | None) -> None:
        if state is OutState.ACCEPTED:
            await self._finish(Finish(rec.subject, RecipientState.ACCEPTED))
            return
        if state is OutState.PENDING:  # transient error or unknown outcome: try again when due
            self._defer(rec, 1.0, in_doubt=True)
            return
        entry = await _find_entry(self.r.store, rec.key, entry_id(self.id, rec.subject))
        if state is OutState.BLOCKED:
            reason = entry.reason if entry is not None and entry.reason else "blocked"
            await self._finish(Finish(rec.subject, RecipientState.EXCLUDED, reason, "the send gate refused it"))
            return
        code = entry.error.code if entry is not None and entry.error is not None else 0
        detail = entry.error.message if entry is not None and entry.error is not None else ""
        await self._finish(Finish(rec.subject, RecipientState.FAILED, "", detail, error_code=code))

    async def _adopt_receipt(self, rec: Recipient, eid: str) -> bool:
        """A receipt names this entry: Meta accepted it; record that instead of sending again."""
        current = await self.r.broadcasts.recipient(self.id, rec.subject)
        if current is None or not current.wamid:
            return False
        accepted = SendOutcome(OutState.ACCEPTED, wamid=current.wamid)
        ok = await self.r.store.transcript.settle(eid, self.out_owner, accepted, self.r.clock())
        if ok:
            await self._finish(Finish(rec.subject, RecipientState.ACCEPTED, detail="accepted (from its receipt)"))
        return ok

    async def _reconcile(self, rec: Recipient, conv: Conversation | None, entry: TranscriptEntry) -> None:
        """The outbox entry exists and this run did not just claim it: decide from its state."""
        st = entry.out_state
        if st is OutState.ACCEPTED:
            await self._finish(Finish(rec.subject, RecipientState.ACCEPTED))
        elif st is OutState.BLOCKED:
            await self._finish(Finish(rec.subject, RecipientState.EXCLUDED, entry.reason or "blocked",
                                      "the send gate refused it"))
        elif st is OutState.FAILED:
            code = entry.error.code if entry.error is not None else 0
            await self._finish(Finish(rec.subject, RecipientState.FAILED, "", entry.reason, error_code=code))
        elif st is OutState.PENDING:
            now = self.r.clock()
            due = entry.next_attempt_at or entry.at
            claimed = await self.r.store.transcript.claim(self.out_owner, now, self.opts.hold_seconds, 1, [entry.id])
            if not claimed:
                self._defer(rec, max(0.5, (due - now).total_seconds()), in_doubt=True)
                return
            if await self._adopt_receipt(rec, entry.id):
                return
            if conv is None:
                await self.r.store.transcript.settle(entry.id, self.out_owner,
                                                     SendOutcome(OutState.BLOCKED, reason=str(Reason.NO_CONSENT)), now)
                await self._finish(Finish(rec.subject, RecipientState.EXCLUDED, str(Reason.NO_CONSENT), "erased"))
                return
            await self._send(rec, conv, claimed[0])
        else:  # SENDING: ours from a run that died (within the hold), or another sender's
            await self._in_doubt(rec, conv, entry)

    async def _in_doubt(self, rec: Recipient, conv: Conversation | None, entry: TranscriptEntry) -> None:
        """The entry is SENDING: an attempt started (this campaign's, from a run that died, or another
        sender's). Adopt a receipt if one names it; resend only once no receipt came within the wait,
        and only after proving the entry is ours (a settle only its lease holder can make)."""
        transcript, now = self.r.store.transcript, self.r.clock()
        claimed = await transcript.claim(self.out_owner, now, self.opts.hold_seconds, 1, [entry.id])
        current = await self.r.broadcasts.recipient(self.id, rec.subject)
        if current is not None and current.wamid:
            accepted = SendOutcome(OutState.ACCEPTED, wamid=current.wamid)
            if await transcript.settle(entry.id, self.out_owner, accepted, now):
                await self._finish(Finish(rec.subject, RecipientState.ACCEPTED, detail="accepted (from its receipt)"))
            else:  # another sender holds it and will settle it
                self._defer(rec, 2.0, in_doubt=True)
            return
        attempt = rec.attempt_at or entry.at
        waited = (now - attempt).total_seconds()
        if waited < self.opts.receipt_wait:
            self._defer(rec, self.opts.receipt_wait - waited + 0.05, in_doubt=True)
            return
        if not claimed:
            unknown = SendOutcome(OutState.PENDING, reason="outcome unknown: no receipt within the wait")
            if not await transcript.settle(entry.id, self.out_owner, unknown, now):
                self._defer(rec, 2.0, in_doubt=True)  # not ours: its holder settles it
                return
            claimed = await transcript.claim(self.out_owner, now, self.opts.hold_seconds, 1, [entry.id])
            if not claimed:
                self._defer(rec, 1.0, in_doubt=True)
                return
        if conv is None:
            await transcript.settle(entry.id, self.out_owner,
                                    SendOutcome(OutState.BLOCKED, reason=str(Reason.NO_CONSENT)), now)
            await self._finish(Finish(rec.subject, RecipientState.EXCLUDED, str(Reason.NO_CONSENT), "erased"))
            return
        # no receipt within the wait: Meta did not accept it; send it again (through the gate)
        await self._send(rec, conv, claimed[0])


def _carry(live: Progress, stored: Progress | None) -> Progress:
    if stored is None:
        return live
    stored.state = live.state
    stored.sent_this_run = live.sent_this_run
    stored._window = live._window
    stored.started = live.started
    return stored


async def _find_entry(store: Store, key: str, eid: str) -> TranscriptEntry | None:
    """The outbox entry ``eid`` of conversation ``key`` (pages through the transcript)."""
    after: datetime | None = None
    while True:
        page = await store.transcript.for_conversation(key, after=after, limit=500)
        for e in page:
            if e.id == eid:
                return e
        if len(page) < 500:
            return None
        after = page[-1].at


__all__ = [
    "CampaignBusy",
    "CampaignClient",
    "CampaignError",
    "CampaignNotFound",
    "CampaignReceipts",
    "CampaignRunner",
    "Progress",
    "RunOptions",
    "audience_of",
    "campaign_report",
    "new_campaign",
    "recipient_rows",
]


# --- reporting -----------------------------------------------------------------------------------
REPORT_FIELDS = ("subject", "state", "reason", "error_code", "delivery", "wamid", "finished_at", "opted_out_after")


async def recipient_rows(
    broadcasts: Broadcasts, store: Store, campaign: Campaign, page: int = 500
) -> AsyncIterator[dict[str, Any]]:
    """Every recipient of a campaign, by subject, as a flat row (CSV/JSON export). ``opted_out_after``
    is true when the customer's consent for the campaign's purpose was withdrawn after their message was
    accepted (a Stop tap, STOP, WhatsApp's own control or a 131050)."""
    after = ""
    while True:
        recs = await broadcasts.recipients(campaign.id, after, page)
        for r in recs:
            yield {
                "subject": r.subject, "state": str(r.state), "reason": r.reason, "error_code": r.error_code or "",
                "delivery": str(r.delivery) if r.delivery else "", "wamid": r.wamid,
                "finished_at": r.finished_at.isoformat() if r.finished_at else "",
                "opted_out_after": await _opted_out_after(store, campaign.purpose, r),
            }
        if len(recs) < page:
            return
        after = recs[-1].subject


async def _opted_out_after(store: Store, purpose: str, r: Recipient) -> bool:
    if r.state is not RecipientState.ACCEPTED or r.finished_at is None:
        return False
    conv = await store.conversations.get(r.key)
    status = None if conv is None else conv.consent.get(purpose)
    return status is not None and status.state is PurposeState.WITHDRAWN and status.since >= r.finished_at


async def campaign_report(broadcasts: Broadcasts, store: Store, campaign_id: str) -> dict[str, Any]:
    """The campaign's figures: sent (accepted by the Graph API), delivered, read, failed by error code
    (failed sends and failed deliveries), excluded by reason, opted out afterwards."""
    campaign = await broadcasts.get(campaign_id)
    if campaign is None:
        raise CampaignNotFound(campaign_id)
    tally = await broadcasts.tally(campaign_id)
    opted_out = 0
    async for row in recipient_rows(broadcasts, store, campaign):
        opted_out += bool(row["opted_out_after"])
    d = tally.delivery
    failed_delivery = int(d.get("failed", 0))
    return {
        "campaign": campaign.id, "name": campaign.name, "state": str(campaign.state),
        "template": f"{campaign.template.name} ({campaign.template.language})", "purpose": campaign.purpose,
        "segments": [f"{k}={v}" for k, v in campaign.segments], "locale": campaign.locale, "rate": campaign.rate,
        "recipients": tally.total,
        "sent": tally.state(RecipientState.ACCEPTED),
        "delivered": sum(int(d.get(s, 0)) for s in ("delivered", "read", "played")),
        "read": sum(int(d.get(s, 0)) for s in ("read", "played")),
        "failed": tally.state(RecipientState.FAILED) + failed_delivery,
        "failed_by_code": dict(sorted(tally.errors.items())),
        "excluded": tally.state(RecipientState.EXCLUDED),
        "excluded_by_reason": dict(sorted(tally.reasons.items())),
        "pending": tally.state(RecipientState.PENDING) + tally.state(RecipientState.SENDING),
        "opted_out_after": opted_out,
        "started_at": campaign.started_at.isoformat() if campaign.started_at else None,
        "finished_at": campaign.finished_at.isoformat() if campaign.finished_at else None,
    }
