"""One contract suite for the privacy ports, run on the memory adapter and on MongoDB (a real
MongoDB-wire server, a fresh database per test)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from bot.core.consent import Actor, ConsentAction, ConsentEventDraft, ConsentRecord, chain
from bot.core.project import Retention
from bot.core.proof import request_due, suppression_key, verify_chain
from bot.core.rendering import NoticeText
from bot.errors import NotFound
from bot.store.mongo import MongoStore
from bot.store.privacy import (
    AccessDenied,
    BlockedProofEntry,
    DataRequest,
    InvalidRecord,
    Principal,
    PrivacyStore,
    RequestKind,
    RequestStatus,
    Role,
)
from bot.store.privacy_memory import MemoryPrivacyStore
from bot.store.privacy_mongo import (
    MongoPrivacyStore,
    RetentionTarget,
    apply_retention_indexes,
    apply_store_retention,
    ensure_ttl_index,
)

NOW = datetime(2025, 6, 3, 10, 15, 42, 123456, tzinfo=UTC)
NOW_MS = NOW.replace(microsecond=123000)
DPO = Principal("dpo", frozenset({Role.PRIVACY}))
AGENT = Principal("ana", frozenset({Role.AGENT, Role.SUPERVISOR}))


@pytest.fixture
async def mongo_db(mongo_uri: str) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    """A fresh database on the session's MongoDB-wire server."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True,
                                                                serverSelectionTimeoutMS=5000)
    db = client[f"privacy_{uuid.uuid4().hex[:12]}"]
    try:
        yield db
    finally:
        await client.drop_database(db.name)
        await client.close()


@pytest.fixture(params=["memory", "mongo"])
def privacy_uri(request: pytest.FixtureRequest) -> str | None:
    """``None`` for the memory adapter, else the session server's URI (resolved outside the event loop)."""
    return None if request.param == "memory" else str(request.getfixturevalue("mongo_uri"))


@pytest.fixture
async def privacy(privacy_uri: str | None) -> AsyncIterator[PrivacyStore]:
    if privacy_uri is None:
        store: PrivacyStore = MemoryPrivacyStore()
        await store.open()
        yield store
        return
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(privacy_uri, tz_aware=True,
                                                                serverSelectionTimeoutMS=5000)
    db = client[f"privacy_{uuid.uuid4().hex[:12]}"]
    try:
        store = MongoPrivacyStore(db)
        await store.open()
        await store.open()  # idempotent
        yield store
    finally:
        await client.drop_database(db.name)
        await client.close()


def records(subject: str = "34600000001", n: int = 3) -> tuple[ConsentRecord, ...]:
    out: list[ConsentRecord] = []
    for i in range(n):
        draft = ConsentEventDraft(subject, "offers", ConsentAction.CONFIRMED if i else ConsentAction.REQUESTED,
                                  NOW + timedelta(minutes=i), Actor.CUSTOMER, "doi", "1", "1.0", "ab" * 32, "es",
                                  "button", {"message_id": f"wamid.{i}"})
        out.append(chain(out[-1] if out else None, draft))
    return tuple(out)


# --- notices --------------------------------------------------------------------------------------
async def test_notices_are_idempotent_and_found_by_hash(privacy: PrivacyStore) -> None:
    n1 = NoticeText.of("1.0", "es", "Ejemplo SL: ofertas por WhatsApp. BAJA para parar.")
    n1b = NoticeText.of("1.0", "es", "Ejemplo SL: ofertas por WhatsApp. Escribe BAJA para parar.")
    n2 = NoticeText.of("1.0", "en", "Ejemplo SL: offers on WhatsApp. STOP to stop.")
    assert await privacy.notices.put(n1) is True
    assert await privacy.notices.put(n1) is False
    assert await privacy.notices.put(n1b) is True
    assert await privacy.notices.put(n2) is True
    assert await privacy.notices.get(n1.sha256) == n1
    assert await privacy.notices.get("0" * 64) is None
    assert sorted(n.sha256 for n in await privacy.notices.many([n1.sha256, n2.sha256, "f" * 64])) == sorted(
        [n1.sha256, n2.sha256]
    )
    assert await privacy.notices.many([]) == []
    assert {n.text for n in await privacy.notices.versions("1.0", "es")} == {n1.text, n1b.text}


async def test_a_notice_whose_hash_does_not_match_is_refused(privacy: PrivacyStore) -> None:
    forged = NoticeText("1.0", "es", "texto cambiado", NoticeText.of("1.0", "es", "original").sha256)
    with pytest.raises(InvalidRecord):
        await privacy.notices.put(forged)
    assert await privacy.notices.get(forged.sha256) is None


