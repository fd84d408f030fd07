"""Builds a running process from settings. The only module that names concrete adapters.

``open_store`` picks the database (the embedded server when no ``MONGODB_URI`` is set, or the memory
adapter on request), and ``build_services`` joins the store, the Graph client (or the sandbox), the
flows and the runtime into one :class:`bot.runtime.services.Services`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from contextlib import AsyncExitStack
from urllib.parse import urlsplit

from bot.errors import ConfigError, StoreError
from bot.settings import Settings
from bot.store.base import Store

log = logging.getLogger("consentbot.wiring")

PING_TIMEOUT = 5.0


def describe_uri(uri: str) -> str:
    """host:port of a MongoDB URI, without credentials (safe for messages)."""
    try:
        parts = urlsplit(uri)
        return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "?"
    except ValueError:
        return "?"


async def open_store(settings: Settings, stack: AsyncExitStack, kind: str = "mongo") -> Store:
    """Open the configured store and register its cleanup on ``stack``.

    ``kind="memory"`` uses the in-process memory adapter (nothing persists). Otherwise the MongoDB
    adapter connects to ``MONGODB_URI``, or starts the embedded MongoDB-wire server with its data under
    ``<project>/.consentbot/db``. An unreachable database stops start-up with a ConfigError."""
    if kind == "memory":
        from bot.store.memory import MemoryStore

        memory = MemoryStore()
        await memory.open()
        return memory
    from bot.store.mongo import MongoStore

    uri = settings.mongodb_uri
    if uri is None:
        from bot.store.embedded import EmbeddedServer

        server = EmbeddedServer(settings.data_dir / "db")
        uri = await server.start()
        stack.push_async_callback(server.stop)
        log.info("embedded database started", extra={"at": describe_uri(uri), "data": str(settings.data_dir / "db")})
    store = MongoStore.from_uri(uri, settings.database, serverSelectionTimeoutMS=int(PING_TIMEOUT * 1000))
    stack.push_async_callback(store.close)
    try:
        await asyncio.wait_for(store.open(), PING_TIMEOUT * 2)
    except (StoreError, TimeoutError) as exc:
        raise ConfigError(
            "MONGODB_URI", f"cannot reach the database at {describe_uri(uri)} ({type(exc).__name__})"
        ) from None
    return store


def process_owner() -> str:
    """A unique name for this process (lease owner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


async def close_quietly(stack: AsyncExitStack) -> None:
    with contextlib.suppress(Exception):
        await stack.aclose()
