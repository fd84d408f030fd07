"""Campaign storage ports: the campaigns themselves and one record per recipient.

Conventions are those of :mod:`bot.store.base` (aware UTC datetimes truncated to the millisecond; any
method may raise :class:`bot.errors.StoreUnavailable`; no driver exception escapes). One shared
contract suite (``tests/store/test_broadcasts_contract.py``) runs on the memory and MongoDB adapters.

A **recipient** record exists once per (campaign, subject): the unique key that makes a campaign
exactly-once. Its state machine::

    pending --lease--> sending --finish--> accepted | failed | excluded
       ^                  |
       +----release-------+          (excluded may also be written directly, at audience time)

``sending`` means "an attempt may have started": the runner marks recipients ``sending`` (leased to
its run, with ``attempt_at``) *before* it queues their outbox entry. A recipient still ``sending``
when a run starts is *in doubt* and is reconciled against the outbox entry
``f"broadcast:{campaign}:{subject}"`` and its receipts before anything is sent again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from bot.core.audience import TemplateDeclaration
from bot.core.conversation import Conversation
from bot.core.messages import STATUS_RANK, DeliveryStatus


class CampaignState(StrEnum):
    DRAFT = "draft"  # created, nothing sent
    RUNNING = "running"  # a run is (or was, if it crashed) sending
    CANCELLED = "cancelled"  # stopped by an operator; ``run`` resumes it
    DONE = "done"  # every recipient reached a final state


class RecipientState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # leased to a run: an attempt may have started
    ACCEPTED = "accepted"  # the Graph API accepted the message (delivery follows from receipts)
    FAILED = "failed"  # a permanent Graph error
    EXCLUDED = "excluded"  # never sent: ``reason`` is a gate Reason or an AudienceReason


FINAL_STATES = frozenset({RecipientState.ACCEPTED, RecipientState.FAILED, RecipientState.EXCLUDED})


def entry_id(campaign_id: str, subject: str) -> str:
    """The outbox entry id (and ``biz_opaque_callback_data``) of one recipient's message."""
    return f"broadcast:{campaign_id}:{subject}"


def parse_entry_id(value: str) -> tuple[str, str] | None:
    """``(campaign_id, subject)`` of a campaign outbox entry id / callback data, else ``None``."""
    if not value.startswith("broadcast:"):
        return None
    campaign, sep, subject = value.removeprefix("broadcast:").partition(":")
    return (campaign, subject) if sep and campaign and subject else None


@dataclass(frozen=True, slots=True)
class Campaign:
    """One consent-gated broadcast. ``rate`` is messages per second (1..1000) from ``phone_number_id``.
    ``locale`` "" means any language; ``segments`` are ``(key, value)`` slot filters; ``params`` map
    each template parameter to the Jinja expression rendered per recipient."""

    id: str
    name: str
    template: TemplateDeclaration
    purpose: str
    phone_number_id: str
    created_at: datetime
    updated_at: datetime
    locale: str = ""
    segments: tuple[tuple[str, str], ...] = ()
    params: Mapping[str, str] = field(default_factory=dict)
    rate: float = 80.0
    state: CampaignState = CampaignState.DRAFT
    audience_cursor: str = ""  # the last conversation key the audience scan recorded
    audience_done: bool = False  # every candidate has a recipient record
    run_owner: str = ""
    run_until: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Mapping[str, Any] = field(default_factory=dict)  # last snapshot a run saved (console)
    created_by: str = ""


@dataclass(frozen=True, slots=True)
class Recipient:
    """One customer of one campaign. ``key`` is their conversation key; ``wamid``/``delivery``/
    ``error_code`` come from the Graph answer and the status receipts."""

    campaign_id: str
    subject: str
    key: str
    state: RecipientState
    seq: int = 0  # audience order (the scan position)
    reason: str = ""
    detail: str = ""
    owner: str = ""
    attempt_at: datetime | None = None
    attempts: int = 0
    finished_at: datetime | None = None
    wamid: str = ""
    delivery: DeliveryStatus | None = None
    delivery_at: datetime | None = None
    error_code: int = 0

    @property
    def entry_id(self) -> str:
        return entry_id(self.campaign_id, self.subject)


@dataclass(frozen=True, slots=True)
class Finish:
    """A final outcome for one leased recipient (:meth:`Broadcasts.finish`)."""

    subject: str
    state: RecipientState
    reason: str = ""
    detail: str = ""
    error_code: int = 0


@dataclass(frozen=True, slots=True)
class Receipt:
    """A status webhook about a campaign message (matched by its callback data)."""

    campaign_id: str
    subject: str
    wamid: str
    status: DeliveryStatus
    at: datetime
    error_code: int = 0


