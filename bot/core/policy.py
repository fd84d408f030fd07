"""THE send gate: one pure decision every sender (flows, agents, campaigns) goes through.

:func:`decide_send` takes every fact it needs in a :class:`GateInput` and returns a :class:`Verdict`.
It is **fail-closed**: a fact that is missing or unknown blocks the message. The runtime gathers the
facts (consent cache, suppression entry, restriction, age-gate result, marketing count in the cap
period) just before the Graph API call and sends ``verdict.message`` only when ``verdict.allowed``.

Rules, checked in this order (the first that fails decides the reason):

1. the input is usable: a recipient, an aware ``now``, and a suppression answer (``suppression_unknown``);
2. nothing goes to a **suppressed** subject (erased / objected; any category) -> ``suppressed``;
3. nothing goes to a **restricted** subject (GDPR 18; any category) -> ``restricted``;
4. **marketing** needs: a purpose the project declares (``missing_purpose``, ``unknown_purpose``); a
   known age of at least the project's minimum (``age_unknown``, ``minor``); *current* consent for
   that purpose: granted (``no_consent``), not older than ``Retention.consent_refresh_days`` and given
   under the project's current *major* notice version (``consent_stale``); and fewer marketing messages
   in the cap period than ``Project.marketing_cap_per_week`` (``frequency_unknown``, ``frequency_cap``);
5. the **24-hour window**: a free-form message goes only while the window is open
   (``allowed_in_window``); outside it the message is rewritten to its approved ``fallback`` template
   (``allowed_fallback``); an approved template goes at any time (``allowed_template``); otherwise
   ``window_closed_no_template`` (``missing_template`` for a template message without its template).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from bot.core.conversation import Conversation, PurposeState, PurposeStatus
from bot.core.frozen import quick_init
from bot.core.messages import Category, Outbound, OutboundKind
from bot.core.project import Project

WINDOW_HOURS = 24
CAP_PERIOD = timedelta(days=7)


class Reason(StrEnum):
    """Stable machine-readable codes of a :class:`Verdict` (stored on blocked transcript entries,
    counted in metrics, shown to agents). Never rename a value; add new ones."""

    ALLOWED_IN_WINDOW = "allowed_in_window"  # free-form, the customer wrote < 24 h ago
    ALLOWED_TEMPLATE = "allowed_template"  # the message is an approved template
    ALLOWED_FALLBACK = "allowed_fallback"  # window closed: rewritten to its fallback template
    INVALID_INPUT = "invalid_input"  # no recipient, or a naive ``now``
    SUPPRESSION_UNKNOWN = "suppression_unknown"  # the suppression list was not consulted
    SUPPRESSED = "suppressed"  # the subject is on the suppression list (erasure, objection)
    RESTRICTED = "restricted"  # processing restricted (GDPR 18)
    MISSING_PURPOSE = "missing_purpose"  # a marketing message without a purpose
    UNKNOWN_PURPOSE = "unknown_purpose"  # a purpose the project does not declare
    AGE_UNKNOWN = "age_unknown"  # the age gate has not been passed
    MINOR = "minor"  # under the project's minimum age
    NO_CONSENT = "no_consent"  # consent for the purpose is not granted
    CONSENT_STALE = "consent_stale"  # older than the refresh period or another major notice version
    FREQUENCY_UNKNOWN = "frequency_unknown"  # the marketing count for the period is not known
    FREQUENCY_CAP = "frequency_cap"  # the per-subject marketing cap for the period is reached
    MISSING_TEMPLATE = "missing_template"  # a template message with no template reference
    WINDOW_CLOSED_NO_TEMPLATE = "window_closed_no_template"  # free-form outside the window, no fallback


ALLOWED_REASONS: frozenset[Reason] = frozenset(
    {Reason.ALLOWED_IN_WINDOW, Reason.ALLOWED_TEMPLATE, Reason.ALLOWED_FALLBACK}
)


@quick_init
@dataclass(frozen=True, slots=True)
class GateInput:
    """Every fact the gate needs about one message to one subject.

    ``consent`` is the per-purpose cache (``Conversation.consent``); ``window_opened_at`` the time of
    the customer's last message; ``restricted`` the GDPR 18 flag (the conversation's or the
    restriction store's, whichever is set). ``suppressed`` is the answer of the suppression list for
    the recipient (``None`` = not consulted: blocked). ``minor`` is the age-gate result (``None`` =
    unknown: marketing blocked). ``marketing_sent_in_period`` counts marketing messages accepted for
    the subject since :func:`cap_period_start` (``None`` = not counted: marketing blocked).
    """

    message: Outbound
    project: Project
    now: datetime
    suppressed: bool | None
    minor: bool | None
    marketing_sent_in_period: int | None
    consent: Mapping[str, PurposeStatus] = field(default_factory=dict)
    window_opened_at: datetime | None = None
    restricted: bool = False

    @classmethod
    def for_conversation(
        cls,
        message: Outbound,
        conversation: Conversation | None,
        project: Project,
        now: datetime,
        *,
        suppressed: bool | None,
        minor: bool | None,
        marketing_sent_in_period: int | None,
        restricted: bool = False,
    ) -> GateInput:
        """The usual construction: consent cache, window and restriction from the conversation head
        (``None`` = no conversation: no consent and a closed window). ``restricted`` adds to the
        conversation's own flag (e.g. from the restriction store)."""
        if conversation is None:
            return cls(message, project, now, suppressed, minor, marketing_sent_in_period, {}, None, restricted)
        return cls(
            message=message,
            project=project,
            now=now,
            suppressed=suppressed,
            minor=minor,
            marketing_sent_in_period=marketing_sent_in_period,
            consent=dict(conversation.consent),
            window_opened_at=conversation.window_opened_at,
            restricted=restricted or conversation.restricted,
        )


