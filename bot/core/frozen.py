"""Faster construction and copying for the frozen, slotted value classes.

Every message builds new conversation heads, transcript entries and messages, several times each
(``bench/pipeline.py``). A frozen dataclass's generated ``__init__`` and :func:`dataclasses.replace` set
every field through ``object.__setattr__``. The code made here is straight-line, compiled once per
class (and, for :func:`evolve`, per set of changed fields): it fills a *draft*, a plain class with
exactly the same slots, with ordinary attribute stores, then makes the draft an instance of the value
class by ``__class__`` assignment (Python allows it between classes of the same layout). The value is
as frozen as any other. A Conversation copy takes about a fifth of ``replace``'s time; the whole
service executes about 6 % fewer instructions per message (``bench/instructions.py``). Classes with
fewer than :data:`DRAFT_FIELDS` fields, or a layout the draft cannot match, have each slot set through
its own descriptor instead.

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

_evolvers: dict[tuple[Any, ...], Callable[..., Any]] = {}  # (class, *changed field names) -> its copier
_NOTHING = object()  # "no argument": the field's default factory is called
ORIGINAL_INITS: dict[type, Callable[..., None]] = {}  # the ``__init__`` dataclass wrote (tests compare)
DRAFT_FIELDS = 3  # from this many fields, a draft and two class switches beat one setter call per field


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


_DRAFTS: dict[type, type | None] = {}
_SET_CLASS = object.__dict__["__class__"].__set__  # a frozen class's own __setattr__ refuses even __class__


def _draft(cls: type, fields: tuple[dataclasses.Field[Any], ...]) -> type | None:
    """A plain class with exactly ``cls``'s slots: a value is filled in as a draft, with ordinary
    attribute stores, and then becomes a ``cls`` (``__class__`` assignment, which Python allows between
    classes of the same layout). None when the layouts differ (the setters are used instead)."""
    if cls in _DRAFTS:
        return _DRAFTS[cls]
    made = type(f"{cls.__name__}Draft", (), {"__slots__": tuple(f.name for f in fields)})
    draft: type | None = made
    try:
        _SET_CLASS(object.__new__(made), cls)
    except TypeError:
        draft = None
    _DRAFTS[cls] = draft
    return draft


def _replacer(obj: Any, **changes: Any) -> Any:
    return dataclasses.replace(obj, **changes)  # raises for unknown fields


def _evolver(cls: type, names: tuple[str, ...]) -> Callable[..., Any]:
    """The copier of ``cls`` values that changes exactly ``names``: straight-line code, one store per
    field (``dataclasses.replace`` for a class this module cannot handle, or unknown names)."""
    fields = _fields(cls)
    field_names = {f.name for f in fields} if fields is not None else set()
    if fields is None or not set(names) <= field_names or {"_o", "_n"} & field_names:
        return _replacer
    draft = _draft(cls, fields)
    source = [f"def _evolve(_o, {', '.join(names)}):" if names else "def _evolve(_o):"]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_draft": draft, "_set_class": _SET_CLASS}
    if draft is not None:
        source.append("    _n = _new(_draft)")
        source += [f"    _n.{f.name} = {f.name if f.name in names else '_o.' + f.name}" for f in fields]
        source.append("    _set_class(_n, _cls)")
    else:
        namespace.update(_setters(cls, fields))
        source.append("    _n = _new(_cls)")
        source += [f"    _s_{f.name}(_n, {f.name if f.name in names else '_o.' + f.name})" for f in fields]
    source.append("    return _n")
    return _compile("_evolve", source, namespace)  # type: ignore[no-any-return]


def evolve(obj: T, /, **changes: Any) -> T:
    """A copy of ``obj`` with ``changes``; the same result as ``dataclasses.replace(obj, **changes)``."""
    key = (type(obj), *changes)
    copier = _evolvers.get(key)
    if copier is None:
        copier = _evolvers[key] = _evolver(type(obj), tuple(changes))
    result: T = copier(obj, **changes)
    return result


def quick_init(cls: C) -> C:
    """Give a frozen, slotted dataclass a faster ``__init__`` with the same signature (see above)."""
    fields = _fields(cls)
    if fields is None:
        return cls
    namespace: dict[str, Any] = {"_NOTHING": _NOTHING, "_cls": cls, "_set_class": _SET_CLASS, **_setters(cls, fields)}
    params, values = [], []
    for f in fields:
        n = f.name
        if f.default is not dataclasses.MISSING:
            namespace[f"_d_{n}"] = f.default
            params.append(f"{n}=_d_{n}")
            values.append((n, n))
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_f_{n}"] = f.default_factory
            params.append(f"{n}=_NOTHING")
            values.append((n, f"_f_{n}() if {n} is _NOTHING else {n}"))
        else:
            params.append(n)
            values.append((n, n))
    by_setter = [f"_s_{n}(self, {v})" for n, v in values]
    draft = _draft(cls, fields) if len(fields) >= DRAFT_FIELDS and "self" not in {f.name for f in fields} else None
    if draft is None:
        body = [f"    {line}" for line in by_setter] or ["    pass"]
    else:  # a subclass's instance keeps the setters (its layout is not the draft's)
        namespace["_draft"] = draft
        body = [
            "    if type(self) is _cls:",
            "        _set_class(self, _draft)",
            *(f"        self.{n} = {v}" for n, v in values),
            "        _set_class(self, _cls)",
            "    else:",
            *(f"        {line}" for line in by_setter),
        ]
    init = _compile("__init__", [f"def __init__(self, {', '.join(params)}):", *body], namespace)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    original = cls.__dict__["__init__"]
    init.__doc__ = original.__doc__
    ORIGINAL_INITS[cls] = original
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses a direct assignment to __init__
    return cls
