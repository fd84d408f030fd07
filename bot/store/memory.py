"""The reference implementation of every storage port, in process memory (nothing persists).

Used by unit tests, benchmarks that separate the framework's cost from the database's, and
``consentbot serve --store memory``. Every method runs to completion without awaiting, so each call
is atomic on the event loop: no lock is needed and results are deterministic. Values go in and out
through the same document form the MongoDB adapter stores (``to_doc``/``from_doc`` with datetimes in
UTC truncated to the millisecond), so both adapters return equal values and callers never share
mutable state with the store.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bot.core.consent import ConsentEventDraft, ConsentRecord, chain
from bot.core.conversation import Conversation, Step, Timer
from bot.core.frozen import evolve
from bot.core.messages import STATUS_RANK, Category, DeliveryStatus, Inbound, Outbound, StatusUpdate, TemplateRef
from bot.errors import NotFound, StaleVersion
from bot.store.base import (
    IN_DOUBT,
    ConsentLedger,
    ConversationQuery,
    Conversations,
    Inbox,
    InboxEntry,
    InboxEvent,
    Lease,
    OutState,
    SendOutcome,
    StepLog,
    StepRecord,
    Store,
    Transcript,
    TranscriptEntry,
    millis,
    millis_opt,
    stored,
)
from bot.store.indexes import purpose_term, purpose_terms, search_terms, subject_ids
from bot.store.privacy import require_intact
from bot.store.privacy_memory import MemoryNotices

__all__ = ["MemoryStore", "millis", "millis_opt", "stored"]


def settled(entry: TranscriptEntry, outcome: SendOutcome, now: datetime) -> TranscriptEntry:
    """``entry`` after a send attempt ended with ``outcome`` (see :meth:`Transcript.settle`)."""
    attempts = entry.attempts + 1
    if outcome.state is OutState.ACCEPTED:
        return evolve(
            entry, out_state=OutState.ACCEPTED, wamid=outcome.wamid, delivery=DeliveryStatus.ACCEPTED,
            delivery_at=now, attempts=attempts, next_attempt_at=None, reason=outcome.reason,
            error=outcome.error,
        )
    if outcome.state is OutState.PENDING:
        return evolve(
            entry, out_state=OutState.PENDING, next_attempt_at=outcome.retry_at, attempts=attempts,
            reason=outcome.reason, error=outcome.error,
        )
    if outcome.state in (OutState.BLOCKED, OutState.FAILED):
        return evolve(
            entry, out_state=outcome.state, attempts=attempts, next_attempt_at=None, reason=outcome.reason,
            error=outcome.error,
        )
    raise ValueError(f"outcome.state: a send attempt cannot end in {outcome.state!s}")


def delivery_rank(status: DeliveryStatus | None) -> int:
    return -2 if status is None else STATUS_RANK[status]


def with_status(entry: TranscriptEntry, update: StatusUpdate, at: datetime) -> TranscriptEntry:
    """``entry`` after the delivery status ``update`` arrived at ``at`` (monotonic, FAILED terminal)."""
    statuses = (*entry.statuses, (str(update.status), at))
    if delivery_rank(update.status) <= delivery_rank(entry.delivery):
        return evolve(entry, statuses=statuses)
    error = update.errors[0] if update.status is DeliveryStatus.FAILED and update.errors else entry.error
    return evolve(entry, statuses=statuses, delivery=update.status, delivery_at=at, error=error)


# --- state ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class _InboxRow:
    entry: InboxEntry
    order: int


@dataclass(slots=True)
class _Head:
    conversation: Conversation | None = None
    lease_owner: str = ""
    lease_until: datetime | None = None


@dataclass(slots=True)
class _OutRow:
    entry: TranscriptEntry
    order: int
    pos: int
    lease_owner: str = ""
    lease_until: datetime | None = None
    queue_at: datetime | None = None  # when the outbox may (re)claim it; None: not in the outbox
    accepted_at: datetime | None = None  # when the Graph API accepted it (frequency caps)


@dataclass(slots=True)
class _Data:
    inbox: dict[str, _InboxRow | None] = field(default_factory=dict)  # None: erased, the id kept for duplicates
    heads: dict[str, _Head] = field(default_factory=dict)
    steps: dict[str, list[StepRecord]] = field(default_factory=dict)
    transcript: dict[str, _OutRow] = field(default_factory=dict)
    outbound_by_subject: dict[str, list[_OutRow]] = field(default_factory=dict)  # frequency-cap counts
    pending: dict[str, dict[str, _InboxRow]] = field(default_factory=dict)  # key -> id -> row, not done yet
    by_key: dict[str, list[_OutRow]] = field(default_factory=dict)  # transcript rows per conversation
    queued: dict[str, _OutRow] = field(default_factory=dict)  # rows in the outbox (queue_at set), by id
    timer_heap: list[tuple[datetime, str, str]] = field(default_factory=list)  # (due, key, name), lazy
    timers_due: dict[tuple[str, str], datetime] = field(default_factory=dict)  # came due, not yet fired
    wamids: dict[str, str] = field(default_factory=dict)
    consent: dict[str, list[ConsentRecord]] = field(default_factory=dict)
    notices: MemoryNotices = field(default_factory=MemoryNotices)  # shared with MemoryPrivacyStore
    counter: Iterator[int] = field(default_factory=itertools.count)


# Copies. The store never shares a mutable value with a caller: what goes in is copied (datetimes
# truncated to the millisecond, tuples inside documents turned into lists, as a BSON round trip would),
# and what comes out is copied again. Only the mutable parts are copied: the dataclasses are frozen,
# and their tuples, strings and nested frozen values can be shared safely.
def _copy_event(event: InboxEvent) -> InboxEvent:
    """``event`` itself unless it holds a dict (a message's data or referral, a status's pricing)."""
    if isinstance(event, Inbound):
        return _copy_message(event)
    if isinstance(event, StatusUpdate) and event.pricing is not None:
        return evolve(event, pricing=stored(event.pricing))
    return event


def _own_inbox(entry: InboxEntry) -> InboxEntry:
    """The copy the store keeps (its time truncated); ``entry`` itself when nothing in it needs it."""
    event, received_at = _copy_event(entry.event), millis(entry.received_at)
    if event is entry.event and received_at is entry.received_at:
        return entry
    return evolve(entry, received_at=received_at, event=event)


def _lend_inbox(entry: InboxEntry) -> InboxEntry:
    event = _copy_event(entry.event)
    return entry if event is entry.event else evolve(entry, event=event)


def _own_conversation(c: Conversation) -> Conversation:
    """The copy the store keeps (every datetime truncated, its dicts copied)."""
    return evolve(
        c,
        created_at=millis(c.created_at),
        updated_at=millis(c.updated_at),
        window_opened_at=millis_opt(c.window_opened_at),
        slots=stored(c.slots),
        consent={
            p: s if (since := millis(s.since)) is s.since else evolve(s, since=since) for p, s in c.consent.items()
        },
        timers=tuple(t if (due := millis(t.due)) is t.due else Timer(t.name, due) for t in c.timers),
    )


def _lend_conversation(c: Conversation) -> Conversation:
    """A copy of a kept conversation for a caller: only its dicts need copying."""
    return evolve(c, slots=stored(c.slots), consent=dict(c.consent))


def _copy_template(t: TemplateRef | None) -> TemplateRef | None:
    return None if t is None else TemplateRef(t.name, t.language, tuple(stored(c) for c in t.components))


def _copy_inbound(m: Inbound | None) -> Inbound | None:
    return None if m is None else _copy_message(m)


def _copy_message(m: Inbound) -> Inbound:
    if not m.data and m.referral is None:
        return m
    return evolve(m, data=stored(m.data), referral=None if m.referral is None else stored(m.referral))


def _copy_outbound(m: Outbound | None) -> Outbound | None:
    if m is None or (m.template is None and m.fallback is None):
        return m
    return evolve(m, template=_copy_template(m.template), fallback=_copy_template(m.fallback))


def _own_entry(entry: TranscriptEntry) -> TranscriptEntry:
    """The copy the store keeps (every datetime truncated); ``entry`` itself when nothing in it is
    mutable or needs truncating (a new outbound entry stamped by the millisecond clock)."""
    if (
        entry.delivery_at is None
        and entry.next_attempt_at is None
        and not entry.statuses
        and millis(entry.at) is entry.at
        and _copy_inbound(entry.inbound) is entry.inbound
        and _copy_outbound(entry.outbound) is entry.outbound
    ):
        return entry  # the common case: a step's new entries
    changes: dict[str, object] = {
        "at": millis(entry.at),
        "inbound": _copy_inbound(entry.inbound),
        "outbound": _copy_outbound(entry.outbound),
        "delivery_at": millis_opt(entry.delivery_at),
        "next_attempt_at": millis_opt(entry.next_attempt_at),
    }
    if entry.statuses:
        changes["statuses"] = tuple((s, millis(t)) for s, t in entry.statuses)
    if all(value is getattr(entry, name) for name, value in changes.items()):
        return entry
    return evolve(entry, **changes)


def _lend_entry(entry: TranscriptEntry) -> TranscriptEntry:
    """A copy of a kept entry for a caller: only the message documents' dicts need copying."""
    inbound, outbound = _copy_inbound(entry.inbound), _copy_outbound(entry.outbound)
    if inbound is entry.inbound and outbound is entry.outbound:
        return entry
    return evolve(entry, inbound=inbound, outbound=outbound)


