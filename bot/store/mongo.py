"""MongoDB adapter of every storage port, on PyMongo's async API (``AsyncMongoClient``).

``MongoStore(client, database_name)`` takes an ``AsyncMongoClient`` or a Motor ``AsyncIOMotorClient``
the application already holds (only calls both drivers share are used; results are read with
UTC-aware datetimes whatever the client's own ``tz_aware`` setting). ``MongoStore.from_uri`` builds
its own client and closes it in :meth:`MongoStore.close`.

Collections (see :mod:`bot.store.indexes` for their indexes):

``conversations``   ``_id`` = key. The head (``Conversation.to_doc()``), its ``lease`` (owner, until)
                    and derived index keys (``_terms``, ``_purposes``, ``_ids``). A first contact's
                    lease lives on a placeholder (``version`` 0) until its first step commits.
``steps``           ``_id`` = ``"<key>#<seq>"``; the history record. Unique (``key``, ``seq``).
``transcript``      ``_id`` = transcript id; messages in and out, the outbox (``queue_at`` is set while
                    an entry waits to be (re)claimed) and delivery statuses. Retention runs on ``at``.
``inbox``           ``_id`` = Meta's id; ``done``/``done_at`` once processed (retention on ``done_at``).
``consent_events``  per-subject hash chain; unique (``subject``, ``seq``).

**Committing a step** (:meth:`MongoStepLog.commit`) is one multi-document transaction of two round
trips: one ordered client-level ``bulkWrite`` (the guarded head update first, then history,
transcript, consent and inbox writes) and ``commitTransaction``. The transaction needs a replica set
(one node is enough; SecantusDB reports one): :meth:`MongoStore.open` refuses a standalone server.
``docs/architecture.md`` has the measurements behind this choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from bson.codec_options import CodecOptions
from pymongo import InsertOne, ReturnDocument, UpdateMany, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    ClientBulkWriteException,
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    InvalidURI,
    OperationFailure,
    PyMongoError,
)
from pymongo.operations import IndexModel

from bot.core.consent import ConsentEventDraft, ConsentRecord, chain
from bot.core.conversation import Conversation, Step, Timer
from bot.core.messages import (
    STATUS_RANK,
    Category,
    DeliveryStatus,
    ErrorInfo,
    Inbound,
    Outbound,
    PreferenceUpdate,
    StatusUpdate,
)
from bot.core.proof import notice_to_doc
from bot.core.rendering import NoticeText
from bot.errors import ConfigError, NotFound, StaleVersion, StoreError, StoreUnavailable
from bot.store import indexes as ix
from bot.store.base import (
    IN_DOUBT,
    ConsentLedger,
    ConversationQuery,
    Conversations,
    Inbox,
    InboxEntry,
    InboxKind,
    Lease,
    OutState,
    SendOutcome,
    StepLog,
    StepRecord,
    Store,
    Transcript,
    TranscriptEntry,
    millis,
    stored,
)
from bot.store.privacy import require_intact

Doc = dict[str, Any]
Write = tuple[str, Callable[..., Any], tuple[Doc, ...]]
"""(collection, write model class, its positional arguments): built per mode, with or without a namespace."""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CLIENT_BULK_WIRE_VERSION = 25  # MongoDB 8.0: the client-level ``bulkWrite`` command
CHAIN_ATTEMPTS = 20
CLAIM_ROUNDS = 3
TRANSACTION_ATTEMPTS = 4
WRITE_CONFLICT = 112
ACQUIRE_MAX_MS = 2000  # a lease write blocked longer than this is behind an abandoned transaction
DUPLICATE_KEY = 11000


@contextlib.contextmanager
def translated(operation: str) -> Iterator[None]:
    """Driver errors become store errors: unreachable -> StoreUnavailable, the rest -> StoreError."""
    try:
        yield
    except ConnectionFailure as exc:
        raise StoreUnavailable(f"{operation}: database unreachable ({type(exc).__name__})") from exc
    except ClientBulkWriteException as exc:
        if isinstance(exc.error, ConnectionFailure):
            raise StoreUnavailable(f"{operation}: database unreachable ({type(exc.error).__name__})") from exc
        raise StoreError(f"{operation}: {_first_error(exc)}") from exc
    except PyMongoError as exc:
        raise StoreError(f"{operation}: {type(exc).__name__}: {exc}"[:500]) from exc


def _first_error(exc: ClientBulkWriteException) -> str:
    errors: list[Doc] = exc.details.get("writeErrors") or []
    if errors:
        return f"write error {errors[0].get('code')}: {errors[0].get('errmsg', '')}"[:300]
    return f"{type(exc.error).__name__}" if exc.error is not None else "bulk write failed"


async def _to_list(cursor: Any) -> list[Doc]:
    """Documents of a cursor, from either driver (PyMongo's ``aggregate`` is a coroutine, Motor's not)."""
    if inspect.isawaitable(cursor):
        cursor = await cursor
    docs: list[Doc] = await cursor.to_list(None)
    return docs


# --- document forms ------------------------------------------------------------------------------
def notice_doc(notice: NoticeText) -> Doc:
    """A notice's stored form, ``_id = "<sha256>:<locale>:<version>"``; one whose ``sha256`` is not
    the hash of its text raises :class:`bot.store.privacy.InvalidRecord`."""
    require_intact(notice)
    return {"_id": f"{notice.sha256}:{notice.locale}:{notice.version}", **notice_to_doc(notice)}


_UPSERT = functools.partial(UpdateOne, upsert=True)


def _head_doc(conversation: Conversation) -> Doc:
    doc = conversation.to_doc()
    doc["_terms"] = ix.search_terms(conversation)
    doc["_purposes"] = ix.purpose_terms(conversation)
    doc["_ids"] = ix.subject_ids(conversation)
    return doc


def _conversation(doc: Doc | None) -> Conversation | None:
    """The committed head in ``doc``; None for a lease-only placeholder (version 0)."""
    if doc is None or doc.get("version", 0) < 1:
        return None
    return Conversation.from_doc(doc)


def _entry_doc(entry: TranscriptEntry, pos: int) -> Doc:
    doc: Doc = {
        "key": entry.key,
        "subject": entry.subject,
        "dir": entry.direction,
        "seq": entry.seq,
        "at": entry.at,
        "pos": pos,
        "sent_by": entry.sent_by,
        "attempts": entry.attempts,
        "reason": entry.reason,
        "statuses": [],
    }
    if entry.inbound is not None:
        doc["inbound"] = entry.inbound.to_doc()
    if entry.outbound is not None:
        doc["outbound"] = entry.outbound.to_doc()
        doc["category"] = str(entry.outbound.category)
    if entry.out_state is not None:
        doc["state"] = str(entry.out_state)
    return doc


def _error_doc(error: ErrorInfo | None) -> Doc | None:
    if error is None:
        return None
    return {"code": error.code, "title": error.title, "message": error.message, "details": error.details,
            "href": error.href}


def _entry(doc: Doc) -> TranscriptEntry:
    error = doc.get("error")
    return TranscriptEntry(
        id=doc["_id"],
        key=doc["key"],
        subject=doc["subject"],
        direction=doc["dir"],
        seq=doc["seq"],
        at=doc["at"],
        inbound=Inbound.from_doc(doc["inbound"]) if doc.get("inbound") else None,
        outbound=Outbound.from_doc(doc["outbound"]) if doc.get("outbound") else None,
        out_state=OutState(doc["state"]) if doc.get("state") else None,
        wamid=doc.get("wamid", ""),
        delivery=DeliveryStatus(doc["delivery"]) if doc.get("delivery") else None,
        delivery_at=doc.get("delivery_at"),
        reason=doc.get("reason", ""),
        error=ErrorInfo(**error) if error else None,
        attempts=doc.get("attempts", 0),
        next_attempt_at=doc.get("next_at"),
        sent_by=doc.get("sent_by", ""),
        statuses=tuple((s["status"], s["at"]) for s in doc.get("statuses", ())),
    )


_EVENT_TYPES: dict[InboxKind, type[Inbound] | type[StatusUpdate] | type[PreferenceUpdate]] = {
    InboxKind.MESSAGE: Inbound,
    InboxKind.STATUS: StatusUpdate,
    InboxKind.PREFERENCE: PreferenceUpdate,
}


def _inbox_entry(doc: Doc) -> InboxEntry:
    kind = InboxKind(doc["kind"])
    return InboxEntry(
        id=doc["_id"],
        conversation_key=doc["key"],
        kind=kind,
        timestamp=doc["ts"],
        received_at=doc["received_at"],
        event=_EVENT_TYPES[kind].from_doc(doc["doc"]),
        attempts=doc.get("attempts", 0),
    )


def _conversation_filter(query: ConversationQuery) -> Doc:
    """The filter for a console query. ``updated_at`` is always bounded so that each single-field
    filter is served by its (field, updated_at) index, and lease-only placeholders never match."""
    updated: Doc = {"$gt": query.updated_after} if query.updated_after else {"$gte": EPOCH}
    if query.updated_before:
        updated["$lt"] = query.updated_before
    f: Doc = {"updated_at": updated}
    if query.text:
        low, high = ix.prefix_range(query.text.lower())
        f["_terms"] = {"$elemMatch": {"$gte": low, "$lt": high}}  # one element in range, not any two
    for field in ("phone_number_id", "state", "flow_id"):
        if getattr(query, field):
            f[field] = getattr(query, field)
    if term := ix.purpose_term(query):
        f["_purposes"] = term
    if query.needs_person is not None:
        f["needs_person"] = query.needs_person
    if query.paused is not None:
        f["paused"] = query.paused
    return f


# --- the shared context --------------------------------------------------------------------------
class _Db:
    """The database handle and the few driver facts every port needs."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name
        self.db = client.get_database(name, codec_options=CodecOptions(tz_aware=True, tzinfo=UTC))
        self.client_bulk = False  # set by MongoStore.open from the server's wire version

    def __getitem__(self, collection: str) -> Any:
        return self.db[collection]

    def ns(self, collection: str) -> str:
        return f"{self.name}.{collection}"


