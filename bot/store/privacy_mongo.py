"""MongoDB adapter of the privacy ports (PyMongo async API), plus the retention TTL indexes.

:class:`MongoPrivacyStore` takes an ``AsyncDatabase`` (the same database the main store uses) and
creates its indexes idempotently in :meth:`MongoPrivacyStore.open`. Collections:

========================  =====================================================================
``notices``               ``_id = "<sha256>:<locale>:<version>"``; index on ``sha256`` and
                          (``version``, ``locale``). Insert-only; step commits write the texts
                          the flows show (``Step.notices``), ``put`` any other.
``suppression``           ``_id`` = the HMAC key; ``scope``, ``since``. Nothing else.
``blocked_proof``         ``subject``, ``records``, ``notice_refs``, ``blocked_at``, ``destroy_at``
                          (TTL index, ``expireAfterSeconds=0``: destroyed at ``destroy_at``).
``data_requests``         DSR records; (``status``, ``due_at``) and (``subject``, ``received_at``)
                          indexes; TTL 3 years after ``completed_at``.
``restrictions``          ``_id`` = subject; ``since``, ``actor``.
========================  =====================================================================

:func:`apply_retention_indexes` creates or updates (``collMod``) TTL indexes on collections the main
store owns (transcripts, processed inbox entries) with the configured :class:`Retention` values.

In production, give the application role ``insert``/``find`` only on ``blocked_proof`` and read it
through a separate privacy role; the port's role check is the application-level half of that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    DuplicateKeyError,
)

from bot.core.consent import ConsentRecord
from bot.core.project import Retention
from bot.core.proof import notice_from_doc
from bot.core.rendering import NoticeText
from bot.errors import NotFound
from bot.store import indexes as ix
from bot.store.mongo import notice_doc, translated
from bot.store.privacy import (
    AccessDenied,
    BlockedProof,
    BlockedProofEntry,
    DataRequest,
    DataRequests,
    InvalidRecord,
    Notices,
    Principal,
    PrivacyStore,
    RequestKind,
    RequestStatus,
    Restrictions,
    Role,
    Suppression,
    SuppressionEntry,
    ms,
    wider_scope,
)

Doc = dict[str, Any]
DSR_KEEP_SECONDS = 3 * 365 * 86400  # DSR records are kept 3 years after completion (accountability)


def aware(value: datetime) -> datetime:
    """A datetime read back from MongoDB as aware UTC (whether or not the client is ``tz_aware``)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _record_from_doc(doc: Mapping[str, Any]) -> ConsentRecord:
    event = dict(doc["event"])
    event["at"] = aware(event["at"])
    return ConsentRecord.from_doc({**doc, "event": event})


# --- TTL helper ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TtlIndex:
    """What :func:`ensure_ttl_index` found or did: ``action`` is ``created``, ``updated`` or ``unchanged``."""

    collection: str
    field: str
    name: str
    expire_after_seconds: int
    action: str


async def ensure_ttl_index(db: AsyncDatabase[Doc], collection: str, field: str, seconds: int) -> TtlIndex:
    """Make ``collection`` expire documents ``seconds`` after their ``field`` date: create the TTL index,
    or change its ``expireAfterSeconds`` with ``collMod`` when an index on ``field`` exists with another
    value (a plain single-field index on ``field`` becomes a TTL index the same way). Idempotent."""
    if seconds < 0:
        raise InvalidRecord(f"{collection}.{field}: expireAfterSeconds must be >= 0 (got {seconds})")
    with translated(f"ttl index {collection}.{field}"):
        coll = db[collection]
        async for index in await coll.list_indexes():
            if list(index["key"].items()) == [(field, 1)]:
                name = str(index["name"])
                if index.get("expireAfterSeconds") == seconds:
                    return TtlIndex(collection, field, name, seconds, "unchanged")
                await db.command({"collMod": collection, "index": {"name": name, "expireAfterSeconds": seconds}})
                return TtlIndex(collection, field, name, seconds, "updated")
        name = f"ttl_{field}"
        await coll.create_index([(field, ASCENDING)], name=name, expireAfterSeconds=seconds)
        return TtlIndex(collection, field, name, seconds, "created")


