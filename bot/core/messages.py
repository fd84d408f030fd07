"""Channel-neutral inbound and outbound message values.

``bot.whatsapp.payloads`` turns Meta's webhook JSON into these values and ``bot.whatsapp.client`` turns
:class:`Outbound` into Graph API request bodies; nothing else in the framework knows Meta's wire format.

All values are frozen and slotted. ``to_doc``/``from_doc`` give a plain-``dict`` form (JSON and BSON safe)
used by the stores; ``from_doc(to_doc(x)) == x`` holds for every value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from bot.core.frozen import quick_init


class InboundKind(StrEnum):
    """What a customer sent. ``UNKNOWN`` keeps types this version does not know yet (never dropped)."""

    TEXT = "text"
    BUTTON_REPLY = "button_reply"  # interactive reply button tapped; ``payload`` = our button id
    LIST_REPLY = "list_reply"  # interactive list row chosen; ``payload`` = our row id
    FLOW_REPLY = "nfm_reply"  # WhatsApp Flow / address message answer; ``data['response']`` parsed JSON
    TEMPLATE_BUTTON = "button"  # quick-reply button of a template; ``payload`` = payload or label
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACTS = "contacts"
    REACTION = "reaction"  # ``data['emoji']`` empty string = reaction removed
    ORDER = "order"
    SYSTEM = "system"
    EDIT = "edit"
    REVOKE = "revoke"
    UNSUPPORTED = "unsupported"
    UNKNOWN = "unknown"


@quick_init
@dataclass(frozen=True, slots=True)
class Inbound:
    """One message from a customer.

    ``subject`` is the key we know the customer by: the business-scoped user id (BSUID) when Meta sends
    one, else the WhatsApp id (digits, no ``+``). ``wa_id`` keeps the phone-number id as an alias.
    ``text`` is the body of a text, the caption of media, or the title of a tapped button/row.
    ``payload`` is the id of a tapped reply button / list row or a template button's payload: flows
    match taps by payload, never by label. ``data`` keeps the type-specific object (JSON-safe).
    """

    id: str
    phone_number_id: str
    subject: str
    timestamp: int
    kind: InboundKind
    wa_id: str | None = None
    user_id: str | None = None
    profile_name: str | None = None
    text: str | None = None
    payload: str | None = None
    context_id: str | None = None
    forwarded: bool = False
    referral: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    errors: tuple[ErrorInfo, ...] = ()

    def to_doc(self) -> dict[str, Any]:
        # Field by field: ``dataclasses.asdict`` deep-copies recursively (on the webhook's hot path).
        doc = {name: getattr(self, name) for name in _INBOUND_ORDER}
        doc["kind"] = self.kind.value
        doc["referral"] = None if self.referral is None else json_copy(self.referral)
        doc["data"] = json_copy(self.data) if self.data else {}
        doc["errors"] = [asdict(e) for e in self.errors] if self.errors else []
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Inbound:
        d = dict(doc)
        d.pop("_id", None)
        kind = d["kind"]
        d["kind"] = _INBOUND_KINDS.get(kind) or InboundKind(kind)  # the lookup first: an Enum call is slow
        errors = d.get("errors")
        d["errors"] = tuple(ErrorInfo(**e) for e in errors) if errors else ()
        return cls(**d)


@quick_init
@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error Meta reported (in a status, a message or an errors-only notification)."""

    code: int
    title: str = ""
    message: str = ""
    details: str = ""
    href: str = ""


_INBOUND_ORDER = tuple(Inbound.__dataclass_fields__)
_INBOUND_KINDS: dict[str, InboundKind] = {k.value: k for k in InboundKind}


def json_copy(value: Any) -> Any:
    """A copy of JSON-like data (dicts and lists copied, tuples become lists, leaves shared)."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_copy(v) for v in value]
    return value


class DeliveryStatus(StrEnum):
    """Status of a message we sent, as Meta reports it. Monotonic except ``FAILED`` (terminal)."""

    ACCEPTED = "accepted"  # Graph API answered 200 with a message id
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    PLAYED = "played"
    FAILED = "failed"
    UNKNOWN = "unknown"


STATUS_RANK: dict[DeliveryStatus, int] = {
    DeliveryStatus.ACCEPTED: 0,
    DeliveryStatus.SENT: 1,
    DeliveryStatus.DELIVERED: 2,
    DeliveryStatus.READ: 3,
    DeliveryStatus.PLAYED: 4,
    DeliveryStatus.FAILED: 9,
    DeliveryStatus.UNKNOWN: -1,
}


@quick_init
@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A delivery receipt for a message we sent (``message_id`` is its wamid)."""

    message_id: str
    phone_number_id: str
    status: DeliveryStatus
    timestamp: int
    recipient: str = ""
    subject: str = ""
    errors: tuple[ErrorInfo, ...] = ()
    pricing: dict[str, Any] | None = None
    callback_data: str | None = None

    @property
    def key(self) -> str:
        """Idempotency key: (wamid, status)."""
        return f"{self.message_id}:{self.status}"

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["status"] = str(self.status)
        doc["errors"] = [asdict(e) for e in self.errors]
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> StatusUpdate:
        d = dict(doc)
        d.pop("_id", None)
        d["status"] = DeliveryStatus(d["status"])
        d["errors"] = tuple(ErrorInfo(**e) for e in d.get("errors", ()))
        return cls(**d)


