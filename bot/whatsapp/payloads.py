"""Inbound: webhook JSON -> :mod:`bot.core.messages` values (pure: no I/O, no clock).

:func:`parse_notification` walks *every* ``entry[] -> changes[] -> messages[] / statuses[] / errors[] /
user_preferences[]`` (never ``[0]``). It raises :class:`~bot.errors.PayloadError` only when the top level
is not a WhatsApp notification; any shape problem inside an entry skips that one item and is recorded
in :attr:`Notification.problems` (path + reason), so one odd item never loses its neighbours.

Customers are keyed by BSUID (``from_user_id`` / ``contacts[].user_id``) when Meta sends one, else by
wa_id (digits, ``+`` stripped); the wa_id is kept as an alias. Contacts are matched by id, not position.
Unknown message types are kept (kind ``UNKNOWN``, raw object in ``data['raw']``), never dropped.

The outbound half (Graph API bodies and limits) lives in :mod:`bot.whatsapp.outgoing` and is
re-exported here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.core.frozen import quick_init
from bot.core.messages import (
    DeliveryStatus,
    ErrorInfo,
    Inbound,
    InboundKind,
    NotificationError,
    PreferenceUpdate,
    StatusUpdate,
)
from bot.errors import PayloadError
from bot.whatsapp.outgoing import JSON_OBJECT, LIMITS, check_body, mark_read_body, message_body, recipient_fields

__all__ = [
    "LIMITS",
    "Notification",
    "check_body",
    "mark_read_body",
    "message_body",
    "parse_notification",
    "parse_raw",
    "recipient_fields",
]

OBJECT = "whatsapp_business_account"
MAX_DEPTH = 32  # raw objects kept in ``data`` are cut below this depth (hostile nesting)
_MAX_TIMESTAMP = 2**63 - 1
_MEDIA = {
    "image": InboundKind.IMAGE,
    "audio": InboundKind.AUDIO,
    "video": InboundKind.VIDEO,
    "document": InboundKind.DOCUMENT,
    "sticker": InboundKind.STICKER,
}
_MEDIA_KEYS = ("id", "mime_type", "sha256", "caption", "filename", "voice", "animated", "url")
_STATUSES = {
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "played": DeliveryStatus.PLAYED,
    "failed": DeliveryStatus.FAILED,
}


@quick_init
@dataclass(frozen=True, slots=True)
class Notification:
    """Everything one webhook POST carried, flattened across entries and changes."""

    messages: tuple[Inbound, ...] = ()
    statuses: tuple[StatusUpdate, ...] = ()
    preferences: tuple[PreferenceUpdate, ...] = ()
    errors: tuple[NotificationError, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when there is nothing to act on (problems alone do not count)."""
        return not (self.messages or self.statuses or self.preferences or self.errors)


class _Skip(Exception):
    """One item is malformed: skip it and record why."""


def parse_raw(raw: bytes) -> Notification:
    """Decode the raw webhook body (UTF-8 JSON) and parse it; :class:`PayloadError` if not JSON."""
    try:
        body = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"webhook body is not valid JSON: {type(exc).__name__}") from None
    return parse_notification(body)


def parse_notification(body: object) -> Notification:
    """Parse a decoded webhook body. Only :class:`PayloadError` escapes (top level is not WhatsApp)."""
    if not isinstance(body, JSON_OBJECT):
        raise PayloadError(f"webhook body: expected a JSON object, got {type(body).__name__}")
    if body.get("object") != OBJECT:
        raise PayloadError(f"webhook body: object is {_short(body.get('object'))}, expected {OBJECT!r}")
    entries = body.get("entry")
    if not isinstance(entries, list):
        raise PayloadError("webhook body: entry must be an array")
    out = _Collector()
    for i, entry in enumerate(entries):
        if not isinstance(entry, JSON_OBJECT):
            out.problem(f"entry[{i}]", "not an object")
            continue
        changes = entry.get("changes")
        if not isinstance(changes, list):
            out.problem(f"entry[{i}].changes", "missing or not an array")
            continue
        for j, change in enumerate(changes):
            try:
                _change(out, i, j, change)
            except (_Skip, RecursionError) as exc:  # defensive: a whole change is unreadable
                out.problem(f"entry[{i}].changes[{j}]", str(exc) or type(exc).__name__)
    return out.build()


