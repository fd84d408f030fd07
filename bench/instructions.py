"""Instructions per message, webhook to recorded send, for the bare handler and ConsentBot: a figure
that does not move with the machine's load.

Throughput on a shared two-core machine drifts by a fifth from one hour to the next (see
``docs/performance.md``), so a change of a few per cent cannot be seen in ``bench/pipeline.py``. This
counts the instructions the server process executes instead, under Valgrind's ``cachegrind``
(``apt-get install valgrind``): each server runs exactly as in ``pipeline.py`` (``_serve``, same
project, same fake Graph API); one process answers ``--small`` first contacts and another, at the
same time, ``--large`` (8 at a time each), and the difference divided by ``--large - --small`` is the
cost of one message without start-up. Two runs of the same code agree to within about 0.5 % (the poller and the
pacer run on the clock, so slower runs do a little more of their work).

    python bench/instructions.py                  # bare and memory, ~1 minute
    python bench/instructions.py --only memory --large 2200

Instructions are not time: ConsentBot touches more memory per message than the bare handler, so its
CPU time per message is a larger multiple of the bare handler's than its instruction count is.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

SELF = Path(__file__).resolve()
sys.path.insert(0, str(SELF.parent))

import pipeline as P  # noqa: E402


async def instructions(mode: str, customers: int) -> int:
    """Instructions the ``mode`` server process executes from start to exit when it answers
    ``customers`` first contacts."""
    graph = P.FakeGraph()
    runner = web.AppRunner(graph.app(), access_log=None)
    await runner.setup()
    graph_port = P.free_port()
    await web.TCPSite(runner, "127.0.0.1", graph_port).start()
    port = P.free_port()
    with tempfile.TemporaryDirectory() as tmp:
        err = Path(tmp) / "server.log"
        cmd = [
            "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
            sys.executable, str(P.SELF), "_serve", "--mode", mode, "--port", str(port),
            "--graph", f"http://127.0.0.1:{graph_port}", "--uri", "", "--rate", "1000", "--numbers", "4",
        ]
        with err.open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, cwd=P.ROOT,  # noqa: ASYNC220
                                    env={**os.environ, "PYTHONHASHSEED": "0"})
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 600)
            if line.strip() != b"READY":
                raise RuntimeError(f"{mode} server did not start: {err.read_text()[-2000:]}")
            limit = asyncio.Semaphore(8)
            async with aiohttp.ClientSession() as session:

                async def one(i: int) -> None:
                    async with limit:
                        wa_id = f"3460{i:07d}"
                        raw = P.text_webhook(wa_id, f"wamid.in.{i}", "hola")
                        replied = graph.expect(wa_id, 1)
                        headers = {"Content-Type": "application/json", P.HEADER: P.sign(raw, P.SECRET)}
                        async with session.post(f"http://127.0.0.1:{port}/webhook", data=raw, headers=headers) as r:
                            if r.status != 200:
                                raise RuntimeError(f"webhook answered {r.status}")
                        await asyncio.wait_for(replied, 300)

                await asyncio.gather(*(one(i) for i in range(customers)))
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 600)
        finally:
            if proc.poll() is None:
                proc.kill()
            await runner.cleanup()
        found = re.findall(r"I\s+refs:\s+([\d,]+)", err.read_text(errors="replace"))
        if not found:
            raise RuntimeError(f"no instruction count from cachegrind: {err.read_text()[-2000:]}")
        return int(found[-1].replace(",", ""))


async def per_message(mode: str, small: int, large: int) -> float:
    low, high = await asyncio.gather(instructions(mode, small), instructions(mode, large))
    return (high - low) / (large - small)


async def main(args: argparse.Namespace) -> int:
    modes = [m for m in args.only.split(",") if m]
    results = {mode: await per_message(mode, args.small, args.large) for mode in modes}
    print("| server | instructions per message | vs bare |")
    print("|---|---:|---:|")
    for mode, n in results.items():
        ratio = f"{n / results['bare']:.2f}x" if "bare" in results and mode != "bare" else "—"
        print(f"| {mode} | {n:,.0f} | {ratio} |")
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="bare,memory", help="comma-separated: bare, memory")
    p.add_argument("--small", type=int, default=200, help="first contacts in the baseline run")
    p.add_argument("--large", type=int, default=1200, help="first contacts in the measured run")
    ns = p.parse_args(argv)
    if not set(ns.only.split(",")) <= {"bare", "memory"}:
        p.error("--only takes bare and memory (the MongoDB-wire server runs in its own process)")
    if ns.large <= ns.small:
        p.error("--large must be more than --small")
    return ns


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
