"""Webhook JSON -> core values: every captured fixture, hand-made edge cases, and hostile input."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core.messages import DeliveryStatus, Inbound, InboundKind
from bot.errors import PayloadError
from bot.whatsapp.payloads import Notification, parse_notification, parse_raw

DATA = Path(__file__).resolve().parent.parent / "data"
PNID = "100000000000001"
USER1 = "15550001111"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return data


def parse(name: str) -> Notification:
    n = parse_raw((DATA / name).read_bytes())
    assert n.problems == ()
    return n


def only_message(name: str) -> Inbound:
    n = parse(name)
    assert len(n.messages) == 1 and not n.statuses and not n.preferences and not n.errors
    m = n.messages[0]
    assert m.phone_number_id == PNID
    return m


def envelope(value: dict[str, Any], field: str = "messages") -> dict[str, Any]:
    full = {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550009999", "phone_number_id": PNID}}
    full.update(value)
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "100000000000099", "changes": [{"value": full, "field": field}]}]}


def message(mtype: str, obj: Any = None, **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"from": USER1, "id": f"wamid.{mtype}", "timestamp": "1767225600", "type": mtype}
    if obj is not None:
        m[mtype] = obj
    m.update(extra)
    return envelope({"contacts": [{"profile": {"name": "Ana"}, "wa_id": USER1}], "messages": [m]})


def one(body: dict[str, Any]) -> Inbound:
    n = parse_notification(body)
    assert len(n.messages) == 1, n.problems
    return n.messages[0]


# --- every fixture, concrete fields ---------------------------------------------------------------
def test_every_fixture_is_covered() -> None:
    names = {p.name for p in DATA.glob("*.json")}
    assert len(names) >= 20
    for name in names:
        parse(name)  # no problems anywhere


def test_text_message() -> None:
    m = only_message("text_message.json")
    assert m.kind is InboundKind.TEXT
    assert m.id == "wamid.HBgLMTU1NTAwMDExMTEVAgASGBRGQUtFSU4wMDAwMDAwMDAwMDAxMAA="
    assert m.subject == USER1 and m.wa_id == USER1 and m.user_id is None
    assert m.timestamp == 1767225600
    assert m.profile_name == "Test User One"
    assert m.text == "Hi, is the shop open today?"
    assert m.payload is None and m.context_id is None and not m.forwarded


def test_text_with_bsuid_is_keyed_by_bsuid() -> None:
    m = only_message("text_message_with_bsuid.json")
    assert m.subject == "US.10000000000000000001"
    assert m.user_id == "US.10000000000000000001"
    assert m.wa_id == USER1
    assert m.data["username"] == "@testuserone"


def test_text_reply_with_context() -> None:
    m = only_message("text_reply_with_context.json")
    assert m.text == "Yes, that time works for me"
    assert m.context_id == "wamid.HBgLMTU1NTAwMDExMTEVAgARGBJGQUtFT1VUMDAwMDAwMDAwMDYA"
    assert m.data["context_from"] == "15550009999"


def test_interactive_button_reply() -> None:
    m = only_message("interactive_button_reply.json")
    assert m.kind is InboundKind.BUTTON_REPLY
    assert m.payload == "confirm-booking" and m.text == "Confirm"
    assert m.context_id == "wamid.HBgLMTU1NTAwMDExMTEVAgARGBJGQUtFT1VUMDAwMDAwMDAwMDEA"
    assert m.timestamp == 1767225660


def test_interactive_list_reply() -> None:
    m = only_message("interactive_list_reply.json")
    assert m.kind is InboundKind.LIST_REPLY
    assert m.payload == "slot_0930" and m.text == "09:30 tomorrow"
    assert m.data["description"] == "Main street branch"
    assert m.context_id == "wamid.HBgLMTU1NTAwMDExMTEVAgARGBJGQUtFT1VUMDAwMDAwMDAwMDIA"


def test_template_quick_reply_button() -> None:
    m = only_message("template_quick_reply_button.json")
    assert m.kind is InboundKind.TEMPLATE_BUTTON
    assert m.payload == "REMINDER_CONFIRM:order-0001"
    assert m.text == "Yes, keep it"
    assert m.context_id == "wamid.HBgLMTU1NTAwMDExMTEVAgARGBJGQUtFT1VUMDAwMDAwMDAwMDMA"


def test_image_message() -> None:
    m = only_message("image_message.json")
    assert m.kind is InboundKind.IMAGE
    assert m.text == "Photo of the damaged box"
    assert m.data["id"] == "100000000000101"
    assert m.data["mime_type"] == "image/jpeg"
    assert m.data["sha256"] == "ZmFrZS1zaGEyNTYtZm9yLXRlc3Rpbmctb25seS0wMDE="
    assert m.data["url"].startswith("https://lookaside.fbsbx.com/")


def test_location_message() -> None:
    m = only_message("location_message.json")
    assert m.kind is InboundKind.LOCATION
    assert m.data == {"latitude": 51.5007, "longitude": -0.1246, "name": "Example Cafe",
                      "address": "1 Example Road, Testville", "url": "https://example.com/cafe"}


def test_reaction_and_removal() -> None:
    added = only_message("reaction_message.json")
    assert added.kind is InboundKind.REACTION
    assert added.data == {"message_id": "wamid.HBgLMTU1NTAwMDExMTEVAgARGBJGQUtFT1VUMDAwMDAwMDAwMDQA",
                          "emoji": "\U0001f44d", "removed": False}
    removed = only_message("reaction_removed.json")
    assert removed.data["emoji"] == "" and removed.data["removed"] is True
    assert removed.data["message_id"] == added.data["message_id"]


def test_unsupported_message_keeps_raw_and_errors() -> None:
    m = only_message("unsupported_message.json")
    assert m.kind is InboundKind.UNSUPPORTED
    assert m.data["type"] == "poll_creation"
    assert m.data["raw"]["unsupported"] == {"type": "poll_creation"}
    assert [(e.code, e.title, e.details) for e in m.errors] == [
        (131051, "Message type unknown", "Message type is currently not supported.")
    ]


def test_batch_matches_contacts_by_id() -> None:
    n = parse("batch_two_users.json")
    assert [(m.subject, m.profile_name, m.text) for m in n.messages] == [
        ("15550001111", "Test User One", "Order status please"),
        ("15550002222", "Test User Two", "Do you deliver on Sundays?"),
    ]
    body = load("batch_two_users.json")
    value = body["entry"][0]["changes"][0]["value"]
    value["contacts"].reverse()  # position must not matter
    names = [m.profile_name for m in parse_notification(body).messages]
    assert names == ["Test User One", "Test User Two"]


@pytest.mark.parametrize(("name", "status", "ts", "pricing"), [
    ("status_sent.json", DeliveryStatus.SENT, 1767226080, "free_customer_service"),
    ("status_sent_legacy_with_conversation.json", DeliveryStatus.SENT, 1767226080, "free_customer_service"),
    ("status_delivered.json", DeliveryStatus.DELIVERED, 1767226082, "free_customer_service"),
    ("status_read.json", DeliveryStatus.READ, 1767226140, None),
])
def test_statuses(name: str, status: DeliveryStatus, ts: int, pricing: str | None) -> None:
    n = parse(name)
    assert not n.messages and len(n.statuses) == 1
    s = n.statuses[0]
    assert s.message_id == "wamid.HBgLMTU1NTAwMDExMTEVAgARGBJGQUtFT1VUMDAwMDAwMDAwMDUA"
    assert s.status is status and s.timestamp == ts
    assert s.recipient == USER1 and s.subject == USER1 and s.phone_number_id == PNID
    assert (s.pricing or {}).get("type") == pricing
    assert s.errors == ()
    assert s.key == f"{s.message_id}:{status}"


@pytest.mark.parametrize(("name", "code", "title"), [
    ("status_failed_131047.json", 131047, "Re-engagement message"),
    ("status_failed_131050.json", 131050, "Unable to deliver the message. This recipient has chosen to stop "
                                          "receiving marketing messages on WhatsApp from your business"),
])
def test_failed_statuses(name: str, code: int, title: str) -> None:
    s = parse(name).statuses[0]
    assert s.status is DeliveryStatus.FAILED
    assert [e.code for e in s.errors] == [code]
    assert s.errors[0].title == title
    assert s.errors[0].details
    assert s.errors[0].href == "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"


def test_errors_only() -> None:
    n = parse("errors_only.json")
    assert not n.messages and not n.statuses
    (e,) = n.errors
    assert e.phone_number_id == PNID
    assert e.error.code == 130429 and e.error.title == "Rate limit hit"
    assert e.error.details.startswith("Message failed to send because there were too many")


def test_user_preferences_stop() -> None:
    n = parse("user_preferences_stop.json")
    (p,) = n.preferences
    assert p.subject == USER1 and p.wa_id == USER1 and p.phone_number_id == PNID
    assert p.category == "marketing_messages" and p.value == "stop"
    assert p.timestamp == 1767226380
    assert p.detail == "User requested to stop marketing messages"


# --- types and fields not in the captured fixtures -------------------------------------------------
def test_media_kinds_keep_their_fields() -> None:
    audio = one(message("audio", {"id": "1", "mime_type": "audio/ogg; codecs=opus", "sha256": "x", "voice": True}))
    assert audio.kind is InboundKind.AUDIO and audio.data["voice"] is True and audio.text is None
    doc = one(message("document", {"id": "2", "mime_type": "application/pdf", "sha256": "y",
                                   "filename": "terms.pdf", "caption": "Signed"}))
    assert doc.kind is InboundKind.DOCUMENT and doc.data["filename"] == "terms.pdf" and doc.text == "Signed"
    sticker = one(message("sticker", {"id": "3", "mime_type": "image/webp", "sha256": "z", "animated": False}))
    assert sticker.kind is InboundKind.STICKER and sticker.data["animated"] is False
    video = one(message("video", {"id": "4", "mime_type": "video/mp4", "sha256": "w"}))
    assert video.kind is InboundKind.VIDEO and video.data["id"] == "4"


def test_flow_reply_parses_response_json_again() -> None:
    m = one(message("interactive", {"type": "nfm_reply", "nfm_reply": {
        "name": "flow", "body": "Sent", "response_json": '{"flow_token": "tok-1", "purposes": ["offers"]}'}}))
    assert m.kind is InboundKind.FLOW_REPLY
    assert m.data["response"] == {"flow_token": "tok-1", "purposes": ["offers"]}
    assert m.payload == "tok-1" and m.text == "Sent"
    bad = one(message("interactive", {"type": "nfm_reply", "nfm_reply": {"response_json": "{not json"}}))
    assert bad.kind is InboundKind.FLOW_REPLY and bad.data["response"] is None and bad.data["response_error"]


def test_contacts_order_system_edit_revoke() -> None:
    cards = [{"name": {"formatted_name": "Bea"}, "phones": [{"phone": "+34 600", "type": "CELL"}]}]
    c = one(message("contacts", None, contacts=cards))
    assert c.kind is InboundKind.CONTACTS and c.data["contacts"] == cards
    o = one(message("order", {"catalog_id": "9", "text": "for Friday",
                              "product_items": [{"product_retailer_id": "sku", "quantity": 2, "item_price": 9.5,
                                                 "currency": "EUR"}]}))
    assert o.kind is InboundKind.ORDER and o.text == "for Friday" and o.data["product_items"][0]["item_price"] == 9.5
    s = one(envelope({"messages": [{"from": USER1, "id": "wamid.s", "timestamp": "1", "type": "system",
                                    "system": {"type": "user_changed_number", "body": "changed", "wa_id": "155"}}]}))
    assert s.kind is InboundKind.SYSTEM and s.data["type"] == "user_changed_number" and s.profile_name is None
    e = one(message("edit", {"original_message_id": "wamid.old",
                             "message": {"type": "text", "text": {"body": "fixed typo"}}}))
    assert e.kind is InboundKind.EDIT and e.text == "fixed typo" and e.data["original_message_id"] == "wamid.old"
    r = one(message("revoke", {"original_message_id": "wamid.old"}))
    assert r.kind is InboundKind.REVOKE and r.data == {"original_message_id": "wamid.old"}


def test_unknown_and_legacy_unknown_types_are_kept() -> None:
    new = one(message("poll_vote", {"option": 2}))
    assert new.kind is InboundKind.UNKNOWN
    assert new.data["type"] == "poll_vote" and new.data["raw"]["poll_vote"] == {"option": 2}
    legacy = one(message("unknown", None))
    assert legacy.kind is InboundKind.UNSUPPORTED
    odd = one(message("interactive", {"type": "call_permission_reply", "call_permission_reply": {"x": 1}}))
    assert odd.kind is InboundKind.UNKNOWN and odd.data["type"] == "interactive.call_permission_reply"


def test_forwarded_referral_and_plus_prefixed_sender() -> None:
    body = message("text", {"body": "hi"}, context={"forwarded": True},
                   referral={"source_url": "https://fb.me/x", "source_type": "ad", "ctwa_clid": "c1"})
    body["entry"][0]["changes"][0]["value"]["messages"][0]["from"] = "+" + USER1
    m = one(body)
    assert m.forwarded and m.context_id is None
    assert m.referral == {"source_url": "https://fb.me/x", "source_type": "ad", "ctwa_clid": "c1"}
    assert m.subject == USER1 and m.profile_name == "Ana"  # '+' stripped, contact still matched
    freq = one(message("text", {"body": "hi"}, context={"frequently_forwarded": True}))
    assert freq.forwarded and freq.data["frequently_forwarded"] is True


def test_bsuid_only_sender_without_phone() -> None:
    body = envelope({"contacts": [{"profile": {"name": "Uma", "username": "@uma"}, "user_id": "ES.abc123"}],
                     "messages": [{"from_user_id": "ES.abc123", "id": "wamid.b", "timestamp": "5", "type": "text",
                                   "text": {"body": "hola"}}]})
    m = one(body)
    assert m.subject == "ES.abc123" and m.wa_id is None and m.profile_name == "Uma"


def test_status_extras_callback_played_and_unknown() -> None:
    body = envelope({"statuses": [
        {"id": "wamid.1", "status": "played", "timestamp": 7, "recipient_id": USER1,
         "biz_opaque_callback_data": "turn-1"},
        {"id": "wamid.2", "status": "deleted", "timestamp": "8", "recipient_id": USER1},
    ]})
    n = parse_notification(body)
    assert [(s.status, s.timestamp, s.callback_data) for s in n.statuses] == [
        (DeliveryStatus.PLAYED, 7, "turn-1"), (DeliveryStatus.UNKNOWN, 8, None)]


def test_resume_preference_and_timestamps_defensive() -> None:
    body = envelope({"user_preferences": [
        {"wa_id": USER1, "category": "marketing_messages", "value": "resume", "timestamp": "1767226999"},
        {"wa_id": USER1, "category": "marketing_messages", "value": "stop", "timestamp": 17672.5},
        {"wa_id": USER1, "category": "marketing_messages", "value": "stop", "timestamp": True},
    ]}, field="user_preferences")
    n = parse_notification(body)
    assert [(p.value, p.timestamp) for p in n.preferences] == [("resume", 1767226999)]
    assert len(n.problems) == 2 and all("timestamp" in p for p in n.problems)


def test_one_bad_item_does_not_lose_its_neighbours() -> None:
    body = load("batch_two_users.json")
    messages = body["entry"][0]["changes"][0]["value"]["messages"]
    messages.insert(1, {"from": USER1, "type": "text"})  # no id, no timestamp
    messages.insert(0, "garbage")
    body["entry"].append({"id": "x", "changes": [{"field": "account_update", "value": {}}]})
    body["entry"].append(17)
    n = parse_notification(body)
    assert [m.text for m in n.messages] == ["Order status please", "Do you deliver on Sundays?"]
    assert len(n.problems) == 4
    assert any("messages[0]" in p and "not an object" in p for p in n.problems)
    assert any("messages[2]" in p and "id missing" in p for p in n.problems)
    assert any("account_update" in p for p in n.problems)


def test_multiple_entries_and_changes_are_all_read() -> None:
    a = load("text_message.json")
    b = load("status_read.json")
    c = load("user_preferences_stop.json")
    body = copy.deepcopy(a)
    body["entry"][0]["changes"] += b["entry"][0]["changes"]
    body["entry"] += c["entry"]
    n = parse_notification(body)
    assert (len(n.messages), len(n.statuses), len(n.preferences)) == (1, 1, 1)


@pytest.mark.parametrize("body", [
    None, [], "x", 3, {}, {"object": "page", "entry": []}, {"object": "whatsapp_business_account"},
    {"object": "whatsapp_business_account", "entry": {}},
])
def test_not_a_whatsapp_notification(body: object) -> None:
    with pytest.raises(PayloadError):
        parse_notification(body)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000,
                                 b'{"object": NaN}', b"1" * 5000])
def test_raw_garbage_is_a_payload_error(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_raw(raw)


def test_deeply_nested_unknown_message_is_cut_not_crashed() -> None:
    deep: Any = "bottom"
    for _ in range(500):
        deep = {"x": deep}
    m = one(message("hologram", deep))
    assert m.kind is InboundKind.UNKNOWN
    depth, node = 0, m.data["raw"]
    while isinstance(node, dict) and node:
        node = next(iter(node.values()))
        depth += 1
    assert depth <= 40
    json.dumps(m.to_doc())  # still JSON-safe
    assert Inbound.from_doc(m.to_doc()) == m


def test_values_round_trip_through_docs() -> None:
    for name in ("text_message_with_bsuid.json", "unsupported_message.json", "interactive_list_reply.json"):
        for m in parse(name).messages:
            assert Inbound.from_doc(json.loads(json.dumps(m.to_doc()))) == m


# --- hostile input: only PayloadError may escape ----------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)
keys = st.sampled_from(["object", "entry", "changes", "field", "value", "metadata", "phone_number_id",
                        "messages", "statuses", "errors", "contacts", "user_preferences", "from", "id",
                        "timestamp", "type", "text", "interactive", "button_reply", "context", "wa_id",
                        "user_id", "from_user_id", "status", "code", "error_data", "reaction", "emoji"])
shaped = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.sampled_from(["whatsapp_business_account", "messages", "text", "interactive", "button_reply",
                       "read", "failed", "1767225600", PNID, USER1, "nfm_reply", "reaction", ""]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=6),
    max_leaves=40,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_random_json_only_raises_payload_error(body: object) -> None:
    with contextlib.suppress(PayloadError):
        parse_notification(body)


@settings(max_examples=200, deadline=None)
@given(shaped, shaped)
def test_shaped_hostile_bodies_never_crash(entry: object, value: object) -> None:
    body = {"object": "whatsapp_business_account",
            "entry": [entry, {"id": "1", "changes": [{"field": "messages", "value": value}]}]}
    n = parse_notification(body)
    for m in n.messages:
        json.dumps(m.to_doc())
        assert isinstance(m.timestamp, int) and m.subject


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(sorted(p.name for p in DATA.glob("*.json"))), min_size=1, max_size=3),
       st.sampled_from(["id", "timestamp", "from", "type", "status", "metadata", "contacts", "text", "errors"]),
       json_values)
def test_fixtures_with_a_corrupted_key_never_crash(names: list[str], key: str, replacement: object) -> None:
    body = load(names[0])
    for name in names[1:]:
        body["entry"] += load(name)["entry"]

    def corrupt(node: Any) -> None:
        if isinstance(node, dict):
            for k in list(node):
                if k == key:
                    node[k] = replacement
                else:
                    corrupt(node[k])
        elif isinstance(node, list):
            for item in node:
                corrupt(item)

    corrupt(body)
    parse_notification(body)
