"""The storage contract: every adapter passes these tests (see ``test_contract.py`` for the adapters).

Each test takes a ``store`` (an opened :class:`bot.store.base.Store` on empty data) and checks one
documented behaviour of :mod:`bot.store.base`.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bot.core.consent import GENESIS, Actor, ConsentAction, ConsentEventDraft, event_hash
from bot.core.conversation import Cause, Conversation, PurposeState, PurposeStatus, Step, Timer, Transition
from bot.core.messages import (
    Category,
    DeliveryStatus,
    ErrorInfo,
    Inbound,
    InboundKind,
    Outbound,
    OutboundKind,
    StatusUpdate,
    TemplateRef,
)
from bot.errors import NotFound, StaleVersion
from bot.store.base import (
    IN_DOUBT,
    ConversationQuery,
    InboxEntry,
    InboxKind,
    OutState,
    SendOutcome,
    Store,
    TranscriptEntry,
)

T0 = datetime(2025, 3, 4, 10, 0, 0, 123456, tzinfo=UTC)  # microseconds on purpose: stores keep ms
PNID = "1000"
LEASE = 30.0


def ms(value: datetime) -> datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def inbox_entry(entry_id: str, key: str = "1000:34600000001", ts: int = 100, seconds: float = 0) -> InboxEntry:
    msg = Inbound(id=entry_id, phone_number_id=PNID, subject=key.split(":")[1], timestamp=ts,
                  kind=InboundKind.TEXT, text=f"hello {entry_id}")
    return InboxEntry(id=entry_id, conversation_key=key, kind=InboxKind.MESSAGE, timestamp=ts,
                      received_at=at(seconds), event=msg)


def conversation(subject: str = "34600000001", version: int = 1, state: str = "start", **changes: object) -> Conversation:
    base = Conversation.start(PNID, subject, "consent", "v1", state, "en", T0, wa_id=subject, profile_name="Ana")
    return base.evolve(version=version, **changes)


def inbound(wamid: str, subject: str = "34600000001", text: str = "hi") -> Inbound:
    return Inbound(id=wamid, phone_number_id=PNID, subject=subject, timestamp=100, kind=InboundKind.TEXT, text=text)


def outbound(body: str, to: str = "34600000001", category: Category = Category.SERVICE) -> Outbound:
    return Outbound(to=to, kind=OutboundKind.TEXT, body=body, category=category)


def step(
    conv: Conversation,
    seconds: float = 1,
    ins: tuple[Inbound, ...] = (),
    outs: tuple[Outbound, ...] = (),
    consent: tuple[ConsentEventDraft, ...] = (),
    inbox_ids: tuple[str, ...] = (),
) -> Step:
    when = at(seconds)
    return Step(conversation=conv.evolve(updated_at=when), seq=conv.version, at=when, cause=Cause.INBOUND,
                cause_id=ins[0].id if ins else "", transitions=(Transition("say", "a", "b"),), inbound=ins,
                outbox=outs, consent=consent, inbox_ids=inbox_ids, notes=("n",))


def draft(subject: str, action: ConsentAction, seconds: float, purpose: str = "offers") -> ConsentEventDraft:
    return ConsentEventDraft(subject=subject, purpose=purpose, action=action, at=at(seconds), actor=Actor.CUSTOMER,
                             flow_id="consent", flow_version="v1", notice_version="1.0", notice_sha256="ab" * 32,
                             locale="en", method="button", evidence={"message_id": f"wamid.{seconds}"})


async def first_commit(store: Store, conv: Conversation, owner: str = "w1", **kw: object) -> list[str]:
    lease = await store.conversations.acquire(conv.key, owner, at(0), LEASE)
    assert lease.acquired
    return await store.steps.commit(step(conv, **kw), owner)  # type: ignore[arg-type]


class StoreContract:
    # --- inbox -----------------------------------------------------------------------------------
    async def test_inbox_absorbs_duplicates(self, store: Store) -> None:
        assert await store.inbox.put([inbox_entry("a"), inbox_entry("b"), inbox_entry("a")]) == 2
        assert await store.inbox.put([inbox_entry("b"), inbox_entry("c")]) == 1
        assert await store.inbox.put([]) == 0
        assert [e.id for e in await store.inbox.pending("1000:34600000001")] == ["a", "b", "c"]
        assert await store.inbox.count_pending() == 3

    async def test_inbox_orders_by_timestamp_then_insertion(self, store: Store) -> None:
        await store.inbox.put([inbox_entry("late", ts=105), inbox_entry("x", ts=101)])
        await store.inbox.put([inbox_entry("y", ts=101), inbox_entry("first", ts=99)])
        await store.inbox.put([inbox_entry("other", key="1000:34600000002", ts=1)])
        pending = await store.inbox.pending("1000:34600000001")
        assert [e.id for e in pending] == ["first", "x", "y", "late"]
        assert [e.id for e in await store.inbox.pending("1000:34600000001", limit=2)] == ["first", "x"]
        expected = inbox_entry("first", ts=99)
        assert pending[0] == replace(expected, received_at=ms(expected.received_at))
        assert pending[0].received_at.tzinfo is not None

    async def test_inbox_pending_keys_oldest_waiting_first(self, store: Store) -> None:
        await store.inbox.put([inbox_entry("b1", key="1000:b", seconds=5), inbox_entry("a1", key="1000:a", seconds=9)])
        await store.inbox.put([inbox_entry("c1", key="1000:c", seconds=1), inbox_entry("a0", key="1000:a", seconds=3)])
        assert await store.inbox.pending_keys() == ["1000:c", "1000:a", "1000:b"]
        assert await store.inbox.pending_keys(limit=2) == ["1000:c", "1000:a"]
        assert await store.inbox.pending_keys(not_after=at(4)) == ["1000:c", "1000:a"]
        assert await store.inbox.pending_keys(not_after=at(0.5)) == []
        await store.inbox.mark_done(["c1", "a0"], at(10))
        assert await store.inbox.pending_keys() == ["1000:b", "1000:a"]

    async def test_inbox_mark_done_is_idempotent(self, store: Store) -> None:
        await store.inbox.put([inbox_entry("a"), inbox_entry("b")])
        await store.inbox.mark_done(["a", "nope"], at(1))
        await store.inbox.mark_done(["a"], at(2))
        await store.inbox.mark_done([], at(2))
        assert [e.id for e in await store.inbox.pending("1000:34600000001")] == ["b"]
        assert await store.inbox.count_pending() == 1
        assert await store.inbox.put([inbox_entry("a")]) == 0  # a processed id stays a duplicate

    async def test_inbox_erasure_drops_the_events_and_keeps_the_ids(self, store: Store) -> None:
        mine, other = "1000:34600000001", "1000:34600000002"
        await store.inbox.put([inbox_entry("m1", key=mine), inbox_entry("m2", key=mine, ts=101),
                               inbox_entry("o1", key=other)])
        await store.inbox.mark_done(["m1"], at(1))

        def receipt(wamid: str, recipient: str) -> InboxEntry:
            update = StatusUpdate(wamid, PNID, DeliveryStatus.READ, 100, recipient=recipient, subject=recipient)
            return InboxEntry(update.key, "status:" + PNID, InboxKind.STATUS, 100, at(0), update)

        await store.inbox.put([receipt("wamid.s1", "34600000001"), receipt("wamid.s2", "34600000002")])

        assert await store.inbox.erase_conversation(mine, at(2)) == 2  # processed and pending alike
        assert await store.inbox.pending(mine) == []
        assert [e.id for e in await store.inbox.pending(other)] == ["o1"]
        assert await store.inbox.put([inbox_entry("m1", key=mine), inbox_entry("m2", key=mine)]) == 0  # still duplicates
        assert await store.inbox.pending(mine) == []
        with pytest.raises(NotFound):
            await store.inbox.bump_attempts("m2")

        assert await store.inbox.erase_statuses(["34600000001"], at(3)) == 1
        assert [e.id for e in await store.inbox.pending("status:" + PNID)] == ["wamid.s2:read"]
        assert await store.inbox.count_pending() == 2
        assert set(await store.inbox.pending_keys()) == {other, "status:" + PNID}
        assert await store.inbox.erase_conversation(mine, at(4)) == 0  # idempotent
        assert await store.inbox.erase_statuses(["34600000001"], at(4)) == 0
        assert await store.inbox.erase_statuses([], at(4)) == 0

    async def test_inbox_bump_attempts(self, store: Store) -> None:
        await store.inbox.put([inbox_entry("a")])
        assert await store.inbox.bump_attempts("a") == 1
        assert await store.inbox.bump_attempts("a") == 2
        assert (await store.inbox.pending("1000:34600000001"))[0].attempts == 2
        with pytest.raises(NotFound):
            await store.inbox.bump_attempts("missing")

    # --- leases ----------------------------------------------------------------------------------
    async def test_lease_first_contact_and_other_owner_refused(self, store: Store) -> None:
        first = await store.conversations.acquire("1000:n", "w1", at(0), 10)
        assert first.acquired and first.conversation is None
        assert not (await store.conversations.acquire("1000:n", "w2", at(5), 10)).acquired
        assert (await store.conversations.acquire("1000:n", "w1", at(8), 10)).acquired  # extends to 18 s
        assert not (await store.conversations.acquire("1000:n", "w2", at(12), 10)).acquired
        assert (await store.conversations.acquire("1000:n", "w2", at(18), 10)).acquired  # until <= now: free

    async def test_release_of_uncommitted_first_contact_leaves_no_trace(self, store: Store) -> None:
        await store.conversations.acquire("1000:n", "w1", at(0), 10)
        await store.conversations.release("1000:n", "w2")  # not the holder: no-op
        assert not (await store.conversations.acquire("1000:n", "w2", at(1), 10)).acquired
        await store.conversations.release("1000:n", "w1")
        assert await store.conversations.get("1000:n") is None
        assert await store.conversations.count(ConversationQuery()) == 0
        assert (await store.conversations.acquire("1000:n", "w2", at(1), 10)).acquired

    async def test_acquire_loads_the_committed_head(self, store: Store) -> None:
        conv = conversation()
        await first_commit(store, conv)
        lease = await store.conversations.acquire(conv.key, "w2", at(2), 10)
        assert lease.acquired
        assert lease.conversation == conv.evolve(updated_at=ms(at(1)), created_at=ms(T0))
        assert lease.conversation is not None and lease.conversation.updated_at.tzinfo is not None

    # --- commit ----------------------------------------------------------------------------------
    async def test_commit_writes_head_history_transcript_and_returns_outbound_ids(self, store: Store) -> None:
        conv = conversation(slots={"n": 1, "tags": ["a"]}, timers=(Timer("remind", at(60)),))
        ids = await first_commit(store, conv, ins=(inbound("wamid.in1"),), outs=(outbound("one"), outbound("two")))
        assert ids == [f"{conv.key}#1/out/0", f"{conv.key}#1/out/1"]
        head = await store.conversations.get(conv.key)
        assert head == conv.evolve(updated_at=ms(at(1)), created_at=ms(T0), timers=(Timer("remind", ms(at(60))),))
        [record] = await store.steps.history(conv.key)
        assert (record.seq, record.at, record.cause, record.cause_id, record.state) == (
            1, ms(at(1)), "inbound", "wamid.in1", "start")
        assert record.transitions == (Transition("say", "a", "b"),) and record.notes == ("n",)
        entries = await store.transcript.for_conversation(conv.key)
        assert [(e.id, e.direction, e.seq, e.out_state) for e in entries] == [
            (f"{conv.key}#1/in/0", "in", 1, None),
            (f"{conv.key}#1/out/0", "out", 1, OutState.SENDING),
            (f"{conv.key}#1/out/1", "out", 1, OutState.SENDING),
        ]
        assert entries[0].inbound == inbound("wamid.in1") and entries[1].outbound == outbound("one")
        assert all(e.subject == conv.subject and e.at == ms(at(1)) for e in entries)
        assert entries[1].sent_by == "flow"

    async def test_commit_with_wrong_version_is_stale_and_changes_nothing(self, store: Store) -> None:
        conv = conversation()
        await first_commit(store, conv)
        await store.conversations.acquire(conv.key, "w1", at(2), LEASE)
        for seq in (1, 3):
            with pytest.raises(StaleVersion):
                await store.steps.commit(step(conv.evolve(version=seq, state="x"), 3, outs=(outbound("no"),)), "w1")
        assert (await store.conversations.get(conv.key)) is not None
        assert (await store.conversations.get(conv.key)).state == "start"  # type: ignore[union-attr]
        assert len(await store.steps.history(conv.key)) == 1
        assert len(await store.transcript.for_conversation(conv.key)) == 0
        with pytest.raises(ValueError, match="version"):
            await store.steps.commit(replace(step(conv.evolve(version=2), 3), seq=5), "w1")

    async def test_commit_without_the_lease_is_stale(self, store: Store) -> None:
        conv = conversation()
        with pytest.raises(StaleVersion):  # never acquired
            await store.steps.commit(step(conv), "w1")
        await first_commit(store, conv)  # releases
        with pytest.raises(StaleVersion):  # released
            await store.steps.commit(step(conv.evolve(version=2), 2), "w1")
        await store.conversations.acquire(conv.key, "w1", at(2), 1)
        assert (await store.conversations.acquire(conv.key, "w2", at(5), LEASE)).acquired  # w1's lease ran out
        with pytest.raises(StaleVersion):  # taken by w2
            await store.steps.commit(step(conv.evolve(version=2), 6), "w1")
        assert await store.steps.commit(step(conv.evolve(version=2, state="b"), 6), "w2") == []
        assert (await store.conversations.get(conv.key)).state == "b"  # type: ignore[union-attr]

    async def test_expired_lease_nobody_took_still_commits(self, store: Store) -> None:
        conv = conversation()
        await store.conversations.acquire(conv.key, "w1", at(0), 1)
        await store.steps.commit(step(conv, seconds=50), "w1")
        assert (await store.conversations.get(conv.key)) is not None

    async def test_concurrent_commits_of_one_seq_exactly_one_wins(self, store: Store) -> None:
        conv = conversation()
        await first_commit(store, conv)
        await store.conversations.acquire(conv.key, "w1", at(2), LEASE)
        a = step(conv.evolve(version=2, state="a"), 3, ins=(inbound("wa"),), outs=(outbound("from a"),))
        b = step(conv.evolve(version=2, state="b"), 3, ins=(inbound("wb"),), outs=(outbound("from b"),))
        results = await asyncio.gather(store.steps.commit(a, "w1"), store.steps.commit(b, "w1"),
                                       return_exceptions=True)
        wins = [r for r in results if isinstance(r, list)]
        stale = [r for r in results if isinstance(r, StaleVersion)]
        assert len(wins) == 1 and len(stale) == 1, results
        winner = "a" if results[0] is wins[0] else "b"
        assert (await store.conversations.get(conv.key)).state == winner  # type: ignore[union-attr]
        assert [r.seq for r in await store.steps.history(conv.key)] == [1, 2]
        bodies = [e.outbound.body for e in await store.transcript.for_conversation(conv.key) if e.outbound]
        assert bodies == [f"from {winner}"]

    async def test_release_false_keeps_the_lease_until_step_at_plus_lease(self, store: Store) -> None:
        conv = conversation()
        await store.conversations.acquire(conv.key, "w1", at(0), LEASE)
        await store.steps.commit(step(conv, seconds=10), "w1", lease_seconds=20, release=False)
        assert not (await store.conversations.acquire(conv.key, "w2", at(29), 5)).acquired
        await store.steps.commit(step(conv.evolve(version=2), 12), "w1", lease_seconds=20, release=True)
        assert (await store.conversations.acquire(conv.key, "w2", at(13), 5)).acquired

    async def test_commit_consumes_inbox_entries(self, store: Store) -> None:
        conv = conversation()
        await store.inbox.put([inbox_entry("m1"), inbox_entry("m2")])
        await first_commit(store, conv.evolve(consumed=("m1",)), ins=(inbound("m1"),), inbox_ids=("m1",))
        head = await store.conversations.get(conv.key)
        assert head is not None and head.consumed == ("m1",)
        assert [e.id for e in await store.inbox.pending(conv.key)] == ["m2"]  # neither adapter lags
        assert await store.inbox.count_pending() == 1

    async def test_history_order_after_and_limit(self, store: Store) -> None:
        conv = conversation()
        for seq in range(1, 6):
            await store.conversations.acquire(conv.key, "w1", at(seq), LEASE)
            await store.steps.commit(step(conv.evolve(version=seq, state=f"s{seq}"), seq), "w1")
        assert [r.seq for r in await store.steps.history(conv.key)] == [1, 2, 3, 4, 5]
        assert [r.state for r in await store.steps.history(conv.key, after_seq=2, limit=2)] == ["s3", "s4"]
        assert await store.steps.history("1000:other") == []

    # --- consent ---------------------------------------------------------------------------------
    async def test_consent_chain_per_subject_across_steps_and_appends(self, store: Store) -> None:
        conv = conversation()
        d1, d2 = draft(conv.subject, ConsentAction.REQUESTED, 1), draft(conv.subject, ConsentAction.CONFIRMED, 1)
        other = draft("34699999999", ConsentAction.REQUESTED, 1)
        await first_commit(store, conv, consent=(d1, other, d2))
        await store.conversations.acquire(conv.key, "w1", at(2), LEASE)
        d3 = draft(conv.subject, ConsentAction.WITHDRAWN, 2)
        await store.steps.commit(step(conv.evolve(version=2), 2, consent=(d3,)), "w1")
        [r4] = await store.ledger.append([draft(conv.subject, ConsentAction.CONFIRMED, 3, purpose="news")])
        chain = await store.ledger.history(conv.subject)
        assert [r.seq for r in chain] == [1, 2, 3, 4]
        assert [r.event.action for r in chain] == ["requested", "confirmed", "withdrawn", "confirmed"]
        assert chain[0].prev_hash == GENESIS
        for prev, rec in itertools.pairwise(chain):
            assert rec.prev_hash == prev.hash
        for rec in chain:
            assert rec.hash == event_hash(rec.prev_hash, rec.event)
        assert chain[0].event.at == ms(at(1)) and chain[0].event.evidence == {"message_id": "wamid.1"}
        assert chain[3] == r4
        assert [r.seq for r in await store.ledger.history("34699999999")] == [1]
        assert await store.ledger.subjects() == ["34600000001", "34699999999"]

    async def test_concurrent_appends_never_fork_a_chain(self, store: Store) -> None:
        events = [[draft("s1", ConsentAction.REQUESTED, i)] for i in range(6)]
        results = await asyncio.gather(*(store.ledger.append(e) for e in events))
        chain = await store.ledger.history("s1")
        assert [r.seq for r in chain] == [1, 2, 3, 4, 5, 6]
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(chain))
        assert sorted(r[0].seq for r in results) == [1, 2, 3, 4, 5, 6]

    async def test_ledger_delete_removes_one_subjects_chain(self, store: Store) -> None:
        await store.ledger.append([draft("s1", ConsentAction.REQUESTED, 1), draft("s1", ConsentAction.CONFIRMED, 2)])
        await store.ledger.append([draft("s2", ConsentAction.REQUESTED, 3)])
        assert await store.ledger.delete("s1") == 2
        assert await store.ledger.history("s1") == []
        assert await store.ledger.subjects() == ["s2"]
        assert [r.seq for r in await store.ledger.history("s2")] == [1]
        assert await store.ledger.delete("s1") == 0

    # --- transcript and outbox -------------------------------------------------------------------
    async def test_adopt_marks_an_unknown_outcome_accepted_once(self, store: Store) -> None:
        conv = conversation()
        [out_id] = await first_commit(store, conv, outs=(outbound("hi"),))
        assert await store.transcript.adopt(out_id, "wamid.ADOPTED", at(3)) is True
        entry = await store.transcript.by_wamid("wamid.ADOPTED")
        assert entry is not None and entry.id == out_id and entry.out_state is OutState.ACCEPTED
        assert await store.transcript.adopt(out_id, "wamid.OTHER", at(4)) is False  # it has a wamid now
        assert await store.transcript.claim("w2", at(100), 10) == []  # never sent again
        assert await store.transcript.settle(out_id, "w1", SendOutcome(OutState.ACCEPTED, wamid="x"), at(5)) is False
        assert await store.transcript.adopt("no-such-entry", "wamid.Z", at(5)) is False

    async def test_committed_outbound_is_leased_to_the_committer(self, store: Store) -> None:
        conv = conversation()
        [out_id] = await first_commit(store, conv, outs=(outbound("hi"),))  # step at 1 s, lease 30 s
        assert await store.transcript.claim("w2", at(30), 10) == []  # lease still runs
        assert await store.transcript.settle(out_id, "w2", SendOutcome(OutState.ACCEPTED, wamid="x"), at(2)) is False
        assert await store.transcript.settle(out_id, "w1", SendOutcome(OutState.ACCEPTED, wamid="wamid.o1"), at(2))
        entry = await store.transcript.by_wamid("wamid.o1")
        assert entry is not None and entry.out_state is OutState.ACCEPTED and entry.attempts == 1
        assert entry.delivery is DeliveryStatus.ACCEPTED and entry.delivery_at == ms(at(2))
        assert await store.transcript.claim("w2", at(100), 10) == []  # settled entries leave the outbox

    async def test_expired_send_lease_is_taken_over(self, store: Store) -> None:
        conv = conversation()
        ids = await first_commit(store, conv, outs=(outbound("a"), outbound("b")))
        claimed = await store.transcript.claim("w2", at(31), 10, 10)
        assert [e.id for e in claimed] == ids and all(e.out_state is OutState.SENDING for e in claimed)
        # w1 stopped in the middle of its attempts: they may have reached Meta
        assert all(e.reason == IN_DOUBT for e in claimed)
        assert await store.transcript.claim("w3", at(35), 10) == []
        assert await store.transcript.settle(ids[0], "w1", SendOutcome(OutState.ACCEPTED, wamid="w"), at(36)) is False
        assert await store.transcript.settle(ids[0], "w2", SendOutcome(OutState.BLOCKED, reason="no_consent"), at(36))
        again = await store.transcript.claim("w3", at(41), 10)  # w2 never settled ids[1]
        assert [e.id for e in again] == [ids[1]] and again[0].reason == IN_DOUBT
        blocked = next(e for e in await store.transcript.for_conversation(conv.key) if e.id == ids[0])
        assert blocked.out_state is OutState.BLOCKED and blocked.reason == "no_consent"
        # re-queued to wait for a status, then claimed from PENDING: no longer in doubt
        wait = SendOutcome(OutState.PENDING, reason="outcome_unknown", retry_at=at(60))
        assert await store.transcript.settle(ids[1], "w3", wait, at(42))
        [later] = await store.transcript.claim("w4", at(60), 10)
        assert (later.id, later.reason, later.attempts) == (ids[1], "outcome_unknown", 1)

    async def test_add_outbound_is_idempotent_and_claims_are_exclusive(self, store: Store) -> None:
        for i in range(6):
            added = await store.transcript.add_outbound("1000:c", "c", outbound(f"m{i}", "c"), at(i), "agent:ana", f"e{i}")
            assert added
        assert not await store.transcript.add_outbound("1000:c", "c", outbound("dup", "c"), at(0), "agent:ana", "e0")
        a, b = await asyncio.gather(store.transcript.claim("w1", at(10), 30, limit=4),
                                    store.transcript.claim("w2", at(10), 30, limit=4))
        ids_a, ids_b = {e.id for e in a}, {e.id for e in b}
        assert not ids_a & ids_b and ids_a | ids_b == {f"e{i}" for i in range(6)}
        first = a if "e0" in ids_a else b
        assert [e.id for e in first][:1] == ["e0"]  # oldest first
        assert first[0].sent_by == "agent:ana" and first[0].outbound == outbound("m0", "c")

    async def test_claim_only_given_ids_and_retry_later(self, store: Store) -> None:
        for i in range(3):
            await store.transcript.add_outbound("1000:c", "c", outbound(f"m{i}", "c"), at(i), "flow", f"e{i}")
        [e2] = await store.transcript.claim("w1", at(5), 30, entry_ids=["e2", "missing"])
        assert e2.id == "e2" and e2.reason == ""  # a new entry: nothing was attempted yet
        retry = SendOutcome(OutState.PENDING, error=ErrorInfo(130429, "rate"), retry_at=at(60))
        assert await store.transcript.settle("e2", "w1", retry, at(6))
        assert [e.id for e in await store.transcript.claim("w2", at(59), 30)] == ["e0", "e1"]
        [again] = await store.transcript.claim("w2", at(60), 30)
        assert (again.id, again.attempts, again.next_attempt_at) == ("e2", 1, ms(at(60)))
        assert again.error == ErrorInfo(130429, "rate")
        assert await store.transcript.settle("e2", "w2", SendOutcome(OutState.PENDING), at(61))
        [now_again] = await store.transcript.claim("w3", at(61), 30)
        assert now_again.id == "e2" and now_again.attempts == 2
        assert await store.transcript.settle("e2", "w3", SendOutcome(OutState.FAILED, reason="gone",
                                                                     error=ErrorInfo(131026)), at(62))
        failed = next(e for e in await store.transcript.for_conversation("1000:c") if e.id == "e2")
        assert (failed.out_state, failed.attempts, failed.reason, failed.error) == (
            OutState.FAILED, 3, "gone", ErrorInfo(131026))
        with pytest.raises(ValueError, match=r"outcome\.state"):
            await store.transcript.settle("e0", "w2", SendOutcome(OutState.SENDING), at(63))

    async def _accepted(self, store: Store, wamid: str = "wamid.1", seconds: float = 2) -> TranscriptEntry:
        await store.transcript.add_outbound("1000:c", "c", outbound("m", "c", Category.MARKETING), at(0), "flow", wamid)
        await store.transcript.claim("w1", at(1), 30, entry_ids=[wamid])
        await store.transcript.settle(wamid, "w1", SendOutcome(OutState.ACCEPTED, wamid=wamid), at(seconds))
        entry = await store.transcript.by_wamid(wamid)
        assert entry is not None
        return entry

    async def test_status_is_monotonic_and_every_status_is_kept(self, store: Store) -> None:
        await self._accepted(store)
        def status(s: DeliveryStatus, errors: tuple[ErrorInfo, ...] = ()) -> StatusUpdate:
            return StatusUpdate(message_id="wamid.1", phone_number_id=PNID, status=s, timestamp=1, errors=errors)
        e = await store.transcript.apply_status(status(DeliveryStatus.READ), at(5))
        assert e is not None and e.delivery is DeliveryStatus.READ and e.delivery_at == ms(at(5))
        e = await store.transcript.apply_status(status(DeliveryStatus.DELIVERED), at(6))  # late, out of order
        assert e is not None and e.delivery is DeliveryStatus.READ and e.delivery_at == ms(at(5))
        e = await store.transcript.apply_status(status(DeliveryStatus.SENT), at(7))
        e = await store.transcript.apply_status(status(DeliveryStatus.UNKNOWN), at(8))
        assert e is not None and e.delivery is DeliveryStatus.READ
        assert e.statuses == (("read", ms(at(5))), ("delivered", ms(at(6))), ("sent", ms(at(7))),
                              ("unknown", ms(at(8))))
        assert await store.transcript.apply_status(
            StatusUpdate("wamid.nope", PNID, DeliveryStatus.READ, 1), at(9)) is None
        assert await store.transcript.by_wamid("wamid.nope") is None

    async def test_failed_status_is_terminal(self, store: Store) -> None:
        await self._accepted(store)
        err = ErrorInfo(131050, "stop", "user stopped marketing")
        for s, sec in ((DeliveryStatus.SENT, 3), (DeliveryStatus.FAILED, 4), (DeliveryStatus.READ, 5)):
            e = await store.transcript.apply_status(
                StatusUpdate("wamid.1", PNID, s, 1, errors=(err,) if s is DeliveryStatus.FAILED else ()), at(sec))
        assert e is not None and e.delivery is DeliveryStatus.FAILED and e.delivery_at == ms(at(4))
        assert e.error == err and [s for s, _ in e.statuses] == ["sent", "failed", "read"]
        assert e.out_state is OutState.ACCEPTED  # the send itself was accepted

    async def test_count_sent_since(self, store: Store) -> None:
        await self._accepted(store, "wamid.1", seconds=2)
        await self._accepted(store, "wamid.2", seconds=20)
        await store.transcript.apply_status(StatusUpdate("wamid.2", PNID, DeliveryStatus.READ, 1), at(40))
        await store.transcript.add_outbound("1000:c", "c", outbound("s", "c"), at(0), "flow", "svc")
        await store.transcript.claim("w1", at(1), 30, entry_ids=["svc"])
        await store.transcript.settle("svc", "w1", SendOutcome(OutState.ACCEPTED, wamid="wamid.s"), at(21))
        assert await store.transcript.count_sent_since("c", Category.MARKETING, at(0)) == 2
        assert await store.transcript.count_sent_since("c", Category.MARKETING, ms(at(20))) == 1
        assert await store.transcript.count_sent_since("c", Category.MARKETING, at(21)) == 0
        assert await store.transcript.count_sent_since("c", Category.SERVICE, at(0)) == 1
        assert await store.transcript.count_sent_since("other", Category.MARKETING, at(0)) == 0

    async def test_for_conversation_in_time_order_after(self, store: Store) -> None:
        conv = conversation()
        await first_commit(store, conv, ins=(inbound("i1"),), outs=(outbound("o1"),))
        await store.transcript.add_outbound(conv.key, conv.subject, outbound("agent"), at(5), "agent:ana", "ag1")
        await store.conversations.acquire(conv.key, "w1", at(9), LEASE)
        await store.steps.commit(step(conv.evolve(version=2), 10, ins=(inbound("i2"), inbound("i3")),
                                      outs=(outbound("o2"),)), "w1")
        entries = await store.transcript.for_conversation(conv.key)
        assert [e.inbound.id if e.inbound else e.outbound.body for e in entries] == [  # type: ignore[union-attr]
            "i1", "o1", "agent", "i2", "i3", "o2"]
        assert [e.id for e in await store.transcript.for_conversation(conv.key, after=ms(at(5)))] == [
            f"{conv.key}#2/in/0", f"{conv.key}#2/in/1", f"{conv.key}#2/out/0"]
        assert len(await store.transcript.for_conversation(conv.key, limit=2)) == 2

    # --- queries ---------------------------------------------------------------------------------
    async def _population(self, store: Store) -> list[Conversation]:
        granted = {"offers": PurposeStatus(PurposeState.GRANTED, T0)}
        convs = [
            conversation("34611111111", profile_name="Ana García", state="menu", consent=granted),
            conversation("34622222222", profile_name="Bob", state="menu", needs_person=True,
                         consent={"offers": PurposeStatus(PurposeState.WITHDRAWN, T0),
                                  "news": PurposeStatus(PurposeState.GRANTED, T0)}),
            conversation("bsuid.XYZ", profile_name="anaïs", state="confirm", paused=True, wa_id="34633333333"),
            conversation("34644444444", profile_name="Carl", state="menu").evolve(
                phone_number_id="2000", key="2000:34644444444", flow_id="survey"),
        ]
        for i, c in enumerate(convs):
            await first_commit(store, c, seconds=i + 1)
        await store.conversations.acquire("1000:placeholder", "w9", at(0), LEASE)  # never committed
        return convs

    async def test_find_and_count_filters(self, store: Store) -> None:
        await self._population(store)

        async def keys(**kw: object) -> list[str]:
            q = ConversationQuery(**kw)  # type: ignore[arg-type]
            found = [c.key for c in await store.conversations.find(q)]
            assert await store.conversations.count(q) == len(found)
            return found

        assert await keys() == ["2000:34644444444", "1000:bsuid.XYZ", "1000:34622222222", "1000:34611111111"]
        assert await keys(text="ana") == ["1000:bsuid.XYZ", "1000:34611111111"]  # names, any case, prefix
        assert await keys(text="GARC") == ["1000:34611111111"]  # a word of the name
        assert await keys(text="346333") == ["1000:bsuid.XYZ"]  # wa_id
        assert await keys(text="bsuid") == ["1000:bsuid.XYZ"]  # subject
        assert await keys(text="zzz") == []
        assert await keys(phone_number_id="2000") == ["2000:34644444444"]
        assert await keys(state="menu", flow_id="consent") == ["1000:34622222222", "1000:34611111111"]
        assert await keys(flow_id="survey") == ["2000:34644444444"]
        assert await keys(purpose="offers") == ["1000:34622222222", "1000:34611111111"]
        assert await keys(purpose="offers", purpose_state="granted") == ["1000:34611111111"]
        assert await keys(purpose_state="granted") == ["1000:34622222222", "1000:34611111111"]
        assert await keys(purpose="news", purpose_state="withdrawn") == []
        assert await keys(needs_person=True) == ["1000:34622222222"]
        assert await keys(paused=True) == ["1000:bsuid.XYZ"]
        assert await keys(paused=False, state="menu") == ["2000:34644444444", "1000:34622222222", "1000:34611111111"]
        assert await keys(updated_after=ms(at(1)), updated_before=ms(at(4))) == ["1000:bsuid.XYZ", "1000:34622222222"]
        page = await store.conversations.find(ConversationQuery(), skip=1, limit=2)
        assert [c.key for c in page] == ["1000:bsuid.XYZ", "1000:34622222222"]

    async def test_by_subject_and_count_by_state(self, store: Store) -> None:
        await self._population(store)
        other_number = conversation("34611111111", state="menu").evolve(phone_number_id="3000", key="3000:34611111111")
        await first_commit(store, other_number)
        assert [c.key for c in await store.conversations.by_subject("34611111111")] == [
            "1000:34611111111", "3000:34611111111"]
        assert [c.key for c in await store.conversations.by_subject("34633333333")] == ["1000:bsuid.XYZ"]
        assert await store.conversations.by_subject("nobody") == []
        assert await store.conversations.count_by_state("consent") == {("v1", "menu"): 3, ("v1", "confirm"): 1}
        assert await store.conversations.count_by_state("none") == {}

    async def test_due_timers_earliest_first(self, store: Store) -> None:
        a = conversation("a", timers=(Timer("late", at(50)), Timer("early", at(10)), Timer("future", at(500))))
        b = conversation("b", timers=(Timer("mid", at(20)),))
        c = conversation("c", timers=(Timer("same", at(10)),))
        for conv in (a, b, c):
            await first_commit(store, conv)
        due = await store.conversations.due_timers(at(60))
        assert [(k, t.name) for k, t in due] == [("1000:a", "early"), ("1000:c", "same"), ("1000:b", "mid"),
                                                 ("1000:a", "late")]
        assert due[0][1].due == ms(at(10))
        assert [t.name for _, t in await store.conversations.due_timers(at(60), limit=2)] == ["early", "same"]
        assert await store.conversations.due_timers(at(5)) == []

    async def test_due_timers_follow_the_head(self, store: Store) -> None:
        """A timer that fired, moved or was cancelled by a later commit is no longer due."""
        a = conversation("a", timers=(Timer("expire", at(10)), Timer("remind", at(20))))
        await first_commit(store, a)
        assert [t.name for _, t in await store.conversations.due_timers(at(30))] == ["expire", "remind"]
        lease = await store.conversations.acquire(a.key, "w1", at(31), LEASE)
        assert lease.acquired and lease.conversation is not None
        moved = lease.conversation.evolve(version=2, timers=(Timer("remind", at(100)), Timer("new", at(25))))
        await store.steps.commit(step(moved, seconds=31), "w1")
        assert [(t.name, t.due) for _, t in await store.conversations.due_timers(at(30))] == [("new", ms(at(25)))]
        assert [t.name for _, t in await store.conversations.due_timers(at(200))] == ["new", "remind"]
        await store.conversations.delete(a.key)
        assert await store.conversations.due_timers(at(200)) == []

    async def test_values_are_not_shared_with_callers(self, store: Store) -> None:
        """Changing a value after writing it, or a value read back, never changes what is stored."""
        tmpl = TemplateRef("offer", "es", ({"type": "body", "parameters": [{"type": "text", "text": "Ana"}]},))
        msg = Inbound(id="wamid.iso", phone_number_id=PNID, subject="34600000001", timestamp=100,
                      kind=InboundKind.LOCATION, data={"latitude": 1.5, "tags": ["x"]}, referral={"a": {"b": 1}})
        out = Outbound(to="34600000001", kind=OutboundKind.TEMPLATE, template=tmpl, category=Category.MARKETING)
        conv = conversation(slots={"cart": {"items": ["a"]}})
        await first_commit(store, conv, ins=(msg,), outs=(out,))
        conv.slots["cart"]["items"].append("written-after")
        msg.data["tags"].append("written-after")
        tmpl.components[0]["parameters"][0]["text"] = "written-after"
        for _ in range(2):  # the second round sees what the first one changed, if anything leaked
            head = await store.conversations.get(conv.key)
            assert head is not None and head.slots == {"cart": {"items": ["a"]}}
            head.slots["cart"]["items"].append("read-then-changed")
            entries = await store.transcript.for_conversation(conv.key)
            got_in = next(e.inbound for e in entries if e.inbound is not None)
            got_out = next(e.outbound for e in entries if e.outbound is not None)
            assert got_in.data == {"latitude": 1.5, "tags": ["x"]} and got_in.referral == {"a": {"b": 1}}
            assert got_out.template is not None
            assert got_out.template.components[0]["parameters"][0]["text"] == "Ana"
            got_in.data["tags"].append("read-then-changed")
            got_out.template.components[0]["parameters"][0]["text"] = "read-then-changed"
        base = inbox_entry("doc")
        assert isinstance(base.event, Inbound)
        entry = replace(base, event=replace(base.event, data={"tags": ["x"]}, referral={"a": {"b": 1}}))
        await store.inbox.put([entry])
        assert isinstance(entry.event, Inbound) and entry.event.referral is not None
        entry.event.data["tags"].append("written-after")
        entry.event.referral["a"]["b"] = 2
        for _ in range(2):
            (pending,) = await store.inbox.pending(entry.conversation_key)
            assert isinstance(pending.event, Inbound) and pending.event.referral is not None
            assert pending.event.text == "hello doc"
            assert pending.event.data == {"tags": ["x"]} and pending.event.referral == {"a": {"b": 1}}
            pending.event.data["tags"].append("read-then-changed")
            pending.event.referral["a"]["b"] = 3
        update = StatusUpdate(message_id="wamid.p", phone_number_id=PNID, status=DeliveryStatus.SENT, timestamp=100,
                              pricing={"billable": True, "category": ["utility"]})
        await store.inbox.put([InboxEntry(id=update.key, conversation_key="status:" + PNID, kind=InboxKind.STATUS,
                                          timestamp=100, received_at=at(0), event=update)])
        assert update.pricing is not None
        update.pricing["category"].append("written-after")
        for _ in range(2):
            (got,) = await store.inbox.pending("status:" + PNID)
            assert isinstance(got.event, StatusUpdate) and got.event.pricing is not None
            assert got.event == replace(update, pricing={"billable": True, "category": ["utility"]})
            got.event.pricing["category"].append("read-then-changed")

    # --- erasure and health ----------------------------------------------------------------------
    async def test_erasure_deletes_everything_of_a_conversation(self, store: Store) -> None:
        conv = conversation()
        [out_id] = await first_commit(store, conv, ins=(inbound("i1"),), outs=(outbound("o"),))
        await store.transcript.settle(out_id, "w1", SendOutcome(OutState.ACCEPTED, wamid="wamid.e"), at(2))
        keep = conversation("34699999999")
        await first_commit(store, keep, outs=(outbound("keep", keep.subject),))
        assert await store.transcript.delete(conv.key) == 2
        assert await store.steps.delete(conv.key) == 1
        await store.conversations.delete(conv.key)
        assert await store.conversations.get(conv.key) is None
        assert await store.steps.history(conv.key) == []
        assert await store.transcript.for_conversation(conv.key) == []
        assert await store.transcript.by_wamid("wamid.e") is None
        assert await store.conversations.count(ConversationQuery()) == 1
        assert len(await store.transcript.for_conversation(keep.key)) == 1
        assert (await store.conversations.acquire(conv.key, "w2", at(3), LEASE)).conversation is None

    async def test_ping(self, store: Store) -> None:
        assert await store.ping() is True
