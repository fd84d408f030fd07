"""The support desk: an agent takes a conversation over from the bot, answers as a person, and hands
it back.

- :meth:`Desk.take_over` pauses the flow (``conversation.paused = True``) and clears the
  needs-a-person flag, as a committed :class:`~bot.core.conversation.Step` with cause ``AGENT`` (so
  it is on the conversation's history), under the conversation's lease like any dispatcher turn.
- :meth:`Desk.reply` queues the agent's message on the transcript (``sent_by = "agent:<name>"``) and
  sends it through :class:`~bot.runtime.outbox.Sender`, i.e. through the send gate: free text only
  inside the customer's 24-hour window, an approved template otherwise. A refused message stays on
  the transcript as BLOCKED with the gate's reason, which the agent is shown.
- :meth:`Desk.hand_back` resumes the flow (``paused = False``), again as an ``AGENT`` step.

Agents reply only to a conversation they (or a colleague) have taken over, so the bot and a person
never answer at the same time, and never to a restricted one (GDPR 18).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.core.conversation import Cause, Conversation, Step
from bot.core.messages import Category, Outbound, OutboundKind, TemplateRef
from bot.errors import NotFound, RuntimeFailure, StaleVersion
from bot.runtime.clock import utc_now
from bot.runtime.outbox import Sender
from bot.store.base import OutState, Store, TranscriptEntry

MAX_REPLY_CHARS = 4096  # WhatsApp's limit for a text body
TAKEOVER_NOTE = "agent took over"
HANDBACK_NOTE = "agent handed back to the bot"


class DeskRefused(RuntimeFailure):
    """The desk will not do what was asked (not taken over, restricted, empty reply...). The message
    is written for the agent."""


@dataclass(frozen=True, slots=True)
class ReplyResult:
    """What happened to an agent's reply: the transcript entry, its outbox state, and (when the gate
    refused it or the Graph API failed) the reason code."""

    entry_id: str
    state: OutState
    reason: str = ""

    @property
    def sent(self) -> bool:
        return self.state is OutState.ACCEPTED


class Desk:
    """Takeover, agent replies and hand-back for one process.

    ``templates`` are the approved WhatsApp templates agents may send when the 24-hour window has
    closed (name -> reference); ``owner`` is the process's lease-owner name (each desk operation
    uses its own lease owner derived from it, so it never extends a dispatcher's lease)."""

    def __init__(
        self,
        store: Store,
        sender: Sender,
        owner: str,
        *,
        templates: Mapping[str, TemplateRef] | None = None,
        lease_seconds: float = 10.0,
        lease_wait: float = 3.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.sender = sender
        self.owner = owner
        self.templates: dict[str, TemplateRef] = dict(templates or {})
        self.lease_seconds = lease_seconds
        self.lease_wait = lease_wait
        self.clock = clock

    # --- pause and resume ------------------------------------------------------------------------
    async def take_over(self, key: str, agent: str) -> Conversation:
        """Pause the bot for ``key`` on behalf of ``agent``. Idempotent: an already paused
        conversation is returned unchanged (no new step)."""
        return await self._set_paused(key, agent, paused=True)

    async def hand_back(self, key: str, agent: str) -> Conversation:
        """Give ``key`` back to the bot. Idempotent like :meth:`take_over`."""
        return await self._set_paused(key, agent, paused=False)

    async def _set_paused(self, key: str, agent: str, paused: bool) -> Conversation:
        for _ in range(3):
            owner = f"{self.owner}/desk/{uuid.uuid4().hex[:8]}"
            head = await self._acquire(key, owner)
            committed = False
            try:
                if head.paused == paused and (not paused or not head.needs_person):
                    return head
                changes: dict[str, object] = {"paused": paused}
                if paused:
                    changes["needs_person"] = False
                note = TAKEOVER_NOTE if paused else HANDBACK_NOTE
                step = Step.change(head, self.clock(), Cause.AGENT, agent, note, **changes)
                try:
                    await self.store.steps.commit(step, owner, self.lease_seconds, release=True)
                except StaleVersion:
                    continue
                committed = True
                return step.conversation
            finally:
                if not committed:
                    await self.store.conversations.release(key, owner)
        raise DeskRefused("the conversation kept changing; try again")

    async def _acquire(self, key: str, owner: str) -> Conversation:
        """Take the conversation's lease, waiting (bounded) while a bot turn holds it."""
        deadline = self.clock() + timedelta(seconds=self.lease_wait)
        while True:
            lease = await self.store.conversations.acquire(key, owner, self.clock(), self.lease_seconds)
            if lease.acquired:
                if lease.conversation is None:
                    await self.store.conversations.release(key, owner)
                    raise NotFound(f"conversation {key!r} does not exist")
                return lease.conversation
            if self.clock() >= deadline:
                raise DeskRefused("the bot is busy with this conversation; try again in a moment")
            await asyncio.sleep(0.05)

    # --- replies ---------------------------------------------------------------------------------
    def reply_message(self, conversation: Conversation, text: str = "", template: str = "") -> Outbound:
        """The outbound message for an agent's reply: free text (category SERVICE), or one of the
        approved ``templates`` by name (category UTILITY)."""
        if template:
            ref = self.templates.get(template)
            if ref is None:
                raise DeskRefused(f"template {template!r} is not one of the approved templates")
            return Outbound(
                to=conversation.subject,
                kind=OutboundKind.TEMPLATE,
                template=ref,
                category=Category.UTILITY,
                template_id=f"agent:{template}",
            )
        body = text.strip()
        if not body:
            raise DeskRefused("the reply is empty")
        if len(body) > MAX_REPLY_CHARS:
            raise DeskRefused(f"the reply is {len(body)} characters; WhatsApp allows {MAX_REPLY_CHARS}")
        return Outbound(to=conversation.subject, kind=OutboundKind.TEXT, body=body, category=Category.SERVICE)

    async def reply(self, key: str, agent: str, request_id: str, text: str = "", template: str = "") -> ReplyResult:
        """Send ``text`` (or the approved ``template``) to the customer as ``agent``, through the gate.

        ``request_id`` is the caller's idempotency key (the form's nonce): submitting the same reply
        twice queues and sends it once. Raises :class:`DeskRefused` when the conversation is not taken
        over, is restricted, or the reply is empty or too long; :class:`NotFound` for an unknown key."""
        conversation = await self.store.conversations.get(key)
        if conversation is None:
            raise NotFound(f"conversation {key!r} does not exist")
        if not conversation.paused:
            raise DeskRefused("take the conversation over before replying (the bot is still answering)")
        if conversation.restricted:
            raise DeskRefused("processing of this customer's data is restricted (GDPR 18): nothing can be sent")
        message = self.reply_message(conversation, text, template)
        now = self.clock()
        entry_id = f"{key}#agent/{request_id}"
        await self.store.transcript.add_outbound(
            key, conversation.subject, message, now, sent_by=f"agent:{agent}", entry_id=entry_id
        )
        claimed = await self.store.transcript.claim(
            self.sender.owner, now, self.sender.lease_seconds, limit=1, entry_ids=[entry_id]
        )
        if claimed:
            state = await self.sender.send(entry_id, message, conversation)
        else:
            state = OutState.SENDING  # a repeated submit: the first one is (being) sent
        entry = await self.entry(key, entry_id, since=now)
        if entry is not None and entry.out_state is not None:
            state = entry.out_state
        reason = ""
        if entry is not None:
            reason = entry.reason or (entry.error.title if entry.error is not None else "")
        return ReplyResult(entry_id, state, reason)

    async def entry(self, key: str, entry_id: str, since: datetime) -> TranscriptEntry | None:
        """The transcript entry ``entry_id`` of ``key`` (written at or after ``since``)."""
        for entry in await self.store.transcript.for_conversation(key, after=since - timedelta(seconds=1)):
            if entry.id == entry_id:
                return entry
        return None
