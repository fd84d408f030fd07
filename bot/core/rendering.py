"""Message templates: sandboxed Jinja, strict variables, locale fallback, WhatsApp limits, forced opt-out.

A template is one file ``templates/<locale>/<name>.j2``: an optional YAML front-matter between ``---``
lines declaring the interactive structure, then the Jinja body::

    ---
    category: utility            # service (default) | utility | marketing
    purpose: offers              # marketing only
    notice: first_layer          # first_layer | prompt: the text is a consent notice (hashed, stored)
    header: "{{ business }}"
    footer: "..."
    buttons:                     # <= 3 reply buttons: id (the trigger, optionally ``trigger:value``) + title
      - {id: consent_yes, title: "Yes, sign me up"}
    list:                        # or a list message (not both)
      button: "Choose"
      sections:
        - title: "Topics"
          rows: [{id: pick:offers, title: "Offers", description: "..."}]
    ---
    Hi {{ profile_name }}! ...

Every string in the front-matter except ids is Jinja too. Templates are compiled once
(:class:`TemplateSet`), never per message. Rendering a MARKETING message always adds the business name
(header or body) and the opt-out element: a footer "Reply STOP to opt out" and, when there is room, a
"Stop promotions" button with the reserved payload ``optout``; the author cannot leave them out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

from bot.core import limits
from bot.core.audience import TemplateDeclaration, fallback_template, find_declaration
from bot.core.flowspec import Problem, load_yaml
from bot.core.frozen import evolve, quick_init
from bot.core.messages import Button, Category, ListRow, ListSection, Outbound, OutboundKind, TemplateRef
from bot.core.standard_replies import DEFAULTS, STOP_BUTTON, STOP_FOOTER
from bot.errors import RenderError

FALLBACK_LOCALE = "en"


@quick_init
@dataclass(frozen=True, slots=True)
class TemplateSource:
    """A template's text as loaded from a file (``file`` is only used in messages)."""

    locale: str
    name: str
    text: str
    file: str = ""


@quick_init
@dataclass(frozen=True, slots=True)
class NoticeText:
    """The exact text of a consent notice shown to a customer; the ledger stores each one immutably."""

    version: str
    locale: str
    text: str
    sha256: str
    template: str = ""
    kind: str = ""  # first_layer | prompt

    @classmethod
    def of(
        cls, version: str, locale: str, text: str, template: str = "", kind: str = "", sha256: str = ""
    ) -> NoticeText:
        """``sha256`` is the text's digest when the caller already has it (it is computed otherwise)."""
        return cls(version, locale, text, sha256 or hashlib.sha256(text.encode()).hexdigest(), template, kind)


@quick_init
@dataclass(frozen=True, slots=True)
class Rendered:
    outbound: Outbound
    text: str  # what the customer sees, as one string (the notice text when ``notice`` is set)
    notice: str = ""
    locale: str = ""  # the locale of the template actually used (after fallback)
    sha256: str = ""  # of ``text``, for a notice


def shown_text(message: Outbound) -> str:
    """A message as the customer sees it: header, body, footer, then one line per button/row."""
    parts = [p for p in (message.header, message.body, message.footer) if p]
    parts += [f"[{b.title}]" for b in message.buttons]
    if message.list_button:
        parts.append(f"[{message.list_button}]")
    for section in message.sections:
        if section.title:
            parts.append(section.title)
        parts += [f"- {r.title}" + (f": {r.description}" if r.description else "") for r in section.rows]
    return "\n".join(parts)


_Text = jinja2.Template | str


def _env() -> SandboxedEnvironment:
    """Sandboxed, and immutable: a template can read its values but never change them (``slots.update``,
    ``purposes.append``...), so rendering cannot alter a conversation or another message's values."""
    return ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=False, lstrip_blocks=True
    )


