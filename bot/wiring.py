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
import secrets
import socket
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from urllib.parse import urlsplit

from aiohttp import web

from bot.errors import ConfigError, StoreError
from bot.runtime.broadcast import CampaignReceipts
from bot.runtime.dispatcher import Dispatcher
from bot.runtime.flows import FlowDecider
from bot.runtime.inbox import InboxWriter
from bot.runtime.metrics import Metrics
from bot.runtime.outbox import Sender
from bot.runtime.privacy import PrivacyService
from bot.runtime.scheduler import Poller
from bot.runtime.services import Services
from bot.settings import Settings
from bot.store.accounts import AccountStore
from bot.store.base import Store
from bot.store.broadcasts import Broadcasts
from bot.store.privacy import PrivacyStore
from bot.web.console import ConsoleOptions, PrivacyServiceActions, add_console, catalog_flows
from bot.web.console_broadcasts import add_broadcast_routes

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


async def open_privacy(settings: Settings, store: Store, stack: AsyncExitStack) -> PrivacyStore:
    """The privacy stores (notices, suppression, blocked proof, requests, restrictions) on the same
    database as ``store``, with the retention TTL indexes set to the configured values."""
    database = getattr(store, "database", None)
    if database is None:
        from bot.store.memory import MemoryStore
        from bot.store.privacy_memory import MemoryPrivacyStore

        # The memory store's step commits keep the notice texts flows show: read the same ones.
        memory = MemoryPrivacyStore(store.notices if isinstance(store, MemoryStore) else None)
        await memory.open()
        return memory
    from bot.store.privacy_mongo import MongoPrivacyStore, apply_store_retention

    privacy = MongoPrivacyStore(database)
    await privacy.open()
    await apply_store_retention(database, settings.project.retention)
    return privacy


async def open_accounts(store: Store) -> AccountStore:
    """Console accounts, sessions and the audit log on the same database as ``store``."""
    database = getattr(store, "database", None)
    accounts: AccountStore
    if database is None:
        from bot.store.accounts_memory import MemoryAccountStore

        accounts = MemoryAccountStore()
    else:
        from bot.store.accounts_mongo import MongoAccountStore

        accounts = MongoAccountStore(database)
    await accounts.open()
    return accounts


async def open_broadcasts(store: Store) -> Broadcasts:
    """Campaigns and their recipients on the same database as ``store``."""
    database = getattr(store, "database", None)
    broadcasts: Broadcasts
    if database is None:
        from bot.store.broadcasts_memory import MemoryBroadcasts
        from bot.store.memory import MemoryStore

        assert isinstance(store, MemoryStore)
        broadcasts = MemoryBroadcasts(store)
    else:
        from bot.store.broadcasts_mongo import MongoBroadcasts

        broadcasts = MongoBroadcasts(database)
    await broadcasts.open()
    return broadcasts


async def sandbox_accounts(accounts: AccountStore, now: datetime) -> str | None:
    """In the sandbox, a store with no console account gets two (``admin``: supervisor, ``privacy``:
    privacy officer) sharing one random password, returned so the banner can show it. None when
    accounts already exist."""
    from bot.store.accounts import Agent
    from bot.web.console_auth import hash_password

    if await accounts.agents.all():
        return None
    password = secrets.token_urlsafe(9)
    hashed = await asyncio.to_thread(hash_password, password)
    for name, role in (("admin", "supervisor"), ("privacy", "privacy")):
        await accounts.agents.add(Agent(name=name, role=role, password_hash=hashed, created_at=now))
    return password


def _sandbox_redirect(app: web.Application) -> None:
    async def to_phone(request: web.Request) -> web.Response:
        raise web.HTTPFound("/sandbox/")

    app.router.add_get("/sandbox", to_phone)


