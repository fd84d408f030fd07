"""``consentbot consent verify|receipt|export``, ``erase`` and ``dsr``: the command logic on the real
stores (memory and MongoDB), and the parser end to end on the memory store."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.cli import consent as consent_cli
from bot.cli import dsr as dsr_cli
from bot.cli import erase as erase_cli
from bot.cli.consent import export_command, receipt_command, verify_command
from bot.cli.dsr import list_command, restrict_command
from bot.cli.erase import erase_command
from bot.core.consent import Actor, ConsentAction, ConsentEventDraft
from bot.core.conversation import Cause, Conversation, Step
from bot.core.messages import Inbound, InboundKind
from bot.core.project import Controller, Project, Purpose
from bot.core.rendering import NoticeText
from bot.errors import BotError
from bot.runtime.privacy import PrivacyService
from bot.store.base import Store
from bot.store.memory import MemoryStore
from bot.store.privacy import RequestKind
from bot.store.privacy_memory import MemoryPrivacyStore
from bot.store.privacy_mongo import MongoPrivacyStore

T0 = datetime(2025, 6, 3, 10, 0, tzinfo=UTC)
SUBJECT = "34600000001"
NOTICE = NoticeText.of("1.0", "es", "Ejemplo SL: ofertas por WhatsApp. BAJA para parar.")
PROJECT = Project(
    controller=Controller("Ejemplo SL", "privacidad@example.com", "dpo@example.com", "https://example.com/p", "AEPD"),
    purposes=(Purpose("offers", {"es": "Ofertas"}),),
    notice_version="1.0",
)


def draft(subject: str, action: ConsentAction, minutes: int, message_id: str) -> ConsentEventDraft:
    return ConsentEventDraft(subject, "offers", action, T0 + timedelta(minutes=minutes), Actor.CUSTOMER, "doi", "1",
                             NOTICE.version, NOTICE.sha256, "es", "button", {"message_id": message_id})


async def populate(service: PrivacyService) -> None:
    """Two subscribed customers; the first also has a conversation with one message."""
    await service.privacy.notices.put(NOTICE)
    for subject in (SUBJECT, "34600000002"):
        await service.store.ledger.append([
            draft(subject, ConsentAction.REQUESTED, 0, f"wamid.{subject}.1"),
            draft(subject, ConsentAction.CONFIRMED, 1, f"wamid.{subject}.TAP"),
            draft(subject, ConsentAction.PREFERENCES_CHANGED, 2, f"wamid.{subject}.3"),
        ])
    conv = Conversation.start("pn", SUBJECT, "doi", "1", "subscribed", "es", T0, wa_id=SUBJECT).evolve(version=1)
    assert (await service.store.conversations.acquire(conv.key, "t", T0, 30)).acquired
    hello = Inbound("wamid.HELLO", "pn", SUBJECT, int(T0.timestamp()), InboundKind.TEXT, wa_id=SUBJECT, text="hola")
    await service.store.steps.commit(Step(conv, 1, T0, Cause.INBOUND, inbound=(hello,)), "t", 30)


@pytest.fixture(params=["memory", "mongo"])
def backend(request: pytest.FixtureRequest) -> tuple[str, Store]:
    return request.param, request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
async def service(backend: tuple[str, Store]) -> PrivacyService:
    kind, store = backend
    privacy = MemoryPrivacyStore() if kind == "memory" else MongoPrivacyStore(store.database)  # type: ignore[attr-defined]
    await privacy.open()
    svc = PrivacyService(store, privacy, PROJECT, b"secret", clock=lambda: T0)
    await populate(svc)
    return svc


async def tamper(store: Store, kind: str, how: str) -> None:
    if kind == "memory":
        log = store._data.consent[SUBJECT]  # type: ignore[attr-defined]
        if how == "altered":
            log[1] = replace(log[1], event=replace(log[1].event, action=ConsentAction.DECLINED))
        elif how == "removed":
            del log[1]
        else:
            log[1], log[2] = replace(log[2], seq=2), replace(log[1], seq=3)
        return
    coll = store.database["consent_events"]  # type: ignore[attr-defined]
    if how == "altered":
        await coll.update_one({"subject": SUBJECT, "seq": 2}, {"$set": {"event.action": "declined"}})
    elif how == "removed":
        await coll.delete_one({"subject": SUBJECT, "seq": 2})
    else:
        await coll.update_one({"subject": SUBJECT, "seq": 2}, {"$set": {"seq": 99}})
        await coll.update_one({"subject": SUBJECT, "seq": 3}, {"$set": {"seq": 2}})
        await coll.update_one({"subject": SUBJECT, "seq": 99}, {"$set": {"seq": 3}})


async def test_verify_all_passes_on_intact_chains(service: PrivacyService) -> None:
    out = io.StringIO()
    assert await verify_command(service, None, out) == 0
    assert "ok: 2 chain(s), 6 events verified" in out.getvalue()


@pytest.mark.parametrize("how", ["altered", "removed", "reordered"])
async def test_verify_exits_1_and_names_the_first_broken_link(
    service: PrivacyService, backend: tuple[str, Store], how: str
) -> None:
    await tamper(service.store, backend[0], how)
    out = io.StringIO()
    assert await verify_command(service, None, out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0] == f"{SUBJECT}: BROKEN at seq 2: {how} - " + lines[0].split(" - ", 1)[1]
    assert lines[1].startswith("34600000002: ok")
    assert lines[-1].startswith("FAILED: 1 of 2 chain(s) broken")
    single = io.StringIO()
    assert await verify_command(service, "34600000002", single) == 0


async def test_receipt_and_export_commands(service: PrivacyService, tmp_path: Path) -> None:
    out = io.StringIO()
    assert await receipt_command(service, SUBJECT, out) == 0
    receipt = json.loads(out.getvalue())
    [offers] = receipt["services"][0]["purposes"]
    assert offers["evidence"]["messageId"] == f"wamid.{SUBJECT}.TAP"
    assert offers["notice"]["sha256"] == NOTICE.sha256
    target = tmp_path / "export.json"
    assert await export_command(service, SUBJECT, io.StringIO(), path=str(target)) == 0
    export = json.loads(target.read_text(encoding="utf-8"))
    assert export["subject"] == SUBJECT and export["transcript"][0]["text"] == "hola"


async def test_erase_and_dsr_commands(service: PrivacyService) -> None:
    conv = Conversation.start("pn", SUBJECT, "doi", "1", "x", "es", T0)
    await service.handle_request("export", conv, T0)
    out = io.StringIO()
    assert await erase_command(service, SUBJECT, "dpo", out) == 0
    text = out.getvalue()
    assert "Kept: a suppression entry" in text and '"conversations": [' in text
    assert await service.store.conversations.by_subject(SUBJECT) == []
    listing = io.StringIO()
    assert await list_command(service, listing) == 0
    assert "access" in listing.getvalue() and "1 open request(s), 0 overdue" in listing.getvalue()
    service.clock = lambda: T0 + timedelta(days=40)
    late = io.StringIO()
    assert await list_command(service, late) == 1
    assert "OVERDUE by 10 d" in late.getvalue()
    assert await restrict_command(service, "34600000002", False, "dpo", io.StringIO()) == 0
    assert await service.is_restricted("34600000002")
    assert [r.kind for r in await service.privacy.requests.for_subject("34600000002")] == [RequestKind.RESTRICTION]


# --- end to end through the parser (memory store, the opener replaced) ----------------------------
def main(argv: list[str]) -> int:
    """What ``bot.cli.main`` does, with only this file's command groups registered."""
    parser = argparse.ArgumentParser(prog="consentbot")
    sub = parser.add_subparsers(dest="command")
    for module in (consent_cli, erase_cli, dsr_cli):
        module.register(sub)
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except BotError:
        return 1
    return result


