"""MongoDB adapter of the account ports (PyMongo async API).

:class:`MongoAccountStore` takes an ``AsyncDatabase`` (the same database the main store uses) and
creates its indexes idempotently in :meth:`MongoAccountStore.open`. Collections:

==================  =========================================================================
``agents``          ``_id`` = agent name; ``role``, ``password_hash``, ``disabled``, dates.
``console_sessions`` ``_id`` = SHA-256 of the cookie token; ``agent`` index (log everyone out);
                    TTL index on ``expires_at`` (MongoDB removes ended sessions by itself).
``audit``           append-only; indexes ``(at desc)``, ``(actor, at desc)``, ``(action, at desc)``,
                    ``(target, at desc)``: every filter of the audit page is an index range scan
                    already in the order the page shows.
==================  =========================================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    DuplicateKeyError,
)

from bot.errors import StoreError
from bot.store.accounts import (
    AccountStore,
    Agent,
    Agents,
    Audit,
    AuditEntry,
    AuditQuery,
    Session,
    Sessions,
)
from bot.store.mongo import translated
from bot.store.privacy import ms

Doc = dict[str, Any]


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _must(value: datetime | None) -> datetime:
    aware = _aware(value)
    if aware is None:
        raise StoreError("a required date is missing in a stored document")
    return aware


# --- agents --------------------------------------------------------------------------------------
def _agent_from(doc: Mapping[str, Any]) -> Agent:
    return Agent(
        name=doc["_id"],
        role=doc["role"],
        password_hash=doc["password_hash"],
        created_at=_must(doc["created_at"]),
        disabled=bool(doc.get("disabled", False)),
        disabled_at=_aware(doc.get("disabled_at")),
        password_changed_at=_aware(doc.get("password_changed_at")),
    )


class MongoAgents(Agents):
    def __init__(self, coll: AsyncCollection[Doc]) -> None:
        self.coll = coll

    async def add(self, agent: Agent) -> bool:
        doc = {
            "_id": agent.name,
            "role": agent.role,
            "password_hash": agent.password_hash,
            "created_at": ms(agent.created_at),
            "disabled": agent.disabled,
            "disabled_at": None if agent.disabled_at is None else ms(agent.disabled_at),
            "password_changed_at": None if agent.password_changed_at is None else ms(agent.password_changed_at),
        }
        with translated("agents.add"):
            try:
                await self.coll.insert_one(doc)
            except DuplicateKeyError:
                return False
        return True

    async def get(self, name: str) -> Agent | None:
        with translated("agents.get"):
            doc = await self.coll.find_one({"_id": name})
        return None if doc is None else _agent_from(doc)

    async def all(self) -> list[Agent]:
        with translated("agents.all"):
            return [_agent_from(d) async for d in self.coll.find({}).sort("_id", ASCENDING)]

    async def set_password(self, name: str, password_hash: str, at: datetime) -> bool:
        with translated("agents.set_password"):
            result = await self.coll.update_one(
                {"_id": name}, {"$set": {"password_hash": password_hash, "password_changed_at": ms(at)}}
            )
        return result.matched_count == 1

    async def disable(self, name: str, at: datetime) -> bool:
        with translated("agents.disable"):
            result = await self.coll.update_one(
                {"_id": name, "disabled": {"$ne": True}}, {"$set": {"disabled": True, "disabled_at": ms(at)}}
            )
            if result.matched_count == 1:
                return True
            return await self.coll.find_one({"_id": name}, projection={"_id": 1}) is not None


# --- sessions ------------------------------------------------------------------------------------
def _session_from(doc: Mapping[str, Any]) -> Session:
    return Session(
        id=doc["_id"],
        agent=doc["agent"],
        role=doc["role"],
        csrf=doc["csrf"],
        created_at=_must(doc["created_at"]),
        idle_until=_must(doc["idle_until"]),
        expires_at=_must(doc["expires_at"]),
        ip=doc.get("ip", ""),
    )


class MongoSessions(Sessions):
    def __init__(self, coll: AsyncCollection[Doc]) -> None:
        self.coll = coll

    async def create(self, session: Session) -> None:
        doc = {
            "_id": session.id,
            "agent": session.agent,
            "role": session.role,
            "csrf": session.csrf,
            "created_at": ms(session.created_at),
            "idle_until": ms(session.idle_until),
            "expires_at": ms(session.expires_at),
            "ip": session.ip,
        }
        with translated("sessions.create"):
            try:
                await self.coll.insert_one(doc)
            except DuplicateKeyError:
                raise StoreError("sessions.create: session id clash") from None

    async def get(self, session_id: str) -> Session | None:
        with translated("sessions.get"):
            doc = await self.coll.find_one({"_id": session_id})
        return None if doc is None else _session_from(doc)

    async def touch(self, session_id: str, idle_until: datetime) -> None:
        until = ms(idle_until)
        with translated("sessions.touch"):
            # one write: move forward only, capped at expires_at
            await self.coll.update_one(
                {"_id": session_id, "idle_until": {"$lt": until}},
                [{"$set": {"idle_until": {"$min": [until, "$expires_at"]}}}],
            )

    async def delete(self, session_id: str) -> None:
        with translated("sessions.delete"):
            await self.coll.delete_one({"_id": session_id})

    async def delete_for(self, agent: str) -> int:
        with translated("sessions.delete_for"):
            result = await self.coll.delete_many({"agent": agent})
        return int(result.deleted_count)


# --- audit ---------------------------------------------------------------------------------------
def _audit_filter(query: AuditQuery) -> Doc:
    f: Doc = {}
    if query.actor:
        f["actor"] = query.actor
    if query.action:
        f["action"] = (
            {"$regex": "^" + re.escape(query.action)} if query.action.endswith(".") else query.action
        )
    if query.target:
        f["target"] = query.target
    at: Doc = {}
    if query.after is not None:
        at["$gt"] = query.after
    if query.before is not None:
        at["$lt"] = query.before
    if at:
        f["at"] = at
    return f


def _audit_from(doc: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        at=_must(doc["at"]),
        actor=doc["actor"],
        role=doc.get("role", ""),
        action=doc["action"],
        target=doc.get("target", ""),
        outcome=doc.get("outcome", "ok"),
        ip=doc.get("ip", ""),
        detail=dict(doc.get("detail") or {}),
    )


class MongoAudit(Audit):
    def __init__(self, coll: AsyncCollection[Doc]) -> None:
        self.coll = coll

    async def append(self, entry: AuditEntry) -> None:
        doc = {
            "at": ms(entry.at),
            "actor": entry.actor,
            "role": entry.role,
            "action": entry.action,
            "target": entry.target,
            "outcome": entry.outcome,
            "ip": entry.ip,
            "detail": dict(entry.detail),
        }
        with translated("audit.append"):
            await self.coll.insert_one(doc)

    async def find(self, query: AuditQuery, skip: int = 0, limit: int = 50) -> list[AuditEntry]:
        with translated("audit.find"):
            cursor = (
                self.coll.find(_audit_filter(query))
                .sort([("at", DESCENDING), ("_id", DESCENDING)])
                .skip(max(0, skip))
                .limit(max(1, limit))
            )
            return [_audit_from(d) async for d in cursor]

    async def count(self, query: AuditQuery) -> int:
        with translated("audit.count"):
            return int(await self.coll.count_documents(_audit_filter(query)))


class MongoAccountStore(AccountStore):
    """The account ports on one MongoDB database (an ``AsyncDatabase`` from ``AsyncMongoClient``)."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.db = db
        self.agents = MongoAgents(db["agents"])
        self.sessions = MongoSessions(db["console_sessions"])
        self.audit = MongoAudit(db["audit"])

    async def open(self) -> None:
        with translated("accounts.open"):
            sessions = self.db["console_sessions"]
            await sessions.create_index([("agent", ASCENDING)], name="agent")
            await sessions.create_index([("expires_at", ASCENDING)], name="ttl_expires_at", expireAfterSeconds=0)
            audit = self.db["audit"]
            await audit.create_index([("at", DESCENDING)], name="at")
            for field in ("actor", "action", "target"):
                await audit.create_index([(field, ASCENDING), ("at", DESCENDING)], name=f"{field}_at")
