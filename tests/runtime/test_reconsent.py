"""Bringing the consent-refresh question forward after a new major notice version, on the real stores
(memory and a MongoDB-wire server), and the ``consentbot consent reconsent`` command."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.cli.consent import reconsent_command
from bot.core.conversation import Cause, Conversation, PurposeState, Step
from bot.core.engine import TimerFired, decide
from bot.core.messages import Inbound, InboundKind
from bot.core.sample import SAMPLE_PROJECT
from bot.runtime.catalog import load_catalog
from bot.runtime.privacy import PrivacyService
from bot.runtime.reconsent import NOTE, bring_refresh_forward
from bot.store.base import Store
from bot.store.privacy_memory import MemoryPrivacyStore

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(ROOT, SAMPLE_PROJECT)
PNID = "100000000000001"
T0 = datetime(2025, 3, 3, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=40)
V2 = replace(SAMPLE_PROJECT, notice_version="2.0")


@pytest.fixture(params=["memory", "mongo"])
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue(f"{request.param}_store")  # type: ignore[no-any-return]


def subscribed(subject: str, project: object = SAMPLE_PROJECT) -> Conversation:
    """A customer through the shipped double opt-in (offers only), under ``project``'s notice."""
    family = CATALOG.family("consent")
    conv = None
    at = T0
    for i, (text, payload) in enumerate([("hi", None), *((p, p) for p in (
            "consent_yes", "age_yes", "purpose_yes", "purpose_no", "set_frequency:weekly", "confirm_yes"))]):
        at += timedelta(seconds=1)
        event = Inbound(f"wamid.{subject}.{i}", PNID, subject, int(at.timestamp()),
                        InboundKind.BUTTON_REPLY if payload else InboundKind.TEXT, wa_id=subject, text=text,
                        payload=payload)
        conv = decide(conv, event, family, project, at).conversation  # type: ignore[arg-type]
    assert conv is not None and conv.state == "subscribed"
    return conv


async def save(store: Store, conv: Conversation) -> Conversation:
    lease = await store.conversations.acquire(conv.key, "setup", T0, 30)
    assert lease.acquired
    head = conv.evolve(version=1)
    await store.steps.commit(Step(conversation=head, seq=1, at=T0, cause=Cause.INBOUND, cause_id="setup"), "setup",
                             30, release=True)
    return head


async def test_only_outdated_consent_gets_its_question_now_and_once(store: Store) -> None:
    old = await save(store, subscribed("34600000001"))
    current = await save(store, subscribed("34600000002", V2))
    [refresh] = [t for t in old.timers if t.name == "refresh"]
    assert refresh.due > NOW + timedelta(days=600)  # ~700 days after the confirmation

    dry = await bring_refresh_forward(store, CATALOG, V2, "cli", dry_run=True, clock=lambda: NOW)
    assert dry.brought_forward == (old.key,) and dry.scanned == 2
    assert await store.conversations.get(old.key) == old  # a dry run changes nothing

    report = await bring_refresh_forward(store, CATALOG, V2, "cli", clock=lambda: NOW)
    assert report.brought_forward == (old.key,) and report.busy == () and report.no_question == ()
    head = await store.conversations.get(old.key)
    assert head is not None and head.version == 2
    assert [t.due for t in head.timers if t.name == "refresh"] == [NOW]
    assert head.consent == old.consent and head.state == "subscribed"  # consent itself is untouched
    last = (await store.steps.history(old.key))[-1]
    assert (last.cause, last.cause_id, last.notes) == (str(Cause.SYSTEM), "notice 2.0", (NOTE,))
    assert await store.conversations.get(current.key) == current  # consent under 2.0: left alone
    assert (old.key, "refresh") in [(k, t.name) for k, t in await store.conversations.due_timers(NOW)]

    again = await bring_refresh_forward(store, CATALOG, V2, "cli", clock=lambda: NOW)
    assert again.brought_forward == () and again.already_due == (old.key,)
    minor = await bring_refresh_forward(store, CATALOG, replace(SAMPLE_PROJECT, notice_version="2.1"), "cli",
                                        clock=lambda: NOW)
    assert minor.brought_forward == () and minor.already_due == (old.key,)  # 2.0 -> 2.1 asks nobody new

    # What the poller then does with it: the refresh question, as its approved template outside the window.
    d = decide(head, TimerFired("refresh"), CATALOG.family("consent"), V2, NOW)
    assert d.conversation.state == "refresh"
    [question] = d.outbox
    assert question.fallback is not None and question.fallback.name == "consent_refresh"
    assert d.conversation.consent["offers"].state is PurposeState.GRANTED


async def test_a_state_without_a_refresh_question_is_reported(store: Store) -> None:
    conv = subscribed("34600000003")
    held = await save(store, conv.evolve(state="prefs", timers=()))  # the preference menu sets no refresh timer
    report = await bring_refresh_forward(store, CATALOG, V2, "cli", clock=lambda: NOW)
    assert report.no_question == (held.key,) and report.brought_forward == ()
    assert "none in their state for 1" in report.summary()


async def test_reconsent_command(memory_store: Store) -> None:
    old = await save(memory_store, subscribed("34600000004"))
    privacy = MemoryPrivacyStore()
    await privacy.open()
    service = PrivacyService(memory_store, privacy, V2, b"secret-for-tests-0123456789abcdef")
    out = io.StringIO()
    assert await reconsent_command(service, str(ROOT), dry_run=True, out=out) == 0
    assert f"dry run: would bring forward: {old.key}" in out.getvalue()
    out = io.StringIO()
    assert await reconsent_command(service, str(ROOT), out=out) == 0
    text = out.getvalue()
    assert f"brought forward: {old.key}" in text
    assert "notice 2.0: 1 conversation(s) with consent, 1 under an earlier major version" in text
    head = await memory_store.conversations.get(old.key)
    assert head is not None and [t.name for t in head.timers if t.due <= datetime.now(UTC)] == ["refresh"]