@dataclass(frozen=True, slots=True)
class RetentionTarget:
    """A collection of the main store whose documents expire: ``field`` holds the date retention
    counts from (documents without it never expire, e.g. pending inbox entries)."""

    collection: str
    field: str


async def apply_retention_indexes(
    db: AsyncDatabase[Doc],
    retention: Retention,
    *,
    transcripts: RetentionTarget | None = None,
    inbox: RetentionTarget | None = None,
    extra: Mapping[RetentionTarget, int] | None = None,
) -> list[TtlIndex]:
    """Create or update the retention TTL indexes with the configured values:

    - ``transcripts``: ``retention.transcripts_days`` after the entry's date field;
    - ``inbox``: ``retention.inbox_days`` after the processed date (pending entries have none);
    - ``blocked_proof.destroy_at``: 0 seconds (the date *is* the destruction date);
    - ``data_requests.completed_at``: 3 years;
    - ``extra``: any other (target -> days).

    Returns what was done per index. Safe to run at every start (``collMod`` only when a value changed).
    """
    wanted: list[tuple[str, str, int]] = [
        ("blocked_proof", "destroy_at", 0),
        ("data_requests", "completed_at", DSR_KEEP_SECONDS),
    ]
    if transcripts is not None:
        wanted.append((transcripts.collection, transcripts.field, retention.transcripts_days * 86400))
    if inbox is not None:
        wanted.append((inbox.collection, inbox.field, retention.inbox_days * 86400))
    for target, days in (extra or {}).items():
        wanted.append((target.collection, target.field, days * 86400))
    return [await ensure_ttl_index(db, c, f, s) for c, f, s in wanted]


#: The main store's collections that expire (``bot.store.indexes``): transcript entries by their time,
#: inbox entries once processed (``done_at`` is set by ``Inbox.mark_done``; pending ones never expire).
TRANSCRIPTS = RetentionTarget(ix.TRANSCRIPT, "at")
PROCESSED_INBOX = RetentionTarget(ix.INBOX, "done_at")
#: The console's audit log (``bot.store.accounts_mongo``, same database), by the entry's time.
AUDIT = RetentionTarget("audit", "at")


async def apply_store_retention(db: AsyncDatabase[Doc], retention: Retention) -> list[TtlIndex]:
    """:func:`apply_retention_indexes` on the main store's own collections and the console's audit log
    (``retention.audit_days``), run at start, after ``MongoStore.open``, on ``MongoStore.database``."""
    return await apply_retention_indexes(
        db, retention, transcripts=TRANSCRIPTS, inbox=PROCESSED_INBOX, extra={AUDIT: retention.audit_days}
    )


# --- ports ---------------------------------------------------------------------------------------
class MongoNotices(Notices):
    def __init__(self, coll: AsyncCollection[Doc]) -> None:
        self.coll = coll

    async def put(self, notice: NoticeText) -> bool:
        doc = notice_doc(notice)
        with translated("notices.put"):
            try:
                await self.coll.insert_one(doc)
            except DuplicateKeyError:
                return False
        return True

    async def get(self, sha256: str) -> NoticeText | None:
        with translated("notices.get"):
            doc = await self.coll.find_one({"sha256": sha256})
        return None if doc is None else notice_from_doc(doc)

    async def many(self, hashes: Sequence[str]) -> list[NoticeText]:
        if not hashes:
            return []
        with translated("notices.many"):
            return [notice_from_doc(d) async for d in self.coll.find({"sha256": {"$in": list(set(hashes))}})]

    async def versions(self, version: str, locale: str) -> list[NoticeText]:
        with translated("notices.versions"):
            return [notice_from_doc(d) async for d in self.coll.find({"version": version, "locale": locale})]


