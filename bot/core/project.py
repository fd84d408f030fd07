"""What a business declares about itself in ``consentbot.yaml``, as pure values the core can use.

``bot.settings`` builds a :class:`Project` from the file; flows and templates read it (the first-layer
notice names the controller, the purposes and how to stop).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Controller:
    """The data controller (GDPR Art. 13): shown in notices, help answers and receipts."""

    name: str
    contact: str
    dpo_contact: str
    privacy_policy_url: str
    supervisory_authority: str
    support_contact: str = ""


@dataclass(frozen=True, slots=True)
class Purpose:
    """One marketing purpose the customer consents to separately (e.g. ``offers``, ``news``).
    ``titles``/``descriptions`` are per locale; ``frequency`` is what the notice promises."""

    id: str
    titles: dict[str, str]
    descriptions: dict[str, str] = field(default_factory=dict)
    frequency: dict[str, str] = field(default_factory=dict)

    def title(self, locale: str, default_locale: str = "en") -> str:
        return self.titles.get(locale) or self.titles.get(default_locale) or self.id


@dataclass(frozen=True, slots=True)
class Retention:
    """Retention periods, in days."""

    transcripts_days: int = 180
    inbox_days: int = 7
    blocked_proof_days: int = 3 * 365
    consent_refresh_days: int = 730
    audit_days: int = 730  # the console's audit log (who viewed or did what, with customer keys)


@dataclass(frozen=True, slots=True)
class Project:
    """Everything the core needs to know about the business running the bot."""

    controller: Controller
    purposes: tuple[Purpose, ...]
    locales: tuple[str, ...] = ("en", "es")
    default_locale: str = "en"
    notice_version: str = "1.0"
    min_age: int = 14
    confirm_expiry_hours: int = 24
    decline_cooloff_days: int = 30
    marketing_cap_per_week: int = 3
    retention: Retention = field(default_factory=Retention)

    def purpose(self, purpose_id: str) -> Purpose | None:
        for p in self.purposes:
            if p.id == purpose_id:
                return p
        return None
