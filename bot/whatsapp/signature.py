"""``X-Hub-Signature-256``: HMAC-SHA256 of the exact request body bytes, keyed with the Meta app secret.

Always verify the raw bytes as received, before any JSON parsing: Meta escapes non-ASCII characters
before signing, so re-serialised JSON would not match. Comparison is constant-time.
"""

from __future__ import annotations

import hmac

HEADER = "X-Hub-Signature-256"
PREFIX = "sha256="


def sign(raw: bytes, app_secret: str) -> str:
    """The header value Meta would send for ``raw``: ``"sha256=" + lowercase hex HMAC-SHA256``."""
    return PREFIX + hmac.digest(app_secret.encode("utf-8"), raw, "sha256").hex()  # one-shot: no HMAC object


def verify_signature(raw: bytes, header: str | None, app_secret: str) -> bool:
    """True only if ``header`` is ``sha256=<hex>`` and the hex is the HMAC of ``raw`` under ``app_secret``.

    A missing header, another scheme (e.g. the legacy ``sha1=``), or an empty secret is a failure.
    Hex case is ignored (Meta sends lowercase).
    """
    if not header or not app_secret:
        return False
    value = header.strip()
    if value[: len(PREFIX)].lower() != PREFIX:
        return False
    given = value[len(PREFIX) :].lower()
    expected = sign(raw, app_secret)[len(PREFIX) :]
    return hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "replace"))