async def build_services(
    settings: Settings,
    stack: AsyncExitStack,
    *,
    store_kind: str = "mongo",
    base_url: str = "http://127.0.0.1:8080",
    console_options: ConsoleOptions | None = None,
) -> Services:
    """Wire one process: store, privacy, flows, Graph client (or the sandbox), runtime and web parts.

    ``base_url`` is where this process is reachable (the sandbox posts webhooks to it). Background
    parts are registered on ``services.background``; the caller starts and stops them."""
    from bot.runtime.catalog import load_catalog
    from bot.web.webhook import WebhookStats, add_webhook_routes
    from bot.whatsapp.client import GraphClient, make_session

    # Compiling every flow and template is CPU work: keep it off the event loop.
    catalog = await asyncio.to_thread(load_catalog, settings.project_dir, settings.project)
    store = await open_store(settings, stack, store_kind)
    privacy_store = await open_privacy(settings, store, stack)
    project = settings.project
    metrics = Metrics()
    services = Services(settings=settings, store=store, metrics=metrics)
    if store_kind == "memory":
        services.store_label = "memory (nothing persists)"
    elif settings.mongodb_uri is None:
        services.store_label = "embedded MongoDB-wire server"
    else:
        services.store_label = f"MongoDB at {describe_uri(settings.mongodb_uri)}"

    session = make_session(limit=settings.workers)  # one connection per worker waiting on a send
    stack.push_async_callback(session.close)
    graph_url = settings.graph_url or f"{base_url}/sandbox/graph"
    rate = max((n.rate_per_second for n in settings.numbers), default=80.0)
    client = GraphClient(
        session,
        base_url=graph_url,
        api_version=settings.api_version,
        access_token=settings.access_token.reveal(),
        rate_per_second=rate,
    )
    privacy = PrivacyService(store, privacy_store, project, settings.deployment_secret.reveal().encode())
    owner = process_owner()
    lease = settings.lease_seconds
    sender = Sender(
        store, client, project, metrics, owner, is_suppressed=privacy.is_suppressed, lease_seconds=lease,
        unknown_outcome_wait=max(10.0, 2 * lease),
    )
    decider = FlowDecider(catalog, project, {n.phone_number_id: n.flow for n in settings.numbers})
    dispatcher = Dispatcher(
        store,
        decider,
        sender,
        metrics,
        owner,
        on_request=privacy.handle_request,
        lease_seconds=lease,
        workers=settings.workers,
        store_slots=None if store_kind == "memory" else settings.store_slots,  # the memory store never waits
    )
    sender.notify = dispatcher.notify
    poller = Poller(store, dispatcher, sender, owner, lease_seconds=lease)
    services.background.extend([dispatcher, poller])
    services.components.update(
        catalog=catalog, client=client, privacy=privacy, privacy_store=privacy_store, sender=sender,
        dispatcher=dispatcher, poller=poller, owner=owner,
    )  # fmt: skip

    from bot.runtime.desk import Desk

    accounts = await open_accounts(store)
    broadcasts = await open_broadcasts(store)
    desk = Desk(store, sender, owner, templates={})
    flows = await asyncio.to_thread(catalog_flows, catalog)
    services.components.update(accounts=accounts, desk=desk, broadcasts=broadcasts)
    if settings.sandbox:
        services.components["sandbox_password"] = await sandbox_accounts(accounts, datetime.now(UTC))

    def console(app: web.Application) -> None:
        add_console(
            app, accounts, desk=desk, privacy=PrivacyServiceActions(privacy), flows=flows, options=console_options
        )
        add_broadcast_routes(app, broadcasts)

    services.web_extensions.append(console)

    stats = WebhookStats()
    services.components["webhook_stats"] = stats
    # Campaign receipts: statuses naming a campaign's outbox entry are also recorded on its recipient.
    writer = CampaignReceipts(broadcasts, InboxWriter(store.inbox, metrics, dispatcher.notify))

    def webhook(app: web.Application) -> None:
        add_webhook_routes(
            app,
            verify_token=settings.verify_token.reveal(),
            app_secret=settings.app_secret.reveal(),
            sink=writer,
            known_numbers=lambda pnid: settings.number(pnid) is not None,
            stats=stats,
        )

    services.web_extensions.append(webhook)
    if settings.sandbox:
        from bot.whatsapp.simulator import approved_texts, create_simulator_app

        simulator = create_simulator_app(
            app_secret=settings.app_secret.reveal(),
            webhook_url=f"{base_url}/webhook",
            access_token=settings.access_token.reveal(),
            phone_numbers={n.phone_number_id: n.display_number or n.phone_number_id for n in settings.numbers},
            templates=approved_texts(catalog.templates.approved_templates),  # shown as WhatsApp would
        )
        services.components["simulator"] = simulator

        def sandbox(app: web.Application) -> None:
            app.add_subapp("/sandbox", simulator)
            _sandbox_redirect(app)

        services.web_extensions.append(sandbox)
    return services
