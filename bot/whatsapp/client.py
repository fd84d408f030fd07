"""The Graph API client: send messages and read receipts, paced, with classified errors and retries.

One :class:`aiohttp.ClientSession` per process, owned by the caller and shared by every client (see
:func:`make_session` for a sized connector). A send:

1. builds the body with :func:`bot.whatsapp.outgoing.message_payload` (limits checked before any I/O);
2. waits for the customer's pair slot and the number's throughput slot (:class:`~bot.whatsapp.pacing.Pacer`);
3. POSTs ``{base_url}/{api_version}/{phone_number_id}/messages`` with the bearer token;
4. on an error, maps the code through :mod:`bot.whatsapp.graph_errors` and retries in-call only:
   transient errors (exponential backoff + jitter, at most ``max_retries``; codes 1/131000 at most 3),
   130429 (the whole number slows down, with backoff) and 131056 (only that customer pauses, 4^X s as
   Meta suggests, while waits stay under ``max_pair_wait``). Everything else is raised at once.

**Timeouts are not retried for sends.** A read timeout or a dropped connection after the request was
written may mean Meta accepted the message; with no idempotency key a resend can deliver it twice, so
the client raises :class:`~bot.whatsapp.graph_errors.OutcomeUnknown`. A connect failure (nothing was
sent) is a :class:`~bot.whatsapp.graph_errors.NetworkError` and is retried. Mark-as-read is idempotent,
so its timeouts are retried like transient errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.core.frozen import quick_init
from bot.core.messages import Outbound
from bot.whatsapp import graph_errors
from bot.whatsapp.graph_errors import (
    GraphError,
    NetworkError,
    OutcomeUnknown,
    PairRateLimited,
    RetryClass,
    ThroughputExceeded,
)
from bot.whatsapp.outgoing import mark_read_body, message_payload
from bot.whatsapp.pacing import PAIR_BURST, PAIR_INTERVAL, Clock, Pacer, Sleep, backoff_delay, pair_backoff_delay

log = logging.getLogger("bot.whatsapp.client")


@quick_init
@dataclass(frozen=True, slots=True)
class SendResult:
    """Meta accepted the message (not: delivered). ``wamid`` is what status webhooks will reference."""

    wamid: str
    wa_id: str
    message_status: str | None = None  # accepted / held_for_quality_assessment / paused (templates)
    input: str = ""
    attempts: int = 1


@dataclass(slots=True)
class ClientStats:
    """Counters for /metrics."""

    requests: int = 0
    sent: int = 0
    retries: int = 0
    failures: int = 0
    outcome_unknown: int = 0
    paced_seconds: float = 0.0


def make_session(limit: int = 100, *, keepalive_timeout: float = 30.0) -> aiohttp.ClientSession:
    """A ClientSession with a sized connector for the Graph API (call inside the running loop).

    ``limit`` bounds concurrent connections (default 100: enough for 80 msg/s at ~1 s latency); keep-alive
    connections and a DNS cache avoid a TLS handshake per message. Close it on shutdown.
    """
    connector = aiohttp.TCPConnector(
        limit=limit, limit_per_host=limit, ttl_dns_cache=300, keepalive_timeout=keepalive_timeout
    )
    # The Graph API sets no cookie the client needs: no cookie jar to look up on every request.
    return aiohttp.ClientSession(connector=connector, raise_for_status=False, cookie_jar=aiohttp.DummyCookieJar())


class GraphClient:
    """Sends through the WhatsApp Cloud API. Safe to share by every task in the process."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_version: str,
        access_token: str,
        rate_per_second: float = 80,
        burst: int | None = None,
        pair_interval: float = PAIR_INTERVAL,
        pair_burst: int = PAIR_BURST,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        pair_backoff_unit: float = 1.0,
        max_pair_wait: float = 60.0,
        timeout: float = 10,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._version = api_version.strip("/")
        self._headers = {"Authorization": f"Bearer {access_token}", "Content-Type": "application/json"}
        self._clock: Clock = clock or time.monotonic
        self._sleep: Sleep = sleep or asyncio.sleep
        self.pacer = Pacer(
            rate_per_second=rate_per_second,
            burst=burst,
            pair_interval=pair_interval,
            pair_burst=pair_burst,
            clock=self._clock,
            sleep=self._sleep,
        )
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.pair_backoff_unit = pair_backoff_unit
        self.max_pair_wait = max_pair_wait
        # A whole request (a small body each way) is bounded by ``timeout``; connecting has its own bound
        # so a refused or unreachable connection is told apart (nothing was sent). No per-read timer:
        # re-arming it on every chunk cost more than the rest of the client's own work.
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=timeout, sock_connect=timeout)
        self._rng = rng or random.Random()
        self._urls: dict[str, str] = {}
        self.stats = ClientStats()

    def url(self, phone_number_id: str) -> str:
        url = self._urls.get(phone_number_id)
        if url is None:
            url = self._urls[phone_number_id] = f"{self._base}/{self._version}/{phone_number_id}/messages"
        return url

    async def send(self, phone_number_id: str, message: Outbound, *, callback_data: str | None = None) -> SendResult:
        """Send ``message`` from ``phone_number_id`` to ``message.to``.

        Raises :class:`~bot.errors.LimitError` (nothing sent), a :class:`GraphError` subclass (see
        :mod:`bot.whatsapp.graph_errors`) once retries are exhausted or for a non-retryable code, or
        :class:`OutcomeUnknown` (never resent automatically).
        """
        payload = message_payload(message, message.to, callback_data=callback_data)
        url = self.url(phone_number_id)
        attempt = 0
        pair_failures = 0
        while True:
            self.stats.paced_seconds += await self.pacer.acquire(phone_number_id, message.to)
            try:
                data = await self._post(url, payload, phone_number_id, callback_data=callback_data)
            except GraphError as err:
                delay = self._retry_delay(err, attempt, pair_failures)
                if delay is None:
                    self.stats.failures += 1
                    raise
                attempt += 1
                self.stats.retries += 1
                log.info("graph send retry %d after code %s in %.2fs", attempt, err.code, delay)
                now = self._clock()
                if isinstance(err, PairRateLimited):
                    pair_failures += 1
                    self.pacer.penalize_pair(phone_number_id, message.to, delay, now)
                elif isinstance(err, ThroughputExceeded):
                    self.pacer.penalize_number(phone_number_id, delay, now)
                else:
                    await self._sleep(delay)
                continue
            except OutcomeUnknown:
                self.stats.outcome_unknown += 1
                raise
            self.stats.sent += 1
            return _send_result(data, phone_number_id, callback_data, attempt + 1)

    async def mark_read(self, phone_number_id: str, wamid: str, typing: bool = False) -> None:
        """Mark an inbound message read (blue ticks); ``typing`` also shows "typing…" until we reply.

        Paced by the number's throughput limit only. Idempotent, so timeouts are retried too.
        """
        payload = json.dumps(mark_read_body(wamid, typing)).encode("utf-8")
        url = self.url(phone_number_id)
        attempt = 0
        while True:
            await self.pacer.acquire(phone_number_id, None)
            try:
                await self._post(url, payload, phone_number_id)
                return
            except OutcomeUnknown as exc:
                err: GraphError = NetworkError(exc.reason)
            except GraphError as exc:
                err = exc
            delay = self._retry_delay(err, attempt, 0)
            if delay is None or isinstance(err, PairRateLimited):
                self.stats.failures += 1
                raise err
            attempt += 1
            self.stats.retries += 1
            await self._sleep(delay)

    def _retry_delay(self, err: GraphError, attempt: int, pair_failures: int) -> float | None:
        """Seconds to wait before retrying ``err`` in-call, or None to raise it now."""
        cap = self.max_retries if err.max_retries is None else min(self.max_retries, err.max_retries)
        if attempt >= cap:
            return None
        if isinstance(err, PairRateLimited):
            delay = pair_backoff_delay(pair_failures, self.pair_backoff_unit, self._rng)
            if delay > self.max_pair_wait:
                err.retry_after = delay
                return None
            return delay
        if err.retry is RetryClass.TRANSIENT or isinstance(err, ThroughputExceeded):
            return backoff_delay(attempt, self.backoff_base, self.backoff_cap, self._rng)
        return None

    async def _post(
        self, url: str, payload: bytes, phone_number_id: str, *, callback_data: str | None = None
    ) -> dict[str, Any]:
        self.stats.requests += 1
        try:
            async with self._session.post(url, data=payload, headers=self._headers, timeout=self._timeout) as resp:
                status = resp.status
                raw = await resp.read()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise NetworkError(type(exc).__name__) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            # the request was (or may have been) written: Meta may have accepted it
            raise OutcomeUnknown(phone_number_id, type(exc).__name__, callback_data) from exc
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status != 200:
            raise graph_errors.from_response(status, data)
        if not isinstance(data, dict):
            raise OutcomeUnknown(phone_number_id, "HTTP 200 without a JSON object", callback_data)
        return data


def _send_result(data: dict[str, Any], phone_number_id: str, callback_data: str | None, attempts: int) -> SendResult:
    wamid = ""
    status: str | None = None
    for m in data.get("messages") or ():
        if isinstance(m, dict) and isinstance(m.get("id"), str):
            wamid = m["id"]
            ms = m.get("message_status")
            status = ms if isinstance(ms, str) else None
            break
    if not wamid:
        raise OutcomeUnknown(phone_number_id, "HTTP 200 without a message id", callback_data)
    wa_id = ""
    given = ""
    for c in data.get("contacts") or ():
        if isinstance(c, dict):
            wa_id = str(c.get("wa_id") or "")
            given = str(c.get("input") or "")
            break
    return SendResult(wamid=wamid, wa_id=wa_id, message_status=status, input=given, attempts=attempts)
