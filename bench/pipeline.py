"""Webhook to reply, side by side in one run: a bare aiohttp handler (the ceiling), ConsentBot on the
memory store, and ConsentBot on the MongoDB-wire server.

    python bench/pipeline.py                       # all three, ~15 s each, a table at the end
    python bench/pipeline.py --seconds 10 --concurrency 64 --only memory,mongo

Processes: the server under test runs in its own process (this file with ``_serve``), like
``consentbot serve`` (INFO logs to a file, no access log). This process is Meta's side: the load
generator and a minimal fake Graph API (an aiohttp handler that checks the bearer token, records
``to`` and ``biz_opaque_callback_data`` and answers a wamid; it sends no status webhooks, so only the
inbound text and its reply load the server). The MongoDB-wire server (``secantusd-py --storage-path
:memory:``) is a third process, started here. All of them share the machine's cores.

Load: a closed loop of ``--concurrency`` customers. Each sends a signed text webhook from a number
never seen before (a first contact: the bot answers with exactly one message, the first-layer notice),
waits for the 200 (ack latency) and then for the reply to reach the fake Graph API (reply latency),
then starts over as a new customer. The first ``--warmup`` seconds are not counted. After the window
the in-flight customers finish, the server is given a second to send anything extra, and every reply
is checked: replies per inbound at the fake Graph API (lost = an acknowledged inbound with none,
dup = more than one, or a callback id sent twice) and the server's transcript (one inbound and one
accepted outbound entry per customer, carrying the wamid the fake Graph API answered).

Round trips (MongoDB only): a ``pymongo.monitoring.CommandListener`` registered in the server process
before its client exists attributes every command to the customer it served, by the context
variables the service sets (``X-Request-Id`` = the customer's number during the webhook, the
conversation key while the dispatcher runs its turn, the send and the settle included); commands in
neither context (the poller) are counted apart. One command is one round trip.

``--returning`` adds a short phase in which customers who already got the notice write again.

ConsentBot runs the repository's project (``consentbot.yaml``, ``flows/``, ``templates/``) with the
number's send rate raised to ``--rate`` (default 1000/s, Meta's highest tier; the shipped 80/s would
cap every figure at 80).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pymongo import monitoring

SELF = Path(__file__).resolve()
ROOT = SELF.parent.parent
sys.path.insert(0, str(ROOT))

from bot.runtime.heap import settle_after_start_up  # noqa: E402
from bot.whatsapp.signature import HEADER, sign, verify_signature  # noqa: E402

PNID = "100000000000001"
NUMBERS = [PNID]  # the business numbers customers write to (``--numbers``), one per customer by its number


def pnid_for(wa_id: str) -> str:
    """The business number a customer writes to: spread evenly over ``NUMBERS``."""
    return NUMBERS[int(wa_id) % len(NUMBERS)]
TOKEN = "bench-access-token"
SECRET = "bench-app-secret"
API = "v23.0"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROFILE_STOP: list[Callable[[], object]] = []  # the checks after the window are not profiled


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def resident_bytes(pid: int) -> tuple[int, int]:
    """(resident, peak resident) bytes of a process (Linux /proc: VmRSS, VmHWM)."""
    sizes = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                sizes[name] = int(value.split()[0]) * 1024
    return sizes["VmRSS"], sizes["VmHWM"]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def text_webhook(wa_id: str, wamid: str, text: str) -> bytes:
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "100000000000099", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550009999", "phone_number_id": pnid_for(wa_id)},
            "contacts": [{"profile": {"name": f"Ana {wa_id[-6:]}"}, "wa_id": wa_id}],  # names differ, as in life
            "messages": [{"from": wa_id, "id": wamid, "timestamp": str(int(time.time())), "type": "text",
                          "text": {"body": text}}],
        }}]}],
    }
    return json.dumps(payload).encode()


# ================================================================================================
# The server under test (child process)
# ================================================================================================
class Attributed(monitoring.CommandListener):
    """A pymongo CommandListener: every command, by the customer it served (see the module docstring)."""

    def __init__(self) -> None:
        self.by_customer: dict[str, list[str]] = defaultdict(list)
        self.background: Counter[str] = Counter()

    def started(self, event: Any) -> None:
        from bot import logs

        conv = logs.conversation.get()
        who = conv.split(":", 1)[1] if conv else logs.request_id.get()
        if who:
            self.by_customer[who].append(event.command_name)
        else:
            self.background[event.command_name] += 1

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


def stop_profile() -> None:
    while PROFILE_STOP:
        PROFILE_STOP.pop()()


def bare_app(graph_url: str) -> web.Application:
    """The ceiling: check the signature, parse the JSON, one Graph API call, answer 200."""
    app = web.Application(client_max_size=4 * 1024 * 1024)
    state: dict[str, aiohttp.ClientSession] = {}
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    urls = {pnid: f"{graph_url}/{API}/{pnid}/messages" for pnid in NUMBERS}

    async def on_startup(app: web.Application) -> None:
        state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

    async def on_cleanup(app: web.Application) -> None:
        await state["session"].close()

    async def receive(request: web.Request) -> web.Response:
        raw = await request.read()
        if not verify_signature(raw, request.headers.get(HEADER), SECRET):
            return web.Response(status=401, text="bad signature")
        data = json.loads(raw)
        for entry in data.get("entry", ()):
            for change in entry.get("changes", ()):
                value = change.get("value", {})
                url = urls[value["metadata"]["phone_number_id"]]
                for message in value.get("messages", ()):
                    body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": message["from"],
                            "type": "text", "text": {"body": "Thanks, we got your message."},
                            "biz_opaque_callback_data": message["id"]}
                    async with state["session"].post(url, data=json.dumps(body).encode(), headers=headers) as r:
                        answer = await r.json()
                        if r.status != 200 or not answer.get("messages"):
                            return web.Response(status=503, text="graph failed")
        return web.Response(text="ok")

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/webhook", receive)
    return app


async def serve(args: argparse.Namespace) -> None:
    """Run one server under test until SIGTERM; print READY when it listens."""
    stack = AsyncExitStack()
    listener: Attributed | None = None
    extra: Callable[[web.Application], None] | None = None
    if args.mode == "bare":
        app = bare_app(args.graph)
        services = None
    else:
        from bot import logs
        from bot.settings import load_settings
        from bot.store.base import OutState
        from bot.web.app import create_app
        from bot.wiring import build_services

        logs.configure("INFO", json_lines=True)  # like `consentbot serve`; stderr goes to a file
        if args.mode == "mongo":
            listener = Attributed()
            monitoring.register(listener)  # before the service's client exists
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "MONGODB_", "CONSENTBOT_"))}
        env.update(WHATSAPP_ACCESS_TOKEN=TOKEN, WHATSAPP_APP_SECRET=SECRET, WHATSAPP_VERIFY_TOKEN="bench-verify",
                   WHATSAPP_GRAPH_URL=args.graph, CONSENTBOT_SECRET="bench-deployment-secret-0123456789")
        if args.mode == "mongo":
            env.update(MONGODB_URI=args.uri, CONSENTBOT_DATABASE=f"bench_{os.getpid()}")
        settings = load_settings(ROOT, env=env)
        first = settings.numbers[0]
        numbers = tuple(dataclasses.replace(first, phone_number_id=pnid, rate_per_second=args.rate) for pnid in NUMBERS)
        settings = dataclasses.replace(settings, numbers=numbers)
        base = f"http://127.0.0.1:{args.port}"
        services = await build_services(settings, stack, store_kind=args.mode, base_url=base)
        store = services.store

        def bench_routes(app: web.Application) -> None:
            async def stats(request: web.Request) -> web.Response:
                stop_profile()
                assert listener is not None
                return web.json_response({"by_customer": listener.by_customer, "background": listener.background})

            async def transcript(request: web.Request) -> web.Response:
                stop_profile()
                subjects: list[str] = await request.json()
                out: dict[str, list[list[str]]] = {}
                limit = asyncio.Semaphore(8)

                async def one(subject: str) -> None:
                    async with limit:
                        entries = await store.transcript.for_conversation(f"{pnid_for(subject)}:{subject}")
                    out[subject] = [[e.direction, str(e.out_state or ""), e.wamid] for e in entries]

                await asyncio.gather(*(one(s) for s in subjects))
                pending = await store.inbox.count_pending()
                states = Counter(e[1] for rows in out.values() for e in rows if e[0] == "out")
                return web.json_response({"transcript": out, "inbox_pending": pending,
                                          "out_states": states, "accepted": str(OutState.ACCEPTED)})

            app.router.add_get("/_bench/stats", stats)
            app.router.add_post("/_bench/transcript", transcript)

        extra = bench_routes
        services.web_extensions.append(extra)
        app = create_app(services)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    if services is not None:
        services.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    settle_after_start_up()  # what `consentbot serve` does before traffic starts (bot.runtime.heap)
    print("READY", flush=True)
    await stop.wait()
    if services is not None:
        await services.stop()
    await runner.cleanup()
    await stack.aclose()


# ================================================================================================
# Meta's side (this process): fake Graph API + load generator
# ================================================================================================
class FakeGraph:
    """POST /<version>/<pnid>/messages: record the send, answer a wamid, wake whoever waits for it."""

    def __init__(self) -> None:
        self.replies: dict[str, list[tuple[str, str, float]]] = defaultdict(list)  # to -> (callback, wamid, t)
        self.callbacks: Counter[str] = Counter()
        self.waiters: dict[str, tuple[int, asyncio.Future[float]]] = {}
        self.n = 0
        self.unauthorised = 0

    def expect(self, to: str, count: int) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters[to] = (count, fut)
        return fut

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.unauthorised += 1
            return web.json_response({"error": {"code": 190, "message": "bad token"}}, status=401)
        body = json.loads(await request.read())
        to = str(body.get("to", "")).lstrip("+")
        callback = str(body.get("biz_opaque_callback_data", ""))
        self.n += 1
        wamid = f"wamid.benchout.{self.n}"
        now = time.perf_counter()
        self.replies[to].append((callback, wamid, now))
        self.callbacks[callback] += 1
        waiter = self.waiters.get(to)
        if waiter is not None and len(self.replies[to]) >= waiter[0] and not waiter[1].done():
            waiter[1].set_result(now)
            del self.waiters[to]
        return web.json_response({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}],
                                  "messages": [{"id": wamid, "message_status": "accepted"}]})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{version}/{pnid}/messages", self.handle)
        return app


@dataclasses.dataclass
class Phase:
    name: str
    sent: int = 0
    acked: int = 0
    refused: int = 0
    errors: int = 0
    timeouts: int = 0
    counted: int = 0
    ack_ms: list[float] = dataclasses.field(default_factory=list)
    reply_ms: list[float] = dataclasses.field(default_factory=list)
    customers: list[str] = dataclasses.field(default_factory=list)  # acknowledged
    cpu_server: float = 0.0
    cpu_db: float = 0.0
    cpu_driver: float = 0.0
    seconds: float = 0.0
    rss_start: int = 0  # the server's resident bytes when the window opened
    rss_end: int = 0  # ... when it closed
    rss_peak: int = 0  # the server's peak resident bytes since it started
    started_in_window: int = 0  # inbound messages posted between the window's start and end

    @property
    def rate(self) -> float:
        return self.counted / self.seconds if self.seconds else 0.0

    def count(self, t0: float, t_ack: float, t_reply: float) -> None:
        self.counted += 1
        self.ack_ms.append((t_ack - t0) * 1000)
        self.reply_ms.append((t_reply - t0) * 1000)


async def exchange(session: aiohttp.ClientSession, url: str, graph: FakeGraph, phase: Phase, wa_id: str,
                   wamid: str, text: str, expect: int) -> tuple[float, float, float] | None:
    """One customer's text: post the signed webhook, then wait for the fake Graph API to have ``expect``
    replies for the number. Returns (sent, acknowledged, replied) times, or None (counted in ``phase``)."""
    raw = text_webhook(wa_id, wamid, text)
    fut = graph.expect(wa_id, expect)
    t0 = time.perf_counter()
    phase.sent += 1
    try:
        async with session.post(url, data=raw, headers={
            "Content-Type": "application/json", HEADER: sign(raw, SECRET), "X-Request-Id": wa_id,
        }) as r:
            await r.read()
            status = r.status
    except aiohttp.ClientError:
        phase.errors += 1
        graph.waiters.pop(wa_id, None)
        return None
    t_ack = time.perf_counter()
    if status != 200:
        phase.refused += 1
        graph.waiters.pop(wa_id, None)
        return None
    phase.acked += 1
    phase.customers.append(wa_id)
    try:
        t_reply = await asyncio.wait_for(fut, 30)
    except TimeoutError:
        phase.timeouts += 1
        graph.waiters.pop(wa_id, None)
        return None
    return t0, t_ack, t_reply


async def closed_loop(session: aiohttp.ClientSession, url: str, graph: FakeGraph, phase: Phase, *,
                      numbers: Callable[[], tuple[str, str, int]], text: str, concurrency: int, warmup: float,
                      seconds: float, pids: tuple[int | None, int | None]) -> None:
    """``concurrency`` customers in a closed loop; counts replies whose customer started after the
    warm-up and before the end of the window."""
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + seconds
    marks: dict[str, float] = {}

    async def customer() -> None:
        while time.perf_counter() < t_end:
            wa_id, wamid, expect = numbers()
            times = await exchange(session, url, graph, phase, wa_id, wamid, text, expect)
            if times is not None and t_measure <= times[0] and times[2] <= t_end:
                phase.count(*times)

    async def cpu_mark() -> None:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        for label, pid in zip(("server", "db"), pids, strict=True):
            if pid:
                marks[label] = cpu_seconds(pid)
        marks["driver"] = cpu_seconds(os.getpid())
        server, db = pids
        sent = phase.sent
        if server:
            phase.rss_start = resident_bytes(server)[0]
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        phase.cpu_driver = cpu_seconds(os.getpid()) - marks["driver"]
        phase.started_in_window = phase.sent - sent
        if server:
            phase.cpu_server = cpu_seconds(server) - marks["server"]
            phase.rss_end, phase.rss_peak = resident_bytes(server)
        if db:
            phase.cpu_db = cpu_seconds(db) - marks["db"]

    await asyncio.gather(cpu_mark(), *(customer() for _ in range(concurrency)))
    phase.seconds = seconds


async def start_server(mode: str, graph_url: str, log: Path, *, uri: str = "", rate: float = 1000.0, numbers: int = 1,
                       profile: str = "", args_profiler: str = "cprofile") -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, str(SELF), "_serve", "--mode", mode, "--port", str(port),
           "--graph", graph_url, "--uri", uri, "--rate", str(rate), "--numbers", str(numbers)]
    if profile:
        suffix = "txt" if args_profiler == "pyinstrument" else "prof"
        cmd += ["--profile", str(Path(profile) / f"{mode}.{suffix}")]
    err = log.open("ab")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)  # noqa: ASYNC220
    err.close()
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
    if line.strip() != b"READY":
        proc.kill()
        tail = (await asyncio.to_thread(log.read_text))[-2000:]
        raise RuntimeError(f"{mode} server did not start: {tail}")
    return proc, f"http://127.0.0.1:{port}"


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def check_replies(graph: FakeGraph, phase: Phase, expect: int) -> dict[str, Any]:
    """Replies per acknowledged inbound at the fake Graph API."""
    per = Counter(len(graph.replies.get(c, ())) for c in phase.customers)
    lost = sum(1 for c in phase.customers if len(graph.replies.get(c, ())) < expect)
    dup = sum(1 for c in phase.customers if len(graph.replies.get(c, ())) > expect)
    dup_callbacks = sum(1 for c in phase.customers for cb, _, _ in graph.replies.get(c, ())
                        if graph.callbacks[cb] > 1)
    return {"lost": lost, "dup": dup, "dup_callbacks": dup_callbacks, "replies_per_inbound": dict(per)}


async def check_transcript(session: aiohttp.ClientSession, base: str, graph: FakeGraph, customers: list[str],
                           ins: int, outs: int) -> dict[str, Any]:
    """Each customer: ``ins`` inbound and ``outs`` accepted outbound entries, wamids as answered."""
    async with session.post(f"{base}/_bench/transcript", json=customers) as r:
        data = await r.json()
    bad = []
    for c in customers:
        rows = data["transcript"].get(c, [])
        n_in = sum(1 for d, _, _ in rows if d == "in")
        accepted = [w for d, s, w in rows if d == "out" and s == data["accepted"]]
        given = {w for _, w, _ in graph.replies.get(c, ())}
        if n_in != ins or len(accepted) != outs or set(accepted) != given:
            bad.append(c)
    return {"transcript_mismatches": len(bad), "inbox_pending": data["inbox_pending"],
            "out_states": data["out_states"], "example_bad": bad[:3]}


async def scenario(mode: str, args: argparse.Namespace, graph: FakeGraph, graph_url: str, workdir: Path,
                   index: int, uri: str, db_pid: int | None) -> dict[str, Any]:
    proc, base = await start_server(mode, graph_url, workdir / f"{mode}.log", uri=uri, rate=args.rate, numbers=args.numbers,
                                     profile=args.profile, args_profiler=args.profiler)
    result: dict[str, Any] = {"mode": mode}
    try:
        connector = aiohttp.TCPConnector(limit=args.concurrency + 8)
        async with aiohttp.ClientSession(connector=connector) as session:
            seq = iter(range(10**7))

            def first_contact() -> tuple[str, str, int]:
                i = next(seq)
                return f"346{index}{i:07d}", f"wamid.bench.{mode}.{index}.{i}", 1

            phase = Phase("first contact")
            await closed_loop(session, f"{base}/webhook", graph, phase, numbers=first_contact, text="hola",
                              concurrency=args.concurrency, warmup=args.warmup, seconds=args.seconds,
                              pids=(proc.pid, db_pid if mode == "mongo" else None))
            await asyncio.sleep(1.0)  # anything extra (a duplicate) would arrive now
            result["first"] = phase
            result["first_check"] = check_replies(graph, phase, 1)
            if mode != "bare":
                result["first_transcript"] = await check_transcript(session, base, graph, phase.customers, 1, 1)
            if mode == "mongo":
                async with session.get(f"{base}/_bench/stats") as r:
                    stats = await r.json()
                per_customer = [stats["by_customer"].get(c, []) for c in phase.customers]
                trips = [len(commands) for commands in per_customer]
                shapes = Counter(" ".join(commands) for commands in per_customer)
                over = [commands for commands in per_customer if len(commands) > 6]
                result["round_trips"] = {
                    "over_6_conflict_retries": sum("abortTransaction" in commands for commands in over),
                    "over_6_other": sum("abortTransaction" not in commands for commands in over),
                    "per_inbound_mean": round(statistics.fmean(trips), 2) if trips else None,
                    "min": min(trips, default=0), "max": max(trips, default=0),
                    "distribution": dict(sorted(Counter(trips).items())),
                    "commands": shapes.most_common(3),
                    "background": stats["background"],
                }
            if args.returning and mode != "bare":
                back = list(phase.customers[: args.returning])
                position = iter(range(len(back)))
                again = Phase("returning")

                def returning() -> tuple[str, str, int]:
                    i = next(position, None)
                    if i is None:  # out of returning customers: stop this worker's loop
                        raise StopIteration
                    return back[i], f"wamid.bench.{mode}.{index}.back.{i}", 2

                before = {c: len(graph.replies.get(c, ())) for c in back}
                await returning_loop(session, f"{base}/webhook", graph, again, returning, args)
                await asyncio.sleep(1.0)
                extra = Counter(len(graph.replies.get(c, ())) - before[c] for c in again.customers)
                result["returning"] = again
                result["returning_replies"] = dict(extra)
                if mode == "mongo":
                    async with session.get(f"{base}/_bench/stats") as r:
                        stats = await r.json()
                    trips = [len(stats["by_customer"].get(c, [])) for c in again.customers]
                    result["returning_round_trips_total"] = dict(sorted(Counter(trips).items()))
    finally:
        stop_server(proc)
    return result


async def returning_loop(session: aiohttp.ClientSession, url: str, graph: FakeGraph, phase: Phase,
                         numbers: Callable[[], tuple[str, str, int]], args: argparse.Namespace) -> None:
    """Customers who already got the notice write "hola" again; waits for one more reply each."""
    t0_all = time.perf_counter()

    async def customer() -> None:
        while True:
            try:
                wa_id, wamid, _ = numbers()
            except StopIteration:
                return
            times = await exchange(session, url, graph, phase, wa_id, wamid, "hola",
                                   len(graph.replies.get(wa_id, ())) + 1)
            if times is not None:
                phase.count(*times)

    await asyncio.gather(*(customer() for _ in range(args.concurrency)))
    phase.seconds = time.perf_counter() - t0_all


def row(label: str, phase: Phase, ceiling: float | None) -> str:
    share = f"{100 * phase.rate / ceiling:5.1f} %" if ceiling else "    —  "
    cpu = f"{1000 * phase.cpu_server / phase.counted:6.2f}" if phase.counted and phase.cpu_server else "     —"
    core = f"{100 * phase.cpu_server / phase.seconds:4.0f} %" if phase.cpu_server else "   —"
    return (f"| {label:<22} | {phase.rate:8.1f} | {share} | {pct(phase.ack_ms, .5):7.1f} | {pct(phase.ack_ms, .99):7.1f} "
            f"| {pct(phase.reply_ms, .5):7.1f} | {pct(phase.reply_ms, .99):7.1f} | {cpu} | {core} |")


async def main(args: argparse.Namespace) -> int:
    modes = [m for m in ("bare", "memory", "mongo") if m in args.only.split(",")]
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    graph = FakeGraph()
    runner = web.AppRunner(graph.app(), access_log=None)
    await runner.setup()
    graph_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", graph_port).start()
    graph_url = f"http://127.0.0.1:{graph_port}"
    results: dict[str, dict[str, Any]] = {}
    loads: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        workdir = Path(tmp)
        server = None
        try:
            uri, db_pid = "", None
            if "mongo" in modes:
                from bot.store.embedded import EmbeddedServer

                server = EmbeddedServer(":memory:")
                uri = await server.start()
                db_pid = server_pid(server)
            for index, mode in enumerate(modes):
                print(f"-- {mode}", file=sys.stderr, flush=True)
                results[mode] = await scenario(mode, args, graph, graph_url, workdir, index, uri, db_pid)
                loads[mode] = os.getloadavg()
                if args.keep_logs:
                    await asyncio.to_thread(keep_logs, workdir, Path(args.keep_logs))
        finally:
            if server is not None:
                await server.stop()
            await runner.cleanup()
    print_report(args, results, loads, load_before, started, graph)
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(summary(results)))
    return 0


def summary(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per server: replies/s, CPU ms per message, lost + duplicated replies (``--json``)."""
    out = {}
    for mode, r in results.items():
        ph: Phase = r["first"]
        check = r["first_check"]
        out[mode] = {"rate": ph.rate, "cpu_ms": 1000 * ph.cpu_server / max(ph.counted, 1),
                     "bad": check["lost"] + check["dup"] + check["dup_callbacks"]
                     + r.get("first_transcript", {}).get("transcript_mismatches", 0)}
    return out


