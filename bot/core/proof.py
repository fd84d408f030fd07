"""Proof of consent, pure: chain verification, consent receipts, the data-subject export, and the
suppression key.

- :func:`verify_chain` recomputes a subject's hash chain (``bot.core.consent``) and names the first
  broken link: an *altered* event, a *removed* one (a gap in ``seq``), a *reordered* one, or a bad
  ``prev_hash`` link.
- :func:`build_receipt` writes a consent receipt after the Kantara Consent Receipt v1.1 and the
  ISO/IEC TS 27560 record structure (field crosswalk in ``docs/privacy.md``).
- :func:`build_export` writes the access / portability export (GDPR 15 and 20) whose JSON Schema is
  :data:`EXPORT_SCHEMA`.
- :func:`suppression_key` keys the suppression list: HMAC-SHA256 of the number's digits.

Everything here takes ``now`` and plain values; nothing reads a clock or a database.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from bot.core.consent import GENESIS, ConsentAction, ConsentRecord, event_hash
from bot.core.conversation import Conversation
from bot.core.project import Controller, Project
from bot.core.rendering import NoticeText
from bot.errors import CoreError

RECEIPT_VERSION = "KI-CR-v1.1.0"
RECEIPT_SCHEMA = "consentbot-receipt/1.0"
EXPORT_SCHEMA_ID = "consentbot-export/1.0"
HASH_ALGORITHM = "sha256(prev_hash || canonical_json(event)); genesis = 64 x '0'"


# --- notices (the value is ``bot.core.rendering.NoticeText``) -------------------------------------
def text_sha256(text: str) -> str:
    """The hash that identifies a notice text: SHA-256 of its exact UTF-8 bytes, lowercase hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def notice_intact(notice: NoticeText) -> bool:
    """True when ``notice.sha256`` is the hash of ``notice.text``."""
    return hmac.compare_digest(notice.sha256, text_sha256(notice.text))


def notice_to_doc(notice: NoticeText) -> dict[str, Any]:
    return {
        "version": notice.version,
        "locale": notice.locale,
        "text": notice.text,
        "sha256": notice.sha256,
        "template": notice.template,
        "kind": notice.kind,
    }


def notice_from_doc(doc: Mapping[str, Any]) -> NoticeText:
    return NoticeText(
        version=doc["version"],
        locale=doc["locale"],
        text=doc["text"],
        sha256=doc["sha256"],
        template=doc.get("template", ""),
        kind=doc.get("kind", ""),
    )


# --- chain verification --------------------------------------------------------------------------
class ChainProblem(StrEnum):
    """What is wrong at the first broken link of a chain."""

    ALTERED = "altered"  # the event's content no longer matches its stored hash
    REMOVED = "removed"  # a gap in seq: one or more events are missing
    REORDERED = "reordered"  # events are out of order (or a seq is repeated)
    BAD_PREV_LINK = "bad_prev_link"  # prev_hash is not the previous event's hash (changed and re-hashed)
    FOREIGN = "foreign"  # an event of another subject sits in this chain
    HEAD_MISMATCH = "head_mismatch"  # the chain is intact but does not end at the expected head


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """The result of :func:`verify_chain`. ``broken_seq`` is the seq of the first broken link (for a
    removal, the first missing seq); ``head_*`` describe the last record as stored."""

    subject: str
    ok: bool
    records: int
    head_seq: int
    head_hash: str
    broken_seq: int | None = None
    problem: ChainProblem | None = None
    detail: str = ""

    def describe(self) -> str:
        """One line for people: ``subject: ok (n events)`` or ``subject: BROKEN at seq k: problem - detail``."""
        if self.ok:
            return f"{self.subject}: ok ({self.records} events, head {self.head_hash[:12]})"
        return f"{self.subject}: BROKEN at seq {self.broken_seq}: {self.problem} - {self.detail}"

    def to_doc(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "ok": self.ok,
            "records": self.records,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "broken_seq": self.broken_seq,
            "problem": None if self.problem is None else str(self.problem),
            "detail": self.detail,
        }


