"""The flow checker behind ``consentbot flows check``: schema problems come from :mod:`flowspec`; this
module adds the lints that need the whole picture (states, templates, the project).

Errors: unreachable and dead-end states; a state without the built-in opt-out; purposes the project does
not declare; a missing template for a declared locale; a template that does not render with the
flow's sample context (undefined variable, syntax); a message over a WhatsApp limit; a marketing
template without the business name; a first-layer notice without the business, the policy link or
how to stop; an opt-out confirmation override that does not say how to come back.
Warnings: a button whose id does nothing in the state that shows it.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import Any

from bot.core.audience import fallback_template, find_declaration
from bot.core.conversation import PurposeState, PurposeStatus
from bot.core.flowspec import INBOUND, OPTED_OUT, FlowSpec, Problem, SendSpec
from bot.core.intents import BuiltinIntent
from bot.core.limits import RESERVED_PAYLOADS
from bot.core.machine import builtin_transitions, compile_flow
from bot.core.messages import Category
from bot.core.project import Project
from bot.core.rendering import CompiledTemplate, TemplateSet
from bot.core.standard_replies import BUILTIN_TEMPLATES, OPTOUT_CONFIRM
from bot.errors import CoreError

_BUILTIN_IDS = frozenset(str(i) for i in BuiltinIntent) | RESERVED_PAYLOADS
# Template variables that carry what one customer said or is called (docs/flows.md, "Variables").
PERSONAL_VARIABLES = frozenset({"profile_name", "slots"})


def sample_context(spec: FlowSpec, project: Project, locale: str) -> dict[str, Any]:
    """The context every template is rendered with by the checker: a conversation in the middle of the
    flow (first purpose granted, the others requested) plus the flow's ``sample:`` values."""
    from bot.core.engine import effective_purposes, message_context

    flow = _shell(spec)
    purposes = effective_purposes(flow, project)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    consent = {
        p: PurposeStatus(PurposeState.GRANTED if i == 0 else PurposeState.REQUESTED, now)
        for i, p in enumerate(purposes)
    }
    slots: dict[str, Any] = {"purpose_i": 0, "chosen": list(purposes), "frequency": "weekly"}
    ctx = message_context(flow, project, locale, slots, consent, purposes, "Ana")
    ctx.update(spec.sample)
    return ctx


class _Shell:
    """Just enough of a compiled flow for :func:`message_context` (no machine needed)."""

    def __init__(self, spec: FlowSpec) -> None:
        self.spec = spec


def _shell(spec: FlowSpec) -> Any:
    return _Shell(spec)


def _edges(spec: FlowSpec) -> dict[str, set[str]]:
    states = set(spec.states) | {OPTED_OUT}
    edges: dict[str, set[str]] = {s: set() for s in states}
    for state in spec.states.values():
        for t in state.on:
            if t.dest is not None:
                edges[state.name].add(t.dest)
    for t in (*spec.anywhere, *builtin_transitions(spec)):
        if t.dest is not None:
            for name in states:
                edges[name].add(t.dest)
    return edges


