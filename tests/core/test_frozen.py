"""bot.core.frozen: evolve gives what dataclasses.replace gives; quick_init builds what dataclass's own
__init__ builds."""

from __future__ import annotations

import dataclasses
import gc
import importlib
import inspect
from datetime import UTC, datetime

import pytest

from bot.core.conversation import Conversation, Timer
from bot.core.frozen import ORIGINAL_INITS, _draft, evolve, quick_init
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


@dataclasses.dataclass(frozen=True, slots=True)
class Checked:
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must be >= 0")


@dataclasses.dataclass(slots=True)
class Mutable:
    n: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class KeywordOnly:
    n: int


def test_classes_with_post_init_or_not_frozen_use_replace() -> None:
    with pytest.raises(ValueError, match="n must be"):
        evolve(Checked(1), n=-1)
    assert evolve(Mutable(1), n=2) == Mutable(2)
    assert evolve(Outbound("346", OutboundKind.TEXT, "x"), category=Category.UTILITY).category is Category.UTILITY


HOT_MODULES = ("bot.core.messages", "bot.core.conversation", "bot.core.consent", "bot.core.policy", "bot.core.engine",
               "bot.core.rendering", "bot.store.base", "bot.runtime.turn", "bot.whatsapp.client",
               "bot.whatsapp.payloads")


def _accelerated() -> list[type]:
    for name in HOT_MODULES:
        importlib.import_module(name)
    return sorted(ORIGINAL_INITS, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _slots(obj: object) -> list[object]:
    return [getattr(obj, f.name) for f in dataclasses.fields(obj)]  # type: ignore[arg-type]


def test_every_value_class_marked_quick_init_was_accelerated() -> None:
    marked = 0
    for name in HOT_MODULES:
        module = importlib.import_module(name)
        marked += inspect.getsource(module).count("@quick_init\n")
    assert len(_accelerated()) == marked >= 30


@pytest.mark.parametrize("cls", _accelerated(), ids=lambda c: c.__qualname__)
def test_quick_init_builds_what_the_dataclass_init_builds(cls: type) -> None:
    fields = dataclasses.fields(cls)
    required = [f for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    args = {f.name: object() for f in required}  # no value class checks its arguments: any object will do
    original = ORIGINAL_INITS[cls]

    def by_dataclass(*a: object, **kw: object) -> object:
        obj = object.__new__(cls)
        original(obj, *a, **kw)
        return obj

    fast, slow = cls(**args), by_dataclass(**args)
    assert _slots(fast) == _slots(slow)  # defaults shared, factories called afresh
    for f in fields:
        if f.default_factory is not dataclasses.MISSING and isinstance(getattr(fast, f.name), dict | list):
            assert getattr(fast, f.name) is not getattr(cls(**args), f.name)  # a new one per instance
    everything = {f.name: object() for f in fields}
    assert _slots(cls(*everything.values())) == list(everything.values())  # positional, in field order
    assert _slots(cls(**everything)) == _slots(by_dataclass(**everything))
    with pytest.raises(TypeError):
        cls(**args, no_such_field=1)
    if required:
        with pytest.raises(TypeError):
            cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(fast, fields[0].name, 1)
    assert [p.name for p in inspect.signature(cls).parameters.values()] == [f.name for f in fields]


def test_quick_init_leaves_other_classes_alone() -> None:
    for cls in (Checked, Mutable, KeywordOnly):
        init = cls.__init__
        assert quick_init(cls) is cls and cls.__init__ is init and cls not in ORIGINAL_INITS
    with pytest.raises(ValueError, match="n must be"):
        Checked(-1)


def test_values_built_through_a_draft_are_ordinary_frozen_values() -> None:
    conv = Conversation.start("1", "346", "consent", "v1", "start", "en", NOW)
    for value in (conv, evolve(conv, state="x"), TranscriptEntry("e", "1:346", "346", "out", 1, NOW)):
        assert type(value) in (Conversation, TranscriptEntry)
        assert gc.is_tracked(value)
        with pytest.raises(dataclasses.FrozenInstanceError):
            value.subject = "other"  # type: ignore[misc]
    assert evolve(conv, state="x").__class__ is Conversation and hash(Timer("a", NOW)) == hash(Timer("a", NOW))


@dataclasses.dataclass(frozen=True, slots=True)
class Wider(Conversation):  # a subclass: its own layout, so Conversation's __init__ must not use the draft
    extra: int = 0


def test_a_subclass_instance_is_filled_through_the_setters() -> None:
    wide = object.__new__(Wider)
    Conversation.__init__(wide, *_slots(Conversation.start("1", "346", "consent", "v1", "start", "en", NOW)))
    assert type(wide) is Wider and wide.subject == "346"


@dataclasses.dataclass(frozen=True, slots=True, weakref_slot=True)
class WithWeakref:
    a: int
    b: int
    c: int
    d: int


def test_a_layout_the_draft_cannot_match_is_refused() -> None:
    assert _draft(WithWeakref, dataclasses.fields(WithWeakref)) is None
    assert evolve(WithWeakref(1, 2, 3, 4), a=9) == WithWeakref(9, 2, 3, 4)
