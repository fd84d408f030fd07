"""What the console shows, computed from store values (no I/O here): masked numbers, the merged
timeline of one conversation, the consent panel, open data-subject requests with their deadlines,
the opt-in funnel and its SVG bars.

Everything returned is plain data for the Jinja templates, which escape every value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bot.core.consent import ConsentRecord
from bot.core.conversation import Conversation
from bot.core.messages import DeliveryStatus, Inbound, InboundKind, Outbound, OutboundKind
from bot.core.proof import ChainCheck, normalise_number, summarise
from bot.store.base import OutState, StepRecord, TranscriptEntry
from bot.store.privacy import DataRequest

DOT = "\u2022"
_PHONEISH = re.compile(r"^\+?[\d\s().-]{4,}$")

GATE_REASONS: dict[str, str] = {
    "allowed_in_window": "allowed: the customer wrote in the last 24 hours",
    "allowed_template": "allowed: approved template",
    "allowed_fallback": "allowed: window closed, sent as its approved template",
    "invalid_input": "no recipient or no valid time",
    "suppression_unknown": "the suppression list could not be checked",
    "suppressed": "the customer is on the suppression list (erased or objected)",
    "restricted": "processing is restricted for this customer (GDPR 18)",
    "missing_purpose": "a marketing message without a purpose",
    "unknown_purpose": "a purpose the project does not declare",
    "age_unknown": "the customer has not passed the age check",
    "minor": "the customer is under the minimum age",
    "no_consent": "no consent for this purpose",
    "consent_stale": "consent is too old or was given under an earlier notice",
    "frequency_unknown": "the weekly marketing count is unknown",
    "frequency_cap": "the weekly marketing limit for this customer is reached",
    "missing_template": "a template message without its template",
    "window_closed_no_template": (
        "the 24-hour window is closed: only an approved template can be sent until the customer writes again"
    ),
}


def describe_reason(code: str) -> str:
    """A sentence for a gate or failure reason code (the code itself when unknown)."""
    return GATE_REASONS.get(code, code)


# --- numbers -------------------------------------------------------------------------------------
def mask_number(digits: str | None) -> str:
    """``34600000012`` -> ``+34 6•• ••• •12``: the country code, the first and the last two digits.
    Anything that is not a phone number (a business-scoped user id) is returned as it is."""
    if not digits:
        return ""
    raw = re.sub(r"\D", "", digits)
    if not raw.isdigit() or len(raw) < 7 or not _PHONEISH.match(digits):
        return digits
    country, national = raw[:2], raw[2:]
    hidden = national[0] + DOT * (len(national) - 3) + national[-2:]
    groups = [hidden[i : i + 3] for i in range(0, len(hidden), 3)]
    return f"+{country} " + " ".join(groups)


def format_number(digits: str | None) -> str:
    """``34600000012`` -> ``+34 600 000 012`` (the revealed form)."""
    if not digits:
        return ""
    raw = re.sub(r"\D", "", digits)
    if len(raw) < 7 or not _PHONEISH.match(digits):
        return digits
    national = raw[2:]
    return f"+{raw[:2]} " + " ".join(national[i : i + 3] for i in range(0, len(national), 3))


def search_text(q: str) -> str:
    """What the list searches for: a typed phone number (``+34 600 00``) becomes its digits, names
    and user ids are kept as typed."""
    q = q.strip()[:100]
    if _PHONEISH.match(q) and sum(c.isdigit() for c in q) >= 3:
        return re.sub(r"\D", "", q)
    return q


def customer_label(conversation: Conversation, revealed: bool = False) -> str:
    number = conversation.wa_id or (conversation.subject if conversation.subject.isdigit() else "")
    if number:
        return format_number(number) if revealed else mask_number(number)
    return conversation.subject


# --- timeline ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TimelineItem:
    """One row of the transcript timeline. ``kind``: ``in``, ``out``, ``state``, ``consent``, ``note``.
    ``signature`` changes whenever the row must be redrawn (live updates)."""

    id: str
    at: datetime
    kind: str
    rank: int
    title: str
    body: str = ""
    meta: tuple[str, ...] = ()
    ticks: str = ""  # "", "pending", "sent", "delivered", "read", "failed", "blocked"
    tone: str = ""  # "", "ok", "warn", "bad"
    who: str = ""
    detail: str = ""
    signature: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


def _inbound_text(msg: Inbound) -> tuple[str, str]:
    kind = msg.kind
    if kind is InboundKind.TEXT:
        return "Message", msg.text or ""
    if kind in {InboundKind.BUTTON_REPLY, InboundKind.LIST_REPLY, InboundKind.TEMPLATE_BUTTON}:
        return "Tapped", (msg.text or msg.payload or "") + (f"  [{msg.payload}]" if msg.payload else "")
    if kind is InboundKind.REACTION:
        return "Reaction", str(msg.data.get("emoji", "")) or "(removed)"
    if kind is InboundKind.LOCATION:
        return "Location", str(msg.data.get("name") or msg.data.get("address") or "")
    if msg.text:
        return str(kind).replace("_", " ").capitalize(), msg.text
    return str(kind).replace("_", " ").capitalize(), ""


def _outbound_text(msg: Outbound) -> str:
    if msg.kind is OutboundKind.TEMPLATE and msg.template is not None:
        return f"Template {msg.template.name} ({msg.template.language})"
    parts = [p for p in (msg.header, msg.body, msg.footer) if p]
    text = "\n".join(parts)
    if msg.buttons:
        text += "\n" + " | ".join(f"[{b.title}]" for b in msg.buttons)
    if msg.sections:
        rows = [r.title for s in msg.sections for r in s.rows]
        text += f"\n[{msg.list_button or 'Menu'}: " + ", ".join(rows) + "]"
    if msg.kind is OutboundKind.REACTION:
        text = f"Reaction {msg.emoji}"
    return text


def _ticks(entry: TranscriptEntry) -> tuple[str, str]:
    """(ticks, tone) of an outbound entry."""
    state = entry.out_state
    if state is OutState.BLOCKED:
        return "blocked", "bad"
    if state is OutState.FAILED or entry.delivery is DeliveryStatus.FAILED:
        return "failed", "bad"
    if state in {OutState.PENDING, OutState.SENDING, None}:
        return "pending", "warn" if entry.error is not None else ""
    delivery = entry.delivery
    if delivery in {DeliveryStatus.READ, DeliveryStatus.PLAYED}:
        return "read", "ok"
    if delivery is DeliveryStatus.DELIVERED:
        return "delivered", "ok"
    if delivery is DeliveryStatus.SENT:
        return "sent", ""
    return "accepted", ""


def entry_item(entry: TranscriptEntry) -> TimelineItem:
    if entry.direction == "in" and entry.inbound is not None:
        title, body = _inbound_text(entry.inbound)
        return TimelineItem(
            id=f"t-{entry.id}", at=entry.at, kind="in", rank=0, title=title, body=body,
            meta=("forwarded",) if entry.inbound.forwarded else (),
            who="customer", signature="in",
        )
    msg = entry.outbound
    ticks, tone = _ticks(entry)
    meta: list[str] = []
    if msg is not None:
        meta.append(str(msg.category))
        if msg.purpose:
            meta.append(f"purpose {msg.purpose}")
        if msg.template_id:
            meta.append(msg.template_id)
        if entry.reason == "allowed_fallback" and msg.fallback is not None:
            meta.append(f"sent as approved template {msg.fallback.name}")  # the window had closed
    detail = ""
    if ticks == "blocked":
        detail = f"Blocked by the send gate: {describe_reason(entry.reason)} ({entry.reason})"
    elif entry.error is not None:
        detail = f"Error {entry.error.code}: {entry.error.title or entry.error.message}"
        if entry.out_state is OutState.PENDING:
            detail += " (will retry)"
    who = entry.sent_by or "flow"
    return TimelineItem(
        id=f"t-{entry.id}",
        at=entry.at,
        kind="out",
        rank=3,
        title="Agent reply" if who.startswith("agent:") else ("Campaign" if who.startswith("broadcast:") else "Bot"),
        body=_outbound_text(msg) if msg is not None else "",
        meta=tuple(meta),
        ticks=ticks,
        tone=tone,
        who=who,
        detail=detail,
        signature=f"{entry.out_state}|{entry.delivery}|{entry.reason}|{entry.error is not None}",
    )


def step_item(record: StepRecord) -> TimelineItem | None:
    """A state change or an agent action (None for a step that changed nothing worth showing)."""
    moves = [t for t in record.transitions if t.source != t.dest]
    if not moves and not record.notes:
        return None
    if moves:
        title = " \u2192 ".join([moves[0].source, *[t.dest for t in moves]])
        body = ", ".join(t.trigger for t in moves)
    else:
        title = "; ".join(record.notes)
        body = ""
    who = f"agent:{record.cause_id}" if record.cause == "agent" else record.cause
    meta = (f"step {record.seq}", f"cause {record.cause}", *(record.notes if moves else ()))
    return TimelineItem(
        id=f"s-{record.seq}", at=record.at, kind="state" if moves else "note", rank=1, title=title, body=body,
        meta=meta, who=who, signature="s",
    )


def consent_item(record: ConsentRecord) -> TimelineItem:
    e = record.event
    tone = {"confirmed": "ok", "refreshed": "ok", "withdrawn": "bad", "declined": "warn", "expired": "warn"}.get(
        str(e.action), ""
    )
    meta = tuple(
        m
        for m in (
            f"#{record.seq}",
            f"by {e.actor}",
            f"via {e.method}" if e.method else "",
            f"notice {e.notice_version}" if e.notice_version else "",
            f"hash {record.hash[:12]}",
        )
        if m
    )
    return TimelineItem(
        id=f"c-{record.seq}", at=e.at, kind="consent", rank=2, title=f"Consent {e.action}: {e.purpose}",
        meta=meta, tone=tone, who=str(e.actor), signature="c",
    )


def timeline(
    entries: Iterable[TranscriptEntry], steps: Iterable[StepRecord], consent: Iterable[ConsentRecord]
) -> list[TimelineItem]:
    """Messages in and out, state changes and consent events on one time line (oldest first; within
    one instant: the customer's message, the state change, the consent event, then the answer)."""
    items: list[TimelineItem] = [entry_item(e) for e in entries]
    items += [i for i in (step_item(s) for s in steps) if i is not None]
    items += [consent_item(r) for r in consent]
    items.sort(key=lambda i: (i.at, i.rank))
    return items


# --- consent panel -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PurposeRow:
    purpose: str
    title: str
    state: str  # from the ledger (the truth)
    cached: str  # as cached on the conversation (what the gate reads)
    since: datetime | None
    proof: str  # the confirming tap's message id, when granted
    agrees: bool


def consent_rows(
    purposes: Sequence[tuple[str, str]], records: Sequence[ConsentRecord], conversation: Conversation
) -> list[PurposeRow]:
    """One row per project purpose (plus any purpose only the ledger knows)."""
    summaries = summarise(records)
    known = [p for p, _ in purposes]
    titles = dict(purposes)
    rows: list[PurposeRow] = []
    for purpose in known + sorted(set(summaries) - set(known)):
        s = summaries.get(purpose)
        cached = conversation.consent.get(purpose)
        state = s.state if s is not None else "none"
        cached_state = str(cached.state) if cached is not None else "none"
        proof = ""
        if s is not None and s.granted_by is not None:
            proof = str((s.granted_by.event.evidence or {}).get("message_id", ""))
        rows.append(
            PurposeRow(
                purpose=purpose,
                title=titles.get(purpose, purpose),
                state=state,
                cached=cached_state,
                since=s.since if s is not None else None,
                proof=proof,
                agrees=state == cached_state or (state, cached_state) == ("erased", "none"),
            )
        )
    return rows


def chain_line(check: ChainCheck) -> str:
    return check.describe()


# --- data-subject requests -----------------------------------------------------------------------
REQUEST_KINDS: dict[str, str] = {
    "access": "access (GDPR 15)",
    "portability": "portability (GDPR 20)",
    "erasure": "erasure (GDPR 17)",
    "restriction": "restriction (GDPR 18)",
    "lift_restriction": "lift restriction (GDPR 18)",
}
SOON_DAYS = 7  # a request due within this many days is marked "due soon"


@dataclass(frozen=True, slots=True)
class RequestRow:
    """One open data-subject request as the console shows it. ``days_left`` counts whole days until
    ``due_at`` (0 in its last day; for an overdue request, minus the whole days it is late).
    ``hidden``: the subject's processing is restricted and the viewer may not see who it is (no
    label, no link)."""

    request: DataRequest
    kind: str
    label: str
    key: str  # the subject's conversation key ("" when there is none, or hidden)
    hidden: bool
    days_left: int
    overdue: bool
    soon: bool
    due_text: str


def due_status(due_at: datetime, now: datetime) -> tuple[int, bool, str]:
    """(days left, overdue, text) of a deadline. Overdue means ``due_at`` has passed (the rule of
    ``consentbot dsr list``)."""
    day = timedelta(days=1)
    if due_at < now:
        late = (now - due_at) // day
        text = f"overdue by {late} day{'' if late == 1 else 's'}" if late else "overdue (less than a day)"
        return -late, True, text
    left = (due_at - now) // day
    text = f"{left} day{'' if left == 1 else 's'} left" if left else "less than a day left"
    return left, False, text


def request_row(
    request: DataRequest, conversation: Conversation | None, now: datetime, may_see_restricted: bool
) -> RequestRow:
    """The row of one request; ``conversation`` is the subject's conversation when one exists. The
    subject is masked like the conversation list masks numbers."""
    hidden = conversation is not None and conversation.restricted and not may_see_restricted
    if hidden:
        label = ""
    elif conversation is not None:
        label = customer_label(conversation)
    else:
        label = mask_number(request.subject)
    days, overdue, text = due_status(request.due_at, now)
    return RequestRow(
        request=request,
        kind=REQUEST_KINDS.get(str(request.kind), str(request.kind)),
        label=label,
        key="" if hidden or conversation is None else conversation.key,
        hidden=hidden,
        days_left=days,
        overdue=overdue,
        soon=not overdue and days < SOON_DAYS,
        due_text=text,
    )


def is_subject_of(subject: str, conversation: Conversation) -> bool:
    """True when a request's ``subject`` names this conversation's customer: its subject or wa_id,
    also when typed as a number with ``+`` and spaces."""
    own = {conversation.subject, conversation.wa_id or ""} - {""}
    digits = normalise_number(subject)
    return subject in own or (len(digits) >= 7 and digits in own)


def day(at: datetime | None) -> str:
    """``2025-03-31`` (UTC)."""
    if at is None:
        return ""
    return at.astimezone(UTC).strftime("%Y-%m-%d")


# --- funnel --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: int
    width: float  # 0..100 (% of the largest)
    hint: str = ""


FUNNEL_STAGES: tuple[tuple[str, str], ...] = (
    ("started", "Started: every conversation of this flow"),
    ("chosen", "Preferences chosen: the purpose was chosen (requested, later granted, withdrawn or expired)"),
    ("confirmed", "Confirmed: the double opt-in confirmation was given (granted now or withdrawn since)"),
    ("subscribed", "Subscribed: consent for the purpose is granted now"),
    ("opted_out", "Opted out: consent was withdrawn"),
)


def funnel(started: int, by_state: Mapping[str, int]) -> list[Bar]:
    """The opt-in funnel of one purpose from per-state counts of that purpose (``requested``,
    ``granted``, ``withdrawn``, ``expired``) and the number of conversations started."""
    granted = by_state.get("granted", 0)
    withdrawn = by_state.get("withdrawn", 0)
    values = {
        "started": started,
        "chosen": by_state.get("requested", 0) + granted + withdrawn + by_state.get("expired", 0),
        "confirmed": granted + withdrawn,
        "subscribed": granted,
        "opted_out": withdrawn,
    }
    top = max(*values.values(), 1)
    labels = {"started": "Started", "chosen": "Preferences chosen", "confirmed": "Confirmed",
              "subscribed": "Subscribed", "opted_out": "Opted out"}
    return [Bar(labels[k], values[k], round(100.0 * values[k] / top, 1), hint) for k, hint in FUNNEL_STAGES]


def state_bars(counts: Mapping[str, int], order: Sequence[str] = ()) -> list[Bar]:
    names = list(order) + sorted(set(counts) - set(order))
    top = max([*counts.values(), 1])
    return [Bar(n, counts.get(n, 0), round(100.0 * counts.get(n, 0) / top, 1)) for n in names]


def ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return ""
    seconds = int((now - at).total_seconds())
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def utc(at: datetime | None) -> str:
    if at is None:
        return ""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
