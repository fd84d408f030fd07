"""The conversation record and the step: the unit the runtime commits atomically.

A :class:`Conversation` is a plain record (never a ``transitions`` model registered per conversation):
the engine sets the state on one long-lived model per flow version, fires the trigger, and reads the
state back. ``version`` is the optimistic-concurrency counter; a :class:`Step` moves it by exactly one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from bot.core import frozen
from bot.core.consent import ConsentEventDraft
from bot.core.frozen import quick_init
from bot.core.messages import Inbound, Outbound, json_copy

if TYPE_CHECKING:  # rendering imports this module (through audience)
    from bot.core.rendering import NoticeText


def conversation_key(phone_number_id: str, subject: str) -> str:
    """The key of the conversation between one business number and one customer."""
    return f"{phone_number_id}:{subject}"


class PurposeState(StrEnum):
    """Consent status of one purpose, as cached on the conversation (the ledger is the truth)."""

    NONE = "none"  # never asked
    REQUESTED = "requested"  # first yes given, confirmation pending (double opt-in)
    GRANTED = "granted"
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"


@quick_init
@dataclass(frozen=True, slots=True)
class PurposeStatus:
    state: PurposeState
    since: datetime
    notice_version: str = ""


@quick_init
@dataclass(frozen=True, slots=True)
class Timer:
    """A durable timer: fires ``name`` as a trigger on this conversation at ``due``."""

    name: str
    due: datetime


@quick_init
@dataclass(frozen=True, slots=True)
class Conversation:
    """One customer on one business number, running one flow version."""

    key: str
    phone_number_id: str
    subject: str
    flow_id: str
    flow_version: str
    state: str
    locale: str
    created_at: datetime
    updated_at: datetime
    wa_id: str | None = None
    profile_name: str = ""
    slots: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, PurposeStatus] = field(default_factory=dict)
    window_opened_at: datetime | None = None  # time of the customer's last message (24-hour window)
    timers: tuple[Timer, ...] = ()
    paused: bool = False  # an agent has taken over: the flow does not answer
    needs_person: bool = False
    restricted: bool = False  # GDPR 18: no sends, no agent viewing except the privacy role
    consumed: tuple[str, ...] = ()  # ids of the last inbox entries this conversation processed (<= 64)
    version: int = 0

    @classmethod
    def start(
        cls,
        phone_number_id: str,
        subject: str,
        flow_id: str,
        flow_version: str,
        state: str,
        locale: str,
        now: datetime,
        wa_id: str | None = None,
        profile_name: str = "",
    ) -> Conversation:
        return cls(
            key=conversation_key(phone_number_id, subject),
            phone_number_id=phone_number_id,
            subject=subject,
            flow_id=flow_id,
            flow_version=flow_version,
            state=state,
            locale=locale,
            created_at=now,
            updated_at=now,
            wa_id=wa_id,
            profile_name=profile_name,
        )

    def granted(self, purpose: str) -> bool:
        status = self.consent.get(purpose)
        return status is not None and status.state is PurposeState.GRANTED

    def in_window(self, now: datetime, hours: int = 24) -> bool:
        """True while the customer-service window is open (their last message < 24 h ago)."""
        if self.window_opened_at is None:
            return False
        return (now - self.window_opened_at).total_seconds() < hours * 3600

    def evolve(self, **changes: Any) -> Conversation:
        return frozen.evolve(self, **changes)

    def to_doc(self) -> dict[str, Any]:
        # Field by field (``dataclasses.asdict`` deep-copies recursively and cost ~90 µs per head).
        doc = {name: getattr(self, name) for name in _CONVERSATION_ORDER}
        doc["slots"] = json_copy(self.slots)
        doc["consent"] = {
            p: {"state": str(s.state), "since": s.since, "notice_version": s.notice_version}
            for p, s in self.consent.items()
        }
        doc["timers"] = [{"name": t.name, "due": t.due} for t in self.timers]
        doc["consumed"] = list(self.consumed)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Conversation:
        d = {k: v for k, v in doc.items() if k in _CONVERSATION_FIELDS}
        d["consent"] = {
            p: PurposeStatus(PurposeState(s["state"]), s["since"], s.get("notice_version", ""))
            for p, s in d.get("consent", {}).items()
        }
        d["timers"] = tuple(Timer(t["name"], t["due"]) for t in d.get("timers", ()))
        d["consumed"] = tuple(d.get("consumed", ()))
        return cls(**d)


_CONVERSATION_ORDER = tuple(Conversation.__dataclass_fields__)
_CONVERSATION_FIELDS = frozenset(_CONVERSATION_ORDER)



class Cause(StrEnum):
    """What started a step."""

    INBOUND = "inbound"  # a customer message (cause_id = its wamid)
    TIMER = "timer"  # a durable timer fired (cause_id = timer name)
    AGENT = "agent"  # a support agent acted (cause_id = agent name)
    META = "meta"  # a signal from Meta: status failure, user_preferences (cause_id = its key)
    SYSTEM = "system"  # the framework itself (migration, retention, campaign)


@quick_init
@dataclass(frozen=True, slots=True)
class Transition:
    trigger: str
    source: str
    dest: str


@quick_init
@dataclass(frozen=True, slots=True)
class Step:
    """Everything one turn changes, committed as one unit.

    ``conversation`` is the new head; its ``version`` equals ``seq`` and the previous head's version is
    ``seq - 1``. ``inbound`` and ``outbox`` are the transcript entries in and out; ``inbox_ids`` are the
    inbox entries this step consumes (so a redelivered webhook never makes a second step); ``notices``
    are notice texts its messages show, kept (immutably) with it so consent events can refer to them.
    """

    conversation: Conversation
    seq: int
    at: datetime
    cause: Cause
    cause_id: str = ""
    transitions: tuple[Transition, ...] = ()
    inbound: tuple[Inbound, ...] = ()
    outbox: tuple[Outbound, ...] = ()
    consent: tuple[ConsentEventDraft, ...] = ()
    inbox_ids: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    notices: tuple[NoticeText, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.conversation.key}#{self.seq}"

    @classmethod
    def change(cls, head: Conversation, at: datetime, cause: Cause, cause_id: str, note: str, **changes: Any) -> Step:
        """A step that only changes the head (``changes``: its fields), with no message and no transition:
        an agent's takeover, a restriction, a timer moved by the system. Its note says why."""
        seq = head.version + 1
        return cls(
            conversation=head.evolve(**changes, version=seq, updated_at=at),
            seq=seq,
            at=at,
            cause=cause,
            cause_id=cause_id,
            notes=(note,),
        )