def repeat(argv: list[str], n: int) -> int:
    """Run this bench ``n`` times, each a new process (a load generator that has run for minutes is
    slower, and it is what limits the bare handler), then print every round and the median share."""
    rounds = []
    passthrough = [a for i, a in enumerate(argv) if a != "--repeat" and (i == 0 or argv[i - 1] != "--repeat")]
    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as tmp:
        for k in range(n):
            out = Path(tmp) / f"round{k}.json"
            print(f"== round {k + 1} of {n}", file=sys.stderr, flush=True)
            done = subprocess.run([sys.executable, __file__, *passthrough, "--json", str(out)], check=False)
            if done.returncode != 0 or not out.exists():
                print(f"round {k + 1} failed (exit {done.returncode})", file=sys.stderr)
                return 1
            rounds.append(json.loads(out.read_text()))
    print_rounds(rounds)
    return 0


def print_rounds(rounds: list[dict[str, dict[str, float]]]) -> None:
    """Every round's replies/s and CPU per message, and the memory store's share of the bare handler:
    this machine's speed drifts, so one same-run comparison is not enough to judge the target."""
    print(f"\n{len(rounds)} rounds, each a new bench process:\n")
    print("| round | bare replies/s (CPU ms/msg) | memory replies/s (CPU ms/msg) | memory vs bare | lost/dup |")
    print("|---:|---:|---:|---:|---:|")
    shares = []
    for n, results in enumerate(rounds, start=1):
        bare, memory = results.get("bare"), results.get("memory")
        cells = [f"{r['rate']:,.0f} ({r['cpu_ms']:.2f})" if r else "—" for r in (bare, memory)]
        share = "—"
        if bare and memory:
            shares.append(100 * memory["rate"] / bare["rate"])
            share = f"{shares[-1]:.1f} %"
        print(f"| {n} | {cells[0]} | {cells[1]} | {share} | {sum(int(r['bad']) for r in results.values())} |")
    losses = sum(int(r["bad"]) for results in rounds for r in results.values())
    print(f"\nlost, duplicated or mismatched replies over all rounds: {losses}")
    if shares:
        met = sum(s >= 50 for s in shares)
        print(f"memory vs bare over {len(shares)} rounds: median {statistics.median(shares):.1f} %, "
              f"{min(shares):.1f}-{max(shares):.1f} %; {met} of {len(shares)} rounds >= 50 %")


