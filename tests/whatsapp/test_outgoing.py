"""Outbound -> Graph API bodies, recipient rules, limit checks at the documented boundaries."""

from __future__ import annotations

import json

import pytest

from bot.core.messages import Button, ListRow, ListSection, Outbound, OutboundKind, TemplateRef
from bot.errors import LimitError
from bot.whatsapp.outgoing import (
    LIMITS,
    check_body,
    mark_read_body,
    message_body,
    message_payload,
    recipient_fields,
)

TO = "34600111222"


def buttons(*pairs: tuple[str, str], body: str = "Choose", **kw: str) -> Outbound:
    return Outbound(to=TO, kind=OutboundKind.BUTTONS, body=body, buttons=tuple(Button(i, t) for i, t in pairs), **kw)


def rows(n: int, sections: int = 1, body: str = "Pick one") -> Outbound:
    per = n // sections
    secs = tuple(
        ListSection(f"Section {s}", tuple(ListRow(f"r{s}-{i}", f"Row {i}") for i in range(per)))
        for s in range(sections)
    )
    return Outbound(to=TO, kind=OutboundKind.LIST, body=body, list_button="Open", sections=secs)


def test_text_body_with_link_preview_and_quote() -> None:
    body = message_body(Outbound(to=TO, kind=OutboundKind.TEXT, body="See https://example.com/privacy",
                                 reply_to="wamid.IN"), TO)
    assert body == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+34600111222", "type": "text",
        "text": {"body": "See https://example.com/privacy", "preview_url": True},
        "context": {"message_id": "wamid.IN"},
    }
    plain = message_body(Outbound(to=TO, kind=OutboundKind.TEXT, body="hi"), TO)
    assert plain["text"]["preview_url"] is False and "context" not in plain


def test_buttons_body() -> None:
    body = message_body(buttons(("yes", "Yes"), ("no", "No"), header="Offers", footer="STOP to leave"), TO)
    assert body["type"] == "interactive"
    assert body["interactive"] == {
        "type": "button",
        "header": {"type": "text", "text": "Offers"},
        "body": {"text": "Choose"},
        "footer": {"text": "STOP to leave"},
        "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes"}},
                               {"type": "reply", "reply": {"id": "no", "title": "No"}}]},
    }


def test_list_body_single_section_without_title_omits_it() -> None:
    msg = Outbound(to=TO, kind=OutboundKind.LIST, body="Pick", list_button="Topics",
                   sections=(ListSection("", (ListRow("a", "Offers", "Weekly"), ListRow("b", "News"))),))
    inter = message_body(msg, TO)["interactive"]
    assert inter["type"] == "list"
    assert inter["action"] == {"button": "Topics", "sections": [
        {"rows": [{"id": "a", "title": "Offers", "description": "Weekly"}, {"id": "b", "title": "News"}]}]}
    with pytest.raises(LimitError) as info:  # two sections need titles
        message_body(Outbound(to=TO, kind=OutboundKind.LIST, body="Pick", list_button="Topics",
                              sections=(ListSection("", (ListRow("a", "A"),)), ListSection("", (ListRow("b", "B"),)))),
                     TO)
    assert info.value.field == "interactive.action.sections[0].title"


def test_template_body_drops_quote_and_keeps_components() -> None:
    comps = ({"type": "body", "parameters": [{"type": "text", "text": "Ana"}]},
             {"type": "button", "sub_type": "quick_reply", "index": "0",
              "parameters": [{"type": "payload", "payload": "STOP_PROMOS"}]})
    msg = Outbound(to=TO, kind=OutboundKind.TEMPLATE, template=TemplateRef("offer_weekly", "es", comps),
                   reply_to="wamid.IN")
    body = message_body(msg, TO, callback_data="broadcast-7")
    assert body["template"] == {"name": "offer_weekly", "language": {"code": "es"}, "components": list(comps)}
    assert "context" not in body
    assert body["biz_opaque_callback_data"] == "broadcast-7"


def test_reaction_body_and_bsuid_recipient() -> None:
    msg = Outbound(to="US.13491208655302741918", kind=OutboundKind.REACTION, reaction_to="wamid.IN",
                   emoji="\U0001f44d", reply_to="wamid.IGNORED")
    body = message_body(msg, msg.to)
    assert body["recipient"] == "US.13491208655302741918" and "to" not in body
    assert body["reaction"] == {"message_id": "wamid.IN", "emoji": "\U0001f44d"}
    assert "context" not in body


