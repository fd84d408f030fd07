"""X-Hub-Signature-256 over the raw bytes."""

from __future__ import annotations

import hashlib
import hmac
import json

from bot.whatsapp.signature import sign, verify_signature

SECRET = "s3cret"


def test_sign_matches_a_plain_hmac() -> None:
    raw = b'{"object":"whatsapp_business_account"}'
    expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert sign(raw, SECRET) == expected
    assert verify_signature(raw, expected, SECRET)
    assert verify_signature(raw, expected.upper().replace("SHA256=", "sha256="), SECRET)  # hex case
    assert verify_signature(raw, "  " + expected + " ", SECRET)


def test_wrong_or_missing_signatures_fail() -> None:
    raw = b"{}"
    good = sign(raw, SECRET)
    assert not verify_signature(raw, None, SECRET)
    assert not verify_signature(raw, "", SECRET)
    assert not verify_signature(raw, good, "other-secret")
    assert not verify_signature(raw + b" ", good, SECRET)
    assert not verify_signature(raw, good.replace("sha256=", "sha1="), SECRET)
    assert not verify_signature(raw, good[:-1], SECRET)
    assert not verify_signature(raw, "sha256=\u00e9\u00e9", SECRET)
    assert not verify_signature(raw, good, "")


def test_non_ascii_is_signed_over_the_bytes_on_the_wire() -> None:
    body = {"text": {"body": "\u00a1Hola! Se\u00f1or \U0001f44b"}}
    escaped = json.dumps(body).encode()  # what Meta sends: \\u escapes
    header = sign(escaped, SECRET)
    assert verify_signature(escaped, header, SECRET)
    reserialised = json.dumps(json.loads(escaped), ensure_ascii=False).encode()
    assert not verify_signature(reserialised, header, SECRET)
