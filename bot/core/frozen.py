"""Faster construction and copying for the frozen, slotted value classes.

Every message builds new conversation heads, transcript entries and messages, several times each
(``bench/pipeline.py``). A frozen dataclass's generated ``__init__`` and :func:`dataclasses.replace` set
every field through ``object.__setattr__``; the code made here sets each slot through its own
descriptor, in straight-line code compiled once per class, in about half the time.

- :func:`evolve` gives the same value as ``dataclasses.replace(obj, **changes)``.
- :func:`quick_init` (a class decorator, above ``@dataclass(frozen=True, slots=True)``) gives the class
  an ``__init__`` with the same signature, defaults and default factories as the one ``dataclass``
  wrote.

Both apply to a frozen, slotted dataclass whose fields are all ``init`` fields, none keyword-only, and
which has no ``__post_init__`` (every value class in ``bot.core`` and ``bot.store``); for any other
class :func:`evolve` falls back to ``replace`` and :func:`quick_init` leaves the class as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound=type)

_Evolver = Callable[[Any, dict[str, Any]], Any]
_evolvers: dict[type, tuple[_Evolver, frozenset[str]] | None] = {}
_NOTHING = object()  # "no argument": the field's default factory is called
ORIGINAL_INITS: dict[type, Callable[..., None]] = {}  # the ``__init__`` dataclass wrote (tests compare)


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...] | None:
    """The fields, when the generated code can stand in for ``dataclass``'s own; else None."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        return None
    fields = dataclasses.fields(cls)
    simple = (
        not hasattr(cls, "__post_init__")
        and all(f.init and not f.kw_only for f in fields)
        and tuple(f.name for f in fields) == tuple(getattr(cls, "__slots__", ()))
    )
    return fields if simple else None


def _setters(cls: type, fields: tuple[dataclasses.Field[Any], ...]) -> dict[str, Any]:
    return {f"_s_{f.name}": cls.__dict__[f.name].__set__ for f in fields}


def _compile(name: str, source: list[str], namespace: dict[str, Any]) -> Any:
    exec("\n".join(source), namespace)  # noqa: S102 - code built here from field names only
    return namespace[name]


def _evolver(cls: type) -> tuple[_Evolver, frozenset[str]] | None:
    fields = _fields(cls)
    if fields is None:
        return None
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, **_setters(cls, fields)}
    source = ["def _evolve(obj, changes):", "    new = _new(_cls)"]
    for f in fields:
        n = f.name
        source.append(f"    _s_{n}(new, changes[{n!r}] if {n!r} in changes else obj.{n})")
    source.append("    return new")
    return _compile("_evolve", source, namespace), frozenset(f.name for f in fields)


def evolve(obj: T, /, **changes: Any) -> T:
    """A copy of ``obj`` with ``changes``; the same result as ``dataclasses.replace(obj, **changes)``."""
    cls = type(obj)
    try:
        plan = _evolvers[cls]
    except KeyError:
        plan = _evolvers[cls] = _evolver(cls)
    if plan is None or not changes.keys() <= plan[1]:
        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]  # raises for unknown fields
    result: T = plan[0](obj, changes)
    return result


def quick_init(cls: C) -> C:
    """Give a frozen, slotted dataclass a faster ``__init__`` with the same signature (see above)."""
    fields = _fields(cls)
    if fields is None:
        return cls
    namespace: dict[str, Any] = {"_NOTHING": _NOTHING, **_setters(cls, fields)}
    params, body = [], []
    for f in fields:
        n = f.name
        if f.default is not dataclasses.MISSING:
            namespace[f"_d_{n}"] = f.default
            params.append(f"{n}=_d_{n}")
            body.append(f"    _s_{n}(self, {n})")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_f_{n}"] = f.default_factory
            params.append(f"{n}=_NOTHING")
            body.append(f"    _s_{n}(self, _f_{n}() if {n} is _NOTHING else {n})")
        else:
            params.append(n)
            body.append(f"    _s_{n}(self, {n})")
    init = _compile("__init__", [f"def __init__(self, {', '.join(params)}):", *(body or ["    pass"])], namespace)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    original = cls.__dict__["__init__"]
    init.__doc__ = original.__doc__
    ORIGINAL_INITS[cls] = original
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses a direct assignment to __init__
    return cls