# --- suppression ----------------------------------------------------------------------------------
async def test_suppression_holds_only_key_scope_and_date(privacy: PrivacyStore) -> None:
    key = suppression_key(b"secret", "+34 600 000 001")
    assert await privacy.suppression.is_suppressed(key) is False
    assert await privacy.suppression.add(key, "marketing", NOW) is True
    assert await privacy.suppression.is_suppressed(key) is True
    assert await privacy.suppression.is_suppressed(suppression_key(b"secret", "34600000002")) is False
    entry = await privacy.suppression.get(key)
    assert entry is not None and (entry.key, entry.scope, entry.since) == (key, "marketing", NOW_MS)
    assert entry.since.tzinfo is not None


async def test_suppression_add_is_idempotent_and_widens_scope(privacy: PrivacyStore) -> None:
    key = suppression_key(b"secret", "34600000001")
    await privacy.suppression.add(key, "marketing", NOW)
    assert await privacy.suppression.add(key, "all", NOW + timedelta(days=1)) is False
    entry = await privacy.suppression.get(key)
    assert entry is not None and (entry.scope, entry.since) == ("all", NOW_MS)
    assert await privacy.suppression.add(key, "marketing", NOW + timedelta(days=2)) is False
    entry = await privacy.suppression.get(key)
    assert entry is not None and entry.scope == "all"


# --- blocked proof --------------------------------------------------------------------------------
async def test_blocked_proof_needs_the_privacy_role(privacy: PrivacyStore) -> None:
    chain_ = records()
    entry = BlockedProofEntry("b1", "34600000001", chain_, ("ab" * 32,), NOW, NOW + timedelta(days=1095))
    assert await privacy.blocked.block(entry) is True
    assert await privacy.blocked.block(entry) is False
    assert await privacy.blocked.count() == 1
    with pytest.raises(AccessDenied):
        await privacy.blocked.read("34600000001", AGENT)
    with pytest.raises(AccessDenied):
        await privacy.blocked.read("34600000001", Principal("nobody"))
    [got] = await privacy.blocked.read("34600000001", DPO)
    assert [(r.seq, r.hash, r.event.evidence) for r in got.records] == [
        (r.seq, r.hash, r.event.evidence) for r in chain_
    ]
    assert verify_chain(got.records).ok  # the proof survives the round trip byte for byte
    assert (got.blocked_at, got.destroy_at) == (NOW_MS, NOW_MS + timedelta(days=1095))
    assert got.notice_refs == ("ab" * 32,)
    assert await privacy.blocked.read("34600000002", DPO) == []


# --- data-subject requests ------------------------------------------------------------------------
async def test_data_requests_open_list_and_close(privacy: PrivacyStore) -> None:
    early = DataRequest("r1", "34600000001", RequestKind.ACCESS, NOW, request_due(NOW), actor="ana")
    late = DataRequest("r2", "34600000002", RequestKind.ERASURE, NOW + timedelta(days=3),
                       request_due(NOW + timedelta(days=3)))
    assert await privacy.requests.open(late) is True
    assert await privacy.requests.open(early) is True
    assert await privacy.requests.open(early) is False
    assert [r.id for r in await privacy.requests.list_open()] == ["r1", "r2"]
    got = await privacy.requests.get("r1")
    assert got is not None and got.due_at == request_due(NOW_MS) and got.kind is RequestKind.ACCESS
    done = await privacy.requests.close("r1", RequestStatus.DONE, NOW + timedelta(hours=1), note="sent",
                                        result={"events": 3})
    assert (done.status, done.completed_at, done.note, done.result) == (
        RequestStatus.DONE, NOW_MS + timedelta(hours=1), "sent", {"events": 3}
    )
    assert [r.id for r in await privacy.requests.list_open()] == ["r2"]
    assert [r.id for r in await privacy.requests.for_subject("34600000001")] == ["r1"]
    with pytest.raises(NotFound):
        await privacy.requests.close("nope", RequestStatus.DONE, NOW)


async def test_list_open_respects_the_limit(privacy: PrivacyStore) -> None:
    for i in range(5):
        at = NOW + timedelta(days=5 - i)
        await privacy.requests.open(DataRequest(f"r{i}", "s", RequestKind.ACCESS, at, request_due(at)))
    assert [r.id for r in await privacy.requests.list_open(limit=2)] == ["r4", "r3"]


