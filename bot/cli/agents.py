"""``consentbot agents``: console accounts (support agents, supervisors, privacy officers).

    consentbot agents add NAME --role agent|supervisor|privacy [--password-stdin]
    consentbot agents list
    consentbot agents passwd NAME [--password-stdin]
    consentbot agents disable NAME

Passwords are asked twice without echo (``getpass``), or read from the first line of standard input
with ``--password-stdin`` (scripts). Only an Argon2id hash is stored. Disabling an account ends its
console sessions at once, and so does setting a new password; accounts are never deleted (the audit
trail names them).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime

from bot import wiring
from bot.errors import ConfigError
from bot.settings import load_settings
from bot.store.accounts import ROLES, AccountStore, Agent, AuditEntry, check_agent_name, check_role
from bot.web.console_auth import hash_password
from bot.wiring import open_store

MIN_PASSWORD = 12


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agents", help="console accounts: add, list, passwd, disable")
    p.add_argument("--project", default=".", help="project folder with consentbot.yaml (default: .)")
    asub = p.add_subparsers(dest="agents_command", metavar="ACTION", required=True)
    add = asub.add_parser("add", help="create an account (asks for the password twice)")
    add.add_argument("name", help="2-32 characters: lowercase letters, digits, '.', '_' or '-'")
    add.add_argument("--role", required=True, choices=ROLES, help="what the account may do in the console")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.set_defaults(func=lambda a: asyncio.run(_add(a.project, a.name, a.role, a.password_stdin)))
    ls = asub.add_parser("list", help="list the accounts")
    ls.set_defaults(func=lambda a: asyncio.run(_list(a.project)))
    pw = asub.add_parser("passwd", help="set a new password (asks twice) and end the account's sessions")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    pw.set_defaults(func=lambda a: asyncio.run(_passwd(a.project, a.name, a.password_stdin)))
    dis = asub.add_parser("disable", help="disable an account and end its sessions")
    dis.add_argument("name")
    dis.set_defaults(func=lambda a: asyncio.run(_disable(a.project, a.name)))


async def open_accounts(project: str, stack: AsyncExitStack) -> AccountStore:
    """The account store on the configured database (the same one the service uses)."""
    settings = load_settings(project)
    store = await open_store(settings, stack)
    return await wiring.open_accounts(store)


def read_password(from_stdin: bool) -> str:
    """The new password: the first line of stdin, or asked twice without echo. Raises ConfigError."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise ConfigError("password", "the two passwords differ")
    if len(password) < MIN_PASSWORD:
        raise ConfigError("password", f"use at least {MIN_PASSWORD} characters")
    return password


async def _add(project: str, name: str, role: str, from_stdin: bool) -> int:
    try:
        check_agent_name(name)
        check_role(role)
    except ValueError as exc:
        raise ConfigError("agents add", str(exc)) from None
    password = read_password(from_stdin)
    password_hash = await asyncio.to_thread(hash_password, password)
    now = datetime.now(UTC)
    async with AsyncExitStack() as stack:
        accounts = await open_accounts(project, stack)
        if not await accounts.agents.add(Agent(name, role, password_hash, now)):
            print(f"consentbot: agent {name!r} already exists", file=sys.stderr)
            return 1
        await accounts.audit.append(AuditEntry(now, "cli", "", "agents.add", name, detail={"role": role}))
    print(f"added {name} ({role})")
    return 0


async def _list(project: str) -> int:
    async with AsyncExitStack() as stack:
        accounts = await open_accounts(project, stack)
        agents = await accounts.agents.all()
    if not agents:
        print("no accounts yet: consentbot agents add NAME --role agent")
        return 0
    width = max(len(a.name) for a in agents)
    for a in agents:
        status = f"disabled {a.disabled_at:%Y-%m-%d}" if a.disabled and a.disabled_at else "active"
        print(f"{a.name:<{width}}  {a.role:<10}  {status:<20}  created {a.created_at:%Y-%m-%d}")
    return 0


async def _passwd(project: str, name: str, from_stdin: bool) -> int:
    password_hash = await asyncio.to_thread(hash_password, read_password(from_stdin))
    ended = await _change(
        project, name, "agents.passwd", lambda a, now: a.agents.set_password(name, password_hash, now)
    )
    if ended is None:
        return 1
    print(f"new password set for {name} ({ended} session(s) ended)")
    return 0


async def _disable(project: str, name: str) -> int:
    ended = await _change(project, name, "agents.disable", lambda a, now: a.agents.disable(name, now))
    if ended is None:
        return 1
    print(f"disabled {name} ({ended} session(s) ended)")
    return 0


async def _change(
    project: str, name: str, action: str, change: Callable[[AccountStore, datetime], Awaitable[bool]]
) -> int | None:
    """Apply ``change`` to the account, end its console sessions and audit ``action``: the number of
    sessions ended, or None (after saying so) when there is no such account."""
    now = datetime.now(UTC)
    async with AsyncExitStack() as stack:
        accounts = await open_accounts(project, stack)
        if not await change(accounts, now):
            print(f"consentbot: no agent {name!r}", file=sys.stderr)
            return None
        ended = await accounts.sessions.delete_for(name)
        await accounts.audit.append(AuditEntry(now, "cli", "", action, name, detail={"sessions": ended}))
    return ended
