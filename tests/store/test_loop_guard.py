"""The suite-wide guard (``tests/conftest.py``) catches a blocking call in async code and names it."""

from __future__ import annotations

import asyncio
import os
import time

BLOCKING_SECONDS = float(os.environ.get("CONSENTBOT_TEST_BLOCKING_SECONDS", "0.25"))


async def test_a_blocking_call_in_a_coroutine_is_caught_and_named(blocked_loop_calls: list[str]) -> None:
    async def sleeps_the_wrong_way() -> None:
        time.sleep(BLOCKING_SECONDS + 0.1)  # what the guard exists to catch

    await asyncio.create_task(sleeps_the_wrong_way())
    caught = list(blocked_loop_calls)
    blocked_loop_calls.clear()  # accepted here: this test blocks on purpose
    assert len(caught) == 1 and "sleeps_the_wrong_way" in caught[0], caught


async def test_awaiting_does_not_count_as_blocking(blocked_loop_calls: list[str]) -> None:
    await asyncio.sleep(BLOCKING_SECONDS + 0.1)
    assert blocked_loop_calls == []


async def test_a_collector_pause_is_not_counted_but_blocking_after_it_is(blocked_loop_calls: list[str]) -> None:
    import gc

    async def collects_slowly() -> None:
        # A collection made longer than the limit (the guard's own hook runs first, timing it all).
        slow = lambda phase, info: time.sleep(BLOCKING_SECONDS + 0.1) if phase == "start" else None  # noqa: E731
        gc.callbacks.append(slow)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(slow)

    await asyncio.create_task(collects_slowly())
    assert blocked_loop_calls == []

    async def collects_then_blocks() -> None:
        gc.collect()
        time.sleep(BLOCKING_SECONDS + 0.1)

    await asyncio.create_task(collects_then_blocks())
    caught = list(blocked_loop_calls)
    blocked_loop_calls.clear()  # accepted here: this test blocks on purpose
    assert len(caught) == 1 and "collects_then_blocks" in caught[0], caught
