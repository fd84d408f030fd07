"""The service clock ticks in milliseconds; the serving process freezes its start-up heap."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC

from bot.runtime.clock import utc_now
from bot.store.base import millis


def test_clock_is_utc_milliseconds() -> None:
    for _ in range(50):
        now = utc_now()
        assert now.tzinfo is UTC and now.microsecond % 1000 == 0 and millis(now) == now


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
