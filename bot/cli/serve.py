"""``consentbot serve``: run the service (webhook, runtime, sandbox, console) until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
import sys
from contextlib import AsyncExitStack

from aiohttp import web

from bot import logs
from bot.errors import ConfigError
from bot.runtime.heap import settle_after_start_up
from bot.settings import Settings, load_settings
from bot.web.app import create_app
from bot.wiring import build_services

log = logging.getLogger("consentbot.serve")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the service: webhook, flows, outbox, sandbox and console")
    p.add_argument("--project", default=".", help="project folder with consentbot.yaml (default: .)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    p.add_argument(
        "--store",
        choices=("mongo", "memory"),
        default="mongo",
        help="mongo (MONGODB_URI, or the embedded server) or memory (nothing persists)",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    if not 0 < args.port < 65536:
        raise ConfigError("--port", f"must be between 1 and 65535, got {args.port}")
    settings = load_settings(args.project)
    return asyncio.run(serve(settings, args.host, args.port, args.store))


async def serve(settings: Settings, host: str, port: int, store_kind: str = "mongo") -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    base_url = f"http://{host}:{port}"
    async with AsyncExitStack() as stack:
        services = await build_services(settings, stack, store_kind=store_kind, base_url=base_url)
        runner = web.AppRunner(create_app(services), handle_signals=False, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, host, port, shutdown_timeout=5.0)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError("--port", f"{host}:{port} is already in use (choose another with --port)") from None
            raise ConfigError("--host", f"cannot listen on {host}:{port}: {exc.strerror}") from None
        settle_after_start_up()
        services.start()
        stack.push_async_callback(services.stop)
        mode = "sandbox (no Meta account needed)" if settings.sandbox else "WhatsApp Cloud API"
        print(f"ConsentBot is running on {base_url}  [{mode}, store: {services.store_label}]", file=sys.stderr)
        if settings.sandbox:
            print(f"  phone page:  {base_url}/sandbox/", file=sys.stderr)
        print(f"  console:     {base_url}/console/", file=sys.stderr)
        password = services.components.get("sandbox_password")
        if password:
            print(f"               sign in as admin or privacy, password {password}", file=sys.stderr)
        print("  press Ctrl-C to stop", file=sys.stderr)
        await stop.wait()
        log.info("shutting down: no new requests, draining in-flight work")
        await site.stop()
    return 0
