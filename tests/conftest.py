"""Fixtures shared by the whole suite.

- ``mongo_uri`` (session): ONE MongoDB-wire server for the run — ``secantusd-py --storage-path
  :memory:`` on a free loopback port, stopped at the end — or the server named by
  ``CONSENTBOT_TEST_MONGODB_URI``. A missing ``secantusd-py`` fails the tests that need it (it is
  never a skip).
- ``mongo_database`` (function): a fresh database name, dropped after the test.
- ``mongo_store``: an opened :class:`MongoStore` (PyMongo async driver) on that fresh database.
- ``memory_store``: an opened :class:`MemoryStore`.
- A guard (autouse) that fails any test during which one event-loop callback ran longer than
  ``CONSENTBOT_TEST_BLOCKING_SECONDS`` (default 0.25 s): blocking calls in async code. It times each
  ``asyncio`` callback (two clock reads per callback) instead of running the loop in debug mode.
  ``blocked_loop_calls`` gives a test the list of what the guard caught. Pauses of this process's
  garbage collector are not counted: the heap it scans is the whole test session's (over a thousand
  tests' worth), not the code under test's, and late in a run one full collection takes ~0.1 s.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from bot.store.embedded import EmbeddedServer
from bot.store.memory import MemoryStore
from bot.store.mongo import MongoStore

BLOCKING_SECONDS = float(os.environ.get("CONSENTBOT_TEST_BLOCKING_SECONDS", "0.25"))


# --- the blocked-event-loop guard ----------------------------------------------------------------
_blocked: list[str] = []
_excused = [0.0]  # seconds not the test's own blocking: starting the shared test server, collector pauses
_collecting_since = [0.0]
_original_run: Callable[[asyncio.Handle], None] = asyncio.events.Handle._run


def _timed_run(self: asyncio.Handle) -> None:
    start, excused = time.perf_counter(), _excused[0]
    try:
        _original_run(self)
    finally:
        took = time.perf_counter() - start - (_excused[0] - excused)
        if took > BLOCKING_SECONDS:
            callback = getattr(self, "_callback", None)
            what = getattr(callback, "__self__", None) or callback  # a task step names its task
            _blocked.append(f"{took:.3f} s in {what!r}")


def _excuse_collections(phase: str, info: dict[str, int]) -> None:
    """``gc.callbacks`` hook: add each collection's duration to the excused time."""
    if phase == "start":
        _collecting_since[0] = time.perf_counter()
    else:
        _excused[0] += time.perf_counter() - _collecting_since[0]


def pytest_configure(config: pytest.Config) -> None:
    asyncio.events.Handle._run = _timed_run  # type: ignore[method-assign]
    gc.callbacks.append(_excuse_collections)


def pytest_unconfigure(config: pytest.Config) -> None:
    asyncio.events.Handle._run = _original_run  # type: ignore[method-assign]
    gc.callbacks.remove(_excuse_collections)


@pytest.fixture
def blocked_loop_calls() -> list[str]:
    """What the guard caught so far in this test (clear it to accept a deliberate block)."""
    return _blocked


@pytest.fixture(autouse=True)
def _no_blocked_event_loop() -> Iterator[None]:
    _blocked.clear()
    yield
    if _blocked:
        caught = "\n  ".join(_blocked)
        _blocked.clear()
        pytest.fail(f"the event loop was blocked for more than {BLOCKING_SECONDS} s:\n  {caught}", pytrace=False)


# --- one MongoDB-wire server per session ---------------------------------------------------------
class _LoopThread:
    """An event loop on a thread that lives for the whole session. The server is started from it, so
    its parent-death signal is tied to a thread that outlives every test (not to a test's loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-mongo-server", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """The test server's URI (``CONSENTBOT_TEST_MONGODB_URI`` wins)."""
    configured = os.environ.get("CONSENTBOT_TEST_MONGODB_URI")
    if configured:
        yield configured
        return
    started = time.perf_counter()
    runner = _LoopThread()
    server = EmbeddedServer(":memory:")
    try:
        uri = runner.run(server.start())
        # First requested from inside an async fixture, this start blocks that test's loop: excuse it.
        _excused[0] += time.perf_counter() - started
        yield uri
    finally:
        runner.run(server.stop())
        runner.close()


@pytest.fixture
async def mongo_database(mongo_uri: str) -> AsyncIterator[str]:
    """A database name no other test uses; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        await client.drop_database(name)
    finally:
        await client.close()


@pytest.fixture
async def mongo_store(mongo_uri: str, mongo_database: str) -> AsyncIterator[MongoStore]:
    store = MongoStore.from_uri(mongo_uri, mongo_database, serverSelectionTimeoutMS=5000)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def memory_store() -> MemoryStore:
    store = MemoryStore()
    await store.open()
    return store
