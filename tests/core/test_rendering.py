"""Templates: sandbox, StrictUndefined, locale fallback, limits, forced opt-out in marketing messages."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from bot.core import limits
from bot.core.messages import Button, Category, ListRow, ListSection, Outbound, OutboundKind
from bot.core.rendering import Context, FixedValues, NoticeText, TemplateSet, TemplateSource, shown_text
from bot.errors import LimitError, RenderError

CTX = {"business": "Acme Shoes", "name": "Ana", "stop_word": "STOP"}


def _set(*items: tuple[str, str, str], default: str = "en") -> TemplateSet:
    ts = TemplateSet(
        [TemplateSource(loc, name, text, f"templates/{loc}/{name}.j2") for loc, name, text in items], default
    )
    assert ts.problems == []
    return ts


def test_front_matter_buttons_and_category() -> None:
    ts = _set(
        (
            "en",
            "ask",
            "---\ncategory: utility\nbuttons:\n  - {id: yes_tap, title: 'Yes {{ name }}'}\n---\nHi {{ name }}\n",
        )
    )
    r = ts.render("ask", "en", CTX, "34600")
    assert r.outbound.kind is OutboundKind.BUTTONS and r.outbound.category is Category.UTILITY
    assert r.outbound.buttons == (Button("yes_tap", "Yes Ana"),) and r.outbound.body == "Hi Ana"
    assert r.text == "Hi Ana\n[Yes Ana]"


def test_locale_fallback_to_default() -> None:
    ts = _set(("en", "hello", "Hello"), ("es", "other", "Otro"), default="en")
    assert ts.render("hello", "es", CTX, "x").outbound.body == "Hello"
    assert ts.render("hello", "es", CTX, "x").locale == "en"
    with pytest.raises(RenderError, match="no template `missing`"):
        ts.render("missing", "es", CTX, "x")


def test_builtin_replies_exist_and_can_be_overridden() -> None:
    ts = _set(("es", "help", "Ayuda de {{ business }}"))
    assert ts.render("help", "es", CTX, "x").outbound.body == "Ayuda de Acme Shoes"
    assert ts.has("help", "en") and ts.has("optout_confirm", "es")


def test_strict_undefined() -> None:
    ts = _set(("en", "t", "Hi {{ nobody }}"))
    with pytest.raises(RenderError, match="undefined variable: 'nobody' is undefined"):
        ts.render("t", "en", CTX, "x")


def test_sandbox_blocks_unsafe_access() -> None:
    ts = _set(("en", "t", "{{ business.__class__.__mro__ }}"))
    with pytest.raises(RenderError):
        ts.render("t", "en", CTX, "x")


@pytest.mark.parametrize(
    "text", ["{{ slots.update({'age_ok': True}) }}", "{{ items.append('x') }}", "{{ slots.pop('age_ok') }}"]
)
def test_templates_cannot_change_their_values(text: str) -> None:
    slots = {"age_ok": False}
    items = ["a"]
    ts = _set(("en", "t", text))
    with pytest.raises(RenderError):
        ts.render("t", "en", {**CTX, "slots": slots, "items": items}, "x")
    assert slots == {"age_ok": False} and items == ["a"]


def test_syntax_error_is_a_problem_not_a_crash() -> None:
    ts = TemplateSet([TemplateSource("en", "bad", "Hi {{ name }", "templates/en/bad.j2")])
    assert len(ts.problems) == 1 and ts.problems[0].file == "templates/en/bad.j2"


def test_marketing_text_gets_stop_button_footer_and_business() -> None:
    ts = _set(("en", "promo", "50% off this weekend!"))
    r = ts.render("promo", "en", CTX, "x", Category.MARKETING, "offers")
    o = r.outbound
    assert o.category is Category.MARKETING and o.purpose == "offers"
    assert o.kind is OutboundKind.BUTTONS
    assert o.buttons[-1].id == limits.OPTOUT_PAYLOAD
    assert "STOP" in o.footer and o.header == "Acme Shoes"


def test_marketing_cannot_drop_the_opt_out_even_with_three_buttons_or_a_footer() -> None:
    src = (
        "---\ncategory: marketing\npurpose: news\nfooter: 'no way out'\nbuttons:\n"
        "  - {id: a, title: A}\n  - {id: b, title: B}\n  - {id: c, title: C}\n---\nNews from {{ business }}"
    )
    o = _set(("es", "promo", src)).render("promo", "es", CTX, "x").outbound
    assert o.footer == "Responde BAJA para darte de baja"
    assert [b.id for b in o.buttons] == ["a", "b", "c"]  # no room: the footer carries it
    assert o.header == ""  # the business is already named in the body


def test_marketing_needs_a_purpose() -> None:
    with pytest.raises(RenderError, match="needs a purpose"):
        _set(("en", "p", "Sale!")).render("p", "en", CTX, "x", Category.MARKETING)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (Outbound("x", OutboundKind.TEXT, body="a" * 4097), "m.body"),
        (Outbound("x", OutboundKind.BUTTONS, body="b", buttons=(Button("1", "t" * 21),)), "m.buttons[0].title"),
        (
            Outbound("x", OutboundKind.BUTTONS, body="b", buttons=tuple(Button(str(i), "t") for i in range(4))),
            "m.buttons",
        ),
        (Outbound("x", OutboundKind.BUTTONS, body="b", buttons=(Button("i" * 257, "t"),)), "m.buttons[0].id"),
        (Outbound("x", OutboundKind.BUTTONS, body="b", header="h" * 61, buttons=(Button("1", "t"),)), "m.header"),
        (Outbound("x", OutboundKind.BUTTONS, body="b", footer="f" * 61, buttons=(Button("1", "t"),)), "m.footer"),
        (
            Outbound(
                "x",
                OutboundKind.LIST,
                body="b",
                list_button="l" * 21,
                sections=(ListSection("s", (ListRow("1", "r"),)),),
            ),
            "m.list_button",
        ),
        (
            Outbound(
                "x",
                OutboundKind.LIST,
                body="b",
                list_button="Pick",
                sections=(ListSection("s", tuple(ListRow(str(i), "r") for i in range(11))),),
            ),
            "m.sections",
        ),
        (
            Outbound(
                "x",
                OutboundKind.LIST,
                body="b",
                list_button="Pick",
                sections=(ListSection("s", (ListRow("1", "r" * 25),)),),
            ),
            "m.sections[0].rows[0].title",
        ),
        (
            Outbound(
                "x",
                OutboundKind.LIST,
                body="b",
                list_button="Pick",
                sections=(ListSection("s", (ListRow("1", "r", "d" * 73),)),),
            ),
            "m.sections[0].rows[0].description",
        ),
        (
            Outbound(
                "x",
                OutboundKind.LIST,
                body="b",
                list_button="Pick",
                sections=(ListSection("s" * 25, (ListRow("1", "r"),)),),
            ),
            "m.sections[0].title",
        ),
        (Outbound("x", OutboundKind.TEXT, body="b", footer="f"), "m.footer"),
        (Outbound("x", OutboundKind.TEXT, body="  "), "m.body"),
    ],
)
def test_limits(message: Outbound, field: str) -> None:
    with pytest.raises(LimitError) as err:
        limits.check(message, "m")
    assert err.value.field == field


def test_render_checks_limits() -> None:
    ts = _set(
        (
            "en",
            "t",
            "---\nbuttons:\n  - {id: x, title: '{{ name }} {{ name }} {{ name }} {{ name }} {{ name }} {{ name }}'}\n---\nb",
        )
    )
    with pytest.raises(LimitError, match="at most 20 characters"):
        ts.render("t", "en", CTX, "x")


def test_list_message() -> None:
    src = (
        "---\nlist:\n  button: Choose\n  sections:\n    - title: Topics\n      rows:\n"
        "        - {id: 'pick:offers', title: Offers, description: '{{ business }} deals'}\n---\nPick"
    )
    o = _set(("en", "l", src)).render("l", "en", CTX, "x").outbound
    assert o.kind is OutboundKind.LIST and o.sections[0].rows[0].description == "Acme Shoes deals"
    assert shown_text(o) == "Pick\n[Choose]\nTopics\n- Offers: Acme Shoes deals"


def test_notice_text_hash_is_of_the_exact_text() -> None:
    n = NoticeText.of("1.0", "es", "Hola\n[Sí]", "notice", "first_layer")
    assert n.sha256 == hashlib.sha256("Hola\n[Sí]".encode()).hexdigest()


def test_same_values_render_once_and_only_to_changes() -> None:
    ts = _set(("en", "t", "---\nnotice: first_layer\n---\nHi {{ name }}, {% for p in items %}{{ p.t }} {% endfor %}"))
    ctx = {**CTX, "items": [{"t": "a"}, {"t": "b"}]}
    first = ts.render("t", "en", ctx, "346001")
    again = ts.render("t", "en", dict(ctx), "346002")
    assert again.outbound == replace(first.outbound, to="346002") and again.text == first.text == "Hi Ana, a b"
    assert again.sha256 == first.sha256 == hashlib.sha256(b"Hi Ana, a b").hexdigest()
    assert len(ts._rendered) == 1  # the second render was the kept one
    ctx["items"].append({"t": "c"})  # a changed value is a different key
    assert ts.render("t", "en", ctx, "x").text == "Hi Ana, a b c"


@pytest.mark.parametrize("values", [(1, True, 1.0, "1"), (0, False, 0.0, None), ([1], (1,), [True], ["1"])])
def test_values_that_compare_equal_but_print_differently_are_not_confused(values: tuple[object, ...]) -> None:
    ts = _set(("en", "t", "{{ v }}"))
    assert [ts.render("t", "en", {"v": v}, "x").text for v in values] == [str(v) for v in values]


def test_varying_templates_and_unhashable_values_are_rendered_every_time() -> None:
    class Counter:
        n = 0

        def __str__(self) -> str:
            Counter.n += 1
            return str(Counter.n)

    ts = _set(("en", "pick", "{{ ['a', 'b', 'c', 'd'] | random }}"), ("en", "obj", "n={{ c }}"))
    assert ts.resolve("pick", "en").varying and not ts.resolve("obj", "en").varying
    assert {ts.render("pick", "en", CTX, "x").text for _ in range(60)} == {"a", "b", "c", "d"}
    c = Counter()
    assert [ts.render("obj", "en", {"c": c}, "x").text for _ in range(2)] == ["n=1", "n=2"]
    assert ts._rendered == {}


def test_the_rendered_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bot.core.rendering.RENDER_CACHE_SIZE", 3)
    ts = _set(("en", "t", "{{ v }}"))
    for v in range(10):
        assert ts.render("t", "en", {"v": v}, "x").text == str(v)
    assert len(ts._rendered) == 3


def test_fixed_values_are_keyed_by_their_token_and_an_override_is_seen() -> None:
    ts = _set(("en", "t", "{{ business }}: {% for p in purposes %}{{ p.title }} {% endfor %}"))
    fixed = FixedValues({"business": "Acme", "purposes": [{"title": "Offers"}]})
    ctx = Context(fixed)
    assert ts.render("t", "en", ctx, "x").text == "Acme: Offers"
    assert ts.render("t", "en", Context(fixed), "y").text == "Acme: Offers"
    assert len(ts._rendered) == 1  # the second render was the kept one
    other = Context(fixed)
    other["business"] = "Other Shop"  # overrides a fixed value: keyed by the value itself
    assert ts.render("t", "en", other, "z").text == "Other Shop: Offers"
    same_values = Context(FixedValues({"business": "Acme", "purposes": [{"title": "News"}]}))
    assert ts.render("t", "en", same_values, "w").text == "Acme: News"  # another FixedValues, another key
    assert len(ts._rendered) == 3
