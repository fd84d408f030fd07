"""PrivacyService on the real stores (memory and a MongoDB-wire server): export, receipts, chain
verification against tampering in the database, erasure, restriction and request bookkeeping."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest

from bot.core.consent import Actor, ConsentAction, ConsentEventDraft
from bot.core.conversation import Cause, Conversation, PurposeState, PurposeStatus, Step
from bot.core.messages import (
    Category,
    DeliveryStatus,
    Inbound,
    InboundKind,
    Outbound,
    OutboundKind,
    StatusUpdate,
    TemplateRef,
)
from bot.core.policy import GateInput, Reason, decide_send
from bot.core.project import Controller, Project, Purpose, Retention
from bot.core.proof import EXPORT_SCHEMA, ChainProblem, suppression_key
from bot.core.rendering import NoticeText
from bot.errors import StaleVersion
from bot.runtime.privacy import PrivacyService
from bot.store.base import InboxEntry, InboxKind, Store
from bot.store.privacy import AccessDenied, Principal, RequestKind, RequestStatus, Role
from bot.store.privacy_memory import MemoryPrivacyStore
from bot.store.privacy_mongo import MongoPrivacyStore

T0 = datetime(2025, 6, 3, 10, 0, tzinfo=UTC)
SUBJECT = "34600000001"
PNID = "1111"
SECRET = b"deployment-secret-for-tests"
NOTICE = NoticeText.of("1.0", "es", "Ejemplo SL te enviará ofertas por WhatsApp. Escribe BAJA para parar.",
                       "consent_prompt", "prompt")
PROJECT = Project(
    controller=Controller("Ejemplo SL", "privacidad@example.com", "dpo@example.com",
                          "https://example.com/privacidad", "AEPD"),
    purposes=(Purpose("offers", {"es": "Ofertas", "en": "Offers"}),),
    notice_version="1.0",
    retention=Retention(blocked_proof_days=1095),
)
DPO = Principal("dpo", frozenset({Role.PRIVACY}))
AGENT = Principal("ana", frozenset({Role.AGENT}))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["memory", "mongo"])
def backend(request: pytest.FixtureRequest) -> tuple[str, Store]:
    return request.param, request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
async def service(backend: tuple[str, Store]) -> PrivacyService:
    kind, store = backend
    privacy = MemoryPrivacyStore() if kind == "memory" else MongoPrivacyStore(store.database)  # type: ignore[attr-defined]
    await privacy.open()
    return PrivacyService(store, privacy, PROJECT, SECRET, clock=Clock())


def event(action: ConsentAction, at: datetime, message_id: str, **extra: str) -> ConsentEventDraft:
    return ConsentEventDraft(
        subject=SUBJECT, purpose="offers", action=action, at=at, actor=Actor.CUSTOMER, flow_id="doi",
        flow_version="1", notice_version=NOTICE.version, notice_sha256=NOTICE.sha256, locale="es",
        method="button", evidence={"message_id": message_id, **extra},
    )


async def commit(store: Store, conv: Conversation, seq: int, at: datetime, **parts: Any) -> Conversation:
    lease = await store.conversations.acquire(conv.key, "test", at, 30)
    assert lease.acquired
    head = conv.evolve(version=seq, updated_at=at)
    await store.steps.commit(Step(head, seq, at, Cause.INBOUND, **parts), "test", 30, release=True)
    return head


def inbound(wamid: str, at: datetime, text: str = "", payload: str = "") -> Inbound:
    kind = InboundKind.BUTTON_REPLY if payload else InboundKind.TEXT
    return Inbound(wamid, PNID, SUBJECT, int(at.timestamp()), kind, wa_id=SUBJECT, text=text or None,
                   payload=payload or None)


async def subscribe(service: PrivacyService) -> Conversation:
    """A customer who subscribed with double opt-in: two steps, messages both ways, three consent events."""
    store = service.store
    await service.privacy.notices.put(NOTICE)
    conv = Conversation.start(PNID, SUBJECT, "doi", "1", "asked", "es", T0, wa_id=SUBJECT, profile_name="Ana")
    ask = Outbound(SUBJECT, OutboundKind.BUTTONS, body=NOTICE.text, category=Category.UTILITY)
    conv = await commit(store, conv.evolve(window_opened_at=T0), 1, T0,
                        inbound=(inbound("wamid.HI", T0, text="quiero ofertas"),), outbox=(ask,),
                        consent=(event(ConsentAction.REQUESTED, T0, "wamid.HI"),))
    t1 = T0 + timedelta(minutes=1)
    granted = {"offers": PurposeStatus(PurposeState.GRANTED, t1, "1.0")}
    thanks = Outbound(SUBJECT, OutboundKind.TEXT, body="¡Gracias!", category=Category.UTILITY)
    conv = await commit(store, conv.evolve(state="subscribed", consent=granted, window_opened_at=t1,
                                           slots={"age_ok": True, "minor": False}), 2, t1,
                        inbound=(inbound("wamid.TAP", t1, payload="CONSENT_YES:offers"),), outbox=(thanks,),
                        consent=(event(ConsentAction.CONFIRMED, t1, "wamid.TAP", context_id="wamid.PROMPT",
                                       payload="CONSENT_YES:offers"),
                                 replace(event(ConsentAction.PREFERENCES_CHANGED, t1, "wamid.TAP"), purpose="offers")))
    return conv


# --- tampering in the database itself ---------------------------------------------------------------
Tamper = Callable[[Store, str], Awaitable[None]]


async def alter(store: Store, kind: str) -> None:
    if kind == "memory":
        log = store._data.consent[SUBJECT]  # type: ignore[attr-defined]
        log[1] = replace(log[1], event=replace(log[1].event, evidence={"message_id": "wamid.FORGED"}))
    else:
        await store.database["consent_events"].update_one(  # type: ignore[attr-defined]
            {"subject": SUBJECT, "seq": 2}, {"$set": {"event.evidence.message_id": "wamid.FORGED"}})


async def remove(store: Store, kind: str) -> None:
    if kind == "memory":
        del store._data.consent[SUBJECT][1]  # type: ignore[attr-defined]
    else:
        await store.database["consent_events"].delete_one({"subject": SUBJECT, "seq": 2})  # type: ignore[attr-defined]


async def reorder(store: Store, kind: str) -> None:
    if kind == "memory":
        log = store._data.consent[SUBJECT]  # type: ignore[attr-defined]
        log[1], log[2] = replace(log[2], seq=2), replace(log[1], seq=3)
    else:
        coll = store.database["consent_events"]  # type: ignore[attr-defined]
        await coll.update_one({"subject": SUBJECT, "seq": 2}, {"$set": {"seq": -2}})
        await coll.update_one({"subject": SUBJECT, "seq": 3}, {"$set": {"seq": 2}})
        await coll.update_one({"subject": SUBJECT, "seq": -2}, {"$set": {"seq": 3}})


@pytest.mark.parametrize(("tamper", "problem", "seq"), [
    (alter, ChainProblem.ALTERED, 2),
    (remove, ChainProblem.REMOVED, 2),
    (reorder, ChainProblem.REORDERED, 2),
])
async def test_verify_names_the_first_broken_link_in_the_store(
    service: PrivacyService, backend: tuple[str, Store], tamper: Tamper, problem: ChainProblem, seq: int
) -> None:
    await subscribe(service)
    [before] = await service.verify(SUBJECT)
    assert before.ok and before.records == 3
    await tamper(service.store, backend[0])
    [after] = await service.verify()
    assert (after.ok, after.problem, after.broken_seq) == (False, problem, seq)
    receipt = await service.receipt(SUBJECT)
    assert receipt["chain"]["verified"] is False


# --- receipts and export --------------------------------------------------------------------------
async def test_receipt_has_the_tap_and_the_exact_notice_hash(service: PrivacyService) -> None:
    await subscribe(service)
    receipt = await service.receipt("+34 600 000 001")
    [offers] = receipt["services"][0]["purposes"]
    assert offers["status"] == "granted"
    assert offers["evidence"]["messageId"] == "wamid.TAP"
    assert offers["evidence"]["payload"] == "CONSENT_YES:offers"
    assert offers["notice"]["sha256"] == NOTICE.sha256
    assert offers["notice"]["textIntact"] is True
    assert receipt["piiPrincipalId"] == SUBJECT
    assert receipt["chain"]["verified"] is True and receipt["chain"]["headSeq"] == 3


async def test_export_holds_profile_consent_notices_and_transcript(service: PrivacyService) -> None:
    await subscribe(service)
    export = await service.export(SUBJECT, actor="ana")
    jsonschema.validate(export, EXPORT_SCHEMA)
    assert export["profile"][0]["profileName"] == "Ana"
    assert export["preferences"][0]["purposes"]["offers"]["state"] == "granted"
    assert [e["action"] for e in export["consent"]["events"]] == ["requested", "confirmed", "preferences_changed"]
    assert export["consent"]["notices"][0]["text"] == NOTICE.text
    assert [t["direction"] for t in export["transcript"]] == ["in", "out", "in", "out"]
    assert export["transcript"][0]["text"] == "quiero ofertas"
    [request] = await service.privacy.requests.for_subject(SUBJECT)
    assert (request.kind, request.status, request.actor) == (RequestKind.ACCESS, RequestStatus.DONE, "ana")
    assert request.due_at == datetime(2025, 7, 3, 10, 0, tzinfo=UTC)


# --- erasure --------------------------------------------------------------------------------------
async def test_erasure_deletes_suppresses_and_blocks_the_proof(service: PrivacyService) -> None:
    conv = await subscribe(service)
    store = service.store
    [chain_before] = [await store.ledger.history(SUBJECT)]
    # What the webhook received from and about the customer: a processed text, a pending one, a receipt.
    said = [Inbound(f"wamid.said{i}", PNID, SUBJECT, 100 + i, InboundKind.TEXT, wa_id=SUBJECT,
                    profile_name="Ana Secreta", text=f"mi dirección es calle secreta {i}") for i in (1, 2)]
    receipt = StatusUpdate("wamid.sent1", PNID, DeliveryStatus.READ, 103, recipient=SUBJECT, subject=SUBJECT)
    await store.inbox.put([*(InboxEntry(m.id, conv.key, InboxKind.MESSAGE, m.timestamp, T0, m) for m in said),
                           InboxEntry(receipt.key, f"status:{PNID}", InboxKind.STATUS, 103, T0, receipt)])
    await store.inbox.mark_done(["wamid.said1"], T0)
    report = await service.erase("+34 600 000 001", actor="dpo")

    # A search by number finds nothing.
    assert await store.conversations.by_subject(SUBJECT) == []
    assert await store.conversations.get(conv.key) is None
    assert await store.transcript.for_conversation(conv.key) == []
    assert await store.steps.history(conv.key) == []
    assert report.conversations == (conv.key,)
    assert report.transcript_entries == 4 and report.history_records == 2

    # The inbox keeps no copy of what the customer wrote, nor their number or name: only the ids,
    # so a late redelivery of the same message is still a duplicate and is not processed again.
    assert report.inbox_entries == 3 and report.to_doc()["deleted"]["inbox_entries"] == 3
    assert await store.inbox.pending(conv.key) == [] and await store.inbox.pending(f"status:{PNID}") == []
    assert await store.inbox.put([InboxEntry(said[1].id, conv.key, InboxKind.MESSAGE, 102, T0, said[1])]) == 0
    if hasattr(store, "database"):
        left = await store.database["inbox"].find({}).to_list(None)
        assert len(left) == 3 and not any(SUBJECT in str(d) or "secret" in str(d).lower() for d in left)

    # The suppression entry is there, holds only key, scope and date, and every send path sees it.
    key = suppression_key(SECRET, SUBJECT)
    entry = await service.privacy.suppression.get(key)
    assert entry is not None and entry.scope == "all" and entry.since == T0
    assert await service.is_suppressed(SUBJECT) is True
    assert await service.is_suppressed("+34 600 000 001") is True
    assert await service.is_suppressed("34600000002") is False
    message = Outbound(SUBJECT, OutboundKind.TEMPLATE, template=TemplateRef("offers", "es"),
                       category=Category.MARKETING, purpose="offers")
    verdict = decide_send(GateInput(message, PROJECT, T0, suppressed=await service.is_suppressed(message.to),
                                    minor=False, marketing_sent_in_period=0,
                                    consent={"offers": PurposeStatus(PurposeState.GRANTED, T0, "1.0")}))
    assert (verdict.allowed, verdict.reason) == (False, Reason.SUPPRESSED)

    # The consent proof is blocked: intact, readable only with the privacy role, destroyed in 3 years.
    with pytest.raises(AccessDenied):
        await service.blocked_proof(SUBJECT, AGENT)
    [blocked] = await service.blocked_proof(SUBJECT, DPO)
    assert [r.hash for r in blocked.records] == [r.hash for r in chain_before]
    assert blocked.notice_refs == (NOTICE.sha256,)
    assert blocked.destroy_at == T0 + timedelta(days=1095)
    assert report.consent_events_blocked == 3
    assert await store.ledger.history(SUBJECT) == []  # the live chain is gone; only the blocked copy remains
    assert SUBJECT not in await store.ledger.subjects()

    # The customer is told what is kept and why; the request is closed.
    assert any("suppression" in k.what for k in report.kept)
    assert any(k.until == T0 + timedelta(days=1095) for k in report.kept)
    assert "Kept:" in report.summary()
    [request] = await service.privacy.requests.for_subject("+34 600 000 001")
    assert (request.kind, request.status) == (RequestKind.ERASURE, RequestStatus.DONE)
    assert request.result["deleted"]["conversations"] == [conv.key]


async def test_erasure_is_idempotent(service: PrivacyService) -> None:
    await subscribe(service)
    await service.erase(SUBJECT, actor="dpo")
    again = await service.erase(SUBJECT, actor="dpo")
    assert (again.conversations, again.transcript_entries) == ((), 0)
    assert await service.is_suppressed(SUBJECT)


async def test_erasure_of_an_unknown_number_still_suppresses_it(service: PrivacyService) -> None:
    report = await service.erase("+34 699 999 999", actor="dpo")
    assert report.conversations == () and report.consent_events_blocked == 0
    assert await service.is_suppressed("34699999999")


async def test_a_stale_dispatcher_cannot_resurrect_an_erased_conversation(service: PrivacyService) -> None:
    conv = await subscribe(service)
    await service.erase(SUBJECT, actor="dpo")
    with pytest.raises(StaleVersion):
        await service.store.steps.commit(Step(conv.evolve(version=3), 3, T0, Cause.INBOUND), "test", 30)


# --- restriction and requests ---------------------------------------------------------------------
async def test_restriction_blocks_every_send_and_can_be_lifted(service: PrivacyService) -> None:
    conv = await subscribe(service)
    request = await service.restrict(SUBJECT, actor="dpo")
    assert request.status is RequestStatus.DONE and request.kind is RequestKind.RESTRICTION
    assert await service.is_restricted(SUBJECT)
    head = await service.store.conversations.get(conv.key)
    assert head is not None and head.restricted and head.version == 3
    service_reply = Outbound(SUBJECT, OutboundKind.TEXT, body="hola")
    gate = GateInput.for_conversation(service_reply, head, PROJECT, T0 + timedelta(minutes=2), suppressed=False,
                                      minor=False, marketing_sent_in_period=0)
    assert decide_send(gate).reason is Reason.RESTRICTED
    [record] = [r for r in await service.store.steps.history(conv.key) if r.seq == 3]
    assert record.notes == ("restricted",) and record.cause_id == "dpo"

    await service.unrestrict(SUBJECT, actor="dpo")
    assert not await service.is_restricted(SUBJECT)
    head = await service.store.conversations.get(conv.key)
    assert head is not None and not head.restricted
    assert decide_send(replace(gate, restricted=False, window_opened_at=head.window_opened_at)).allowed


async def test_chat_requests_open_data_requests_with_deadlines(service: PrivacyService) -> None:
    conv = await subscribe(service)
    await service.handle_request("erase", conv, T0)
    await service.handle_request("erase", conv, T0)  # asked twice: one request
    service.clock.now = T0 - timedelta(days=2)  # type: ignore[attr-defined]
    await service.handle_request("export", conv, T0)
    await service.handle_request("human", conv, T0)  # not a data-subject request
    open_ = await service.open_requests()
    assert [(r.kind, r.due_at) for r in open_] == [
        (RequestKind.ACCESS, datetime(2025, 7, 1, 10, 0, tzinfo=UTC)),
        (RequestKind.ERASURE, datetime(2025, 7, 3, 10, 0, tzinfo=UTC)),
    ]
    service.clock.now = T0  # type: ignore[attr-defined]
    await service.erase(SUBJECT, actor="dpo")  # completes the customer's own request
    assert [r.kind for r in await service.open_requests()] == [RequestKind.ACCESS]
