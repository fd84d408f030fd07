"""The webhook's sink: parsed notifications become durable inbox entries, then the dispatcher is told.

The webhook answers 200 only after :meth:`InboxWriter.accept` returns, i.e. after every event is in the
inbox. Nothing here waits for flow logic or the Graph API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Protocol

from bot.core.conversation import conversation_key
from bot.core.messages import Inbound, PreferenceUpdate, StatusUpdate
from bot.runtime.clock import utc_now
from bot.runtime.metrics import Metrics
from bot.store.base import Inbox, InboxEntry, InboxKind

log = logging.getLogger("consentbot.inbox")

STATUS_KEY_PREFIX = "status:"
ERROR_SIGNAL = "error_131050:"  # PreferenceUpdate.detail prefix of a withdrawal Meta signalled by error 131050


class NotificationLike(Protocol):
    """The parsed webhook (``bot.whatsapp.payloads.Notification``)."""

    @property
    def messages(self) -> tuple[Inbound, ...]: ...
    @property
    def statuses(self) -> tuple[StatusUpdate, ...]: ...
    @property
    def preferences(self) -> tuple[PreferenceUpdate, ...]: ...


def status_key(phone_number_id: str) -> str:
    """Statuses are not ordered per conversation (they are monotonic by wamid): one queue per number."""
    return f"{STATUS_KEY_PREFIX}{phone_number_id}"


def entries_for(notification: NotificationLike, now: datetime) -> list[InboxEntry]:
    """Turn a parsed notification into inbox entries keyed by Meta's ids (the deduplication keys)."""
    out: list[InboxEntry] = []
    for m in notification.messages:
        out.append(
            InboxEntry(
                id=m.id,
                conversation_key=conversation_key(m.phone_number_id, m.subject),
                kind=InboxKind.MESSAGE,
                timestamp=m.timestamp,
                received_at=now,
                event=m,
            )
        )
    for s in notification.statuses:
        out.append(
            InboxEntry(
                id=s.key,
                conversation_key=status_key(s.phone_number_id),
                kind=InboxKind.STATUS,
                timestamp=s.timestamp,
                received_at=now,
                event=s,
            )
        )
    for p in notification.preferences:
        out.append(
            InboxEntry(
                id=p.key,
                conversation_key=conversation_key(p.phone_number_id, p.subject),
                kind=InboxKind.PREFERENCE,
                timestamp=p.timestamp,
                received_at=now,
                event=p,
            )
        )
    return out


def consent_error_entry(key: str, subject: str, message_ref: str, timestamp: int, now: datetime) -> InboxEntry:
    """Meta refused a marketing message with 131050 (the customer stopped marketing in WhatsApp):
    queue the withdrawal as its own step on the conversation, durably and in order."""
    phone_number_id = key.split(":", 1)[0]
    signal = PreferenceUpdate(
        phone_number_id=phone_number_id,
        subject=subject,
        category="marketing_messages",
        value="stop",
        timestamp=timestamp,
        detail=f"{ERROR_SIGNAL}{message_ref}",
    )
    return InboxEntry(
        id=f"131050:{message_ref}",
        conversation_key=key,
        kind=InboxKind.PREFERENCE,
        timestamp=timestamp,
        received_at=now,
        event=signal,
    )


class InboxWriter:
    """Implements the webhook sink: store, then notify (non-blocking) whoever processes the keys."""

    def __init__(
        self,
        inbox: Inbox,
        metrics: Metrics,
        notify: Callable[[Iterable[str]], None],
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.inbox = inbox
        self.metrics = metrics
        self.notify = notify
        self.clock = clock

    async def accept(self, notification: NotificationLike) -> None:
        entries = entries_for(notification, self.clock())
        if not entries:
            return
        new = await self.inbox.put(entries)
        for e in entries:
            self.metrics.inbound.inc(kind=e.kind.value)
        if new < len(entries):
            log.info("duplicate deliveries absorbed", extra={"duplicates": len(entries) - new})
        keys = [e.conversation_key for e in entries]
        self.notify(keys if len(keys) == 1 else dict.fromkeys(keys))