def verify_chain(
    records: Sequence[ConsentRecord], subject: str | None = None, expected_head: str | None = None
) -> ChainCheck:
    """Recompute every hash and link of one subject's chain, in the order given (the ledger's seq order).

    Checks, per record: it belongs to the subject; its seq is the next one (a jump = *removed*, a
    smaller or repeated seq, or a missing seq that shows up later = *reordered*); its hash is
    ``event_hash(prev_hash, event)`` (else *altered*); its ``prev_hash`` is the previous record's hash
    (else *reordered* when that hash belongs to a later record, *bad_prev_link* otherwise). The first
    failure is reported. With ``expected_head`` (a head hash kept elsewhere: a receipt, a checkpoint)
    a chain whose newest events were cut off is reported as ``head_mismatch``.

    Without an external head, removing the *last* events of a chain cannot be seen from the chain
    alone; keep heads in checkpoints or receipts and pass them here.
    """
    who = subject if subject is not None else (records[0].event.subject if records else "")
    head_seq = records[-1].seq if records else 0
    head_hash = records[-1].hash if records else GENESIS

    def broken(seq: int, problem: ChainProblem, detail: str) -> ChainCheck:
        return ChainCheck(who, False, len(records), head_seq, head_hash, seq, problem, detail)

    position = {r.hash: i for i, r in enumerate(records)}
    seqs_after: list[set[int]] = [set() for _ in records]
    later: set[int] = set()
    for i in range(len(records) - 1, -1, -1):
        seqs_after[i] = set(later)
        later.add(records[i].seq)

    expected_prev, expected_seq = GENESIS, 1
    for i, record in enumerate(records):
        if record.event.subject != who:
            return broken(record.seq, ChainProblem.FOREIGN, f"event of subject {record.event.subject!r}")
        if record.seq != expected_seq:
            if record.seq < expected_seq or expected_seq in seqs_after[i]:
                return broken(record.seq, ChainProblem.REORDERED, f"seq {record.seq} where {expected_seq} belongs")
            missing = (
                f"seq {expected_seq}"
                if record.seq == expected_seq + 1
                else f"seq {expected_seq}..{record.seq - 1}"
            )
            return broken(expected_seq, ChainProblem.REMOVED, f"{missing} missing before seq {record.seq}")
        if not hmac.compare_digest(event_hash(record.prev_hash, record.event), record.hash):
            return broken(record.seq, ChainProblem.ALTERED, "the event no longer matches its hash")
        if record.prev_hash != expected_prev:
            j = position.get(record.prev_hash)
            if j is not None and j > i:
                return broken(
                    record.seq, ChainProblem.REORDERED, f"links to the event stored at seq {records[j].seq}"
                )
            return broken(
                record.seq,
                ChainProblem.BAD_PREV_LINK,
                f"prev_hash is not the hash of seq {record.seq - 1} (this or the previous event was rewritten)",
            )
        expected_prev, expected_seq = record.hash, record.seq + 1

    if expected_head is not None and expected_head != head_hash:
        at = position.get(expected_head)
        detail = (
            f"expected head {expected_head[:12]} is at seq {records[at].seq}, not the last"
            if at is not None
            else f"expected head {expected_head[:12]} is not in the chain (events after seq {head_seq} removed?)"
        )
        return broken(head_seq + 1 if at is None else records[at].seq, ChainProblem.HEAD_MISMATCH, detail)
    return ChainCheck(who, True, len(records), head_seq, head_hash)


# --- per-purpose status from the chain -----------------------------------------------------------
_STATE_AFTER: dict[ConsentAction, str] = {
    ConsentAction.REQUESTED: "requested",
    ConsentAction.CONFIRMED: "granted",
    ConsentAction.REFRESHED: "granted",
    ConsentAction.DECLINED: "declined",
    ConsentAction.WITHDRAWN: "withdrawn",
    ConsentAction.EXPIRED: "expired",
    ConsentAction.ERASED: "erased",
}


