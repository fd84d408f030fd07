"""The service's clock."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """Now, timezone-aware UTC, truncated to the millisecond: the precision every store keeps, so a
    time read from the clock is stored as it is (no copy to truncate it)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)