class MongoSuppression(Suppression):
    def __init__(self, coll: AsyncCollection[Doc]) -> None:
        self.coll = coll

    async def add(self, key: str, scope: str, at: datetime) -> bool:
        with translated("suppression.add"):
            try:
                result = await self.coll.update_one(
                    {"_id": key}, {"$setOnInsert": {"scope": str(scope), "since": ms(at)}}, upsert=True
                )
                if result.upserted_id is not None:
                    return True
            except DuplicateKeyError:
                pass  # a concurrent add won: treat as existing
            old = await self.coll.find_one({"_id": key})
            if old is not None and wider_scope(str(old["scope"]), str(scope)):
                await self.coll.update_one({"_id": key, "scope": old["scope"]}, {"$set": {"scope": str(scope)}})
        return False

    async def is_suppressed(self, key: str) -> bool:
        with translated("suppression.is_suppressed"):
            return await self.coll.find_one({"_id": key}, projection={"_id": 1}) is not None

    async def get(self, key: str) -> SuppressionEntry | None:
        with translated("suppression.get"):
            doc = await self.coll.find_one({"_id": key})
        return None if doc is None else SuppressionEntry(doc["_id"], doc["scope"], aware(doc["since"]))


class MongoBlockedProof(BlockedProof):
    def __init__(self, coll: AsyncCollection[Doc]) -> None:
        self.coll = coll

    async def block(self, entry: BlockedProofEntry) -> bool:
        doc = {
            "_id": entry.id,
            "subject": entry.subject,
            "records": [r.to_doc() for r in entry.records],
            "notice_refs": list(entry.notice_refs),
            "blocked_at": ms(entry.blocked_at),
            "destroy_at": ms(entry.destroy_at),
            "reason": entry.reason,
        }
        with translated("blocked_proof.block"):
            try:
                await self.coll.insert_one(doc)
            except DuplicateKeyError:
                return False
        return True

    async def read(self, subject: str, principal: Principal) -> list[BlockedProofEntry]:
        if not principal.has(Role.PRIVACY):
            raise AccessDenied("blocked_proof.read", str(Role.PRIVACY))
        with translated("blocked_proof.read"):
            docs = [d async for d in self.coll.find({"subject": subject}).sort([("blocked_at", 1), ("_id", 1)])]
        return [
            BlockedProofEntry(
                id=d["_id"],
                subject=d["subject"],
                records=tuple(_record_from_doc(r) for r in d["records"]),
                notice_refs=tuple(d["notice_refs"]),
                blocked_at=aware(d["blocked_at"]),
                destroy_at=aware(d["destroy_at"]),
                reason=d.get("reason", "erasure"),
            )
            for d in docs
        ]

    async def count(self) -> int:
        with translated("blocked_proof.count"):
            return await self.coll.count_documents({})


def _request_to_doc(r: DataRequest) -> Doc:
    return {
        "_id": r.id,
        "subject": r.subject,
        "kind": str(r.kind),
        "received_at": ms(r.received_at),
        "due_at": ms(r.due_at),
        "status": str(r.status),
        "completed_at": None if r.completed_at is None else ms(r.completed_at),
        "actor": r.actor,
        "note": r.note,
        "result": dict(r.result),
    }


def _request_from_doc(d: Mapping[str, Any]) -> DataRequest:
    return DataRequest(
        id=d["_id"],
        subject=d["subject"],
        kind=RequestKind(d["kind"]),
        received_at=aware(d["received_at"]),
        due_at=aware(d["due_at"]),
        status=RequestStatus(d["status"]),
        completed_at=None if d.get("completed_at") is None else aware(d["completed_at"]),
        actor=d.get("actor", ""),
        note=d.get("note", ""),
        result=dict(d.get("result") or {}),
    )


