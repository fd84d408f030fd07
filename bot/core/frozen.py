"""``dataclasses.replace`` for the frozen, slotted value classes, in about half the time.

Every step builds new conversation heads and transcript entries from old ones, several times per
message (``bench/pipeline.py``). :func:`evolve` copies the slots directly instead of calling the
generated ``__init__`` field by field; it gives the same value as :func:`dataclasses.replace` for a
frozen, slotted dataclass whose fields are all ``init`` fields and which has no ``__post_init__``
(every value class in ``bot.core`` and ``bot.store``), and falls back to ``replace`` for any other.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

_set = object.__setattr__
_plans: dict[type, tuple[tuple[str, ...], frozenset[str]] | None] = {}


def _plan(cls: type) -> tuple[tuple[str, ...], frozenset[str]] | None:
    """The slots to copy (in order and as a set), or None when ``replace`` must be used."""
    fields = dataclasses.fields(cls)
    slots = getattr(cls, "__slots__", ())
    params = getattr(cls, "__dataclass_params__", None)
    simple = (
        params is not None
        and params.frozen
        and not hasattr(cls, "__post_init__")
        and all(f.init for f in fields)
        and tuple(f.name for f in fields) == tuple(slots)
    )
    return (tuple(slots), frozenset(slots)) if simple else None


def evolve(obj: T, /, **changes: Any) -> T:
    """A copy of ``obj`` with ``changes``; the same result as ``dataclasses.replace(obj, **changes)``."""
    cls = type(obj)
    try:
        plan = _plans[cls]
    except KeyError:
        plan = _plans[cls] = _plan(cls)
    if plan is None or not plan[1].issuperset(changes):
        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]  # raises for unknown fields
    names = plan[0]
    new = object.__new__(cls)
    for name in names:
        _set(new, name, changes[name] if name in changes else getattr(obj, name))
    return new
