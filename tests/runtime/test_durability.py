"""Durability across processes: `consentbot serve` run as real subprocesses against the MongoDB-wire
server and a fake Graph API served over HTTP on loopback.

- after `kill -9` in the middle of a load and a restart, every acknowledged inbound message is processed
  exactly once and every committed outbound message is sent exactly once;
- two processes on one database give no double replies and keep per-conversation order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from service_kit import PNID, ROOT, free_port, post_webhook, text_payload, wait_until

from bot.store.base import OutState, TranscriptEntry
from bot.store.mongo import MongoStore
from bot.whatsapp.simulator import SIMULATOR, Simulator, create_simulator_app

pytestmark = pytest.mark.slow

SECRET = "durability-app-secret"
TOKEN = "durability-access-token"


@dataclass
class Graph:
    sim: Simulator
    url: str


@pytest.fixture
async def graph() -> AsyncIterator[Graph]:
    port = free_port()
    app = create_simulator_app(
        app_secret=SECRET,
        webhook_url="http://127.0.0.1:1/unset",
        access_token=TOKEN,
        phone_numbers={PNID: "15550009999"},
        status_delays=(0.02, 0.04, 0.06),
    )
    sim = app[SIMULATOR]
    sim.webhook_attempts = 10  # like Meta: keep retrying while the bot is down
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield Graph(sim, f"http://127.0.0.1:{port}")
    await sim.drain(timeout=1)
    await runner.cleanup()


class Bot:
    """One `consentbot serve` process."""

    def __init__(self, env: dict[str, str], port: int, log: Path, level: str = "WARNING") -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "serve", "--project", str(ROOT), "--port", str(port), "--log-level", level],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            start_new_session=True,
        )

    async def ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"bot exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
                with suppress(aiohttp.ClientError):
                    async with session.get(f"{self.base}/readyz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError("bot did not become ready")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log_file.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log_file.close()


@pytest.fixture
def bots(tmp_path: Path) -> Iterator[list[Bot]]:
    started: list[Bot] = []
    yield started
    for bot in started:
        bot.stop()


def bot_env(mongo_uri: str, database: str, graph: Graph) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "MONGODB_", "CONSENTBOT_"))}
    env.update(
        MONGODB_URI=mongo_uri,
        CONSENTBOT_DATABASE=database,
        WHATSAPP_ACCESS_TOKEN=TOKEN,
        WHATSAPP_APP_SECRET=SECRET,
        WHATSAPP_VERIFY_TOKEN="durability-verify",
        WHATSAPP_GRAPH_URL=f"{graph.url}/graph",
        CONSENTBOT_SECRET="durability-deployment-secret-0123456789",
        CONSENTBOT_LEASE_SECONDS="2",
    )
    return env


async def deliver(base: str, payload: dict[str, object]) -> bool:
    """Meta's side: POST a signed webhook; True when acknowledged (200)."""
    try:
        return await post_webhook(base, payload, SECRET) == 200
    except aiohttp.ClientError:
        return False


async def database_view(
    mongo_uri: str, database: str, customers: list[str]
) -> tuple[Counter[str], list[TranscriptEntry], dict[str, list[str]]]:
    """(steps per inbound wamid, outbound transcript entries, inbound order per customer), read through
    the store's own ports from the database the processes share."""
    store = MongoStore.from_uri(mongo_uri, database)
    steps: Counter[str] = Counter()
    outs: list[TranscriptEntry] = []
    order: dict[str, list[str]] = {}
    try:
        for number in customers:
            key = f"{PNID}:{number}"
            inbound = [h.cause_id for h in await store.steps.history(key) if h.cause == "inbound"]
            steps.update(inbound)
            order[number] = inbound
            outs.extend(e for e in await store.transcript.for_conversation(key) if e.direction == "out")
    finally:
        await store.close()
    return steps, outs, order


SETTLED = (OutState.ACCEPTED, OutState.BLOCKED, OutState.FAILED)


def sends_by_entry(sim: Simulator) -> Counter[str]:
    return Counter(
        str(r.body.get("biz_opaque_callback_data"))
        for r in sim.requests
        if r.kind == "message" and r.status == 200 and isinstance(r.body, dict)
    )


