"""Pacing with an injected clock: number throughput, pair pacing, penalties, backoff."""

from __future__ import annotations

import random

import pytest

from bot.whatsapp.pacing import Gcra, Pacer, backoff_delay, pair_backoff_delay


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_gcra_burst_then_interval() -> None:
    g = Gcra(interval=6.0, burst=3)
    assert [g.reserve(0.0) for _ in range(5)] == [0.0, 0.0, 0.0, 6.0, 12.0]
    assert g.reserve(100.0) == 100.0  # debt paid back
    assert g.idle(200.0) and not g.idle(100.0)


def test_pair_defaults_let_a_multi_bubble_answer_through_and_cap_debt() -> None:
    p = Pacer()
    starts = [p.reserve_pair("n", "c", 0.0) for _ in range(12)]
    assert starts[:10] == [0.0] * 10  # ten bubbles at once
    assert starts[10] == 6.0 and starts[11] == 12.0  # then one per 6 s, as Meta's sustained rate
    # borrowed time never exceeds 10 x 6 s = 60 s, far below Meta's 45-message allowance (270 s)
    assert p._pairs[("n", "c")].tat - 12.0 <= 60.0


async def test_acquire_waits_for_pair_then_number() -> None:
    t = FakeTime()
    p = Pacer(rate_per_second=10, burst=1, pair_interval=1.0, pair_burst=1, clock=t.clock, sleep=t.sleep)
    waits = [await p.acquire("n", "c") for _ in range(3)]
    assert waits == [0.0, 1.0, 1.0]
    other = await p.acquire("n", "d")  # another customer: only the number's 10/s applies
    assert other == pytest.approx(0.1)


async def test_number_rate_spreads_many_customers() -> None:
    t = FakeTime()
    p = Pacer(rate_per_second=80, burst=8, clock=t.clock, sleep=t.sleep)
    for i in range(88):
        await p.acquire("n", f"c{i}")
    assert t.now == pytest.approx(80 / 80, rel=0.01)  # 8 free, then 80 more at 80/s


def test_penalties_are_scoped() -> None:
    p = Pacer(pair_interval=1.0, pair_burst=5)
    p.penalize_pair("n", "c", 16.0, now=0.0)
    assert p.reserve_pair("n", "c", 0.0) == 16.0
    assert p.reserve_pair("n", "d", 0.0) == 0.0
    assert p.reserve_pair("n2", "c", 0.0) == 0.0
    p.penalize_number("n", 2.0, now=0.0)
    assert p.reserve_number("n", 0.0) == pytest.approx(2.0)
    assert p.reserve_number("n2", 0.0) == 0.0


def test_idle_customers_are_forgotten() -> None:
    p = Pacer(pair_interval=1.0, pair_burst=1)
    for i in range(100):
        p.reserve_pair("n", f"c{i}", 0.0)
    assert p.tracked_pairs == 100
    p.forget_idle(now=5.0)
    assert p.tracked_pairs == 0


def test_reserving_sweeps_idle_customers_once_per_interval() -> None:
    p = Pacer(pair_interval=1.0, pair_burst=1)
    for i in range(100):
        p.reserve_pair("n", f"c{i}", 0.5)
    assert p.tracked_pairs == 100  # none idle yet, and no sweep within the first interval
    p.reserve_pair("n", "late", 1.2)  # one interval on: the sweep runs, nobody idle before 1.5
    assert p.tracked_pairs == 101
    p.reserve_pair("n", "later", 1.9)  # within the interval since the last sweep: no sweep
    assert p.tracked_pairs == 102
    p.reserve_pair("n", "last", 2.3)  # the first 100 went idle at 1.5, "late" at 2.2
    assert p.tracked_pairs == 2  # "later" (idle at 2.9) and "last" remain


def test_rate_bounds() -> None:
    Pacer(rate_per_second=1000)
    with pytest.raises(ValueError, match="rate_per_second"):
        Pacer(rate_per_second=1001)
    with pytest.raises(ValueError, match="rate_per_second"):
        Pacer(rate_per_second=0)


def test_backoff() -> None:
    rng = random.Random(7)
    for attempt in range(8):
        d = backoff_delay(attempt, base=0.5, cap=30.0, rng=rng)
        ceiling = min(30.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= d <= ceiling
    for x in range(5):  # Meta's 131056 guidance: 4^X seconds, plus at most 10 % jitter
        assert 4**x <= pair_backoff_delay(x, 1.0, rng) <= 4**x * 1.1
    assert pair_backoff_delay(2, 0.01, rng) <= 0.16 * 1.1
