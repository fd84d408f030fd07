"""Console account ports: agents (people who log in to the support console), their server-side
sessions, and the audit trail of everything they view and do.

Small ABCs whose docstrings are the contract every adapter honours (one shared contract suite,
``tests/store/test_accounts_contract.py``, runs on the memory and MongoDB adapters). Conventions are
those of :mod:`bot.store.base`: timezone-aware UTC datetimes in and out, truncated to the millisecond;
any method may raise :class:`bot.errors.StoreUnavailable`; no driver exception escapes an adapter.

Passwords never reach these ports: the console hashes them (Argon2id) and stores only the hash.
Session ids are never stored either: the store keeps the SHA-256 of the cookie's token, so a copy of
the database does not let anyone log in.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.store.privacy import Role

AGENT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,31}$")
"""Agent names: 2-32 characters, lowercase letters, digits, ``.``, ``_`` and ``-`` (they appear in
``sent_by = "agent:<name>"`` and in the audit trail, so they stay plain)."""

ROLES: tuple[str, ...] = tuple(str(r) for r in Role)


@dataclass(frozen=True, slots=True)
class Agent:
    """A console account. ``role`` is one of :data:`ROLES`; ``password_hash`` is an Argon2 hash
    string (``$argon2id$...``); a ``disabled`` agent cannot log in and its sessions are dropped."""

    name: str
    role: str
    password_hash: str
    created_at: datetime
    disabled: bool = False
    disabled_at: datetime | None = None
    password_changed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in console session. ``id`` is the SHA-256 (hex) of the cookie token; ``csrf`` is the
    token every form of this session must carry. The session ends at the earlier of ``idle_until``
    (moved forward by :meth:`Sessions.touch`) and ``expires_at`` (fixed at login)."""

    id: str
    agent: str
    role: str
    csrf: str
    created_at: datetime
    idle_until: datetime
    expires_at: datetime
    ip: str = ""

    def live(self, now: datetime) -> bool:
        return now < self.idle_until and now < self.expires_at


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the audit trail: who (``actor``, their ``role``), did what (``action``, e.g.
    ``view.transcript``, ``reveal.number``, ``privacy.erase``), when (``at``), to what (``target``: a
    conversation key, subject or agent name), from where (``ip``), with ``detail`` (JSON-safe, never a
    secret or message content). ``outcome`` is ``ok``, ``denied`` or ``failed``."""

    at: datetime
    actor: str
    role: str
    action: str
    target: str = ""
    outcome: str = "ok"
    ip: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters for :meth:`Audit.find`. Empty fields do not filter; set ones combine with AND.
    ``action`` matches exactly or, ending in ``.``, as a prefix (``privacy.`` = every privacy action)."""

    actor: str = ""
    action: str = ""
    target: str = ""
    after: datetime | None = None  # exclusive
    before: datetime | None = None  # exclusive


class Agents(ABC):
    """Console accounts, unique by name."""

    @abstractmethod
    async def add(self, agent: Agent) -> bool:
        """Create ``agent``; returns False (and changes nothing) when the name is taken."""

    @abstractmethod
    async def get(self, name: str) -> Agent | None: ...

    @abstractmethod
    async def all(self) -> list[Agent]:
        """Every agent, disabled ones included, sorted by name."""

    @abstractmethod
    async def set_password(self, name: str, password_hash: str, at: datetime) -> bool:
        """Replace the password hash (also used to upgrade a hash's parameters on login); returns
        False for an unknown name."""

    @abstractmethod
    async def disable(self, name: str, at: datetime) -> bool:
        """Disable the account (kept for the audit trail, never deleted); returns False for an unknown
        name. Disabling twice keeps the first date and returns True."""


class Sessions(ABC):
    """Server-side console sessions. The MongoDB adapter expires them with a TTL index on
    ``expires_at``; every reader must still check :meth:`Session.live`."""

    @abstractmethod
    async def create(self, session: Session) -> None:
        """Store a new session (ids are random 256-bit values: a clash is an error, never a merge)."""

    @abstractmethod
    async def get(self, session_id: str) -> Session | None:
        """The session with this id, whether or not it is still live (the caller checks)."""

    @abstractmethod
    async def touch(self, session_id: str, idle_until: datetime) -> None:
        """Move ``idle_until`` forward (never past ``expires_at``, never backwards). No-op when gone."""

    @abstractmethod
    async def delete(self, session_id: str) -> None:
        """End one session (logout). No-op when gone."""

    @abstractmethod
    async def delete_for(self, agent: str) -> int:
        """End every session of ``agent`` (disabled account, password change); returns how many."""


class Audit(ABC):
    """The append-only audit trail. Entries are never changed or deleted by the application."""

    @abstractmethod
    async def append(self, entry: AuditEntry) -> None: ...

    @abstractmethod
    async def find(self, query: AuditQuery, skip: int = 0, limit: int = 50) -> list[AuditEntry]:
        """Matching entries, newest first (ties: the later-appended first)."""

    @abstractmethod
    async def count(self, query: AuditQuery) -> int: ...


class AccountStore(ABC):
    """The account ports of one database."""

    agents: Agents
    sessions: Sessions
    audit: Audit

    @abstractmethod
    async def open(self) -> None:
        """Create every index (idempotent)."""


def check_agent_name(name: str) -> str:
    """``name`` if it is a valid agent name (see :data:`AGENT_NAME`), else ``ValueError`` naming it."""
    if not AGENT_NAME.match(name):
        raise ValueError(
            f"agent name {name!r}: use 2-32 characters: lowercase letters, digits, '.', '_' or '-'"
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role {role!r}: must be one of {', '.join(ROLES)}")
    return role


def action_matches(pattern: str, action: str) -> bool:
    """The :class:`AuditQuery` ``action`` rule (exact, or a prefix when it ends in ``.``)."""
    if not pattern:
        return True
    return action.startswith(pattern) if pattern.endswith(".") else action == pattern

