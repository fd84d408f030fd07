"""A sample :class:`Project` for linting, scenario tests and benchmarks when no ``consentbot.yaml`` is at hand.

Scenario files may override its scalar settings (``min_age``, ``confirm_expiry_hours``,
``decline_cooloff_days``, ``notice_version``) with :func:`sample_project`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bot.core.project import Controller, Project, Purpose

SAMPLE_PROJECT = Project(
    controller=Controller(
        name="Acme Shoes",
        contact="hola@acme.example",
        dpo_contact="dpo@acme.example",
        privacy_policy_url="https://acme.example/privacy",
        supervisory_authority="AEPD",
        support_contact="+34 910 000 000",
    ),
    purposes=(
        Purpose(
            id="offers",
            titles={"en": "Offers", "es": "Ofertas"},
            descriptions={"en": "discounts and sales", "es": "descuentos y rebajas"},
            frequency={"en": "up to 4 a month", "es": "hasta 4 al mes"},
        ),
        Purpose(
            id="news",
            titles={"en": "News", "es": "Novedades"},
            descriptions={"en": "new collections", "es": "nuevas colecciones"},
            frequency={"en": "monthly", "es": "mensual"},
        ),
    ),
    locales=("en", "es"),
    default_locale="en",
    notice_version="1.0",
)

_SETTINGS = ("min_age", "confirm_expiry_hours", "decline_cooloff_days", "notice_version", "marketing_cap_per_week")


def sample_project(base: Project = SAMPLE_PROJECT, **overrides: Any) -> Project:
    """``base`` with scalar settings replaced (unknown keys raise ``KeyError``)."""
    unknown = set(overrides) - set(_SETTINGS)
    if unknown:
        raise KeyError(f"unknown project setting {sorted(unknown)[0]!r}; one of {', '.join(_SETTINGS)}")
    return replace(base, **overrides)
