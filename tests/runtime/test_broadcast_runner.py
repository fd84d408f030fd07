"""Campaigns end to end: the fake Graph API served over HTTP on loopback (it posts signed status
webhooks to a real webhook route whose sink is the campaign receipt tap + the inbox writer), the
memory store and the real MongoDB-wire server. Messages are counted at the simulator."""

from __future__ import annotations

import asyncio
import gc
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.core.audience import CampaignError, Segment, TemplateButton, TemplateDeclaration, campaign_message
from bot.core.conversation import Cause, Conversation, PurposeState, PurposeStatus, Step
from bot.core.engine import MetaSignal, decide
from bot.core.messages import Category, Outbound, OutboundKind, TemplateRef
from bot.core.project import Controller, Project, Purpose
from bot.core.proof import suppression_key
from bot.runtime.broadcast import CampaignReceipts, CampaignRunner, RunOptions, _Run, new_campaign
from bot.runtime.catalog import load_catalog
from bot.runtime.dispatcher import Dispatcher
from bot.runtime.inbox import InboxWriter
from bot.runtime.metrics import Metrics
from bot.runtime.outbox import Sender
from bot.runtime.privacy import PrivacyService
from bot.runtime.turn import Signal, Turn
from bot.store.base import OutState, SendOutcome, Store
from bot.store.broadcasts import Broadcasts, Campaign, CampaignState, RecipientState, entry_id
from bot.store.broadcasts_memory import MemoryBroadcasts
from bot.store.broadcasts_mongo import MongoBroadcasts
from bot.store.memory import MemoryStore
from bot.store.mongo import MongoStore
from bot.store.privacy_memory import MemoryPrivacyStore
from bot.web.webhook import WEBHOOK_CLIENT_MAX_SIZE, WebhookStats, add_webhook_routes
from bot.whatsapp.client import GraphClient
from bot.whatsapp.simulator import SIMULATOR, Simulator, create_simulator_app

SECRET = "campaign-app-secret"
TOKEN = "campaign-access-token"
PNID = "100000000000001"
DISPLAY = "15550009999"
SUPPRESSION_SECRET = b"campaign-deployment-secret"
PROJECT = Project(
    controller=Controller("Café Aurora SL", "hola@example.com", "dpo@example.com", "https://example.com/p", "AEPD"),
    purposes=(Purpose("offers", {"en": "Offers"}), Purpose("news", {"en": "News"})),
    notice_version="1.0",
    marketing_cap_per_week=3,
)
DECL = TemplateDeclaration(
    name="spring_offer", language="en", parameters=("first_name",), body="Hi {{1}}, 20% off this week.",
    footer="Reply STOP to opt out", buttons=(TemplateButton("quick_reply", "Stop promotions", "optout"),),
)
FAST = RunOptions(receipt_wait=1.0, lease_seconds=2.0, progress_every=0.2)


def number(i: int) -> str:
    return f"3460{i:07d}"