def _reachable(spec: FlowSpec) -> set[str]:
    edges = _edges(spec)
    seen = {spec.initial}
    queue = deque([spec.initial])
    while queue:
        for nxt in edges.get(queue.popleft(), ()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def lint_flow(spec: FlowSpec, templates: TemplateSet, project: Project) -> list[Problem]:
    """Every problem of one flow (with its templates, against ``project``)."""
    out: list[Problem] = []
    f = spec.file

    def add(path: str, severity: str, message: str, hint: str = "", file: str = "", line: int | None = None) -> None:
        out.append(Problem(file or f, line if line is not None else spec.line(path), severity, message, hint, path))

    # --- purposes --------------------------------------------------------------------------------
    declared = {p.id for p in project.purposes}
    for i, p in enumerate(spec.purposes or ()):
        if p not in declared:
            add(
                f"purposes[{i}]",
                "error",
                f"purpose `{p}` is not declared in the project",
                "add it to `purposes:` in consentbot.yaml or remove it from the flow",
            )
    if not declared:
        add("purposes", "error", "the project declares no purposes", "add `purposes:` to consentbot.yaml")

    # --- states ----------------------------------------------------------------------------------
    reachable = _reachable(spec)
    for name, state in spec.states.items():
        if name not in reachable:
            add(
                state.path,
                "error",
                f"state `{name}` is unreachable from `{spec.initial}`",
                "add a transition to it or remove it",
            )
        leaves = any(t.dest is not None and t.dest != name for t in (*state.on, *spec.anywhere))
        handles = any(t.trigger == INBOUND for t in state.on)
        if not leaves and not handles:
            add(
                state.path,
                "error",
                f"dead-end state `{name}`: nothing the customer sends leads anywhere",
                "add an `on:` transition to another state or an `inbound` handler",
            )
    try:
        compiled = compile_flow(spec, templates)
        for name in compiled.states:
            event = compiled.machine.events.get(str(BuiltinIntent.OPTOUT))
            ok = event is not None and any(t.dest == OPTED_OUT for t in event.transitions.get(name, []))
            if not ok:
                add(f"states.{name}", "error", f"opt-out is not reachable from state `{name}`")
    except (CoreError, ValueError) as exc:
        add("states", "error", f"the flow does not compile: {exc}")
        return out

    # --- messages --------------------------------------------------------------------------------
    sends: list[tuple[SendSpec, str]] = []  # (send, state the customer is in when it arrives)
    for state in spec.states.values():
        sends += [(s, state.name) for s in state.send]
        for t in state.on:
            sends += [(s, t.dest or state.name) for s in t.send]
    for t in spec.anywhere:
        sends += [(s, t.dest or "*") for s in t.send]

    contexts = {loc: sample_context(spec, project, loc) for loc in spec.locales}
    checked: set[tuple[str, str, str, str]] = set()
    for send, at_state in sends:
        for loc in spec.locales:
            if not templates.has(send.template, loc):
                add(
                    send.path,
                    "error",
                    f"template `{send.template}` is missing for locale `{loc}`",
                    f"create templates/{loc}/{send.template}.j2",
                )
                continue
            key = (send.template, loc, str(send.category), send.purpose)
            if key not in checked:
                checked.add(key)
                out.extend(
                    _check_render(templates, send.template, loc, contexts[loc], send.category, send.purpose, project)
                )
            tpl = templates.resolve(send.template, loc)
            valid = (
                compiled.payload_triggers.get(at_state, frozenset())
                if at_state != "*"
                else frozenset(t.trigger for t in spec.transitions())
            )
            if send.fallback:
                out.extend(_check_fallback(send, loc, at_state, valid, templates, spec, contexts[loc]))
            for bid, _ in tpl.buttons:
                if not _leads_somewhere(bid, valid):
                    add(
                        send.path,
                        "warning",
                        f"button `{bid}` of template `{send.template}` does nothing in state `{at_state}`",
                        "use a trigger of that state as the button id",
                    )
    # every project template and built-in reply renders too (broadcasts and agents use them)
    for (loc, name), tpl in sorted(templates.own().items()):
        if loc in contexts and (name, loc, "None", "") not in checked:
            out.extend(_check_render(templates, name, loc, contexts[loc], None, "", project, tpl))
    for loc in spec.locales:
        for name in BUILTIN_TEMPLATES:
            if (name, loc, "None", "") not in checked:
                checked.add((name, loc, "None", ""))
                out.extend(_check_render(templates, name, loc, contexts[loc], None, "", project))
    return _dedupe(out)


def _leads_somewhere(payload: str, valid: frozenset[str]) -> bool:
    """A tapped id (``trigger`` or ``trigger:value``) fires one of ``valid`` or a built-in intent."""
    trigger = payload.partition(":")[0]
    return trigger in valid or trigger in _BUILTIN_IDS


def _check_fallback(
    send: SendSpec,
    loc: str,
    at_state: str,
    valid: frozenset[str],
    templates: TemplateSet,
    spec: FlowSpec,
    ctx: dict[str, Any],
) -> list[Problem]:
    """A send's ``fallback`` names an approved template of the right category for every locale, whose
    parameters are message variables and whose quick replies lead somewhere."""
    file = spec.file
    line = spec.line(send.path)

    def problem(severity: str, message: str, hint: str) -> Problem:
        return Problem(file, line, severity, message, hint, send.path)

    decl = find_declaration(templates.approved_templates, send.fallback, loc, spec.default_locale)
    if decl is None:
        return [
            problem(
                "error",
                f"fallback template `{send.fallback}` is not declared for `{loc}`",
                "declare the approved template in whatsapp_templates.yaml (docs/campaigns.md)",
            )
        ]
    out = []
    want = "MARKETING" if send.category is Category.MARKETING else "UTILITY"
    if decl.status != "APPROVED" or decl.category != want:
        out.append(
            problem(
                "error",
                f"fallback template `{decl.name}` ({decl.language}) is {decl.status} {decl.category}, "
                f"not APPROVED {want}",
                "a marketing message falls back to a MARKETING template, any other to a UTILITY one",
            )
        )
    try:
        fallback_template(decl, ctx)
    except CoreError as exc:
        out.append(problem("error", str(exc), "name the template's parameters after message variables"))
    for b in decl.buttons:
        if b.kind == "quick_reply" and b.payload and not _leads_somewhere(b.payload, valid):
            out.append(
                problem(
                    "warning",
                    f"quick reply `{b.payload}` of fallback template `{decl.name}` does nothing in state "
                    f"`{at_state}`",
                    "use a trigger of that state as the payload",
                )
            )
    return out


def _check_render(
    templates: TemplateSet,
    name: str,
    loc: str,
    ctx: dict[str, Any],
    category: Category | None,
    purpose: str,
    project: Project,
    tpl: CompiledTemplate | None = None,
) -> list[Problem]:
    tpl = tpl or templates.resolve(name, loc)
    file = tpl.file or f"templates/{loc}/{name}.j2"
    out: list[Problem] = []
    extra = {"withdrawn": ["Offers"], "stale": False}
    personal = sorted(tpl.reads & PERSONAL_VARIABLES) if tpl.notice else []
    if personal:
        out.append(
            Problem(
                file,
                1,
                "error",
                f"notice `{name}` ({loc}) shows {', '.join(f'`{v}`' for v in personal)}: a notice text is kept "
                "for years as consent proof and is not erased with the customer, so it must hold no personal data",
                "greet without the name; put personal details in a message that is not a notice",
            )
        )
    try:
        raw = tpl.render({**ctx, **extra}, "sample")
        rendered = templates.render(name, loc, {**ctx, **extra}, "sample", category, purpose)
    except CoreError as exc:
        text = str(exc)
        out.append(
            Problem(
                file,
                1,
                "error",
                text.split(": ", 1)[-1] if text.startswith(file) else text,
                "render it with the flow's `sample:` values; every variable must be defined",
            )
        )
        return out
    business = project.controller.name
    cat = category or tpl.category
    if cat is Category.MARKETING and business not in f"{raw.header}\n{raw.body}\n{raw.footer}":
        out.append(
            Problem(
                file,
                1,
                "error",
                f"marketing template `{name}` does not name the business",
                "put {{ business }} in the header or body (LSSI 20: the sender must be identifiable)",
            )
        )
    if tpl.notice == "first_layer":
        for needle, what in (
            (business, "the business name"),
            (project.controller.privacy_policy_url, "the policy link"),
            (ctx["stop_word"], "how to stop"),
        ):
            if needle and needle not in rendered.text:
                out.append(
                    Problem(
                        file,
                        1,
                        "error",
                        f"first-layer notice `{name}` ({loc}) does not show {what}",
                        "the first layer names the business, what and how often, how to stop, rights, policy link",
                    )
                )
    if name == OPTOUT_CONFIRM and ctx["start_word"] not in rendered.text:
        out.append(
            Problem(
                file,
                1,
                "error",
                f"opt-out confirmation ({loc}) does not say how to come back",
                "mention {{ start_word }}",
            )
        )
    return out


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, int, str]] = set()
    out = []
    for p in problems:
        key = (p.file, p.line, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
