"""The reference adapter of the campaign ports, in process memory (tests, benchmarks, ``--store memory``).

Every method runs without awaiting, so each call is atomic on the event loop. Pending recipients are
kept in an insertion-ordered index per campaign so a lease is O(batch), not O(audience). The audience
query reads the conversation heads of the :class:`~bot.store.memory.MemoryStore` it is given, through a
sorted list of their keys (rebuilt when the number of heads changes), so a page is O(page).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from bot.core.conversation import Conversation
from bot.core.messages import DeliveryStatus
from bot.errors import NotFound
from bot.store.broadcasts import (
    FINAL_STATES,
    Broadcasts,
    Campaign,
    CampaignState,
    Finish,
    Receipt,
    Recipient,
    RecipientState,
    Tally,
    delivery_rank,
)
from bot.store.memory import MemoryStore, millis, millis_opt, stored


def _copy_campaign(c: Campaign) -> Campaign:
    return replace(
        c,
        created_at=millis(c.created_at),
        updated_at=millis(c.updated_at),
        run_until=millis_opt(c.run_until),
        started_at=millis_opt(c.started_at),
        finished_at=millis_opt(c.finished_at),
        params=dict(c.params),
        progress=stored(dict(c.progress)),
    )


def _copy_recipient(r: Recipient) -> Recipient:
    return replace(
        r,
        attempt_at=millis_opt(r.attempt_at),
        finished_at=millis_opt(r.finished_at),
        delivery_at=millis_opt(r.delivery_at),
    )


@dataclass(slots=True)
class _Campaign:
    campaign: Campaign
    recipients: dict[str, Recipient] = field(default_factory=dict)
    pending: dict[str, None] = field(default_factory=dict)  # insertion (seq) ordered


class MemoryBroadcasts(Broadcasts):
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._campaigns: dict[str, _Campaign] = {}
        self._sorted: list[str] = []  # conversation keys in order (the audience scan's index)
        self._sorted_size = -1

    def _get(self, campaign_id: str) -> _Campaign:
        found = self._campaigns.get(campaign_id)
        if found is None:
            raise NotFound(f"campaign {campaign_id!r} does not exist")
        return found

    async def open(self) -> None:
        return None

    # --- campaigns -------------------------------------------------------------------------------
    async def create(self, campaign: Campaign) -> None:
        if campaign.id in self._campaigns:
            raise ValueError(f"campaign id {campaign.id!r} already exists")
        self._campaigns[campaign.id] = _Campaign(_copy_campaign(campaign))

    async def get(self, campaign_id: str) -> Campaign | None:
        found = self._campaigns.get(campaign_id)
        return None if found is None else _copy_campaign(found.campaign)

    async def recent(self, limit: int = 100) -> list[Campaign]:
        items = sorted(self._campaigns.values(), key=lambda c: (c.campaign.created_at, c.campaign.id), reverse=True)
        return [_copy_campaign(c.campaign) for c in items[:limit]]

    async def set_state(self, campaign_id: str, state: CampaignState, now: datetime) -> Campaign:
        row = self._get(campaign_id)
        c = replace(row.campaign, state=state, updated_at=millis(now))
        if state is CampaignState.RUNNING and c.started_at is None:
            c = replace(c, started_at=millis(now))
        if state is CampaignState.DONE:
            c = replace(c, finished_at=millis(now))
        row.campaign = c
        return _copy_campaign(c)

    async def acquire_run(self, campaign_id: str, owner: str, now: datetime, lease_seconds: float) -> bool:
        row = self._get(campaign_id)
        c = row.campaign
        if c.run_owner and c.run_owner != owner and c.run_until is not None and c.run_until > now:
            return False
        row.campaign = replace(c, run_owner=owner, run_until=millis(now + timedelta(seconds=lease_seconds)))
        return True

    async def release_run(self, campaign_id: str, owner: str) -> None:
        row = self._get(campaign_id)
        if row.campaign.run_owner == owner:
            row.campaign = replace(row.campaign, run_owner="", run_until=None)

    async def save_progress(
        self, campaign_id: str, progress: Mapping[str, Any], now: datetime, cursor: str | None = None,
        audience_done: bool | None = None,
    ) -> None:
        row = self._get(campaign_id)
        c = replace(row.campaign, progress=stored(dict(progress)), updated_at=millis(now))
        if cursor is not None:
            c = replace(c, audience_cursor=cursor)
        if audience_done is not None:
            c = replace(c, audience_done=audience_done)
        row.campaign = c

    # --- recipients ------------------------------------------------------------------------------
    async def add_recipients(self, recipients: Sequence[Recipient]) -> int:
        new = 0
        for r in recipients:
            row = self._get(r.campaign_id)
            if r.subject in row.recipients:
                continue
            row.recipients[r.subject] = _copy_recipient(r)
            if r.state is RecipientState.PENDING:
                row.pending[r.subject] = None
            new += 1
        return new

    async def lease(self, campaign_id: str, owner: str, now: datetime, limit: int) -> list[Recipient]:
        row = self._get(campaign_id)
        out: list[Recipient] = []
        while row.pending and len(out) < limit:
            subject = next(iter(row.pending))
            del row.pending[subject]
            r = row.recipients[subject]
            r = replace(r, state=RecipientState.SENDING, owner=owner, attempt_at=millis(now), attempts=r.attempts + 1)
            row.recipients[subject] = r
            out.append(r)
        return out

    async def in_doubt(self, campaign_id: str, after_subject: str = "", limit: int = 500) -> list[Recipient]:
        row = self._get(campaign_id)
        found = heapq.nsmallest(
            limit,
            (s for s, r in row.recipients.items() if r.state is RecipientState.SENDING and s > after_subject),
        )
        return [row.recipients[s] for s in found]

    async def finish(self, campaign_id: str, finishes: Sequence[Finish], now: datetime) -> int:
        row = self._get(campaign_id)
        changed = 0
        for f in finishes:
            if f.state not in FINAL_STATES:
                raise ValueError(f"finish: {f.state} is not a final state")
            r = row.recipients.get(f.subject)
            if r is None or r.state is not RecipientState.SENDING:
                continue
            row.recipients[f.subject] = replace(
                r, state=f.state, reason=f.reason, detail=f.detail[:300], owner="", finished_at=millis(now),
                error_code=f.error_code or r.error_code,
            )
            changed += 1
        return changed

    async def release(self, campaign_id: str, subjects: Sequence[str]) -> int:
        row = self._get(campaign_id)
        changed = 0
        for s in subjects:
            r = row.recipients.get(s)
            if r is None or r.state is not RecipientState.SENDING:
                continue
            row.recipients[s] = replace(r, state=RecipientState.PENDING, owner="")
            row.pending[s] = None
            changed += 1
        if changed:  # keep audience order
            row.pending = dict.fromkeys(sorted(row.pending, key=lambda s: row.recipients[s].seq))
        return changed

    async def recipient(self, campaign_id: str, subject: str) -> Recipient | None:
        row = self._campaigns.get(campaign_id)
        return None if row is None else row.recipients.get(subject)

    async def recipients(self, campaign_id: str, after_subject: str = "", limit: int = 500) -> list[Recipient]:
        row = self._get(campaign_id)
        found = heapq.nsmallest(limit, (s for s in row.recipients if s > after_subject))
        return [row.recipients[s] for s in found]

    async def record_receipt(self, receipt: Receipt) -> bool:
        row = self._campaigns.get(receipt.campaign_id)
        r = None if row is None else row.recipients.get(receipt.subject)
        if row is None or r is None:
            return False
        wamid = r.wamid or receipt.wamid
        if r.delivery is DeliveryStatus.FAILED or delivery_rank(receipt.status) <= delivery_rank(r.delivery):
            row.recipients[receipt.subject] = replace(r, wamid=wamid)
            return True
        code = receipt.error_code if receipt.status is DeliveryStatus.FAILED else r.error_code
        row.recipients[receipt.subject] = replace(
            r, wamid=wamid, delivery=receipt.status, delivery_at=millis(receipt.at), error_code=code
        )
        return True

    async def tally(self, campaign_id: str) -> Tally:
        row = self._get(campaign_id)
        states: dict[str, int] = {}
        reasons: dict[str, int] = {}
        delivery: dict[str, int] = {}
        errors: dict[str, int] = {}
        for r in row.recipients.values():
            states[str(r.state)] = states.get(str(r.state), 0) + 1
            if r.state is RecipientState.EXCLUDED:
                reasons[r.reason] = reasons.get(r.reason, 0) + 1
            if r.delivery is not None:
                delivery[str(r.delivery)] = delivery.get(str(r.delivery), 0) + 1
            if r.error_code:
                errors[str(r.error_code)] = errors.get(str(r.error_code), 0) + 1
        return Tally(states, reasons, delivery, errors)

    # --- the audience ----------------------------------------------------------------------------
    async def candidates(
        self, phone_number_id: str, purpose: str, after_key: str = "", limit: int = 500
    ) -> list[Conversation]:
        heads = self._store._data.heads  # the memory store's conversation heads (same package)
        if self._sorted_size != len(heads):  # new or erased conversations: re-sort the keys once
            self._sorted = sorted(heads)
            self._sorted_size = len(heads)
        out: list[Conversation] = []
        i = bisect.bisect_right(self._sorted, after_key)
        while i < len(self._sorted) and len(out) < limit:
            head = heads.get(self._sorted[i])
            i += 1
            c = None if head is None else head.conversation
            if c is not None and c.phone_number_id == phone_number_id and purpose in c.consent:
                # a shallow copy: the head is frozen; its dicts are copied so a caller cannot change the store
                out.append(replace(c, slots=dict(c.slots), consent=dict(c.consent)))
        return out
