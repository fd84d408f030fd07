"""Built-in messages every flow has, and the opt-out strings forced into every marketing message.

A project may override a built-in message with a template of the same name in
``templates/<locale>/`` (e.g. ``templates/es/optout_confirm.j2``); the defaults below are used for any
locale the project does not override, so the built-in behaviour never depends on a template file.
"""

from __future__ import annotations

from collections.abc import Mapping

OPTOUT_CONFIRM = "optout_confirm"
HELP = "help"
FALLBACK = "fallback"
HUMAN_ACK = "human_ack"
EXPORT_ACK = "export_ack"
ERASE_ACK = "erase_ack"
BUILTIN_TEMPLATES: tuple[str, ...] = (OPTOUT_CONFIRM, HELP, FALLBACK, HUMAN_ACK, EXPORT_ACK, ERASE_ACK)


def _t(category: str, *paragraphs: str) -> str:
    """A template source: front-matter with ``category``, then one paragraph per line."""
    return f"---\ncategory: {category}\n---\n" + "\n".join(paragraphs)


# (locale, name) -> template source (front-matter + Jinja body, see docs/flows.md)
DEFAULTS: Mapping[tuple[str, str], str] = {
    ("en", OPTOUT_CONFIRM): _t(
        "utility",
        (
            "Done: {{ business }} will not send you marketing messages any more{% if withdrawn %} ({{ "
            'withdrawn | join(", ") }}){% endif %}.'
        ),
        "Answers to your questions and messages about your requests continue as usual.",
        "To come back at any time, send {{ start_word }}.",
    ),
    ("es", OPTOUT_CONFIRM): _t(
        "utility",
        (
            "Hecho: {{ business }} no te enviará más mensajes publicitarios{% if withdrawn %} ({{ "
            'withdrawn | join(", ") }}){% endif %}.'
        ),
        "Seguiremos respondiendo a tus preguntas y a tus solicitudes como siempre.",
        "Para volver cuando quieras, envía {{ start_word }}.",
        (
            "Si no quieres publicidad de ninguna empresa, puedes inscribirte en la Lista Robinson: "
            "https://www.listarobinson.es"
        ),
    ),
    ("en", HELP): _t(
        "service",
        "This is the WhatsApp assistant of {{ business }} ({{ controller.contact }}).",
        "- Stop marketing messages: send {{ stop_word }} (any time, in any message).",
        "- Talk to a person: send {{ human_word }}.",
        "{% if prefs_word %}- Change what you receive: send {{ prefs_word }}.",
        "{% endif %}- Your data: send {{ export_word }} for a copy or {{ erase_word }} to erase it.",
        "Privacy policy: {{ policy_url }}",
    ),
    ("es", HELP): _t(
        "service",
        "Este es el asistente de WhatsApp de {{ business }} ({{ controller.contact }}).",
        ("- Dejar de recibir publicidad: envía {{ stop_word }} (cuando quieras, en cualquier mensaje)."),
        "- Hablar con una persona: envía {{ human_word }}.",
        "{% if prefs_word %}- Cambiar lo que recibes: envía {{ prefs_word }}.",
        ("{% endif %}- Tus datos: envía {{ export_word }} para una copia o {{ erase_word }} para borrarlos."),
        "Política de privacidad: {{ policy_url }}",
    ),
    ("en", FALLBACK): _t(
        "service",
        (
            "{% if stale %}That option is no longer available.{% else %}Sorry, I did not understand "
            "that.{% endif %} Send {{ help_word }} for help, {{ human_word }} to talk to a person or {{"
            " stop_word }} to stop marketing messages."
        ),
    ),
    ("es", FALLBACK): _t(
        "service",
        (
            "{% if stale %}Esa opción ya no está disponible.{% else %}Perdona, no te he entendido.{% "
            "endif %} Envía {{ help_word }} para ver la ayuda, {{ human_word }} para hablar con una "
            "persona o {{ stop_word }} para no recibir publicidad."
        ),
    ),
    ("en", HUMAN_ACK): _t(
        "service",
        "Thanks. A person from {{ business }} will answer you here as soon as possible.",
    ),
    ("es", HUMAN_ACK): _t(
        "service",
        "Gracias. Una persona de {{ business }} te responderá por aquí lo antes posible.",
    ),
    ("en", EXPORT_ACK): _t(
        "service",
        (
            "We have your request for a copy of your data. {{ business }} will send it within one "
            "month. Questions: {{ controller.dpo_contact }}."
        ),
    ),
    ("es", EXPORT_ACK): _t(
        "service",
        (
            "Hemos recibido tu solicitud de copia de tus datos. {{ business }} te la enviará en el "
            "plazo de un mes. Dudas: {{ controller.dpo_contact }}."
        ),
    ),
    ("en", ERASE_ACK): _t(
        "service",
        (
            "We have your request to erase your data. Within one month {{ business }} will delete your "
            "profile, preferences and messages. We keep only what the law requires: a coded entry so "
            "that we never send you marketing again, and the proof of your past consent, blocked for {{"
            " proof_years }} years. Questions: {{ controller.dpo_contact }}."
        ),
    ),
    ("es", ERASE_ACK): _t(
        "service",
        (
            "Hemos recibido tu solicitud para borrar tus datos. En el plazo de un mes {{ business }} "
            "borrará tu perfil, tus preferencias y tus mensajes. Solo guardamos lo que exige la ley: "
            "una entrada cifrada para no enviarte publicidad nunca más y la prueba de tu consentimiento"
            " pasado, bloqueada durante {{ proof_years }} años. Dudas: {{ controller.dpo_contact }}."
        ),
    ),
}

# Forced into every marketing message: a footer naming how to stop, and a Stop button (reserved payload).
STOP_FOOTER: Mapping[str, str] = {
    "en": "Reply STOP to opt out",
    "es": "Responde BAJA para darte de baja",
    "pt": "Responda SAIR para cancelar",
    "fr": "Répondez STOP pour vous désabonner",
    "de": "Antworte STOPP zum Abmelden",
    "it": "Rispondi STOP per disiscriverti",
}
STOP_BUTTON: Mapping[str, str] = {
    "en": "Stop promotions",
    "es": "No quiero ofertas",
    "pt": "Parar promoções",
    "fr": "Arrêter les promos",
    "de": "Werbung stoppen",
    "it": "Stop promozioni",
}
