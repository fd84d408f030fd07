"""Send pacing: a per-number rate limit, per-recipient pair pacing, and retry backoff.

Meta's limits (reference §8):

- **Throughput** per business number: 80 messages/s by default, up to 1,000 after an upgrade. Over it,
  sends fail with 130429.
- **Pair rate** per (business number, customer): 1 message per 6 s sustained; bursts of up to 45 in
  6 s are "borrowed" and must be paid back at the sustained rate. Over it, sends fail with 131056.

Both are enforced here with GCRA (a token bucket expressed as a "theoretical arrival time"): a send
reserves a slot *before* it sleeps, so concurrent senders on one event loop never race, and the
reservation itself is pure (``reserve(at)`` with an explicit time). The pair burst we allow
(``pair_burst``, default 10) keeps the borrowed time at most ``pair_burst * pair_interval`` (60 s),
far inside Meta's 45-message allowance, so a multi-bubble answer goes out at once and a chatty
conversation settles at one message per ``pair_interval``.

Backoff: :func:`backoff_delay` is capped exponential with full jitter for transient and throughput
errors; :func:`pair_backoff_delay` follows Meta's 131056 guidance (wait 4^X seconds, X = 0, 1, 2...).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

DEFAULT_RATE = 80.0
MAX_RATE = 1000.0
PAIR_INTERVAL = 6.0
PAIR_BURST = 10


@dataclass(slots=True)
class Gcra:
    """One generic cell-rate limiter: ``burst`` sends at once, then one per ``interval`` seconds."""

    interval: float
    burst: int = 1
    tat: float = 0.0  # theoretical arrival time of the next conforming send

    def reserve(self, at: float) -> float:
        """Reserve the earliest conforming slot at or after ``at`` and return its time."""
        tolerance = self.interval * (self.burst - 1)
        start = max(at, self.tat - tolerance)
        self.tat = max(self.tat, start) + self.interval
        return start

    def push_back(self, until: float) -> None:
        """No conforming slot before ``until`` (after a rate-limit error from Meta).

        The burst counts as spent: after ``until`` sends conform at one per ``interval`` again.
        """
        tolerance = self.interval * (self.burst - 1)
        self.tat = max(self.tat, until + tolerance)

    def idle(self, now: float) -> bool:
        """True when the limiter is back at its initial state (it can be forgotten)."""
        return self.tat <= now


@dataclass(slots=True)
class Pacer:
    """Per-number throughput limit plus per-(number, recipient) pair pacing.

    ``rate_per_second`` (up to 1000) with a burst of ``burst`` sends (default: a tenth of a second's
    worth, so no one-second window ever sees more than 1.1 x the rate) per
    business number; ``pair_interval`` seconds between messages to one customer after ``pair_burst``
    immediate ones. ``clock``/``sleep`` are injectable for tests.
    """

    rate_per_second: float = DEFAULT_RATE
    burst: int | None = None
    pair_interval: float = PAIR_INTERVAL
    pair_burst: int = PAIR_BURST
    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep
    _numbers: dict[str, Gcra] = field(init=False, default_factory=dict)
    _pairs: dict[tuple[str, str], Gcra] = field(init=False, default_factory=dict)
    _forgot_at: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if not 0 < self.rate_per_second <= MAX_RATE:
            raise ValueError(f"rate_per_second must be in (0, {MAX_RATE:g}], got {self.rate_per_second}")
        if self.pair_interval < 0 or self.pair_burst < 1:
            raise ValueError("pair_interval must be >= 0 and pair_burst >= 1")

    def reserve_pair(self, phone_number_id: str, recipient: str, now: float) -> float:
        """Reserve the customer's next slot; returns when it starts (clock units). Pure."""
        if self.pair_interval <= 0:
            return now
        start = self._pair(phone_number_id, recipient).reserve(now)
        if now - self._forgot_at >= self.pair_interval:
            # A pair goes idle pair_interval after its last send (more after a burst): sweeping once per
            # interval keeps about two intervals' worth of customers, at one pass per interval.
            self._forgot_at = now
            self.forget_idle(now)
        return start

    def reserve_number(self, phone_number_id: str, now: float) -> float:
        """Reserve the business number's next slot; returns when it starts (clock units). Pure."""
        return self._number(phone_number_id).reserve(now)

    async def acquire(self, phone_number_id: str, recipient: str | None = None) -> float:
        """Wait for the customer's slot, then for the number's slot; returns the total wait (s).

        The pair slot is reserved first (keeps per-customer order); the number slot is reserved only
        when the send is really about to happen, so a customer who must wait does not hold up others.
        """
        started = now = self.clock()
        waited = False
        if recipient is not None:
            start = self.reserve_pair(phone_number_id, recipient, started)
            if start > started:
                await self.sleep(start - started)
                now, waited = self.clock(), True
        start = self.reserve_number(phone_number_id, now)
        if start > now:
            await self.sleep(start - now)
            waited = True
        return max(0.0, self.clock() - started) if waited else 0.0

    def penalize_pair(self, phone_number_id: str, recipient: str, seconds: float, now: float) -> None:
        """After 131056: nothing more to this customer for ``seconds``; other customers keep flowing."""
        self._pair(phone_number_id, recipient).push_back(now + seconds)

    def penalize_number(self, phone_number_id: str, seconds: float, now: float) -> None:
        """After 130429: nothing more from this number for ``seconds``."""
        self._number(phone_number_id).push_back(now + seconds)

    def forget_idle(self, now: float) -> None:
        """Drop per-recipient state that has fully paid back its burst (bounded memory)."""
        for key in [k for k, g in self._pairs.items() if g.idle(now)]:
            del self._pairs[key]

    @property
    def tracked_pairs(self) -> int:
        return len(self._pairs)

    def _number(self, phone_number_id: str) -> Gcra:
        g = self._numbers.get(phone_number_id)
        if g is None:
            burst = self.burst if self.burst is not None else max(1, int(self.rate_per_second / 10))
            g = self._numbers[phone_number_id] = Gcra(1.0 / self.rate_per_second, burst)
        return g

    def _pair(self, phone_number_id: str, recipient: str) -> Gcra:
        key = (phone_number_id, recipient)
        g = self._pairs.get(key)
        if g is None:
            g = self._pairs[key] = Gcra(self.pair_interval, self.pair_burst)
        return g


def backoff_delay(attempt: int, base: float, cap: float = 30.0, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with full jitter: uniform(0.5, 1.0) x min(cap, base x 2^attempt).

    ``attempt`` counts from 0. Half of the delay is kept so retries never hammer immediately.
    """
    r = rng.random() if rng is not None else random.random()
    return float(min(cap, base * (2 ** max(0, attempt))) * (0.5 + r / 2))


def pair_backoff_delay(failures: int, unit: float = 1.0, rng: random.Random | None = None) -> float:
    """Meta's 131056 guidance: wait 4^X seconds (X = failures so far, from 0), plus up to 10 % jitter.

    ``unit`` scales the second (tests use a small unit).
    """
    r = rng.random() if rng is not None else random.random()
    return float(unit * (4 ** max(0, failures)) * (1.0 + r / 10))