async def test_kill9_mid_load_then_restart_processes_and_sends_exactly_once(
    mongo_uri: str, mongo_database: str, graph: Graph, bots: list[Bot], tmp_path: Path
) -> None:
    env = bot_env(mongo_uri, mongo_database, graph)
    port = free_port()
    graph.sim.webhook_url = f"http://127.0.0.1:{port}/webhook"
    customers = [f"3460100{i:04d}" for i in range(24)]
    for number in customers:
        graph.sim.add_customer(number)
    first = Bot(env, port, tmp_path / "bot1.log")
    bots.append(first)
    await first.ready()

    payloads = [
        (f"wamid.K9.{n}.{k}", text_payload(n, f"wamid.K9.{n}.{k}", text, ts=1_800_000_000 + k))
        for k, text in enumerate(["hola", "info"])
        for n in customers
    ]
    acknowledged: set[str] = set()
    half = len(payloads) // 2

    async def send(batch: list[tuple[str, dict[str, object]]]) -> None:
        results = await asyncio.gather(*(deliver(first.base if first.proc.poll() is None else second_base, p)
                                         for _, p in batch))
        acknowledged.update(w for (w, _), ok in zip(batch, results, strict=True) if ok)

    second_base = first.base
    await send(payloads[:half])
    # Kill while the first half is being worked on and the second half is arriving.
    killer = asyncio.get_running_loop().call_later(0.05, first.kill9)
    await send(payloads[half:])
    killer.cancel()
    if first.proc.poll() is None:
        first.kill9()
    assert first.proc.returncode == -signal.SIGKILL

    # Meta retries whatever was not acknowledged; the restarted service takes over the dead one's work.
    restarted = Bot(env, port, tmp_path / "bot2.log")
    bots.append(restarted)
    await restarted.ready()
    missing = [(w, p) for w, p in payloads if w not in acknowledged]
    for _w, p in missing:
        assert await deliver(restarted.base, p)
    all_ids = {w for w, _ in payloads}

    async def settled() -> bool:
        steps, outs, _ = await database_view(mongo_uri, mongo_database, customers)
        return set(steps) >= all_ids and all(o.out_state in SETTLED for o in outs)

    try:
        # A commit cut off by the kill leaves its transaction open until the server's transaction
        # lifetime (60 s) ends it; that conversation continues after that.
        await wait_until(settled, timeout=100, what="every message processed and every send settled")
    except AssertionError:
        steps, outs, _ = await database_view(mongo_uri, mongo_database, customers)
        missing_steps = sorted(all_ids - set(steps))
        unsettled = [(o.id, o.out_state, o.attempts, o.reason, o.next_attempt_at) for o in outs if o.out_state not in SETTLED]
        raise AssertionError(f"missing steps {missing_steps[:10]} ({len(missing_steps)}); unsettled {unsettled[:10]}") from None
    await asyncio.sleep(0.5)
    steps, outs, _ = await database_view(mongo_uri, mongo_database, customers)
    assert {w: c for w, c in steps.items() if c != 1} == {}, "an inbound message made more than one step"
    assert set(steps) == all_ids
    sends = sends_by_entry(graph.sim)
    assert {e: c for e, c in sends.items() if c != 1} == {}, "an outbound message reached the Graph API twice"
    accepted = {o.id for o in outs if o.out_state is OutState.ACCEPTED}
    assert accepted == set(sends), "every committed message was sent, and only those"
    assert len(accepted) >= len(customers)


async def test_two_processes_share_one_database_without_double_replies(
    mongo_uri: str, mongo_database: str, graph: Graph, bots: list[Bot], tmp_path: Path
) -> None:
    env = bot_env(mongo_uri, mongo_database, graph)
    a, b = Bot(env, free_port(), tmp_path / "a.log"), Bot(env, free_port(), tmp_path / "b.log")
    bots.extend([a, b])
    graph.sim.webhook_url = f"{a.base}/webhook"
    await asyncio.gather(a.ready(), b.ready())
    customers = [f"3460200{i:04d}" for i in range(10)]
    for number in customers:
        graph.sim.add_customer(number)
    texts = ["hola", "sí", "16", "si", "si"]  # typed answers walk the Spanish double opt-in
    # Each message goes to BOTH processes (Meta delivers concurrently and retries), in order per customer.
    for k, text in enumerate(texts):
        batch = [text_payload(n, f"wamid.TWO.{n}.{k}", text, ts=1_800_000_000 + k) for n in customers]
        results = await asyncio.gather(*(deliver(bot.base, p) for p in batch for bot in (a, b)))
        assert all(results)
        await asyncio.sleep(0.3)

    async def done() -> bool:
        steps, outs, _ = await database_view(mongo_uri, mongo_database, customers)
        return len(steps) == len(customers) * len(texts) and all(o.out_state in SETTLED for o in outs)

    await wait_until(done, timeout=60, what="both processes to drain")
    steps, _outs, order = await database_view(mongo_uri, mongo_database, customers)
    assert set(steps.values()) == {1}
    sends = sends_by_entry(graph.sim)
    assert set(sends.values()) == {1}, "no reply was sent twice"
    for number in customers:
        seen = [w.rsplit(".", 1)[1] for w in order[number]]
        assert seen == [str(k) for k in range(len(texts))], f"{number} processed out of order: {seen}"
    store = MongoStore.from_uri(mongo_uri, mongo_database)
    try:
        for number in customers:
            head = await store.conversations.get(f"{PNID}:{number}")
            assert head is not None and head.state == "frequency", head and head.state
    finally:
        await store.close()
