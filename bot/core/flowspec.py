"""Flow files (YAML) as frozen values, with errors that point at a path and a line.

:func:`read_flow` parses and validates a flow document and returns every problem it found (for the
linter); :func:`load_flow` returns the :class:`FlowSpec` or raises :class:`bot.errors.FlowError` for the
first error. Paths look like ``states.confirm.on[2]``; lines come from the YAML node marks.
``docs/flows.md`` describes the format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import yaml

from bot.core.flow_schema import FLOW_SCHEMA
from bot.core.intents import ANSWER_WORDS, BuiltinIntent, builtin_intent, match_form
from bot.core.messages import Category
from bot.core.turn import ACTIONS, GUARDS
from bot.errors import FlowError

OPTED_OUT = "opted_out"  # the state the engine adds to every flow: where an opt-out leads
INBOUND = "inbound"  # the trigger for any inbound a state does not otherwise understand
META_STOP = "meta_stop"  # Meta's "stop promotions" / error 131050
RESERVED_TRIGGERS: frozenset[str] = frozenset(
    {*(str(i) for i in BuiltinIntent), META_STOP, "migrate", "trigger", "turn", "state", "may_trigger"}
)
SETTINGS_DURATIONS: frozenset[str] = frozenset(
    {"confirm_expiry", "confirm_reminder", "decline_cooloff", "consent_refresh"}
)


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of the checker: ``file:line: severity: message (hint: ...)``."""

    file: str
    line: int
    severity: str  # "error" | "warning"
    message: str
    hint: str = ""
    path: str = ""

    def format(self) -> str:
        hint = f" (hint: {self.hint})" if self.hint else ""
        at = f" [{self.path}]" if self.path else ""
        return f"{self.file}:{self.line}: {self.severity}: {self.message}{at}{hint}"


@dataclass(frozen=True, slots=True)
class SendSpec:
    """One message a state or transition sends. ``fallback`` names an approved WhatsApp template
    (``whatsapp_templates.yaml``) that carries the message when the 24-hour window has closed."""

    template: str
    category: Category | None = None
    purpose: str = ""
    path: str = ""
    fallback: str = ""


@dataclass(frozen=True, slots=True)
class TimerSpec:
    trigger: str
    # "12h", "30m", "2d", "45s" or a Project setting (confirm_expiry, confirm_reminder, decline_cooloff,
    # consent_refresh)
    after: str
    path: str = ""


@dataclass(frozen=True, slots=True)
class TransitionSpec:
    """``dest`` is ``None`` for an internal transition (no state change, no entry messages)."""

    trigger: str
    source: str  # a state name, or "*" for ``anywhere`` transitions
    dest: str | None
    when: tuple[str, ...] = ()
    do: tuple[str, ...] = ()
    send: tuple[SendSpec, ...] = ()
    keywords: tuple[str, ...] = ()
    number: bool = False
    quiet: bool = False
    path: str = ""


@dataclass(frozen=True, slots=True)
class StateSpec:
    name: str
    send: tuple[SendSpec, ...] = ()
    timers: tuple[TimerSpec, ...] = ()
    on: tuple[TransitionSpec, ...] = ()
    description: str = ""
    path: str = ""


@dataclass(frozen=True, slots=True)
class FlowSpec:
    id: str
    version: str
    locales: tuple[str, ...]
    default_locale: str
    purposes: tuple[str, ...] | None  # None = every purpose of the project
    initial: str
    optin: str
    states: dict[str, StateSpec]
    keywords: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    anywhere: tuple[TransitionSpec, ...] = ()
    sample: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    file: str = ""
    lines: dict[str, int] = field(default_factory=dict)

    def line(self, path: str) -> int:
        """The line of ``path`` in the source, or of its nearest ancestor (1 if unknown)."""
        p = path
        while p:
            if p in self.lines:
                return self.lines[p]
            cut = max(p.rfind("."), p.rfind("["))
            p = p[:cut] if cut > 0 else ""
        return 1

    def transitions(self) -> tuple[TransitionSpec, ...]:
        """Every declared transition: the states' ``on`` lists, then ``anywhere``."""
        return tuple(t for s in self.states.values() for t in s.on) + self.anywhere

    def triggers_in(self, state: str) -> tuple[TransitionSpec, ...]:
        spec = self.states.get(state)
        return (spec.on if spec is not None else ()) + self.anywhere


class FlowLoader(yaml.SafeLoader):
    """YAML 1.2-style booleans: only ``true``/``false`` are booleans, so ``on:``, ``yes`` and ``no``
    stay strings (flows use ``on:`` for transitions and ``yes``/``no`` as keyword classes)."""


FlowLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
FlowLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """Parse YAML with :class:`FlowLoader`."""
    return yaml.load(text, Loader=FlowLoader)  # noqa: S506 - FlowLoader is a SafeLoader