class _Collector:
    __slots__ = ("errors", "messages", "preferences", "problems", "statuses")

    def __init__(self) -> None:
        self.messages: list[Inbound] = []
        self.statuses: list[StatusUpdate] = []
        self.preferences: list[PreferenceUpdate] = []
        self.errors: list[NotificationError] = []
        self.problems: list[str] = []

    def problem(self, where: str, why: str) -> None:
        self.problems.append(f"{where}: {why}")

    def build(self) -> Notification:
        return Notification(
            tuple(self.messages), tuple(self.statuses), tuple(self.preferences), tuple(self.errors),
            tuple(self.problems),
        )


def _change(out: _Collector, i: int, j: int, change: object) -> None:
    """Parse ``entry[i].changes[j]`` (``where``: how a problem report names it)."""
    where = f"entry[{i}].changes[{j}]"
    if not isinstance(change, JSON_OBJECT):
        raise _Skip("not an object")
    field = change.get("field")
    if field not in ("messages", "user_preferences"):
        out.problem(where, f"field {_short(field)} ignored")
        return
    value = change.get("value")
    if not isinstance(value, JSON_OBJECT):
        raise _Skip("value missing or not an object")
    metadata = value.get("metadata")
    pnid = metadata.get("phone_number_id") if isinstance(metadata, JSON_OBJECT) else None
    if not isinstance(pnid, str) or not pnid:
        raise _Skip("value.metadata.phone_number_id missing")
    contacts = _Contacts(value.get("contacts"))
    for key, handler in (
        ("messages", _message),
        ("statuses", _status),
        ("errors", _error_item),
        ("user_preferences", _preference),
    ):
        items = value.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            out.problem(f"{where}.value.{key}", "not an array")
            continue
        for k, item in enumerate(items):
            try:
                handler(out, pnid, contacts, item)
            except _Skip as exc:
                out.problem(f"{where}.value.{key}[{k}]", str(exc))
            except RecursionError:
                out.problem(f"{where}.value.{key}[{k}]", "nested too deeply")


# --- contacts ------------------------------------------------------------------------------------
class _Contacts:
    """``value.contacts[]`` indexed by wa_id and by BSUID (never by position)."""

    __slots__ = ("by_user", "by_wa")

    def __init__(self, raw: object) -> None:
        self.by_wa: dict[str, Mapping[str, Any]] = {}
        self.by_user: dict[str, Mapping[str, Any]] = {}
        if not isinstance(raw, list):
            return
        for c in raw:
            if not isinstance(c, JSON_OBJECT):
                continue
            wa = _wa_id(c.get("wa_id"))
            if wa:
                self.by_wa[wa] = c
            uid = _user_id(c.get("user_id"))
            if uid:
                self.by_user[uid] = c

    def find(self, wa_id: str | None, user_id: str | None) -> Mapping[str, Any]:
        if user_id and user_id in self.by_user:
            return self.by_user[user_id]
        if wa_id and wa_id in self.by_wa:
            return self.by_wa[wa_id]
        return {}


def _identity(contacts: _Contacts, wa_raw: object, user_raw: object) -> tuple[str, str | None, str | None,
                                                                               Mapping[str, Any]]:
    """(subject, wa_id, user_id, contact) or :class:`_Skip` when there is no usable id."""
    wa = _wa_id(wa_raw)
    uid = _user_id(user_raw)
    contact = contacts.find(wa, uid)
    if not uid:
        uid = _user_id(contact.get("user_id"))
    if not wa:
        wa = _wa_id(contact.get("wa_id"))
    subject = uid or wa
    if not subject:
        raise _Skip("no usable sender id (wa_id or BSUID)")
    return subject, wa, uid, contact


def _wa_id(raw: object) -> str | None:
    if not isinstance(raw, str):
        return None
    digits = raw.strip().lstrip("+")
    if digits.isascii() and digits.isdigit() and 1 <= len(digits) <= 20:
        return digits
    return None


