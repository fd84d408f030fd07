"""A :class:`FlowSpec` compiled to ONE synchronous ``transitions.Machine`` per flow version.

The machine has one long-lived model. :meth:`CompiledFlow.fire` sets the model's state from the
conversation record, fires the trigger and reads the state back (about 16 µs on the reference machine);
conversations are never registered as models. Callbacks do no I/O: guards read the :class:`Turn`, actions
change it. The built-ins every flow has whatever its author wrote are added here: ``optout`` and
``meta_stop`` lead from every state to :data:`OPTED_OUT`, ``resubscribe`` to the flow's ``optin`` state,
and ``help``/``human``/``export``/``erase`` are internal transitions in every state.

Not thread-safe: one ``decide`` at a time per compiled flow (the runtime runs on one event loop).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import timedelta

from transitions import Machine

from bot.core.flowspec import INBOUND, META_STOP, OPTED_OUT, FlowSpec, TransitionSpec
from bot.core.intents import BuiltinIntent, match_form
from bot.core.project import Project
from bot.core.rendering import TemplateSet
from bot.core.turn import ACTIONS, GUARDS, Turn
from bot.errors import FlowError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+)([smhd])")
_DURATIONS: dict[str, timedelta] = {}  # the literal durations already parsed (a flow has a handful)


CONSENT_REFRESH = "consent_refresh"
REFRESH_LEAD_DAYS = 30  # the refresh question goes this long before consent goes stale


def duration(after: str, project: Project) -> timedelta:
    """A timer's ``after`` as a timedelta: ``45s``/``30m``/``12h``/``2d`` or a Project setting name.

    ``consent_refresh`` is ``retention.consent_refresh_days`` less :data:`REFRESH_LEAD_DAYS` (at most
    half of it); the engine counts it from the oldest consent still granted, not from now."""
    if after == CONSENT_REFRESH:
        days = project.retention.consent_refresh_days
        return timedelta(days=days - min(REFRESH_LEAD_DAYS, days // 2))
    if after == "confirm_expiry":
        return timedelta(hours=project.confirm_expiry_hours)
    if after == "confirm_reminder":
        return timedelta(hours=project.confirm_expiry_hours) / 2
    if after == "decline_cooloff":
        return timedelta(days=project.decline_cooloff_days)
    known = literal_duration(after)
    if known is None:
        raise FlowError(f"unknown duration `{after}`")
    return known


def literal_duration(text: str) -> timedelta | None:
    """``45s``/``30m``/``12h``/``2d`` as a timedelta, or None when ``text`` is not one."""
    known = _DURATIONS.get(text)
    if known is not None:
        return known
    m = _DURATION.fullmatch(text)
    if m is None:
        return None
    if len(_DURATIONS) >= 256:
        _DURATIONS.clear()
    known = _DURATIONS[text] = timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    return known


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions naturally: "2" < "10", "1.2" < "1.10"."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-_]", version) if p)


class FlowModel:
    """The one model of a compiled flow. ``state`` is set before each trigger; ``turn`` is the scratch."""

    state: str
    turn: Turn | None

    def __init__(self) -> None:
        self.turn = None


class CompiledFlow:
    """One flow version, compiled: its spec, templates, machine and per-state trigger tables."""

    __slots__ = (
        "_events",
        "id",
        "keyword_index",
        "machine",
        "model",
        "number_trigger",
        "payload_triggers",
        "spec",
        "states",
        "templates",
        "version",
    )

    def __init__(self, spec: FlowSpec, templates: TemplateSet) -> None:
        self.spec = spec
        self.id = spec.id
        self.version = spec.version
        self.templates = templates
        self.states: frozenset[str] = frozenset(spec.states) | {OPTED_OUT}
        self.model = FlowModel()
        self.machine = Machine(
            model=self.model,
            states=sorted(self.states),
            initial=spec.initial,
            auto_transitions=False,
            ignore_invalid_triggers=True,
            send_event=False,
        )
        for t in spec.transitions():
            self._add(t)
        for t in builtin_transitions(spec):
            self._add(t)
        self._events = self.machine.events
        self.payload_triggers: dict[str, frozenset[str]] = {}
        self.keyword_index: dict[str, dict[str, str]] = {}
        self.number_trigger: dict[str, str] = {}
        for state in self.states:
            candidates = spec.triggers_in(state)
            self.payload_triggers[state] = frozenset(t.trigger for t in candidates)
            index: dict[str, str] = {}
            for t in candidates:
                for cls in t.keywords:
                    for words in spec.keywords.get(cls, {}).values():
                        for w in words:
                            index.setdefault(match_form(w), t.trigger)
                if t.number and state not in self.number_trigger:
                    self.number_trigger[state] = t.trigger
            self.keyword_index[state] = index

    def _add(self, t: TransitionSpec) -> None:
        model = self.model

        def guard(name: str) -> Callable[[], bool]:
            fn = GUARDS[name]

            def check() -> bool:
                assert model.turn is not None
                return fn(model.turn)

            return check

        def action(name: str) -> Callable[[], None]:
            fn = ACTIONS[name]

            def run() -> None:
                assert model.turn is not None
                fn(model.turn)

            return run

        def fired() -> None:
            assert model.turn is not None
            model.turn.fired = t

        self.machine.add_transition(
            t.trigger,
            "*" if t.source == "*" else t.source,
            t.dest,
            conditions=[guard(g) for g in t.when],
            after=[*(action(a) for a in t.do), fired],
        )

    def fire(self, state: str, trigger: str, turn: Turn) -> TransitionSpec | None:
        """Fire ``trigger`` from ``state``; returns the transition taken (``None``: none matched).
        The new state is ``self.model.state`` afterwards."""
        event = self._events.get(trigger)
        if event is None:
            return None
        model = self.model
        model.state = state
        model.turn = turn
        turn.trigger = trigger
        turn.fired = None
        try:
            event.trigger(model)
        finally:
            model.turn = None
        return turn.fired if isinstance(turn.fired, TransitionSpec) else None

    def has_trigger(self, state: str, trigger: str) -> bool:
        return trigger in self.payload_triggers.get(state, ())

    def __repr__(self) -> str:
        return f"CompiledFlow({self.id!r}, version={self.version!r})"


def builtin_transitions(spec: FlowSpec) -> tuple[TransitionSpec, ...]:
    """The transitions the engine adds to every flow (they cannot be removed)."""
    return (
        TransitionSpec(str(BuiltinIntent.OPTOUT), "*", OPTED_OUT, path="builtin.optout"),
        TransitionSpec(META_STOP, "*", OPTED_OUT, path="builtin.meta_stop"),
        TransitionSpec(str(BuiltinIntent.RESUBSCRIBE), "*", spec.optin, path="builtin.resubscribe"),
        *(
            TransitionSpec(str(i), "*", None, path=f"builtin.{i}")
            for i in (BuiltinIntent.HELP, BuiltinIntent.HUMAN, BuiltinIntent.EXPORT, BuiltinIntent.ERASE)
        ),
    )


class FlowFamily:
    """Every compiled version of one flow id. New conversations get :attr:`newest`."""

    __slots__ = ("id", "newest", "versions")

    def __init__(self, flows: Iterable[CompiledFlow]) -> None:
        items = list(flows)
        if not items:
            raise FlowError("a flow family needs at least one version")
        self.id = items[0].id
        self.versions: dict[str, CompiledFlow] = {}
        for f in items:
            if f.id != self.id:
                raise FlowError(f"flow `{f.id}` mixed with flow `{self.id}`")
            if f.version in self.versions:
                raise FlowError(f"flow `{f.id}` version `{f.version}` is declared twice", file=f.spec.file)
            self.versions[f.version] = f
        self.newest = max(items, key=lambda f: version_key(f.version))

    def get(self, version: str) -> CompiledFlow | None:
        return self.versions.get(version)


def compile_flow(spec: FlowSpec, templates: TemplateSet) -> CompiledFlow:
    """Compile one flow version (a new Machine: do this at start, never per message)."""
    return CompiledFlow(spec, templates)


__all__ = [
    "INBOUND",
    "CompiledFlow",
    "FlowFamily",
    "FlowModel",
    "builtin_transitions",
    "compile_flow",
    "duration",
    "literal_duration",
    "version_key",
]