def _settling(outcome: SendOutcome) -> SendOutcome:
    return outcome if outcome.retry_at is None else evolve(outcome, retry_at=millis(outcome.retry_at))


def _queue(data: _Data, row: _OutRow, at: datetime | None) -> None:
    """Put ``row`` in the outbox at ``at`` (``None``: take it out). Keeps ``claim`` O(outbox)."""
    row.queue_at = at
    if at is None:
        data.queued.pop(row.entry.id, None)
    else:
        data.queued[row.entry.id] = row


def _index_timers(data: _Data, before: Conversation | None, after: Conversation) -> None:
    """Index the timers a commit set (``due_timers`` then never scans every conversation)."""
    old = set() if before is None else {(t.name, t.due) for t in before.timers}
    for t in after.timers:
        if (t.name, t.due) not in old:
            heapq.heappush(data.timer_heap, (t.due, after.key, t.name))


def _chain(data: _Data, drafts: Sequence[ConsentEventDraft]) -> list[ConsentRecord]:
    records = []
    for draft in drafts:
        event = evolve(draft, at=millis(draft.at), evidence=None if draft.evidence is None else stored(draft.evidence))
        log = data.consent.setdefault(event.subject, [])
        record = chain(log[-1] if log else None, event)
        log.append(record)
        records.append(record)
    return records


