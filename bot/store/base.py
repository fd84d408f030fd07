"""Storage ports: small ABCs whose docstrings are the contract every adapter must honour.

Both adapters (``memory`` and ``mongo``) pass one shared contract suite (``tests/store/contract.py``).
All times are timezone-aware UTC ``datetime`` values; adapters return aware datetimes, truncated to the
millisecond (what MongoDB keeps). Every method may raise :class:`bot.errors.StoreUnavailable` when the
database cannot be reached; no other driver exception escapes an adapter.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from bot.core.consent import ConsentRecord
from bot.core.conversation import Conversation, Step, Timer, Transition
from bot.core.frozen import quick_init
from bot.core.messages import (
    Category,
    DeliveryStatus,
    ErrorInfo,
    Inbound,
    Outbound,
    PreferenceUpdate,
    StatusUpdate,
)


def millis(value: datetime) -> datetime:
    """``value`` in UTC truncated to the millisecond: what an adapter keeps and returns. A naive
    datetime is a ``ValueError`` (the store takes timezone-aware times only)."""
    if value.tzinfo is UTC and not value.microsecond % 1000:
        return value  # already what the store keeps (the service's clock gives such times)
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value.isoformat()}: the store takes timezone-aware UTC times")
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def millis_opt(value: datetime | None) -> datetime | None:
    """:func:`millis` of a time that may be missing."""
    return None if value is None else millis(value)


_LEAVES = frozenset({str, int, float, bool, type(None)})


def stored(value: Any) -> Any:
    """A deep copy of a document as a BSON round trip returns it: tuples become lists, datetimes are
    UTC milliseconds (hashes over it survive the trip)."""
    kind = type(value)  # exact types first: this runs on every memory-store write and read
    if kind in _LEAVES:
        return value
    if kind is dict:  # leaves inline: most values of a document are strings and numbers
        return {k: v if type(v) in _LEAVES else stored(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [v if type(v) in _LEAVES else stored(v) for v in value]
    if isinstance(value, datetime):
        return millis(value)
    if isinstance(value, dict):
        return {k: stored(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [stored(v) for v in value]
    return value


# --- inbox ---------------------------------------------------------------------------------------
class InboxKind(StrEnum):
    MESSAGE = "message"  # event: Inbound
    STATUS = "status"  # event: StatusUpdate
    PREFERENCE = "preference"  # event: PreferenceUpdate


InboxEvent = Inbound | StatusUpdate | PreferenceUpdate


@quick_init
@dataclass(frozen=True, slots=True)
class InboxEntry:
    """One inbound event waiting to be processed. ``id`` is Meta's id (wamid for messages,
    ``wamid:status`` for statuses, ``PreferenceUpdate.key`` for preferences): the deduplication key.

    ``event`` is the parsed value itself (its type matches ``kind``); a store that keeps documents
    writes ``event.to_doc()`` and reads it back with the matching ``from_doc``."""

    id: str
    conversation_key: str
    kind: InboxKind
    timestamp: int  # Meta's timestamp (unix seconds): the processing order within a conversation
    received_at: datetime
    event: InboxEvent
    attempts: int = 0


class Inbox(ABC):
    """Durable queue of inbound events, deduplicated by id.

    An entry is *pending* until ``mark_done``. Entries are never processed out of order within one
    conversation: ``pending`` returns them by (timestamp, insertion order).
    """

    @abstractmethod
    async def put(self, entries: Sequence[InboxEntry]) -> int:
        """Store entries whose id is new; absorb duplicates silently. Returns how many were new.
        When this returns, the new entries are durable (the webhook may answer 200)."""

    @abstractmethod
    async def pending(self, conversation_key: str, limit: int = 100) -> list[InboxEntry]:
        """Pending entries of one conversation, oldest first."""

    @abstractmethod
    async def pending_keys(self, limit: int = 100, not_after: datetime | None = None) -> list[str]:
        """Distinct conversation keys that have pending entries, the oldest-waiting first. With
        ``not_after``, only entries received at or before it count (lets a poller skip fresh work
        another process is already handling)."""

    @abstractmethod
    async def mark_done(self, ids: Sequence[str], now: datetime) -> None:
        """Mark entries processed (idempotent; unknown ids are ignored). Processed entries are kept until
        retention removes them."""

    @abstractmethod
    async def bump_attempts(self, entry_id: str) -> int:
        """Count a failed processing attempt; returns the new count (poison-message detection).
        Raises :class:`bot.errors.NotFound` for an unknown or erased id."""

    @abstractmethod
    async def count_pending(self) -> int:
        """How many entries are pending (the inbox lag metric)."""

    @abstractmethod
    async def erase_conversation(self, conversation_key: str, now: datetime) -> int:
        """Erasure: drop what every entry of one conversation holds (the event, the conversation key),
        processed or not, and count them as processed. Only their ids stay, so a late redelivery of
        the same event is still absorbed as a duplicate (retention removes the ids like any processed
        entry). Returns how many entries held an event."""

    @abstractmethod
    async def erase_statuses(self, subjects: Sequence[str], now: datetime) -> int:
        """Erasure: the same for the delivery statuses of messages sent to any of ``subjects`` (their
        ``subject`` or ``recipient``; statuses are queued per business number, not per conversation).
        Returns how many entries held a status."""


# --- conversations and steps ---------------------------------------------------------------------
@quick_init
@dataclass(frozen=True, slots=True)
class Lease:
    """The result of :meth:`Conversations.acquire`."""

    acquired: bool
    conversation: Conversation | None  # None: no conversation yet (first contact), or not acquired


@quick_init
@dataclass(frozen=True, slots=True)
class ConversationQuery:
    """Filters for the console list. Empty fields do not filter; set fields combine with AND.

    ``text`` is a case-insensitive prefix of the subject, the wa_id, the profile name or any word of
    the profile name. ``purpose``/``purpose_state`` look at the consent cached on the conversation:
    ``purpose`` alone matches conversations that recorded that purpose, ``purpose_state`` alone those
    with any purpose in that state, both together that purpose in that state (a purpose never recorded
    matches neither). ``updated_after``/``updated_before`` are exclusive bounds. Results are ordered
    by ``updated_at`` desc."""

    text: str = ""
    phone_number_id: str = ""
    state: str = ""
    flow_id: str = ""
    purpose: str = ""
    purpose_state: str = ""
    needs_person: bool | None = None
    paused: bool | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None


class Conversations(ABC):
    """Conversation heads, with a per-conversation lease (the lock) and optimistic versions."""

    @abstractmethod
    async def acquire(self, key: str, owner: str, now: datetime, lease_seconds: float) -> Lease:
        """Take the conversation's lease if it is free or expired, and load the head *after* taking it.
        A conversation that does not exist yet is leased too (``conversation`` is ``None``) so first
        contacts are serialised as well. Re-acquiring a lease one already holds extends it. A lease is
        free when nobody holds it or its ``until`` is ``<= now``."""

    async def acquire_waiting(
        self, key: str, owner: str, clock: Callable[[], datetime], lease_seconds: float, tries: int, pause: float = 0.2
    ) -> Lease:
        """:meth:`acquire`, tried up to ``tries`` times ``pause`` seconds apart while another owner holds
        the lease (a dispatcher finishing the conversation's turn). Returns the last answer."""
        lease = await self.acquire(key, owner, clock(), lease_seconds)
        for _ in range(tries - 1):
            if lease.acquired:
                break
            await asyncio.sleep(pause)
            lease = await self.acquire(key, owner, clock(), lease_seconds)
        return lease

    @abstractmethod
    async def release(self, key: str, owner: str) -> None:
        """Give the lease back (no-op when ``owner`` does not hold it). Releasing the lease of a
        conversation that was never committed (first contact with no step) leaves no trace of it."""

    @abstractmethod
    async def get(self, key: str) -> Conversation | None:
        """The committed head, or ``None`` (never committed, or erased)."""

    @abstractmethod
    async def find(self, query: ConversationQuery, skip: int = 0, limit: int = 50) -> list[Conversation]:
        """Console search; every filter combination is served by an index in the MongoDB adapter."""

    @abstractmethod
    async def count(self, query: ConversationQuery) -> int: ...

    @abstractmethod
    async def by_subject(self, subject: str) -> list[Conversation]:
        """All conversations of one customer (matches ``subject`` or ``wa_id``), ordered by key."""

    @abstractmethod
    async def count_by_state(self, flow_id: str) -> dict[tuple[str, str], int]:
        """{(flow_version, state): count} for one flow."""

    @abstractmethod
    async def due_timers(self, now: datetime, limit: int = 100) -> list[tuple[str, Timer]]:
        """(conversation key, timer) pairs with ``timer.due <= now``, earliest first (ties by key)."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Erase a conversation head (erasure), lease included."""


class StepLog(ABC):
    """The atomic commit of one conversation step and the append-only history it leaves."""

    @abstractmethod
    async def commit(
        self, step: Step, owner: str, lease_seconds: float = 30.0, release: bool = True
    ) -> list[str]:
        """Commit ``step`` as one unit, or nothing of it:

        - the head moves from version ``step.seq - 1`` (``0`` = did not exist) to ``step.conversation``
          (whose ``version == step.seq``, else ``ValueError``); if the stored head is at another
          version, or ``owner`` no longer holds the lease, raise :class:`bot.errors.StaleVersion` and
          change nothing. ``owner`` holds the lease while it is the lease's recorded owner: an expired
          lease nobody has taken since still counts (the version check already proves nobody else
          committed); a lease another owner took, a released lease, or none (no ``acquire``) does not;
        - one history record (seq, at, cause, cause_id, transitions, notes) is appended;
        - transcript entries: one per ``step.inbound`` message (direction ``in``) and one per
          ``step.outbox`` message (direction ``out``), created already claimed: state SENDING, leased
          to ``owner`` for ``lease_seconds`` from ``step.at`` (so the committer sends them at once with
          no claim round trip, and a recovery worker takes them over only if the committer dies);
        - consent events are chained per subject (``bot.core.consent.chain``) and appended;
        - ``step.notices`` are stored where the privacy store's ``Notices`` reads them, insert-only and
          idempotent by (version, locale, sha256) like ``Notices.put``; a notice whose ``sha256`` is
          not the hash of its text raises :class:`bot.store.privacy.InvalidRecord` before anything is
          written;
        - ``step.inbox_ids`` are marked done. This part may lag (be batched) because the head's
          ``consumed`` list already records them; ``Inbox.pending`` may briefly still return them, so
          a dispatcher skips pending entries whose id is in ``conversation.consumed``.

        With ``release`` the conversation lease is given back in the same write as the head; without
        it the lease is extended to ``step.at + lease_seconds``. Transcript ids are
        ``f"{step.id}/in/{i}"`` and ``f"{step.id}/out/{i}"``. Returns the ids of the outbound
        entries, in order.

        A commit whose outcome is unknown (connection lost while committing) raises
        :class:`bot.errors.StoreUnavailable`: it either landed whole or not at all, and the reloaded
        head's ``consumed`` list tells which."""

    @staticmethod
    def entries(step: Step) -> list[TranscriptEntry]:
        """The transcript entries :meth:`commit` writes for ``step``: inbound first, then outbound
        (SENDING, ``sent_by="flow"``), all with the conversation's subject and ``at = step.at``."""
        conv = step.conversation
        sid, key, subject, seq, at = step.id, conv.key, conv.subject, step.seq, step.at
        entries = [
            TranscriptEntry(f"{sid}/in/{i}", key, subject, "in", seq, at, inbound=msg)
            for i, msg in enumerate(step.inbound)
        ]
        entries.extend(
            TranscriptEntry(
                f"{sid}/out/{i}", key, subject, "out", seq, at, outbound=msg, out_state=OutState.SENDING,
                sent_by="flow",
            )
            for i, msg in enumerate(step.outbox)
        )
        return entries

    @abstractmethod
    async def history(self, key: str, after_seq: int = 0, limit: int = 200) -> list[StepRecord]:
        """The conversation's steps in order (seq > ``after_seq``)."""

    @abstractmethod
    async def delete(self, key: str) -> int:
        """Erase a conversation's history (erasure). Returns how many records were removed."""


@quick_init
@dataclass(frozen=True, slots=True)
class StepRecord:
    key: str
    seq: int
    at: datetime
    cause: str
    cause_id: str
    transitions: tuple[Transition, ...]
    state: str
    notes: tuple[str, ...] = ()

    @classmethod
    def of(cls, step: Step) -> StepRecord:
        """The history record ``step`` leaves."""
        return cls(
            key=step.conversation.key,
            seq=step.seq,
            at=step.at,
            cause=str(step.cause),
            cause_id=step.cause_id,
            transitions=step.transitions,
            state=step.conversation.state,
            notes=step.notes,
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "seq": self.seq,
            "at": self.at,
            "cause": self.cause,
            "cause_id": self.cause_id,
            "transitions": [{"trigger": t.trigger, "source": t.source, "dest": t.dest} for t in self.transitions],
            "state": self.state,
            "notes": list(self.notes),
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> StepRecord:
        return cls(
            key=doc["key"],
            seq=doc["seq"],
            at=doc["at"],
            cause=doc["cause"],
            cause_id=doc["cause_id"],
            transitions=tuple(Transition(**t) for t in doc["transitions"]),
            state=doc["state"],
            notes=tuple(doc.get("notes", ())),
        )


# --- transcript and outbox -----------------------------------------------------------------------
class OutState(StrEnum):
    """Life of an outbound transcript entry. Pending entries are the outbox."""

    PENDING = "pending"
    SENDING = "sending"  # claimed by a worker (leased)
    ACCEPTED = "accepted"  # Graph API answered with a wamid; delivery states follow from webhooks
    BLOCKED = "blocked"  # the send gate refused it (``reason``)
    FAILED = "failed"  # permanent failure (``error``)


@quick_init
@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One message in or out. Outbound entries carry the outbox state and delivery status."""

    id: str
    key: str  # conversation key
    subject: str
    direction: str  # "in" | "out"
    seq: int  # the step that wrote it
    at: datetime
    inbound: Inbound | None = None
    outbound: Outbound | None = None
    out_state: OutState | None = None
    wamid: str = ""
    delivery: DeliveryStatus | None = None
    delivery_at: datetime | None = None
    reason: str = ""  # gate block reason or failure text
    error: ErrorInfo | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None
    sent_by: str = ""  # "flow", "agent:<name>", "broadcast:<id>"
    statuses: tuple[tuple[str, datetime], ...] = field(default_factory=tuple)


@quick_init
@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What happened to one outbox entry, for :meth:`Transcript.settle`."""

    state: OutState
    wamid: str = ""
    reason: str = ""
    error: ErrorInfo | None = None
    retry_at: datetime | None = None  # with state PENDING: try again at this time


IN_DOUBT = "in_doubt"  # Transcript.claim: the previous holder's attempt may have reached Meta


class Transcript(ABC):
    """Messages in and out, the outbox (pending outbound entries) and delivery statuses."""

    @abstractmethod
    async def add_outbound(
        self, key: str, subject: str, message: Outbound, at: datetime, sent_by: str, entry_id: str
    ) -> bool:
        """Queue an outbound message outside a conversation step (agent reply, campaign). ``entry_id``
        is the caller's idempotency key: a second call with the same id adds nothing and returns False."""

    @abstractmethod
    async def claim(
        self, owner: str, now: datetime, lease_seconds: float, limit: int = 50, entry_ids: Sequence[str] = ()
    ) -> list[TranscriptEntry]:
        """Claim pending outbound entries (``next_attempt_at`` unset or due) and those whose SENDING
        lease has expired (``until <= now``); mark them SENDING for ``lease_seconds``. With
        ``entry_ids`` only those are considered. Two owners never hold the same entry at once.
        Earliest due first (ties in transcript order): a new entry is due at its ``at``, a re-queued
        one at its ``retry_at`` (or when it was re-queued), a SENDING entry when its lease ends.

        An entry taken over from an expired SENDING lease comes back with ``reason`` =
        :data:`IN_DOUBT` (and keeps it in the store until settled): its holder stopped in the middle
        of an attempt that may have reached Meta, so it must not be sent again blindly."""

    @abstractmethod
    async def settle(self, entry_id: str, owner: str, outcome: SendOutcome, now: datetime) -> bool:
        """Record the outcome of a send attempt. Only the current lease holder (the recorded owner of
        a SENDING entry, as for conversations) may settle; returns False (and changes nothing)
        otherwise. Every settle counts an attempt. ACCEPTED records the wamid with delivery
        ACCEPTED at ``now`` (what :meth:`count_sent_since` counts); BLOCKED keeps ``reason``; FAILED
        keeps ``error``/``reason``; PENDING re-queues at ``retry_at`` (or at once) keeping the last
        ``error``/``reason``. ``outcome.state == SENDING`` is a ``ValueError``."""

    @abstractmethod
    async def apply_status(self, update: StatusUpdate, at: datetime) -> TranscriptEntry | None:
        """Apply a delivery status to the entry with that wamid. Monotonic: never downgrades
        (sent < delivered < read < played); FAILED is terminal (and keeps the first of its errors in
        ``error``); UNKNOWN never changes ``delivery``. ``delivery_at`` is the ``at`` of the status
        that set ``delivery``. Every status is appended to ``statuses`` as ``(status, at)`` in arrival
        order. Returns the updated entry, or None for an unknown wamid."""

    @abstractmethod
    async def adopt(self, entry_id: str, wamid: str, now: datetime) -> bool:
        """Meta accepted an outbound entry whose send outcome was unknown to us (a status webhook names
        it through ``biz_opaque_callback_data``): record it ACCEPTED with ``wamid`` whoever holds its
        lease, so it is never sent again. Only a PENDING or SENDING entry without a wamid changes;
        returns whether it did."""

    @abstractmethod
    async def by_wamid(self, wamid: str) -> TranscriptEntry | None: ...

    @abstractmethod
    async def for_conversation(
        self, key: str, after: datetime | None = None, limit: int = 500
    ) -> list[TranscriptEntry]:
        """A conversation's transcript in time order (``at > after``); within one step, inbound
        entries first, then outbound, each in order."""

    @abstractmethod
    async def count_sent_since(self, subject: str, category: Category, since: datetime) -> int:
        """How many messages of ``category`` were accepted for ``subject`` at or after ``since``
        (frequency cap). ``subject`` is the entry's subject (the conversation's)."""

    @abstractmethod
    async def delete(self, key: str) -> int:
        """Erase a conversation's transcript (erasure)."""


# --- consent ledger ------------------------------------------------------------------------------
class ConsentLedger(ABC):
    """Append-only, per-subject hash-chained consent events (see ``bot.core.consent``)."""

    @abstractmethod
    async def append(self, events: Sequence[Any]) -> list[ConsentRecord]:
        """Chain and append ``ConsentEventDraft`` values outside a step (Meta signals, agents), in
        order. Concurrent appends for one subject never fork its chain. Returns the records in the
        order of ``events``."""

    @abstractmethod
    async def history(self, subject: str) -> list[ConsentRecord]:
        """A subject's chain in seq order."""

    @abstractmethod
    async def subjects(self) -> list[str]:
        """Every subject with at least one event, sorted."""

    @abstractmethod
    async def delete(self, subject: str) -> int:
        """Remove a subject's whole chain (erasure, once the proof is copied to the blocked store).
        Returns how many events were removed. The only removal the ledger allows."""


# --- the bundle ----------------------------------------------------------------------------------
class Store(ABC):
    """All ports of one database, plus its lifecycle."""

    inbox: Inbox
    conversations: Conversations
    steps: StepLog
    transcript: Transcript
    ledger: ConsentLedger

    @abstractmethod
    async def open(self) -> None:
        """Connect and create every index (idempotent)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> bool:
        """True when the database answers (readiness); False, never an exception, when it does not."""
