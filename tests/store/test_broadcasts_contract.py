"""One contract suite for the campaign ports, on the memory adapter and on MongoDB (a real MongoDB-wire
server, a fresh database per test)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.core.audience import TemplateButton, TemplateDeclaration
from bot.core.conversation import Cause, Conversation, PurposeState, PurposeStatus, Step
from bot.core.messages import DeliveryStatus
from bot.errors import NotFound
from bot.store.base import Store
from bot.store.broadcasts import (
    Broadcasts,
    Campaign,
    CampaignState,
    Finish,
    Receipt,
    Recipient,
    RecipientState,
    entry_id,
    parse_entry_id,
)
from bot.store.broadcasts_memory import MemoryBroadcasts
from bot.store.broadcasts_mongo import MongoBroadcasts
from bot.store.memory import MemoryStore
from bot.store.mongo import MongoStore

NOW = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)
NOW_MS = NOW.replace(microsecond=123000)
PNID = "100000000000001"
DECL = TemplateDeclaration(
    name="spring_offer", language="en", parameters=("first_name",), footer="Reply STOP to opt out",
    buttons=(TemplateButton("quick_reply", "Stop promotions", "optout"),),
)


@pytest.fixture(params=["memory", "mongo"])
async def both(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Store, Broadcasts]]:
    if request.param == "memory":
        memory = MemoryStore()
        await memory.open()
        b: Broadcasts = MemoryBroadcasts(memory)
        await b.open()
        yield memory, b
        return
    uri = request.getfixturevalue("mongo_uri")
    store = MongoStore.from_uri(uri, f"campaigns_{uuid.uuid4().hex[:12]}", serverSelectionTimeoutMS=5000)
    await store.open()
    try:
        b = MongoBroadcasts(store.database)
        await b.open()
        await b.open()  # idempotent
        yield store, b
    finally:
        await store.database.client.drop_database(store.database_name)
        await store.close()


def campaign(cid: str = "c1", **changes: Any) -> Campaign:
    c = Campaign(id=cid, name="Spring", template=DECL, purpose="offers", phone_number_id=PNID, created_at=NOW,
                 updated_at=NOW, locale="en", segments=(("freq", "weekly"),), params={"first_name": "{{ profile_name }}"},
                 rate=500)
    return replace(c, **changes)


def recipient(subject: str, seq: int, state: RecipientState = RecipientState.PENDING, cid: str = "c1",
              reason: str = "") -> Recipient:
    return Recipient(cid, subject, f"{PNID}:{subject}", state, seq=seq, reason=reason)


async def put_conversation(store: Store, subject: str, consent: dict[str, PurposeState], pnid: str = PNID) -> None:
    conv = Conversation.start(pnid, subject, "consent", "1", "idle", "en", NOW)
    conv = conv.evolve(consent={p: PurposeStatus(s, NOW, "1.0") for p, s in consent.items()}, version=1)
    lease = await store.conversations.acquire(conv.key, "t", NOW, 30)
    assert lease.acquired
    await store.steps.commit(Step(conversation=conv, seq=1, at=NOW, cause=Cause.SYSTEM), "t")


def test_entry_ids_round_trip() -> None:
    assert entry_id("c1", "34600000001") == "broadcast:c1:34600000001"
    assert parse_entry_id("broadcast:c1:34600000001") == ("c1", "34600000001")
    assert parse_entry_id("broadcast:c1:US.abc:def") == ("c1", "US.abc:def")
    assert parse_entry_id("x/out/0") is None
    assert parse_entry_id("broadcast:c1") is None


async def test_campaign_round_trip_and_listing(both: tuple[Store, Broadcasts]) -> None:
    _, b = both
    await b.create(campaign())
    await b.create(campaign("c2", created_at=NOW + timedelta(seconds=1)))
    with pytest.raises(ValueError, match="already exists"):
        await b.create(campaign())
    got = await b.get("c1")
    assert got == campaign(created_at=NOW_MS, updated_at=NOW_MS)
    assert got is not None and got.template == DECL
    assert [c.id for c in await b.recent()] == ["c2", "c1"]
    assert await b.get("nope") is None


async def test_state_changes_stamp_start_and_finish(both: tuple[Store, Broadcasts]) -> None:
    _, b = both
    await b.create(campaign())
    running = await b.set_state("c1", CampaignState.RUNNING, NOW)
    assert running.state is CampaignState.RUNNING and running.started_at == NOW_MS
    again = await b.set_state("c1", CampaignState.RUNNING, NOW + timedelta(hours=1))
    assert again.started_at == NOW_MS  # kept
    done = await b.set_state("c1", CampaignState.DONE, NOW + timedelta(hours=2))
    assert done.finished_at == NOW_MS + timedelta(hours=2)
    with pytest.raises(NotFound):
        await b.set_state("nope", CampaignState.DONE, NOW)


async def test_run_lease_is_exclusive_until_it_expires(both: tuple[Store, Broadcasts]) -> None:
    _, b = both
    await b.create(campaign())
    assert await b.acquire_run("c1", "a", NOW, 10)
    assert await b.acquire_run("c1", "a", NOW + timedelta(seconds=5), 10)  # extends
    assert not await b.acquire_run("c1", "b", NOW + timedelta(seconds=14), 10)
    assert await b.acquire_run("c1", "b", NOW + timedelta(seconds=15), 10)  # expired
    await b.release_run("c1", "a")  # not the holder: no-op
    assert not await b.acquire_run("c1", "a", NOW + timedelta(seconds=16), 10)
    await b.release_run("c1", "b")
    assert await b.acquire_run("c1", "a", NOW + timedelta(seconds=16), 10)


async def test_progress_and_cursor(both: tuple[Store, Broadcasts]) -> None:
    _, b = both
    await b.create(campaign())
    await b.save_progress("c1", {"accepted": 3, "reasons": {"no_consent": 1}}, NOW, cursor="k9")
    c = await b.get("c1")
    assert c is not None and c.progress == {"accepted": 3, "reasons": {"no_consent": 1}}
    assert c.audience_cursor == "k9" and not c.audience_done
    await b.save_progress("c1", {}, NOW, audience_done=True)
    c = await b.get("c1")
    assert c is not None and c.audience_cursor == "k9" and c.audience_done


async def test_recipients_are_unique_per_campaign_and_subject(both: tuple[Store, Broadcasts]) -> None:
    _, b = both
    await b.create(campaign())
    await b.create(campaign("c2"))
    assert await b.add_recipients([recipient("a", 1), recipient("b", 2)]) == 2
    assert await b.add_recipients([recipient("b", 3, RecipientState.EXCLUDED, reason="x"), recipient("c", 4)]) == 1
    assert await b.add_recipients([recipient("a", 1, cid="c2")]) == 1  # another campaign
    b_rec = await b.recipient("c1", "b")
    assert b_rec is not None and b_rec.state is RecipientState.PENDING and b_rec.seq == 2  # untouched
    assert await b.add_recipients([]) == 0


async def test_lease_in_audience_order_then_finish_once(both: tuple[Store, Broadcasts]) -> None:
    _, b = both
    await b.create(campaign())
    await b.add_recipients([recipient("z", 1), recipient("a", 2), recipient("m", 3),
                            recipient("x", 4, RecipientState.EXCLUDED, reason="no_consent")])
    first = await b.lease("c1", "run1", NOW, 2)
    assert [r.subject for r in first] == ["z", "a"]
    assert all(r.state is RecipientState.SENDING and r.owner == "run1" and r.attempts == 1 for r in first)
    assert first[0].attempt_at == NOW_MS
    rest = await b.lease("c1", "run1", NOW, 10)
    assert [r.subject for r in rest] == ["m"]
    assert await b.lease("c1", "run1", NOW, 10) == []
    assert [r.subject for r in await b.in_doubt("c1")] == ["a", "m", "z"]
    assert [r.subject for r in await b.in_doubt("c1", after_subject="a", limit=1)] == ["m"]
    n = await b.finish("c1", [Finish("z", RecipientState.ACCEPTED), Finish("a", RecipientState.FAILED, error_code=131026),
                              Finish("x", RecipientState.ACCEPTED)], NOW)
    assert n == 2  # x was not sending
    n = await b.finish("c1", [Finish("z", RecipientState.FAILED)], NOW)
    assert n == 0  # a final state is never overwritten
    z = await b.recipient("c1", "z")
    assert z is not None and z.state is RecipientState.ACCEPTED and z.finished_at == NOW_MS
    with pytest.raises(ValueError, match="final"):
        await b.finish("c1", [Finish("m", RecipientState.PENDING)], NOW)


async def test_release_puts_back_in_order(both: tuple[Store, Broadcasts]) -> None:
    _, b = both
    await b.create(campaign())
    await b.add_recipients([recipient(s, i) for i, s in enumerate("abcd", 1)])
    leased = await b.lease("c1", "r", NOW, 3)
    await b.finish("c1", [Finish("a", RecipientState.ACCEPTED)], NOW)
    assert await b.release("c1", ["c", "b", "a", "zz"]) == 2
    again = await b.lease("c1", "r2", NOW, 10)
    assert [r.subject for r in again] == ["b", "c", "d"]
    assert [r.attempts for r in again] == [2, 2, 1]
    assert len(leased) == 3


async def test_receipts_keep_first_wamid_and_only_move_up(both: tuple[Store, Broadcasts]) -> None:
    _, b = both
    await b.create(campaign())
    await b.add_recipients([recipient("a", 1), recipient("b", 2)])
    assert await b.record_receipt(Receipt("c1", "a", "wamid.1", DeliveryStatus.DELIVERED, NOW))
    assert await b.record_receipt(Receipt("c1", "a", "wamid.2", DeliveryStatus.SENT, NOW))  # late 'sent'
    a = await b.recipient("c1", "a")
    assert a is not None and a.wamid == "wamid.1" and a.delivery is DeliveryStatus.DELIVERED
    assert a.state is RecipientState.PENDING  # receipts never change the state machine
    await b.record_receipt(Receipt("c1", "a", "wamid.1", DeliveryStatus.READ, NOW + timedelta(seconds=1)))
    await b.record_receipt(Receipt("c1", "b", "wamid.3", DeliveryStatus.FAILED, NOW, error_code=131050))
    await b.record_receipt(Receipt("c1", "b", "wamid.3", DeliveryStatus.READ, NOW))  # failed is terminal
    a, b_ = await b.recipient("c1", "a"), await b.recipient("c1", "b")
    assert a is not None and a.delivery is DeliveryStatus.READ and a.delivery_at == NOW_MS + timedelta(seconds=1)
    assert b_ is not None and b_.delivery is DeliveryStatus.FAILED and b_.error_code == 131050
    assert not await b.record_receipt(Receipt("c1", "nobody", "wamid.9", DeliveryStatus.SENT, NOW))
    assert not await b.record_receipt(Receipt("c9", "a", "wamid.9", DeliveryStatus.SENT, NOW))


async def test_tally_counts_states_reasons_delivery_and_errors(both: tuple[Store, Broadcasts]) -> None:
    _, b = both
    await b.create(campaign())
    await b.add_recipients([
        recipient("a", 1), recipient("b", 2), recipient("c", 3),
        recipient("d", 4, RecipientState.EXCLUDED, reason="no_consent"),
        recipient("e", 5, RecipientState.EXCLUDED, reason="no_consent"),
        recipient("f", 6, RecipientState.EXCLUDED, reason="suppressed"),
    ])
    await b.lease("c1", "r", NOW, 2)
    await b.finish("c1", [Finish("a", RecipientState.ACCEPTED), Finish("b", RecipientState.FAILED, error_code=131026)],
                   NOW)
    await b.record_receipt(Receipt("c1", "a", "w1", DeliveryStatus.READ, NOW))
    t = await b.tally("c1")
    assert dict(t.states) == {"pending": 1, "accepted": 1, "failed": 1, "excluded": 3}
    assert dict(t.reasons) == {"no_consent": 2, "suppressed": 1}
    assert dict(t.delivery) == {"read": 1}
    assert dict(t.errors) == {"131026": 1}
    assert t.total == 6 and t.state(RecipientState.PENDING) == 1


async def test_recipients_page_by_subject(both: tuple[Store, Broadcasts]) -> None:
    _, b = both
    await b.create(campaign())
    await b.add_recipients([recipient(s, i) for i, s in enumerate(["d", "b", "a", "c"], 1)])
    page = await b.recipients("c1", limit=3)
    assert [r.subject for r in page] == ["a", "b", "c"]
    assert [r.subject for r in await b.recipients("c1", "c")] == ["d"]


async def test_candidates_by_purpose_number_and_key(both: tuple[Store, Broadcasts]) -> None:
    store, b = both
    await put_conversation(store, "34600000003", {"offers": PurposeState.GRANTED})
    await put_conversation(store, "34600000001", {"offers": PurposeState.WITHDRAWN, "news": PurposeState.GRANTED})
    await put_conversation(store, "34600000002", {"news": PurposeState.GRANTED})
    await put_conversation(store, "34600000004", {"offers": PurposeState.GRANTED}, pnid="100000000000002")
    await put_conversation(store, "34600000005", {"offers": PurposeState.REQUESTED})
    got = await b.candidates(PNID, "offers")
    assert [c.subject for c in got] == ["34600000001", "34600000003", "34600000005"]
    assert got[1].consent["offers"].state is PurposeState.GRANTED
    page = await b.candidates(PNID, "offers", after_key=f"{PNID}:34600000001", limit=1)
    assert [c.subject for c in page] == ["34600000003"]
    assert await b.candidates(PNID, "nothing") == []
