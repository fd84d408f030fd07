"""From an inbound message to a trigger: keyword normalisation and the built-in keyword sets.

Normalisation (:func:`normalise`) follows the consent requirements (section 4.3):

1. only 1:1 *text* is matched against keywords; taps are resolved by payload id, never by label;
2. Unicode NFKC, case-fold, strip accents (NFD, drop combining marks), case-fold again;
3. every non-letter/non-digit (punctuation, emoji, zero-width characters, newlines) becomes a space,
   whitespace is collapsed; input is capped at :data:`MAX_INPUT` characters;
4. repeated letters are squeezed on both sides of the comparison ("bajaaaa", "stooop", "Stopp").

Matching (:meth:`KeywordSet.match`): the whole text equals a keyword (also with the spaces removed,
so "Báj a!!" is BAJA), or the text *starts* with a keyword followed by at most three more tokens
("baja por favor"). Words that are common outside an opt-out ("para", "end", "remove", "ende",
"volver") only match as the whole message. Built-in sets match every language for every customer.
YES/NO-like words are never built in: they are answers a flow attaches to one prompt.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

MAX_INPUT = 160
EXTRA_TOKENS = 3
_SQUEEZE = re.compile(r"([^\W\d_])\1+")


_NOT_ALNUM = re.compile(r"[\W_]+")  # re's \w is str.isalnum() or "_": so this is "not isalnum()"


def normalise(text: str) -> str:
    """The matching form of ``text`` (without squeezing repeated letters)."""
    s = unicodedata.normalize("NFKC", text[: MAX_INPUT * 2]).casefold()
    if not s.isascii():  # ASCII has no combining marks and is its own NFD
        s = "".join(c for c in unicodedata.normalize("NFD", s) if not unicodedata.combining(c)).casefold()
    return " ".join(_NOT_ALNUM.sub(" ", s[:MAX_INPUT]).split())


def squeeze(normalised: str) -> str:
    """Collapse runs of the same letter to one letter ("stooop" -> "stop"); digits are kept as-is."""
    if _SQUEEZE.search(normalised) is None:  # most texts: no run at all (one C call, no substitution)
        return normalised
    return _SQUEEZE.sub(_first_group, normalised)


def _first_group(match: re.Match[str]) -> str:
    return match.group(1)


def match_form(text: str) -> str:
    """``squeeze(normalise(text))``: the form both keywords and inbound text are compared in."""
    return squeeze(normalise(text))


@dataclass(frozen=True, slots=True)
class KeywordSet:
    """Keywords of one intent, precompiled for matching. ``exact_only`` words never match as a prefix."""

    exact: frozenset[str]
    joined: frozenset[str]
    leading: frozenset[str]

    @classmethod
    def of(cls, words: Iterable[str], exact_only: Iterable[str] = ()) -> KeywordSet:
        forms = {match_form(w) for w in words} - {""}
        only = {match_form(w) for w in exact_only} - {""}
        return cls(
            exact=frozenset(forms | only),
            joined=frozenset(f.replace(" ", "") for f in forms | only),
            leading=frozenset(forms),
        )

    def match_exact(self, form: str) -> bool:
        return form in self.exact or form.replace(" ", "") in self.joined

    def match_leading(self, tokens: list[str]) -> bool:
        for k in range(min(len(tokens), 4), 0, -1):
            if len(tokens) - k <= EXTRA_TOKENS and " ".join(tokens[:k]) in self.leading:
                return True
        return False

    def match(self, form: str) -> bool:
        return self.match_exact(form) or self.match_leading(form.split())


class BuiltinIntent(StrEnum):
    """Intents every flow has whatever its author wrote."""

    OPTOUT = "optout"
    RESUBSCRIBE = "resubscribe"
    HELP = "help"
    HUMAN = "human"
    EXPORT = "export"
    ERASE = "erase"


# consent-requirements 4.2, all languages for every customer.
OPTOUT_WORDS: tuple[str, ...] = (
    # es
    "BAJA",
    "DARME DE BAJA",
    "DAR DE BAJA",
    "STOP",
    "PARAR",
    "CANCELAR",
    "DETENER",
    "SALIR",
    "NO MAS",
    "NO QUIERO",
    "ELIMINAR",
    # pt
    "SAIR",
    "REMOVER",
    "DESCADASTRAR",
    # fr
    "ARRET",
    "ARRETER",
    "DESABONNER",
    "DESINSCRIRE",
    # de
    "STOPP",
    "ABMELDEN",
    "KEINE WERBUNG",
    # it
    "BASTA",
    "CANCELLA",
    "DISISCRIVI",
    "DISISCRIVIMI",
    "ANNULLA",
    # en
    "STOPALL",
    "STOP ALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "QUIT",
    "REVOKE",
    "OPTOUT",
    "OPT OUT",
)
OPTOUT_EXACT_ONLY: tuple[str, ...] = ("PARA", "END", "ENDE", "REMOVE")
RESUBSCRIBE_WORDS: tuple[str, ...] = (
    "START",
    "UNSTOP",
    "SUBSCRIBE",
    "RESUME",  # en
    "ALTA",
    "DARME DE ALTA",
    "COMENZAR",
    "SUSCRIBIRME",  # es
    "VOLTAR",
    "INICIAR",
    "CADASTRAR",  # pt
    "REPRENDRE",  # fr
    "ANMELDEN",  # de
    "ISCRIVIMI",  # it
)
RESUBSCRIBE_EXACT_ONLY: tuple[str, ...] = ("VOLVER", "RECEBER")
HELP_WORDS: tuple[str, ...] = ("HELP", "INFO", "AYUDA", "AJUDA", "AIDE", "HILFE", "AIUTO")
HUMAN_WORDS: tuple[str, ...] = (
    "HUMAN",
    "AGENT",
    "PERSON",
    "OPERATOR",
    "TALK TO A PERSON",
    "SPEAK TO A PERSON",
    "TALK TO A HUMAN",
    "HUMANO",
    "AGENTE",
    "PERSONA",
    "OPERADOR",
    "HABLAR CON UNA PERSONA",
    "HABLAR CON UN AGENTE",
    "PESSOA",
    "ATENDENTE",
    "CONSEILLER",
    "MITARBEITER",
    "MENSCH",
    "OPERATORE",
)
EXPORT_WORDS: tuple[str, ...] = (
    "MY DATA",
    "EXPORT MY DATA",
    "MIS DATOS",
    "MEUS DADOS",
    "MES DONNEES",
    "MEINE DATEN",
    "I MIEI DATI",
)
ERASE_WORDS: tuple[str, ...] = (
    "DELETE MY DATA",
    "ERASE MY DATA",
    "BORRAR MIS DATOS",
    "ELIMINAR MIS DATOS",
    "SUPRIMIR MIS DATOS",
    "BORRA MIS DATOS",
    "APAGAR MEUS DADOS",
    "SUPPRIMER MES DONNEES",
    "MEINE DATEN LOSCHEN",
    "CANCELLA I MIEI DATI",
)

# Checked in this order: the longer, more specific data-rights phrases win over the opt-out prefix
# ("eliminar mis datos" is an erasure request, not an opt-out).
BUILTIN_KEYWORDS: tuple[tuple[BuiltinIntent, KeywordSet], ...] = (
    (BuiltinIntent.ERASE, KeywordSet.of(ERASE_WORDS)),
    (BuiltinIntent.EXPORT, KeywordSet.of(EXPORT_WORDS)),
    (BuiltinIntent.OPTOUT, KeywordSet.of(OPTOUT_WORDS, OPTOUT_EXACT_ONLY)),
    (BuiltinIntent.HUMAN, KeywordSet.of(HUMAN_WORDS)),
    (BuiltinIntent.HELP, KeywordSet.of(HELP_WORDS)),
    (BuiltinIntent.RESUBSCRIBE, KeywordSet.of(RESUBSCRIBE_WORDS, RESUBSCRIBE_EXACT_ONLY)),
)

# Localised words the standard replies name ("reply STOP"); English for any other locale.
STOP_WORD: Mapping[str, str] = {"en": "STOP", "es": "BAJA", "pt": "SAIR", "fr": "STOP", "de": "STOPP", "it": "STOP"}
START_WORD: Mapping[str, str] = {
    "en": "START",
    "es": "ALTA",
    "pt": "VOLTAR",
    "fr": "START",
    "de": "START",
    "it": "START",
}
HELP_WORD: Mapping[str, str] = {"en": "HELP", "es": "AYUDA", "pt": "AJUDA", "fr": "AIDE", "de": "HILFE", "it": "AIUTO"}
HUMAN_WORD: Mapping[str, str] = {
    "en": "AGENT",
    "es": "AGENTE",
    "pt": "ATENDENTE",
    "fr": "CONSEILLER",
    "de": "MITARBEITER",
    "it": "OPERATORE",
}

# Answer words: only ever valid as the answer to one pending prompt (the linter refuses them globally).
ANSWER_WORDS: frozenset[str] = frozenset(
    match_form(w)
    for w in (
        "yes",
        "y",
        "yeah",
        "yep",
        "ok",
        "okay",
        "sure",
        "confirm",
        "accept",
        "no",
        "nope",
        "n",
        "si",
        "vale",
        "claro",
        "confirmo",
        "confirmar",
        "acepto",
        "sim",
        "nao",
        "oui",
        "non",
        "ja",
        "nein",
    )
)


# Asking for a person is recognised anywhere in a short message ("quiero hablar con una persona").
HUMAN_TOKENS: frozenset[str] = frozenset(
    match_form(w)
    for w in (
        "human",
        "person",
        "agent",
        "operator",
        "humano",
        "persona",
        "agente",
        "operador",
        "pessoa",
        "atendente",
        "conseiller",
        "mensch",
        "mitarbeiter",
        "operatore",
    )
)
HUMAN_MAX_TOKENS = 8


def builtin_intent(text: str) -> BuiltinIntent | None:
    """The built-in intent of a typed text, or ``None``. Exact matches in any set win over prefixes;
    a short message naming a person ("quiero hablar con una persona") asks for one."""
    return builtin_intent_of_form(match_form(text))


def _first_intent_by_form(part: str) -> dict[str, int]:
    """Every form of ``part`` (exact, joined or leading) of the built-in sets -> the index, in
    :data:`BUILTIN_KEYWORDS`, of the first set holding it."""
    index: dict[str, int] = {}
    for i, (_, words) in enumerate(BUILTIN_KEYWORDS):
        for form in getattr(words, part):
            index.setdefault(form, i)
    return index


_EXACT, _JOINED, _LEADING = (_first_intent_by_form(p) for p in ("exact", "joined", "leading"))
_NONE = len(BUILTIN_KEYWORDS)


def builtin_intent_of_form(form: str) -> BuiltinIntent | None:
    """:func:`builtin_intent` of a text already in its :func:`match_form`.

    The same answer as asking each set of :data:`BUILTIN_KEYWORDS` in turn (``match_exact`` for all,
    then ``match_leading`` for all), from one index over every set."""
    if not form:
        return None
    first = min(_EXACT.get(form, _NONE), _JOINED.get(form.replace(" ", ""), _NONE))
    if first < _NONE:
        return BUILTIN_KEYWORDS[first][0]
    tokens = form.split()
    n = len(tokens)
    for k in range(min(n, 4), max(n - EXTRA_TOKENS, 1) - 1, -1):
        first = min(first, _LEADING.get(" ".join(tokens[:k]), _NONE))
    if first < _NONE:
        return BUILTIN_KEYWORDS[first][0]
    if len(tokens) <= HUMAN_MAX_TOKENS and not HUMAN_TOKENS.isdisjoint(tokens):
        return BuiltinIntent.HUMAN
    return None


_NUMBER = re.compile(r"^\d{1,4}$")


def number_in(text: str) -> int | None:
    """A typed whole number ("15", "2009") or ``None``."""
    form = normalise(text)
    return int(form) if _NUMBER.match(form) else None
