"""The engine: ``decide(conversation, event, flow, project, now) -> Decision``. Pure and synchronous.

One call handles one event for one conversation: an :class:`Inbound` message, a durable
:class:`TimerFired`, or a :class:`MetaSignal` (Meta's "stop promotions", error 131050). It returns a
:class:`Decision` the runtime commits atomically; nothing is sent or stored here.

Order of resolution for an inbound message (see ``docs/flows.md``):

1. the reserved opt-out payload (``optout``) and the built-in keywords (opt-out, data rights, person,
   help, re-subscribe) in every state and every language;
2. the state's triggers: tapped payload ids, keyword classes, typed numbers, ``inbound``;
3. otherwise a polite fallback with a help hint (a stale tap says the option is no longer available).

While ``conversation.paused`` (an agent took over) only the opt-out is acted on and confirmed; person
and data-rights requests are still raised in ``Decision.requests`` but nothing is answered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bot.core import frozen
from bot.core.consent import Actor, ConsentEventDraft
from bot.core.conversation import Conversation, PurposeState, PurposeStatus, Timer, Transition
from bot.core.flowspec import INBOUND, META_STOP, OPTED_OUT, SendSpec, TransitionSpec
from bot.core.frozen import quick_init
from bot.core.intents import (
    HELP_WORD,
    HUMAN_WORD,
    START_WORD,
    STOP_WORD,
    BuiltinIntent,
    builtin_intent,
    builtin_intent_of_form,
    match_form,
    number_in,
)
from bot.core.limits import OPTOUT_PAYLOAD
from bot.core.machine import CONSENT_REFRESH, CompiledFlow, FlowFamily, duration
from bot.core.messages import Category, Inbound, InboundKind, Outbound
from bot.core.project import Project
from bot.core.rendering import Context, FixedValues, NoticeText
from bot.core.standard_replies import ERASE_ACK, EXPORT_ACK, FALLBACK, HELP, HUMAN_ACK, OPTOUT_CONFIRM
from bot.core.turn import Turn
from bot.errors import FlowError

CONSUMED_KEEP = 64
EXPORT_WORD = {
    "en": "MY DATA",
    "es": "MIS DATOS",
    "pt": "MEUS DADOS",
    "fr": "MES DONNEES",
    "de": "MEINE DATEN",
    "it": "I MIEI DATI",
}
ERASE_WORD = {
    "en": "DELETE MY DATA",
    "es": "BORRAR MIS DATOS",
    "pt": "APAGAR MEUS DADOS",
    "fr": "SUPPRIMER MES DONNEES",
    "de": "MEINE DATEN LOSCHEN",
    "it": "CANCELLA I MIEI DATI",
}
_SILENT = frozenset({InboundKind.REACTION, InboundKind.EDIT, InboundKind.REVOKE, InboundKind.SYSTEM})
_TAPS = frozenset({InboundKind.BUTTON_REPLY, InboundKind.LIST_REPLY, InboundKind.TEMPLATE_BUTTON})
_BUILTIN_NAMES = {str(i): i for i in BuiltinIntent}
# Calling-code prefixes -> locale, for the first-contact guess (longest prefix wins).
_PHONE_LOCALES = {
    "34": "es",
    "52": "es",
    "54": "es",
    "56": "es",
    "57": "es",
    "51": "es",
    "58": "es",
    "593": "es",
    "591": "es",
    "595": "es",
    "598": "es",
    "502": "es",
    "503": "es",
    "504": "es",
    "505": "es",
    "506": "es",
    "507": "es",
    "53": "es",
    "55": "pt",
    "351": "pt",
    "33": "fr",
    "32": "fr",
    "49": "de",
    "43": "de",
    "39": "it",
    "44": "en",
    "1": "en",
    "353": "en",
    "61": "en",
}


@quick_init
@dataclass(frozen=True, slots=True)
class TimerFired:
    """A durable timer came due (``name`` = the trigger it fires, as stored on ``Conversation.timers``)."""

    name: str


@quick_init
@dataclass(frozen=True, slots=True)
class MetaSignal:
    """A signal from Meta about one customer. ``kind``: ``marketing_stop`` / ``marketing_resume``
    (``user_preferences`` webhook) or ``error_131050`` (the customer stopped marketing messages).
    ``id`` is the inbox entry id (kept in ``consumed``). A resume never revives consent."""

    kind: str
    subject: str
    phone_number_id: str
    id: str = ""
    wa_id: str | None = None
    detail: str = ""


Event = Inbound | TimerFired | MetaSignal
META_KINDS = frozenset({"marketing_stop", "marketing_resume", "error_131050"})


@quick_init
@dataclass(frozen=True, slots=True)
class Decision:
    """Everything one event changes. The runtime commits it as one step; ``conversation.version`` is
    untouched (the store moves it). ``timers_set``/``timers_cancelled`` are already applied to
    ``conversation.timers``; ``requests`` are work for the runtime: "export", "erase", "human"."""

    conversation: Conversation
    transitions: tuple[Transition, ...] = ()
    outbox: tuple[Outbound, ...] = ()
    consent: tuple[ConsentEventDraft, ...] = ()
    notices: tuple[NoticeText, ...] = ()
    timers_set: tuple[Timer, ...] = ()
    timers_cancelled: tuple[str, ...] = ()
    requests: tuple[str, ...] = ()
    trigger: str = ""
    notes: tuple[str, ...] = ()


@quick_init
@dataclass(frozen=True, slots=True)
class _Intent:
    kind: str  # builtin | trigger | fallback | silent
    name: str = ""
    value: str | None = None
    number: int | None = None
    method: str = ""
    stale: bool = False


def guess_locale(inbound: Inbound | None, locales: tuple[str, ...], default: str) -> str:
    """First-contact locale: from the customer's calling code when the flow speaks that language."""
    digits = ""
    if inbound is not None:
        number = inbound.wa_id or inbound.subject
        digits = number if number.isdigit() else "".join(c for c in number if c.isdigit())
    for n in (3, 2, 1):
        loc = _PHONE_LOCALES.get(digits[:n]) if len(digits) > n else None
        if loc is not None:
            return loc if loc in locales else default
    return default


