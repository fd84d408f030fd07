"""In-process reference adapter of the privacy ports (tests, the memory store, benchmarks).

Nothing persists and nothing expires on its own: :meth:`MemoryPrivacyStore.expire` applies the
retention rules the MongoDB adapter gets from TTL indexes (blocked proof at ``destroy_at``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from bot.core.rendering import NoticeText
from bot.errors import NotFound
from bot.store.privacy import (
    AccessDenied,
    BlockedProof,
    BlockedProofEntry,
    DataRequest,
    DataRequests,
    Notices,
    Principal,
    PrivacyStore,
    RequestStatus,
    Restrictions,
    Role,
    Suppression,
    SuppressionEntry,
    ms,
    require_intact,
    wider_scope,
)


class MemoryNotices(Notices):
    def __init__(self) -> None:
        self._by_id: dict[tuple[str, str, str], NoticeText] = {}

    def add(self, notice: NoticeText) -> bool:
        """:meth:`put` without the await (the memory store's step commit calls it)."""
        require_intact(notice)
        key = (notice.version, notice.locale, notice.sha256)
        if key in self._by_id:
            return False
        self._by_id[key] = notice
        return True

    async def put(self, notice: NoticeText) -> bool:
        return self.add(notice)

    async def get(self, sha256: str) -> NoticeText | None:
        return next((n for n in self._by_id.values() if n.sha256 == sha256), None)

    async def many(self, hashes: Sequence[str]) -> list[NoticeText]:
        wanted = set(hashes)
        return [n for n in self._by_id.values() if n.sha256 in wanted]

    async def versions(self, version: str, locale: str) -> list[NoticeText]:
        return [n for (v, loc, _), n in self._by_id.items() if v == version and loc == locale]


class MemorySuppression(Suppression):
    def __init__(self) -> None:
        self._entries: dict[str, SuppressionEntry] = {}

    async def add(self, key: str, scope: str, at: datetime) -> bool:
        old = self._entries.get(key)
        if old is None:
            self._entries[key] = SuppressionEntry(key, str(scope), ms(at))
            return True
        if wider_scope(old.scope, str(scope)):
            self._entries[key] = replace(old, scope=str(scope))
        return False

    async def is_suppressed(self, key: str) -> bool:
        return key in self._entries

    async def get(self, key: str) -> SuppressionEntry | None:
        return self._entries.get(key)


class MemoryBlockedProof(BlockedProof):
    def __init__(self) -> None:
        self._entries: dict[str, BlockedProofEntry] = {}

    async def block(self, entry: BlockedProofEntry) -> bool:
        if entry.id in self._entries:
            return False
        self._entries[entry.id] = replace(entry, blocked_at=ms(entry.blocked_at), destroy_at=ms(entry.destroy_at))
        return True

    async def read(self, subject: str, principal: Principal) -> list[BlockedProofEntry]:
        if not principal.has(Role.PRIVACY):
            raise AccessDenied("blocked_proof.read", str(Role.PRIVACY))
        found = [e for e in self._entries.values() if e.subject == subject]
        return sorted(found, key=lambda e: (e.blocked_at, e.id))

    async def count(self) -> int:
        return len(self._entries)

    def expire(self, now: datetime) -> int:
        doomed = [i for i, e in self._entries.items() if e.destroy_at <= now]
        for i in doomed:
            del self._entries[i]
        return len(doomed)


class MemoryDataRequests(DataRequests):
    def __init__(self) -> None:
        self._requests: dict[str, DataRequest] = {}

    async def open(self, request: DataRequest) -> bool:
        if request.id in self._requests:
            return False
        self._requests[request.id] = replace(
            request,
            received_at=ms(request.received_at),
            due_at=ms(request.due_at),
            completed_at=None if request.completed_at is None else ms(request.completed_at),
        )
        return True

    async def close(
        self, request_id: str, status: RequestStatus, at: datetime, note: str = "", result: dict[str, Any] | None = None
    ) -> DataRequest:
        current = self._requests.get(request_id)
        if current is None:
            raise NotFound(f"data request {request_id!r} does not exist")
        done = replace(current, status=RequestStatus(status), completed_at=ms(at), note=note or current.note,
                       result=dict(result) if result is not None else current.result)
        self._requests[request_id] = done
        return done

    async def get(self, request_id: str) -> DataRequest | None:
        return self._requests.get(request_id)

    async def list_open(self, limit: int = 100) -> list[DataRequest]:
        found = [r for r in self._requests.values() if r.status is RequestStatus.OPEN]
        return sorted(found, key=lambda r: (r.due_at, r.id))[:limit]

    async def for_subject(self, subject: str) -> list[DataRequest]:
        return sorted((r for r in self._requests.values() if r.subject == subject), key=lambda r: (r.received_at, r.id))


class MemoryRestrictions(Restrictions):
    def __init__(self) -> None:
        self._subjects: dict[str, tuple[datetime, str]] = {}

    async def restrict(self, subject: str, at: datetime, actor: str) -> bool:
        if subject in self._subjects:
            return False
        self._subjects[subject] = (ms(at), actor)
        return True

    async def unrestrict(self, subject: str) -> bool:
        return self._subjects.pop(subject, None) is not None

    async def is_restricted(self, subject: str) -> bool:
        return subject in self._subjects

    async def subjects(self) -> list[str]:
        return sorted(self._subjects)


class MemoryPrivacyStore(PrivacyStore):
    blocked: MemoryBlockedProof

    def __init__(self, notices: MemoryNotices | None = None) -> None:
        """``notices``: the memory store's own (``MemoryStore.notices``), where its step commits put
        the texts flows show; a new, empty one when None."""
        self.notices = notices if notices is not None else MemoryNotices()
        self.suppression = MemorySuppression()
        self.blocked = MemoryBlockedProof()
        self.requests = MemoryDataRequests()
        self.restrictions = MemoryRestrictions()

    async def open(self) -> None:
        return None

    def expire(self, now: datetime) -> int:
        """Apply what the TTL indexes do in MongoDB: drop blocked proof whose ``destroy_at`` has passed."""
        return self.blocked.expire(now)
