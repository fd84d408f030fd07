"""In-process reference adapter of the account ports (tests, ``--store memory``, benchmarks).

Nothing persists; expired sessions are dropped when read (the MongoDB adapter uses a TTL index).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from bot.store.accounts import (
    AccountStore,
    Agent,
    Agents,
    Audit,
    AuditEntry,
    AuditQuery,
    Session,
    Sessions,
    action_matches,
)
from bot.store.privacy import ms


class MemoryAgents(Agents):
    def __init__(self) -> None:
        self._agents: dict[str, Agent] = {}

    async def add(self, agent: Agent) -> bool:
        if agent.name in self._agents:
            return False
        self._agents[agent.name] = replace(
            agent,
            created_at=ms(agent.created_at),
            disabled_at=None if agent.disabled_at is None else ms(agent.disabled_at),
            password_changed_at=None if agent.password_changed_at is None else ms(agent.password_changed_at),
        )
        return True

    async def get(self, name: str) -> Agent | None:
        return self._agents.get(name)

    async def all(self) -> list[Agent]:
        return [self._agents[n] for n in sorted(self._agents)]

    async def set_password(self, name: str, password_hash: str, at: datetime) -> bool:
        agent = self._agents.get(name)
        if agent is None:
            return False
        self._agents[name] = replace(agent, password_hash=password_hash, password_changed_at=ms(at))
        return True

    async def disable(self, name: str, at: datetime) -> bool:
        agent = self._agents.get(name)
        if agent is None:
            return False
        if not agent.disabled:
            self._agents[name] = replace(agent, disabled=True, disabled_at=ms(at))
        return True


class MemorySessions(Sessions):
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    async def create(self, session: Session) -> None:
        if session.id in self._sessions:
            raise ValueError("session id clash")
        self._sessions[session.id] = replace(
            session,
            created_at=ms(session.created_at),
            idle_until=ms(session.idle_until),
            expires_at=ms(session.expires_at),
        )

    async def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    async def touch(self, session_id: str, idle_until: datetime) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            return
        until = min(ms(idle_until), session.expires_at)
        if until > session.idle_until:
            self._sessions[session_id] = replace(session, idle_until=until)

    async def delete(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    async def delete_for(self, agent: str) -> int:
        gone = [sid for sid, s in self._sessions.items() if s.agent == agent]
        for sid in gone:
            del self._sessions[sid]
        return len(gone)


class MemoryAudit(Audit):
    def __init__(self) -> None:
        self._entries: list[AuditEntry] = []

    async def append(self, entry: AuditEntry) -> None:
        self._entries.append(replace(entry, at=ms(entry.at), detail=dict(entry.detail)))

    def _matching(self, query: AuditQuery) -> list[AuditEntry]:
        found = [
            e
            for e in self._entries
            if (not query.actor or e.actor == query.actor)
            and action_matches(query.action, e.action)
            and (not query.target or e.target == query.target)
            and (query.after is None or e.at > query.after)
            and (query.before is None or e.at < query.before)
        ]
        # newest first; the stable sort over the reversed list puts the later-appended first on ties
        return sorted(reversed(found), key=lambda e: e.at, reverse=True)

    async def find(self, query: AuditQuery, skip: int = 0, limit: int = 50) -> list[AuditEntry]:
        return self._matching(query)[skip : skip + limit]

    async def count(self, query: AuditQuery) -> int:
        return len(self._matching(query))


class MemoryAccountStore(AccountStore):
    def __init__(self) -> None:
        self.agents = MemoryAgents()
        self.sessions = MemorySessions()
        self.audit = MemoryAudit()

    async def open(self) -> None:
        return None
