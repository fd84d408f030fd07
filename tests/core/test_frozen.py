"""bot.core.frozen.evolve gives what dataclasses.replace gives."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from bot.core.conversation import Conversation, Timer
from bot.core.frozen import evolve
from bot.core.messages import Button, Category, Outbound, OutboundKind
from bot.store.base import OutState, TranscriptEntry

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "changes"),
    [
        (Conversation.start("1", "346", "consent", "v1", "start", "en", NOW), {"state": "x", "version": 2}),
        (Conversation.start("1", "346", "consent", "v1", "start", "en", NOW), {}),
        (Outbound("346", OutboundKind.BUTTONS, "hi", buttons=(Button("a", "A"),)), {"to": "347"}),
        (TranscriptEntry("e", "1:346", "346", "out", 1, NOW), {"out_state": OutState.SENDING, "attempts": 3}),
        (Timer("expire", NOW), {"name": "remind"}),
    ],
)
def test_same_as_replace(value: object, changes: dict[str, object]) -> None:
    got = evolve(value, **changes)
    assert got == dataclasses.replace(value, **changes)  # type: ignore[type-var]
    assert got is not value and type(got) is type(value)
    assert all(getattr(got, k) is v for k, v in changes.items())


def test_unknown_field_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        evolve(Timer("expire", NOW), nope=1)


def test_classes_with_post_init_or_not_frozen_use_replace() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("n must be >= 0")

    @dataclasses.dataclass(slots=True)
    class Mutable:
        n: int

    with pytest.raises(ValueError, match="n must be"):
        evolve(Checked(1), n=-1)
    assert evolve(Mutable(1), n=2) == Mutable(2)
    assert evolve(Outbound("346", OutboundKind.TEXT, "x"), category=Category.UTILITY).category is Category.UTILITY