@quick_init
@dataclass(frozen=True, slots=True)
class PreferenceUpdate:
    """Meta's ``user_preferences`` webhook: the customer stopped or resumed marketing in WhatsApp itself."""

    phone_number_id: str
    subject: str
    category: str  # e.g. "marketing_messages"
    value: str  # "stop" | "resume"
    timestamp: int
    wa_id: str | None = None
    detail: str = ""

    @property
    def key(self) -> str:
        return f"pref:{self.subject}:{self.category}:{self.value}:{self.timestamp}"

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> PreferenceUpdate:
        d = dict(doc)
        d.pop("_id", None)
        return cls(**d)


@quick_init
@dataclass(frozen=True, slots=True)
class NotificationError:
    """An errors-only notification (account- or app-level, not tied to one message)."""

    phone_number_id: str
    error: ErrorInfo
    timestamp: int = 0


# --- outbound ------------------------------------------------------------------------------------
class OutboundKind(StrEnum):
    TEXT = "text"
    BUTTONS = "buttons"  # interactive reply buttons (<= 3)
    LIST = "list"  # interactive list (<= 10 rows in all)
    TEMPLATE = "template"  # an approved template (valid outside the 24-hour window)
    REACTION = "reaction"


class Category(StrEnum):
    """Why a message is sent; drives the send gate.

    ``SERVICE`` answers the customer inside the window; ``UTILITY`` is transactional (consent prompts and
    confirmations, receipts); ``MARKETING`` needs current consent for its ``purpose``.
    """

    SERVICE = "service"
    UTILITY = "utility"
    MARKETING = "marketing"


@quick_init
@dataclass(frozen=True, slots=True)
class Button:
    id: str
    title: str


@quick_init
@dataclass(frozen=True, slots=True)
class ListRow:
    id: str
    title: str
    description: str = ""


@quick_init
@dataclass(frozen=True, slots=True)
class ListSection:
    title: str
    rows: tuple[ListRow, ...]


@quick_init
@dataclass(frozen=True, slots=True)
class TemplateRef:
    """An approved WhatsApp template. ``components`` is the Graph API ``components`` array, as-is."""

    name: str
    language: str
    components: tuple[dict[str, Any], ...] = ()


@quick_init
@dataclass(frozen=True, slots=True)
class Outbound:
    """One message the bot wants to send to ``to`` (a subject key: BSUID or wa_id digits).

    ``fallback`` is the approved template to use when the 24-hour window has closed; without one the
    send gate blocks a free-form message outside the window.
    """

    to: str
    kind: OutboundKind
    body: str = ""
    header: str = ""
    footer: str = ""
    buttons: tuple[Button, ...] = ()
    list_button: str = ""
    sections: tuple[ListSection, ...] = ()
    template: TemplateRef | None = None
    fallback: TemplateRef | None = None
    reaction_to: str = ""
    emoji: str = ""
    reply_to: str = ""
    category: Category = Category.SERVICE
    purpose: str = ""
    template_id: str = ""  # the flow template this was rendered from (for the transcript)

    def to_doc(self) -> dict[str, Any]:
        # Field by field: ``dataclasses.asdict`` deep-copies recursively (on every commit and settle).
        doc = {name: getattr(self, name) for name in _OUTBOUND_ORDER}
        doc["kind"] = str(self.kind)
        doc["category"] = str(self.category)
        doc["buttons"] = [{"id": b.id, "title": b.title} for b in self.buttons]
        doc["sections"] = [
            {"title": s.title, "rows": [{"id": r.id, "title": r.title, "description": r.description} for r in s.rows]}
            for s in self.sections
        ]
        for key in ("template", "fallback"):
            t: TemplateRef | None = getattr(self, key)
            doc[key] = None if t is None else {
                "name": t.name, "language": t.language, "components": json_copy(t.components)
            }
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Outbound:
        d = dict(doc)
        d.pop("_id", None)
        d["kind"] = OutboundKind(d["kind"])
        d["category"] = Category(d["category"])
        d["buttons"] = tuple(Button(**b) for b in d.get("buttons", ()))
        d["sections"] = tuple(
            ListSection(title=s["title"], rows=tuple(ListRow(**r) for r in s["rows"]))
            for s in d.get("sections", ())
        )
        for key in ("template", "fallback"):
            t = d.get(key)
            if t is not None:
                d[key] = TemplateRef(
                    name=t["name"], language=t["language"], components=tuple(t.get("components", ()))
                )
        return cls(**d)


_OUTBOUND_ORDER = tuple(Outbound.__dataclass_fields__)