def keep_logs(workdir: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for log in workdir.glob("*.log"):
        (into / log.name).write_bytes(log.read_bytes())


def memory_line(ph: Phase) -> str:
    """The server's resident memory over the window, and its growth per message posted in it."""
    mib = 1024 * 1024
    growth = (ph.rss_end - ph.rss_start) / max(ph.started_in_window, 1)
    return (f"resident {ph.rss_start / mib:.1f} MiB when the window opened, {ph.rss_end / mib:.1f} MiB when it "
            f"closed (peak {ph.rss_peak / mib:.1f} MiB); {growth / 1024:+.2f} KiB per message posted in the window "
            f"({ph.started_in_window})")


def server_pid(server: Any) -> int | None:
    proc = getattr(server, "_proc", None) or getattr(server, "process", None) or getattr(server, "_process", None)
    return getattr(proc, "pid", None)


def print_report(args: argparse.Namespace, results: dict[str, dict[str, Any]],
                 loads: dict[str, tuple[float, float, float]], load_before: tuple[float, float, float],
                 started: datetime, graph: FakeGraph) -> None:
    ceiling = results["bare"]["first"].rate if "bare" in results else None
    labels = {"bare": "bare handler (ceiling)", "memory": "ConsentBot, memory", "mongo": "ConsentBot, MongoDB-wire"}
    print()
    print(f"{started:%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, concurrency {args.concurrency}, window {args.seconds:.0f} s "
          f"after {args.warmup:.0f} s warm-up, {args.numbers} business number(s), send rate cap {args.rate:.0f}/s each")
    print(f"load average before: {load_before[0]:.2f}; after each: "
          + ", ".join(f"{m} {v[0]:.2f}" for m, v in loads.items()))
    print()
    print("| server                 | replies/s | vs bare | ack p50 | ack p99 | reply p50 | reply p99 | server CPU ms/msg | server core |")
    print("|------------------------|---------:|--------:|--------:|--------:|--------:|--------:|-------:|-----:|")
    for mode, r in results.items():
        print(row(labels[mode], r["first"], ceiling if mode != "bare" else None))
    for mode, r in results.items():
        if "returning" in r:
            print(row(f"{mode}, returning", r["returning"], None))
    print("(latencies in ms; reply = webhook POST sent until the reply reached the fake Graph API)")
    print()
    for mode, r in results.items():
        ph: Phase = r["first"]
        check = r["first_check"]
        line = (f"{mode}: sent {ph.sent}, acked {ph.acked}, refused {ph.refused}, errors {ph.errors}, "
                f"no reply within 30 s {ph.timeouts}; lost={check['lost']} dup={check['dup']} "
                f"dup_callbacks={check['dup_callbacks']} replies/inbound {check['replies_per_inbound']}")
        if "first_transcript" in r:
            t = r["first_transcript"]
            line += (f"; transcript mismatches {t['transcript_mismatches']}, inbox pending {t['inbox_pending']}, "
                     f"outbound states {t['out_states']}")
        print(line)
        print(f"  this process (load generator + fake Graph API): {100 * ph.cpu_driver / ph.seconds:.0f} % of a core")
        print(f"  server memory: {memory_line(ph)}")
        if ph.cpu_db:
            print(f"  database server CPU: {1000 * ph.cpu_db / max(ph.counted, 1):.2f} ms/msg "
                  f"({100 * ph.cpu_db / ph.seconds:.0f} % of a core)")
        if "round_trips" in r:
            rt = r["round_trips"]
            print(f"  MongoDB round trips per inbound (webhook -> recorded send result): mean {rt['per_inbound_mean']}, "
                  f"min {rt['min']}, max {rt['max']}, distribution {rt['distribution']}")
            for shape, n in rt["commands"]:
                print(f"    {n:>6} x {shape}")
            print(f"  background (poller) commands during the run: {rt['background']}")
        if "returning" in r:
            print(f"  returning: {r['returning'].counted} customers, extra replies per inbound "
                  f"{r['returning_replies']}" + (f", round trips (both texts) {r['returning_round_trips_total']}"
                                                  if "returning_round_trips_total" in r else ""))
    if ceiling and "memory" in results:
        share = 100 * results["memory"]["first"].rate / ceiling
        print(f"\ntarget memory >= 50 % of bare: {share:.1f} % -> {'met' if share >= 50 else 'NOT met'}")
    if "mongo" in results and "round_trips" in results["mongo"]:
        rt = results["mongo"]["round_trips"]
        within = sum(n for trips, n in rt["distribution"].items() if int(trips) <= 6)
        total = sum(rt["distribution"].values())
        retried, other = rt["over_6_conflict_retries"], rt["over_6_other"]
        verdict = "met" if within == total else (
            f"met except {retried} commit(s) run again after a write conflict" if not other else "NOT met")
        print(f"target <= 6 MongoDB round trips: {within} of {total} inbound took <= 6 (mean {rt['per_inbound_mean']}, "
              f"max {rt['max']}); over 6: {retried} after a write conflict (abortTransaction, then the commit "
              f"again), {other} otherwise -> {verdict}")
    losses = sum(r["first_check"]["lost"] + r["first_check"]["dup"] + r["first_check"]["dup_callbacks"]
                 for r in results.values())
    print(f"target zero lost/duplicated replies: {'met' if losses == 0 else 'NOT met'}")
    print(f"fake Graph API: {graph.n} sends, {graph.unauthorised} unauthorised")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("_serve", help="(internal) run one server under test")
    s.add_argument("--mode", choices=("bare", "memory", "mongo"), required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--graph", required=True)
    s.add_argument("--uri", default="")
    s.add_argument("--rate", type=float, default=1000.0)
    s.add_argument("--numbers", type=int, default=1)
    s.add_argument("--profile", default="", help="write cProfile stats of the server here")
    p.add_argument("--seconds", type=float, default=15.0, help="measured window per server (default 15)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds not counted at the start (default 2)")
    p.add_argument("--concurrency", type=int, default=64, help="customers in the closed loop (default 64)")
    p.add_argument("--rate", type=float, default=1000.0, help="each number's send rate cap (default 1000/s)")
    p.add_argument("--numbers", type=int, default=4,
                   help="business numbers the customers are spread over (default 4; each is capped at --rate)")
    p.add_argument("--only", default="bare,memory,mongo", help="comma-separated subset of bare,memory,mongo")
    p.add_argument("--returning", type=int, default=0, help="returning customers per ConsentBot run (default 0)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the whole bench this many times, each a new process, and summarise the rounds")
    p.add_argument("--json", default="", help="also write each server's replies/s, CPU and losses here")
    p.add_argument("--keep-logs", default="", help="copy the servers' logs into this directory")
    p.add_argument("--profile", default="", help="profile the servers; write <dir>/<server>.prof (or .txt)")
    p.add_argument("--profiler", choices=("cprofile", "pyinstrument"), default="cprofile",
                   help="cprofile (stdlib, deterministic) or pyinstrument (sampling; pip install pyinstrument)")
    return p.parse_args(argv)


if __name__ == "__main__":
    ns = parse(sys.argv[1:])
    NUMBERS[:] = [str(int(PNID) + i) for i in range(max(1, ns.numbers))]
    if ns.cmd == "_serve" and ns.profile.endswith(".txt"):
        from pyinstrument import Profiler  # pip install pyinstrument (not a project dependency)

        sampler = Profiler(interval=0.0005, async_mode="disabled")
        sampler.start()
        PROFILE_STOP.append(sampler.stop)
        asyncio.run(serve(ns))
        if sampler.is_running:
            sampler.stop()
        Path(ns.profile).write_text(sampler.output_text(unicode=False, show_all=False))
    elif ns.cmd == "_serve" and ns.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        PROFILE_STOP.append(prof.disable)
        asyncio.run(serve(ns))
        prof.disable()
        prof.dump_stats(ns.profile)
    elif ns.cmd == "_serve":
        asyncio.run(serve(ns))
    elif ns.repeat > 1:
        sys.exit(repeat(sys.argv[1:], ns.repeat))
    else:
        sys.exit(asyncio.run(main(ns)))
