"""Consent events (per subject and purpose) as the engine produces them.

The engine emits :class:`ConsentEventDraft` values; the ledger (``bot.store``) appends them to a
per-subject hash chain. Only an explicit act creates consent: a tap on a consent button, or an exact
confirm keyword typed in answer to a pending prompt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from bot.core.frozen import quick_init


class ConsentAction(StrEnum):
    REQUESTED = "requested"  # first "yes" (double opt-in step 1) or the prompt was shown
    CONFIRMED = "confirmed"  # the confirming tap: consent is given from here
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"  # an unconfirmed request ran out
    REFRESHED = "refreshed"  # re-confirmed after the refresh period or a major notice change
    PREFERENCES_CHANGED = "preferences_changed"
    ERASED = "erased"


class Actor(StrEnum):
    CUSTOMER = "customer"
    AGENT = "agent"
    SYSTEM = "system"
    META = "meta"  # user_preferences webhook, error 131050


@quick_init
@dataclass(frozen=True, slots=True)
class ConsentEventDraft:
    """One consent event before it is chained. ``evidence`` holds the Meta message id of the tap or
    keyword (``message_id``), the button payload, the prompt's message id (``context_id``), etc."""

    subject: str
    purpose: str
    action: ConsentAction
    at: datetime
    actor: Actor
    flow_id: str = ""
    flow_version: str = ""
    notice_version: str = ""
    notice_sha256: str = ""
    locale: str = ""
    method: str = ""  # button | list | keyword | user_preferences | status_131050 | agent | timer
    evidence: dict[str, Any] | None = None

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["action"] = str(self.action)
        doc["actor"] = str(self.actor)
        doc["evidence"] = dict(self.evidence or {})
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ConsentEventDraft:
        d = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        d["action"] = ConsentAction(d["action"])
        d["actor"] = Actor(d["actor"])
        return cls(**d)


GENESIS = "0" * 64


def canonical_json(value: Any) -> bytes:
    """A stable byte form for hashing (sorted keys, no spaces, UTF-8; datetimes as ISO-8601 UTC, ms)."""
    def default(o: Any) -> Any:
        if isinstance(o, datetime):
            # Millisecond precision in UTC: what MongoDB keeps, so a hash survives a round trip.
            aware = o if o.tzinfo is not None else o.replace(tzinfo=UTC)
            return aware.astimezone(UTC).isoformat(timespec="milliseconds")
        raise TypeError(f"not JSON-serialisable: {type(o).__name__}")

    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=default).encode()


@quick_init
@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """A chained consent event: ``hash = sha256(prev_hash || canonical(event))``, ``seq`` from 1 per subject."""

    event: ConsentEventDraft
    seq: int
    prev_hash: str
    hash: str

    def to_doc(self) -> dict[str, Any]:
        return {"event": self.event.to_doc(), "seq": self.seq, "prev_hash": self.prev_hash, "hash": self.hash}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ConsentRecord:
        return cls(ConsentEventDraft.from_doc(doc["event"]), doc["seq"], doc["prev_hash"], doc["hash"])


def event_hash(prev_hash: str, event: ConsentEventDraft) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical_json(event.to_doc())).hexdigest()


def chain(head: ConsentRecord | None, event: ConsentEventDraft) -> ConsentRecord:
    """Append ``event`` after ``head`` (``None`` for the subject's first event)."""
    prev = head.hash if head is not None else GENESIS
    seq = head.seq + 1 if head is not None else 1
    return ConsentRecord(event=event, seq=seq, prev_hash=prev, hash=event_hash(prev, event))
