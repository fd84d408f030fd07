"""Runs the storage contract (``contract.py``) on the memory adapter, on MongoDB through PyMongo's
async driver, and on MongoDB through a Motor client an application might already hold."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from contract import LEASE, StoreContract, at, conversation, first_commit, outbound, step
from motor.motor_asyncio import AsyncIOMotorClient

from bot.core.rendering import NoticeText
from bot.store.base import Store
from bot.store.memory import MemoryStore
from bot.store.mongo import MongoStore
from bot.store.privacy import InvalidRecord, Notices
from bot.store.privacy_memory import MemoryPrivacyStore
from bot.store.privacy_mongo import MongoPrivacyStore


@pytest.fixture(params=["memory", "pymongo", "motor"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        memory = MemoryStore()
        await memory.open()
        yield memory
        return
    uri: str = request.getfixturevalue("mongo_uri")
    name = f"t_{uuid.uuid4().hex[:16]}"
    if request.param == "pymongo":
        store = MongoStore.from_uri(uri, name, serverSelectionTimeoutMS=5000)
    else:  # the application's own client, not tz-aware: the store must still return aware datetimes
        motor: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(uri, serverSelectionTimeoutMS=5000)
        store = MongoStore(motor, name)
    await store.open()
    await store.open()  # idempotent
    try:
        yield store
    finally:
        await store.database.client.drop_database(name)
        await store.close()
        if request.param == "motor":
            motor.close()


class TestStoreContract(StoreContract):
    pass


# --- notices a step shows: stored with it, where the privacy store reads them ----------------------
def privacy_notices(store: Store) -> Notices:
    """The privacy store's notices on the same data as ``store``, wired as ``bot.wiring`` wires them."""
    if isinstance(store, MemoryStore):
        return MemoryPrivacyStore(store.notices).notices
    assert isinstance(store, MongoStore)
    return MongoPrivacyStore(store.database).notices


async def test_a_step_stores_its_notice_texts_with_it_once(store: Store) -> None:
    first_layer = NoticeText.of("2.0", "es", "Café Aurora SL te enviará ofertas. BAJA para darte de baja.",
                                "first_layer", "first_layer")
    prompt = NoticeText.of("2.0", "en", "Offers: up to 2 a week. Yes or no?", "purpose_offers", "prompt")
    conv = conversation()
    await first_commit(store, conv)
    notices = privacy_notices(store)
    assert await notices.many([first_layer.sha256, prompt.sha256]) == []

    await store.conversations.acquire(conv.key, "w1", at(2), LEASE)
    second = step(conv.evolve(version=2), 2, outs=(outbound(first_layer.text), outbound(prompt.text)))
    await store.steps.commit(replace(second, notices=(first_layer, prompt)), "w1")
    assert await notices.get(first_layer.sha256) == first_layer
    assert sorted(await notices.versions("2.0", "en"), key=lambda n: n.sha256) == [prompt]

    # Another step (another process, say) showing the same text: no error, still one copy.
    await store.conversations.acquire(conv.key, "w1", at(3), LEASE)
    await store.steps.commit(replace(step(conv.evolve(version=3), 3), notices=(first_layer,)), "w1")
    assert await notices.versions("2.0", "es") == [first_layer]
    assert await notices.put(first_layer) is False  # and the privacy store's own put agrees


async def test_a_step_with_a_broken_notice_is_refused_whole(store: Store) -> None:
    forged = replace(NoticeText.of("2.0", "en", "the text shown"), text="another text")
    conv = conversation()
    lease = await store.conversations.acquire(conv.key, "w1", at(0), LEASE)
    assert lease.acquired
    with pytest.raises(InvalidRecord, match="sha256 is not the hash of its text"):
        await store.steps.commit(replace(step(conv, outs=(outbound("hi"),)), notices=(forged,)), "w1")
    assert await store.conversations.get(conv.key) is None
    assert await store.transcript.for_conversation(conv.key) == []
    assert await privacy_notices(store).many([forged.sha256]) == []
