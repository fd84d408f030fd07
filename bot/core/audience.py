"""Campaign audiences and messages, decided purely: who may receive a campaign, why not, and what they get.

A campaign sends one **approved WhatsApp template** (business-initiated, valid outside the 24-hour
window) with category MARKETING and one consent purpose. This module never does I/O: the runtime
gathers the facts about each candidate (suppression, restriction, marketing count in the cap period)
and asks :func:`assess`.

Who is eligible (the first failing check decides the one reason a candidate is excluded for, so the
counts by reason add up to the number of candidates):

1. **the send gate** (:func:`bot.core.policy.decide_send`, not re-implemented here) with the facts of
   the moment: suppressed, restricted, age gate, consent for the purpose (granted, not stale), the
   frequency cap. Its :class:`~bot.core.policy.Reason` codes are the exclusion reasons;
2. the customer's **language**: the conversation's locale must be the campaign's (``locale``);
3. the customer's **preferences**: every segment ``key=value`` must match a slot (``slots[key] ==
   value``, or ``value in slots[key]`` for a list slot) -> ``segment``;
4. the **parameters** render for this customer (sandboxed Jinja, ``StrictUndefined``) -> ``render_failed``.

The template declaration must carry the **opt-out element** (LSSI 21.2): a quick-reply button whose
payload is :data:`bot.core.limits.OPTOUT_PAYLOAD`, or a footer naming an opt-out word (``STOP``,
``BAJA``...). :func:`template_problems` lists what makes a declaration unusable; a campaign is never
created from one with problems.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bot.core.conversation import Conversation
from bot.core.intents import BuiltinIntent, builtin_intent
from bot.core.limits import OPTOUT_PAYLOAD
from bot.core.messages import Category, Outbound, OutboundKind, TemplateRef
from bot.core.policy import GateInput, Reason, decide_send
from bot.core.project import Project
from bot.errors import CoreError, RenderError

_NAME_RE = re.compile(r"^[a-z0-9_]{1,512}$")
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?$")
_PARAM_RE = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
_SEGMENT_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
PARAM_MAX = 1024  # a body parameter is part of a body of at most 1024 characters


class AudienceReason(StrEnum):
    """Exclusion reasons that are not the send gate's (those are :class:`bot.core.policy.Reason`)."""

    LOCALE = "locale"  # the customer talks in another language than the campaign's template
    SEGMENT = "segment"  # the customer did not choose what the campaign is about (a slot differs)
    RENDER_FAILED = "render_failed"  # a parameter does not render for this customer (missing value)


class CampaignError(CoreError):
    """A campaign cannot be created as asked (names the field)."""


# --- template declarations -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TemplateButton:
    """One button of an approved template. ``kind``: ``quick_reply`` (``payload`` comes back in the
    webhook), ``url``, ``phone_number``, ``copy_code``..."""

    kind: str
    text: str
    payload: str = ""


