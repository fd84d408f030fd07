"""The JSON Schema of a flow file (``flows/*.yaml``); ``flowspec`` validates every flow against it.

The schema checks shape only; names (states, guards, actions, keyword classes, templates) are checked
by :mod:`bot.core.flowspec` and :mod:`bot.core.lint`, which know the fixed sets. ``docs/flows.md``
describes every key.
"""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "pattern": r"^[a-z][a-z0-9_]*$"}
_DURATION = {"type": "string", "pattern": r"^(\d+[smhd]|[a-z_]+)$"}

_SEND_ITEM: dict[str, Any] = {
    "oneOf": [
        _NAME,
        {
            "type": "object",
            "required": ["template"],
            "additionalProperties": False,
            "properties": {
                "template": _NAME,
                "category": {"enum": ["service", "utility", "marketing"]},
                "purpose": _NAME,
                "fallback": _NAME,
            },
        },
    ]
}

_TRANSITION: dict[str, Any] = {
    "type": "object",
    "required": ["trigger"],
    "additionalProperties": False,
    "properties": {
        "trigger": _NAME,
        "dest": _NAME,
        "internal": {"type": "boolean"},
        "when": {"type": "array", "items": _NAME},
        "do": {"type": "array", "items": _NAME},
        "send": {"type": "array", "items": _SEND_ITEM},
        "keywords": {"type": "array", "items": _NAME},
        "number": {"type": "boolean"},
        "quiet": {"type": "boolean"},
    },
}

_TIMER: dict[str, Any] = {
    "type": "object",
    "required": ["trigger", "after"],
    "additionalProperties": False,
    "properties": {"trigger": _NAME, "after": _DURATION},
}

_STATE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "description": {"type": "string"},
        "send": {"type": "array", "items": _SEND_ITEM},
        "timers": {"type": "array", "items": _TIMER},
        "on": {"type": "array", "items": _TRANSITION},
    },
}

FLOW_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "ConsentBot flow",
    "type": "object",
    "required": ["id", "version", "locales", "initial", "optin", "states"],
    "additionalProperties": False,
    "properties": {
        "id": _NAME,
        "version": {"type": ["string", "integer"]},
        "description": {"type": "string"},
        "locales": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"type": "string", "pattern": r"^[a-z]{2}$"},
        },
        "default_locale": {"type": "string", "pattern": r"^[a-z]{2}$"},
        "purposes": {"oneOf": [{"const": "all"}, {"type": "array", "items": _NAME, "uniqueItems": True}]},
        "initial": _NAME,
        "optin": _NAME,
        "sample": {"type": "object"},
        "keywords": {
            "type": "object",
            "propertyNames": _NAME,
            "additionalProperties": {
                "type": "object",
                "propertyNames": {"pattern": r"^[a-z]{2}$"},
                "additionalProperties": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
            },
        },
        "anywhere": {"type": "array", "items": _TRANSITION},
        "states": {"type": "object", "minProperties": 1, "propertyNames": _NAME, "additionalProperties": _STATE},
    },
}
