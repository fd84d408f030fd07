"""``kill -9`` mid-campaign, then ``run`` again: every recipient receives exactly one message.

The campaign runs in a subprocess (the real ``consentbot broadcast run`` command) against the fake
Graph API served over HTTP on loopback and the MongoDB-wire server. The simulator posts signed status
webhooks to a real webhook route in this process whose sink is the campaign receipt tap (as in the
service). The first run is SIGKILLed while messages are in flight; the second finishes the campaign.
Messages are counted at the simulator."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.core.audience import declarations_from
from bot.core.conversation import Cause, Conversation, PurposeState, PurposeStatus, Step
from bot.runtime.broadcast import CampaignReceipts, new_campaign
from bot.runtime.inbox import InboxWriter
from bot.runtime.metrics import Metrics
from bot.settings import SANDBOX_APP_SECRET, SANDBOX_TOKEN, load_project
from bot.store.broadcasts import RecipientState
from bot.store.broadcasts_mongo import MongoBroadcasts
from bot.store.mongo import MongoStore
from bot.web.webhook import WEBHOOK_CLIENT_MAX_SIZE, WebhookStats, add_webhook_routes
from bot.whatsapp.simulator import SIMULATOR, create_simulator_app

ROOT = Path(__file__).resolve().parents[2]
PNID = "100000000000001"
N = 120
RATE = 60

# The real command line (``consentbot broadcast run``), run by this interpreter.
ENTRY = "import sys; from bot.cli import main; sys.exit(main(sys.argv[1:]))"

TEMPLATES = textwrap.dedent("""
    templates:
      - name: spring_offer
        language: en
        parameters: [first_name]
        footer: "Reply STOP to opt out"
        buttons:
          - {type: quick_reply, text: "Stop promotions", payload: optout}
""")


@pytest.fixture
async def world(mongo_uri: str, tmp_path: Path) -> AsyncIterator[dict[str, object]]:
    (tmp_path / "consentbot.yaml").write_text((ROOT / "consentbot.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "whatsapp_templates.yaml").write_text(TEMPLATES, encoding="utf-8")
    database = f"crash_{uuid.uuid4().hex[:12]}"
    store = MongoStore.from_uri(mongo_uri, database, serverSelectionTimeoutMS=5000)
    await store.open()
    broadcasts = MongoBroadcasts(store.database)
    await broadcasts.open()
    hook_app = web.Application(client_max_size=WEBHOOK_CLIENT_MAX_SIZE)
    add_webhook_routes(hook_app, verify_token="v", app_secret=SANDBOX_APP_SECRET,
                       sink=CampaignReceipts(broadcasts, InboxWriter(store.inbox, Metrics(), lambda keys: None)),
                       known_numbers=lambda p: p == PNID, stats=WebhookStats())
    hook = TestServer(hook_app, host="127.0.0.1")
    await hook.start_server()
    sim_app = create_simulator_app(app_secret=SANDBOX_APP_SECRET, webhook_url=str(hook.make_url("/webhook")),
                                   access_token=SANDBOX_TOKEN, phone_numbers={PNID: "15550009999"},
                                   status_delays=(0.02, 0.05, 0.08))
    sim = TestServer(sim_app, host="127.0.0.1")
    await sim.start_server()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "CONSENTBOT_", "MONGODB_"))}
    env |= {"MONGODB_URI": mongo_uri, "CONSENTBOT_DATABASE": database}
    try:
        yield {"store": store, "broadcasts": broadcasts, "sim": sim_app[SIMULATOR], "project_dir": tmp_path,
               "graph": str(sim.make_url("/graph")), "env": env}
    finally:
        await sim_app[SIMULATOR].drain(2.0)
        await sim.close()
        await hook.close()
        await store.database.client.drop_database(database)
        await store.close()


async def subscribe(store: MongoStore, subject: str, now: datetime) -> None:
    conv = Conversation.start(PNID, subject, "consent", "1", "subscribed", "en", now, wa_id=subject,
                              profile_name="Ana")
    conv = conv.evolve(consent={"offers": PurposeStatus(PurposeState.GRANTED, now - timedelta(days=1), "1.0")},
                       slots={"age_ok": True}, version=1)
    assert (await store.conversations.acquire(conv.key, "seed", now, 30)).acquired
    await store.steps.commit(Step(conversation=conv, seq=1, at=now, cause=Cause.SYSTEM), "seed")


async def start_run(world: dict[str, object], campaign_id: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", ENTRY, "broadcast", "run", campaign_id, "--project", str(world["project_dir"]),
        "--graph-url", str(world["graph"]), "--receipt-wait", "1.5", "--lease", "5", "--wait", "30",
        env=world["env"], cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.slow
async def test_kill_9_mid_campaign_then_resume_sends_each_recipient_exactly_once(world: dict[str, object]) -> None:
    store, broadcasts, sim = world["store"], world["broadcasts"], world["sim"]
    assert isinstance(store, MongoStore) and isinstance(broadcasts, MongoBroadcasts)
    now = datetime.now(UTC)
    subjects = [f"3461{i:07d}" for i in range(N)]
    for s in subjects:
        await subscribe(store, s, now)
    project = load_project(Path(str(world["project_dir"])))
    decl = declarations_from(yaml.safe_load(TEMPLATES))[0]
    campaign = new_campaign(name="Crash", decl=decl, purpose="offers", project=project, phone_number_id=PNID,
                            now=now, params={"first_name": "{{ profile_name }}"}, rate=RATE)
    await broadcasts.create(campaign)

    def delivered() -> int:
        return sum(1 for r in sim.requests if r.kind == "message" and r.status == 200)  # type: ignore[attr-defined]

    first = await start_run(world, campaign.id)
    try:
        async with asyncio.timeout(60):
            while delivered() < N // 3:
                if first.returncode is not None:
                    out, err = await first.communicate()
                    pytest.fail(f"the first run ended early ({first.returncode}): {err.decode()[-2000:]}")
                await asyncio.sleep(0.01)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    killed_at = delivered()
    assert N // 3 <= killed_at < N, "the kill must land mid-campaign"
    tally = await broadcasts.tally(campaign.id)
    assert tally.state(RecipientState.SENDING) > 0  # recipients in flight when it died

    second = await start_run(world, campaign.id)
    out, err = await asyncio.wait_for(second.communicate(), 90)
    assert second.returncode == 0, (out.decode()[-3000:], err.decode()[-3000:])
    assert b"done" in out

    counts = {s: sum(1 for b in sim.sent_to(s) if b.get("type") == "template") for s in subjects}  # type: ignore[attr-defined]
    assert [s for s, n in counts.items() if n != 1] == []
    assert delivered() == N
    tally = await broadcasts.tally(campaign.id)
    assert tally.state(RecipientState.ACCEPTED) == N and tally.total == N
