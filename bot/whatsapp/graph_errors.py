"""Graph API error codes -> exception classes and retry classes: ONE table (:data:`TABLE`).

Branch on ``error.code`` only (Meta: not on subcode, HTTP status or title text). The same codes arrive
synchronously (HTTP error body) and asynchronously (``statuses[].errors[]`` of a ``failed`` status
webhook); :func:`from_response` and :func:`from_error_info` build the same exception for both.

Retry classes (reference §7.2):

========================  =====================================================================
``TRANSIENT``             retry soon with exponential backoff + jitter (R-fast)
``RATE_LIMITED``          throttled: slow down; ``retry_after`` is the suggested wait (R-slow /
                          R-user). 130429 and 131056 are retried by the client itself.
``PERMANENT``             do not retry as-is (fix the request / template / recipient).
                          :class:`AccountProblem` subclasses need an operator (P-ops): stop the
                          queue for that number and alert.
``CONSENT``               131050: the customer stopped marketing; record an opt-out, never retry
``WINDOW``                131047: the 24-hour window is closed; send an approved template instead
========================  =====================================================================

Unknown codes are permanent, unless the HTTP status is 5xx (then transient).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bot.core.messages import ErrorInfo
from bot.errors import ChannelError


class RetryClass(StrEnum):
    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    PERMANENT = "permanent"
    CONSENT = "consent"
    WINDOW = "window"


class GraphError(ChannelError):
    """The Graph API refused a request (or a sent message failed later, with the same codes).

    Keeps everything Meta said: ``code``, ``subcode``, ``fbtrace_id`` (quote it in support tickets),
    ``message``, ``details`` (``error_data.details``, the most specific cause), ``http_status`` (0 for an
    async failure). ``retry`` is the retry class; ``retry_after`` a suggested wait in seconds (or None);
    ``max_retries`` caps in-call retries for codes Meta says to retry only a few times.
    """

    retry: RetryClass = RetryClass.PERMANENT
    retry_after: float | None = None
    max_retries: int | None = None
    operator_action: bool = False

    def __init__(
        self,
        code: int,
        message: str = "",
        *,
        subcode: int | None = None,
        fbtrace_id: str = "",
        details: str = "",
        http_status: int = 0,
        title: str = "",
    ) -> None:
        self.code = code
        self.subcode = subcode
        self.fbtrace_id = fbtrace_id
        self.message = message
        self.details = details
        self.http_status = http_status
        self.title = title
        text = f"Graph API error {code}"
        if message:
            text += f": {message}"
        if details and details != message:
            text += f" ({details})"
        if fbtrace_id:
            text += f" [fbtrace_id {fbtrace_id}]"
        super().__init__(text)


class TransientGraphError(GraphError):
    retry = RetryClass.TRANSIENT


class RateLimited(GraphError):
    retry = RetryClass.RATE_LIMITED


class ThroughputExceeded(RateLimited):
    """130429: the number's messages-per-second limit; the client slows the number and retries."""

    retry_after = 1.0


class PairRateLimited(RateLimited):
    """131056: too many messages to this one customer; pause that customer only (wait 4^X s)."""

    retry_after = 1.0


class AppRateLimited(RateLimited):
    """4 / 80007: app or WABA call-rate limit (management endpoints mostly); retry next hour."""

    retry_after = 3600.0


class SpamRateLimited(RateLimited):
    """131048: too many messages blocked or reported; throttle hard and check quality."""

    retry_after = 3600.0


class MarketingCapReached(RateLimited):
    """131049: per-user marketing cap (and all marketing to +1 numbers); do not resend for >= 24 h."""

    retry_after = 86400.0


class MaintenanceMode(RateLimited):
    """131057: the account is in maintenance (e.g. throughput upgrade); retry after about a minute."""

    retry_after = 60.0


class FlowThrottled(RateLimited):
    """132069: a WhatsApp Flow was sent too often (10 per hour)."""

    retry_after = 3600.0


class PermanentGraphError(GraphError):
    retry = RetryClass.PERMANENT


class InvalidRequest(PermanentGraphError):
    """100 / 131008 / 131009 / 131021 / 131051 / 131053 / 135000: a bug or a bad value in the request."""


class TemplateProblem(PermanentGraphError):
    """132000-series: template missing, not approved, parameter mismatch, paused or disabled."""


class Undeliverable(PermanentGraphError):
    """131026 and friends: this recipient cannot be reached on WhatsApp from this business now."""


class AccountProblem(PermanentGraphError):
    """An operator must fix the account, number, token or billing: stop the queue and alert."""

    operator_action = True


class AuthError(AccountProblem):
    """0 / 190: the access token expired or is invalid."""


class ConsentRefused(GraphError):
    """131050: the customer stopped marketing messages from this business in WhatsApp."""

    retry = RetryClass.CONSENT


class WindowClosed(GraphError):
    """131047: more than 24 hours since the customer last wrote; only templates can be sent."""

    retry = RetryClass.WINDOW


class OutcomeUnknown(ChannelError):
    """The request may or may not have been accepted (timeout or disconnect after it was sent).

    Meta documents no idempotency key, so a blind resend can deliver the message twice. The client
    does not resend; the caller decides (e.g. wait for a status webhook carrying the send's
    ``biz_opaque_callback_data`` before trying again).
    """

    def __init__(self, phone_number_id: str, reason: str, callback_data: str | None = None) -> None:
        super().__init__(f"send from {phone_number_id}: outcome unknown ({reason}); not resent")
        self.phone_number_id = phone_number_id
        self.reason = reason
        self.callback_data = callback_data