@dataclass
class Env:
    store: Store
    broadcasts: Broadcasts
    privacy: PrivacyService
    sim: Simulator
    graph: GraphClient
    metrics: Metrics
    now: datetime
    decider_used: list[str] = field(default_factory=list)
    dispatcher: Dispatcher | None = None

    def runner(self, options: RunOptions = FAST) -> CampaignRunner:
        return CampaignRunner(
            self.broadcasts, self.store, self.graph, PROJECT, is_suppressed=self.privacy.is_suppressed,
            is_restricted=self.privacy.is_restricted, metrics=self.metrics, options=options,
            notify=self.dispatcher.notify if self.dispatcher else (lambda keys: None),
        )

    async def subscriber(
        self, subject: str, *, state: PurposeState = PurposeState.GRANTED, since: datetime | None = None,
        notice: str = "1.0", locale: str = "en", slots: dict[str, Any] | None = None, name: str = "Ana",
        restricted: bool = False, purpose: str = "offers", pnid: str = PNID, flow_state: str = "subscribed",
    ) -> Conversation:
        conv = Conversation.start(pnid, subject, "consent", "1", flow_state, locale, self.now, wa_id=subject,
                                  profile_name=name)
        consent = {purpose: PurposeStatus(state, since or self.now - timedelta(days=1), notice)}
        conv = conv.evolve(consent=consent, slots={"age_ok": True, "freq": "weekly"} if slots is None else slots,
                           restricted=restricted, version=1)
        assert (await self.store.conversations.acquire(conv.key, "seed", self.now, 30)).acquired
        await self.store.steps.commit(Step(conversation=conv, seq=1, at=self.now, cause=Cause.SYSTEM), "seed")
        return conv

    async def withdraw(self, conv: Conversation) -> None:
        """The customer opts out (a committed step, as the flow would write it)."""
        head = await self.store.conversations.get(conv.key)
        assert head is not None
        consent = dict(head.consent)
        consent["offers"] = PurposeStatus(PurposeState.WITHDRAWN, datetime.now(UTC), "1.0")
        new = head.evolve(consent=consent, version=head.version + 1)
        assert (await self.store.conversations.acquire(conv.key, "flow", datetime.now(UTC), 30)).acquired
        await self.store.steps.commit(
            Step(conversation=new, seq=new.version, at=datetime.now(UTC), cause=Cause.INBOUND), "flow"
        )

    async def suppress(self, subject: str) -> None:
        await self.privacy.privacy.suppression.add(suppression_key(SUPPRESSION_SECRET, subject), "marketing", self.now)

    async def marketing_already_sent(self, conv: Conversation, n: int) -> None:
        for i in range(n):
            msg = Outbound(to=conv.subject, kind=OutboundKind.TEMPLATE, template=TemplateRef("older", "en"),
                           category=Category.MARKETING, purpose="offers")
            eid = f"older:{conv.subject}:{i}"
            await self.store.transcript.add_outbound(conv.key, conv.subject, msg, self.now, "flow", eid)
            assert await self.store.transcript.claim("seed", self.now, 30, 1, [eid])
            assert await self.store.transcript.settle(eid, "seed", SendOutcome(OutState.ACCEPTED, wamid=f"w{eid}"),
                                                      self.now)

    async def create(self, cid: str = "", **kwargs: Any) -> Campaign:
        args: dict[str, Any] = {"name": "Spring", "decl": DECL, "purpose": "offers", "project": PROJECT,
                                "phone_number_id": PNID, "now": datetime.now(UTC),
                                "segments": [Segment("freq", "weekly")],
                                "params": {"first_name": "{{ profile_name }}"}, "rate": 1000,
                                "campaign_id": cid or uuid.uuid4().hex[:8]}
        args.update(kwargs)
        campaign = new_campaign(**args)
        await self.broadcasts.create(campaign)
        return campaign

    def templates_to(self, subject: str) -> list[dict[str, Any]]:
        return [b for b in self.sim.sent_to(subject) if b.get("type") == "template"]


def flow_decider(env_holder: list[Env], catalog: Any) -> Any:
    """The runtime's Decider over the real engine and the shipped consent flow (Meta signals only
    need the conversation's flow)."""

    def decider(conversation: Conversation | None, event: Any, pnid: str, subject: str, now: datetime) -> Turn | None:
        if not isinstance(event, Signal):
            return None
        env_holder[0].decider_used.append(event.kind)
        signal = MetaSignal(kind=event.kind, subject=subject, phone_number_id=pnid)
        d = decide(conversation, signal, catalog.family("consent"), PROJECT, now)
        return Turn(conversation=d.conversation, transitions=d.transitions, outbox=d.outbox, consent=d.consent)

    return decider