class MongoDataRequests(DataRequests):
    def __init__(self, coll: AsyncCollection[Doc]) -> None:
        self.coll = coll

    async def open(self, request: DataRequest) -> bool:
        with translated("data_requests.open"):
            try:
                await self.coll.insert_one(_request_to_doc(request))
            except DuplicateKeyError:
                return False
        return True

    async def close(
        self, request_id: str, status: RequestStatus, at: datetime, note: str = "", result: dict[str, Any] | None = None
    ) -> DataRequest:
        changes: Doc = {"status": str(RequestStatus(status)), "completed_at": ms(at)}
        if note:
            changes["note"] = note
        if result is not None:
            changes["result"] = dict(result)
        with translated("data_requests.close"):
            doc = await self.coll.find_one_and_update(
                {"_id": request_id}, {"$set": changes}, return_document=ReturnDocument.AFTER
            )
        if doc is None:
            raise NotFound(f"data request {request_id!r} does not exist")
        return _request_from_doc(doc)

    async def get(self, request_id: str) -> DataRequest | None:
        with translated("data_requests.get"):
            doc = await self.coll.find_one({"_id": request_id})
        return None if doc is None else _request_from_doc(doc)

    async def list_open(self, limit: int = 100) -> list[DataRequest]:
        with translated("data_requests.list_open"):
            cursor = self.coll.find({"status": str(RequestStatus.OPEN)}).sort([("due_at", 1), ("_id", 1)]).limit(limit)
            return [_request_from_doc(d) async for d in cursor]

    async def for_subject(self, subject: str) -> list[DataRequest]:
        with translated("data_requests.for_subject"):
            cursor = self.coll.find({"subject": subject}).sort([("received_at", 1), ("_id", 1)])
            return [_request_from_doc(d) async for d in cursor]


class MongoRestrictions(Restrictions):
    def __init__(self, coll: AsyncCollection[Doc]) -> None:
        self.coll = coll

    async def restrict(self, subject: str, at: datetime, actor: str) -> bool:
        with translated("restrictions.restrict"):
            try:
                await self.coll.insert_one({"_id": subject, "since": ms(at), "actor": actor})
            except DuplicateKeyError:
                return False
        return True

    async def unrestrict(self, subject: str) -> bool:
        with translated("restrictions.unrestrict"):
            result = await self.coll.delete_one({"_id": subject})
        return result.deleted_count == 1

    async def is_restricted(self, subject: str) -> bool:
        with translated("restrictions.is_restricted"):
            return await self.coll.find_one({"_id": subject}, projection={"_id": 1}) is not None

    async def subjects(self) -> list[str]:
        with translated("restrictions.subjects"):
            return [d["_id"] async for d in self.coll.find({}, projection={"_id": 1}).sort("_id", 1)]


class MongoPrivacyStore(PrivacyStore):
    """The privacy ports on one MongoDB database (an ``AsyncDatabase`` from ``AsyncMongoClient``)."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.db = db
        self.notices = MongoNotices(db[ix.NOTICES])
        self.suppression = MongoSuppression(db["suppression"])
        self.blocked = MongoBlockedProof(db["blocked_proof"])
        self.requests = MongoDataRequests(db["data_requests"])
        self.restrictions = MongoRestrictions(db["restrictions"])

    async def open(self) -> None:
        with translated("privacy.open"):
            await self.db[ix.NOTICES].create_index([("sha256", ASCENDING)], name="sha256")
            await self.db[ix.NOTICES].create_index([("version", ASCENDING), ("locale", ASCENDING)],
                                                   name="version_locale")
            await self.db["blocked_proof"].create_index([("subject", ASCENDING), ("blocked_at", ASCENDING)],
                                                         name="subject_blocked_at")
            await self.db["data_requests"].create_index([("status", ASCENDING), ("due_at", ASCENDING)],
                                                         name="status_due_at")
            await self.db["data_requests"].create_index([("subject", ASCENDING), ("received_at", ASCENDING)],
                                                         name="subject_received_at")
        await ensure_ttl_index(self.db, "blocked_proof", "destroy_at", 0)
        await ensure_ttl_index(self.db, "data_requests", "completed_at", DSR_KEEP_SECONDS)
