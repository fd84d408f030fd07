"""Campaign throughput and memory: the achieved send rate against the configured cap, and peak memory as
the audience grows (flat = the audience is streamed, never loaded whole).

    python bench/campaign.py --store memory --recipients 100000 --rate 1000
    python bench/campaign.py --store memory --memory 10000,50000,100000 --rate 1000
    python bench/campaign.py --store mongo --recipients 2000 --rate 1000 [--uri mongodb://...]

The fake Graph API (``bot.whatsapp.simulator``) runs in its own process and is reached over HTTP on
loopback, exactly as the runner reaches Meta. Its status webhooks are switched off: the bench measures
the send path (each message still goes through the outbox, the send gate and a real HTTP request).
Without ``--uri`` the MongoDB store runs on a fresh ``secantusd-py --storage-path :memory:``
(SecantusDB, a MongoDB-wire server written in Python: its figures are that server's, not mongod's).

The memory store's ``count_sent_since`` (the frequency-cap count the gate needs for every marketing
message) scans every transcript entry: O(entries) per call, O(n^2) per campaign. Unless
``--stock-memory-count`` is given, the bench keeps a per-subject index of accepted marketing messages
for the memory store (same answers, O(1) per call) so the figure is the runner's, not that scan's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import socket
import subprocess
import sys
import textwrap
import time
import tracemalloc
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.core.audience import TemplateButton, TemplateDeclaration
from bot.core.conversation import Conversation, PurposeState, PurposeStatus
from bot.core.messages import Category
from bot.core.project import Controller, Project, Purpose
from bot.runtime.broadcast import CampaignRunner, RunOptions, new_campaign
from bot.runtime.privacy import PrivacyService
from bot.store.base import OutState, SendOutcome, Store
from bot.store.broadcasts import Broadcasts
from bot.whatsapp.client import GraphClient, make_session

ROOT = str(Path(__file__).resolve().parent.parent)
PNID = "100000000000001"
TOKEN = "bench-token"
SECRET = "bench-secret"
PROJECT = Project(
    controller=Controller("Bench SL", "a@example.com", "d@example.com", "https://example.com/p", "AEPD"),
    purposes=(Purpose("offers", {"en": "Offers"}),),
    marketing_cap_per_week=3,
)
DECL = TemplateDeclaration(name="spring_offer", language="en", parameters=("first_name",),
                           footer="Reply STOP to opt out",
                           buttons=(TemplateButton("quick_reply", "Stop promotions", "optout"),))

SIMULATOR = textwrap.dedent("""
    import sys
    from aiohttp import web
    from bot.whatsapp.simulator import SIMULATOR, create_simulator_app
    app = create_simulator_app(app_secret=sys.argv[2], webhook_url="http://127.0.0.1:9/off",
                               access_token=sys.argv[3], phone_numbers={sys.argv[4]: "15550009999"})
    sim = app[SIMULATOR]
    async def no_statuses(customer, bubble):
        return None
    sim._deliver_statuses = no_statuses  # the bench measures the send path only
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_simulator() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SIMULATOR, str(port), SECRET, TOKEN, PNID],  # noqa: ASYNC220
                            cwd=ROOT)
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return proc, f"http://127.0.0.1:{port}/graph"
        except OSError:
            await asyncio.sleep(0.05)
    proc.kill()
    raise RuntimeError("the simulator did not start")


def index_memory_count(store: Any) -> None:
    """Give the memory store an O(1) frequency-cap count (see the module docstring)."""
    transcript = store.transcript
    accepted: dict[tuple[str, Category], list[datetime]] = defaultdict(list)
    settle = transcript.settle

    async def indexed_settle(entry_id: str, owner: str, outcome: SendOutcome, now: datetime) -> bool:
        ok: bool = await settle(entry_id, owner, outcome, now)
        if ok and outcome.state is OutState.ACCEPTED:
            entry = transcript._d.transcript[entry_id].entry
            if entry.outbound is not None:
                accepted[(entry.subject, entry.outbound.category)].append(now)
        return ok

    async def count_sent_since(subject: str, category: Category, since: datetime) -> int:
        return sum(1 for at in accepted.get((subject, category), ()) if at >= since)

    transcript.settle = indexed_settle
    transcript.count_sent_since = count_sent_since


async def populate(kind: str, store: Store, n: int, now: datetime) -> None:
    since = now - timedelta(days=1)
    if kind == "memory":
        from bot.store.memory import _Head

        heads = store._data.heads  # type: ignore[attr-defined]
        for i in range(n):
            subject = f"34{i:09d}"
            conv = Conversation.start(PNID, subject, "consent", "1", "subscribed", "en", now, wa_id=subject,
                                      profile_name="Ana")
            conv = conv.evolve(consent={"offers": PurposeStatus(PurposeState.GRANTED, since, "1.0")},
                               slots={"age_ok": True}, version=1)
            heads[conv.key] = _Head(conversation=conv)
        return
    from bot.store.mongo import _head_doc

    coll = store.database["conversations"]  # type: ignore[attr-defined]
    batch = []
    for i in range(n):
        subject = f"34{i:09d}"
        conv = Conversation.start(PNID, subject, "consent", "1", "subscribed", "en", now, wa_id=subject,
                                  profile_name="Ana")
        conv = conv.evolve(consent={"offers": PurposeStatus(PurposeState.GRANTED, since, "1.0")},
                           slots={"age_ok": True}, version=1)
        doc = _head_doc(conv)
        doc["_id"] = conv.key
        batch.append(doc)
        if len(batch) == 1000:
            await coll.insert_many(batch)
            batch = []
    if batch:
        await coll.insert_many(batch)


