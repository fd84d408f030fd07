"""WhatsApp Cloud API limits for interactive and text messages, and the check every rendered message passes.

The numbers are Meta's published limits for free-form messages sent inside the customer-service window.
:func:`check` raises :class:`bot.errors.LimitError` naming the first field that breaks a limit.
"""

from __future__ import annotations

from bot.core.messages import Outbound, OutboundKind
from bot.errors import LimitError

BODY_TEXT = 4096  # text message body
BODY_INTERACTIVE = 1024  # body of an interactive (buttons/list) message
HEADER_TEXT = 60
FOOTER_TEXT = 60
BUTTONS_MAX = 3
BUTTON_TITLE = 20
BUTTON_ID = 256
LIST_ROWS_MAX = 10  # rows in all sections together
LIST_SECTIONS_MAX = 10
ROW_TITLE = 24
ROW_DESCRIPTION = 72
ROW_ID = 200
SECTION_TITLE = 24
LIST_BUTTON = 20

# Reserved payload ids the engine owns (a flow may not use them for its own buttons).
OPTOUT_PAYLOAD = "optout"
RESERVED_PAYLOADS: frozenset[str] = frozenset({OPTOUT_PAYLOAD})


def _length(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise LimitError(field, f"at most {limit} characters", len(value))


def check(message: Outbound, name: str = "message") -> None:
    """Raise :class:`LimitError` when ``message`` breaks a WhatsApp limit; ``name`` prefixes the field."""
    interactive = message.kind in (OutboundKind.BUTTONS, OutboundKind.LIST)
    if message.kind in (OutboundKind.TEXT, OutboundKind.BUTTONS, OutboundKind.LIST) and not message.body.strip():
        raise LimitError(f"{name}.body", "must not be empty", 0)
    _length(f"{name}.body", message.body, BODY_INTERACTIVE if interactive else BODY_TEXT)
    _length(f"{name}.header", message.header, HEADER_TEXT)
    _length(f"{name}.footer", message.footer, FOOTER_TEXT)
    if message.kind is OutboundKind.TEXT and (message.header or message.footer):
        raise LimitError(f"{name}.footer", "a text message has no header or footer", "header/footer set")
    if message.kind is OutboundKind.BUTTONS:
        if not 1 <= len(message.buttons) <= BUTTONS_MAX:
            raise LimitError(f"{name}.buttons", f"between 1 and {BUTTONS_MAX} buttons", len(message.buttons))
        seen: set[str] = set()
        for i, button in enumerate(message.buttons):
            _length(f"{name}.buttons[{i}].title", button.title, BUTTON_TITLE)
            _length(f"{name}.buttons[{i}].id", button.id, BUTTON_ID)
            if not button.title.strip() or not button.id:
                raise LimitError(f"{name}.buttons[{i}]", "id and title must not be empty", repr(button.title))
            if button.id in seen:
                raise LimitError(f"{name}.buttons[{i}].id", "button ids must be unique", button.id)
            seen.add(button.id)
    elif message.buttons:
        raise LimitError(f"{name}.buttons", "only a buttons message has buttons", len(message.buttons))
    if message.kind is OutboundKind.LIST:
        _length(f"{name}.list_button", message.list_button, LIST_BUTTON)
        if not message.list_button.strip():
            raise LimitError(f"{name}.list_button", "a list needs a button label", "''")
        if not 1 <= len(message.sections) <= LIST_SECTIONS_MAX:
            raise LimitError(f"{name}.sections", f"between 1 and {LIST_SECTIONS_MAX} sections", len(message.sections))
        rows = sum(len(s.rows) for s in message.sections)
        if not 1 <= rows <= LIST_ROWS_MAX:
            raise LimitError(f"{name}.sections", f"between 1 and {LIST_ROWS_MAX} rows in all", rows)
        ids: set[str] = set()
        for i, section in enumerate(message.sections):
            _length(f"{name}.sections[{i}].title", section.title, SECTION_TITLE)
            if len(message.sections) > 1 and not section.title.strip():
                raise LimitError(f"{name}.sections[{i}].title", "required when there are several sections", "''")
            for j, row in enumerate(section.rows):
                _length(f"{name}.sections[{i}].rows[{j}].title", row.title, ROW_TITLE)
                _length(f"{name}.sections[{i}].rows[{j}].description", row.description, ROW_DESCRIPTION)
                _length(f"{name}.sections[{i}].rows[{j}].id", row.id, ROW_ID)
                if row.id in ids:
                    raise LimitError(f"{name}.sections[{i}].rows[{j}].id", "row ids must be unique", row.id)
                ids.add(row.id)
    elif message.sections or message.list_button:
        raise LimitError(f"{name}.sections", "only a list message has sections", len(message.sections))