class CompiledTemplate:
    """One precompiled template (body and every front-matter string)."""

    __slots__ = (
        "body",
        "buttons",
        "category",
        "file",
        "footer",
        "header",
        "list_button",
        "locale",
        "name",
        "notice",
        "purpose",
        "reads",
        "reads_sorted",
        "sections",
        "varying",
    )

    def __init__(self, env: SandboxedEnvironment, src: TemplateSource) -> None:
        self.name = src.name
        self.locale = src.locale
        self.file = src.file
        self.reads: set[str] = set()  # the context variables the template reads
        self.varying = False  # True: two renders of the same values may differ (the `random` filter)
        meta, body = _split(src)
        if not isinstance(meta, dict):
            raise RenderError(f"{self._where()}: the front-matter must be a mapping")
        unknown = set(meta) - {"category", "purpose", "notice", "header", "footer", "buttons", "list"}
        if unknown:
            raise RenderError(f"{self._where()}: unknown front-matter key `{sorted(unknown)[0]}`")
        try:
            self.category = Category(meta["category"]) if "category" in meta else None
        except ValueError:
            raise RenderError(f"{self._where()}: category must be service, utility or marketing") from None
        self.purpose = str(meta.get("purpose", ""))
        self.notice = str(meta.get("notice", ""))
        if self.notice not in ("", "first_layer", "prompt"):
            raise RenderError(f"{self._where()}: notice must be first_layer or prompt")
        self.body = self._compile(env, body, "body")
        self.header = self._compile(env, str(meta.get("header", "")), "header")
        self.footer = self._compile(env, str(meta.get("footer", "")), "footer")
        buttons = meta.get("buttons", []) or []
        if not isinstance(buttons, list) or not all(
            isinstance(b, dict) and "id" in b and "title" in b for b in buttons
        ):
            raise RenderError(f"{self._where()}: buttons must be a list of {{id, title}}")
        self.buttons: tuple[tuple[str, _Text], ...] = tuple(
            (str(b["id"]), self._compile(env, str(b["title"]), "buttons.title")) for b in buttons
        )
        lst = meta.get("list")
        self.list_button: _Text = ""
        self.sections: tuple[tuple[_Text, tuple[tuple[str, _Text, _Text], ...]], ...] = ()
        if lst is not None:
            if buttons:
                raise RenderError(f"{self._where()}: a template has buttons or a list, not both")
            if not isinstance(lst, dict) or not isinstance(lst.get("sections"), list):
                raise RenderError(f"{self._where()}: list needs `button` and `sections`")
            self.list_button = self._compile(env, str(lst.get("button", "")), "list.button")
            sections = []
            for s in lst["sections"]:
                rows = tuple(
                    (
                        str(r["id"]),
                        self._compile(env, str(r["title"]), "list.rows.title"),
                        self._compile(env, str(r.get("description", "")), "list.rows.description"),
                    )
                    for r in s.get("rows", [])
                )
                sections.append((self._compile(env, str(s.get("title", "")), "list.sections.title"), rows))
            self.sections = tuple(sections)
        self.reads_sorted = tuple(sorted(self.reads))  # the render cache's key order

    def _where(self) -> str:
        return self.file or f"{self.locale}/{self.name}"

    def _compile(self, env: SandboxedEnvironment, text: str, part: str) -> _Text:
        if "{" not in text:
            return text.strip()
        try:
            tree = env.parse(text)
            compiled = env.from_string(tree)
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(f"{self._where()}: {part}: line {exc.lineno}: {exc.message}") from exc
        self.reads |= jinja2.meta.find_undeclared_variables(tree)
        self.varying = (
            self.varying
            or any(f.name in _VARYING_FILTERS for f in tree.find_all(jinja2.nodes.Filter))
            or any(n.name in _VARYING_GLOBALS for n in tree.find_all(jinja2.nodes.Name))
        )
        return compiled

    def _text(self, t: _Text, ctx: Mapping[str, Any], part: str) -> str:
        if isinstance(t, str):
            return t
        try:
            return t.render(ctx).strip()
        except jinja2.UndefinedError as exc:
            raise RenderError(f"{self._where()}: {part}: undefined variable: {exc.message}") from exc
        except jinja2.TemplateError as exc:
            raise RenderError(f"{self._where()}: {part}: {exc}") from exc
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise RenderError(f"{self._where()}: {part}: {exc}") from exc

    def render(self, ctx: Mapping[str, Any], to: str) -> Outbound:
        buttons = tuple(Button(i, self._text(t, ctx, "buttons.title")) for i, t in self.buttons)
        sections = tuple(
            ListSection(
                self._text(st, ctx, "list.sections.title"),
                tuple(
                    ListRow(i, self._text(rt, ctx, "list.rows.title"), self._text(rd, ctx, "list.rows.description"))
                    for i, rt, rd in rows
                ),
            )
            for st, rows in self.sections
        )
        kind = OutboundKind.LIST if sections else OutboundKind.BUTTONS if buttons else OutboundKind.TEXT
        return Outbound(
            to=to,
            kind=kind,
            body=self._text(self.body, ctx, "body"),
            header=self._text(self.header, ctx, "header"),
            footer=self._text(self.footer, ctx, "footer"),
            buttons=buttons,
            list_button=self._text(self.list_button, ctx, "list.button") if sections else "",
            sections=sections,
            category=self.category or Category.SERVICE,
            purpose=self.purpose,
            template_id=self.name,
        )