def _user_id(raw: object) -> str | None:
    if isinstance(raw, str):
        value = raw.strip()
        if 0 < len(value) <= 256 and value.isascii() and " " not in value:
            return value
    return None


# --- messages ------------------------------------------------------------------------------------
def _message(out: _Collector, pnid: str, contacts: _Contacts, m: object) -> None:
    if not isinstance(m, JSON_OBJECT):
        raise _Skip("not an object")
    wamid = m.get("id")
    if not isinstance(wamid, str) or not wamid:
        raise _Skip("id missing")
    timestamp = _timestamp(m.get("timestamp"))
    subject, wa, uid, contact = _identity(contacts, m.get("from"), m.get("from_user_id"))
    profile = contact.get("profile")
    name = profile.get("name") if isinstance(profile, JSON_OBJECT) else None
    fields: dict[str, Any] = {
        "id": wamid,
        "phone_number_id": pnid,
        "subject": subject,
        "timestamp": timestamp,
        "wa_id": wa,
        "user_id": uid,
        "profile_name": name if isinstance(name, str) else None,
    }
    data: dict[str, Any] = {}
    if isinstance(profile, JSON_OBJECT) and isinstance(profile.get("username"), str):
        data["username"] = profile["username"]
    context = m.get("context")
    if isinstance(context, JSON_OBJECT):
        cid = context.get("id")
        fields["context_id"] = cid if isinstance(cid, str) and cid else None
        fields["forwarded"] = context.get("forwarded") is True or context.get("frequently_forwarded") is True
        if context.get("frequently_forwarded") is True:
            data["frequently_forwarded"] = True
        if isinstance(context.get("referred_product"), Mapping):
            data["referred_product"] = _plain(context["referred_product"])
        if isinstance(context.get("from"), str):
            data["context_from"] = context["from"]
    referral = m.get("referral")
    if isinstance(referral, JSON_OBJECT):
        fields["referral"] = _plain(referral)
    errors = m.get("errors")
    if isinstance(errors, list):
        fields["errors"] = _error_infos(out, errors)
    kind, extra = _content(m)
    fields["kind"] = kind
    data.update(extra.pop("data", {}))
    fields.update(extra)
    fields["data"] = data
    out.messages.append(Inbound(**fields))


def _content(m: Mapping[str, Any]) -> tuple[InboundKind, dict[str, Any]]:
    """(kind, extra Inbound fields incl. ``data``) for the type-specific object of a message."""
    mtype = m.get("type")
    obj = m.get(mtype) if isinstance(mtype, str) else None
    obj = obj if isinstance(obj, JSON_OBJECT) else {}
    if mtype == "text":
        return InboundKind.TEXT, {"text": _str(obj.get("body"))}
    if mtype == "interactive":
        return _interactive(m, obj)
    if mtype == "button":
        text = _str(obj.get("text"))
        payload = _str(obj.get("payload")) or text
        return InboundKind.TEMPLATE_BUTTON, {"text": text, "payload": payload}
    if isinstance(mtype, str) and mtype in _MEDIA:
        data = {k: _plain(obj[k]) for k in _MEDIA_KEYS if k in obj}
        return _MEDIA[mtype], {"text": _str(obj.get("caption")), "data": data}
    if mtype == "location":
        keys = ("latitude", "longitude", "name", "address", "url")
        return InboundKind.LOCATION, {"data": {k: _plain(obj[k]) for k in keys if k in obj}}
    if mtype == "contacts":
        cards = m.get("contacts")
        return InboundKind.CONTACTS, {"data": {"contacts": _plain(cards) if isinstance(cards, list) else []}}
    if mtype == "reaction":
        emoji = _str(obj.get("emoji")) or ""
        target = _str(obj.get("message_id")) or ""
        return InboundKind.REACTION, {"data": {"message_id": target, "emoji": emoji, "removed": not emoji}}
    if mtype == "order":
        return InboundKind.ORDER, {"text": _str(obj.get("text")), "data": _plain(obj)}
    if mtype == "system":
        return InboundKind.SYSTEM, {"text": _str(obj.get("body")), "data": _plain(obj)}
    if mtype == "edit":
        inner = obj.get("message")
        inner_text = None
        if isinstance(inner, JSON_OBJECT):
            inner_obj = inner.get("text")
            inner_text = _str(inner_obj.get("body")) if isinstance(inner_obj, JSON_OBJECT) else None
            if inner_text is None:
                inner_obj = inner.get(inner.get("type")) if isinstance(inner.get("type"), str) else None
                inner_text = _str(inner_obj.get("caption")) if isinstance(inner_obj, JSON_OBJECT) else None
        data = {"original_message_id": _str(obj.get("original_message_id")) or "", "message": _plain(inner)}
        return InboundKind.EDIT, {"text": inner_text, "data": data}
    if mtype == "revoke":
        return InboundKind.REVOKE, {"data": {"original_message_id": _str(obj.get("original_message_id")) or ""}}
    if mtype in ("unsupported", "unknown"):
        sub = _str(obj.get("type")) or ""
        return InboundKind.UNSUPPORTED, {"data": {"type": sub, "raw": _plain(m)}}
    return InboundKind.UNKNOWN, {"data": {"type": _str(mtype) or "", "raw": _plain(m)}}


