"""Privacy storage ports: notices, the suppression list, blocked consent proof, data-subject requests
and restrictions. Small ABCs whose docstrings are the contract every adapter honours (one shared
contract suite, ``tests/store/test_privacy_contract.py``, runs on the memory and MongoDB adapters).

Conventions are those of :mod:`bot.store.base`: timezone-aware UTC datetimes in and out, truncated to
the millisecond; any method may raise :class:`bot.errors.StoreUnavailable`; no driver exception escapes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from bot.core.consent import ConsentRecord
from bot.core.proof import notice_intact
from bot.core.rendering import NoticeText
from bot.errors import BotError, StoreError


class AccessDenied(BotError):
    """The caller lacks the role an operation requires (e.g. reading blocked proof without ``privacy``)."""

    def __init__(self, operation: str, role: str) -> None:
        super().__init__(f"{operation}: requires the {role!r} role")
        self.operation = operation
        self.role = role


class InvalidRecord(StoreError):
    """A value was refused at write time (e.g. a notice whose sha256 is not the hash of its text)."""


def require_intact(notice: NoticeText) -> None:
    """Raise :class:`InvalidRecord` when ``notice.sha256`` is not the hash of its text: every adapter
    checks a notice with this before it stores anything (``Notices.put``, a step's ``notices``)."""
    if not notice_intact(notice):
        raise InvalidRecord(f"notice {notice.version}/{notice.locale}: sha256 is not the hash of its text")


class Role(StrEnum):
    AGENT = "agent"
    SUPERVISOR = "supervisor"
    PRIVACY = "privacy"  # the DPO / privacy officer: the only role that may read blocked proof


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a name for the audit trail and the roles they hold."""

    name: str
    roles: frozenset[str] = frozenset()

    def has(self, role: Role | str) -> bool:
        return str(role) in self.roles


# --- notices -------------------------------------------------------------------------------------
class Notices(ABC):
    """Immutable copies of every notice text shown to customers (consent events refer to them by hash)."""

    @abstractmethod
    async def put(self, notice: NoticeText) -> bool:
        """Store ``notice``; idempotent by (version, locale, sha256): returns True when new, False when
        already stored. A notice whose ``sha256`` is not the hash of its ``text`` raises
        :class:`InvalidRecord`. Stored notices are never changed or deleted by the application."""

    @abstractmethod
    async def get(self, sha256: str) -> NoticeText | None:
        """The notice with this text hash."""

    @abstractmethod
    async def many(self, hashes: Sequence[str]) -> list[NoticeText]:
        """The stored notices among ``hashes`` (unknown ones are skipped), in no particular order."""

    @abstractmethod
    async def versions(self, version: str, locale: str) -> list[NoticeText]:
        """Every stored text of one (version, locale) (more than one only if a text was changed without
        bumping the version)."""


# --- suppression ---------------------------------------------------------------------------------
class SuppressionScope(StrEnum):
    ALL = "all"  # erasure: nothing is sent any more
    MARKETING = "marketing"  # objection to direct marketing


_SCOPE_RANK = {"marketing": 1, "all": 2}


def wider_scope(old: str, new: str) -> bool:
    """True when scope ``new`` covers more than ``old`` (``all`` over ``marketing``; unknown ranks lowest)."""
    return _SCOPE_RANK.get(str(new), 0) > _SCOPE_RANK.get(str(old), 0)


def ms(value: datetime) -> datetime:
    """``value`` as aware UTC truncated to the millisecond (what MongoDB keeps; naive = UTC)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    aware = aware.astimezone(UTC)
    return aware.replace(microsecond=aware.microsecond - aware.microsecond % 1000)


@dataclass(frozen=True, slots=True)
class SuppressionEntry:
    """The whole entry (LOPDGDD 23.1 minimal data): the HMAC key, the scope and the date. Nothing else."""

    key: str
    scope: str
    since: datetime


class Suppression(ABC):
    """The suppression list, keyed by ``bot.core.proof.suppression_key`` (HMAC of the number). It
    survives erasure and is checked on every send path. Entries are never removed by the application."""

    @abstractmethod
    async def add(self, key: str, scope: str, at: datetime) -> bool:
        """Add ``key`` with ``scope`` since ``at``. Idempotent: returns True when the key was new. For an
        existing key the date is kept; a wider scope (``all`` over ``marketing``) replaces a narrower one."""

    @abstractmethod
    async def is_suppressed(self, key: str) -> bool:
        """True when ``key`` has an entry (any scope)."""

    @abstractmethod
    async def get(self, key: str) -> SuppressionEntry | None: ...


# --- blocked proof -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BlockedProofEntry:
    """A subject's consent chain kept after erasure (LOPDGDD 32): reserved, not viewable except by
    the privacy role, destroyed at ``destroy_at`` (a TTL index in MongoDB)."""

    id: str
    subject: str
    records: tuple[ConsentRecord, ...]
    notice_refs: tuple[str, ...]  # sha256 of every notice text the records refer to
    blocked_at: datetime
    destroy_at: datetime
    reason: str = "erasure"


class BlockedProof(ABC):
    """Blocked consent proof. Writing is open to the application (erasure); reading requires
    :attr:`Role.PRIVACY`."""

    @abstractmethod
    async def block(self, entry: BlockedProofEntry) -> bool:
        """Store ``entry``; idempotent by ``entry.id`` (returns False when it already exists)."""

    @abstractmethod
    async def read(self, subject: str, principal: Principal) -> list[BlockedProofEntry]:
        """A subject's blocked entries, oldest first. Raises :class:`AccessDenied` (before touching the
        database) unless ``principal`` holds the ``privacy`` role."""

    @abstractmethod
    async def count(self) -> int:
        """How many entries are held (no content: usable by any role, e.g. for metrics)."""


# --- data-subject requests -----------------------------------------------------------------------
class RequestKind(StrEnum):
    ACCESS = "access"  # GDPR 15
    PORTABILITY = "portability"  # GDPR 20
    ERASURE = "erasure"  # GDPR 17
    RESTRICTION = "restriction"  # GDPR 18
    LIFT_RESTRICTION = "lift_restriction"


class RequestStatus(StrEnum):
    OPEN = "open"
    DONE = "done"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class DataRequest:
    """A data-subject request. ``due_at`` is one month after ``received_at`` (GDPR 12(3));
    ``bot.core.proof.request_due`` computes it."""

    id: str
    subject: str
    kind: RequestKind
    received_at: datetime
    due_at: datetime
    status: RequestStatus = RequestStatus.OPEN
    completed_at: datetime | None = None
    actor: str = ""
    note: str = ""
    result: dict[str, Any] = field(default_factory=dict)


class DataRequests(ABC):
    """Data-subject requests and their one-month deadline. Records are kept after completion (they
    show that a request was honoured); the MongoDB adapter expires them 3 years after completion."""

    @abstractmethod
    async def open(self, request: DataRequest) -> bool:
        """Record a new request; idempotent by ``request.id`` (returns False when it exists)."""

    @abstractmethod
    async def close(
        self, request_id: str, status: RequestStatus, at: datetime, note: str = "", result: dict[str, Any] | None = None
    ) -> DataRequest:
        """Complete (``done``) or refuse a request; raises :class:`bot.errors.NotFound` for an unknown id."""

    @abstractmethod
    async def get(self, request_id: str) -> DataRequest | None: ...

    @abstractmethod
    async def list_open(self, limit: int = 100) -> list[DataRequest]:
        """Open requests, earliest ``due_at`` first."""

    @abstractmethod
    async def for_subject(self, subject: str) -> list[DataRequest]:
        """Every request of one subject, oldest first."""


# --- restrictions --------------------------------------------------------------------------------
class Restrictions(ABC):
    """Subjects whose processing is restricted (GDPR 18): stored, but nothing is sent to them and agents
    other than the privacy role do not see them."""

    @abstractmethod
    async def restrict(self, subject: str, at: datetime, actor: str) -> bool:
        """Mark ``subject`` restricted; returns False when it already was (the first date is kept)."""

    @abstractmethod
    async def unrestrict(self, subject: str) -> bool:
        """Lift the restriction; returns False when there was none."""

    @abstractmethod
    async def is_restricted(self, subject: str) -> bool: ...

    @abstractmethod
    async def subjects(self) -> list[str]:
        """Every restricted subject, sorted."""


# --- the bundle ----------------------------------------------------------------------------------
class PrivacyStore(ABC):
    """All privacy ports of one database."""

    notices: Notices
    suppression: Suppression
    blocked: BlockedProof
    requests: DataRequests
    restrictions: Restrictions

    @abstractmethod
    async def open(self) -> None:
        """Create every index, TTL ones included (idempotent)."""