def test_recipients() -> None:
    assert recipient_fields("+34 600-111-222") == {"to": "+34600111222"}
    assert recipient_fields("US.ENT.abc") == {"recipient": "US.ENT.abc"}
    for bad in ("", "12", "abc", "+1234567890123456", "us.lowercase"):
        with pytest.raises(LimitError) as info:
            recipient_fields(bad)
        assert info.value.field == "to"


def test_mark_read_bodies() -> None:
    assert mark_read_body("wamid.X") == {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X"}
    assert mark_read_body("wamid.X", typing=True)["typing_indicator"] == {"type": "text"}
    with pytest.raises(LimitError):
        mark_read_body("")


@pytest.mark.parametrize(("make", "field", "limit"), [
    (lambda n: Outbound(to=TO, kind=OutboundKind.TEXT, body="x" * n), "text.body", LIMITS["text.body"]),
    (lambda n: buttons(("a", "A"), body="x" * n), "interactive.body.text", LIMITS["interactive.body"]),
    (lambda n: buttons(("a", "x" * n)), "interactive.action.buttons[0].reply.title", LIMITS["button.title"]),
    (lambda n: buttons(("x" * n, "A")), "interactive.action.buttons[0].reply.id", LIMITS["button.id"]),
    (lambda n: buttons(("a", "A"), header="x" * n), "interactive.header.text", LIMITS["interactive.header"]),
    (lambda n: buttons(("a", "A"), footer="x" * n), "interactive.footer.text", LIMITS["interactive.footer"]),
    (lambda n: rows(2, body="x" * n), "interactive.body.text", LIMITS["list.body"]),
    (lambda n: Outbound(to=TO, kind=OutboundKind.LIST, body="b", list_button="x" * n,
                        sections=(ListSection("s", (ListRow("a", "A"),)),)),
     "interactive.action.button", LIMITS["list.button"]),
    (lambda n: Outbound(to=TO, kind=OutboundKind.LIST, body="b", list_button="Open",
                        sections=(ListSection("x" * n, (ListRow("a", "A"),)),)),
     "interactive.action.sections[0].title", LIMITS["list.section.title"]),
    (lambda n: Outbound(to=TO, kind=OutboundKind.LIST, body="b", list_button="Open",
                        sections=(ListSection("s", (ListRow("a", "x" * n),)),)),
     "interactive.action.sections[0].rows[0].title", LIMITS["list.row.title"]),
    (lambda n: Outbound(to=TO, kind=OutboundKind.LIST, body="b", list_button="Open",
                        sections=(ListSection("s", (ListRow("a", "A", "x" * n),)),)),
     "interactive.action.sections[0].rows[0].description", LIMITS["list.row.description"]),
    (lambda n: Outbound(to=TO, kind=OutboundKind.LIST, body="b", list_button="Open",
                        sections=(ListSection("s", (ListRow("x" * n, "A"),)),)),
     "interactive.action.sections[0].rows[0].id", LIMITS["list.row.id"]),
])
def test_length_limits_at_the_boundary(make, field: str, limit: int) -> None:  # type: ignore[no-untyped-def]
    message_body(make(limit), TO)  # exactly at the limit: fine
    with pytest.raises(LimitError) as info:
        message_body(make(limit + 1), TO)
    assert info.value.field == field
    assert str(limit) in info.value.limit
    assert info.value.actual == limit + 1


def test_count_limits() -> None:
    assert LIMITS["buttons.max"] == 3 and LIMITS["list.rows.max"] == 10 and LIMITS["list.sections.max"] == 10
    message_body(buttons(("a", "A"), ("b", "B"), ("c", "C")), TO)
    with pytest.raises(LimitError) as info:
        message_body(buttons(("a", "A"), ("b", "B"), ("c", "C"), ("d", "D")), TO)
    assert info.value.field == "interactive.action.buttons" and info.value.actual == 4
    with pytest.raises(LimitError):
        message_body(buttons(), TO)
    message_body(rows(10, sections=2), TO)
    with pytest.raises(LimitError) as info:
        message_body(rows(12, sections=2), TO)
    assert info.value.actual == 12
    with pytest.raises(LimitError) as info:
        message_body(buttons(("a", "Same"), ("b", "Same")), TO)
    assert info.value.field == "interactive.action.buttons[1].reply.title"
    with pytest.raises(LimitError) as info:
        message_body(buttons(("a", "One"), ("a", "Two")), TO)
    assert info.value.field == "interactive.action.buttons[1].reply.id"


def test_template_limits() -> None:
    qr = {"type": "button", "sub_type": "quick_reply", "parameters": [{"type": "payload", "payload": "P"}]}
    ok = Outbound(to=TO, kind=OutboundKind.TEMPLATE, template=TemplateRef("t_1", "en_US", (qr,) * 10))
    message_body(ok, TO)
    with pytest.raises(LimitError) as info:
        message_body(Outbound(to=TO, kind=OutboundKind.TEMPLATE, template=TemplateRef("t_1", "en_US", (qr,) * 11)), TO)
    assert "10" in info.value.limit
    url = {"type": "button", "sub_type": "url", "parameters": [{"type": "text", "text": "x"}]}
    with pytest.raises(LimitError) as info:
        message_body(Outbound(to=TO, kind=OutboundKind.TEMPLATE, template=TemplateRef("t", "en", (url,) * 3)), TO)
    assert info.value.field == "template.components[url]"
    with pytest.raises(LimitError) as info:
        message_body(Outbound(to=TO, kind=OutboundKind.TEMPLATE, template=TemplateRef("Bad-Name", "en")), TO)
    assert info.value.field == "template.name"
    with pytest.raises(LimitError) as info:
        message_body(Outbound(to=TO, kind=OutboundKind.TEMPLATE), TO)
    assert info.value.field == "template"


def test_check_body_on_raw_wire_bodies() -> None:
    with pytest.raises(LimitError) as info:
        check_body({"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}})
    assert info.value.field == "to"
    with pytest.raises(LimitError) as info:
        check_body({"messaging_product": "whatsapp", "to": "+34600111222", "type": "image"})
    assert info.value.field == "type"
    with pytest.raises(LimitError) as info:
        check_body({"messaging_product": "whatsapp", "to": "+34600111222", "type": "reaction",
                    "reaction": {"message_id": "w", "emoji": "x"}, "context": {"message_id": "w"}})
    assert info.value.field == "context"


@pytest.mark.parametrize("msg", [
    Outbound(to=TO, kind=OutboundKind.TEXT, body="Hola, ¿qué tal? \"quoted\" \\ ✓ https://x.es", reply_to="wamid.IN"),
    buttons(("yes", "Sí"), ("no", "No"), header="Ofertas", footer="BAJA para salir"),
    rows(6, sections=2),
    Outbound(to=TO, kind=OutboundKind.TEMPLATE, template=TemplateRef("consent_refresh", "es", (
        {"type": "body", "parameters": [{"type": "text", "text": "Café"}]},))),
    Outbound(to=TO, kind=OutboundKind.REACTION, reaction_to="wamid.IN", emoji="👍"),
])
def test_payload_is_the_body_as_json_for_every_recipient(msg: Outbound) -> None:
    for to, callback in ((TO, "entry-1"), ("34600999888", None), ("ES.abc123", "c" * LIMITS["callback_data"])):
        payload = message_payload(msg, to, callback_data=callback)
        assert json.loads(payload) == message_body(msg, to, callback_data=callback)
        assert payload.decode("utf-8")  # UTF-8, non-ASCII kept as is


def test_payload_checks_recipient_and_callback_on_a_kept_content() -> None:
    msg = buttons(("a", "A"), ("b", "B"), body="Kept content")
    message_payload(msg, TO)  # the content is now kept
    with pytest.raises(LimitError) as info:
        message_payload(msg, "12")
    assert info.value.field == "to"
    with pytest.raises(LimitError) as info:
        message_payload(msg, TO, callback_data="c" * (LIMITS["callback_data"] + 1))
    assert info.value.field == "biz_opaque_callback_data"


def test_payload_refuses_a_broken_content_every_time() -> None:
    bad = buttons(("a", "x" * (LIMITS["button.title"] + 1)))
    for _ in range(2):  # a refused content is not kept
        with pytest.raises(LimitError) as info:
            message_payload(bad, TO)
        assert info.value.field == "interactive.action.buttons[0].reply.title"
