"""The webhook routes on a real aiohttp server on loopback: handshake, signatures, sizes, sink semantics."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.errors import ConfigError
from bot.web.webhook import WEBHOOK_CLIENT_MAX_SIZE, WebhookStats, add_webhook_routes
from bot.whatsapp.payloads import Notification
from bot.whatsapp.signature import HEADER, sign

SECRET = "webhook-test-secret"
VERIFY = "verify-me"
PNID = "100000000000001"
DATA = Path(__file__).resolve().parent.parent / "data"


@dataclass
class Sink:
    accepted: list[Notification] = field(default_factory=list)
    fail: bool = False

    async def accept(self, n: Notification) -> None:
        if self.fail:
            raise ConnectionError("database down")
        self.accepted.append(n)


@dataclass
class Hook:
    url: str
    sink: Sink
    stats: WebhookStats
    session: aiohttp.ClientSession

    async def post(self, raw: bytes, signature: str | None = "sign") -> tuple[int, str]:
        headers = {"Content-Type": "application/json"}
        if signature == "sign":
            headers[HEADER] = sign(raw, SECRET)
        elif signature is not None:
            headers[HEADER] = signature
        data: bytes | io.BytesIO = io.BytesIO(raw) if len(raw) > 1_000_000 else raw
        async with self.session.post(self.url, data=data, headers=headers) as resp:
            return resp.status, await resp.text()


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    sink = Sink()
    stats = WebhookStats()
    app = web.Application(client_max_size=WEBHOOK_CLIENT_MAX_SIZE)
    add_webhook_routes(app, verify_token=VERIFY, app_secret=SECRET, sink=sink,
                       known_numbers=lambda pnid: pnid == PNID, stats=stats)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Hook(str(server.make_url("/webhook")), sink, stats, session)
    await server.close()


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def text_body(texts: list[str], pnid: str = PNID) -> dict[str, Any]:
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550009999", "phone_number_id": pnid},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": "15550001111"}],
        "messages": [{"from": "15550001111", "id": f"wamid.{i}", "timestamp": "1767225600", "type": "text",
                      "text": {"body": t}} for i, t in enumerate(texts)],
    }}]}]}


async def test_handshake(hook: Hook) -> None:
    ok = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"}
    async with hook.session.get(hook.url, params=ok) as resp:
        assert resp.status == 200
        assert await resp.text() == "1158201444"
        assert resp.content_type == "text/plain"
    odd = dict(ok, **{"hub.challenge": " a b=c "})
    async with hook.session.get(hook.url, params=odd) as resp:
        assert await resp.text() == " a b=c "  # verbatim, not trimmed
    for bad in (dict(ok, **{"hub.verify_token": "wrong"}), dict(ok, **{"hub.mode": "unsubscribe"}),
                {"hub.challenge": "1"}):
        async with hook.session.get(hook.url, params=bad) as resp:
            assert resp.status == 403
            assert "1158201444" not in await resp.text()


async def test_valid_fixtures_reach_the_sink(hook: Hook) -> None:
    for name in ("text_message.json", "status_read.json", "user_preferences_stop.json", "errors_only.json",
                 "batch_two_users.json"):
        assert (await hook.post(fixture(name)))[0] == 200
    assert [len(n.messages) for n in hook.sink.accepted] == [1, 0, 0, 0, 2]
    assert (hook.stats.messages, hook.stats.statuses, hook.stats.preferences, hook.stats.errors) == (3, 1, 1, 1)
    assert hook.stats.received == 5 and hook.stats.rejected_signature == 0


@pytest.mark.parametrize("signature", [None, "", "sha256=" + "0" * 64, "sha1=abc", "garbage"])
async def test_bad_or_missing_signature_is_401_and_stores_nothing(hook: Hook, signature: str | None) -> None:
    status, _ = await hook.post(fixture("text_message.json"), signature=signature)
    assert status == 401
    assert hook.sink.accepted == []
    assert hook.stats.rejected_signature == 1 and hook.stats.messages == 0


async def test_signature_from_another_secret_is_401(hook: Hook) -> None:
    raw = fixture("text_message.json")
    status, _ = await hook.post(raw, signature=sign(raw, "rotated-secret"))
    assert status == 401 and hook.sink.accepted == []


async def test_non_ascii_is_verified_over_raw_bytes(hook: Hook) -> None:
    text = "\u00a1Hola! \u00bfQu\u00e9 tal? Se\u00f1or M\u00fcller \U0001f44b/\u2713"
    escaped = json.dumps(text_body([text])).replace("/", "\\/").encode("ascii")  # Meta's wire form
    utf8 = json.dumps(text_body([text]), ensure_ascii=False).encode("utf-8")
    for raw in (escaped, utf8):
        assert (await hook.post(raw))[0] == 200
    assert [n.messages[0].text for n in hook.sink.accepted] == [text, text]
    # a signature over a re-serialised body does not pass
    status, _ = await hook.post(escaped, signature=sign(utf8, SECRET))
    assert status == 401


async def test_over_three_mib_is_413(hook: Hook) -> None:
    raw = b'{"object":"whatsapp_business_account","entry":[],"pad":"' + b"x" * WEBHOOK_CLIENT_MAX_SIZE + b'"}'
    status, _ = await hook.post(raw)
    assert status == 413
    assert hook.sink.accepted == []


async def test_two_and_a_half_megabyte_batch_is_accepted(hook: Hook) -> None:
    texts = [f"{i:04d} " + "m\u00e1s " * 450 for i in range(600)]
    raw = json.dumps(text_body(texts)).encode()
    assert 2_400_000 < len(raw) < 3_000_000
    status, _ = await hook.post(raw)
    assert status == 200
    (n,) = hook.sink.accepted
    assert len(n.messages) == 600
    assert n.messages[599].text == texts[599]
    assert hook.stats.messages == 600


async def test_unknown_number_is_dropped_and_counted(hook: Hook) -> None:
    status, _ = await hook.post(json.dumps(text_body(["hi"], pnid="999")).encode())
    assert status == 200 and hook.sink.accepted == []
    assert hook.stats.unknown_number == 1
    mixed = text_body(["mine"])
    mixed["entry"] += text_body(["theirs", "theirs too"], pnid="999")["entry"]
    await hook.post(json.dumps(mixed).encode())
    (n,) = hook.sink.accepted
    assert [m.text for m in n.messages] == ["mine"]
    assert hook.stats.unknown_number == 3


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"object": "page", "entry": []}', b"\xff\xfe\x00",
                                 b"[" * 50_000 + b"]" * 50_000])
async def test_signed_but_malformed_is_200_and_counted(hook: Hook, raw: bytes) -> None:
    status, _ = await hook.post(raw)
    assert status == 200
    assert hook.sink.accepted == []
    assert hook.stats.rejected_payload == 1


async def test_sink_failure_is_503_then_the_retry_succeeds(hook: Hook) -> None:
    raw = fixture("text_message.json")
    hook.sink.fail = True
    assert (await hook.post(raw))[0] == 503
    assert hook.stats.sink_failures == 1 and hook.stats.messages == 0
    hook.sink.fail = False
    assert (await hook.post(raw))[0] == 200  # Meta's redelivery
    assert len(hook.sink.accepted) == 1 and hook.stats.messages == 1


async def test_answer_comes_only_after_accept_returns(hook: Hook) -> None:
    import asyncio

    gate = asyncio.Event()
    accepted: list[Notification] = []

    async def slow_accept(n: Notification) -> None:
        await gate.wait()
        accepted.append(n)

    hook.sink.accept = slow_accept  # type: ignore[method-assign]
    task = asyncio.create_task(hook.post(fixture("text_message.json")))
    await asyncio.sleep(0.1)
    assert not task.done()
    gate.set()
    assert (await task)[0] == 200 and len(accepted) == 1


def test_refuses_a_small_body_limit_and_empty_secrets() -> None:
    kwargs: dict[str, Any] = {"verify_token": VERIFY, "app_secret": SECRET, "sink": Sink(),
                              "known_numbers": lambda _: True, "stats": WebhookStats()}
    with pytest.raises(ConfigError, match="client_max_size"):
        add_webhook_routes(web.Application(), **kwargs)
    with pytest.raises(ConfigError, match="app_secret"):
        add_webhook_routes(web.Application(client_max_size=WEBHOOK_CLIENT_MAX_SIZE), **dict(kwargs, app_secret=""))
    assert WebhookStats(received=2).as_dict()["received"] == 2


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25,
)
hostile = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps({"object": "whatsapp_business_account", "entry": [
        {"changes": [{"field": "messages", "value": {"metadata": {"phone_number_id": PNID}, "messages": v,
                                                      "statuses": v, "contacts": v}}]}]}).encode()),
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=3000).map(lambda n: b'{"object":"whatsapp_business_account","entry":'
                                                 + b"[" * n + b"]" * n + b"}"),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=hostile)
async def test_hostile_signed_bodies_never_500(hook: Hook, raw: bytes) -> None:
    status, _ = await hook.post(raw)
    assert status == 200  # never a 500: hostile but signed bodies are acknowledged and counted


async def test_server_keeps_serving_after_hostile_input(hook: Hook) -> None:
    for raw in (b"\x00" * 10, b'{"object":"whatsapp_business_account","entry":[{"changes":[{"value":[]}]}]}'):
        assert (await hook.post(raw))[0] == 200
    assert (await hook.post(fixture("text_message.json")))[0] == 200
    assert len(hook.sink.accepted) == 1