# --- YAML nodes -> path/line map -------------------------------------------------------------------
def _walk(node: yaml.Node, path: str, lines: dict[str, int], dups: list[tuple[str, int]]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            child = f"{path}.{name}" if path else name
            if name in seen:
                dups.append((child, key.start_mark.line + 1))
            seen.add(name)
            lines.setdefault(child, key.start_mark.line + 1)
            _walk(value, child, lines, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = f"{path}[{i}]"
            lines.setdefault(child, item.start_mark.line + 1)
            _walk(item, child, lines, dups)


def node_lines(text: str) -> dict[str, int]:
    """Map every path of a YAML document (``a.b[2].c``) to its 1-based line. Raises ``yaml.YAMLError``."""
    node = yaml.compose(text, Loader=FlowLoader)
    lines: dict[str, int] = {}
    if node is not None:
        _walk(node, "", lines, [])
    return lines


def _json_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Reader:
    def __init__(self, file: str, lines: dict[str, int]) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[Problem] = []

    def line(self, path: str) -> int:
        p = path
        while p:
            if p in self.lines:
                return self.lines[p]
            cut = max(p.rfind("."), p.rfind("["))
            p = p[:cut] if cut > 0 else ""
        return 1

    def error(self, path: str, message: str, hint: str = "") -> None:
        self.problems.append(Problem(self.file, self.line(path), "error", message, hint, path))

    def sends(self, items: list[Any], path: str) -> tuple[SendSpec, ...]:
        out: list[SendSpec] = []
        for i, item in enumerate(items):
            p = f"{path}[{i}]"
            if isinstance(item, str):
                out.append(SendSpec(item, path=p))
                continue
            category = Category(item["category"]) if "category" in item else None
            purpose = str(item.get("purpose", ""))
            if category is Category.MARKETING and not purpose:
                self.error(p, "a marketing message needs a purpose", "add `purpose: <purpose id>`")
            if purpose and category is not Category.MARKETING:
                self.error(p, "`purpose` is only for marketing messages", "add `category: marketing`")
            out.append(SendSpec(item["template"], category, purpose, p, str(item.get("fallback", ""))))
        return tuple(out)

    def transition(self, raw: dict[str, Any], source: str, path: str) -> TransitionSpec:
        internal = bool(raw.get("internal", False))
        dest = raw.get("dest")
        if internal and dest is not None:
            self.error(f"{path}.dest", "an internal transition has no `dest`", "remove `dest` or `internal`")
        if not internal and dest is None:
            self.error(path, f"transition `{raw['trigger']}` needs a `dest`", "or mark it `internal: true`")
        if raw["trigger"] in RESERVED_TRIGGERS:
            self.error(
                f"{path}.trigger",
                f"trigger `{raw['trigger']}` is built in and cannot be declared",
                "opt-out, re-subscribe, help, human and data-rights keywords work in every state already",
            )
        for i, g in enumerate(raw.get("when", [])):
            if g not in GUARDS:
                self.error(f"{path}.when[{i}]", f"unknown guard `{g}`", "one of: " + ", ".join(sorted(GUARDS)))
        for i, a in enumerate(raw.get("do", [])):
            if a not in ACTIONS:
                self.error(f"{path}.do[{i}]", f"unknown action `{a}`", "one of: " + ", ".join(sorted(ACTIONS)))
        return TransitionSpec(
            trigger=raw["trigger"],
            source=source,
            dest=None if internal else dest,
            when=tuple(raw.get("when", ())),
            do=tuple(raw.get("do", ())),
            send=self.sends(raw.get("send", []), f"{path}.send"),
            keywords=tuple(raw.get("keywords", ())),
            number=bool(raw.get("number", False)),
            quiet=bool(raw.get("quiet", False)),
            path=path,
        )


def read_flow(text: str, file: str = "") -> tuple[FlowSpec | None, list[Problem]]:
    """Parse and validate a flow document. Returns the spec (``None`` when it cannot be built) and every
    problem found; a spec is only returned when there is no error."""
    try:
        node = yaml.compose(text, Loader=FlowLoader)
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [Problem(file, line, "error", f"not valid YAML: {problem}")]
    lines: dict[str, int] = {}
    dups: list[tuple[str, int]] = []
    if node is not None:
        _walk(node, "", lines, dups)
    r = _Reader(file, lines)
    for path, line in dups:
        r.problems.append(Problem(file, line, "error", f"duplicate key `{path.rsplit('.', 1)[-1]}`", "", path))
    if not isinstance(data, dict):
        r.error("", "a flow file must be a mapping", "start with `id:`, `version:`, `states:`")
        return None, r.problems
    validator = jsonschema.Draft202012Validator(FLOW_SCHEMA)
    schema_errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    for err in schema_errors:
        path = _json_path(err.absolute_path)
        r.error(path, f"schema: {err.message}", _schema_hint(err))
    if schema_errors:
        return None, r.problems

    locales = tuple(data["locales"])
    default_locale = data.get("default_locale", locales[0])
    if default_locale not in locales:
        r.error("default_locale", f"default locale `{default_locale}` is not in `locales`")
    raw_purposes = data.get("purposes", "all")
    purposes = None if raw_purposes == "all" else tuple(raw_purposes)

    keywords: dict[str, dict[str, tuple[str, ...]]] = {}
    for cls, per_locale in data.get("keywords", {}).items():
        keywords[cls] = {}
        for loc, words in per_locale.items():
            if loc not in locales:
                r.error(f"keywords.{cls}.{loc}", f"locale `{loc}` is not one of the flow's locales")
            for i, w in enumerate(words):
                hit = builtin_intent(str(w))
                if hit is not None:
                    r.error(
                        f"keywords.{cls}.{loc}[{i}]",
                        f"keyword `{w}` is taken by the built-in `{hit}` keywords",
                        "built-in keywords are matched first in every state; pick another word",
                    )
            keywords[cls][loc] = tuple(str(w) for w in words)

    states: dict[str, StateSpec] = {}
    for name, declared in data["states"].items():
        raw = declared or {}
        path = f"states.{name}"
        if name == OPTED_OUT:
            r.error(path, f"state `{OPTED_OUT}` is built in and cannot be declared", "every opt-out leads there")
        timers: list[TimerSpec] = []
        for i, t in enumerate(raw.get("timers", [])):
            tp = f"{path}.timers[{i}]"
            after = str(t["after"])
            if not after[0].isdigit() and after not in SETTINGS_DURATIONS:
                r.error(
                    f"{tp}.after",
                    f"unknown duration `{after}`",
                    "use 45s, 30m, 12h, 2d or " + ", ".join(sorted(SETTINGS_DURATIONS)),
                )
            if t["trigger"] in RESERVED_TRIGGERS:
                r.error(f"{tp}.trigger", f"trigger `{t['trigger']}` is built in")
            timers.append(TimerSpec(t["trigger"], after, tp))
        on = tuple(r.transition(t, name, f"{path}.on[{i}]") for i, t in enumerate(raw.get("on", [])))
        states[name] = StateSpec(
            name=name,
            send=r.sends(raw.get("send", []), f"{path}.send"),
            timers=tuple(timers),
            on=on,
            description=str(raw.get("description", "")),
            path=path,
        )
    anywhere = tuple(r.transition(t, "*", f"anywhere[{i}]") for i, t in enumerate(data.get("anywhere", [])))

    names = set(states) | {OPTED_OUT}
    for key in ("initial", "optin"):
        if data[key] not in states:
            r.error(key, f"`{key}` names unknown state `{data[key]}`", "declare it under `states:`")
    for t in (*(t for s in states.values() for t in s.on), *anywhere):
        if t.dest is not None and t.dest not in names:
            r.error(f"{t.path}.dest", f"unknown state `{t.dest}`", "declare it under `states:`")
        for i, k in enumerate(t.keywords):
            if k not in keywords:
                r.error(f"{t.path}.keywords[{i}]", f"unknown keyword class `{k}`", "declare it under `keywords:`")
            elif t.source == "*":
                for words in keywords[k].values():
                    bad = [w for w in words if match_form(w) in ANSWER_WORDS]
                    if bad:
                        r.error(
                            f"{t.path}.keywords[{i}]",
                            f"answer word `{bad[0]}` cannot be a global keyword",
                            "YES/NO-like words are only valid as the answer to one prompt; attach them to a state",
                        )
                        break
    if any(p.severity == "error" for p in r.problems):
        return None, r.problems
    spec = FlowSpec(
        id=data["id"],
        version=str(data["version"]),
        locales=locales,
        default_locale=default_locale,
        purposes=purposes,
        initial=data["initial"],
        optin=data["optin"],
        states=states,
        keywords=keywords,
        anywhere=anywhere,
        sample=dict(data.get("sample", {})),
        description=str(data.get("description", "")),
        file=file,
        lines=lines,
    )
    return spec, r.problems


def _schema_hint(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        return "check the spelling against docs/flows.md"
    if err.validator == "pattern":
        return "names are lower_snake_case; durations look like 30m, 12h, 2d"
    if err.validator == "required":
        return "see docs/flows.md for the required keys"
    return ""


def load_flow(text: str, file: str = "") -> FlowSpec:
    """Parse a flow document or raise :class:`FlowError` for its first error (with path and line)."""
    spec, problems = read_flow(text, file)
    errors = [p for p in problems if p.severity == "error"]
    if spec is None or errors:
        first = errors[0] if errors else Problem(file, 1, "error", "flow could not be read")
        raise FlowError(first.message, path=first.path, file=file, line=first.line)
    return spec


def parse_mapping(data: Mapping[str, Any], file: str = "") -> FlowSpec:
    """Build a spec from an already-parsed mapping (no line numbers)."""
    return load_flow(yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True), file)
