"""``consentbot agents`` against the real MongoDB-wire server, then a login with the account it made."""

from __future__ import annotations

import io
import shutil
import uuid
from pathlib import Path

import pytest

from bot.cli import agents
from bot.errors import BotError
from bot.web import console_auth

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    """``consentbot`` with only the agents group (as ``bot.cli.main`` runs it: BotError -> exit 1)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="consentbot")
    agents.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except BotError as exc:
        print(f"consentbot: {exc}", file=sys.stderr)
        return 1
    return code


@pytest.fixture
def project(tmp_path: Path, mongo_uri: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(ROOT / "consentbot.yaml", tmp_path / "consentbot.yaml")
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    monkeypatch.setenv("CONSENTBOT_DATABASE", f"cli_{uuid.uuid4().hex[:12]}")
    for name in ("WHATSAPP_ACCESS_TOKEN", "CONSENTBOT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_add_list_disable(project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-enough-password\n"))
    assert main(["agents", "--project", str(project), "add", "ana", "--role", "privacy", "--password-stdin"]) == 0
    assert "added ana (privacy)" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("another-long-password\n"))
    assert main(["agents", "--project", str(project), "add", "ana", "--role", "agent", "--password-stdin"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["agents", "--project", str(project), "list"]) == 0
    out = capsys.readouterr().out
    assert "ana" in out and "privacy" in out and "active" in out
    assert main(["agents", "--project", str(project), "disable", "ana"]) == 0
    assert main(["agents", "--project", str(project), "list"]) == 0
    assert "disabled" in capsys.readouterr().out
    assert main(["agents", "--project", str(project), "disable", "ghost"]) == 1


def test_passwords_are_asked_twice_and_checked(project: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    answers = iter(["first-password-123", "second-password-123"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert main(["agents", "--project", str(project), "add", "bob", "--role", "agent"]) == 1
    assert "the two passwords differ" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["agents", "--project", str(project), "add", "bob", "--role", "agent", "--password-stdin"]) == 1
    assert "at least 12 characters" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-enough-password\n"))
    assert main(["agents", "--project", str(project), "add", "Bob!", "--role", "agent", "--password-stdin"]) == 1
    assert "agent name" in capsys.readouterr().err


def test_hashes_are_argon2id_and_verify() -> None:
    h = console_auth.hash_password("a-long-enough-password")
    assert h.startswith("$argon2id$")
    assert console_auth.verify_password(h, "a-long-enough-password")
    assert not console_auth.verify_password(h, "a-long-enough-passworD")
    assert not console_auth.verify_password("not a hash", "x")


def test_passwd_sets_a_new_password_and_ends_the_sessions(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio
    from contextlib import AsyncExitStack
    from datetime import UTC, datetime, timedelta

    from bot.store.accounts import AuditQuery, Session

    monkeypatch.setattr("sys.stdin", io.StringIO("the-first-password\n"))
    assert main(["agents", "--project", str(project), "add", "ana", "--role", "agent", "--password-stdin"]) == 0
    now = datetime.now(UTC)

    async def sign_in() -> None:
        async with AsyncExitStack() as stack:
            accounts = await agents.open_accounts(str(project), stack)
            await accounts.sessions.create(Session("s" * 64, "ana", "agent", "c" * 32, now,
                                                   now + timedelta(hours=1), now + timedelta(hours=8)))

    asyncio.run(sign_in())
    monkeypatch.setattr("sys.stdin", io.StringIO("the-second-password\n"))
    assert main(["agents", "--project", str(project), "passwd", "ana", "--password-stdin"]) == 0
    assert "new password set for ana (1 session(s) ended)" in capsys.readouterr().out

    async def check() -> str:
        async with AsyncExitStack() as stack:
            accounts = await agents.open_accounts(str(project), stack)
            agent = await accounts.agents.get("ana")
            assert agent is not None
            assert await accounts.sessions.get("s" * 64) is None
            assert await accounts.audit.count(AuditQuery(action="agents.passwd")) == 1
            return agent.password_hash

    stored = asyncio.run(check())  # the hashes are checked off the loop: Argon2 blocks by design
    assert console_auth.verify_password(stored, "the-second-password")
    assert not console_auth.verify_password(stored, "the-first-password")
    monkeypatch.setattr("sys.stdin", io.StringIO("the-third-password\n"))
    assert main(["agents", "--project", str(project), "passwd", "ghost", "--password-stdin"]) == 1
    assert "no agent 'ghost'" in capsys.readouterr().err
