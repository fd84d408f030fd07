"""Outbound: :class:`~bot.core.messages.Outbound` -> Graph API ``/messages`` request bodies (pure).

Every documented length and count limit is checked before anything is sent; a violation raises
:class:`bot.errors.LimitError` naming the wire field (e.g. ``interactive.action.buttons[1].reply.title``)
and the limit. The same checks (:func:`check_body`) run in the sandbox's fake Graph API, so a body the
sandbox accepts is one Meta would accept as far as the documented limits go.

Numbers come from the reference's limits table (send-messages pages, Sept 2026). Where Meta's pages
disagree (interactive *list* body: 4096 on the page, 1024 in Meta's SDK and older pages) the stricter
number is used. :data:`LIMITS` exposes them for the flow linter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from bot.core.messages import Outbound, OutboundKind, TemplateRef
from bot.errors import LimitError

JSON_OBJECT = (dict, Mapping)  # for isinstance: dict first (JSON gives dicts) skips the ABC machinery

LIMITS: Mapping[str, int] = MappingProxyType(
    {
        "text.body": 4096,  # plain text message
        "interactive.body": 1024,  # reply-button message body
        "list.body": 1024,  # list message body (page says 4096, SDK/older pages 1024: stricter wins)
        "interactive.header": 60,  # text header of buttons and list messages
        "interactive.footer": 60,
        "buttons.min": 1,
        "buttons.max": 3,
        "button.id": 256,
        "button.title": 20,  # unique within the message
        "list.button": 20,  # the label of the button that opens the list (required)
        "list.sections.max": 10,
        "list.rows.max": 10,  # in total, across all sections
        "list.row.id": 200,  # unique within the message
        "list.row.title": 24,
        "list.row.description": 72,
        "list.section.title": 24,  # required when there is more than one section
        "template.name": 512,
        "template.buttons.max": 10,
        "template.quick_reply.max": 10,
        "template.url.max": 2,
        "template.phone.max": 1,
        "template.copy_code.max": 1,
        "template.copy_code": 20,  # coupon code length
        "template.header": 60,  # authoring-time limits, for the flow linter
        "template.body": 1024,
        "template.footer": 60,
        "template.button.label": 25,
        "media.caption": 1024,  # unverified (SDK folklore)
        "callback_data": 512,  # biz_opaque_callback_data (unverified)
        "phone.digits.max": 15,  # E.164
    }
)

_BSUID = re.compile(r"^[A-Z]{2}\.[A-Za-z0-9.]{1,140}$")
_DIGITS = re.compile(r"^\+?[0-9]{6,15}$")
_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]+$")


# --- recipients ----------------------------------------------------------------------------------
def recipient_fields(phone_or_user: str) -> dict[str, str]:
    """``{"to": "+<digits>"}`` for a phone number (wa_id), ``{"recipient": <bsuid>}`` for a BSUID.

    A wa_id must be sent with ``+``: without it Meta prefixes the *business's* country code.
    """
    value = phone_or_user.strip() if isinstance(phone_or_user, str) else ""
    compact = value.replace(" ", "").replace("-", "")
    if _DIGITS.match(compact):
        return {"to": "+" + compact.lstrip("+")}
    if _BSUID.match(value):
        return {"recipient": value}
    raise LimitError(
        "to", "a phone number of 6-15 digits or a business-scoped user id (CC.xxxx)", repr(value[:40])
    )


# --- building ------------------------------------------------------------------------------------
def message_body(msg: Outbound, phone_or_user: str, *, callback_data: str | None = None) -> dict[str, Any]:
    """The Graph API body that sends ``msg`` to ``phone_or_user`` (wa_id digits or BSUID).

    ``msg.reply_to`` becomes ``context.message_id`` (a quoted reply) for every kind except reactions and
    templates, where Meta does not support quoting (it is dropped, as the quote would never show).
    ``callback_data`` is sent as ``biz_opaque_callback_data`` and comes back on every status webhook.
    Raises :class:`LimitError` before anything is sent when a limit is broken.
    """
    body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual"}
    body.update(recipient_fields(phone_or_user))
    kind = msg.kind
    if kind is OutboundKind.TEXT:
        body["type"] = "text"
        body["text"] = {"body": msg.body, "preview_url": "http://" in msg.body or "https://" in msg.body}
    elif kind is OutboundKind.BUTTONS:
        body["type"] = "interactive"
        inter: dict[str, Any] = {"type": "button"}
        _header_footer(inter, msg)
        inter["body"] = {"text": msg.body}
        inter["action"] = {
            "buttons": [{"type": "reply", "reply": {"id": b.id, "title": b.title}} for b in msg.buttons]
        }
        body["interactive"] = inter
    elif kind is OutboundKind.LIST:
        body["type"] = "interactive"
        inter = {"type": "list"}
        _header_footer(inter, msg)
        inter["body"] = {"text": msg.body}
        sections: list[dict[str, Any]] = []
        for s in msg.sections:
            section: dict[str, Any] = {}
            if s.title or len(msg.sections) > 1:
                section["title"] = s.title
            rows = []
            for r in s.rows:
                row = {"id": r.id, "title": r.title}
                if r.description:
                    row["description"] = r.description
                rows.append(row)
            section["rows"] = rows
            sections.append(section)
        inter["action"] = {"button": msg.list_button, "sections": sections}
        body["interactive"] = inter
    elif kind is OutboundKind.TEMPLATE:
        if msg.template is None:
            raise LimitError("template", "required for a template message", None)
        body["type"] = "template"
        body["template"] = template_object(msg.template)
    elif kind is OutboundKind.REACTION:
        body["type"] = "reaction"
        body["reaction"] = {"message_id": msg.reaction_to, "emoji": msg.emoji}
    else:  # pragma: no cover - exhaustive over OutboundKind
        raise LimitError("type", "one of text, buttons, list, template, reaction", str(kind))
    if msg.reply_to and kind not in (OutboundKind.REACTION, OutboundKind.TEMPLATE):
        body["context"] = {"message_id": msg.reply_to}
    if callback_data is not None:
        body["biz_opaque_callback_data"] = callback_data
    check_body(body)
    return body


# The parts of a body that do not depend on the recipient or the callback data.
_ENVELOPE = frozenset({"messaging_product", "recipient_type", "to", "recipient", "biz_opaque_callback_data"})
_ENVELOPE_START = b'{"messaging_product":"whatsapp","recipient_type":"individual",'
_CONTENT_CACHE_SIZE = 4096
_content_cache: dict[tuple[Any, ...], bytes] = {}


def message_payload(msg: Outbound, phone_or_user: str, *, callback_data: str | None = None) -> bytes:
    """:func:`message_body` as the UTF-8 JSON bytes the client posts, with the same checks.

    A flow sends the same prompts and notices to many customers: a text, button or list message's
    checked and serialised content is kept (bounded, keyed by every field it is built from), and only
    the recipient and the callback data are checked and encoded per call. Templates and reactions are
    built in full every time."""
    key = _content_key(msg)
    if key is None:
        return json.dumps(message_body(msg, phone_or_user, callback_data=callback_data), ensure_ascii=False).encode()
    content = _content_cache.get(key)
    if content is None:
        body = message_body(msg, phone_or_user)  # checks every limit (raises before anything is kept)
        inner = {k: v for k, v in body.items() if k not in _ENVELOPE}
        content = json.dumps(inner, ensure_ascii=False).encode()[1:-1]
        if len(_content_cache) >= _CONTENT_CACHE_SIZE:
            _content_cache.clear()
        _content_cache[key] = content
    ((field, recipient),) = recipient_fields(phone_or_user).items()
    envelope = _ENVELOPE_START + (b'"to":' if field == "to" else b'"recipient":') + json.dumps(recipient).encode()
    if callback_data is not None:
        _length({"c": callback_data}, "c", "biz_opaque_callback_data", LIMITS["callback_data"])
        envelope += b',"biz_opaque_callback_data":' + json.dumps(callback_data).encode()
    return b"%b,%b}" % (envelope, content)


def _content_key(msg: Outbound) -> tuple[Any, ...] | None:
    if msg.kind not in (OutboundKind.TEXT, OutboundKind.BUTTONS, OutboundKind.LIST):
        return None
    return (msg.kind, msg.body, msg.header, msg.footer, msg.buttons, msg.list_button, msg.sections, msg.reply_to)


def template_object(t: TemplateRef) -> dict[str, Any]:
    """The ``template`` object: name, ``language.code`` and the ``components`` array as given."""
    obj: dict[str, Any] = {"name": t.name, "language": {"code": t.language}}
    if t.components:
        obj["components"] = [dict(c) for c in t.components]
    return obj


def mark_read_body(wamid: str, typing: bool = False) -> dict[str, Any]:
    """Mark an inbound message (and all earlier ones) read; ``typing`` also shows "typing…" (≤25 s)."""
    if not isinstance(wamid, str) or not wamid:
        raise LimitError("message_id", "a non-empty inbound message id", repr(wamid))
    body: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}
    if typing:
        body["typing_indicator"] = {"type": "text"}
    return body


def _header_footer(inter: dict[str, Any], msg: Outbound) -> None:
    if msg.header:
        inter["header"] = {"type": "text", "text": msg.header}
    if msg.footer:
        inter["footer"] = {"text": msg.footer}


# --- checking ------------------------------------------------------------------------------------
def check_body(body: Mapping[str, Any]) -> None:
    """Check a Graph ``/messages`` send body against the documented limits; raise :class:`LimitError`.

    Works on the wire shape, so the fake Graph API can run it on whatever a client posted.
    """
    if body.get("messaging_product") != "whatsapp":
        raise LimitError("messaging_product", 'must be "whatsapp"', repr(body.get("messaging_product")))
    if "to" in body:
        recipient_fields(_text(body, "to"))
    elif "recipient" in body:
        if not _BSUID.match(_text(body, "recipient")):
            raise LimitError("recipient", "a business-scoped user id (CC.xxxx)", repr(body["recipient"]))
    else:
        raise LimitError("to", "required (or recipient)", None)
    kind = body.get("type")
    if kind == "text":
        text = _obj(body, "text")
        _length(text, "body", "text.body", LIMITS["text.body"], required=True)
    elif kind == "interactive":
        _check_interactive(_obj(body, "interactive"))
    elif kind == "template":
        _check_template(_obj(body, "template"))
    elif kind == "reaction":
        reaction = _obj(body, "reaction")
        _length(reaction, "message_id", "reaction.message_id", 1000, required=True)
        emoji = reaction.get("emoji", "")
        if not isinstance(emoji, str) or len(emoji) > 16:
            raise LimitError("reaction.emoji", "one emoji (empty removes the reaction)", repr(emoji)[:40])
        if "context" in body:
            raise LimitError("context", "not allowed on a reaction", "context")
    else:
        raise LimitError("type", "one of text, interactive, template, reaction", repr(kind)[:40])
    if "context" in body:
        context = _obj(body, "context")
        _length(context, "message_id", "context.message_id", 1000, required=True)
    if "biz_opaque_callback_data" in body:
        _length(body, "biz_opaque_callback_data", "biz_opaque_callback_data", LIMITS["callback_data"])


def _check_interactive(inter: Mapping[str, Any]) -> None:
    kind = inter.get("type")
    if kind not in ("button", "list"):
        raise LimitError("interactive.type", 'one of "button", "list"', repr(kind)[:40])
    if "header" in inter:
        header = _obj(inter, "header", "interactive.header")
        if header.get("type") != "text":
            if kind == "list":
                raise LimitError("interactive.header.type", 'must be "text" on a list', repr(header.get("type")))
        else:
            _length(header, "text", "interactive.header.text", LIMITS["interactive.header"], required=True)
    if "footer" in inter:
        footer = _obj(inter, "footer", "interactive.footer")
        _length(footer, "text", "interactive.footer.text", LIMITS["interactive.footer"], required=True)
    body = _obj(inter, "body", "interactive.body")
    limit = LIMITS["interactive.body"] if kind == "button" else LIMITS["list.body"]
    _length(body, "text", "interactive.body.text", limit, required=True)
    action = _obj(inter, "action", "interactive.action")
    if kind == "button":
        buttons = _array(action, "buttons", "interactive.action.buttons")
        if not LIMITS["buttons.min"] <= len(buttons) <= LIMITS["buttons.max"]:
            raise LimitError("interactive.action.buttons", "1 to 3 reply buttons", len(buttons))
        titles: set[str] = set()
        ids: set[str] = set()
        for i, button in enumerate(buttons):
            where = f"interactive.action.buttons[{i}]"
            if not isinstance(button, JSON_OBJECT) or button.get("type") != "reply":
                raise LimitError(f"{where}.type", 'must be "reply"', repr(button)[:40])
            reply = _obj(button, "reply", f"{where}.reply")
            bid = _length(reply, "id", f"{where}.reply.id", LIMITS["button.id"], required=True)
            title = _length(reply, "title", f"{where}.reply.title", LIMITS["button.title"], required=True)
            if title in titles:
                raise LimitError(f"{where}.reply.title", "unique within the message", repr(title))
            if bid in ids:
                raise LimitError(f"{where}.reply.id", "unique within the message", repr(bid))
            titles.add(title)
            ids.add(bid)
        return
    _length(action, "button", "interactive.action.button", LIMITS["list.button"], required=True)
    sections = _array(action, "sections", "interactive.action.sections")
    if not 1 <= len(sections) <= LIMITS["list.sections.max"]:
        raise LimitError("interactive.action.sections", "1 to 10 sections", len(sections))
    total = 0
    row_ids: set[str] = set()
    for i, section in enumerate(sections):
        where = f"interactive.action.sections[{i}]"
        if not isinstance(section, JSON_OBJECT):
            raise LimitError(where, "an object", type(section).__name__)
        _length(section, "title", f"{where}.title", LIMITS["list.section.title"], required=len(sections) > 1)
        rows = _array(section, "rows", f"{where}.rows")
        if not rows:
            raise LimitError(f"{where}.rows", "at least 1 row", 0)
        for j, row in enumerate(rows):
            rwhere = f"{where}.rows[{j}]"
            if not isinstance(row, JSON_OBJECT):
                raise LimitError(rwhere, "an object", type(row).__name__)
            rid = _length(row, "id", f"{rwhere}.id", LIMITS["list.row.id"], required=True)
            _length(row, "title", f"{rwhere}.title", LIMITS["list.row.title"], required=True)
            _length(row, "description", f"{rwhere}.description", LIMITS["list.row.description"])
            if rid in row_ids:
                raise LimitError(f"{rwhere}.id", "unique within the message", repr(rid))
            row_ids.add(rid)
        total += len(rows)
    if total > LIMITS["list.rows.max"]:
        raise LimitError("interactive.action.sections[].rows", "at most 10 rows in total", total)


def _check_template(template: Mapping[str, Any]) -> None:
    name = _length(template, "name", "template.name", LIMITS["template.name"], required=True)
    if not _TEMPLATE_NAME.match(name):
        raise LimitError("template.name", "lowercase letters, digits and underscores", repr(name))
    language = _obj(template, "language", "template.language")
    _length(language, "code", "template.language.code", 20, required=True)
    components = template.get("components", [])
    if not isinstance(components, list):
        raise LimitError("template.components", "an array", type(components).__name__)
    counts = {"quick_reply": 0, "url": 0, "phone_number": 0, "copy_code": 0}
    buttons = 0
    for i, comp in enumerate(components):
        where = f"template.components[{i}]"
        if not isinstance(comp, JSON_OBJECT) or not isinstance(comp.get("type"), str):
            raise LimitError(f"{where}.type", "an object with a type", repr(comp)[:40])
        params = comp.get("parameters", [])
        if not isinstance(params, list):
            raise LimitError(f"{where}.parameters", "an array", type(params).__name__)
        if comp["type"].lower() != "button":
            continue
        buttons += 1
        sub = comp.get("sub_type")
        if sub in counts:
            counts[sub] += 1
        if sub == "copy_code":
            for k, p in enumerate(params):
                if isinstance(p, JSON_OBJECT) and "coupon_code" in p:
                    _length(p, "coupon_code", f"{where}.parameters[{k}].coupon_code", LIMITS["template.copy_code"])
        if sub == "quick_reply":
            for k, p in enumerate(params):
                if not isinstance(p, JSON_OBJECT) or p.get("type") != "payload":
                    raise LimitError(f"{where}.parameters[{k}].type", 'must be "payload"', repr(p)[:40])
                _length(p, "payload", f"{where}.parameters[{k}].payload", 1000, required=True)
    if buttons > LIMITS["template.buttons.max"]:
        raise LimitError("template.components[button]", "at most 10 buttons", buttons)
    for sub, key in (
        ("quick_reply", "template.quick_reply.max"),
        ("url", "template.url.max"),
        ("phone_number", "template.phone.max"),
        ("copy_code", "template.copy_code.max"),
    ):
        if counts[sub] > LIMITS[key]:
            raise LimitError(f"template.components[{sub}]", f"at most {LIMITS[key]} {sub} buttons", counts[sub])


# --- small checks ---------------------------------------------------------------------------------
def _text(obj: Mapping[str, Any], key: str, where: str | None = None) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise LimitError(where or key, "a string", type(value).__name__)
    return value


def _obj(obj: Mapping[str, Any], key: str, where: str | None = None) -> Mapping[str, Any]:
    value = obj.get(key)
    if not isinstance(value, JSON_OBJECT):
        raise LimitError(where or key, "an object (required)", type(value).__name__)
    return value


def _array(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise LimitError(where, "an array (required)", type(value).__name__)
    return value


def _length(obj: Mapping[str, Any], key: str, where: str, limit: int, *, required: bool = False) -> str:
    """Return ``obj[key]`` (``""`` when absent and optional) after checking 1..limit characters."""
    if key not in obj:
        if required:
            raise LimitError(where, f"required (1 to {limit} characters)", "missing")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise LimitError(where, f"a string of at most {limit} characters", type(value).__name__)
    if len(value) > limit:
        raise LimitError(where, f"at most {limit} characters", len(value))
    if required and not value.strip():
        raise LimitError(where, f"required (1 to {limit} characters)", 0)
    return value