@quick_init
@dataclass(frozen=True, slots=True)
class Verdict:
    """The gate's answer. ``message`` is what to actually send: the original, or (outside the window)
    the original rewritten to its fallback template. ``detail`` is for people (logs, console), never
    parsed; ``reason`` is the stable code."""

    allowed: bool
    reason: Reason
    message: Outbound
    detail: str = ""


def cap_period_start(now: datetime) -> datetime:
    """Start of the marketing frequency-cap period ending at ``now`` (a rolling 7 days): the runtime
    passes it to ``Transcript.count_sent_since(subject, Category.MARKETING, since)``."""
    return now - CAP_PERIOD


def notice_major(version: str) -> str:
    """The major part of a notice version (``"3.1.0"`` -> ``"3"``; ``"v2"`` -> ``"v2"``); ``""`` if empty."""
    return version.strip().split(".", 1)[0].strip()


def under_current_notice(status: PurposeStatus, project: Project) -> bool:
    """Given under ``project``'s current major notice version (a missing version never is: fail-closed)."""
    given = notice_major(status.notice_version)
    return bool(given) and given == notice_major(project.notice_version)


def granted_under_earlier_notice(status: PurposeStatus, project: Project) -> bool:
    """GRANTED, but under an earlier (or unrecorded) major notice version: it needs a new confirmation."""
    return status.state is PurposeState.GRANTED and not under_current_notice(status, project)


def consent_problem(status: PurposeStatus | None, project: Project, now: datetime) -> tuple[Reason, str] | None:
    """Why consent recorded as ``status`` does not allow marketing at ``now`` (``None``: it does).

    Granted consent is *stale* when older than ``project.retention.consent_refresh_days`` or given
    under a different major notice version than ``project.notice_version`` (a missing version is
    treated as different: fail-closed)."""
    if status is None or status.state is not PurposeState.GRANTED:
        state = "never asked" if status is None else str(status.state)
        return Reason.NO_CONSENT, f"consent is {state}"
    if status.since.tzinfo is None:
        return Reason.INVALID_INPUT, "the consent time is not timezone-aware"
    refresh = timedelta(days=project.retention.consent_refresh_days)
    if now - status.since >= refresh:
        return (
            Reason.CONSENT_STALE,
            f"consent given {status.since.isoformat()} is older than {project.retention.consent_refresh_days} days",
        )
    if not under_current_notice(status, project):
        shown = status.notice_version or "an unrecorded version"
        return (
            Reason.CONSENT_STALE,
            f"consent given under notice {shown}; the current notice is {project.notice_version}",
        )
    return None