@dataclass(frozen=True, slots=True)
class Tally:
    """Counts of one campaign: by recipient state, by exclusion reason, by delivery status (of the
    accepted ones) and by error code (failed sends and failed deliveries)."""

    states: Mapping[str, int] = field(default_factory=dict)
    reasons: Mapping[str, int] = field(default_factory=dict)
    delivery: Mapping[str, int] = field(default_factory=dict)
    errors: Mapping[str, int] = field(default_factory=dict)

    def state(self, state: RecipientState) -> int:
        return int(self.states.get(str(state), 0))

    @property
    def total(self) -> int:
        return sum(self.states.values())


def delivery_rank(status: DeliveryStatus | None) -> int:
    return -2 if status is None else STATUS_RANK[status]


class Broadcasts(ABC):
    """Campaigns, their recipients, and the audience query over conversations."""

    # --- campaigns -------------------------------------------------------------------------------
    @abstractmethod
    async def create(self, campaign: Campaign) -> None:
        """Store a new campaign; raises ``ValueError`` when the id exists."""

    @abstractmethod
    async def get(self, campaign_id: str) -> Campaign | None: ...

    @abstractmethod
    async def recent(self, limit: int = 100) -> list[Campaign]:
        """Campaigns, newest first."""

    @abstractmethod
    async def set_state(self, campaign_id: str, state: CampaignState, now: datetime) -> Campaign:
        """Change the state (RUNNING sets ``started_at`` if unset; DONE sets ``finished_at``).
        Raises :class:`bot.errors.NotFound` for an unknown id."""

    @abstractmethod
    async def acquire_run(self, campaign_id: str, owner: str, now: datetime, lease_seconds: float) -> bool:
        """Take (or extend) the campaign's run lease: free, expired (``run_until <= now``) or already
        ``owner``'s. One run per campaign at a time. False when another owner holds it."""

    @abstractmethod
    async def release_run(self, campaign_id: str, owner: str) -> None:
        """Give the run lease back (no-op unless ``owner`` holds it)."""

    @abstractmethod
    async def save_progress(
        self, campaign_id: str, progress: Mapping[str, Any], now: datetime, cursor: str | None = None,
        audience_done: bool | None = None,
    ) -> None:
        """Store the latest progress snapshot (JSON-safe) and, when given, the audience scan position."""

    # --- recipients ------------------------------------------------------------------------------
    @abstractmethod
    async def add_recipients(self, recipients: Sequence[Recipient]) -> int:
        """Insert recipients whose (campaign, subject) is new; existing ones are left untouched (a
        re-scan after a crash adds nobody twice). Returns how many were new."""

    @abstractmethod
    async def lease(self, campaign_id: str, owner: str, now: datetime, limit: int) -> list[Recipient]:
        """Move up to ``limit`` PENDING recipients, in audience order (``seq``), to SENDING for
        ``owner`` with ``attempt_at = now`` and ``attempts + 1``; return them."""

    @abstractmethod
    async def in_doubt(self, campaign_id: str, after_subject: str = "", limit: int = 500) -> list[Recipient]:
        """SENDING recipients (any owner) with ``subject > after_subject``, by subject."""

    @abstractmethod
    async def finish(self, campaign_id: str, finishes: Sequence[Finish], now: datetime) -> int:
        """Record final outcomes of SENDING recipients (others are left as they are: a final state is
        never overwritten). Returns how many changed."""

    @abstractmethod
    async def release(self, campaign_id: str, subjects: Sequence[str]) -> int:
        """Put SENDING recipients back to PENDING (nothing was queued for them)."""

    @abstractmethod
    async def recipient(self, campaign_id: str, subject: str) -> Recipient | None: ...

    @abstractmethod
    async def recipients(self, campaign_id: str, after_subject: str = "", limit: int = 500) -> list[Recipient]:
        """Every recipient with ``subject > after_subject``, by subject (reports page through this)."""

    @abstractmethod
    async def record_receipt(self, receipt: Receipt) -> bool:
        """Apply a status webhook to its recipient: ``wamid`` is kept (the first one), ``delivery`` only
        moves up (sent < delivered < read < played; FAILED is terminal and keeps ``error_code``).
        Works in any recipient state (a receipt may beat the runner's own write). False when there is
        no such recipient."""

    @abstractmethod
    async def tally(self, campaign_id: str) -> Tally:
        """Counts by state, exclusion reason, delivery status and error code (one query per kind)."""

    # --- the audience ----------------------------------------------------------------------------
    @abstractmethod
    async def candidates(
        self, phone_number_id: str, purpose: str, after_key: str = "", limit: int = 500
    ) -> list[Conversation]:
        """Conversations on ``phone_number_id`` that recorded consent for ``purpose`` in any state,
        with ``key > after_key``, by key (a stable order: the scan can resume from its cursor, and a
        conversation updated during the scan is neither skipped nor seen twice). Served by an index."""

    @abstractmethod
    async def open(self) -> None:
        """Create every index (idempotent)."""
