"""How one outbound transcript entry reads on the console's timeline."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.core.messages import Button, Category, Outbound, OutboundKind, TemplateRef
from bot.store.base import OutState, TranscriptEntry
from bot.web.console_views import entry_item

AT = datetime(2027, 10, 30, 9, 0, tzinfo=UTC)
QUESTION = Outbound(
    "34600111222", OutboundKind.BUTTONS, "Do you still want them?", buttons=(Button("refresh_yes", "Yes"),),
    category=Category.UTILITY, template_id="consent_refresh", fallback=TemplateRef("consent_refresh", "es"),
)


def entry(reason: str, state: OutState = OutState.ACCEPTED) -> TranscriptEntry:
    return TranscriptEntry("e1", "1:34600111222", "34600111222", "out", 9, AT, outbound=QUESTION,
                           out_state=state, reason=reason)


def test_a_message_sent_as_its_approved_template_says_so() -> None:
    item = entry_item(entry("allowed_fallback"))
    assert "sent as approved template consent_refresh" in item.meta
    assert item.body.startswith("Do you still want them?")
    assert "sent as approved template consent_refresh" not in entry_item(entry("allowed_in_window")).meta


def test_a_blocked_message_gives_the_gates_reason() -> None:
    item = entry_item(entry("window_closed_no_template", OutState.BLOCKED))
    assert item.ticks == "blocked" and "the 24-hour window is closed" in item.detail