def _done(data: _Data, row: _InboxRow) -> None:
    rows = data.pending.get(row.entry.conversation_key)
    if rows is not None:
        rows.pop(row.entry.id, None)
        if not rows:
            del data.pending[row.entry.conversation_key]


# --- ports ---------------------------------------------------------------------------------------
class MemoryInbox(Inbox):
    def __init__(self, data: _Data) -> None:
        self._d = data

    async def put(self, entries: Sequence[InboxEntry]) -> int:
        new = 0
        for entry in entries:
            if entry.id not in self._d.inbox:
                row = _InboxRow(_own_inbox(entry), next(self._d.counter))
                self._d.inbox[entry.id] = row
                self._d.pending.setdefault(entry.conversation_key, {})[entry.id] = row
                new += 1
        return new

    async def pending(self, conversation_key: str, limit: int = 100) -> list[InboxEntry]:
        rows = list(self._d.pending.get(conversation_key, {}).values())
        if len(rows) > 1:
            rows.sort(key=lambda r: (r.entry.timestamp, r.order))
        return [_lend_inbox(r.entry) for r in rows[:limit]]

    async def pending_keys(self, limit: int = 100, not_after: datetime | None = None) -> list[str]:
        oldest: dict[str, tuple[datetime, int]] = {}
        for r in (row for rows in self._d.pending.values() for row in rows.values()):
            if not_after is not None and r.entry.received_at > not_after:
                continue
            mark = (r.entry.received_at, r.order)
            key = r.entry.conversation_key
            if key not in oldest or mark < oldest[key]:
                oldest[key] = mark
        return sorted(oldest, key=lambda k: (oldest[k], k))[:limit]

    async def mark_done(self, ids: Sequence[str], now: datetime) -> None:
        for entry_id in ids:
            row = self._d.inbox.get(entry_id)
            if row is not None:
                _done(self._d, row)

    async def bump_attempts(self, entry_id: str) -> int:
        row = self._d.inbox.get(entry_id)
        if row is None:
            raise NotFound(f"inbox entry {entry_id!r} does not exist")
        row.entry = evolve(row.entry, attempts=row.entry.attempts + 1)
        return row.entry.attempts

    async def count_pending(self) -> int:
        return sum(len(rows) for rows in self._d.pending.values())

    async def erase_conversation(self, conversation_key: str, now: datetime) -> int:
        return self._erase(lambda e: e.conversation_key == conversation_key)

    async def erase_statuses(self, subjects: Sequence[str], now: datetime) -> int:
        names = set(subjects)
        return self._erase(
            lambda e: isinstance(s := e.event, StatusUpdate) and (s.subject in names or s.recipient in names)
        )

    def _erase(self, matches: Callable[[InboxEntry], bool]) -> int:
        rows = [row for row in self._d.inbox.values() if row is not None and matches(row.entry)]
        for row in rows:
            _done(self._d, row)
            self._d.inbox[row.entry.id] = None
        return len(rows)


