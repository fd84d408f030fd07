"""MongoDB adapter of every storage port, on PyMongo's async API (``AsyncMongoClient``).

``MongoStore(client, database_name)`` takes an ``AsyncMongoClient`` or a Motor ``AsyncIOMotorClient``
the application already holds (only calls both drivers share are used; results are read with
UTC-aware datetimes whatever the client's own ``tz_aware`` setting). ``MongoStore.from_uri`` builds
its own client and closes it in :meth:`MongoStore.close`.

Collections (see :mod:`bot.store.indexes` for their indexes):

``conversations``   ``_id`` = key. The head (``Conversation.to_doc()``), its ``lease`` (owner, until),
                    derived index keys (``_terms``, ``_purposes``, ``_ids``) and ``_rf``: the
                    roll-forward intents of commits whose other writes are not known to be done.
``steps``           ``_id`` = ``"<key>#<seq>"``; the history record. Unique (``key``, ``seq``).
``transcript``      ``_id`` = transcript id; messages in and out, the outbox (``queue_at`` is set while
                    an entry waits to be (re)claimed) and delivery statuses. Retention runs on ``at``.
``inbox``           ``_id`` = Meta's id; ``done``/``done_at`` once processed (retention on ``done_at``).
``consent_events``  per-subject hash chain; unique (``subject``, ``seq``).

**Committing a step** (:meth:`MongoStepLog.commit`) is two round trips. (1) One guarded update of the
head: version ``seq - 1`` and lease owner in the filter, the new head, and the step's roll-forward
intent pushed onto ``_rf`` — the atomic commit point. (2) One client-level ``bulkWrite`` (ordered)
that upserts the history record and transcript entries with ``$setOnInsert``, marks the inbox
entries done, pulls the intent off ``_rf`` and, last, releases the lease. Every write in (2) is
idempotent, so a crash anywhere loses nothing and duplicates nothing: an intent left on ``_rf`` is
rolled forward by the next :meth:`MongoConversations.acquire` of that conversation or by
:meth:`MongoStepLog.recover`. Consent events (rare) add a chain-head read and an insert.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from bson.codec_options import CodecOptions
from pymongo import ReturnDocument, UpdateMany, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    ClientBulkWriteException,
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
    InvalidURI,
    PyMongoError,
)
from pymongo.operations import IndexModel

from bot.core.consent import ConsentEventDraft, ConsentRecord, chain
from bot.core.conversation import Conversation, Step, Timer
from bot.core.messages import STATUS_RANK, Category, DeliveryStatus, ErrorInfo, Inbound, Outbound, StatusUpdate
from bot.errors import ConfigError, NotFound, StaleVersion, StoreError, StoreUnavailable
from bot.store import indexes as ix
from bot.store.base import (
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
)

Doc = dict[str, Any]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CLIENT_BULK_WIRE_VERSION = 25  # MongoDB 8.0: the client-level ``bulkWrite`` command
CHAIN_ATTEMPTS = 20
CLAIM_ROUNDS = 3
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


def _inbox_entry(doc: Doc) -> InboxEntry:
    return InboxEntry(
        id=doc["_id"],
        conversation_key=doc["key"],
        kind=InboxKind(doc["kind"]),
        timestamp=doc["ts"],
        received_at=doc["received_at"],
        doc=doc["doc"],
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
                "order": ObjectId(), "received_at": e.received_at, "doc": e.doc, "attempts": e.attempts,
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
                {"_id": entry_id}, {"$inc": {"attempts": 1}}, projection={"attempts": 1},
                return_document=ReturnDocument.AFTER,
            )
        if doc is None:
            raise NotFound(f"inbox entry {entry_id!r} does not exist")
        return int(doc["attempts"])

    async def count_pending(self) -> int:
        with translated("inbox.count_pending"):
            return int(await self._c.count_documents({"done": False}))


class MongoConversations(Conversations):
    def __init__(self, db: _Db, steps: MongoStepLog) -> None:
        self._c = db[ix.CONVERSATIONS]
        self._steps = steps

    async def acquire(self, key: str, owner: str, now: datetime, lease_seconds: float) -> Lease:
        free = {"$or": [{"lease": None}, {"lease.until": {"$lte": now}}, {"lease.owner": owner}]}
        lease = {"owner": owner, "until": now + timedelta(seconds=lease_seconds)}
        with translated("conversations.acquire"):
            try:
                doc = await self._c.find_one_and_update(
                    {"_id": key, **free},
                    {"$set": {"lease": lease}, "$setOnInsert": {"version": 0}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                return Lease(acquired=False, conversation=None)  # the head exists and is leased
        if doc.get("_rf"):
            await self._steps.finish(key, doc["_rf"])
        return Lease(acquired=True, conversation=_conversation(doc))

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
        self._heads = db[ix.CONVERSATIONS]
        self._steps = db[ix.STEPS]
        self._transcript = db[ix.TRANSCRIPT]
        self._inbox = db[ix.INBOX]
        self._ledger = ledger

    async def commit(
        self, step: Step, owner: str, lease_seconds: float = 30.0, release: bool = True
    ) -> list[str]:
        """Commit ``step`` (see :meth:`StepLog.commit`) in two round trips.

        1. The commit point: one update of the head, guarded by ``version == seq - 1`` and
           ``lease.owner == owner``, that writes the new head (with ``consumed``, the ids of the inbox
           entries this step used), extends the lease to ``step.at + lease_seconds`` and pushes the
           roll-forward intent (history record, transcript entries, consent drafts, inbox ids) onto
           ``_rf``. No match: :class:`StaleVersion`, nothing written.
        2. The roll-forward: one ordered client ``bulkWrite`` of idempotent writes — history record
           and transcript entries upserted with ``$setOnInsert`` under ids derived from the step,
           inbox entries marked done, the intent pulled, and, last, the lease released (``release``).
           Consent drafts are chained first (chain-head read + insert, ids derived from the step).

        Marking the inbox entries done is part of step 2 but the contract lets it lag: a dispatcher
        already skips pending entries listed in the head's ``consumed``. If step 2 fails the step
        stands (``StoreUnavailable`` is raised) and its intent is finished by the next ``acquire`` of
        the conversation or by :meth:`recover` once ``step.at + lease_seconds`` has passed; the
        outbound entries are then claimable by the outbox when that lease ends.
        """
        conv = step.conversation
        if conv.version != step.seq:
            raise ValueError(f"step.conversation.version: {conv.version} is not step.seq {step.seq}")
        until = step.at + timedelta(seconds=lease_seconds)
        entries = self.entries(step)
        docs = [_entry_doc(e, pos) for pos, e in enumerate(entries)]
        for doc in docs:
            if doc["dir"] == "out":
                doc["lease"] = {"owner": owner, "until": until}
                doc["queue_at"] = until
        intent: Doc = {
            "seq": step.seq,
            "due": until,
            "owner": owner,
            "release": release,
            "record": StepRecord.of(step).to_doc(),
            "entries": [{"_id": e.id, **d} for e, d in zip(entries, docs, strict=True)],
            "consent": [{"_id": f"{step.id}/consent/{i}", "event": d.to_doc()} for i, d in enumerate(step.consent)],
            "inbox": list(step.inbox_ids),
        }
        with translated("steps.commit"):
            result = await self._heads.update_one(
                {"_id": conv.key, "version": step.seq - 1, "lease.owner": owner},
                {"$set": {**_head_doc(conv), "lease": {"owner": owner, "until": until}}, "$push": {"_rf": intent}},
            )
        if result.matched_count == 0:
            raise StaleVersion(
                f"conversation {conv.key!r}: not at version {step.seq - 1} or lease not held by {owner!r}"
            )
        try:
            await self._roll_forward(conv.key, intent, committer=True)
        except StoreError as exc:
            raise StoreUnavailable(
                f"steps.commit: step {step.id} is committed; the rest is rolled forward later ({exc})"
            ) from exc
        return [e.id for e in entries if e.direction == "out"]

    async def finish(self, key: str, intents: Sequence[Doc]) -> int:
        """Roll forward ``intents`` found on the head of ``key`` (oldest first)."""
        for intent in sorted(intents, key=lambda i: i["seq"]):
            await self._roll_forward(key, intent, committer=False)
        return len(intents)

    async def recover(self, now: datetime, limit: int = 100) -> int:
        with translated("steps.recover"):
            cursor = self._heads.find({"_rf.due": {"$lte": now}}, projection={"_rf": 1})
            docs = await _to_list(cursor.limit(limit))
        done = 0
        for doc in docs:
            done += await self.finish(doc["_id"], [i for i in doc["_rf"] if i["due"] <= now])
        return done

    async def _roll_forward(self, key: str, intent: Doc, committer: bool) -> None:
        """Write what ``intent`` records, idempotently, then drop it from the head."""
        if intent["consent"]:
            drafts = [(c["_id"], ConsentEventDraft.from_doc(c["event"])) for c in intent["consent"]]
            await self._ledger.append_identified(drafts, maybe_written=not committer)
        record = intent["record"]
        ops: list[tuple[str, type[UpdateOne] | type[UpdateMany], Doc, Doc, bool]] = [
            (ix.STEPS, UpdateOne, {"_id": f"{key}#{intent['seq']}"}, {"$setOnInsert": record}, True)
        ]
        for entry in intent["entries"]:
            body = {k: v for k, v in entry.items() if k != "_id"}
            ops.append((ix.TRANSCRIPT, UpdateOne, {"_id": entry["_id"]}, {"$setOnInsert": body}, True))
        if intent["inbox"]:
            done = {"$set": {"done": True, "done_at": record["at"]}}
            ops.append((ix.INBOX, UpdateMany, {"_id": {"$in": intent["inbox"]}, "done": False}, done, False))
        ops.append((ix.CONVERSATIONS, UpdateOne, {"_id": key}, {"$pull": {"_rf": {"seq": intent["seq"]}}}, False))
        if committer and intent["release"]:
            lease = {"_id": key, "lease.owner": intent["owner"]}
            ops.append((ix.CONVERSATIONS, UpdateOne, lease, {"$unset": {"lease": ""}}, False))
        with translated("steps.roll_forward"):
            if self._db.client_bulk:
                await self._db.client.bulk_write(
                    [kind(f, u, upsert=up, namespace=self._db.ns(c)) for c, kind, f, u, up in ops], ordered=True
                )
                return
            # Servers before MongoDB 8.0: one command per collection, in the same order.
            for collection, group in itertools.groupby(ops, key=lambda op: op[0]):
                batch = [kind(f, u, upsert=up) for _, kind, f, u, up in group]
                await self._db[collection].bulk_write(batch, ordered=True)

    async def history(self, key: str, after_seq: int = 0, limit: int = 200) -> list[StepRecord]:
        with translated("steps.history"):
            cursor = self._steps.find({"key": key, "seq": {"$gt": after_seq}}).sort("seq", 1)
            return [StepRecord.from_doc(d) for d in await _to_list(cursor.limit(limit))]

    async def delete(self, key: str) -> int:
        with translated("steps.delete"):
            return int((await self._steps.delete_many({"key": key})).deleted_count)


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
                ids = await self._candidates(now, limit - len(claimed), entry_ids)
                if not ids:
                    break
                result = await self._c.update_many(
                    {"_id": {"$in": ids}, "queue_at": {"$lte": now}},
                    {"$set": {"state": str(OutState.SENDING), "queue_at": until,
                              "lease": {"owner": owner, "until": until, "token": token}}},
                )
                if result.modified_count:
                    got = await _to_list(self._c.find({"_id": {"$in": ids}, "lease.token": token}))
                    by_id = {d["_id"]: d for d in got}
                    claimed += [_entry(by_id[i]) for i in ids if i in by_id]
                if result.modified_count == len(ids) or len(claimed) >= limit:
                    break
        return claimed

    async def _candidates(self, now: datetime, limit: int, entry_ids: Sequence[str]) -> list[str]:
        """Ids of entries due by ``now``, earliest due first."""
        if not entry_ids:
            cursor = self._c.find({"queue_at": {"$lte": now}}, projection={"_id": 1})
            cursor = cursor.sort([("queue_at", 1), ("at", 1), ("pos", 1)]).limit(limit)
            return [d["_id"] for d in await _to_list(cursor)]
        fields = {"queue_at": 1, "at": 1, "pos": 1}
        found = await _to_list(self._c.find({"_id": {"$in": list(entry_ids)}}, projection=fields))
        found = [d for d in found if d.get("queue_at") is not None and d["queue_at"] <= now]
        found.sort(key=lambda d: (d["queue_at"], d["at"], d["pos"]))
        return [d["_id"] for d in found[:limit]]

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
        return await self.append_identified([(uuid.uuid4().hex, e) for e in events], maybe_written=False)

    async def append_identified(
        self, drafts: Sequence[tuple[str, ConsentEventDraft]], maybe_written: bool
    ) -> list[ConsentRecord]:
        """Chain and insert drafts under the given ids, in order. Ids already stored are kept as they
        are (``maybe_written``: look for them first; a retry always looks), so a replay appends
        nothing twice. A concurrent append to the same subject makes the insert collide on
        (subject, seq): re-read the chain head and try again."""
        drafts = [(i, ConsentEventDraft.from_doc(_ms_doc(d.to_doc()))) for i, d in drafts]
        done: dict[str, ConsentRecord] = {}
        for subject in dict.fromkeys(d.subject for _, d in drafts):
            mine = [(i, d) for i, d in drafts if d.subject == subject]
            for attempt in range(CHAIN_ATTEMPTS):
                with translated("ledger.append"):
                    if maybe_written or attempt:
                        stored = await _to_list(self._c.find({"_id": {"$in": [i for i, _ in mine]}}))
                        done |= {d["_id"]: ConsentRecord.from_doc(d) for d in stored}
                    todo = [(i, d) for i, d in mine if i not in done]
                    if not todo:
                        break
                    head_doc = await self._c.find_one({"subject": subject}, sort=[("seq", -1)])
                    head = None if head_doc is None else ConsentRecord.from_doc(head_doc)
                    fresh: list[tuple[str, ConsentRecord]] = []
                    for entry_id, draft in todo:
                        head = chain(head, draft)
                        fresh.append((entry_id, head))
                    try:
                        await self._c.insert_many(
                            [{"_id": i, "subject": subject, **r.to_doc()} for i, r in fresh], ordered=True
                        )
                    except BulkWriteError as exc:
                        if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", ())):
                            raise
                        continue
                    done |= dict(fresh)
                    break
            else:
                raise StoreUnavailable(f"ledger.append: the chain of {subject!r} kept moving; try again")
        return [done[i] for i, _ in drafts]

    async def history(self, subject: str) -> list[ConsentRecord]:
        with translated("ledger.history"):
            docs = await _to_list(self._c.find({"subject": subject}).sort("seq", 1))
        return [ConsentRecord.from_doc(d) for d in docs]

    async def subjects(self) -> list[str]:
        with translated("ledger.subjects"):
            return sorted(await self._c.distinct("subject"))


def _ms_doc(value: Any) -> Any:
    """Datetimes inside a document truncated to what MongoDB keeps, so hashes survive a round trip."""
    if isinstance(value, datetime):
        return millis(value)
    if isinstance(value, dict):
        return {k: _ms_doc(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_ms_doc(v) for v in value]
    return value


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
        self.conversations = MongoConversations(self._db, self.steps)
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

