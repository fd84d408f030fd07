"""Data-subject rights and proof of consent, over the ports: export (GDPR 15/20), erasure (17),
restriction (18), consent receipts and chain verification, the suppression check every send path
uses, and the bookkeeping of data-subject requests (each with its one-month deadline).

Erasure deletes the operational data (conversation heads, their history, transcripts with message
bodies) and keeps exactly two things, which the :class:`ErasureReport` names so the customer can be
told: the suppression entry (an HMAC of the number, its scope and date; LOPDGDD 23.1) and the consent
proof, moved to the blocked store until ``destroy_at`` (LOPDGDD 32, GDPR 17(3)(b),(e)).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bot.core.consent import ConsentRecord
from bot.core.conversation import Cause, Conversation, Step
from bot.core.project import Project
from bot.core.proof import (
    ChainCheck,
    TranscriptLine,
    build_export,
    build_receipt,
    iso,
    normalise_number,
    request_due,
    suppression_key,
    verify_chain,
)
from bot.errors import RuntimeFailure
from bot.runtime.clock import utc_now
from bot.store.base import Store, TranscriptEntry
from bot.store.privacy import (
    BlockedProofEntry,
    DataRequest,
    Principal,
    PrivacyStore,
    RequestKind,
    RequestStatus,
    SuppressionScope,
)

LEASE_SECONDS = 30.0
LEASE_TRIES = 25  # x 0.2 s: wait up to ~5 s for a dispatcher to finish the conversation's turn
TRANSCRIPT_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class Kept:
    """Something erasure keeps, why, and until when (``None``: while marketing runs on the channel)."""

    what: str
    why: str
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What :meth:`PrivacyService.erase` did: what was deleted, and what is kept and why."""

    subject: str
    request_id: str
    erased_at: datetime
    conversations: tuple[str, ...]
    history_records: int
    transcript_entries: int
    consent_events_blocked: int
    ledger_removed: bool
    suppression_keys: int
    kept: tuple[Kept, ...] = ()
    inbox_entries: int = 0  # received events whose content was dropped (their ids stay, for duplicates)

    def to_doc(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "request_id": self.request_id,
            "erased_at": iso(self.erased_at),
            "deleted": {
                "conversations": list(self.conversations),
                "history_records": self.history_records,
                "transcript_entries": self.transcript_entries,
                "inbox_entries": self.inbox_entries,
                "live_consent_events": self.consent_events_blocked if self.ledger_removed else 0,
            },
            "kept": [
                {"what": k.what, "why": k.why, "until": None if k.until is None else iso(k.until)} for k in self.kept
            ],
        }

    def summary(self) -> str:
        """A plain-language answer for the customer (Art. 12): what was deleted, what is kept and why."""
        lines = [
            f"Your data was erased on {self.erased_at:%Y-%m-%d}: {len(self.conversations)} conversation(s), "
            f"{self.transcript_entries} message(s) and your preferences were deleted."
        ]
        for k in self.kept:
            until = f" until {k.until:%Y-%m-%d}" if k.until is not None else ""
            lines.append(f"Kept: {k.what}{until}, because {k.why}.")
        return "\n".join(lines)


def transcript_line(entry: TranscriptEntry) -> TranscriptLine:
    """A store transcript entry as the export shows it."""
    if entry.inbound is not None:
        msg = entry.inbound
        return TranscriptLine(entry.key, entry.at, "in", str(msg.kind), msg.text or msg.payload or "", wamid=msg.id)
    out = entry.outbound
    if out is None:
        return TranscriptLine(entry.key, entry.at, entry.direction, "unknown")
    template = out.template.name if out.template is not None else ""
    status = str(entry.delivery) if entry.delivery is not None else str(entry.out_state or "")
    return TranscriptLine(
        entry.key, entry.at, "out", str(out.kind), out.body or template, str(out.category), out.purpose, template,
        status, entry.wamid,
    )