class NetworkError(TransientGraphError):
    """The request never reached Meta (connection refused / connect timeout): safe to resend."""

    def __init__(self, reason: str) -> None:
        super().__init__(-1, f"network: {reason}")


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the table: codes -> exception class (+ in-call attempt cap)."""

    codes: frozenset[int]
    error: type[GraphError]
    max_retries: int | None = None
    meaning: str = ""


def _codes(*items: int | range) -> frozenset[int]:
    out: set[int] = set()
    for item in items:
        out.update(item if isinstance(item, range) else (item,))
    return frozenset(out)


TABLE: tuple[Rule, ...] = (
    Rule(_codes(1, 131000), TransientGraphError, 3, "unknown / possible server error (at most 3 retries)"),
    Rule(_codes(2, 131016), TransientGraphError, None, "temporary downtime or overload"),
    Rule(_codes(130429), ThroughputExceeded, None, "number throughput (mps) reached"),
    Rule(_codes(131056), PairRateLimited, None, "pair rate limit (same customer, short time)"),
    Rule(_codes(4, 80007), AppRateLimited, None, "app / WABA call-rate limit"),
    Rule(_codes(131048), SpamRateLimited, None, "spam rate limit"),
    Rule(_codes(131049), MarketingCapReached, None, "per-user marketing cap"),
    Rule(_codes(131057), MaintenanceMode, None, "account in maintenance mode"),
    Rule(_codes(132069), FlowThrottled, None, "flow throttled"),
    Rule(_codes(131050), ConsentRefused, None, "customer stopped marketing messages"),
    Rule(_codes(131047), WindowClosed, None, "24-hour customer service window closed"),
    Rule(_codes(0, 190), AuthError, None, "access token expired or invalid"),
    Rule(
        _codes(3, 10, 33, range(200, 300), 368, 131005, 131031, 131037, 131042, 131045, 131063, 131064,
               133010, 133016),
        AccountProblem, None, "permission, account, number, billing or registration problem",
    ),
    Rule(_codes(100, 131008, 131009, 131021, 131051, 131053, 135000), InvalidRequest, None, "invalid request"),
    Rule(_codes(range(132000, 132017), 132068), TemplateProblem, None, "template problem"),
    Rule(_codes(131026, 130403, 130497, 130472, 131030, 131062, 131052), Undeliverable, None,
         "recipient cannot be reached"),
)

_BY_CODE: dict[int, Rule] = {code: rule for rule in TABLE for code in rule.codes}


def rule_for(code: int) -> Rule | None:
    """The table row for ``code`` (None for an unknown code)."""
    return _BY_CODE.get(code)


def error_class(code: int, http_status: int = 0) -> type[GraphError]:
    """The exception class for ``code``; unknown codes are permanent unless the HTTP status is 5xx."""
    rule = _BY_CODE.get(code)
    if rule is not None:
        return rule.error
    return TransientGraphError if http_status >= 500 else PermanentGraphError


def classify(code: int, http_status: int = 0) -> RetryClass:
    """The retry class of ``code`` (use it for ``failed`` status webhooks too)."""
    return error_class(code, http_status).retry


def build(
    code: int,
    message: str = "",
    *,
    subcode: int | None = None,
    fbtrace_id: str = "",
    details: str = "",
    http_status: int = 0,
    title: str = "",
) -> GraphError:
    """Instantiate the right exception for ``code`` and set its attempt cap from the table."""
    cls = error_class(code, http_status)
    err = cls(code, message, subcode=subcode, fbtrace_id=fbtrace_id, details=details,
              http_status=http_status, title=title)
    rule = _BY_CODE.get(code)
    if rule is not None and rule.max_retries is not None:
        err.max_retries = rule.max_retries
    return err


def from_response(http_status: int, body: object) -> GraphError:
    """The exception for a non-2xx Graph response (``body`` is the decoded JSON, or None)."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        cls: type[GraphError] = TransientGraphError if http_status >= 500 or http_status == 429 else (
            PermanentGraphError
        )
        return cls(-http_status, f"HTTP {http_status} without a Graph error body", http_status=http_status)
    code = _int(error.get("code"))
    if code is None:
        code = -http_status
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, Mapping) else data
    err = build(
        code,
        _text(error.get("message")),
        subcode=_int(error.get("error_subcode")),
        fbtrace_id=_text(error.get("fbtrace_id")),
        details=details if isinstance(details, str) else "",
        http_status=http_status,
        title=_text(error.get("error_user_title")),
    )
    if code not in _BY_CODE and error.get("is_transient") is True and err.retry is RetryClass.PERMANENT:
        err = TransientGraphError(code, err.message, subcode=err.subcode, fbtrace_id=err.fbtrace_id,
                                  details=err.details, http_status=http_status)
    return err


def from_error_info(info: ErrorInfo) -> GraphError:
    """The exception for an async error (``statuses[].errors[]`` of a ``failed`` status)."""
    return build(info.code, info.message or info.title, details=info.details, title=info.title)


def _int(raw: object) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        return int(raw.strip())
    return None


def _text(raw: Any) -> str:
    return raw if isinstance(raw, str) else ""