def _block(request: GateInput, reason: Reason, detail: str) -> Verdict:
    return Verdict(allowed=False, reason=reason, message=request.message, detail=detail)


def _marketing_problem(request: GateInput) -> tuple[Reason, str] | None:
    message, project = request.message, request.project
    purpose = message.purpose.strip()
    if not purpose:
        return Reason.MISSING_PURPOSE, "a marketing message must name its purpose"
    if project.purpose(purpose) is None:
        return Reason.UNKNOWN_PURPOSE, f"purpose {purpose!r} is not declared in the project"
    if request.minor is None:
        return Reason.AGE_UNKNOWN, "the age gate has not been passed"
    if request.minor:
        return Reason.MINOR, f"the subject is under {project.min_age}"
    problem = consent_problem(request.consent.get(purpose), project, request.now)
    if problem is not None:
        reason, detail = problem
        return reason, f"{purpose}: {detail}"
    sent = request.marketing_sent_in_period
    if sent is None:
        return Reason.FREQUENCY_UNKNOWN, "marketing messages in the cap period were not counted"
    if sent >= project.marketing_cap_per_week:
        return (
            Reason.FREQUENCY_CAP,
            f"{sent} marketing messages in 7 days (cap {project.marketing_cap_per_week})",
        )
    return None


def in_window(window_opened_at: datetime | None, now: datetime, hours: int = WINDOW_HOURS) -> bool:
    """True while the customer-service window is open (their last message less than ``hours`` ago)."""
    if window_opened_at is None or window_opened_at.tzinfo is None:
        return False  # unknown or unusable: closed (fail-closed)
    return (now - window_opened_at).total_seconds() < hours * 3600


def as_template(message: Outbound) -> Outbound:
    """``message`` rewritten to its fallback template (free-form parts dropped; category, purpose,
    recipient and reply context kept)."""
    return replace(
        message,
        kind=OutboundKind.TEMPLATE,
        template=message.fallback,
        fallback=None,
        body="",
        header="",
        footer="",
        buttons=(),
        list_button="",
        sections=(),
        reaction_to="",
        emoji="",
    )


def decide_send(request: GateInput) -> Verdict:
    """Decide whether ``request.message`` may be sent now, and in which form. Pure and total: it never
    raises for bad facts; it blocks (see the module docstring for the order of the rules)."""
    message, now = request.message, request.now
    if not message.to:
        return _block(request, Reason.INVALID_INPUT, "the message has no recipient")
    if now.tzinfo is None or now.utcoffset() is None:
        return _block(request, Reason.INVALID_INPUT, "now must be a timezone-aware datetime")
    if request.suppressed is None:
        return _block(request, Reason.SUPPRESSION_UNKNOWN, "the suppression list was not consulted")
    if request.suppressed:
        return _block(request, Reason.SUPPRESSED, "the subject is on the suppression list")
    if request.restricted:
        return _block(request, Reason.RESTRICTED, "processing is restricted for this subject")
    if message.category is Category.MARKETING:
        problem = _marketing_problem(request)
        if problem is not None:
            return _block(request, *problem)

    if message.kind is OutboundKind.TEMPLATE:
        if message.template is None:
            return _block(request, Reason.MISSING_TEMPLATE, "a template message has no template reference")
        return Verdict(True, Reason.ALLOWED_TEMPLATE, message, f"template {message.template.name}")
    if in_window(request.window_opened_at, now):
        return Verdict(True, Reason.ALLOWED_IN_WINDOW, message, "inside the 24-hour window")
    if message.fallback is not None:
        return Verdict(
            True,
            Reason.ALLOWED_FALLBACK,
            as_template(message),
            f"window closed: sent as template {message.fallback.name}",
        )
    return _block(
        request, Reason.WINDOW_CLOSED_NO_TEMPLATE, "the 24-hour window is closed and there is no fallback template"
    )