def _interactive(m: Mapping[str, Any], obj: Mapping[str, Any]) -> tuple[InboundKind, dict[str, Any]]:
    sub = obj.get("type")
    reply = obj.get(sub) if isinstance(sub, str) else None
    if not isinstance(reply, JSON_OBJECT):
        return InboundKind.UNKNOWN, {"data": {"type": f"interactive.{_str(sub) or ''}", "raw": _plain(m)}}
    if sub == "button_reply":
        return InboundKind.BUTTON_REPLY, {"payload": _str(reply.get("id")), "text": _str(reply.get("title"))}
    if sub == "list_reply":
        data = {"description": reply["description"]} if isinstance(reply.get("description"), str) else {}
        return InboundKind.LIST_REPLY, {
            "payload": _str(reply.get("id")),
            "text": _str(reply.get("title")),
            "data": data,
        }
    if sub == "nfm_reply":
        raw_json = reply.get("response_json")
        response: Any = None
        if isinstance(raw_json, str):
            try:
                response = _plain(json.loads(raw_json, parse_constant=_reject_constant))
            except (ValueError, RecursionError):
                response = None
        elif isinstance(raw_json, JSON_OBJECT):
            response = _plain(raw_json)
        token = response.get("flow_token") if isinstance(response, dict) else None
        data = {"response": response, "name": _str(reply.get("name")) or "", "body": _str(reply.get("body")) or ""}
        if response is None and raw_json is not None:
            data["response_error"] = "response_json is not a JSON object"
        return InboundKind.FLOW_REPLY, {
            "payload": token if isinstance(token, str) else None,
            "text": _str(reply.get("body")),
            "data": data,
        }
    return InboundKind.UNKNOWN, {"data": {"type": f"interactive.{sub}", "raw": _plain(m)}}


# --- statuses, errors, preferences ---------------------------------------------------------------
def _status(out: _Collector, pnid: str, contacts: _Contacts, s: object) -> None:
    if not isinstance(s, JSON_OBJECT):
        raise _Skip("not an object")
    wamid = s.get("id")
    if not isinstance(wamid, str) or not wamid:
        raise _Skip("id missing")
    timestamp = _timestamp(s.get("timestamp"))
    raw_status = s.get("status")
    status = _STATUSES.get(raw_status, DeliveryStatus.UNKNOWN) if isinstance(raw_status, str) else None
    if status is None:
        raise _Skip("status missing")
    recipient = _wa_id(s.get("recipient_id")) or ""
    uid = _user_id(s.get("recipient_user_id"))
    try:
        subject, _, _, _ = _identity(contacts, s.get("recipient_id"), uid)
    except _Skip:
        subject = _str(s.get("recipient_id")) or ""  # group sends: keep what Meta gave
    errors = s.get("errors")
    pricing = s.get("pricing")
    callback = s.get("biz_opaque_callback_data")
    out.statuses.append(
        StatusUpdate(
            message_id=wamid,
            phone_number_id=pnid,
            status=status,
            timestamp=timestamp,
            recipient=recipient,
            subject=subject,
            errors=_error_infos(out, errors) if isinstance(errors, list) else (),
            pricing=_plain(pricing) if isinstance(pricing, JSON_OBJECT) else None,
            callback_data=callback if isinstance(callback, str) else None,
        )
    )


