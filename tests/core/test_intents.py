"""Keyword normalisation and matching (consent requirements section 4.3), built-in keyword sets."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core.intents import (
    BUILTIN_KEYWORDS,
    HUMAN_MAX_TOKENS,
    HUMAN_TOKENS,
    MAX_INPUT,
    OPTOUT_EXACT_ONLY,
    OPTOUT_WORDS,
    BuiltinIntent,
    builtin_intent,
    builtin_intent_of_form,
    match_form,
    normalise,
    number_in,
    squeeze,
)

OPTOUT = BuiltinIntent.OPTOUT


@pytest.mark.parametrize(
    ("text", "form"),
    [
        ("Báj a!!", "baj a"),
        ("STOP🛑", "stop"),
        ("\uff33\uff34\uff2f\uff30", "stop"),  # full-width
        ("Stopp.", "stopp"),
        ("Désabonner", "desabonner"),
        ("  ¿Cuándo   PARA el bus?\n", "cuando para el bus"),
        ("sto\u200bp", "sto p"),  # zero-width space is not a letter
        ("Straße", "strasse"),  # full case-fold
        ("ÇA ÑU ü", "ca nu u"),
        ("STOP 2", "stop 2"),
    ],
)
def test_normalise(text: str, form: str) -> None:
    assert normalise(text) == form


def test_repeated_letters_are_squeezed_but_digits_kept() -> None:
    assert match_form("bajaaaa") == "baja"
    assert match_form("stooop") == "stop"
    assert match_form("STOP 2000") == "stop 2000"


def test_input_is_capped() -> None:
    assert len(normalise("a" * 10_000)) <= 160


@pytest.mark.parametrize(
    "text",
    [
        "Báj a!!",
        "STOP🛑",
        "\uff33\uff34\uff2f\uff30",
        "Stopp.",
        "Désabonner",
        "DISISCRIVIMI",
        "baja",
        "BAJA",
        "bajaaaa",
        "stooop",
        "baja por favor",
        "stop gracias",
        "cancelar ya",
        "Darme de baja",
        "no más",
        "No quiero",
        "UNSUBSCRIBE",
        "opt-out",
        "Opt out",
        "STOP ALL",
        "stopall",
        "ARRÊT",
        "abmelden",
        "keine Werbung",
        "basta",
        "Cancella",
        "annulla",
        "sair",
        "parar",
        "descadastrar",
        "STOP 2",
        "para",
        "End",
        "remove",
        "Stop promotions",
        "stop please now thanks",
    ],
)
def test_optout_corpus(text: str) -> None:
    assert builtin_intent(text) is OPTOUT, text


@pytest.mark.parametrize(
    "text",
    [
        "no stop en la parada",
        "¿cuándo para el bus?",
        "para mañana tengo cita",  # PARA only as the whole message
        "the end of the month",
        "please stop sending me the invoice twice a month ok",  # keyword not leading
        "stop stop stop stop stop",  # more than 3 extra tokens
        "hola",
        "sí",
        "no",
        "",
        "🛑",
    ],
)
def test_optout_negatives(text: str) -> None:
    assert builtin_intent(text) is not OPTOUT, text


def test_every_listed_optout_word_matches_in_every_case_and_accent_form() -> None:
    for word in (*OPTOUT_WORDS, *OPTOUT_EXACT_ONLY):
        for variant in (word, word.lower(), word.title(), f"{word}!!", f"  {word} 🙏"):
            assert builtin_intent(variant) is OPTOUT, variant


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("HELP", BuiltinIntent.HELP),
        ("ayuda", BuiltinIntent.HELP),
        ("Aide", BuiltinIntent.HELP),
        ("HILFE", BuiltinIntent.HELP),
        ("aiuto", BuiltinIntent.HELP),
        ("ajuda", BuiltinIntent.HELP),
        ("info", BuiltinIntent.HELP),
        ("START", BuiltinIntent.RESUBSCRIBE),
        ("alta", BuiltinIntent.RESUBSCRIBE),
        ("Volver", BuiltinIntent.RESUBSCRIBE),
        ("AGENTE", BuiltinIntent.HUMAN),
        ("quiero hablar con una persona", BuiltinIntent.HUMAN),
        ("talk to a human please", BuiltinIntent.HUMAN),
        ("MY DATA", BuiltinIntent.EXPORT),
        ("mis datos", BuiltinIntent.EXPORT),
        ("DELETE MY DATA", BuiltinIntent.ERASE),
        ("Borrar mis datos", BuiltinIntent.ERASE),
        ("eliminar mis datos", BuiltinIntent.ERASE),  # not the ELIMINAR opt-out prefix
        ("cancella i miei dati", BuiltinIntent.ERASE),
    ],
)
def test_other_builtins(text: str, intent: BuiltinIntent) -> None:
    assert builtin_intent(text) is intent


def test_yes_and_no_are_never_builtin() -> None:
    for word in ("yes", "YES", "sí", "si", "no", "ok", "vale", "oui", "ja", "SI QUIERO"):
        assert builtin_intent(word) is None, word


def test_numbers() -> None:
    assert number_in(" 15 ") == 15
    assert number_in("2009") == 2009
    assert number_in("15 años") is None
    assert number_in("fifteen") is None


def reference_normalise(text: str) -> str:
    """Section 4.3 spelled out character by character (what :func:`normalise` must equal)."""
    s = unicodedata.normalize("NFKC", text[: MAX_INPUT * 2]).casefold()
    s = "".join(c for c in unicodedata.normalize("NFD", s) if not unicodedata.combining(c)).casefold()
    s = "".join(c if c.isalnum() else " " for c in s[:MAX_INPUT])
    return " ".join(s.split())


def reference_intent_of_form(form: str) -> BuiltinIntent | None:
    """Each built-in set asked in turn: exact matches first, then prefixes (then the HUMAN rule)."""
    if not form:
        return None
    for intent, words in BUILTIN_KEYWORDS:
        if words.match_exact(form):
            return intent
    for intent, words in BUILTIN_KEYWORDS:
        if words.match_leading(form.split()):
            return intent
    tokens = form.split()
    return BuiltinIntent.HUMAN if len(tokens) <= HUMAN_MAX_TOKENS and set(tokens) & HUMAN_TOKENS else None


KEYWORDS = sorted({w for _, ws in BUILTIN_KEYWORDS for w in ws.exact} | set(HUMAN_TOKENS) | {"hola", "para", "end", "ya"})
TEXTS = st.one_of(
    st.text(max_size=200),
    st.text(alphabet="aAáÁeéÉñÑçÇß ﬁ_-.!¿?0123456789\u017f\u200b\u0301\n\t🛑\uff53\uff54\uff4f\uff50", max_size=60),
    st.lists(st.sampled_from(KEYWORDS), max_size=6).map(" ".join),
)


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_normalise_equals_the_character_by_character_definition(text: str) -> None:
    assert normalise(text) == reference_normalise(text)


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_one_index_answers_as_the_sets_asked_in_turn(text: str) -> None:
    form = match_form(text)
    assert builtin_intent_of_form(form) == reference_intent_of_form(form)


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_squeeze_equals_the_substitution_it_short_cuts(text: str) -> None:
    form = normalise(text)
    assert squeeze(form) == re.sub(r"([^\W\d_])\1+", r"\1", form)
