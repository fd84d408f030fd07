"""The service clock ticks in milliseconds; the serving process freezes its start-up heap."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime

from bot.runtime.clock import utc_now
from bot.store.base import millis


def test_clock_is_utc_milliseconds() -> None:
    for _ in range(50):
        now = utc_now()
        assert now.tzinfo is UTC and now.microsecond % 1000 == 0 and millis(now) == now


def test_clock_follows_the_system_clock_and_never_runs_backwards() -> None:
    last = utc_now()
    for _ in range(2000):
        before = datetime.now(UTC)
        now = utc_now()
        after = datetime.now(UTC)
        assert millis(before) <= now <= after and now >= last
        last = now
    time.sleep(0.003)
    assert utc_now() > last  # the value kept for one millisecond moves on


def test_settle_after_start_up_freezes_and_raises_thresholds() -> None:
    code = (
        "import gc\n"
        "from bot.runtime import heap\n"
        "before = gc.get_freeze_count()\n"
        "heap.settle_after_start_up()\n"
        "assert gc.get_freeze_count() > before + 1000, gc.get_freeze_count()\n"
        "assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, heap.MIDDLE_THRESHOLD, heap.OLD_THRESHOLD)\n"
        "assert gc.isenabled()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