@dataclass(frozen=True, slots=True)
class PurposeSummary:
    """One purpose as the chain tells it: the current state, when it last changed, and the record of
    the last explicit grant (the confirming tap or refresh), which carries the proof."""

    purpose: str
    state: str
    since: datetime
    granted_by: ConsentRecord | None
    events: tuple[ConsentRecord, ...]


def summarise(records: Iterable[ConsentRecord]) -> dict[str, PurposeSummary]:
    """Fold a chain into per-purpose summaries (preference changes keep the state)."""
    state: dict[str, str] = {}
    since: dict[str, datetime] = {}
    granted: dict[str, ConsentRecord | None] = {}
    events: dict[str, list[ConsentRecord]] = {}
    for record in records:
        event = record.event
        events.setdefault(event.purpose, []).append(record)
        granted.setdefault(event.purpose, None)
        new = _STATE_AFTER.get(event.action)
        if new is None:
            state.setdefault(event.purpose, "none")
            since.setdefault(event.purpose, event.at)
            continue
        if state.get(event.purpose) != new:
            since[event.purpose] = event.at
        state[event.purpose] = new
        if new == "granted":
            granted[event.purpose] = record
            since[event.purpose] = event.at
    return {
        p: PurposeSummary(p, state[p], since[p], granted[p], tuple(events[p]))
        for p in events
    }


# --- JSON helpers --------------------------------------------------------------------------------
def iso(value: datetime) -> str:
    """ISO-8601 in UTC with millisecond precision and a ``Z`` (naive values are taken as UTC)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """``value`` with datetimes as ISO strings, tuples/sets as lists and unknown objects as ``str``."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _index_notices(notices: Iterable[NoticeText]) -> dict[str, NoticeText]:
    return {n.sha256: n for n in notices}


def _controller_doc(controller: Controller) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "piiController": controller.name,
        "contact": controller.contact,
        "dpoContact": controller.dpo_contact,
        "piiControllerUrl": controller.privacy_policy_url,
        "onBehalf": False,
    }
    if "@" in controller.contact:
        doc["email"] = controller.contact
    return doc


def _event_doc(record: ConsentRecord) -> dict[str, Any]:
    e = record.event
    evidence = dict(e.evidence or {})
    return {
        "seq": record.seq,
        "purpose": e.purpose,
        "action": str(e.action),
        "at": iso(e.at),
        "actor": str(e.actor),
        "method": e.method,
        "flowId": e.flow_id,
        "flowVersion": e.flow_version,
        "locale": e.locale,
        "noticeVersion": e.notice_version,
        "noticeSha256": e.notice_sha256,
        "messageId": str(evidence.get("message_id", "")),
        "evidence": jsonable(evidence),
        "prevHash": record.prev_hash,
        "hash": record.hash,
    }