class MemoryConversations(Conversations):
    def __init__(self, data: _Data) -> None:
        self._d = data

    async def acquire(self, key: str, owner: str, now: datetime, lease_seconds: float) -> Lease:
        head = self._d.heads.setdefault(key, _Head())
        free = head.lease_until is None or head.lease_until <= millis(now)
        if not free and head.lease_owner != owner:
            return Lease(acquired=False, conversation=None)
        head.lease_owner, head.lease_until = owner, millis(now + timedelta(seconds=lease_seconds))
        conv = head.conversation
        return Lease(acquired=True, conversation=None if conv is None else _lend_conversation(conv))

    async def release(self, key: str, owner: str) -> None:
        head = self._d.heads.get(key)
        if head is None or head.lease_owner != owner:
            return
        if head.conversation is None:
            del self._d.heads[key]
        else:
            head.lease_owner, head.lease_until = "", None

    async def get(self, key: str) -> Conversation | None:
        head = self._d.heads.get(key)
        conv = None if head is None else head.conversation
        return None if conv is None else _lend_conversation(conv)

    def _matching(self, query: ConversationQuery) -> list[Conversation]:
        text, term = query.text.lower(), purpose_term(query)
        out = []
        for head in self._d.heads.values():
            c = head.conversation
            if c is None:
                continue
            checks = (
                not text or any(t.startswith(text) for t in search_terms(c)),
                not query.phone_number_id or c.phone_number_id == query.phone_number_id,
                not query.state or c.state == query.state,
                not query.flow_id or c.flow_id == query.flow_id,
                not term or term in purpose_terms(c),
                query.needs_person is None or c.needs_person == query.needs_person,
                query.paused is None or c.paused == query.paused,
                query.updated_after is None or c.updated_at > query.updated_after,
                query.updated_before is None or c.updated_at < query.updated_before,
            )
            if all(checks):
                out.append(c)
        out.sort(key=lambda c: (c.updated_at, c.key), reverse=True)
        return out

    async def find(self, query: ConversationQuery, skip: int = 0, limit: int = 50) -> list[Conversation]:
        return [_lend_conversation(c) for c in self._matching(query)[skip : skip + limit]]

    async def count(self, query: ConversationQuery) -> int:
        return len(self._matching(query))

    async def by_subject(self, subject: str) -> list[Conversation]:
        found = [
            h.conversation
            for h in self._d.heads.values()
            if h.conversation is not None and subject in subject_ids(h.conversation)
        ]
        return [_lend_conversation(c) for c in sorted(found, key=lambda c: c.key)]

    async def count_by_state(self, flow_id: str) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for h in self._d.heads.values():
            c = h.conversation
            if c is not None and c.flow_id == flow_id:
                counts[(c.flow_version, c.state)] = counts.get((c.flow_version, c.state), 0) + 1
        return counts

    async def due_timers(self, now: datetime, limit: int = 100) -> list[tuple[str, Timer]]:
        d = self._d
        while d.timer_heap and d.timer_heap[0][0] <= now:
            at, key, name = heapq.heappop(d.timer_heap)
            d.timers_due[(key, name)] = at
        due = []
        for (key, name), at in list(d.timers_due.items()):
            head = d.heads.get(key)
            conv = None if head is None else head.conversation
            timer = None if conv is None else next((t for t in conv.timers if t.name == name), None)
            if timer is None or timer.due != at:  # fired, cancelled, moved (re-indexed) or erased
                del d.timers_due[(key, name)]
            elif at <= now:
                due.append((key, timer))
        due.sort(key=lambda kt: (kt[1].due, kt[0]))
        return due[:limit]

    async def delete(self, key: str) -> None:
        self._d.heads.pop(key, None)