async def make_env(store: Store, broadcasts: Broadcasts, *, with_dispatcher: bool = False) -> AsyncIterator[Env]:
    await broadcasts.open()
    metrics = Metrics()
    privacy = PrivacyService(store, MemoryPrivacyStore(), PROJECT, SUPPRESSION_SECRET)
    holder: list[Env] = []
    notify: Any = lambda keys: None  # noqa: E731
    dispatcher: Dispatcher | None = None
    session = aiohttp.ClientSession()
    hook_app = web.Application(client_max_size=WEBHOOK_CLIENT_MAX_SIZE)
    hook_server = TestServer(hook_app, host="127.0.0.1")
    sim_app = create_simulator_app(app_secret=SECRET, webhook_url="http://127.0.0.1:1/unset", access_token=TOKEN,
                                   phone_numbers={PNID: DISPLAY}, status_delays=(0.01, 0.02, 0.03))
    sim_server = TestServer(sim_app, host="127.0.0.1")
    await sim_server.start_server()
    sim = sim_app[SIMULATOR]
    sim.timeout_hold = 1.0
    graph = GraphClient(session, base_url=str(sim_server.make_url("/graph")), api_version="v23.0",
                        access_token=TOKEN, rate_per_second=1000, timeout=0.4, backoff_base=0.01)
    if with_dispatcher:
        flow_sender = Sender(store, graph, PROJECT, metrics, "svc", is_suppressed=privacy.is_suppressed)
        catalog = await asyncio.to_thread(load_catalog, Path(__file__).resolve().parents[2], PROJECT)
        dispatcher = Dispatcher(store, flow_decider(holder, catalog), flow_sender, metrics, "svc", workers=2)
        notify = dispatcher.notify
    sink = CampaignReceipts(broadcasts, InboxWriter(store.inbox, metrics, notify))
    add_webhook_routes(hook_app, verify_token="verify", app_secret=SECRET, sink=sink,
                       known_numbers=lambda p: p == PNID, stats=WebhookStats())
    await hook_server.start_server()
    sim.webhook_url = str(hook_server.make_url("/webhook"))
    env = Env(store, broadcasts, privacy, sim, graph, metrics, datetime.now(UTC), dispatcher=dispatcher)
    holder.append(env)
    if dispatcher is not None:
        dispatcher.start()
    try:
        yield env
    finally:
        if dispatcher is not None:
            await dispatcher.stop()
        await sim.drain(2.0)
        await sim_server.close()
        await hook_server.close()
        await session.close()


