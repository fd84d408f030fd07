"""One contract suite for the account ports (agents, console sessions, audit), run on the memory
adapter and on MongoDB (a real MongoDB-wire server, a fresh database per test)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient

from bot.store.accounts import (
    AccountStore,
    Agent,
    AuditEntry,
    AuditQuery,
    Session,
    check_agent_name,
    check_role,
)
from bot.store.accounts_memory import MemoryAccountStore
from bot.store.accounts_mongo import MongoAccountStore

NOW = datetime(2025, 6, 3, 10, 15, 42, 123456, tzinfo=UTC)
NOW_MS = NOW.replace(microsecond=123000)


@pytest.fixture(params=["memory", "mongo"])
async def accounts(request: pytest.FixtureRequest) -> AsyncIterator[AccountStore]:
    if request.param == "memory":
        memory = MemoryAccountStore()
        await memory.open()
        yield memory
        return
    uri = request.getfixturevalue("mongo_uri")
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000)
    db = client[f"accounts_{uuid.uuid4().hex[:12]}"]
    try:
        store = MongoAccountStore(db)  # type: ignore[arg-type]
        await store.open()
        await store.open()  # idempotent
        yield store
    finally:
        await client.drop_database(db.name)
        await client.close()


def agent(name: str = "ana", role: str = "agent") -> Agent:
    return Agent(name=name, role=role, password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", created_at=NOW)


def session(sid: str = "a" * 64, who: str = "ana", idle: float = 8, absolute: float = 12) -> Session:
    return Session(
        id=sid,
        agent=who,
        role="agent",
        csrf="csrf-" + sid[:8],
        created_at=NOW,
        idle_until=NOW + timedelta(hours=idle),
        expires_at=NOW + timedelta(hours=absolute),
        ip="127.0.0.1",
    )


# --- agents --------------------------------------------------------------------------------------
async def test_agents_are_unique_by_name_and_round_trip(accounts: AccountStore) -> None:
    assert await accounts.agents.add(agent()) is True
    assert await accounts.agents.add(agent(role="privacy")) is False
    got = await accounts.agents.get("ana")
    assert got == Agent("ana", "agent", agent().password_hash, NOW_MS)
    assert got is not None and got.created_at.tzinfo is not None
    assert await accounts.agents.get("nobody") is None


async def test_agents_list_sorted_including_disabled(accounts: AccountStore) -> None:
    for name in ("zoe", "ana", "marc"):
        await accounts.agents.add(agent(name))
    assert await accounts.agents.disable("marc", NOW) is True
    names = [(a.name, a.disabled) for a in await accounts.agents.all()]
    assert names == [("ana", False), ("marc", True), ("zoe", False)]


async def test_disable_keeps_the_first_date_and_unknown_is_false(accounts: AccountStore) -> None:
    await accounts.agents.add(agent())
    assert await accounts.agents.disable("ana", NOW) is True
    assert await accounts.agents.disable("ana", NOW + timedelta(days=1)) is True
    got = await accounts.agents.get("ana")
    assert got is not None and got.disabled and got.disabled_at == NOW_MS
    assert await accounts.agents.disable("ghost", NOW) is False


async def test_set_password_replaces_the_hash(accounts: AccountStore) -> None:
    await accounts.agents.add(agent())
    assert await accounts.agents.set_password("ana", "$argon2id$new", NOW) is True
    got = await accounts.agents.get("ana")
    assert got is not None and got.password_hash == "$argon2id$new" and got.password_changed_at == NOW_MS
    assert await accounts.agents.set_password("ghost", "x", NOW) is False


def test_names_and_roles_are_checked() -> None:
    assert check_agent_name("ana.lopez") == "ana.lopez"
    for bad in ("A", "Ana", "a b", "agent:x", "x" * 33, "", "<script>"):
        with pytest.raises(ValueError, match="agent name"):
            check_agent_name(bad)
    assert check_role("privacy") == "privacy"
    with pytest.raises(ValueError, match="role 'admin'"):
        check_role("admin")


# --- sessions ------------------------------------------------------------------------------------
async def test_sessions_round_trip_and_liveness(accounts: AccountStore) -> None:
    s = session()
    await accounts.sessions.create(s)
    got = await accounts.sessions.get(s.id)
    assert got is not None
    assert (got.agent, got.role, got.csrf, got.ip) == ("ana", "agent", s.csrf, "127.0.0.1")
    assert got.idle_until == NOW_MS + timedelta(hours=8)
    assert got.live(NOW + timedelta(hours=7)) is True
    assert got.live(NOW + timedelta(hours=9)) is False
    assert await accounts.sessions.get("b" * 64) is None


async def test_touch_moves_forward_only_and_never_past_the_absolute_end(accounts: AccountStore) -> None:
    s = session(idle=1, absolute=2)
    await accounts.sessions.create(s)
    await accounts.sessions.touch(s.id, NOW + timedelta(minutes=30))  # backwards: ignored
    got = await accounts.sessions.get(s.id)
    assert got is not None and got.idle_until == NOW_MS + timedelta(hours=1)
    await accounts.sessions.touch(s.id, NOW + timedelta(minutes=90))
    got = await accounts.sessions.get(s.id)
    assert got is not None and got.idle_until == NOW_MS + timedelta(minutes=90)
    await accounts.sessions.touch(s.id, NOW + timedelta(hours=5))  # capped at expires_at
    got = await accounts.sessions.get(s.id)
    assert got is not None and got.idle_until == got.expires_at == NOW_MS + timedelta(hours=2)
    await accounts.sessions.touch("c" * 64, NOW)  # unknown: no-op


async def test_sessions_end_one_by_one_or_all_of_an_agent(accounts: AccountStore) -> None:
    await accounts.sessions.create(session("1" * 64))
    await accounts.sessions.create(session("2" * 64))
    await accounts.sessions.create(session("3" * 64, who="bob"))
    await accounts.sessions.delete("1" * 64)
    await accounts.sessions.delete("1" * 64)
    assert await accounts.sessions.get("1" * 64) is None
    assert await accounts.sessions.delete_for("ana") == 1
    assert await accounts.sessions.get("2" * 64) is None
    assert await accounts.sessions.get("3" * 64) is not None
    assert await accounts.sessions.delete_for("ana") == 0


async def test_a_session_id_clash_is_an_error(accounts: AccountStore) -> None:
    await accounts.sessions.create(session())
    with pytest.raises(Exception, match="clash"):
        await accounts.sessions.create(session())


# --- audit ---------------------------------------------------------------------------------------
async def test_audit_newest_first_with_filters_and_pages(accounts: AccountStore) -> None:
    rows = [
        AuditEntry(NOW, "ana", "agent", "view.transcript", "pn:1", ip="10.0.0.1"),
        AuditEntry(NOW + timedelta(seconds=1), "ana", "agent", "reveal.number", "pn:1", detail={"field": "wa_id"}),
        AuditEntry(NOW + timedelta(seconds=2), "dpo", "privacy", "privacy.export", "pn:2"),
        AuditEntry(NOW + timedelta(seconds=3), "dpo", "privacy", "privacy.erase", "pn:2", outcome="failed"),
        AuditEntry(NOW + timedelta(seconds=4), "bob", "agent", "privacy.erase", "pn:3", outcome="denied"),
    ]
    for row in rows:
        await accounts.audit.append(row)
    everything = await accounts.audit.find(AuditQuery())
    assert [e.action for e in everything] == [
        "privacy.erase", "privacy.erase", "privacy.export", "reveal.number", "view.transcript"
    ]
    assert everything[-1].at == NOW_MS and everything[-1].ip == "10.0.0.1"
    assert everything[3].detail == {"field": "wa_id"}
    assert await accounts.audit.count(AuditQuery()) == 5
    assert [e.actor for e in await accounts.audit.find(AuditQuery(action="privacy."))] == ["bob", "dpo", "dpo"]
    assert await accounts.audit.count(AuditQuery(action="privacy.")) == 3
    assert await accounts.audit.count(AuditQuery(action="privacy")) == 0  # exact unless it ends in "."
    assert [e.action for e in await accounts.audit.find(AuditQuery(actor="ana"))] == ["reveal.number", "view.transcript"]
    assert await accounts.audit.count(AuditQuery(target="pn:2")) == 2
    window = AuditQuery(after=NOW_MS, before=NOW_MS + timedelta(seconds=3))
    assert [e.action for e in await accounts.audit.find(window)] == ["privacy.export", "reveal.number"]
    page = await accounts.audit.find(AuditQuery(), skip=1, limit=2)
    assert [(e.actor, e.action) for e in page] == [("dpo", "privacy.erase"), ("dpo", "privacy.export")]


async def test_audit_ties_put_the_later_appended_first(accounts: AccountStore) -> None:
    for action in ("first", "second", "third"):
        await accounts.audit.append(AuditEntry(NOW, "ana", "agent", action))
    assert [e.action for e in await accounts.audit.find(AuditQuery())] == ["third", "second", "first"]


async def test_audit_action_prefix_is_not_a_pattern(accounts: AccountStore) -> None:
    await accounts.audit.append(AuditEntry(NOW, "ana", "agent", "viewXtranscript"))
    await accounts.audit.append(AuditEntry(NOW, "ana", "agent", "view.transcript"))
    assert [e.action for e in await accounts.audit.find(AuditQuery(action="view."))] == ["view.transcript"]