@dataclass(frozen=True, slots=True)
class TemplateDeclaration:
    """What the business declares about one template approved by Meta (name + exact language).

    ``parameters`` are the body parameter names in order; with ``named`` they are sent with
    ``parameter_name`` (named-parameter templates), else positionally. ``body``/``footer`` are the
    approved texts (shown in the console and checked for the opt-out element)."""

    name: str
    language: str
    category: str = "MARKETING"
    status: str = "APPROVED"
    parameters: tuple[str, ...] = ()
    named: bool = False
    body: str = ""
    footer: str = ""
    buttons: tuple[TemplateButton, ...] = ()

    @property
    def optout_index(self) -> int | None:
        """Index of the quick-reply button carrying the opt-out payload, if any."""
        for i, b in enumerate(self.buttons):
            if b.kind == "quick_reply" and b.payload == OPTOUT_PAYLOAD:
                return i
        return None

    def to_doc(self) -> dict[str, Any]:
        return {
            "name": self.name, "language": self.language, "category": self.category, "status": self.status,
            "parameters": list(self.parameters), "named": self.named, "body": self.body, "footer": self.footer,
            "buttons": [{"kind": b.kind, "text": b.text, "payload": b.payload} for b in self.buttons],
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> TemplateDeclaration:
        return cls(
            name=doc["name"], language=doc["language"], category=doc.get("category", "MARKETING"),
            status=doc.get("status", "APPROVED"), parameters=tuple(doc.get("parameters", ())),
            named=bool(doc.get("named", False)), body=doc.get("body", ""), footer=doc.get("footer", ""),
            buttons=tuple(
                TemplateButton(b["kind"], b.get("text", ""), b.get("payload", "")) for b in doc.get("buttons", ())
            ),
        )


def _text(item: Mapping[str, Any], key: str, path: str, default: str | None = None) -> str:
    value = item.get(key, default)
    if value is None:
        raise CampaignError(f"{path}.{key}: is missing")
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise CampaignError(f"{path}.{key}: must be text")
    return str(value).strip()


def declarations_from(data: Any, source: str = "templates") -> list[TemplateDeclaration]:
    """Parse the ``templates:`` list of a declarations document (already loaded from YAML)::

        templates:
          - name: spring_offer
            language: en
            category: MARKETING
            status: APPROVED
            body: "Hi {{1}}, 20% off this week in {{2}}."
            parameters: [first_name, shop]
            footer: "Reply STOP to opt out"
            buttons:
              - {type: quick_reply, text: "Stop promotions", payload: optout}

    Raises :class:`CampaignError` naming the first bad entry (``templates[2].language: ...``)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("templates"), list):
        raise CampaignError(f"{source}: must be a mapping with a `templates:` list")
    out: list[TemplateDeclaration] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(data["templates"]):
        path = f"{source}.templates[{i}]"
        if not isinstance(item, Mapping):
            raise CampaignError(f"{path}: must be a mapping with name and language")
        name, language = _text(item, "name", path), _text(item, "language", path)
        if not _NAME_RE.match(name):
            raise CampaignError(f"{path}.name: {name!r} must be lowercase letters, digits and _")
        if not _LANGUAGE_RE.match(language):
            raise CampaignError(f"{path}.language: {language!r} must be a code such as en or en_US")
        if (name, language) in seen:
            raise CampaignError(f"{path}: {name} ({language}) is declared twice")
        seen.add((name, language))
        params = item.get("parameters") or []
        if not isinstance(params, list) or not all(isinstance(p, str) and _PARAM_RE.match(p) for p in params):
            raise CampaignError(f"{path}.parameters: must be a list of names (lowercase, digits, _)")
        if len(set(params)) != len(params):
            raise CampaignError(f"{path}.parameters: a name is listed twice")
        buttons_raw = item.get("buttons") or []
        if not isinstance(buttons_raw, list):
            raise CampaignError(f"{path}.buttons: must be a list")
        buttons = []
        for j, b in enumerate(buttons_raw):
            if not isinstance(b, Mapping):
                raise CampaignError(f"{path}.buttons[{j}]: must be a mapping with type and text")
            buttons.append(
                TemplateButton(
                    kind=_text(b, "type", f"{path}.buttons[{j}]"),
                    text=_text(b, "text", f"{path}.buttons[{j}]", ""),
                    payload=_text(b, "payload", f"{path}.buttons[{j}]", ""),
                )
            )
        out.append(
            TemplateDeclaration(
                name=name,
                language=language,
                category=_text(item, "category", path, "MARKETING").upper(),
                status=_text(item, "status", path, "APPROVED").upper(),
                parameters=tuple(params),
                named=bool(item.get("named", False)),
                body=_text(item, "body", path, ""),
                footer=_text(item, "footer", path, ""),
                buttons=tuple(buttons),
            )
        )
    return out


def has_optout_footer(footer: str) -> bool:
    """True when the footer names an opt-out word a customer can reply with (``Reply STOP to opt out``)."""
    return any(builtin_intent(word) is BuiltinIntent.OPTOUT for word in footer.split())


def template_problems(decl: TemplateDeclaration) -> list[str]:
    """Why ``decl`` cannot carry a campaign (empty list: it can)."""
    problems = []
    if decl.status != "APPROVED":
        problems.append(f"template {decl.name} ({decl.language}) is {decl.status}, not APPROVED")
    if decl.category != "MARKETING":
        problems.append(f"template {decl.name} ({decl.language}) is {decl.category}; a campaign sends MARKETING")
    if decl.optout_index is None and not has_optout_footer(decl.footer):
        problems.append(
            f"template {decl.name} ({decl.language}) has no opt-out element: declare a quick_reply button "
            f"with payload {OPTOUT_PAYLOAD!r} or a footer such as 'Reply STOP to opt out'"
        )
    return problems


# --- segments and parameters -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Segment:
    """One preference filter: the slot ``key`` must equal ``value`` (or contain it, for a list slot)."""

    key: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Segment:
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _SEGMENT_KEY_RE.match(key) or not value:
            raise CampaignError(f"--segment: {text!r} must look like key=value (e.g. freq=weekly)")
        return cls(key, value)

    def matches(self, slots: Mapping[str, Any]) -> bool:
        have = slots.get(self.key)
        if isinstance(have, list | tuple | set | frozenset):
            return self.value in {str(v) for v in have}
        if isinstance(have, bool):
            return self.value.lower() == str(have).lower()
        return have is not None and str(have) == self.value


def parse_params(items: Iterable[str]) -> dict[str, str]:
    """``["first_name={{ profile_name }}"]`` -> ``{"first_name": "{{ profile_name }}"}``."""
    out: dict[str, str] = {}
    for text in items:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not _PARAM_RE.match(name):
            raise CampaignError(f"--param: {text!r} must look like name=value (value may use {{{{ profile_name }}}})")
        if name in out:
            raise CampaignError(f"--param: {name} is given twice")
        out[name] = value
    return out


_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


def compile_params(decl: TemplateDeclaration, params: Mapping[str, str]) -> dict[str, jinja2.Template]:
    """Compile one Jinja template per declared parameter; every declared parameter needs a value and
    nothing undeclared is accepted (raises :class:`CampaignError`)."""
    missing = [p for p in decl.parameters if p not in params]
    if missing:
        raise CampaignError(f"--param: template {decl.name} needs {', '.join(missing)}")
    extra = sorted(set(params) - set(decl.parameters))
    if extra:
        raise CampaignError(f"--param: template {decl.name} has no parameter {extra[0]}")
    out = {}
    for name in decl.parameters:
        try:
            out[name] = _ENV.from_string(params[name])
        except jinja2.TemplateSyntaxError as exc:
            raise CampaignError(f"--param {name}: {exc.message}") from None
    return out


def render_context(conversation: Conversation) -> dict[str, Any]:
    """What parameter templates may use: the profile, the locale and every slot (also as ``slots``)."""
    context: dict[str, Any] = dict(conversation.slots)
    context.update(
        {
            "profile_name": conversation.profile_name,
            "subject": conversation.subject,
            "locale": conversation.locale,
            "slots": dict(conversation.slots),
        }
    )
    return context


def render_params(compiled: Mapping[str, jinja2.Template], conversation: Conversation) -> dict[str, str]:
    """Each parameter rendered for this customer. Raises :class:`RenderError` for an undefined value,
    an error in the expression, or an empty or too long result (Meta refuses those: 132000/100)."""
    context = render_context(conversation)
    out = {}
    for name, template in compiled.items():
        try:
            value = template.render(context)
        except jinja2.TemplateError as exc:
            raise RenderError(f"parameter {name}: {exc}") from None
        out[name] = parameter_value(name, value)
    return out


def parameter_value(name: str, value: str) -> str:
    """A body parameter as Meta takes it: whitespace runs become one space (Meta refuses new lines,
    tabs and runs of spaces); :class:`RenderError` when it is empty or too long (132000/100)."""
    value = " ".join(value.split())
    if not value:
        raise RenderError(f"parameter {name}: renders empty")
    if len(value) > PARAM_MAX:
        raise RenderError(f"parameter {name}: {len(value)} characters (at most {PARAM_MAX})")
    return value


def find_declaration(
    declarations: Iterable[TemplateDeclaration], name: str, locale: str, default_locale: str = ""
) -> TemplateDeclaration | None:
    """The declaration of template ``name`` for ``locale``: the exact language (``es``), else one of
    that language (``es_ES``), else the same for ``default_locale``."""
    candidates = [d for d in declarations if d.name == name]
    for loc in dict.fromkeys(x for x in (locale, default_locale) if x):
        for d in candidates:
            if d.language == loc:
                return d
        for d in candidates:
            if d.language.split("_")[0] == loc.split("_")[0]:
                return d
    return None


def fallback_template(decl: TemplateDeclaration, context: Mapping[str, Any]) -> TemplateRef:
    """``decl`` filled from a flow message's variables: each parameter takes the variable of the same
    name (a list is joined with ", "). :class:`RenderError` when a variable is missing or unusable."""
    values = {}
    for name in decl.parameters:
        value = context.get(name)
        if value is None:
            raise RenderError(f"template {decl.name} ({decl.language}): parameter {name}: no variable `{name}`")
        text = ", ".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
        values[name] = parameter_value(name, text)
    return TemplateRef(decl.name, decl.language, template_components(decl, values))


def template_components(decl: TemplateDeclaration, values: Mapping[str, str]) -> tuple[dict[str, Any], ...]:
    """The Graph API ``components`` for one send: body parameters, then the payload of every quick reply
    that declares one (it comes back in the webhook when the customer taps it)."""
    components: list[dict[str, Any]] = []
    if decl.parameters:
        params = []
        for name in decl.parameters:
            p: dict[str, Any] = {"type": "text", "text": values[name]}
            if decl.named:
                p["parameter_name"] = name
            params.append(p)
        components.append({"type": "body", "parameters": params})
    for index, button in enumerate(decl.buttons):
        if button.kind == "quick_reply" and button.payload:
            components.append(
                {
                    "type": "button",
                    "sub_type": "quick_reply",
                    "index": str(index),
                    "parameters": [{"type": "payload", "payload": button.payload}],
                }
            )
    return tuple(components)


def campaign_message(to: str, decl: TemplateDeclaration, purpose: str, values: Mapping[str, str],
                     campaign_id: str = "") -> Outbound:
    """The MARKETING template message one customer receives."""
    return Outbound(
        to=to,
        kind=OutboundKind.TEMPLATE,
        template=TemplateRef(decl.name, decl.language, template_components(decl, values)),
        category=Category.MARKETING,
        purpose=purpose,
        template_id=f"campaign:{campaign_id}" if campaign_id else f"campaign:{decl.name}",
    )


# --- who is eligible ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Facts:
    """What the runtime looked up about one candidate just before asking (``None``: not looked up,
    which the gate treats as a block)."""

    suppressed: bool | None
    restricted: bool
    marketing_sent_in_period: int | None


@dataclass(frozen=True, slots=True)
class Audience:
    """The selection rules of one campaign."""

    purpose: str
    locale: str  # "" = any locale
    segments: tuple[Segment, ...] = ()
    decl: TemplateDeclaration | None = None
    params: Mapping[str, str] = field(default_factory=dict)

    def matches_preferences(self, conversation: Conversation) -> AudienceReason | None:
        if self.locale and conversation.locale.split("-")[0].split("_")[0] != self.locale:
            return AudienceReason.LOCALE
        if not all(s.matches(conversation.slots) for s in self.segments):
            return AudienceReason.SEGMENT
        return None


@dataclass(frozen=True, slots=True)
class Assessment:
    """The answer for one candidate: ``reason`` is ``None`` when they may receive ``message``."""

    reason: str | None
    message: Outbound | None = None
    detail: str = ""

    @property
    def eligible(self) -> bool:
        return self.reason is None


def minor_fact(conversation: Conversation) -> bool | None:
    """The age-gate result the flow recorded (``slots['age_ok']``): True = minor, None = unknown."""
    ok = conversation.slots.get("age_ok")
    return None if ok is None else not bool(ok)


def assess(
    conversation: Conversation,
    audience: Audience,
    compiled: Mapping[str, jinja2.Template],
    project: Project,
    now: datetime,
    facts: Facts,
    campaign_id: str = "",
) -> Assessment:
    """Decide whether ``conversation``'s customer is in the campaign (see the module docstring for the
    order of the checks). The gate is asked with the real message (rendered when possible)."""
    if audience.decl is None:
        raise CampaignError("template: the campaign has no template declaration")
    values: dict[str, str] | None
    render_error = ""
    try:
        values = render_params(compiled, conversation)
    except RenderError as exc:
        values, render_error = None, str(exc)
    placeholder = {p: "-" for p in audience.decl.parameters}
    message = campaign_message(conversation.subject, audience.decl, audience.purpose, values or placeholder,
                               campaign_id)
    verdict = decide_send(
        GateInput.for_conversation(
            message,
            conversation,
            project,
            now,
            suppressed=facts.suppressed,
            minor=minor_fact(conversation),
            marketing_sent_in_period=facts.marketing_sent_in_period,
            restricted=facts.restricted,
        )
    )
    if not verdict.allowed:
        return Assessment(str(verdict.reason), None, verdict.detail)
    preference = audience.matches_preferences(conversation)
    if preference is not None:
        return Assessment(str(preference), None, f"{preference}: not chosen by the customer")
    if values is None:
        return Assessment(str(AudienceReason.RENDER_FAILED), None, render_error)
    return Assessment(None, verdict.message, verdict.detail)


#: Every exclusion reason a campaign report may show, in the order the checks run.
EXCLUSION_REASONS: tuple[str, ...] = (
    *(str(r) for r in Reason if not str(r).startswith("allowed")),
    *(str(r) for r in AudienceReason),
)