@pytest.fixture(params=["memory", "mongo"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    if request.param == "memory":
        memory = MemoryStore()
        await memory.open()
        async for e in make_env(memory, MemoryBroadcasts(memory)):
            yield e
        return
    store = MongoStore.from_uri(request.getfixturevalue("mongo_uri"), f"camp_{uuid.uuid4().hex[:12]}",
                                serverSelectionTimeoutMS=5000)
    await store.open()
    try:
        async for e in make_env(store, MongoBroadcasts(store.database)):
            yield e
    finally:
        await store.database.client.drop_database(store.database_name)
        await store.close()


@pytest.fixture
async def memory_env() -> AsyncIterator[Env]:
    memory = MemoryStore()
    await memory.open()
    async for e in make_env(memory, MemoryBroadcasts(memory), with_dispatcher=True):
        yield e


async def population(env: Env, eligible: int = 5) -> dict[str, list[str]]:
    """Subscribers of the campaign's purpose, one group per outcome (plus people it must never see)."""
    groups: dict[str, list[str]] = {"eligible": []}
    n = 0

    def nxt() -> str:
        nonlocal n
        n += 1
        return number(n)

    for _ in range(eligible):
        groups["eligible"].append((await env.subscriber(nxt())).subject)
    cases: dict[str, Any] = {
        "no_consent": [dict(state=PurposeState.WITHDRAWN), dict(state=PurposeState.DECLINED),
                       dict(state=PurposeState.REQUESTED)],
        "consent_stale": [dict(since=env.now - timedelta(days=731)), dict(notice="0.9")],
        "age_unknown": [dict(slots={"freq": "weekly"})],
        "minor": [dict(slots={"age_ok": False, "freq": "weekly"})],
        "restricted": [dict(restricted=True), {}],  # the second one via the restriction store
        "suppressed": [{}],
        "frequency_cap": [{}],
        "locale": [dict(locale="es")],
        "segment": [dict(slots={"age_ok": True, "freq": "monthly"}), dict(slots={"age_ok": True})],
        "render_failed": [dict(name="")],
    }
    for reason, variants in cases.items():
        groups[reason] = []
        for kw in variants:
            conv = await env.subscriber(nxt(), **kw)
            groups[reason].append(conv.subject)
    await env.privacy.privacy.restrictions.restrict(groups["restricted"][1], env.now, "dpo")
    await env.suppress(groups["suppressed"][0])
    cap = await env.store.conversations.get(f"{PNID}:{groups['frequency_cap'][0]}")
    assert cap is not None
    await env.marketing_already_sent(cap, 3)
    # never candidates: another purpose only, another business number
    groups["other"] = [(await env.subscriber(nxt(), purpose="news")).subject,
                       (await env.subscriber(nxt(), pnid="100000000000002")).subject]
    return groups


# --- creating --------------------------------------------------------------------------------------
async def test_a_template_without_an_opt_out_element_is_refused(env: Env) -> None:
    bare = TemplateDeclaration(name="spring_offer", language="en", parameters=("first_name",))
    with pytest.raises(CampaignError, match="no opt-out element"):
        await env.create(decl=bare)
    utility = TemplateDeclaration(name="receipt", language="en", category="UTILITY", footer="Reply STOP to opt out")
    with pytest.raises(CampaignError, match="MARKETING"):
        await env.create(decl=utility, params={})
    with pytest.raises(CampaignError, match="needs first_name"):
        await env.create(params={})
    with pytest.raises(CampaignError, match="not declared"):
        await env.create(purpose="raffles")
    with pytest.raises(CampaignError, match="--rate"):
        await env.create(rate=1001)
    assert await env.broadcasts.recent() == []


# --- dry run ----------------------------------------------------------------------------------------
async def test_dry_run_counts_are_exact_and_send_nothing(env: Env) -> None:
    groups = await population(env, eligible=4)
    campaign = await env.create()
    report = await env.runner().dry_run(campaign)
    expected = {reason: len(subjects) for reason, subjects in groups.items() if reason not in ("eligible", "other")}
    assert report["reasons"] == expected
    assert report["eligible"] == 4
    assert report["candidates"] == 4 + sum(expected.values())
    assert env.sim.requests == []
    assert (await env.broadcasts.tally(campaign.id)).total == 0  # a dry run writes nothing


# --- sending ----------------------------------------------------------------------------------------
async def test_only_consenting_subscribers_receive_it_exactly_once(env: Env) -> None:
    groups = await population(env, eligible=6)
    campaign = await env.create()
    snaps: list[dict[str, Any]] = []
    result = await env.runner().run(campaign.id, on_progress=snaps.append)
    assert result["state"] == "done"
    await env.sim.drain(2.0)
    for subject in groups["eligible"]:
        sent = env.templates_to(subject)
        assert len(sent) == 1, subject
        body = sent[0]
        assert body["biz_opaque_callback_data"] == entry_id(campaign.id, subject)
        template = body["template"]
        assert template["name"] == "spring_offer" and template["language"]["code"] == "en"
        assert template["components"][0]["parameters"][0]["text"] == "Ana"
        assert template["components"][1]["parameters"][0]["payload"] == "optout"
    for reason, subjects in groups.items():
        if reason != "eligible":
            for subject in subjects:
                assert env.sim.sent_to(subject) == [], (reason, subject)
    tally = await env.broadcasts.tally(campaign.id)
    assert tally.state(RecipientState.ACCEPTED) == 6
    assert tally.state(RecipientState.PENDING) == tally.state(RecipientState.SENDING) == 0
    assert sum(tally.reasons.values()) == tally.state(RecipientState.EXCLUDED) == 15
    assert result["accepted"] == 6 and result["excluded"] == 15
    stored = await env.broadcasts.get(campaign.id)
    assert stored is not None and stored.state is CampaignState.DONE and stored.progress["accepted"] == 6
    # receipts from the status webhooks reached the recipients
    for _ in range(100):
        tally = await env.broadcasts.tally(campaign.id)
        if tally.delivery.get("read") == 6:
            break
        await asyncio.sleep(0.05)
    assert tally.delivery.get("read") == 6
    # a second run has nothing to do
    before = len(env.sim.requests)
    again = await env.runner().run(campaign.id)
    assert again["state"] == "done" and len(env.sim.requests) == before


async def test_opt_outs_and_suppression_mid_campaign_stop_further_messages(env: Env) -> None:
    subs = [await env.subscriber(number(i)) for i in range(1, 13)]
    campaign = await env.create(rate=25)
    task = asyncio.create_task(env.runner().run(campaign.id))
    while len(env.sim.requests) < 2:
        await asyncio.sleep(0.005)
    await env.withdraw(subs[-1])  # taps "Stop promotions" while the campaign runs
    await env.suppress(subs[-2].subject)  # erased / objected meanwhile
    result = await asyncio.wait_for(task, 10)
    assert env.sim.sent_to(subs[-1].subject) == []
    assert env.sim.sent_to(subs[-2].subject) == []
    for s in subs[:-2]:
        assert len(env.templates_to(s.subject)) == 1
    assert result["reasons"] == {"no_consent": 1, "suppressed": 1}
    assert result["accepted"] == 10


async def test_paced_evenly_at_the_configured_rate(memory_env: Env) -> None:
    """On the memory store (the database's own latency jitter is not the pacer's: on MongoDB a slow
    write can delay one request and bunch it with the next)."""
    env = memory_env
    for i in range(1, 21):
        await env.subscriber(number(i))
    campaign = await env.create(rate=50)
    # The simulator that timestamps the arrivals runs in this process. Late in the suite a full
    # collection of the session's heap pauses it for up to ~100 ms (measured with gc.callbacks), which
    # holds arrivals back and bunches them; the session's objects are kept out of collections here.
    gc.collect()
    gc.freeze()
    try:
        await env.runner().run(campaign.id)
    finally:
        gc.unfreeze()
    arrivals = sorted(r.at for r in env.sim.requests if r.kind == "message")
    assert len(arrivals) == 20
    gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
    assert gaps[len(gaps) // 2] == pytest.approx(0.02, abs=0.004)  # one every 20 ms at 50/s
    spans = [b - a for a, b in zip(arrivals, arrivals[5:], strict=False)]
    assert min(spans) > 5 * 0.02 * 0.8  # never a burst: any 6 consecutive requests span about 100 ms
    assert arrivals[-1] - arrivals[0] >= 19 * 0.02 * 0.95


async def test_cancel_then_resume_sends_each_recipient_once(env: Env) -> None:
    subs = [await env.subscriber(number(i)) for i in range(1, 21)]
    campaign = await env.create(rate=20)
    task = asyncio.create_task(env.runner(RunOptions(receipt_wait=1.0, lease_seconds=2.0, progress_every=0.1,
                                                     concurrency=2)).run(campaign.id))
    while len(env.sim.requests) < 4:
        await asyncio.sleep(0.005)
    await env.broadcasts.set_state(campaign.id, CampaignState.CANCELLED, datetime.now(UTC))
    first = await asyncio.wait_for(task, 10)
    assert first["state"] == "cancelled"
    assert 4 <= first["accepted"] < 20
    assert (await env.broadcasts.get(campaign.id)).state is CampaignState.CANCELLED  # type: ignore[union-attr]
    second = await env.runner().run(campaign.id)
    assert second["state"] == "done" and second["accepted"] == 20
    for s in subs:
        assert len(env.templates_to(s.subject)) == 1, s.subject


async def test_a_lost_answer_is_settled_from_its_receipt_not_resent(env: Env) -> None:
    subs = [await env.subscriber(number(i)) for i in range(1, 4)]
    env.sim.inject("timeout", 1, to=subs[1].subject)  # accepted, but the answer comes after the client gave up
    campaign = await env.create()
    result = await env.runner().run(campaign.id)
    assert result["accepted"] == 3
    for s in subs:
        assert len(env.templates_to(s.subject)) == 1, s.subject
    entries = await env.store.transcript.for_conversation(subs[1].key)
    entry = next(e for e in entries if e.id == entry_id(campaign.id, subs[1].subject))
    assert entry.out_state is OutState.ACCEPTED
    assert entry.wamid == env.sim.conversation(subs[1].subject)[-1].id


async def test_a_run_that_died_mid_send_is_reconciled_without_duplicates(env: Env) -> None:
    """In process: leave the state a SIGKILL leaves (recipients sending, outbox entries claimed by the
    campaign), one of them already accepted by the Graph API, then run again."""
    subs = [await env.subscriber(number(i)) for i in range(1, 5)]
    campaign = await env.create()
    # the dead run: scanned the audience, leased two recipients, queued and claimed their entries
    scan_runner = env.runner()
    report = await scan_runner.dry_run(campaign)
    assert report["eligible"] == 4
    dead = _Run(scan_runner, campaign, None, asyncio.Event())
    await dead._scan()
    leased = await env.broadcasts.lease(campaign.id, "dead-run", datetime.now(UTC), 2)
    assert [r.subject for r in leased] == [subs[0].subject, subs[1].subject]
    owner = f"broadcast:{campaign.id}"
    messages = {}
    for r in leased:
        msg = campaign_message(r.subject, DECL, "offers", {"first_name": "Ana"}, campaign.id)
        messages[r.subject] = msg
        await env.store.transcript.add_outbound(r.key, r.subject, msg, datetime.now(UTC), owner, r.entry_id)
        assert await env.store.transcript.claim(owner, datetime.now(UTC), 600, 1, [r.entry_id])
    # the first one reached Meta before the crash (its status webhook names the entry)
    await env.graph.send(PNID, messages[subs[0].subject], callback_data=leased[0].entry_id)
    for _ in range(100):
        rec = await env.broadcasts.recipient(campaign.id, subs[0].subject)
        if rec is not None and rec.wamid:
            break
        await asyncio.sleep(0.02)
    result = await env.runner().run(campaign.id)
    assert result["state"] == "done" and result["accepted"] == 4
    for s in subs:
        assert len(env.templates_to(s.subject)) == 1, s.subject


# --- 131050 -------------------------------------------------------------------------------------------
async def test_131050_failures_record_withdrawals(memory_env: Env) -> None:
    env = memory_env
    subs = [await env.subscriber(number(i)) for i in range(1, 5)]
    env.sim.inject(131050, 1, to=subs[2].subject)
    campaign = await env.create()
    result = await env.runner().run(campaign.id)
    assert result["accepted"] == 4  # 131050 arrives later, as Meta reports it: a failed status
    conv = None
    for _ in range(200):
        conv = await env.store.conversations.get(subs[2].key)
        if conv is not None and conv.consent["offers"].state is PurposeState.WITHDRAWN:
            break
        await asyncio.sleep(0.02)
    assert conv is not None and conv.consent["offers"].state is PurposeState.WITHDRAWN
    assert "error_131050" in env.decider_used
    events = await env.store.ledger.history(subs[2].subject)
    assert events and str(events[-1].event.action) == "withdrawn"
    rec = await env.broadcasts.recipient(campaign.id, subs[2].subject)
    assert rec is not None and rec.error_code == 131050
    tally = await env.broadcasts.tally(campaign.id)
    assert tally.errors == {"131050": 1}
    for s in (subs[0], subs[1], subs[3]):
        assert (await env.store.conversations.get(s.key)).consent["offers"].state is PurposeState.GRANTED  # type: ignore[union-attr]