# --- ports ---------------------------------------------------------------------------------------
class MongoInbox(Inbox):
    def __init__(self, db: _Db) -> None:
        self._c = db[ix.INBOX]

    async def put(self, entries: Sequence[InboxEntry]) -> int:
        if not entries:
            return 0
        docs = [
            {
                "_id": e.id, "key": e.conversation_key, "kind": str(e.kind), "ts": e.timestamp,
                "order": ObjectId(), "received_at": e.received_at, "doc": e.event.to_doc(), "attempts": e.attempts,
                "done": False,
            }
            for e in entries
        ]
        with translated("inbox.put"):
            try:
                result = await self._c.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                if any(err.get("code") != DUPLICATE_KEY for err in exc.details.get("writeErrors", ())):
                    raise
                return int(exc.details.get("nInserted", 0))
            return len(result.inserted_ids)

    async def pending(self, conversation_key: str, limit: int = 100) -> list[InboxEntry]:
        with translated("inbox.pending"):
            cursor = self._c.find({"key": conversation_key, "done": False}).sort([("ts", 1), ("order", 1)])
            return [_inbox_entry(d) for d in await _to_list(cursor.limit(limit))]

    async def pending_keys(self, limit: int = 100, not_after: datetime | None = None) -> list[str]:
        match: Doc = {"done": False}
        if not_after is not None:
            match["received_at"] = {"$lte": not_after}
        pipeline: list[Doc] = [
            {"$match": match},
            {"$sort": {"received_at": 1, "order": 1}},
            {"$group": {"_id": "$key", "at": {"$first": "$received_at"}, "order": {"$first": "$order"}}},
            {"$sort": {"at": 1, "order": 1, "_id": 1}},
            {"$limit": limit},
        ]
        with translated("inbox.pending_keys"):
            return [d["_id"] for d in await _to_list(self._c.aggregate(pipeline))]

    async def mark_done(self, ids: Sequence[str], now: datetime) -> None:
        if not ids:
            return
        with translated("inbox.mark_done"):
            await self._c.update_many(
                {"_id": {"$in": list(ids)}, "done": False}, {"$set": {"done": True, "done_at": now}}
            )

    async def bump_attempts(self, entry_id: str) -> int:
        with translated("inbox.bump_attempts"):
            doc = await self._c.find_one_and_update(
                {"_id": entry_id, "doc": {"$exists": True}}, {"$inc": {"attempts": 1}}, projection={"attempts": 1},
                return_document=ReturnDocument.AFTER,
            )
        if doc is None:
            raise NotFound(f"inbox entry {entry_id!r} does not exist")
        return int(doc["attempts"])

    async def count_pending(self) -> int:
        with translated("inbox.count_pending"):
            return int(await self._c.count_documents({"done": False}))

    async def erase_conversation(self, conversation_key: str, now: datetime) -> int:
        return await self._erase({"key": conversation_key}, "inbox.erase_conversation", now)

    async def erase_statuses(self, subjects: Sequence[str], now: datetime) -> int:
        """Reads every status entry's recipient: no index serves it (erasure is rare, and retention keeps
        the inbox to a few days of traffic)."""
        if not subjects:
            return 0
        names = list(subjects)
        match = {
            "kind": str(InboxKind.STATUS),
            "$or": [{"doc.subject": {"$in": names}}, {"doc.recipient": {"$in": names}}],
        }
        return await self._erase(match, "inbox.erase_statuses", now)

    async def _erase(self, match: Doc, what: str, now: datetime) -> int:
        with translated(what):
            result = await self._c.update_many(
                {**match, "doc": {"$exists": True}},
                {"$set": {"key": "", "done": True, "done_at": now}, "$unset": {"doc": ""}},
            )
        return int(result.modified_count)


