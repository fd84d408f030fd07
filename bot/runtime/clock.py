"""The service's clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _MillisecondClock:
    """Calls within one millisecond return the same (immutable) value: a busy service reads the clock
    several times per message, and building a datetime costs more than reading the time."""

    __slots__ = ("_ms", "_now")

    def __init__(self) -> None:
        self._ms = -1
        self._now = _EPOCH

    def __call__(self) -> datetime:
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:
            self._now = _EPOCH + timedelta(milliseconds=ms)
            self._ms = ms
        return self._now


_clock = _MillisecondClock()


def utc_now() -> datetime:
    """Now, timezone-aware UTC, truncated to the millisecond: the precision every store keeps, so a
    time read from the clock is stored as it is (no copy to truncate it)."""
    return _clock()
