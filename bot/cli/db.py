"""``consentbot db``: check the database and its indexes."""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import AsyncExitStack

from bot.settings import load_settings
from bot.wiring import open_store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("db", help="database: ping it, create its indexes")
    p.add_argument("--project", default=".", help="project folder with consentbot.yaml (default: .)")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    ping = dsub.add_parser("ping", help="check that the database answers")
    ping.set_defaults(func=lambda a: asyncio.run(_ping(a.project)))
    idx = dsub.add_parser("indexes", help="create every index (idempotent) and list them")
    idx.set_defaults(func=lambda a: asyncio.run(_indexes(a.project)))


async def _ping(project: str) -> int:
    settings = load_settings(project)
    async with AsyncExitStack() as stack:
        store = await open_store(settings, stack)
        ok = await store.ping()
    print("database: ok" if ok else "database: not answering", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


async def _indexes(project: str) -> int:
    settings = load_settings(project)
    async with AsyncExitStack() as stack:
        store = await open_store(settings, stack)  # open() creates every index
        describe = getattr(store, "describe_indexes", None)
        if describe is None:
            print("indexes: ok")
            return 0
        for collection, names in (await describe()).items():
            print(f"{collection}: {', '.join(names)}")
    return 0