class MongoConversations(Conversations):
    def __init__(self, db: _Db) -> None:
        self._db = db
        self._c = db[ix.CONVERSATIONS]

    async def acquire(self, key: str, owner: str, now: datetime, lease_seconds: float) -> Lease:
        """Takes the lease in one findAndModify. A process that died inside a commit leaves its
        transaction open (and the head write-locked) until the server's transaction lifetime ends it
        (``transactionLifetimeLimitSeconds``, 60 s by default): the lease write then gives up after
        :data:`ACQUIRE_MAX_MS` and answers "not acquired", so workers never hang on it. A server that
        drops expired transactions only when its transaction table is used (SecantusDB) is nudged with
        an empty transaction, so the conversation continues once the lifetime has passed."""
        free = {"$or": [{"lease": None}, {"lease.until": {"$lte": now}}, {"lease.owner": owner}]}
        lease = {"owner": owner, "until": now + timedelta(seconds=lease_seconds)}
        with translated("conversations.acquire"):
            try:
                doc = await self._c.find_one_and_update(
                    {"_id": key, **free},
                    {"$set": {"lease": lease}, "$setOnInsert": {"version": 0}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                    maxTimeMS=ACQUIRE_MAX_MS,
                )
            except DuplicateKeyError:
                return Lease(acquired=False, conversation=None)  # the head exists and is leased
            except (ExecutionTimeout, OperationFailure) as exc:
                if not isinstance(exc, ExecutionTimeout) and exc.code != WRITE_CONFLICT:
                    raise
                await self._nudge_transactions()
                return Lease(acquired=False, conversation=None)  # an abandoned commit still holds the head
        return Lease(acquired=True, conversation=_conversation(doc))

    async def _nudge_transactions(self) -> None:
        session = await _maybe_await(self._db.client.start_session())
        try:
            await _maybe_await(session.start_transaction())
            await self._c.find_one({"_id": "\x00nudge"}, session=session)
            await session.commit_transaction()
        except PyMongoError:
            pass
        finally:
            await _maybe_await(session.end_session())

    async def release(self, key: str, owner: str) -> None:
        with translated("conversations.release"):
            doc = await self._c.find_one_and_update(
                {"_id": key, "lease.owner": owner}, {"$unset": {"lease": ""}}, projection={"version": 1}
            )
            if doc is not None and doc.get("version", 0) == 0:
                # First contact that never committed: drop the placeholder unless someone leased it since.
                await self._c.delete_one({"_id": key, "version": 0, "lease": None})

    async def get(self, key: str) -> Conversation | None:
        with translated("conversations.get"):
            return _conversation(await self._c.find_one({"_id": key}))

    async def find(self, query: ConversationQuery, skip: int = 0, limit: int = 50) -> list[Conversation]:
        with translated("conversations.find"):
            cursor = self._c.find(_conversation_filter(query)).sort([("updated_at", -1), ("_id", -1)])
            docs = await _to_list(cursor.skip(skip).limit(limit))
        return [c for c in map(_conversation, docs) if c is not None]

    async def count(self, query: ConversationQuery) -> int:
        with translated("conversations.count"):
            return int(await self._c.count_documents(_conversation_filter(query)))

    async def by_subject(self, subject: str) -> list[Conversation]:
        with translated("conversations.by_subject"):
            docs = await _to_list(self._c.find({"_ids": subject}))
        return sorted((c for c in map(_conversation, docs) if c is not None), key=lambda c: c.key)

    async def count_by_state(self, flow_id: str) -> dict[tuple[str, str], int]:
        pipeline: list[Doc] = [
            {"$match": {"flow_id": flow_id}},
            {"$group": {"_id": {"v": "$flow_version", "s": "$state"}, "n": {"$sum": 1}}},
        ]
        with translated("conversations.count_by_state"):
            docs = await _to_list(self._c.aggregate(pipeline))
        return {(d["_id"]["v"], d["_id"]["s"]): int(d["n"]) for d in docs}

    async def due_timers(self, now: datetime, limit: int = 100) -> list[tuple[str, Timer]]:
        # Sorting on a multikey field orders by each document's earliest timer, so the first ``limit``
        # conversations hold the first ``limit`` due timers.
        with translated("conversations.due_timers"):
            cursor = self._c.find({"timers.due": {"$lte": now}}, projection={"timers": 1})
            docs = await _to_list(cursor.sort("timers.due", 1).limit(limit))
        due = [
            (d["_id"], Timer(t["name"], t["due"])) for d in docs for t in d.get("timers", ()) if t["due"] <= now
        ]
        due.sort(key=lambda kt: (kt[1].due, kt[0]))
        return due[:limit]

    async def delete(self, key: str) -> None:
        with translated("conversations.delete"):
            await self._c.delete_one({"_id": key})


class MongoStepLog(StepLog):
    def __init__(self, db: _Db, ledger: MongoLedger) -> None:
        self._db = db
        self._steps = db[ix.STEPS]
        self._ledger = ledger

    async def commit(
        self, step: Step, owner: str, lease_seconds: float = 30.0, release: bool = True
    ) -> list[str]:
        """Commit ``step`` (see :meth:`StepLog.commit`) as one multi-document transaction.

        Two round trips: one ordered client-level ``bulkWrite`` inside the transaction — the head
        update guarded by ``version == seq - 1`` and ``lease.owner == owner`` (which also releases
        or extends the lease), the history record, the transcript entries, the inbox entries marked
        done, the notice texts (an upsert that only inserts) and the consent records — then
        ``commitTransaction``. When the guard matches nothing
        the transaction is aborted and :class:`StaleVersion` raised; a write conflict with another
        transaction is retried a few times (the retry then meets the guard if the head moved).
        Consent events (rare) add one chain-head read per subject inside the transaction.

        A crash or lost connection before the commit leaves nothing (the inbox entry stays pending
        and is processed again); after it, everything. An unknown commit outcome raises
        :class:`StoreUnavailable`: the caller reloads the head, whose ``consumed`` list tells whether
        the step landed, so nothing is applied twice. The inbox entries are marked done in the same
        transaction, so they never lag here.
        """
        conv = step.conversation
        if conv.version != step.seq:
            raise ValueError(f"step.conversation.version: {conv.version} is not step.seq {step.seq}")
        notices = [notice_doc(n) for n in step.notices]  # a broken notice refuses the step before any write
        until = step.at + timedelta(seconds=lease_seconds)
        entries = self.entries(step)
        docs = [{"_id": e.id, **_entry_doc(e, pos)} for pos, e in enumerate(entries)]
        for doc in docs:
            if doc["dir"] == "out":
                doc |= {"lease": {"owner": owner, "until": until}, "queue_at": until}
        head: Doc = {"$set": _head_doc(conv)}
        if release:
            head["$unset"] = {"lease": ""}
        else:
            head["$set"]["lease"] = {"owner": owner, "until": until}
        writes: list[Write] = [
            (ix.CONVERSATIONS, UpdateOne, ({"_id": conv.key, "version": step.seq - 1, "lease.owner": owner}, head)),
            (ix.STEPS, InsertOne, ({"_id": step.id, **StepRecord.of(step).to_doc()},)),
            *((ix.TRANSCRIPT, InsertOne, (doc,)) for doc in docs),
        ]
        if step.inbox_ids:
            done = {"$set": {"done": True, "done_at": step.at}}
            writes.append((ix.INBOX, UpdateMany, ({"_id": {"$in": list(step.inbox_ids)}, "done": False}, done)))
        writes += [(ix.NOTICES, _UPSERT, ({"_id": d.pop("_id")}, {"$setOnInsert": d})) for d in notices]
        consent = [(f"{step.id}/consent/{i}", d) for i, d in enumerate(step.consent)]
        with translated("steps.commit"):
            for attempt in range(TRANSACTION_ATTEMPTS):
                try:
                    await self._transaction(conv.key, writes, consent)
                    break
                except _Retry:
                    if attempt == TRANSACTION_ATTEMPTS - 1:
                        raise StaleVersion(f"conversation {conv.key!r}: kept conflicting with other writers") from None
                    await asyncio.sleep(0.005 * (attempt + 1))
        return [e.id for e in entries if e.direction == "out"]

    async def _transaction(
        self, key: str, writes: list[Write], consent: list[tuple[str, ConsentEventDraft]]
    ) -> None:
        session = await _maybe_await(self._db.client.start_session())
        try:
            await _maybe_await(session.start_transaction())
            chained = await self._ledger.chained(consent, session)
            ops = writes + [(ix.CONSENT, InsertOne, (doc,)) for doc in chained]
            try:
                matched = await self._write(ops, session)
            except (ClientBulkWriteException, BulkWriteError, OperationFailure) as exc:
                await _maybe_await(session.abort_transaction())
                if _conflict(exc):
                    raise _Retry from exc
                if _head_missed(exc):
                    matched = 0
                else:
                    raise
            if not matched:
                with contextlib.suppress(PyMongoError):
                    await _maybe_await(session.abort_transaction())
                raise StaleVersion(f"conversation {key!r}: not at the expected version, or lease not held")
            try:
                await session.commit_transaction()
            except OperationFailure as exc:
                if _conflict(exc):
                    raise _Retry from exc
                raise
        finally:
            await _maybe_await(session.end_session())

    async def _write(self, ops: list[Write], session: Any) -> int:
        """Run ``ops`` in order inside ``session``'s transaction; returns how many heads matched."""
        if self._db.client_bulk:
            models = [model(*args, namespace=self._db.ns(c)) for c, model, args in ops]
            result = await self._db.client.bulk_write(models, session=session, ordered=True, verbose_results=True)
            return int(result.update_results[0].matched_count)
        # Servers before MongoDB 8.0: one command per collection, in the same order.
        matched = 0
        for position, (collection, group) in enumerate(itertools.groupby(ops, key=lambda op: op[0])):
            batch = [model(*args) for _, model, args in group]
            result = await self._db[collection].bulk_write(batch, ordered=True, session=session)
            if position == 0:
                matched = int(result.matched_count)
                if not matched:
                    break
        return matched

    async def history(self, key: str, after_seq: int = 0, limit: int = 200) -> list[StepRecord]:
        with translated("steps.history"):
            cursor = self._steps.find({"key": key, "seq": {"$gt": after_seq}}).sort("seq", 1)
            return [StepRecord.from_doc(d) for d in await _to_list(cursor.limit(limit))]

    async def delete(self, key: str) -> int:
        with translated("steps.delete"):
            return int((await self._steps.delete_many({"key": key})).deleted_count)


class _Retry(Exception):
    """The transaction met a write conflict (or a consent chain moved): run it again."""


def _codes(exc: PyMongoError) -> list[int]:
    """Error codes of a failed (bulk) write: the command's and every write error's."""
    codes: list[int] = []
    details: Any = getattr(exc, "details", None) or {}
    if isinstance(exc, ClientBulkWriteException) and isinstance(exc.error, OperationFailure):
        codes.append(int(exc.error.code or 0))
    if isinstance(exc, OperationFailure) and exc.code is not None:
        codes.append(int(exc.code))
    codes += [int(e.get("code", 0)) for e in (details.get("writeErrors") or [])]
    return codes


def _conflict(exc: PyMongoError) -> bool:
    """A write conflict between transactions, or another append taking a consent seq first."""
    inner = exc.error if isinstance(exc, ClientBulkWriteException) else None
    if isinstance(inner, PyMongoError) and inner.has_error_label("TransientTransactionError"):
        return True
    if exc.has_error_label("TransientTransactionError"):
        return True
    codes = _codes(exc)
    if WRITE_CONFLICT in codes:
        return True
    errors: list[Doc] = (getattr(exc, "details", None) or {}).get("writeErrors") or []
    return any(e.get("code") == DUPLICATE_KEY and "subject" in (e.get("keyPattern") or {}) for e in errors)


def _head_missed(exc: PyMongoError) -> bool:
    """A duplicate step or transcript id: someone committed this seq first (the head guard missed)."""
    return DUPLICATE_KEY in _codes(exc)


async def _maybe_await(value: Any) -> Any:
    """Session calls are coroutines in PyMongo's async API and plain calls in Motor (or vice versa)."""
    return await value if inspect.isawaitable(value) else value


class MongoTranscript(Transcript):
    def __init__(self, db: _Db) -> None:
        self._c = db[ix.TRANSCRIPT]

    async def add_outbound(
        self, key: str, subject: str, message: Outbound, at: datetime, sent_by: str, entry_id: str
    ) -> bool:
        entry = TranscriptEntry(
            id=entry_id, key=key, subject=subject, direction="out", seq=0, at=at, outbound=message,
            out_state=OutState.PENDING, sent_by=sent_by,
        )
        doc = {"_id": entry_id, **_entry_doc(entry, 0), "queue_at": at}
        with translated("transcript.add_outbound"):
            try:
                await self._c.insert_one(doc)
            except DuplicateKeyError:
                return False
        return True

    async def claim(
        self, owner: str, now: datetime, lease_seconds: float, limit: int = 50, entry_ids: Sequence[str] = ()
    ) -> list[TranscriptEntry]:
        """Three round trips: find candidates, claim them with one guarded ``update_many``, read back
        what this call got. Each document's update re-checks ``queue_at <= now`` atomically, and a
        claim moves ``queue_at`` past ``now``, so no entry is ever held by two owners. Candidates a
        concurrent claimer took first are replaced by the next ones (a few rounds at most)."""
        now = millis(now)
        until = now + timedelta(seconds=lease_seconds)
        token = uuid.uuid4().hex
        claimed: list[TranscriptEntry] = []
        with translated("transcript.claim"):
            for _ in range(CLAIM_ROUNDS):
                found = await self._candidates(now, limit - len(claimed), entry_ids)
                if not found:
                    break
                ids = [i for i, _ in found]
                lease = {"state": str(OutState.SENDING), "queue_at": until,
                         "lease": {"owner": owner, "until": until, "token": token}}
                sending = str(OutState.SENDING)
                modified = 0
                if any(state == sending for _, state in found):
                    # An expired SENDING lease: its holder stopped mid-attempt (Transcript.claim).
                    doubt = await self._c.update_many(
                        {"_id": {"$in": ids}, "queue_at": {"$lte": now}, "state": sending},
                        {"$set": {**lease, "reason": IN_DOUBT}},
                    )
                    modified += doubt.modified_count
                if any(state != sending for _, state in found):
                    rest = await self._c.update_many(
                        {"_id": {"$in": ids}, "queue_at": {"$lte": now}, "state": {"$ne": sending}}, {"$set": lease}
                    )
                    modified += rest.modified_count
                if modified:
                    got = await _to_list(self._c.find({"_id": {"$in": ids}, "lease.token": token}))
                    by_id = {d["_id"]: d for d in got}
                    claimed += [_entry(by_id[i]) for i in ids if i in by_id]
                if modified == len(ids) or len(claimed) >= limit:
                    break
        return claimed

    async def _candidates(self, now: datetime, limit: int, entry_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(id, state) of entries due by ``now``, earliest due first."""
        if not entry_ids:
            cursor = self._c.find({"queue_at": {"$lte": now}}, projection={"_id": 1, "state": 1})
            cursor = cursor.sort([("queue_at", 1), ("at", 1), ("pos", 1)]).limit(limit)
            return [(d["_id"], str(d.get("state", ""))) for d in await _to_list(cursor)]
        fields = {"queue_at": 1, "at": 1, "pos": 1, "state": 1}
        found = await _to_list(self._c.find({"_id": {"$in": list(entry_ids)}}, projection=fields))
        found = [d for d in found if d.get("queue_at") is not None and d["queue_at"] <= now]
        found.sort(key=lambda d: (d["queue_at"], d["at"], d["pos"]))
        return [(d["_id"], str(d.get("state", ""))) for d in found[:limit]]

    async def settle(self, entry_id: str, owner: str, outcome: SendOutcome, now: datetime) -> bool:
        state = outcome.state
        if state is OutState.SENDING:
            raise ValueError("outcome.state: a send attempt cannot end in sending")
        set_: Doc = {"state": str(state), "reason": outcome.reason, "error": _error_doc(outcome.error)}
        unset: Doc = {"lease": ""}
        if state is OutState.ACCEPTED:
            set_ |= {"wamid": outcome.wamid, "delivery": str(DeliveryStatus.ACCEPTED), "delivery_at": now,
                     "delivery_rank": STATUS_RANK[DeliveryStatus.ACCEPTED], "accepted_at": now}
            unset |= {"queue_at": "", "next_at": ""}
        elif state is OutState.PENDING:
            set_ |= {"queue_at": outcome.retry_at or now, "next_at": outcome.retry_at}
        else:
            unset |= {"queue_at": "", "next_at": ""}
        with translated("transcript.settle"):
            result = await self._c.update_one(
                {"_id": entry_id, "state": str(OutState.SENDING), "lease.owner": owner},
                {"$set": set_, "$unset": unset, "$inc": {"attempts": 1}},
            )
        return bool(result.matched_count)

    async def adopt(self, entry_id: str, wamid: str, now: datetime) -> bool:
        accepted = {"state": str(OutState.ACCEPTED), "wamid": wamid, "delivery": str(DeliveryStatus.ACCEPTED),
                    "delivery_at": now, "delivery_rank": STATUS_RANK[DeliveryStatus.ACCEPTED], "accepted_at": now}
        with translated("transcript.adopt"):
            result = await self._c.update_one(
                {"_id": entry_id, "dir": "out", "state": {"$in": [str(OutState.PENDING), str(OutState.SENDING)]},
                 "wamid": {"$in": [None, ""]}},
                {"$set": accepted, "$unset": {"lease": "", "queue_at": "", "next_at": ""}},
            )
        return bool(result.modified_count)

    async def apply_status(self, update: StatusUpdate, at: datetime) -> TranscriptEntry | None:
        rank = STATUS_RANK[update.status]
        push = {"$push": {"statuses": {"status": str(update.status), "at": at}}}
        set_: Doc = {"delivery": str(update.status), "delivery_rank": rank, "delivery_at": at}
        if update.status is DeliveryStatus.FAILED and update.errors:
            set_["error"] = _error_doc(update.errors[0])
        with translated("transcript.apply_status"):
            doc = await self._c.find_one_and_update(
                {"wamid": update.message_id, "delivery_rank": {"$lt": rank}}, {"$set": set_, **push},
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:  # not an upgrade (or unknown wamid): only record the arrival
                doc = await self._c.find_one_and_update(
                    {"wamid": update.message_id}, push, return_document=ReturnDocument.AFTER
                )
        return None if doc is None else _entry(doc)

    async def by_wamid(self, wamid: str) -> TranscriptEntry | None:
        with translated("transcript.by_wamid"):
            doc = await self._c.find_one({"wamid": wamid})
        return None if doc is None else _entry(doc)

    async def for_conversation(
        self, key: str, after: datetime | None = None, limit: int = 500
    ) -> list[TranscriptEntry]:
        f: Doc = {"key": key} if after is None else {"key": key, "at": {"$gt": after}}
        with translated("transcript.for_conversation"):
            cursor = self._c.find(f).sort([("at", 1), ("pos", 1)]).limit(limit)
            return [_entry(d) for d in await _to_list(cursor)]

    async def count_sent_since(self, subject: str, category: Category, since: datetime) -> int:
        with translated("transcript.count_sent_since"):
            return int(await self._c.count_documents(
                {"subject": subject, "category": str(category), "accepted_at": {"$gte": since}}
            ))

    async def delete(self, key: str) -> int:
        with translated("transcript.delete"):
            return int((await self._c.delete_many({"key": key})).deleted_count)


class MongoLedger(ConsentLedger):
    def __init__(self, db: _Db) -> None:
        self._c = db[ix.CONSENT]

    async def append(self, events: Sequence[Any]) -> list[ConsentRecord]:
        """Chain after each subject's head and insert in order. Another append that takes a seq first
        makes the insert collide on (subject, seq): what was inserted stays, the rest is chained again
        after the new head."""
        todo: list[tuple[str, ConsentEventDraft]] = [(uuid.uuid4().hex, e) for e in events]
        done: list[ConsentRecord] = []
        with translated("ledger.append"):
            for _ in range(CHAIN_ATTEMPTS):
                if not todo:
                    break
                docs = await self.chained(todo)
                try:
                    await self._c.insert_many(docs, ordered=True)
                    inserted = len(docs)
                except BulkWriteError as exc:
                    if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", ())):
                        raise
                    inserted = int(exc.details.get("nInserted", 0))
                done += [ConsentRecord.from_doc(d) for d in docs[:inserted]]
                todo = todo[inserted:]
        if todo:
            raise StoreUnavailable("ledger.append: a consent chain kept moving under concurrent appends; try again")
        return done

    async def chained(self, drafts: Sequence[tuple[str, ConsentEventDraft]], session: Any = None) -> list[Doc]:
        """Documents for ``(id, draft)`` pairs chained after each subject's current head (read in
        ``session``). Times are cut to milliseconds first, so a hash survives the round trip."""
        heads: dict[str, ConsentRecord | None] = {}
        docs: list[Doc] = []
        for entry_id, original in drafts:
            draft = ConsentEventDraft.from_doc(stored(original.to_doc()))
            if draft.subject not in heads:
                head = await self._c.find_one({"subject": draft.subject}, sort=[("seq", -1)], session=session)
                heads[draft.subject] = None if head is None else ConsentRecord.from_doc(head)
            record = chain(heads[draft.subject], draft)
            heads[draft.subject] = record
            docs.append({"_id": entry_id, "subject": draft.subject, **record.to_doc()})
        return docs

    async def history(self, subject: str) -> list[ConsentRecord]:
        with translated("ledger.history"):
            docs = await _to_list(self._c.find({"subject": subject}).sort("seq", 1))
        return [ConsentRecord.from_doc(d) for d in docs]

    async def subjects(self) -> list[str]:
        pipeline: list[Doc] = [{"$sort": {"subject": 1}}, {"$group": {"_id": "$subject"}}, {"$sort": {"_id": 1}}]
        with translated("ledger.subjects"):
            return [d["_id"] for d in await _to_list(self._c.aggregate(pipeline))]

    async def delete(self, subject: str) -> int:
        with translated("ledger.delete"):
            result = await self._c.delete_many({"subject": subject})
        return int(result.deleted_count)


class MongoStore(Store):
    """Every port on one MongoDB database.

    ``client`` is a ``pymongo.AsyncMongoClient`` or a Motor ``AsyncIOMotorClient``; the store does not
    close a client it was given. :meth:`open` creates every index (idempotent) and must run first.
    """

    def __init__(self, client: Any, database_name: str, *, owns_client: bool = False) -> None:
        self._db = _Db(client, database_name)
        self._owns_client = owns_client
        self.inbox = MongoInbox(self._db)
        self.ledger = MongoLedger(self._db)
        self.steps = MongoStepLog(self._db, self.ledger)
        self.conversations = MongoConversations(self._db)
        self.transcript = MongoTranscript(self._db)

    @classmethod
    def from_uri(cls, uri: str, database: str | None = None, **client_kwargs: Any) -> MongoStore:
        """A store with its own ``AsyncMongoClient`` (``tz_aware=True``; other keyword arguments go to
        the client). ``database`` defaults to the URI's path, else ``consentbot``. The client is
        closed by :meth:`close`."""
        from pymongo import AsyncMongoClient, uri_parser

        try:
            name = database or uri_parser.parse_uri(uri)["database"] or "consentbot"
            client = AsyncMongoClient(uri, **{**client_kwargs, "tz_aware": True})
        except (InvalidURI, ConfigurationError, ValueError) as exc:
            raise ConfigError("MONGODB_URI", f"not a valid MongoDB URI ({type(exc).__name__})") from None
        return cls(client, name, owns_client=True)

    @property
    def database(self) -> Any:
        """The driver's database handle (for retention indexes and other adapters on this database)."""
        return self._db.db

    @property
    def database_name(self) -> str:
        return self._db.name

    async def open(self) -> None:
        with translated("store.open"):
            hello = await self._db.db.command("hello")
            if not hello.get("setName") and hello.get("msg") != "isdbgrid":
                raise ConfigError(
                    "MONGODB_URI",
                    "the server is a standalone mongod; a step commits in a transaction, which needs a replica "
                    "set (one node is enough: start mongod with --replSet rs0 and run rs.initiate())",
                )
            self._db.client_bulk = (
                int(hello.get("maxWireVersion", 0)) >= CLIENT_BULK_WIRE_VERSION
                and hasattr(self._db.client, "bulk_write")
            )
            for collection, specs in ix.INDEXES.items():
                models = [IndexModel(keys, name=name, **options) for name, keys, options in specs]
                await self._db[collection].create_indexes(models)

    async def close(self) -> None:
        if self._owns_client:
            closing = self._db.client.close()
            if inspect.isawaitable(closing):
                await closing

    async def ping(self) -> bool:
        try:
            await self._db.db.command("ping")
        except PyMongoError:
            return False
        return True