@dataclass
class PrivacyService:
    """Data-subject rights over the main :class:`Store` and the :class:`PrivacyStore`.

    ``suppression_secret`` keys the suppression HMAC (``Settings.deployment_secret``); ``clock``
    gives "now" (tests pass a fixed one)."""

    store: Store
    privacy: PrivacyStore
    project: Project
    suppression_secret: bytes
    jurisdiction: str = "ES"
    clock: Callable[[], datetime] = field(default=utc_now)
    owner: str = field(default_factory=lambda: f"privacy:{uuid.uuid4().hex[:8]}")

    # --- lookups ---------------------------------------------------------------------------------
    async def conversations(self, subject: str) -> list[Conversation]:
        """The subject's conversations, found by subject key or wa_id, also when typed as a number
        with ``+``/spaces."""
        found = await self.store.conversations.by_subject(subject)
        digits = normalise_number(subject)
        if not found and digits and digits != subject:
            found = await self.store.conversations.by_subject(digits)
        return found

    async def _subjects(self, subject: str, conversations: Sequence[Conversation]) -> list[str]:
        keys = dict.fromkeys([subject, *(c.subject for c in conversations)])
        digits = normalise_number(subject)
        if digits and digits != subject and not conversations:
            keys[digits] = None
        return list(keys)

    async def _records(self, subjects: Sequence[str]) -> dict[str, list[ConsentRecord]]:
        chains: dict[str, list[ConsentRecord]] = {}
        for s in subjects:
            records = await self.store.ledger.history(s)
            if records:
                chains[s] = records
        return chains

    def _keys(self, values: Sequence[str | None]) -> list[str]:
        return list(dict.fromkeys(suppression_key(self.suppression_secret, v) for v in values if v and v.strip()))

    async def is_suppressed(self, subject_or_number: str) -> bool:
        """True when the subject / number is on the suppression list. The signature matches the
        outbox's ``SuppressionCheck`` (``Sender(is_suppressed=service.is_suppressed)``)."""
        if not subject_or_number.strip():
            return True  # no recipient: nothing may be sent (fail-closed)
        return await self.privacy.suppression.is_suppressed(suppression_key(self.suppression_secret, subject_or_number))

    async def is_restricted(self, subject: str) -> bool:
        """True when processing of ``subject`` is restricted (GDPR 18)."""
        return await self.privacy.restrictions.is_restricted(subject)

    # --- data-subject requests -------------------------------------------------------------------
    async def open_request(self, subject: str, kind: RequestKind, actor: str, note: str = "") -> DataRequest:
        """Record a request (received now, due one month later). An open request of the same kind for
        the same subject is returned instead of opening a second one."""
        for existing in await self.privacy.requests.for_subject(subject):
            if existing.kind is kind and existing.status is RequestStatus.OPEN:
                return existing
        now = self.clock()
        request = DataRequest(
            id=uuid.uuid4().hex, subject=subject, kind=kind, received_at=now, due_at=request_due(now),
            actor=actor, note=note,
        )
        await self.privacy.requests.open(request)
        return request

    async def open_requests(self, limit: int = 100) -> list[DataRequest]:
        """Open requests, the earliest deadline first."""
        return await self.privacy.requests.list_open(limit)

    async def handle_request(self, request: str, conversation: Conversation, now: datetime) -> None:
        """The dispatcher's ``on_request`` hook: a customer asked in the chat for a copy ("export") or
        erasure ("erase"). Opens the data-subject request with its deadline; an operator completes it
        (``consentbot consent export`` / ``consentbot erase``), which closes it. Other requests are
        ignored here."""
        kinds = {"export": RequestKind.ACCESS, "erase": RequestKind.ERASURE}
        kind = kinds.get(request)
        if kind is not None:
            await self.open_request(conversation.subject, kind, "customer", note=f"asked in chat {iso(now)}")

    async def _close(self, request: DataRequest, result: dict[str, Any], note: str = "") -> DataRequest:
        return await self.privacy.requests.close(request.id, RequestStatus.DONE, self.clock(), note, result)

    # --- access / portability --------------------------------------------------------------------
    async def export(
        self, subject: str, actor: str = "operator", kind: RequestKind = RequestKind.ACCESS
    ) -> dict[str, Any]:
        """The subject's export (``bot.core.proof.EXPORT_SCHEMA``); opens and closes the request."""
        request = await self.open_request(subject, kind, actor)
        conversations = await self.conversations(subject)
        chains = await self._records(await self._subjects(subject, conversations))
        who = conversations[0].subject if conversations else next(iter(chains), subject)
        records = chains.get(who, [])
        notices = await self.privacy.notices.many(sorted({r.event.notice_sha256 for r in records}))
        lines: list[TranscriptLine] = []
        for conv in conversations:
            entries = await self.store.transcript.for_conversation(conv.key, limit=TRANSCRIPT_LIMIT)
            lines += [transcript_line(e) for e in entries]
        export = build_export(
            who,
            project=self.project,
            conversations=conversations,
            records=records,
            notices=notices,
            transcript=lines,
            now=self.clock(),
        )
        await self._close(request, {"conversations": len(conversations), "events": len(records),
                                    "messages": len(lines)})
        return export

    # --- proof -----------------------------------------------------------------------------------
    async def receipt(self, subject: str) -> dict[str, Any]:
        """The consent receipt of ``subject`` (Kantara CR v1.1 / ISO/IEC TS 27560 fields)."""
        conversations = await self.conversations(subject)
        chains = await self._records(await self._subjects(subject, conversations))
        who = conversations[0].subject if conversations else next(iter(chains), subject)
        records = chains.get(who, [])
        notices = await self.privacy.notices.many(sorted({r.event.notice_sha256 for r in records}))
        return build_receipt(
            who, records, self.project.controller, notices, self.clock(), jurisdiction=self.jurisdiction,
            refresh_days=self.project.retention.consent_refresh_days,
        )

    async def verify(self, subject: str | None = None) -> list[ChainCheck]:
        """Verify one subject's chain, or every chain in the ledger (``None``)."""
        subjects = [subject] if subject is not None else await self.store.ledger.subjects()
        return [verify_chain(await self.store.ledger.history(s), s) for s in subjects]

    async def blocked_proof(self, subject: str, principal: Principal) -> list[BlockedProofEntry]:
        """Blocked proof of an erased subject; raises ``AccessDenied`` without the privacy role."""
        return await self.privacy.blocked.read(subject, principal)

    # --- erasure ---------------------------------------------------------------------------------
    async def _lease(self, key: str) -> Conversation | None:
        lease = await self.store.conversations.acquire_waiting(key, self.owner, self.clock, LEASE_SECONDS, LEASE_TRIES)
        if not lease.acquired:
            raise RuntimeFailure(f"conversation {key} is busy; try again in a minute")
        return lease.conversation

    async def erase(self, subject: str, actor: str) -> ErasureReport:
        """Erase ``subject`` (GDPR 17), in an order that never leaves a half-erased subject reachable:

        1. suppression entries (HMAC of the subject and of every wa_id) with scope ``all``;
        2. the consent chain(s) copied to the blocked store with ``destroy_at = now +
           Retention.blocked_proof_days``, then removed from the live ledger when it can delete;
        3. per conversation, under its lease: transcript (message bodies), history, head, and the
           received events in the inbox (their ids stay, so a redelivery is still a duplicate).

        Opens (or reuses) and closes an erasure request. Idempotent: erasing again finds nothing
        more to delete."""
        request = await self.open_request(subject, RequestKind.ERASURE, actor)
        now = self.clock()
        conversations = await self.conversations(subject)
        subjects = await self._subjects(subject, conversations)
        identities = [*subjects, *(c.wa_id for c in conversations if c.wa_id)]  # every id the customer has here
        keys = self._keys(identities)
        for key in keys:
            await self.privacy.suppression.add(key, str(SuppressionScope.ALL), now)

        destroy_at = now + timedelta(days=self.project.retention.blocked_proof_days)
        chains = await self._records(subjects)
        blocked = 0
        ledger_removed = True
        for who, records in chains.items():
            refs = tuple(sorted({r.event.notice_sha256 for r in records if r.event.notice_sha256}))
            entry = BlockedProofEntry(f"{who}:{records[-1].hash[:16]}", who, tuple(records), refs, now, destroy_at)
            await self.privacy.blocked.block(entry)
            blocked += len(records)
            await self.store.ledger.delete(who)

        history = transcript = inbox = 0
        for conv in conversations:
            await self._lease(conv.key)
            transcript += await self.store.transcript.delete(conv.key)
            history += await self.store.steps.delete(conv.key)
            inbox += await self.store.inbox.erase_conversation(conv.key, now)
            await self.store.conversations.delete(conv.key)
        inbox += await self.store.inbox.erase_statuses(identities, now)
        await self.privacy.restrictions.unrestrict(subject)

        kept = [
            Kept(
                "a suppression entry (a keyed hash of your number, its scope and date; no name, no messages)",
                "we must be able to make sure we never message you again (LOPDGDD art. 23.1)",
            )
        ]
        if blocked:
            kept.append(
                Kept(
                    f"the record of your consent choices ({blocked} events), blocked: nobody can see or use it "
                    "except to answer a court or the data-protection authority",
                    "the law requires us to be able to prove consent for possible claims (GDPR 17(3)(b),(e); "
                    "LOPDGDD art. 32)",
                    destroy_at,
                )
            )
        report = ErasureReport(
            subject=subject,
            request_id=request.id,
            erased_at=now,
            conversations=tuple(c.key for c in conversations),
            history_records=history,
            transcript_entries=transcript,
            consent_events_blocked=blocked,
            ledger_removed=ledger_removed,
            suppression_keys=len(keys),
            kept=tuple(kept),
            inbox_entries=inbox,
        )
        await self._close(request, report.to_doc())
        return report

    # --- restriction -----------------------------------------------------------------------------
    async def _set_restricted(self, conv: Conversation, value: bool, actor: str) -> None:
        head = await self._lease(conv.key)
        try:
            if head is None or head.restricted is value:
                return
            note = "restricted" if value else "restriction lifted"
            step = Step.change(head, self.clock(), Cause.AGENT, actor, note, restricted=value)
            await self.store.steps.commit(step, self.owner, LEASE_SECONDS, release=True)
        finally:
            await self.store.conversations.release(conv.key, self.owner)

    async def restrict(self, subject: str, actor: str) -> DataRequest:
        """Restrict processing (GDPR 18): recorded in the restriction store and set on every
        conversation head (a step with cause ``agent``), so the send gate blocks every message."""
        request = await self.open_request(subject, RequestKind.RESTRICTION, actor)
        await self.privacy.restrictions.restrict(subject, self.clock(), actor)
        conversations = await self.conversations(subject)
        for conv in conversations:
            await self._set_restricted(conv, True, actor)
        return await self._close(request, {"conversations": [c.key for c in conversations]})

    async def unrestrict(self, subject: str, actor: str) -> DataRequest:
        """Lift a restriction (store and conversation heads)."""
        request = await self.open_request(subject, RequestKind.LIFT_RESTRICTION, actor)
        await self.privacy.restrictions.unrestrict(subject)
        conversations = await self.conversations(subject)
        for conv in conversations:
            await self._set_restricted(conv, False, actor)
        return await self._close(request, {"conversations": [c.key for c in conversations]})