def receipt_id(subject: str, head_hash: str) -> str:
    """A UUID-4-shaped receipt id derived from the subject and its chain head: the same chain state
    always gives the same id, so a receipt can be found again from its id."""
    digest = hashlib.sha256(f"receipt:{subject}:{head_hash}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


# --- receipts ------------------------------------------------------------------------------------
def build_receipt(
    subject: str,
    records: Sequence[ConsentRecord],
    controller: Controller,
    notices: Iterable[NoticeText],
    now: datetime,
    *,
    jurisdiction: str = "ES",
    refresh_days: int | None = None,
    withdrawal_method: str = "Reply STOP (or BAJA) or tap the opt-out button in any marketing message.",
) -> dict[str, Any]:
    """A consent receipt for ``subject`` as a JSON-ready dict (Kantara CR v1.1 names, ISO/IEC TS
    27560 additions): one purpose entry per purpose in the chain with its state and times, the notice
    (version, locale, sha256 and whether the stored text still hashes to it), the method and evidence
    of the last explicit grant (incl. the confirming tap's Meta message id), the refresh date, and the
    chain head and its verification. ``consentTimestamp`` (epoch seconds) and ``collectionMethod`` are
    those of the latest grant (or the latest event when nothing was ever granted)."""
    check = verify_chain(records, subject)
    by_sha = _index_notices(notices)
    summaries = summarise(records)
    grants = [s.granted_by for s in summaries.values() if s.granted_by is not None]
    anchor = max(grants, key=lambda r: r.seq) if grants else (records[-1] if records else None)
    purposes: list[dict[str, Any]] = []
    for purpose, summary in sorted(summaries.items()):
        entry: dict[str, Any] = {
            "purpose": purpose,
            "purposeCategory": ["marketing"],
            "consentType": "EXPLICIT",
            "piiCategory": ["WhatsApp id", "language", "messaging preferences"],
            "primaryPurpose": False,
            "thirdPartyDisclosure": False,
            "status": summary.state,
            "since": iso(summary.since),
            "events": [
                {"seq": r.seq, "action": str(r.event.action), "at": iso(r.event.at), "actor": str(r.event.actor)}
                for r in summary.events
            ],
        }
        grant = summary.granted_by
        if grant is not None:
            ev = grant.event
            evidence = dict(ev.evidence or {})
            notice = by_sha.get(ev.notice_sha256)
            entry["givenAt"] = iso(ev.at)
            entry["method"] = ev.method
            entry["actor"] = str(ev.actor)
            entry["flow"] = {"id": ev.flow_id, "version": ev.flow_version}
            entry["notice"] = {
                "version": ev.notice_version,
                "locale": ev.locale,
                "sha256": ev.notice_sha256,
                "textStored": notice is not None,
                "textIntact": notice is not None and notice_intact(notice),
            }
            entry["evidence"] = {
                "messageId": str(evidence.get("message_id", "")),
                "contextId": str(evidence.get("context_id", "")),
                "payload": str(evidence.get("payload", "")),
                "recordSeq": grant.seq,
                "recordHash": grant.hash,
            }
            if refresh_days is not None:
                entry["termination"] = iso(ev.at + timedelta(days=refresh_days))
        if summary.state != "granted":
            entry["termination"] = iso(summary.since)
        purposes.append(entry)

    locale = anchor.event.locale if anchor is not None else ""
    return {
        "version": RECEIPT_VERSION,
        "schemaVersion": RECEIPT_SCHEMA,
        "jurisdiction": jurisdiction,
        "consentTimestamp": int(anchor.event.at.timestamp()) if anchor is not None else None,
        "collectionMethod": _collection_method(anchor),
        "consentReceiptID": receipt_id(subject, check.head_hash),
        "language": locale,
        "piiPrincipalId": subject,
        "piiControllers": [_controller_doc(controller)],
        "policyUrl": controller.privacy_policy_url,
        "services": [{"service": f"WhatsApp messages from {controller.name}", "purposes": purposes}],
        "sensitive": False,
        "spiCat": [],
        "withdrawalMethod": withdrawal_method,
        "authorityParty": controller.supervisory_authority,
        "issuedAt": iso(now),
        "chain": {
            "algorithm": HASH_ALGORITHM,
            "headSeq": check.head_seq,
            "headHash": check.head_hash,
            "verified": check.ok,
            "problem": None if check.problem is None else str(check.problem),
            "brokenSeq": check.broken_seq,
        },
    }


def _collection_method(anchor: ConsentRecord | None) -> str:
    if anchor is None:
        return ""
    method = anchor.event.method or "unspecified"
    return f"WhatsApp chat, {method} ({anchor.event.action}, double opt-in)"


# --- access / portability export -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TranscriptLine:
    """One message of the subject's transcript, as the export shows it (the runtime maps the store's
    transcript entries to these)."""

    conversation: str
    at: datetime
    direction: str  # "in" | "out"
    kind: str
    text: str = ""
    category: str = ""
    purpose: str = ""
    template: str = ""
    status: str = ""
    wamid: str = ""


def _profile(conversation: Conversation) -> dict[str, Any]:
    return {
        "conversation": conversation.key,
        "businessNumberId": conversation.phone_number_id,
        "subject": conversation.subject,
        "waId": conversation.wa_id,
        "profileName": conversation.profile_name,
        "locale": conversation.locale,
        "flow": {"id": conversation.flow_id, "version": conversation.flow_version},
        "state": conversation.state,
        "createdAt": iso(conversation.created_at),
        "updatedAt": iso(conversation.updated_at),
        "lastCustomerMessageAt": None if conversation.window_opened_at is None else iso(conversation.window_opened_at),
        "restricted": conversation.restricted,
    }


def _preferences(conversation: Conversation) -> dict[str, Any]:
    return {
        "conversation": conversation.key,
        "purposes": {
            p: {"state": str(s.state), "since": iso(s.since), "noticeVersion": s.notice_version}
            for p, s in sorted(conversation.consent.items())
        },
        "answers": jsonable(conversation.slots),
    }


def build_export(
    subject: str,
    *,
    project: Project,
    conversations: Sequence[Conversation],
    records: Sequence[ConsentRecord],
    notices: Iterable[NoticeText],
    transcript: Sequence[TranscriptLine],
    now: datetime,
) -> dict[str, Any]:
    """The access (GDPR 15) and portability (GDPR 20) export of one subject, valid against
    :data:`EXPORT_SCHEMA`: the processing facts (controller, purposes, recipients, retention, rights),
    the profile and preferences of every conversation, the full consent history with the exact notice
    texts it refers to and the chain verification, and the transcript in time order."""
    by_sha = _index_notices(notices)
    referenced = sorted({r.event.notice_sha256 for r in records if r.event.notice_sha256})
    check = verify_chain(records, subject)
    c = project.controller
    retention = project.retention
    return {
        "schema": EXPORT_SCHEMA_ID,
        "generatedAt": iso(now),
        "subject": subject,
        "controller": {
            "name": c.name,
            "contact": c.contact,
            "dpoContact": c.dpo_contact,
            "privacyPolicyUrl": c.privacy_policy_url,
            "supervisoryAuthority": c.supervisory_authority,
        },
        "processing": {
            "purposes": [
                {"id": p.id, "title": p.title(project.default_locale, project.default_locale), "legalBasis": "consent"}
                for p in project.purposes
            ],
            "recipients": ["Meta Platforms Ireland Ltd. (WhatsApp Business Cloud API), as processor"],
            "source": "provided by you in the WhatsApp conversation",
            "retentionDays": {
                "transcripts": retention.transcripts_days,
                "blockedConsentProof": retention.blocked_proof_days,
                "consentRefresh": retention.consent_refresh_days,
                "consoleAuditLog": retention.audit_days,  # who viewed or acted on your conversations
                "inbox": retention.inbox_days,
            },
            "rights": [
                "access", "rectification", "erasure", "restriction", "portability", "objection",
                "withdraw consent at any time", "complain to the supervisory authority",
            ],
        },
        "profile": [_profile(conv) for conv in conversations],
        "preferences": [_preferences(conv) for conv in conversations],
        "consent": {
            "chain": check.to_doc(),
            "events": [_event_doc(r) for r in records],
            "notices": [
                {
                    "sha256": sha,
                    "version": by_sha[sha].version if sha in by_sha else None,
                    "locale": by_sha[sha].locale if sha in by_sha else None,
                    "text": by_sha[sha].text if sha in by_sha else None,
                }
                for sha in referenced
            ],
        },
        "transcript": [
            {
                "conversation": line.conversation,
                "at": iso(line.at),
                "direction": line.direction,
                "kind": line.kind,
                "text": line.text,
                "category": line.category,
                "purpose": line.purpose,
                "template": line.template,
                "status": line.status,
                "messageId": line.wamid,
            }
            for line in sorted(transcript, key=lambda t: t.at)
        ],
    }


_STR = {"type": "string"}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_STR = {"type": ["string", "null"]}

EXPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://consentbot.dev/schema/export-1.0.json",
    "title": "ConsentBot data-subject export (GDPR 15 and 20)",
    "type": "object",
    "required": ["schema", "generatedAt", "subject", "controller", "processing", "profile", "preferences",
                 "consent", "transcript"],
    "properties": {
        "schema": {"const": EXPORT_SCHEMA_ID},
        "generatedAt": _TIME,
        "subject": _STR,
        "controller": {
            "type": "object",
            "required": ["name", "contact", "privacyPolicyUrl", "supervisoryAuthority"],
        },
        "processing": {"type": "object", "required": ["purposes", "recipients", "retentionDays", "rights"]},
        "profile": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["conversation", "subject", "locale", "state", "createdAt", "updatedAt", "restricted"],
                "properties": {"waId": _NULLABLE_STR, "createdAt": _TIME, "updatedAt": _TIME},
            },
        },
        "preferences": {
            "type": "array",
            "items": {"type": "object", "required": ["conversation", "purposes", "answers"]},
        },
        "consent": {
            "type": "object",
            "required": ["chain", "events", "notices"],
            "properties": {
                "chain": {"type": "object", "required": ["ok", "records", "head_seq", "head_hash"]},
                "events": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["seq", "purpose", "action", "at", "actor", "method", "noticeVersion",
                                     "noticeSha256", "messageId", "evidence", "prevHash", "hash"],
                        "properties": {"seq": {"type": "integer", "minimum": 1}, "at": _TIME},
                    },
                },
                "notices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["sha256", "version", "locale", "text"],
                        "properties": {"sha256": _STR, "text": _NULLABLE_STR},
                    },
                },
            },
        },
        "transcript": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["conversation", "at", "direction", "kind", "text"],
                "properties": {"direction": {"enum": ["in", "out"]}, "at": _TIME},
            },
        },
    },
}


