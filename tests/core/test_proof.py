"""Chain verification, receipts, the export and the suppression key."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest

from bot.core.consent import GENESIS, Actor, ConsentAction, ConsentEventDraft, ConsentRecord, chain, event_hash
from bot.core.conversation import Conversation, PurposeState, PurposeStatus
from bot.core.project import Controller, Project, Purpose
from bot.core.proof import (
    EXPORT_SCHEMA,
    ChainProblem,
    TranscriptLine,
    build_export,
    build_receipt,
    receipt_id,
    request_due,
    summarise,
    suppression_key,
    verify_chain,
)
from bot.core.rendering import NoticeText
from bot.errors import CoreError

T0 = datetime(2025, 6, 3, 10, 15, 42, 120000, tzinfo=UTC)
NOTICE = NoticeText.of("3.1", "es", "Ejemplo SL te enviará ofertas por WhatsApp. Escribe BAJA para parar.")
CONTROLLER = Controller("Ejemplo SL", "privacidad@example.com", "dpo@example.com",
                        "https://example.com/privacidad", "AEPD (www.aepd.es)")
PROJECT = Project(controller=CONTROLLER, purposes=(Purpose("offers", {"en": "Offers", "es": "Ofertas"}),
                                                   Purpose("news", {"en": "News"})))
SUBJECT = "34600000001"


def draft(action: ConsentAction, minutes: int, purpose: str = "offers", **evidence: str) -> ConsentEventDraft:
    return ConsentEventDraft(
        subject=SUBJECT, purpose=purpose, action=action, at=T0 + timedelta(minutes=minutes), actor=Actor.CUSTOMER,
        flow_id="doi", flow_version="2", notice_version=NOTICE.version, notice_sha256=NOTICE.sha256,
        locale="es", method="button", evidence=dict(evidence),
    )


def build_chain(*drafts: ConsentEventDraft) -> list[ConsentRecord]:
    records: list[ConsentRecord] = []
    for d in drafts:
        records.append(chain(records[-1] if records else None, d))
    return records


@pytest.fixture
def records() -> list[ConsentRecord]:
    return build_chain(
        draft(ConsentAction.REQUESTED, 0, message_id="wamid.FIRST"),
        draft(ConsentAction.CONFIRMED, 1, message_id="wamid.TAP", context_id="wamid.PROMPT",
              payload="CONSENT_YES:offers:3.1"),
        draft(ConsentAction.REQUESTED, 2, purpose="news", message_id="wamid.N1"),
        draft(ConsentAction.DECLINED, 3, purpose="news", message_id="wamid.N2"),
        draft(ConsentAction.PREFERENCES_CHANGED, 4, message_id="wamid.P"),
    )


# --- verify_chain ---------------------------------------------------------------------------------
def test_intact_chain_verifies(records: list[ConsentRecord]) -> None:
    check = verify_chain(records)
    assert check.ok and check.problem is None and check.broken_seq is None
    assert (check.subject, check.records, check.head_seq, check.head_hash) == (SUBJECT, 5, 5, records[-1].hash)
    assert "ok" in check.describe()


def test_empty_chain_is_ok() -> None:
    check = verify_chain([], SUBJECT)
    assert check.ok and check.records == 0 and check.head_hash == GENESIS


@pytest.mark.parametrize("index", [0, 2, 4])
def test_altered_event_is_named(records: list[ConsentRecord], index: int) -> None:
    victim = records[index]
    records[index] = replace(victim, event=replace(victim.event, at=victim.event.at + timedelta(seconds=1)))
    check = verify_chain(records)
    assert (check.ok, check.problem, check.broken_seq) == (False, ChainProblem.ALTERED, victim.seq)
    assert f"seq {victim.seq}" in check.describe()


def test_altered_evidence_is_detected(records: list[ConsentRecord]) -> None:
    tap = records[1]
    records[1] = replace(tap, event=replace(tap.event, evidence={"message_id": "wamid.FORGED"}))
    assert verify_chain(records).problem is ChainProblem.ALTERED


def test_altered_and_rehashed_event_breaks_the_next_link(records: list[ConsentRecord]) -> None:
    forged_event = replace(records[1].event, action=ConsentAction.DECLINED)
    records[1] = replace(records[1], event=forged_event, hash=event_hash(records[1].prev_hash, forged_event))
    check = verify_chain(records)
    assert (check.problem, check.broken_seq) == (ChainProblem.BAD_PREV_LINK, 3)


@pytest.mark.parametrize(("index", "first_missing"), [(0, 1), (2, 3)])
def test_removed_event_is_a_gap(records: list[ConsentRecord], index: int, first_missing: int) -> None:
    del records[index]
    check = verify_chain(records)
    assert (check.problem, check.broken_seq) == (ChainProblem.REMOVED, first_missing)


def test_two_removed_events_are_named_as_a_range(records: list[ConsentRecord]) -> None:
    del records[1:3]
    check = verify_chain(records)
    assert (check.problem, check.broken_seq) == (ChainProblem.REMOVED, 2)
    assert "2..3" in check.detail


def test_reordered_records_are_detected(records: list[ConsentRecord]) -> None:
    records[1], records[2] = records[2], records[1]
    check = verify_chain(records)
    assert (check.problem, check.broken_seq) == (ChainProblem.REORDERED, 3)


def test_swapped_seq_numbers_are_detected_as_reordering(records: list[ConsentRecord]) -> None:
    # The store returns records sorted by seq: swapping the seq fields of two records reorders them.
    a, b = records[1], records[2]
    records[1], records[2] = replace(b, seq=2), replace(a, seq=3)
    check = verify_chain(records)
    assert (check.problem, check.broken_seq) == (ChainProblem.REORDERED, 2)


def test_repeated_seq_is_reordering(records: list[ConsentRecord]) -> None:
    records.insert(2, records[1])
    assert verify_chain(records).problem is ChainProblem.REORDERED


def test_foreign_event_is_detected(records: list[ConsentRecord]) -> None:
    records[3] = replace(records[3], event=replace(records[3].event, subject="34999999999"))
    check = verify_chain(records, SUBJECT)
    assert (check.problem, check.broken_seq) == (ChainProblem.FOREIGN, 4)


def test_cut_off_head_is_only_seen_with_an_expected_head(records: list[ConsentRecord]) -> None:
    head = records[-1].hash
    cut = records[:-2]
    assert verify_chain(cut).ok  # the chain alone cannot tell
    check = verify_chain(cut, expected_head=head)
    assert (check.ok, check.problem, check.broken_seq) == (False, ChainProblem.HEAD_MISMATCH, 4)
    assert verify_chain(records, expected_head=head).ok
    assert verify_chain(records, expected_head=records[2].hash).problem is ChainProblem.HEAD_MISMATCH


def test_round_trip_through_documents_keeps_the_chain_valid(records: list[ConsentRecord]) -> None:
    docs = json.loads(json.dumps([r.to_doc() for r in records], default=lambda d: d.isoformat()))
    for doc in docs:
        doc["event"]["at"] = datetime.fromisoformat(doc["event"]["at"])
    assert verify_chain([ConsentRecord.from_doc(d) for d in docs]).ok


# --- summaries and receipts -----------------------------------------------------------------------
def test_summarise_per_purpose(records: list[ConsentRecord]) -> None:
    summary = summarise(records)
    assert summary["offers"].state == "granted"
    assert summary["offers"].granted_by is records[1]
    assert summary["offers"].since == records[1].event.at  # a preference change keeps the grant time
    assert summary["news"].state == "declined" and summary["news"].granted_by is None


def test_receipt_carries_the_tap_and_the_exact_notice_hash(records: list[ConsentRecord]) -> None:
    now = T0 + timedelta(days=1)
    receipt = build_receipt(SUBJECT, records, CONTROLLER, [NOTICE], now, refresh_days=730)
    json.dumps(receipt)  # JSON-ready
    assert receipt["version"] == "KI-CR-v1.1.0"
    assert receipt["piiPrincipalId"] == SUBJECT
    assert receipt["jurisdiction"] == "ES"
    assert receipt["policyUrl"] == CONTROLLER.privacy_policy_url
    assert receipt["piiControllers"][0]["piiController"] == "Ejemplo SL"
    assert receipt["consentTimestamp"] == int(records[1].event.at.timestamp())
    assert "button" in receipt["collectionMethod"]
    assert receipt["consentReceiptID"] == receipt_id(SUBJECT, records[-1].hash)
    purposes = {p["purpose"]: p for p in receipt["services"][0]["purposes"]}
    offers = purposes["offers"]
    assert offers["status"] == "granted"
    assert offers["evidence"]["messageId"] == "wamid.TAP"
    assert offers["evidence"]["contextId"] == "wamid.PROMPT"
    assert offers["notice"] == {"version": "3.1", "locale": "es", "sha256": NOTICE.sha256,
                                "textStored": True, "textIntact": True}
    assert NOTICE.sha256 == hashlib.sha256(NOTICE.text.encode()).hexdigest()
    assert offers["termination"].startswith("2027-06-03")
    assert purposes["news"]["status"] == "declined" and "evidence" not in purposes["news"]
    assert receipt["chain"] == {
        "algorithm": receipt["chain"]["algorithm"], "headSeq": 5, "headHash": records[-1].hash,
        "verified": True, "problem": None, "brokenSeq": None,
    }


def test_receipt_reports_a_changed_notice_text_and_a_broken_chain(records: list[ConsentRecord]) -> None:
    tampered_notice = replace(NOTICE, text=NOTICE.text + " y a terceros")
    del records[0]
    receipt = build_receipt(SUBJECT, records, CONTROLLER, [tampered_notice], T0)
    offers = {p["purpose"]: p for p in receipt["services"][0]["purposes"]}["offers"]
    assert offers["notice"]["textStored"] and not offers["notice"]["textIntact"]
    assert receipt["chain"]["verified"] is False and receipt["chain"]["problem"] == "removed"


def test_receipt_id_changes_with_the_head_and_is_uuid4(records: list[ConsentRecord]) -> None:
    first = receipt_id(SUBJECT, records[-2].hash)
    second = receipt_id(SUBJECT, records[-1].hash)
    assert first != second and first[14] == "4" and second[14] == "4"


# --- export ---------------------------------------------------------------------------------------
def test_export_validates_and_holds_everything(records: list[ConsentRecord]) -> None:
    conv = Conversation.start("pn1", SUBJECT, "doi", "2", "subscribed", "es", T0, wa_id=SUBJECT,
                              profile_name="Ana")
    conv = conv.evolve(consent={"offers": PurposeStatus(PurposeState.GRANTED, T0, "3.1")},
                       slots={"age_ok": True, "topics": ("shoes",), "asked": T0})
    lines = [
        TranscriptLine(conv.key, T0 + timedelta(seconds=5), "out", "buttons", "¿Quieres ofertas?", "utility"),
        TranscriptLine(conv.key, T0, "in", "text", "hola"),
    ]
    export = build_export(SUBJECT, project=PROJECT, conversations=[conv], records=records, notices=[NOTICE],
                          transcript=lines, now=T0 + timedelta(days=2))
    jsonschema.validate(json.loads(json.dumps(export)), EXPORT_SCHEMA)
    assert export["profile"][0]["profileName"] == "Ana"
    assert export["preferences"][0]["purposes"]["offers"]["state"] == "granted"
    assert export["preferences"][0]["answers"]["topics"] == ["shoes"]
    assert len(export["consent"]["events"]) == 5
    assert export["consent"]["events"][1]["messageId"] == "wamid.TAP"
    assert export["consent"]["notices"] == [
        {"sha256": NOTICE.sha256, "version": "3.1", "locale": "es", "text": NOTICE.text}
    ]
    assert export["consent"]["chain"]["ok"] is True
    assert [t["text"] for t in export["transcript"]] == ["hola", "¿Quieres ofertas?"]
    r = PROJECT.retention
    assert export["processing"]["retentionDays"] == {
        "transcripts": r.transcripts_days, "blockedConsentProof": r.blocked_proof_days,
        "consentRefresh": r.consent_refresh_days, "consoleAuditLog": r.audit_days, "inbox": r.inbox_days,
    }


def test_export_of_an_unknown_subject_is_empty_but_valid() -> None:
    export = build_export("nobody", project=PROJECT, conversations=[], records=[], notices=[], transcript=[], now=T0)
    jsonschema.validate(export, EXPORT_SCHEMA)
    assert export["profile"] == [] and export["consent"]["events"] == [] and export["transcript"] == []


def test_schema_rejects_a_broken_export(records: list[ConsentRecord]) -> None:
    export = build_export(SUBJECT, project=PROJECT, conversations=[], records=records, notices=[], transcript=[],
                          now=T0)
    del export["consent"]["events"][0]["hash"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(export, EXPORT_SCHEMA)


# --- suppression key ------------------------------------------------------------------------------
def test_suppression_key_is_hmac_of_the_digits() -> None:
    secret = b"deployment-secret"
    expected = hmac.new(secret, b"34600000001", hashlib.sha256).hexdigest()
    assert suppression_key(secret, "+34 600-000 001") == expected
    assert suppression_key(secret, "34600000001") == expected
    assert suppression_key(b"another-secret", "34600000001") != expected
    assert hashlib.sha256(b"34600000001").hexdigest() != expected


def test_suppression_key_of_an_identifier_without_digits() -> None:
    assert suppression_key(b"s", "abc") == hmac.new(b"s", b"id:abc", hashlib.sha256).hexdigest()


@pytest.mark.parametrize(("secret", "number"), [(b"", "34600000001"), (b"s", "  ")])
def test_suppression_key_refuses_bad_input(secret: bytes, number: str) -> None:
    with pytest.raises(CoreError):
        suppression_key(secret, number)


@pytest.mark.parametrize(
    ("received", "due"),
    [
        (datetime(2025, 1, 31, 9, tzinfo=UTC), datetime(2025, 2, 28, 9, tzinfo=UTC)),
        (datetime(2024, 1, 31, 9, tzinfo=UTC), datetime(2024, 2, 29, 9, tzinfo=UTC)),
        (datetime(2025, 12, 15, 9, tzinfo=UTC), datetime(2026, 1, 15, 9, tzinfo=UTC)),
        (datetime(2025, 6, 3, 10, 15, tzinfo=UTC), datetime(2025, 7, 3, 10, 15, tzinfo=UTC)),
    ],
)
def test_request_due_is_one_calendar_month(received: datetime, due: datetime) -> None:
    assert request_due(received) == due