# --- restrictions ---------------------------------------------------------------------------------
async def test_restrictions(privacy: PrivacyStore) -> None:
    assert await privacy.restrictions.is_restricted("s1") is False
    assert await privacy.restrictions.restrict("s1", NOW, "ana") is True
    assert await privacy.restrictions.restrict("s1", NOW, "ana") is False
    await privacy.restrictions.restrict("s0", NOW, "ana")
    assert await privacy.restrictions.is_restricted("s1") is True
    assert await privacy.restrictions.subjects() == ["s0", "s1"]
    assert await privacy.restrictions.unrestrict("s1") is True
    assert await privacy.restrictions.unrestrict("s1") is False
    assert await privacy.restrictions.is_restricted("s1") is False


# --- MongoDB: indexes and retention ---------------------------------------------------------------
async def ttl_of(db: AsyncDatabase[dict[str, Any]], collection: str, field: str) -> int | None:
    async for index in await db[collection].list_indexes():
        if list(index["key"].items()) == [(field, 1)]:
            value = index.get("expireAfterSeconds")
            return None if value is None else int(value)
    return None


async def test_open_creates_ttl_indexes_idempotently(mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    store = MongoPrivacyStore(mongo_db)
    await store.open()
    await store.open()
    assert await ttl_of(mongo_db, "blocked_proof", "destroy_at") == 0
    assert await ttl_of(mongo_db, "data_requests", "completed_at") == 3 * 365 * 86400


async def test_retention_indexes_have_the_configured_values_and_follow_changes(mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    transcripts = RetentionTarget("transcript", "at")
    inbox = RetentionTarget("inbox", "done_at")
    done = await apply_retention_indexes(mongo_db, Retention(transcripts_days=90, inbox_days=7),
                                         transcripts=transcripts, inbox=inbox)
    assert {(d.collection, d.action) for d in done} >= {("transcript", "created"), ("inbox", "created")}
    assert await ttl_of(mongo_db, "transcript", "at") == 90 * 86400
    assert await ttl_of(mongo_db, "inbox", "done_at") == 7 * 86400
    assert await ttl_of(mongo_db, "blocked_proof", "destroy_at") == 0
    again = await apply_retention_indexes(mongo_db, Retention(transcripts_days=90, inbox_days=7),
                                          transcripts=transcripts, inbox=inbox)
    assert {d.action for d in again} == {"unchanged"}
    changed = await apply_retention_indexes(mongo_db, Retention(transcripts_days=30, inbox_days=7),
                                            transcripts=transcripts, inbox=inbox)
    assert {(d.collection, d.action) for d in changed if d.action != "unchanged"} == {("transcript", "updated")}
    assert await ttl_of(mongo_db, "transcript", "at") == 30 * 86400


async def test_a_plain_index_becomes_a_ttl_index(mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    await mongo_db["things"].create_index([("closed_at", 1)], name="closed_at_plain")
    result = await ensure_ttl_index(mongo_db, "things", "closed_at", 3600)
    assert (result.name, result.action) == ("closed_at_plain", "updated")
    assert await ttl_of(mongo_db, "things", "closed_at") == 3600


async def test_memory_store_expires_blocked_proof_like_the_ttl_index() -> None:
    store = MemoryPrivacyStore()
    await store.blocked.block(BlockedProofEntry("gone", "s", (), (), NOW, NOW + timedelta(days=1)))
    await store.blocked.block(BlockedProofEntry("kept", "s", (), (), NOW, NOW + timedelta(days=3)))
    assert store.expire(NOW + timedelta(days=2)) == 1
    assert [e.id for e in await store.blocked.read("s", DPO)] == ["kept"]


async def test_retention_on_the_main_store_collections(mongo_store: MongoStore) -> None:
    """TTL indexes on the collections the main store writes, with the configured values."""
    db = mongo_store.database
    await apply_store_retention(db, Retention(transcripts_days=180, inbox_days=7, blocked_proof_days=1095))
    assert await ttl_of(db, "transcript", "at") == 180 * 86400
    assert await ttl_of(db, "inbox", "done_at") == 7 * 86400
    assert await ttl_of(db, "blocked_proof", "destroy_at") == 0
    assert await ttl_of(db, "audit", "at") == 730 * 86400  # the console's audit log, retention.audit_days
    await mongo_store.open()  # the main store re-opening leaves the TTL indexes alone
    changed = await apply_store_retention(db, Retention(transcripts_days=90, inbox_days=7))
    assert [d.action for d in changed if d.collection == "transcript"] == ["updated"]
    assert await ttl_of(db, "transcript", "at") == 90 * 86400