async def open_stores(kind: str, uri: str | None) -> tuple[Store, Broadcasts, Any, Any]:
    """(store, broadcasts, privacy store, cleanup)."""
    if kind == "memory":
        from bot.store.broadcasts_memory import MemoryBroadcasts
        from bot.store.memory import MemoryStore
        from bot.store.privacy_memory import MemoryPrivacyStore

        memory = MemoryStore()
        await memory.open()

        async def nothing() -> None:
            return None

        return memory, MemoryBroadcasts(memory), MemoryPrivacyStore(), nothing
    from bot.store.broadcasts_mongo import MongoBroadcasts
    from bot.store.embedded import EmbeddedServer
    from bot.store.mongo import MongoStore
    from bot.store.privacy_mongo import MongoPrivacyStore

    server = None
    if uri is None:
        server = EmbeddedServer(":memory:")
        uri = await server.start()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    store = MongoStore.from_uri(uri, name)
    await store.open()
    broadcasts = MongoBroadcasts(store.database)
    await broadcasts.open()
    privacy = MongoPrivacyStore(store.database)
    await privacy.open()

    async def cleanup() -> None:
        await store.database.client.drop_database(name)
        await store.close()
        if server is not None:
            await server.stop()

    return store, broadcasts, privacy, cleanup


async def one_run(kind: str, uri: str | None, n: int, rate: float, graph_url: str, *, trace: bool,
                  stock_count: bool) -> dict[str, Any]:
    store, broadcasts, privacy_store, cleanup = await open_stores(kind, uri)
    try:
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        await populate(kind, store, n, now)
        populate_s = time.perf_counter() - t0
        if kind == "memory" and not stock_count:
            index_memory_count(store)
        privacy = PrivacyService(store, privacy_store, PROJECT, b"bench-deployment-secret")
        session = make_session(limit=200)
        client = GraphClient(session, base_url=graph_url, api_version="v23.0", access_token=TOKEN,
                             rate_per_second=rate)
        campaign = new_campaign(name="bench", decl=DECL, purpose="offers", project=PROJECT, phone_number_id=PNID,
                                now=now, params={"first_name": "{{ profile_name }}"}, rate=rate)
        await broadcasts.create(campaign)
        runner = CampaignRunner(broadcasts, store, client, PROJECT, is_suppressed=privacy.is_suppressed,
                                is_restricted=privacy.is_restricted, options=RunOptions(progress_every=2.0))
        samples: list[tuple[float, int]] = []

        def progress(p: dict[str, Any]) -> None:
            samples.append((time.perf_counter(), int(p["accepted"])))
            print(f"  {p['accepted']:>7} sent  {p['rate']:7.1f}/s  pending {p['pending']:>7}", file=sys.stderr)

        gc.collect()
        if trace:
            tracemalloc.start()
            tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0] if trace else 0
        started = time.perf_counter()
        result = await runner.run(campaign.id, on_progress=progress)
        elapsed = time.perf_counter() - started
        out: dict[str, Any] = {"store": kind, "recipients": n, "cap": rate, "accepted": result["accepted"],
                               "seconds": round(elapsed, 2), "rate": round(result["accepted"] / elapsed, 1),
                               "populate_seconds": round(populate_s, 1)}
        # steady rate: between 10 % and 90 % of the messages (excludes start-up and the tail)
        lo, hi = n * 0.1, n * 0.9
        window = [(t, a) for t, a in samples if lo <= a <= hi]
        if len(window) >= 2:
            (t1, a1), (t2, a2) = window[0], window[-1]
            out["steady_rate"] = round((a2 - a1) / (t2 - t1), 1) if t2 > t1 else None
        out["rate_vs_cap"] = f"{100 * out['rate'] / rate:.1f} %"
        if trace:
            current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            out |= {"traced_base_mib": round(base / 2**20, 1), "traced_end_mib": round(current / 2**20, 1),
                    "traced_peak_mib": round(peak / 2**20, 1),
                    "runner_working_mib": round((peak - current) / 2**20, 1),
                    "store_growth_mib": round((current - base) / 2**20, 1)}
        await session.close()
        return out
    finally:
        await cleanup()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", choices=("memory", "mongo"), default="memory")
    ap.add_argument("--uri", default=None, help="MongoDB URI (default: a fresh SecantusDB)")
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="the campaign's cap, messages/s (<= 1000)")
    ap.add_argument("--memory", default="", help="audience sizes for the memory pass, e.g. 10000,50000,100000")
    ap.add_argument("--stock-memory-count", action="store_true", help="keep the memory store's O(n) cap count")
    args = ap.parse_args()
    sim, graph_url = await start_simulator()
    results = []
    try:
        if args.memory:
            for n in (int(x) for x in args.memory.split(",")):
                print(f"memory pass: {n} recipients", file=sys.stderr)
                results.append(await one_run(args.store, args.uri, n, args.rate, graph_url, trace=True,
                                             stock_count=args.stock_memory_count))
        else:
            print(f"rate pass: {args.recipients} recipients at {args.rate:g}/s on {args.store}", file=sys.stderr)
            results.append(await one_run(args.store, args.uri, args.recipients, args.rate, graph_url, trace=False,
                                         stock_count=args.stock_memory_count))
    finally:
        sim.terminate()
        sim.wait(10)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(json.dumps({"machine": machine, "date": datetime.now(UTC).strftime("%Y-%m-%d"),
                      "command": " ".join(["python", "bench/campaign.py", *sys.argv[1:]]), "results": results},
                     indent=2))


if __name__ == "__main__":
    asyncio.run(main())
