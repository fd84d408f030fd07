"""MongoDB adapter of the campaign ports (PyMongo async API), on the main store's database.

Collections:

``campaigns``             ``_id`` = campaign id; the campaign, its run lease and last progress snapshot.
``campaign_recipients``   ``_id`` = ``"<campaign>:<subject>"``; unique (``c``, ``s``). Fields: ``st`` state,
                          ``seq`` audience order, ``reason``/``detail``, ``owner``/``attempt_at``/
                          ``attempts`` (the lease), ``wamid``, ``delivery`` + ``drank`` (its rank, so a
                          receipt only moves it up), ``error_code``.

Indexes (created by :meth:`MongoBroadcasts.open`, idempotent): recipients (``c``, ``s``) unique — the
exactly-once key, also paging for reports; (``c``, ``st``, ``seq``) — leasing pending ones in audience
order and counting by state; (``c``, ``st``, ``s``) — in-doubt ones. The audience query reads the
main store's ``conversations`` collection (``_id`` = key, ``_purposes`` terms such as ``offers:*``,
see :mod:`bot.store.indexes`) through one more index this adapter creates there:
``campaign_audience`` (``_purposes``, ``phone_number_id``, ``_id``): an equality on the purpose term
and number, then a range on the key — the scan resumes from its cursor with no sort in memory.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.operations import IndexModel

from bot.core.audience import TemplateDeclaration
from bot.core.conversation import Conversation
from bot.core.messages import STATUS_RANK, DeliveryStatus
from bot.errors import NotFound
from bot.store import indexes as ix
from bot.store.base import millis, millis_opt
from bot.store.broadcasts import (
    FINAL_STATES,
    Broadcasts,
    Campaign,
    CampaignState,
    Finish,
    Receipt,
    Recipient,
    RecipientState,
    Tally,
    delivery_rank,
)
from bot.store.mongo import translated

Doc = dict[str, Any]
CAMPAIGNS = "campaigns"
RECIPIENTS = "campaign_recipients"

INDEXES: dict[str, list[tuple[str, list[tuple[str, int]], dict[str, Any]]]] = {
    RECIPIENTS: [
        ("campaign_subject", [("c", 1), ("s", 1)], {"unique": True}),
        ("campaign_state_seq", [("c", 1), ("st", 1), ("seq", 1)], {}),
        ("campaign_state_subject", [("c", 1), ("st", 1), ("s", 1)], {}),
    ],
    CAMPAIGNS: [("created", [("created_at", -1)], {})],
    ix.CONVERSATIONS: [("campaign_audience", [("_purposes", 1), ("phone_number_id", 1), ("_id", 1)], {})],
}


def _campaign_doc(c: Campaign) -> Doc:
    return {
        "_id": c.id, "name": c.name, "template": c.template.to_doc(), "purpose": c.purpose,
        "phone_number_id": c.phone_number_id, "created_at": millis(c.created_at), "updated_at": millis(c.updated_at),
        "locale": c.locale, "segments": [list(s) for s in c.segments], "params": dict(c.params), "rate": c.rate,
        "state": str(c.state), "audience_cursor": c.audience_cursor, "audience_done": c.audience_done,
        "run_owner": c.run_owner, "run_until": millis_opt(c.run_until), "started_at": millis_opt(c.started_at),
        "finished_at": millis_opt(c.finished_at), "progress": dict(c.progress), "created_by": c.created_by,
    }


def _campaign(d: Doc) -> Campaign:
    return Campaign(
        id=d["_id"], name=d["name"], template=TemplateDeclaration.from_doc(d["template"]), purpose=d["purpose"],
        phone_number_id=d["phone_number_id"], created_at=d["created_at"], updated_at=d["updated_at"],
        locale=d.get("locale", ""), segments=tuple((s[0], s[1]) for s in d.get("segments", ())),
        params=dict(d.get("params", {})), rate=float(d.get("rate", 80.0)), state=CampaignState(d["state"]),
        audience_cursor=d.get("audience_cursor", ""), audience_done=bool(d.get("audience_done", False)),
        run_owner=d.get("run_owner", ""), run_until=d.get("run_until"), started_at=d.get("started_at"),
        finished_at=d.get("finished_at"), progress=dict(d.get("progress") or {}), created_by=d.get("created_by", ""),
    )


def _rid(campaign_id: str, subject: str) -> str:
    return f"{campaign_id}:{subject}"


def _recipient_doc(r: Recipient) -> Doc:
    return {
        "_id": _rid(r.campaign_id, r.subject), "c": r.campaign_id, "s": r.subject, "k": r.key, "st": str(r.state),
        "seq": r.seq, "reason": r.reason, "detail": r.detail, "owner": r.owner, "attempt_at": millis_opt(r.attempt_at),
        "attempts": r.attempts, "finished_at": millis_opt(r.finished_at), "wamid": r.wamid,
        "delivery": None if r.delivery is None else str(r.delivery), "drank": delivery_rank(r.delivery),
        "delivery_at": millis_opt(r.delivery_at), "error_code": r.error_code,
    }


def _recipient(d: Doc) -> Recipient:
    return Recipient(
        campaign_id=d["c"], subject=d["s"], key=d["k"], state=RecipientState(d["st"]), seq=d.get("seq", 0),
        reason=d.get("reason", ""), detail=d.get("detail", ""), owner=d.get("owner", ""),
        attempt_at=d.get("attempt_at"), attempts=d.get("attempts", 0), finished_at=d.get("finished_at"),
        wamid=d.get("wamid", ""), delivery=DeliveryStatus(d["delivery"]) if d.get("delivery") else None,
        delivery_at=d.get("delivery_at"), error_code=d.get("error_code", 0),
    )


class MongoBroadcasts(Broadcasts):
    """``database`` is the main store's driver database handle (``MongoStore.database``: tz-aware)."""

    def __init__(self, database: Any) -> None:
        self._db = database
        self._campaigns = database[CAMPAIGNS]
        self._recipients = database[RECIPIENTS]
        self._conversations = database[ix.CONVERSATIONS]

    async def open(self) -> None:
        with translated("broadcasts.open"):
            for collection, specs in INDEXES.items():
                models = [IndexModel(keys, name=name, **options) for name, keys, options in specs]
                await self._db[collection].create_indexes(models)

    # --- campaigns -------------------------------------------------------------------------------
    async def create(self, campaign: Campaign) -> None:
        with translated("broadcasts.create"):
            try:
                await self._campaigns.insert_one(_campaign_doc(campaign))
            except DuplicateKeyError:
                raise ValueError(f"campaign id {campaign.id!r} already exists") from None

    async def get(self, campaign_id: str) -> Campaign | None:
        with translated("broadcasts.get"):
            d = await self._campaigns.find_one({"_id": campaign_id})
        return None if d is None else _campaign(d)

    async def recent(self, limit: int = 100) -> list[Campaign]:
        with translated("broadcasts.recent"):
            cursor = self._campaigns.find({}).sort([("created_at", -1), ("_id", -1)]).limit(limit)
            return [_campaign(d) async for d in cursor]

    async def set_state(self, campaign_id: str, state: CampaignState, now: datetime) -> Campaign:
        now = millis(now)
        set_: Doc = {"state": str(state), "updated_at": now}
        if state is CampaignState.DONE:
            set_["finished_at"] = now
        with translated("broadcasts.set_state"):
            if state is CampaignState.RUNNING:
                await self._campaigns.update_one(
                    {"_id": campaign_id, "started_at": None}, {"$set": {"started_at": now}}
                )
            d = await self._campaigns.find_one_and_update(
                {"_id": campaign_id}, {"$set": set_}, return_document=ReturnDocument.AFTER
            )
        if d is None:
            raise NotFound(f"campaign {campaign_id!r} does not exist")
        return _campaign(d)

    async def acquire_run(self, campaign_id: str, owner: str, now: datetime, lease_seconds: float) -> bool:
        now = millis(now)
        free = {"$or": [{"run_owner": ""}, {"run_owner": owner}, {"run_until": {"$lte": now}}]}
        with translated("broadcasts.acquire_run"):
            result = await self._campaigns.update_one(
                {"_id": campaign_id, **free},
                {"$set": {"run_owner": owner, "run_until": now + timedelta(seconds=lease_seconds)}},
            )
            if result.matched_count:
                return True
            if await self._campaigns.count_documents({"_id": campaign_id}, limit=1) == 0:
                raise NotFound(f"campaign {campaign_id!r} does not exist")
        return False

    async def release_run(self, campaign_id: str, owner: str) -> None:
        with translated("broadcasts.release_run"):
            await self._campaigns.update_one(
                {"_id": campaign_id, "run_owner": owner}, {"$set": {"run_owner": "", "run_until": None}}
            )

    async def save_progress(
        self, campaign_id: str, progress: Mapping[str, Any], now: datetime, cursor: str | None = None,
        audience_done: bool | None = None,
    ) -> None:
        set_: Doc = {"progress": dict(progress), "updated_at": millis(now)}
        if cursor is not None:
            set_["audience_cursor"] = cursor
        if audience_done is not None:
            set_["audience_done"] = audience_done
        with translated("broadcasts.save_progress"):
            await self._campaigns.update_one({"_id": campaign_id}, {"$set": set_})

    # --- recipients ------------------------------------------------------------------------------
    async def add_recipients(self, recipients: Sequence[Recipient]) -> int:
        if not recipients:
            return 0
        docs = [_recipient_doc(r) for r in recipients]
        with translated("broadcasts.add_recipients"):
            try:
                result = await self._recipients.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors") or []
                if any(e.get("code") != 11000 for e in errors):
                    raise
                return int(exc.details.get("nInserted", len(docs) - len(errors)))
        return len(result.inserted_ids)

    async def lease(self, campaign_id: str, owner: str, now: datetime, limit: int) -> list[Recipient]:
        now = millis(now)
        token = uuid.uuid4().hex
        with translated("broadcasts.lease"):
            cursor = self._recipients.find(
                {"c": campaign_id, "st": str(RecipientState.PENDING)}, projection={"_id": 1}
            ).sort([("seq", 1)]).limit(limit)
            ids = [d["_id"] async for d in cursor]
            if not ids:
                return []
            await self._recipients.update_many(
                {"_id": {"$in": ids}, "st": str(RecipientState.PENDING)},
                {"$set": {"st": str(RecipientState.SENDING), "owner": owner, "attempt_at": now, "lt": token},
                 "$inc": {"attempts": 1}},
            )
            got = [_recipient(d) async for d in self._recipients.find({"_id": {"$in": ids}, "lt": token})]
        got.sort(key=lambda r: r.seq)
        return got

    async def in_doubt(self, campaign_id: str, after_subject: str = "", limit: int = 500) -> list[Recipient]:
        with translated("broadcasts.in_doubt"):
            cursor = self._recipients.find(
                {"c": campaign_id, "st": str(RecipientState.SENDING), "s": {"$gt": after_subject}}
            ).sort([("s", 1)]).limit(limit)
            return [_recipient(d) async for d in cursor]

    async def finish(self, campaign_id: str, finishes: Sequence[Finish], now: datetime) -> int:
        if not finishes:
            return 0
        now = millis(now)
        ops = []
        for f in finishes:
            if f.state not in FINAL_STATES:
                raise ValueError(f"finish: {f.state} is not a final state")
            set_: Doc = {"st": str(f.state), "reason": f.reason, "detail": f.detail[:300], "owner": "",
                         "finished_at": now}
            if f.error_code:
                set_["error_code"] = f.error_code
            ops.append(UpdateOne({"_id": _rid(campaign_id, f.subject), "st": str(RecipientState.SENDING)},
                                 {"$set": set_}))
        with translated("broadcasts.finish"):
            result = await self._recipients.bulk_write(ops, ordered=False)
        return int(result.modified_count)

    async def release(self, campaign_id: str, subjects: Sequence[str]) -> int:
        if not subjects:
            return 0
        with translated("broadcasts.release"):
            result = await self._recipients.update_many(
                {"_id": {"$in": [_rid(campaign_id, s) for s in subjects]}, "st": str(RecipientState.SENDING)},
                {"$set": {"st": str(RecipientState.PENDING), "owner": ""}},
            )
        return int(result.modified_count)

    async def recipient(self, campaign_id: str, subject: str) -> Recipient | None:
        with translated("broadcasts.recipient"):
            d = await self._recipients.find_one({"_id": _rid(campaign_id, subject)})
        return None if d is None else _recipient(d)

    async def recipients(self, campaign_id: str, after_subject: str = "", limit: int = 500) -> list[Recipient]:
        with translated("broadcasts.recipients"):
            f = {"c": campaign_id, "s": {"$gt": after_subject}}
            cursor = self._recipients.find(f).sort([("s", 1)]).limit(limit)
            return [_recipient(d) async for d in cursor]

    async def record_receipt(self, receipt: Receipt) -> bool:
        rid = _rid(receipt.campaign_id, receipt.subject)
        rank = STATUS_RANK[receipt.status]
        set_: Doc = {"delivery": str(receipt.status), "drank": rank, "delivery_at": millis(receipt.at)}
        if receipt.status is DeliveryStatus.FAILED:
            set_["error_code"] = receipt.error_code
        ops = [UpdateOne({"_id": rid, "wamid": ""}, {"$set": {"wamid": receipt.wamid}})]
        if receipt.status is not DeliveryStatus.UNKNOWN:
            ops.append(UpdateOne({"_id": rid, "drank": {"$lt": rank}}, {"$set": set_}))
        with translated("broadcasts.record_receipt"):
            result = await self._recipients.bulk_write(ops, ordered=True)
            if result.matched_count:
                return True
            return int(await self._recipients.count_documents({"_id": rid}, limit=1)) > 0

    async def tally(self, campaign_id: str) -> Tally:
        def grouped(match: Doc, by: str) -> list[Doc]:
            return [{"$match": {"c": campaign_id, **match}}, {"$group": {"_id": f"${by}", "n": {"$sum": 1}}}]

        with translated("broadcasts.tally"):
            out: list[dict[str, int]] = []
            for match, by in (({}, "st"), ({"st": str(RecipientState.EXCLUDED)}, "reason"),
                              ({"delivery": {"$ne": None}}, "delivery"), ({"error_code": {"$gt": 0}}, "error_code")):
                cursor = await self._recipients.aggregate(grouped(match, by))
                out.append({str(d["_id"]): int(d["n"]) async for d in cursor})
        return Tally(states=out[0], reasons=out[1], delivery=out[2], errors=out[3])

    # --- the audience ----------------------------------------------------------------------------
    async def candidates(
        self, phone_number_id: str, purpose: str, after_key: str = "", limit: int = 500
    ) -> list[Conversation]:
        f = {"_purposes": f"{purpose}:*", "phone_number_id": phone_number_id, "_id": {"$gt": after_key},
             "version": {"$gte": 1}}
        with translated("broadcasts.candidates"):
            cursor = self._conversations.find(f).sort([("_id", 1)]).limit(limit)
            return [Conversation.from_doc(d) async for d in cursor]