@pytest.fixture
def cli_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivacyService]:
    svc = PrivacyService(MemoryStore(), MemoryPrivacyStore(), PROJECT, b"secret", clock=lambda: T0)

    @contextlib.asynccontextmanager
    async def opener(project: str) -> AsyncIterator[PrivacyService]:
        yield svc

    monkeypatch.setattr(consent_cli, "open_service", opener)
    asyncio.run(populate(svc))
    yield svc


def test_cli_verify_end_to_end(cli_service: PrivacyService, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["consent", "verify", "--all"]) == 0
    assert main(["consent", "verify", SUBJECT]) == 0
    del cli_service.store._data.consent[SUBJECT][0]  # type: ignore[attr-defined]
    assert main(["consent", "verify", "--all"]) == 1
    assert f"{SUBJECT}: BROKEN at seq 1: removed" in capsys.readouterr().out
    assert main(["consent", "verify"]) == 2  # neither SUBJECT nor --all


def test_cli_receipt_export_erase_dsr(cli_service: PrivacyService, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["consent", "receipt", SUBJECT]) == 0
    assert json.loads(capsys.readouterr().out)["piiPrincipalId"] == SUBJECT
    assert main(["consent", "export", SUBJECT]) == 0
    assert json.loads(capsys.readouterr().out)["schema"] == "consentbot-export/1.0"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal: no confirmation possible
    assert main(["erase", SUBJECT]) == 2
    assert cli_service.store._data.heads  # type: ignore[attr-defined]
    assert main(["erase", SUBJECT, "--yes", "--actor", "dpo"]) == 0
    assert "Kept:" in capsys.readouterr().out
    assert main(["dsr", "list"]) == 0
    assert main(["dsr", "restrict", "34600000002"]) == 0
    assert "restricted: 34600000002" in capsys.readouterr().out


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_erase_confirmation_on_a_terminal() -> None:
    err = io.StringIO()
    assert erase_cli.confirmed(SUBJECT, False, Terminal(SUBJECT + "\n"), err) is True
    assert SUBJECT in err.getvalue()
    assert erase_cli.confirmed(SUBJECT, False, Terminal("34600000009\n"), io.StringIO()) is False
    assert erase_cli.confirmed(SUBJECT, False, io.StringIO(SUBJECT + "\n"), io.StringIO()) is False  # no terminal
    assert erase_cli.confirmed(SUBJECT, True) is True