# --- suppression ---------------------------------------------------------------------------------
def normalise_number(number_or_subject: str) -> str:
    """The digits of a phone number or wa_id (``"+34 600-000 001"`` -> ``"34600000001"``)."""
    return "".join(ch for ch in number_or_subject if "0" <= ch <= "9")


def suppression_key(secret: bytes, number_or_subject: str) -> str:
    """HMAC-SHA256 (lowercase hex) of the normalised number (its digits) under the deployment secret.
    A plain hash of a phone number is enumerable; a keyed one is not without the secret. An
    identifier without digits is keyed as ``"id:" + identifier`` so every subject has a key. Raises
    :class:`bot.errors.CoreError` for an empty secret or a blank identifier."""
    if not secret:
        raise CoreError("suppression_key: the deployment secret is empty")
    digits = normalise_number(number_or_subject)
    if digits:
        material = digits
    elif number_or_subject.strip():
        material = "id:" + number_or_subject.strip()
    else:
        raise CoreError("suppression_key: the number or subject is empty")
    return hmac.new(secret, material.encode("utf-8"), hashlib.sha256).hexdigest()


# --- data-subject request deadlines --------------------------------------------------------------
def request_due(received_at: datetime, months: int = 1) -> datetime:
    """The answer deadline of a data-subject request: ``months`` calendar months after ``received_at``
    (GDPR 12(3)), the day clamped to the end of a shorter month (31 Jan -> 28/29 Feb)."""
    month_index = received_at.month - 1 + months
    year, month = received_at.year + month_index // 12, month_index % 12 + 1
    day = min(received_at.day, calendar.monthrange(year, month)[1])
    return received_at.replace(year=year, month=month, day=day)