class MemoryStepLog(StepLog):
    def __init__(self, data: _Data) -> None:
        self._d = data

    async def commit(
        self, step: Step, owner: str, lease_seconds: float = 30.0, release: bool = True
    ) -> list[str]:
        conv = step.conversation
        if conv.version != step.seq:
            raise ValueError(f"step.conversation.version: {conv.version} is not step.seq {step.seq}")
        head = self._d.heads.get(conv.key)
        stored_version = 0 if head is None or head.conversation is None else head.conversation.version
        if head is None or head.lease_owner != owner:
            raise StaleVersion(f"conversation {conv.key!r}: lease not held by {owner!r}")
        if stored_version != step.seq - 1:
            raise StaleVersion(f"conversation {conv.key!r} is at version {stored_version}, not {step.seq - 1}")
        for notice in step.notices:  # a broken notice refuses the step before any change
            require_intact(notice)
        previous, head.conversation = head.conversation, _own_conversation(conv)
        _index_timers(self._d, previous, head.conversation)
        lease_until = millis(step.at + timedelta(seconds=lease_seconds))
        if release:
            head.lease_owner, head.lease_until = "", None
        else:
            head.lease_until = lease_until
        record = StepRecord.of(step)  # its tuples hold frozen values only
        if (at := millis(step.at)) is not step.at:
            record = evolve(record, at=at)
        self._d.steps.setdefault(conv.key, []).append(record)
        out_ids = []
        for pos, entry in enumerate(self.entries(step)):
            row = _OutRow(_own_entry(entry), next(self._d.counter), pos)
            if entry.direction == "out":
                row.lease_owner, row.lease_until = owner, lease_until
                _queue(self._d, row, lease_until)
                out_ids.append(entry.id)
                self._d.outbound_by_subject.setdefault(entry.subject, []).append(row)
            self._d.transcript[entry.id] = row
            self._d.by_key.setdefault(entry.key, []).append(row)
        for notice in step.notices:
            self._d.notices.add(notice)
        _chain(self._d, step.consent)
        for entry_id in step.inbox_ids:
            row_in = self._d.inbox.get(entry_id)
            if row_in is not None:
                _done(self._d, row_in)
        return out_ids

    async def history(self, key: str, after_seq: int = 0, limit: int = 200) -> list[StepRecord]:
        return [r for r in self._d.steps.get(key, []) if r.seq > after_seq][:limit]

    async def delete(self, key: str) -> int:
        return len(self._d.steps.pop(key, []))


