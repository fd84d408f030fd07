"""What the runtime asks of the flow engine for one event, and what it gets back.

The runtime never calls the engine directly; it goes through a :class:`Decider` (``bot.runtime.flows``
binds it to the compiled flows), which keeps the dispatcher independent of flow details and lets
tests drive the runtime with the real engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from bot.core.consent import ConsentEventDraft
from bot.core.conversation import Conversation, Timer, Transition
from bot.core.frozen import quick_init
from bot.core.messages import Inbound, Outbound
from bot.core.rendering import NoticeText


@quick_init
@dataclass(frozen=True, slots=True)
class Signal:
    """A consent-relevant signal from Meta: ``marketing_stop``/``marketing_resume`` (the customer used
    WhatsApp's own control) or ``error_131050`` (Meta refused a marketing message: the customer stopped
    marketing). ``evidence`` names the webhook item that carried it."""

    kind: str
    at: datetime
    evidence: dict[str, Any] = field(default_factory=dict)


Event = Inbound | Timer | Signal


@quick_init
@dataclass(frozen=True, slots=True)
class Turn:
    """The engine's answer to one event (pure data, nothing is done yet)."""

    conversation: Conversation
    transitions: tuple[Transition, ...] = ()
    outbox: tuple[Outbound, ...] = ()
    consent: tuple[ConsentEventDraft, ...] = ()
    notices: tuple[NoticeText, ...] = ()  # notice texts shown (stored immutably by the ledger)
    requests: tuple[str, ...] = ()  # "export", "erase", "human"


class Decider(Protocol):
    def __call__(
        self, conversation: Conversation | None, event: Event, phone_number_id: str, subject: str, now: datetime
    ) -> Turn | None:
        """Decide one event. ``None`` means the event does not concern this conversation (ignored)."""