def _error_item(out: _Collector, pnid: str, contacts: _Contacts, e: object) -> None:
    info = _error_info(e)
    timestamp = 0
    if isinstance(e, JSON_OBJECT) and "timestamp" in e:
        try:
            timestamp = _timestamp(e["timestamp"])
        except _Skip:
            timestamp = 0
    out.errors.append(NotificationError(phone_number_id=pnid, error=info, timestamp=timestamp))


def _preference(out: _Collector, pnid: str, contacts: _Contacts, p: object) -> None:
    if not isinstance(p, JSON_OBJECT):
        raise _Skip("not an object")
    subject, wa, _, _ = _identity(contacts, p.get("wa_id"), p.get("user_id"))
    category = p.get("category")
    value = p.get("value")
    if not isinstance(category, str) or not isinstance(value, str):
        raise _Skip("category and value must be strings")
    detail = p.get("detail")
    out.preferences.append(
        PreferenceUpdate(
            phone_number_id=pnid,
            subject=subject,
            category=category,
            value=value,
            timestamp=_timestamp(p.get("timestamp")),
            wa_id=wa,
            detail=detail if isinstance(detail, str) else "",
        )
    )


def _error_infos(out: _Collector, errors: list[Any]) -> tuple[ErrorInfo, ...]:
    infos = []
    for i, e in enumerate(errors):
        try:
            infos.append(_error_info(e))
        except _Skip as exc:
            out.problem(f"errors[{i}]", str(exc))
    return tuple(infos)


def _error_info(e: object) -> ErrorInfo:
    if not isinstance(e, JSON_OBJECT):
        raise _Skip("error is not an object")
    code = _int(e.get("code"))
    if code is None:
        raise _Skip("error code missing or not an integer")
    error_data = e.get("error_data")
    details = error_data.get("details") if isinstance(error_data, JSON_OBJECT) else error_data
    return ErrorInfo(
        code=code,
        title=_str(e.get("title")) or "",
        message=_str(e.get("message")) or "",
        details=details if isinstance(details, str) else "",
        href=_str(e.get("href")) or "",
    )


# --- scalars -------------------------------------------------------------------------------------
def _int(raw: object) -> int | None:
    """``int(str(x))`` with guards: no bools, no non-integral or non-finite floats, 64-bit range."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, float):
        if not math.isfinite(raw) or not raw.is_integer():
            return None
        raw = int(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if not (text.isascii() and text.lstrip("-").isdigit() and len(text) <= 20):
            return None
    elif not isinstance(raw, int):
        return None
    try:
        value = int(str(raw).strip())
    except ValueError:
        return None
    return value if -_MAX_TIMESTAMP <= value <= _MAX_TIMESTAMP else None


def _timestamp(raw: object) -> int:
    value = _int(raw)
    if value is None or value < 0:
        raise _Skip(f"timestamp missing or invalid ({_short(raw)})")
    return value


def _str(raw: object) -> str | None:
    return raw if isinstance(raw, str) else None


def _short(raw: object) -> str:
    """A short, safe description of a value for a problem message (never a deep repr)."""
    if raw is None or isinstance(raw, str | bool | float) or (isinstance(raw, int) and abs(raw) < 10**18):
        text = repr(raw)
    else:
        text = f"<{type(raw).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _plain(obj: object, depth: int = 0) -> Any:
    """A JSON-safe copy (dict/list/str/int/finite float/bool/None), cut below :data:`MAX_DEPTH`."""
    if obj is None or isinstance(obj, str | bool):
        return obj
    if isinstance(obj, int):
        return obj if -_MAX_TIMESTAMP <= obj <= _MAX_TIMESTAMP else None
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if depth >= MAX_DEPTH:
        return None
    if isinstance(obj, JSON_OBJECT):
        return {str(k): _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v, depth + 1) for v in obj]
    return str(obj)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # built once (json.loads with options builds one per call)