def classify(flow: CompiledFlow, state: str, inbound: Inbound) -> _Intent:
    """Map an inbound message to what it means in ``state`` (see the module docstring for the order)."""
    kind = inbound.kind
    if kind in _TAPS:
        method = "list" if kind is InboundKind.LIST_REPLY else "button"
        payload = inbound.payload or ""
        if payload == OPTOUT_PAYLOAD:
            return _Intent("builtin", str(BuiltinIntent.OPTOUT), method=method)
        name, _, value = payload.partition(":")
        if name in _BUILTIN_NAMES:
            return _Intent("builtin", name, method=method)
        if name and flow.has_trigger(state, name):
            return _Intent("trigger", name, value or None, method=method)
        if kind is InboundKind.TEMPLATE_BUTTON:
            hit = builtin_intent(inbound.text or payload)
            if hit is not None:
                return _Intent("builtin", str(hit), method=method)
        return _Intent("fallback", stale=True)
    if kind is InboundKind.TEXT:
        text = inbound.text or ""
        form = match_form(text)
        hit = builtin_intent_of_form(form)
        if hit is not None:
            return _Intent("builtin", str(hit), method="keyword")
        trig = flow.keyword_index.get(state, {}).get(form)
        if trig is not None:
            return _Intent("trigger", trig, method="keyword")
        number_trigger = flow.number_trigger.get(state)
        if number_trigger is not None:
            n = number_in(text)
            if n is not None:
                return _Intent("trigger", number_trigger, number=n, method="keyword")
    elif kind in _SILENT:
        return _Intent("silent")
    if flow.has_trigger(state, INBOUND):
        return _Intent("trigger", INBOUND, method="text" if kind is InboundKind.TEXT else str(kind))
    return _Intent("fallback")


def effective_purposes(flow: CompiledFlow, project: Project) -> tuple[str, ...]:
    """The purposes this flow asks consent for: its list (those the project declares), or all of them."""
    ids = tuple(p.id for p in project.purposes)
    if flow.spec.purposes is None:
        return ids
    return tuple(p for p in flow.spec.purposes if p in ids)


