"""The MongoDB collections, their indexes, and the derived keys some indexes are built on.

Plain data and pure functions (no driver import): the MongoDB adapter creates :data:`INDEXES` at
``open()``, and the memory adapter matches console queries with the same derived keys, so both
adapters answer a query alike. ``docs/architecture.md`` lists which query each index serves.
"""

from __future__ import annotations

from typing import Any

from bot.core.conversation import Conversation
from bot.store.base import ConversationQuery

CONVERSATIONS = "conversations"
STEPS = "steps"
TRANSCRIPT = "transcript"
INBOX = "inbox"
CONSENT = "consent_events"
NOTICES = "notices"  # step commits insert into it by _id; its read indexes are the privacy store's

Key = list[tuple[str, int]]

#: collection -> [(index name, key, options)]; every query the adapter runs is served by one of these.
INDEXES: dict[str, list[tuple[str, Key, dict[str, Any]]]] = {
    CONVERSATIONS: [
        ("updated", [("updated_at", -1)], {}),
        ("number_updated", [("phone_number_id", 1), ("updated_at", -1)], {}),
        ("flow_updated", [("flow_id", 1), ("updated_at", -1)], {}),
        ("flow_state_updated", [("flow_id", 1), ("state", 1), ("updated_at", -1)], {}),
        ("state_updated", [("state", 1), ("updated_at", -1)], {}),
        ("needs_person_updated", [("needs_person", 1), ("updated_at", -1)], {}),
        ("paused_updated", [("paused", 1), ("updated_at", -1)], {}),
        ("purposes_updated", [("_purposes", 1), ("updated_at", -1)], {}),
        ("terms_updated", [("_terms", 1), ("updated_at", -1)], {}),
        ("subject_ids", [("_ids", 1)], {}),
        ("timers_due", [("timers.due", 1)], {}),
    ],
    INBOX: [
        ("pending_by_key", [("key", 1), ("done", 1), ("ts", 1), ("order", 1)], {}),
        ("pending_by_age", [("done", 1), ("received_at", 1)], {}),
    ],
    STEPS: [
        ("key_seq", [("key", 1), ("seq", 1)], {"unique": True}),
    ],
    TRANSCRIPT: [
        ("key_time", [("key", 1), ("at", 1), ("pos", 1)], {}),
        ("outbox_due", [("queue_at", 1), ("at", 1), ("pos", 1)], {}),
        ("wamid_rank", [("wamid", 1), ("delivery_rank", 1)], {"sparse": True}),
        ("sent_by_subject", [("subject", 1), ("category", 1), ("accepted_at", 1)], {}),
    ],
    CONSENT: [
        ("subject_seq", [("subject", 1), ("seq", 1)], {"unique": True}),
    ],
}


def search_terms(conversation: Conversation) -> list[str]:
    """Lower-case words a console ``text`` query may be a prefix of: subject, wa_id, the profile name
    and each of its words (indexed as ``_terms``)."""
    name = conversation.profile_name.lower()
    terms = {conversation.subject.lower(), name, *name.split()}
    if conversation.wa_id:
        terms.add(conversation.wa_id.lower())
    terms.discard("")
    return sorted(terms)


def purpose_terms(conversation: Conversation) -> list[str]:
    """``purpose:state``, ``purpose:*`` and ``*:state`` for each purpose in the cached consent
    (indexed as ``_purposes``)."""
    terms: set[str] = set()
    for purpose, status in conversation.consent.items():
        terms |= {f"{purpose}:{status.state}", f"{purpose}:*", f"*:{status.state}"}
    return sorted(terms)


def purpose_term(query: ConversationQuery) -> str:
    """The one :func:`purpose_terms` element a query's purpose filters ask for ("" = no filter)."""
    if not query.purpose and not query.purpose_state:
        return ""
    return f"{query.purpose or '*'}:{query.purpose_state or '*'}"


def subject_ids(conversation: Conversation) -> list[str]:
    """The keys :meth:`Conversations.by_subject` finds a conversation by (indexed as ``_ids``)."""
    return sorted({conversation.subject, *([conversation.wa_id] if conversation.wa_id else [])})


def prefix_range(prefix: str) -> tuple[str, str]:
    """``[low, high)`` bounds holding exactly the strings that start with ``prefix`` (non-empty):
    an index range scan, unlike a regular expression on some servers."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)
