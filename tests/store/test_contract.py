"""Runs the storage contract (``contract.py``) on the memory adapter, on MongoDB through PyMongo's
async driver, and on MongoDB through a Motor client an application might already hold."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from contract import StoreContract
from motor.motor_asyncio import AsyncIOMotorClient

from bot.store.base import Store
from bot.store.memory import MemoryStore
from bot.store.mongo import MongoStore


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
