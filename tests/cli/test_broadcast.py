"""``consentbot broadcast``: the real command line against the MongoDB-wire server and the fake Graph API
(served over HTTP on loopback from a background thread)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import textwrap
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bot import wiring
from bot.cli import main
from bot.core.conversation import Cause, Conversation, PurposeState, PurposeStatus, Step
from bot.settings import SANDBOX_APP_SECRET, SANDBOX_TOKEN
from bot.store.base import Store
from bot.store.mongo import MongoStore
from bot.whatsapp.simulator import SIMULATOR, Simulator, create_simulator_app

ROOT = Path(__file__).resolve().parents[2]
PNID = "100000000000001"
TEMPLATES = textwrap.dedent("""
    templates:
      - name: spring_offer
        language: en
        body: "Hi {{1}}, 20% off this week."
        parameters: [first_name]
        footer: "Reply STOP to opt out"
        buttons:
          - {type: quick_reply, text: "Stop promotions", payload: optout}
      - name: no_way_out
        language: en
        parameters: []
""")


async def _open_broadcasts(store: Store) -> Any:
    """What ``bot.wiring.open_broadcasts`` does for a MongoDB store (used only while it is not wired)."""
    from bot.store.broadcasts_mongo import MongoBroadcasts

    broadcasts = MongoBroadcasts(store.database)  # type: ignore[attr-defined]
    await broadcasts.open()
    return broadcasts


class SimThread:
    """The fake Graph API on its own event loop in a thread (the CLI runs its own ``asyncio.run``)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        app = create_simulator_app(app_secret=SANDBOX_APP_SECRET, webhook_url="http://127.0.0.1:9/off",
                                   access_token=SANDBOX_TOKEN, phone_numbers={PNID: "15550009999"},
                                   status_delays=(5.0, 5.0, 5.0))
        self.sim: Simulator = app[SIMULATOR]
        self.server = TestServer(app, host="127.0.0.1")
        asyncio.run_coroutine_threadsafe(self.server.start_server(), self.loop).result(10)
        self.graph = str(self.server.make_url("/graph"))

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def project(tmp_path: Path, mongo_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "consentbot.yaml").write_text((ROOT / "consentbot.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "whatsapp_templates.yaml").write_text(TEMPLATES, encoding="utf-8")
    database = f"cli_{uuid.uuid4().hex[:12]}"
    for key in ("WHATSAPP_ACCESS_TOKEN", "WHATSAPP_GRAPH_URL", "WHATSAPP_PHONE_NUMBER_ID", "CONSENTBOT_SECRET"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    monkeypatch.setenv("CONSENTBOT_DATABASE", database)
    if not hasattr(wiring, "open_broadcasts"):
        monkeypatch.setattr(wiring, "open_broadcasts", _open_broadcasts, raising=False)
    asyncio.run(seed(mongo_uri, database))
    yield tmp_path

    async def drop() -> None:
        store = MongoStore.from_uri(mongo_uri, database)
        await store.database.client.drop_database(database)
        await store.close()

    asyncio.run(drop())


async def seed(uri: str, database: str) -> None:
    store = MongoStore.from_uri(uri, database, serverSelectionTimeoutMS=5000)
    await store.open()
    now = datetime.now(UTC)
    people = [("34600000001", PurposeState.GRANTED, "weekly"), ("34600000002", PurposeState.GRANTED, "weekly"),
              ("34600000003", PurposeState.GRANTED, "monthly"), ("34600000004", PurposeState.WITHDRAWN, "weekly"),
              ("34600000005", PurposeState.GRANTED, "weekly")]
    for subject, state, freq in people:
        conv = Conversation.start(PNID, subject, "consent", "1", "subscribed", "en", now, wa_id=subject,
                                  profile_name="Ana")
        conv = conv.evolve(consent={"offers": PurposeStatus(state, now - timedelta(days=2), "1.0")},
                           slots={"age_ok": subject != "34600000005", "freq": freq}, version=1)
        assert (await store.conversations.acquire(conv.key, "seed", now, 30)).acquired
        await store.steps.commit(Step(conversation=conv, seq=1, at=now, cause=Cause.SYSTEM), "seed")
    await store.close()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


CREATE = ("broadcast", "create", "--name", "Spring", "--template", "spring_offer", "--language", "en",
          "--purpose", "offers", "--segment", "freq=weekly", "--param", "first_name={{ profile_name }}",
          "--rate", "200")


def test_create_refuses_a_template_without_an_opt_out(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "broadcast", "create", "--project", str(project), "--name", "X",
                       "--template", "no_way_out", "--language", "en", "--purpose", "offers")
    assert code == 1 and "no opt-out element" in err
    code, _, err = cli(capsys, "broadcast", "create", "--project", str(project), "--name", "X",
                       "--template", "nope", "--language", "en", "--purpose", "offers")
    assert code == 1 and "not declared" in err and "spring_offer (en)" in err
    code, out, _ = cli(capsys, "broadcast", "list", "--project", str(project))
    assert code == 0 and "no campaigns yet" in out


def test_dry_run_then_run_status_report(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, *CREATE, "--project", str(project), "--dry-run")
    assert code == 0, err
    assert "audience: 2 of 5" in out
    assert "no_consent" in out and "segment" in out and "age_unknown" not in out and "minor" in out
    code, out, err = cli(capsys, *CREATE, "--project", str(project), "--id", "spring1")
    assert code == 0, err
    assert "created campaign spring1" in out
    code, out, _ = cli(capsys, "broadcast", "run", "spring1", "--dry-run", "--project", str(project))
    assert code == 0 and "audience: 2 of 5" in out

    sim = SimThread()
    try:
        code, out, err = cli(capsys, "broadcast", "run", "spring1", "--project", str(project),
                             "--graph-url", sim.graph, "--receipt-wait", "1")
        assert code == 0, err
        assert "sent 2" in out and "excluded 3" in out and "campaign spring1: done" in out
        assert len(sim.sim.sent_to("34600000001")) == 1 and len(sim.sim.sent_to("34600000002")) == 1
        for other in ("34600000003", "34600000004", "34600000005"):
            assert sim.sim.sent_to(other) == []
    finally:
        sim.close()

    code, out, _ = cli(capsys, "broadcast", "status", "spring1", "--project", str(project))
    assert code == 0 and "[done" in out and "accepted 2" in out and "no_consent 1" in out
    code, out, _ = cli(capsys, "broadcast", "list", "--project", str(project))
    assert "spring1" in out and "sent 2" in out
    code, out, _ = cli(capsys, "broadcast", "report", "spring1", "--format", "csv", "--project", str(project))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["subject"], r["state"], r["reason"]) for r in rows] == [
        ("34600000001", "accepted", ""), ("34600000002", "accepted", ""), ("34600000003", "excluded", "segment"),
        ("34600000004", "excluded", "no_consent"), ("34600000005", "excluded", "minor"),
    ]
    code, out, _ = cli(capsys, "broadcast", "report", "spring1", "--format", "json", "--project", str(project))
    doc = json.loads(out)
    assert doc["summary"]["sent"] == 2 and doc["summary"]["excluded_by_reason"] == {
        "minor": 1, "no_consent": 1, "segment": 1}
    assert doc["summary"]["opted_out_after"] == 0 and len(doc["recipients"]) == 5
    code, out, _ = cli(capsys, "broadcast", "cancel", "spring1", "--project", str(project))
    assert code == 0 and "already done" in out
    code, _, err = cli(capsys, "broadcast", "status", "nope", "--project", str(project))
    assert code == 1 and "does not exist" in err