def message_context(
    flow: CompiledFlow,
    project: Project,
    locale: str,
    slots: dict[str, Any],
    consent: dict[str, PurposeStatus],
    purposes: tuple[str, ...],
    profile_name: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """The variables every template can use (documented in docs/flows.md). The values that depend only
    on the flow, the project and the language are built once (:func:`_fixed_context`) and shared: the
    templates render in an immutable sandbox, so nothing can change them."""
    fixed, info = _fixed_context(flow, project, locale, purposes)

    def titles(ids: Iterable[str]) -> list[str]:
        return [(info[p] if p in info else _purpose_info(project, p, locale, flow.spec.default_locale))["title"]
                for p in ids]

    def having(state: PurposeState) -> list[str]:
        return [p for p in purposes if (s := consent.get(p)) is not None and s.state is state]

    i = slots.get("purpose_i", 0)
    chosen = slots.get("chosen", [])
    ctx = Context(fixed)
    ctx["purpose"] = info[purposes[i]] if isinstance(i, int) and 0 <= i < len(purposes) else None
    ctx["chosen"] = titles(p for p in chosen if isinstance(p, str)) if isinstance(chosen, list) else []
    ctx["granted"] = titles(having(PurposeState.GRANTED))
    ctx["requested"] = titles(having(PurposeState.REQUESTED))
    ctx["withdrawn"] = []
    ctx["frequency"] = slots.get("frequency", "")
    ctx["profile_name"] = profile_name
    ctx["stale"] = False
    ctx["slots"] = slots
    ctx.update(extra)
    return ctx


def _purpose_info(project: Project, pid: str, locale: str, default: str) -> dict[str, str]:
    p = project.purpose(pid)
    if p is None:
        return {"id": pid, "title": pid, "description": "", "frequency": ""}
    return {
        "id": pid,
        "title": p.title(locale, default),
        "description": p.descriptions.get(locale) or p.descriptions.get(default, ""),
        "frequency": p.frequency.get(locale) or p.frequency.get(default, ""),
    }


_FIXED: dict[tuple[int, int, str, tuple[str, ...]], tuple[Any, Any, FixedValues, dict[str, dict[str, str]]]] = {}


def _fixed_context(
    flow: CompiledFlow, project: Project, locale: str, purposes: tuple[str, ...]
) -> tuple[FixedValues, dict[str, dict[str, str]]]:
    """The part of :func:`message_context` that depends only on the flow's spec, the project, the
    language and the purposes (kept per process; the key holds the spec and project themselves, so an
    entry is never reused for other objects), and each purpose's info by id."""
    spec = flow.spec
    key = (id(spec), id(project), locale, purposes)
    hit = _FIXED.get(key)
    if hit is not None and hit[0] is spec and hit[1] is project:
        return hit[2], hit[3]
    default = spec.default_locale
    c = project.controller
    info = {p: _purpose_info(project, p, locale, default) for p in purposes}
    words = {cls: (per.get(locale) or per.get(default) or ("",))[0] for cls, per in spec.keywords.items()}
    fixed = FixedValues({
        "business": c.name,
        "controller": {
            "name": c.name,
            "contact": c.contact,
            "dpo_contact": c.dpo_contact,
            "privacy_policy_url": c.privacy_policy_url,
            "supervisory_authority": c.supervisory_authority,
            "support_contact": c.support_contact or c.contact,
        },
        "policy_url": c.privacy_policy_url,
        "min_age": project.min_age,
        "notice_version": project.notice_version,
        "expiry_hours": project.confirm_expiry_hours,
        "cooloff_days": project.decline_cooloff_days,
        "proof_years": max(1, project.retention.blocked_proof_days // 365),
        "purposes": [info[p] for p in purposes],
        "locale": locale,
        "stop_word": STOP_WORD.get(locale, "STOP"),
        "start_word": START_WORD.get(locale, "START"),
        "help_word": HELP_WORD.get(locale, "HELP"),
        "human_word": HUMAN_WORD.get(locale, "AGENT"),
        "export_word": EXPORT_WORD.get(locale, EXPORT_WORD["en"]),
        "erase_word": ERASE_WORD.get(locale, ERASE_WORD["en"]),
        "prefs_word": words.get("preferences", ""),
        "words": words,
    })
    if len(_FIXED) >= 256:
        _FIXED.clear()
    _FIXED[key] = (spec, project, fixed, info)
    return fixed, info


PAUSED_REFRESH_RETRY = timedelta(hours=6)  # a consent-refresh question due during a takeover waits this long


class _Step:
    """Accumulates one decision."""

    def __init__(self, flow: CompiledFlow, project: Project, conv: Conversation, now: datetime, turn: Turn) -> None:
        self.flow = flow
        self.project = project
        self.conv = conv
        self.now = now
        self.turn = turn
        self.state = conv.state
        self.timers = list(conv.timers)
        self.set: list[Timer] = []
        self.cancelled: list[str] = []
        self.transitions: list[Transition] = []
        self.sends: list[tuple[SendSpec, dict[str, Any]]] = []  # each with its extra template variables
        self.requests: list[str] = []
        self.notes: list[str] = []
        self.needs_person = conv.needs_person
        self.trigger = ""

    def cancel(self, names: set[str] | None = None) -> None:
        keep = []
        for t in self.timers:
            if names is None or t.name in names:
                self.cancelled.append(t.name)
            else:
                keep.append(t)
        self.timers = keep

    def fire(self, trigger: str) -> TransitionSpec | None:
        source = self.state
        spec = self.flow.fire(source, trigger, self.turn)
        if spec is None:
            return None
        dest = self.flow.model.state if spec.dest is not None else source
        self.trigger = trigger
        self.transitions.append(Transition(trigger, source, dest))
        self.sends.extend((s, {}) for s in spec.send)
        if spec.dest is not None:
            old = self.flow.spec.states.get(source)
            self.cancel({t.trigger for t in old.timers} if old is not None else set())
            new = self.flow.spec.states.get(dest)
            if new is not None:
                for ts in new.timers:
                    self.timers = [t for t in self.timers if t.name != ts.trigger]
                    due = self.due(ts.after)
                    if due is None:
                        continue
                    timer = Timer(ts.trigger, due)
                    self.timers.append(timer)
                    self.set.append(timer)
                if not spec.quiet:
                    self.sends.extend((s, {}) for s in new.send)
        self.state = dest
        return spec

    def due(self, after: str) -> datetime | None:
        """When a timer set now fires. ``consent_refresh`` counts from the oldest consent still granted
        (re-entering a state does not postpone it); with nothing granted it is not set."""
        if after != CONSENT_REFRESH:
            return self.now + duration(after, self.project)
        granted = [s.since for s in self.turn.consent.values() if s.state is PurposeState.GRANTED]
        return min(granted) + duration(after, self.project) if granted else None

    def say(self, template: str, category: Category | None = None, **extra: Any) -> None:
        """Send a built-in reply (``extra``: template variables of its own)."""
        self.sends.append((SendSpec(template, category), extra))

    def builtin(self, intent: BuiltinIntent, method: str) -> None:
        turn = self.turn
        if intent is BuiltinIntent.OPTOUT:
            gone = turn.withdraw_all(method, intent="optout")
            turn.slots["opted_out_at"] = self.now
            self.cancel()
            self.fire(str(BuiltinIntent.OPTOUT))
            withdrawn = [
                self.project.purpose(p).title(turn.locale, self.flow.spec.default_locale)  # type: ignore[union-attr]
                if self.project.purpose(p) is not None
                else p
                for p in gone
            ]
            self.say(OPTOUT_CONFIRM, Category.UTILITY, withdrawn=withdrawn)
        elif intent is BuiltinIntent.RESUBSCRIBE:
            self.cancel()
            self.notes.append("resubscribe: double opt-in runs again")
            self.fire(str(BuiltinIntent.RESUBSCRIBE))
        elif intent is BuiltinIntent.HELP:
            self.fire(str(intent))
            self.say(HELP)
        elif intent is BuiltinIntent.HUMAN:
            self.fire(str(intent))
            self.needs_person = True
            self.requests.append("human")
            self.say(HUMAN_ACK)
        elif intent is BuiltinIntent.EXPORT:
            self.fire(str(intent))
            self.requests.append("export")
            self.say(EXPORT_ACK)
        elif intent is BuiltinIntent.ERASE:
            self.fire(str(intent))
            self.requests.append("erase")
            self.say(ERASE_ACK)

    def finish(self, *, inbound: Inbound | None = None, consumed_id: str = "", mute: bool = False) -> Decision:
        turn = self.turn
        flow = self.flow
        purposes = turn.purposes
        outbox: list[Outbound] = []
        notices: list[NoticeText] = []
        if not mute and self.sends:
            base = message_context(
                flow, self.project, turn.locale, turn.slots, turn.consent, purposes, self.conv.profile_name
            )
            for send, extra in self.sends:
                name = send.template
                ctx = {**base, **extra} if extra else base
                rendered = flow.templates.render(name, turn.locale, ctx, self.conv.subject, send.category, send.purpose)
                if send.fallback:  # the approved template that carries it once the 24-hour window has closed
                    template = flow.templates.approved(send.fallback, turn.locale, ctx)
                    outbox.append(frozen.evolve(rendered.outbound, fallback=template))
                else:
                    outbox.append(rendered.outbound)
                if rendered.notice:
                    notice = NoticeText.of(
                        self.project.notice_version, rendered.locale, rendered.text, name, rendered.notice,
                        rendered.sha256,
                    )
                    notices.append(notice)
                    ref = {
                        "version": notice.version,
                        "sha256": notice.sha256,
                        "locale": notice.locale,
                        "template": name,
                    }
                    turn.slots["notice"] = ref
                    if rendered.notice == "first_layer":
                        turn.slots["first_layer"] = ref
        conv = self.conv
        consumed = conv.consumed
        if consumed_id:
            consumed = (*consumed, consumed_id)[-CONSUMED_KEEP:]
        new = conv.evolve(
            state=self.state,
            locale=turn.locale,
            slots=turn.slots,
            consent=turn.consent,
            timers=tuple(self.timers),
            updated_at=self.now,
            window_opened_at=self.now if inbound is not None else conv.window_opened_at,
            consumed=consumed,
            needs_person=self.needs_person,
            profile_name=(inbound.profile_name or conv.profile_name) if inbound is not None else conv.profile_name,
        )
        return Decision(
            conversation=new,
            transitions=tuple(self.transitions),
            outbox=tuple(outbox),
            consent=tuple(turn.events),
            notices=tuple(notices),
            timers_set=tuple(self.set),
            timers_cancelled=tuple(self.cancelled),
            requests=tuple(dict.fromkeys(self.requests)),
            trigger=self.trigger,
            notes=tuple(self.notes),
        )


def _select(conversation: Conversation | None, flow: CompiledFlow | FlowFamily) -> tuple[CompiledFlow, str]:
    if isinstance(flow, FlowFamily):
        if conversation is None:
            return flow.newest, ""
        exact = flow.get(conversation.flow_version)
        if exact is not None:
            return exact, ""
        return flow.newest, f"migrated from version {conversation.flow_version} (no longer present)"
    if conversation is not None and (conversation.flow_id != flow.id or conversation.flow_version != flow.version):
        raise FlowError(
            f"conversation runs flow {conversation.flow_id} version {conversation.flow_version}, "
            f"got {flow.id} version {flow.version}",
            path="flow_version",
        )
    return flow, ""


def decide(
    conversation: Conversation | None,
    event: Event,
    flow: CompiledFlow | FlowFamily,
    project: Project,
    now: datetime,
) -> Decision:
    """Decide what one event does to one conversation. Pure: no I/O, no clock (``now`` is UTC-aware).

    ``conversation`` is ``None`` on first contact: a new conversation starts on the newest version of
    the flow (``flow`` may be a :class:`FlowFamily` of all versions, or the :class:`CompiledFlow` the
    conversation runs) with a locale guessed from the customer's number (else the flow's default).
    Unknown or unsupported input never raises; a broken template raises :class:`RenderError` /
    :class:`LimitError` (the catalog checks every template at start so this does not happen).
    """
    compiled, migrated = _select(conversation, flow)
    spec = compiled.spec
    if conversation is None:
        if isinstance(event, TimerFired):
            raise FlowError("a timer fired for a conversation that does not exist", path="timers")
        inbound = event if isinstance(event, Inbound) else None
        subject = event.subject
        conversation = Conversation.start(
            phone_number_id=event.phone_number_id,
            subject=subject,
            flow_id=compiled.id,
            flow_version=compiled.version,
            state=spec.initial,
            locale=guess_locale(inbound, spec.locales, spec.default_locale),
            now=now,
            wa_id=event.wa_id,
            profile_name=(inbound.profile_name or "") if inbound is not None else "",
        )
    notes: list[str] = []
    transitions: list[Transition] = []
    if migrated:
        state = conversation.state if conversation.state in compiled.states else spec.initial
        transitions.append(Transition("migrate", conversation.state, state))
        conversation = conversation.evolve(flow_version=compiled.version, state=state)
        notes.append(migrated)
    locale = conversation.locale if conversation.locale in spec.locales else spec.default_locale

    if isinstance(event, Inbound) and event.id and event.id in conversation.consumed:
        return Decision(conversation=conversation, notes=("duplicate inbound: already consumed",))

    turn = Turn(
        subject=conversation.subject,
        project=project,
        purposes=effective_purposes(compiled, project),
        locales=spec.locales,
        flow_id=compiled.id,
        flow_version=compiled.version,
        now=now,
        slots=dict(conversation.slots),
        consent=dict(conversation.consent),
        locale=locale,
        window_open=isinstance(event, Inbound) or conversation.in_window(now),
        inbound=event if isinstance(event, Inbound) else None,
    )
    step = _Step(compiled, project, conversation, now, turn)
    step.transitions.extend(transitions)
    step.notes.extend(notes)

    if isinstance(event, Inbound):
        intent = classify(compiled, conversation.state, event)
        turn.method = intent.method
        if conversation.paused and not (intent.kind == "builtin" and intent.name == BuiltinIntent.OPTOUT):
            if intent.kind == "builtin" and intent.name in ("human", "export", "erase"):
                step.requests.append(intent.name)
            step.notes.append("paused: an agent has the conversation")
            return step.finish(inbound=event, consumed_id=event.id, mute=True)
        if intent.kind == "builtin":
            step.builtin(BuiltinIntent(intent.name), intent.method)
        elif intent.kind == "trigger":
            turn.value = intent.value
            turn.number = intent.number
            if step.fire(intent.name) is None:
                step.say(FALLBACK)
        elif intent.kind == "fallback":
            step.say(FALLBACK, stale=intent.stale)
        else:
            step.notes.append(f"ignored {event.kind}")
        return step.finish(inbound=event, consumed_id=event.id)

    if isinstance(event, TimerFired):
        turn.actor = Actor.SYSTEM
        turn.method = "timer"
        if not any(t.name == event.name for t in conversation.timers):
            step.notes.append(f"timer {event.name} is not set (cancelled or already fired)")
            return step.finish()
        step.cancel({event.name})
        step.cancelled.remove(event.name)
        here = compiled.spec.states.get(conversation.state)
        if conversation.paused and here is not None and any(
            t.trigger == event.name and t.after == CONSENT_REFRESH for t in here.timers
        ):
            # An agent has the conversation: the refresh question would be muted and never asked. Ask later.
            later = Timer(event.name, now + PAUSED_REFRESH_RETRY)
            step.timers.append(later)
            step.set.append(later)
            step.notes.append(f"timer {event.name}: paused by an agent; asking after {later.due.isoformat()}")
            return step.finish(mute=True)
        if step.fire(event.name) is None:
            step.notes.append(f"timer {event.name}: no transition from {conversation.state}")
        return step.finish(mute=conversation.paused)

    # MetaSignal
    if event.kind not in META_KINDS:
        step.notes.append(f"unknown Meta signal {event.kind!r} ignored")
        return step.finish(consumed_id=event.id)
    if event.kind == "marketing_resume":
        step.notes.append("Meta resume: platform flag only; consent is not revived")
        return step.finish(consumed_id=event.id)
    turn.actor = Actor.META
    method = "user_preferences" if event.kind == "marketing_stop" else "status_131050"
    turn.method = method
    turn.withdraw_all(method, signal=event.kind, signal_id=event.id or None, detail=event.detail or None)
    turn.slots["opted_out_at"] = now
    step.cancel()
    step.fire(META_STOP)
    return step.finish(consumed_id=event.id, mute=True)


__all__ = [
    "OPTED_OUT",
    "Decision",
    "Event",
    "MetaSignal",
    "TimerFired",
    "classify",
    "decide",
    "guess_locale",
    "message_context",
]