_VARYING_FILTERS = frozenset({"random"})  # output differs between two renders of the same values
_VARYING_GLOBALS = frozenset({"lipsum"})
_MISSING = object()
RENDER_CACHE_SIZE = 4096


class _Unhashable(Exception):
    pass


class FixedValues(dict[str, Any]):
    """Context values that never change while this object lives (built once, rendered in the immutable
    sandbox). A :class:`Context` names it so the render cache keys them by its ``token``, not by walking
    the values again (a cache entry holds the token, so no other object can take its place)."""

    __slots__ = ("token",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        super().__init__(values)
        self.token = object()


class Context(dict[str, Any]):
    """A template context whose values for the keys of ``fixed`` are ``fixed``'s own objects unless
    overridden (the render cache checks identity)."""

    __slots__ = ("fixed",)

    def __init__(self, fixed: FixedValues) -> None:
        super().__init__(fixed)
        self.fixed = fixed


def _key_part(context: Mapping[str, Any], name: str) -> Any:
    value = context.get(name, _MISSING)
    fixed = getattr(context, "fixed", None)
    if fixed is not None and name in fixed and fixed[name] is value:
        return (fixed.token, name)
    return _frozen(value)


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a template value that is equal only for values that render the same
    (``1``, ``1.0`` and ``True`` compare equal in Python but print differently). Raises
    :class:`_Unhashable` for anything but plain data (strings, numbers, None, lists, tuples, dicts)."""
    kind = type(value)
    if kind is str:
        return value
    if kind in (int, float, bool) or value is None or value is _MISSING:
        return (kind, value)
    if kind is list or kind is tuple:
        return (kind, tuple(_frozen(v) for v in value))
    if kind is dict:
        return (kind, tuple((k, _frozen(v)) for k, v in value.items()))
    raise _Unhashable


def _split(src: TemplateSource) -> tuple[Any, str]:
    text = src.text.replace("\r\n", "\n")
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end < 0:
        raise RenderError(f"{src.file or src.locale + '/' + src.name}: front-matter has no closing `---`")
    try:
        meta = load_yaml(text[4:end]) or {}
    except yaml.YAMLError as exc:
        raise RenderError(f"{src.file or src.locale + '/' + src.name}: front-matter: {exc}") from exc
    rest = text[end + 4 :]
    return meta, rest[1:] if rest.startswith("\n") else rest


def enforce_marketing(message: Outbound, locale: str, business: str, purpose: str) -> Outbound:
    """Make a marketing message carry the business name and the opt-out element, whatever the template."""
    if not purpose:
        raise RenderError(f"{message.template_id}: a marketing message needs a purpose")
    footer = STOP_FOOTER.get(locale, STOP_FOOTER[FALLBACK_LOCALE])
    stop = Button(limits.OPTOUT_PAYLOAD, STOP_BUTTON.get(locale, STOP_BUTTON[FALLBACK_LOCALE]))
    header, body = message.header, message.body
    if business and business not in header and business not in body:
        if not header and len(business) <= limits.HEADER_TEXT:
            header = business
        else:
            body = f"{business}: {body}"
    kind, buttons = message.kind, message.buttons
    if kind is OutboundKind.TEXT:
        kind, buttons = OutboundKind.BUTTONS, (stop,)
    elif (
        kind is OutboundKind.BUTTONS
        and len(buttons) < limits.BUTTONS_MAX
        and all(b.id != limits.OPTOUT_PAYLOAD for b in buttons)
    ):
        buttons = (*buttons, stop)
    return Outbound(
        to=message.to,
        kind=kind,
        body=body,
        header=header,
        footer=footer,
        buttons=buttons,
        list_button=message.list_button,
        sections=message.sections,
        template=message.template,
        fallback=message.fallback,
        reply_to=message.reply_to,
        category=Category.MARKETING,
        purpose=purpose,
        template_id=message.template_id,
    )


class TemplateSet:
    """All templates of a project, compiled once. Lookup falls back to the flow's default locale, then to
    English, then to the built-in defaults of :mod:`bot.core.standard_replies`."""

    def __init__(
        self,
        sources: Iterable[TemplateSource],
        default_locale: str = FALLBACK_LOCALE,
        approved: Iterable[TemplateDeclaration] = (),
    ) -> None:
        self.default_locale = default_locale
        self.approved_templates = tuple(approved)  # whatsapp_templates.yaml: what a flow send may fall back to
        self.problems: list[Problem] = []
        self._env = _env()
        self._own: dict[tuple[str, str], CompiledTemplate] = {}
        self._builtin: dict[tuple[str, str], CompiledTemplate] = {}
        for (loc, name), text in DEFAULTS.items():
            self._builtin[(loc, name)] = CompiledTemplate(
                self._env, TemplateSource(loc, name, text, f"<builtin {loc}/{name}>")
            )
        for src in sources:
            try:
                self._own[(src.locale, src.name)] = CompiledTemplate(self._env, src)
            except RenderError as exc:
                self.problems.append(
                    Problem(
                        src.file or f"{src.locale}/{src.name}", _line_of(str(exc)), "error", str(exc).split(": ", 1)[-1]
                    )
                )
        self._cache: dict[tuple[str, str], CompiledTemplate | None] = {}
        # Rendered messages by template and the values it read; only templates whose output depends on
        # nothing else are cached (no `random`), only for plain-data values, at most RENDER_CACHE_SIZE.
        self._rendered: dict[tuple[Any, ...], Rendered] = {}

    def approved(self, name: str, locale: str, context: Mapping[str, Any]) -> TemplateRef:
        """The approved WhatsApp template ``name`` for ``locale`` (else the default locale), filled from
        ``context`` (:func:`bot.core.audience.fallback_template`). :class:`RenderError` when it is not
        declared or a parameter has no value."""
        decl = find_declaration(self.approved_templates, name, locale, self.default_locale)
        if decl is None:
            raise RenderError(f"no approved template `{name}` for `{locale}` in whatsapp_templates.yaml")
        return fallback_template(decl, context)

    def own(self) -> dict[tuple[str, str], CompiledTemplate]:
        """The project's own templates by (locale, name)."""
        return dict(self._own)

    def has(self, name: str, locale: str) -> bool:
        """True when ``name`` exists for exactly ``locale`` (project template or built-in default)."""
        return (locale, name) in self._own or (locale, name) in self._builtin

    def resolve(self, name: str, locale: str) -> CompiledTemplate:
        key = (locale, name)
        hit = self._cache.get(key)
        if hit is None and key not in self._cache:
            hit = None
            for loc in dict.fromkeys((locale, self.default_locale, FALLBACK_LOCALE)):
                hit = self._own.get((loc, name)) or self._builtin.get((loc, name))
                if hit is not None:
                    break
            self._cache[key] = hit
        if hit is None:
            raise RenderError(f"no template `{name}` for locale `{locale}` (nor `{self.default_locale}`)")
        return hit

    def render(
        self,
        name: str,
        locale: str,
        context: Mapping[str, Any],
        to: str,
        category: Category | None = None,
        purpose: str = "",
    ) -> Rendered:
        """Render ``name`` for ``locale``; ``category``/``purpose`` (from the flow) override the template's.
        Raises :class:`RenderError` (undefined variable, bad template) or :class:`LimitError`.

        The same template rendered from the same values gives the same message (only ``to`` differs), so
        results are kept by the values the template reads: a first-contact notice renders once."""
        tpl = self.resolve(name, locale)
        key: tuple[Any, ...] | None = None
        if not tpl.varying:
            try:
                key = (tpl, category, purpose, *(_key_part(context, n) for n in tpl.reads_sorted))
            except _Unhashable:
                key = None
            else:
                hit = self._rendered.get(key)
                if hit is not None:
                    return Rendered(evolve(hit.outbound, to=to), hit.text, hit.notice, hit.locale, hit.sha256)
        rendered = self._render(tpl, name, locale, context, to, category, purpose)
        if key is not None:
            if len(self._rendered) >= RENDER_CACHE_SIZE:
                del self._rendered[next(iter(self._rendered))]  # the oldest entry
            self._rendered[key] = rendered
        return rendered

    def _render(
        self,
        tpl: CompiledTemplate,
        name: str,
        locale: str,
        context: Mapping[str, Any],
        to: str,
        category: Category | None,
        purpose: str,
    ) -> Rendered:
        message = tpl.render(context, to)
        cat = category or tpl.category or Category.SERVICE
        if cat is Category.MARKETING:
            message = enforce_marketing(message, locale, str(context.get("business", "")), purpose or tpl.purpose)
        elif cat is not message.category:
            message = evolve(message, category=cat, purpose="")
        limits.check(message, f"{tpl.locale}/{name}")
        text = shown_text(message)
        digest = hashlib.sha256(text.encode()).hexdigest() if tpl.notice else ""
        return Rendered(message, text, tpl.notice, tpl.locale, digest)


def _line_of(message: str) -> int:
    marker = ": line "
    if marker in message:
        tail = message.split(marker, 1)[1]
        digits = tail.split(":", 1)[0]
        if digits.isdigit():
            return int(digits)
    return 1