class MemoryTranscript(Transcript):
    def __init__(self, data: _Data) -> None:
        self._d = data

    async def add_outbound(
        self, key: str, subject: str, message: Outbound, at: datetime, sent_by: str, entry_id: str
    ) -> bool:
        if entry_id in self._d.transcript:
            return False
        entry = TranscriptEntry(
            id=entry_id, key=key, subject=subject, direction="out", seq=0, at=at, outbound=message,
            out_state=OutState.PENDING, sent_by=sent_by,
        )
        row = _OutRow(_own_entry(entry), next(self._d.counter), 0)
        _queue(self._d, row, row.entry.at)
        self._d.transcript[entry_id] = row
        self._d.outbound_by_subject.setdefault(subject, []).append(row)
        self._d.by_key.setdefault(key, []).append(row)
        return True

    async def claim(
        self, owner: str, now: datetime, lease_seconds: float, limit: int = 50, entry_ids: Sequence[str] = ()
    ) -> list[TranscriptEntry]:
        now = millis(now)
        rows = (
            [self._d.transcript[i] for i in entry_ids if i in self._d.transcript]
            if entry_ids
            else list(self._d.queued.values())
        )
        due = [r for r in rows if r.queue_at is not None and r.queue_at <= now]
        due.sort(key=lambda r: (r.queue_at, r.entry.at, r.pos, r.order))
        claimed = []
        for row in due[:limit]:
            doubt = row.entry.out_state is OutState.SENDING  # its holder's lease expired mid-attempt
            row.entry = evolve(row.entry, out_state=OutState.SENDING, reason=IN_DOUBT if doubt else row.entry.reason)
            row.lease_owner, row.lease_until = owner, millis(now + timedelta(seconds=lease_seconds))
            _queue(self._d, row, row.lease_until)
            claimed.append(_lend_entry(row.entry))
        return claimed

    async def settle(self, entry_id: str, owner: str, outcome: SendOutcome, now: datetime) -> bool:
        row = self._d.transcript.get(entry_id)
        if outcome.state is OutState.SENDING:
            raise ValueError("outcome.state: a send attempt cannot end in sending")
        if row is None or row.entry.out_state is not OutState.SENDING or row.lease_owner != owner:
            return False
        now = millis(now)
        # settled() only adds immutable values (strings, a frozen ErrorInfo) and truncated times
        row.entry = settled(row.entry, _settling(outcome), now)
        row.lease_owner, row.lease_until = "", None
        _queue(self._d, row, (row.entry.next_attempt_at or now) if outcome.state is OutState.PENDING else None)
        if outcome.state is OutState.ACCEPTED:
            row.accepted_at = now
            self._d.wamids[row.entry.wamid] = entry_id
        return True

    async def apply_status(self, update: StatusUpdate, at: datetime) -> TranscriptEntry | None:
        entry_id = self._d.wamids.get(update.message_id)
        row = None if entry_id is None else self._d.transcript.get(entry_id)
        if row is None:
            return None
        row.entry = with_status(row.entry, update, millis(at))  # adds a frozen ErrorInfo at most
        return _lend_entry(row.entry)

    async def adopt(self, entry_id: str, wamid: str, now: datetime) -> bool:
        row = self._d.transcript.get(entry_id)
        if row is None or row.entry.direction != "out" or row.entry.wamid:
            return False
        if row.entry.out_state not in (OutState.PENDING, OutState.SENDING):
            return False
        now = millis(now)
        row.entry = evolve(row.entry, out_state=OutState.ACCEPTED, wamid=wamid, delivery=DeliveryStatus.ACCEPTED,
                            delivery_at=now, next_attempt_at=None)
        row.lease_owner, row.lease_until = "", None
        _queue(self._d, row, None)
        row.accepted_at = now
        self._d.wamids[wamid] = entry_id
        return True

    async def by_wamid(self, wamid: str) -> TranscriptEntry | None:
        entry_id = self._d.wamids.get(wamid)
        row = None if entry_id is None else self._d.transcript.get(entry_id)
        return None if row is None else _lend_entry(row.entry)

    async def for_conversation(
        self, key: str, after: datetime | None = None, limit: int = 500
    ) -> list[TranscriptEntry]:
        rows = [r for r in self._d.by_key.get(key, ()) if after is None or r.entry.at > after]
        rows.sort(key=lambda r: (r.entry.at, r.pos, r.order))
        return [_lend_entry(r.entry) for r in rows[:limit]]

    async def count_sent_since(self, subject: str, category: Category, since: datetime) -> int:
        return sum(
            1
            for r in self._d.outbound_by_subject.get(subject, ())
            if r.entry.out_state is OutState.ACCEPTED
            and r.entry.outbound is not None
            and r.entry.outbound.category is category
            and r.accepted_at is not None
            and r.accepted_at >= since
        )

    async def delete(self, key: str) -> int:
        ids = [r.entry.id for r in self._d.by_key.pop(key, [])]
        for entry_id in ids:
            row = self._d.transcript.pop(entry_id)
            self._d.queued.pop(entry_id, None)
            self._d.wamids.pop(row.entry.wamid, None)
            rows = self._d.outbound_by_subject.get(row.entry.subject)
            if rows is not None and row in rows:
                rows.remove(row)
        return len(ids)


class MemoryLedger(ConsentLedger):
    def __init__(self, data: _Data) -> None:
        self._d = data

    async def append(self, events: Sequence[Any]) -> list[ConsentRecord]:
        return _chain(self._d, events)

    async def history(self, subject: str) -> list[ConsentRecord]:
        return list(self._d.consent.get(subject, []))

    async def subjects(self) -> list[str]:
        return sorted(s for s, log in self._d.consent.items() if log)

    async def delete(self, subject: str) -> int:
        return len(self._d.consent.pop(subject, []))


class MemoryStore(Store):
    """Every port in process memory. ``open``/``close`` do nothing; ``ping`` is always True."""

    def __init__(self) -> None:
        self._data = _Data()
        self.inbox = MemoryInbox(self._data)
        self.conversations = MemoryConversations(self._data)
        self.steps = MemoryStepLog(self._data)
        self.transcript = MemoryTranscript(self._data)
        self.ledger = MemoryLedger(self._data)
        self.notices = self._data.notices  # the notice texts step commits store (MemoryPrivacyStore reads them)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True
