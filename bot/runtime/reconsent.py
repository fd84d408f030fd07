"""Ask again after a new major notice version, without waiting for customers to write.

Consent given under an earlier major notice version no longer allows marketing
(``bot.core.policy.consent_problem``). A subscribed customer who writes is asked again at once (the
shipped flow's ``notice_changed`` guard); :func:`bring_refresh_forward` reaches the others through the
consent-refresh question their conversation already has scheduled: the timer of their state whose
``after`` is ``consent_refresh`` is moved to *now*, in a step of its own (cause ``system``), and the
poller fires it like any due timer. The question goes as the flow sends it (outside the 24-hour window,
its approved template); "keep" then shows the new notice and runs the double opt-in again.

``consentbot consent reconsent [--dry-run]`` runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bot.core.conversation import Cause, Conversation, PurposeState, Step, Timer
from bot.core.machine import CONSENT_REFRESH
from bot.core.policy import granted_under_earlier_notice
from bot.core.project import Project
from bot.errors import StaleVersion
from bot.runtime.catalog import Catalog
from bot.runtime.clock import utc_now
from bot.store.base import ConversationQuery, Store

NOTE = "consent refresh brought forward: new major notice version"
LEASE_SECONDS = 30.0
PAGE = 500


@dataclass(frozen=True, slots=True)
class ReconsentReport:
    """What :func:`bring_refresh_forward` found and did (keys of the conversations, by outcome)."""

    notice_version: str
    scanned: int  # conversations with a granted purpose
    brought_forward: tuple[str, ...]  # their refresh question is due now
    already_due: tuple[str, ...]  # it was due already (or this ran before)
    no_question: tuple[str, ...]  # outdated consent, but their state schedules no refresh question
    busy: tuple[str, ...]  # another process held the conversation; run again

    def summary(self) -> str:
        return (
            f"notice {self.notice_version}: {self.scanned} conversation(s) with consent, "
            f"{len(self.brought_forward) + len(self.already_due) + len(self.no_question) + len(self.busy)} "
            f"under an earlier major version; refresh question brought forward for "
            f"{len(self.brought_forward)}, already due for {len(self.already_due)}, "
            f"none in their state for {len(self.no_question)}, busy {len(self.busy)}"
        )


def outdated(conversation: Conversation, project: Project) -> bool:
    """True when a purpose is granted under an earlier major notice version than the project's."""
    return any(granted_under_earlier_notice(s, project) for s in conversation.consent.values())


def refresh_timer(conversation: Conversation, catalog: Catalog) -> str | None:
    """The name of the timer the conversation's state sets with ``after: consent_refresh``."""
    family = catalog.flows.get(conversation.flow_id)
    compiled = family.get(conversation.flow_version) if family is not None else None
    state = compiled.spec.states.get(conversation.state) if compiled is not None else None
    if state is None:
        return None
    return next((t.trigger for t in state.timers if t.after == CONSENT_REFRESH), None)


async def bring_refresh_forward(
    store: Store,
    catalog: Catalog,
    project: Project,
    owner: str,
    *,
    dry_run: bool = False,
    clock: Callable[[], datetime] = utc_now,
    lease_tries: int = 10,
) -> ReconsentReport:
    """Move the consent-refresh timer of every conversation with outdated consent to now (see the
    module docstring). Idempotent: a timer already due is left alone. ``dry_run`` only reports."""
    keys: list[str] = []
    query = ConversationQuery(purpose_state=str(PurposeState.GRANTED))
    while page := await store.conversations.find(query, skip=len(keys), limit=PAGE):
        keys.extend(c.key for c in page)  # keys first: a commit below reorders the results
        if len(page) < PAGE:
            break
    by_outcome: dict[str, list[str]] = {"moved": [], "due": [], "none": [], "busy": []}
    for key in keys:
        outcome = await _one(store, catalog, project, owner, key, dry_run, clock, lease_tries)
        if outcome:
            by_outcome[outcome].append(key)
    return ReconsentReport(
        project.notice_version,
        len(keys),
        brought_forward=tuple(by_outcome["moved"]),
        already_due=tuple(by_outcome["due"]),
        no_question=tuple(by_outcome["none"]),
        busy=tuple(by_outcome["busy"]),
    )


async def _one(
    store: Store,
    catalog: Catalog,
    project: Project,
    owner: str,
    key: str,
    dry_run: bool,
    clock: Callable[[], datetime],
    lease_tries: int,
) -> str:
    """One conversation: "moved", "due", "none", "busy" or "" (nothing outdated)."""
    lease = await store.conversations.acquire_waiting(key, owner, clock, LEASE_SECONDS, lease_tries)
    if not lease.acquired:
        return "busy"
    committed = False
    try:
        head = lease.conversation
        if head is None or not outdated(head, project):
            return ""
        name = refresh_timer(head, catalog)
        if name is None:
            return "none"
        now = clock()
        timer = next((t for t in head.timers if t.name == name), None)
        if timer is not None and timer.due <= now:
            return "due"
        if dry_run:
            return "moved"
        timers = (*(t for t in head.timers if t.name != name), Timer(name, now))
        step = Step.change(head, now, Cause.SYSTEM, f"notice {project.notice_version}", NOTE, timers=timers)
        try:
            await store.steps.commit(step, owner, LEASE_SECONDS, release=True)
        except StaleVersion:
            return "busy"
        committed = True
        return "moved"
    finally:
        if not committed:
            await store.conversations.release(key, owner)
