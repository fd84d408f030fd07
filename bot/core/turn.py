"""One turn of the engine: the scratch state guards read and actions change, and the fixed guard/action sets.

Flows name guards (``when:``) and actions (``do:``) from the fixed sets :data:`GUARDS` and
:data:`ACTIONS`; a flow cannot run arbitrary code. Guards only read the turn; actions change the
turn's copies of the conversation's slots and consent cache and emit consent events. Nothing here does
I/O: a turn is built by :func:`bot.core.engine.decide` and thrown away after it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from bot.core.consent import Actor, ConsentAction, ConsentEventDraft
from bot.core.conversation import PurposeState, PurposeStatus
from bot.core.messages import Inbound
from bot.core.policy import granted_under_earlier_notice, under_current_notice
from bot.core.project import Project

_STATE_OF: dict[ConsentAction, PurposeState] = {
    ConsentAction.REQUESTED: PurposeState.REQUESTED,
    ConsentAction.CONFIRMED: PurposeState.GRANTED,
    ConsentAction.REFRESHED: PurposeState.GRANTED,
    ConsentAction.DECLINED: PurposeState.DECLINED,
    ConsentAction.WITHDRAWN: PurposeState.WITHDRAWN,
    ConsentAction.EXPIRED: PurposeState.EXPIRED,
}


class Turn:
    """Mutable scratch for one call of ``decide``. ``slots`` and ``consent`` are copies."""

    __slots__ = (
        "actor",
        "consent",
        "events",
        "fired",
        "flow_id",
        "flow_version",
        "inbound",
        "locale",
        "locales",
        "method",
        "now",
        "number",
        "project",
        "purposes",
        "slots",
        "subject",
        "trigger",
        "value",
        "window_open",
    )

    def __init__(
        self,
        *,
        subject: str,
        project: Project,
        purposes: tuple[str, ...],
        locales: tuple[str, ...],
        flow_id: str,
        flow_version: str,
        now: datetime,
        slots: dict[str, Any],
        consent: dict[str, PurposeStatus],
        locale: str,
        window_open: bool,
        inbound: Inbound | None = None,
        method: str = "",
        actor: Actor = Actor.CUSTOMER,
    ) -> None:
        self.subject = subject
        self.project = project
        self.purposes = purposes
        self.locales = locales
        self.flow_id = flow_id
        self.flow_version = flow_version
        self.now = now
        self.slots = slots
        self.consent = consent
        self.locale = locale
        self.window_open = window_open
        self.inbound = inbound
        self.method = method
        self.actor = actor
        self.trigger = ""
        self.value: str | None = None
        self.number: int | None = None
        self.events: list[ConsentEventDraft] = []
        self.fired: object = None  # the TransitionSpec that fired (set by the machine's after-callback)

    # --- reading ------------------------------------------------------------------------------
    def state_of(self, purpose: str) -> PurposeState:
        status = self.consent.get(purpose)
        return status.state if status is not None else PurposeState.NONE

    def with_state(self, state: PurposeState) -> list[str]:
        return [p for p in self.purposes if self.state_of(p) is state]

    def granted_under_current_notice(self, purpose: str) -> bool:
        """Granted, under the project's current major notice version (what the send gate asks for).
        Consent given under an earlier major version stays GRANTED in the ledger until the customer
        confirms again, but no longer counts as given (``bot.core.policy.consent_problem``)."""
        status = self.consent.get(purpose)
        if status is None or status.state is not PurposeState.GRANTED:
            return False
        return under_current_notice(status, self.project)

    def outdated(self) -> list[str]:
        """Purposes granted under an earlier major notice version (they need a new confirmation)."""
        return [
            p for p in self.purposes
            if (status := self.consent.get(p)) is not None and granted_under_earlier_notice(status, self.project)
        ]

    def chosen(self) -> list[str]:
        value = self.slots.get("chosen")
        return [p for p in value if isinstance(p, str)] if isinstance(value, list) else []

    def purpose_index(self) -> int:
        value = self.slots.get("purpose_i", 0)
        return value if isinstance(value, int) else 0

    def age(self) -> int | None:
        """The age a typed number stands for (an age, or a birth year), or ``None`` when implausible."""
        n = self.number
        if n is None:
            return None
        if 1900 <= n <= self.now.year:
            return self.now.year - n
        return n if 0 < n <= 120 else None

    # --- writing ------------------------------------------------------------------------------
    def emit(self, purpose: str, action: ConsentAction, method: str = "", **evidence: Any) -> None:
        """Record one consent event and keep the conversation's consent cache in step with it."""
        notice = self.slots.get("notice")
        notice_version = notice.get("version", "") if isinstance(notice, dict) else ""
        notice_sha = notice.get("sha256", "") if isinstance(notice, dict) else ""
        ev: dict[str, Any] = {}
        if self.inbound is not None:
            ev["message_id"] = self.inbound.id
            if self.inbound.payload:
                ev["payload"] = self.inbound.payload
            if self.inbound.context_id:
                ev["context_id"] = self.inbound.context_id
            if self.inbound.text and (method or self.method) == "keyword":
                ev["text"] = self.inbound.text[:160]
        first = self.slots.get("first_layer")
        if isinstance(first, dict) and first.get("sha256"):
            ev["first_layer_sha256"] = first["sha256"]
        if self.trigger:
            ev["trigger"] = self.trigger
        ev.update({k: v for k, v in evidence.items() if v is not None})
        self.events.append(
            ConsentEventDraft(
                subject=self.subject,
                purpose=purpose,
                action=action,
                at=self.now,
                actor=self.actor,
                flow_id=self.flow_id,
                flow_version=self.flow_version,
                notice_version=notice_version or self.project.notice_version,
                notice_sha256=notice_sha,
                locale=self.locale,
                method=method or self.method,
                evidence=ev,
            )
        )
        state = _STATE_OF.get(action)
        if state is not None:
            self.consent[purpose] = PurposeStatus(state, self.now, notice_version or self.project.notice_version)

    def withdraw_all(self, method: str = "", **evidence: Any) -> list[str]:
        """WITHDRAWN for every purpose granted or requested; returns the purposes withdrawn."""
        known = list(dict.fromkeys([*self.purposes, *self.consent]))
        gone = [p for p in known if self.state_of(p) in (PurposeState.GRANTED, PurposeState.REQUESTED)]
        for p in gone:
            self.emit(p, ConsentAction.WITHDRAWN, method, **evidence)
        return gone


# --- guards --------------------------------------------------------------------------------------
def _age_ok(t: Turn) -> bool:
    age = t.age()
    return age is not None and age >= t.project.min_age


def _age_under(t: Turn) -> bool:
    age = t.age()
    return age is not None and age < t.project.min_age


def _cooloff_over(t: Turn) -> bool:
    if t.slots.get("minor"):
        return False
    last = t.slots.get("last_ask_at")
    if not isinstance(last, datetime):
        return True
    return t.now - last >= timedelta(days=t.project.decline_cooloff_days)


GUARDS: dict[str, Callable[[Turn], bool]] = {
    "age_ok": _age_ok,  # a typed age/birth year at or above Project.min_age
    "age_under": _age_under,  # a typed age/birth year below Project.min_age
    "age_checked": lambda t: t.slots.get("age_ok") is True,  # answered the age gate as old enough
    "not_minor": lambda t: not t.slots.get("minor"),
    "more_purposes": lambda t: t.purpose_index() + 1 < len(t.purposes),
    "last_purpose": lambda t: t.purpose_index() + 1 >= len(t.purposes),
    "purposes_chosen": lambda t: bool(t.chosen()),
    "none_chosen": lambda t: not t.chosen(),
    # chosen and not yet granted, or granted under an earlier major notice version (confirm again)
    "new_purposes": lambda t: any(not t.granted_under_current_notice(p) for p in t.chosen()),
    "has_request": lambda t: bool(t.with_state(PurposeState.REQUESTED)),
    "any_granted": lambda t: bool(t.with_state(PurposeState.GRANTED)),
    "none_granted": lambda t: not t.with_state(PurposeState.GRANTED),
    "notice_changed": lambda t: bool(t.outdated()),  # consent granted under an earlier major notice version
    "cooloff_over": _cooloff_over,  # Project.decline_cooloff_days since the last decline/expiry; never for minors
    "in_window": lambda t: t.window_open,  # the 24-hour customer-service window is open
    "valid_locale": lambda t: t.value in t.locales,
}


# --- actions -------------------------------------------------------------------------------------
def _reset_choice(t: Turn) -> None:
    t.slots["purpose_i"] = 0
    t.slots["chosen"] = []


def _keep_choice(t: Turn) -> None:
    t.slots["purpose_i"] = 0
    t.slots["chosen"] = t.with_state(PurposeState.GRANTED)


def _choose_purpose(t: Turn) -> None:
    i = t.purpose_index()
    chosen = t.chosen()
    if i < len(t.purposes) and t.purposes[i] not in chosen:
        chosen.append(t.purposes[i])
    t.slots["chosen"] = chosen
    t.slots["purpose_i"] = i + 1


def _skip_purpose(t: Turn) -> None:
    t.slots["purpose_i"] = t.purpose_index() + 1


def _request_consent(t: Turn) -> None:
    chosen = t.chosen()
    for p in t.purposes:
        state = t.state_of(p)
        if p in chosen and not t.granted_under_current_notice(p):
            t.emit(p, ConsentAction.REQUESTED)
        elif p not in chosen and state in (PurposeState.GRANTED, PurposeState.REQUESTED):
            t.emit(p, ConsentAction.WITHDRAWN, reason="preferences")
    t.slots["requested_at"] = t.now


def _confirm_consent(t: Turn) -> None:
    for p in t.with_state(PurposeState.REQUESTED):
        t.emit(p, ConsentAction.CONFIRMED, frequency=t.slots.get("frequency"))


def _refresh_consent(t: Turn) -> None:
    for p in t.with_state(PurposeState.GRANTED):
        t.emit(p, ConsentAction.REFRESHED, frequency=t.slots.get("frequency"))


def _cancel_request(t: Turn) -> None:
    for p in t.with_state(PurposeState.REQUESTED):
        t.emit(p, ConsentAction.DECLINED)
    t.slots["last_ask_at"] = t.now


def _decline(t: Turn) -> None:
    for p in t.purposes:
        if t.state_of(p) is PurposeState.GRANTED:
            t.emit(p, ConsentAction.WITHDRAWN, reason="declined")
        else:
            t.emit(p, ConsentAction.DECLINED)
    t.slots["last_ask_at"] = t.now


def _expire_request(t: Turn) -> None:
    for p in t.with_state(PurposeState.REQUESTED):
        t.emit(p, ConsentAction.EXPIRED, method="timer")
    t.slots["last_ask_at"] = t.now


def _mark_adult(t: Turn) -> None:
    t.slots["age_ok"] = True
    t.slots["minor"] = False


def _mark_minor(t: Turn) -> None:
    t.slots["age_ok"] = False
    t.slots["minor"] = True
    t.slots["last_ask_at"] = t.now
    for p in t.purposes:
        if t.state_of(p) in (PurposeState.GRANTED, PurposeState.REQUESTED):
            t.emit(p, ConsentAction.WITHDRAWN, reason="under_age", threshold=t.project.min_age)
        else:
            t.emit(p, ConsentAction.DECLINED, reason="under_age", threshold=t.project.min_age)


def _set_frequency(t: Turn) -> None:
    if t.value:
        t.slots["frequency"] = t.value


def _set_locale(t: Turn) -> None:
    if t.value in t.locales:
        t.locale = t.value


def _note_preferences(t: Turn) -> None:
    for p in t.with_state(PurposeState.GRANTED):
        t.emit(p, ConsentAction.PREFERENCES_CHANGED, frequency=t.slots.get("frequency"), language=t.locale)


ACTIONS: dict[str, Callable[[Turn], None]] = {
    "reset_choice": _reset_choice,  # start asking the purposes one by one, nothing chosen
    "keep_choice": _keep_choice,  # the current choice = the purposes granted now
    "choose_purpose": _choose_purpose,  # "yes" to the purpose being asked
    "skip_purpose": _skip_purpose,  # "no" to the purpose being asked
    # REQUESTED for chosen purposes not granted under the current notice; WITHDRAWN for dropped ones
    "request_consent": _request_consent,
    "confirm_consent": _confirm_consent,  # CONFIRMED for every requested purpose (double opt-in step 2)
    "refresh_consent": _refresh_consent,  # REFRESHED for every granted purpose (the customer kept it)
    "cancel_request": _cancel_request,  # DECLINED for every requested purpose
    "decline": _decline,  # DECLINED (WITHDRAWN if granted) for every purpose; starts the cool-off
    "expire_request": _expire_request,  # EXPIRED for every requested purpose; starts the cool-off
    "mark_adult": _mark_adult,
    "mark_minor": _mark_minor,  # below Project.min_age: no marketing consent, DECLINED(reason=under_age)
    "set_frequency": _set_frequency,  # from the tapped payload value (``set_frequency:weekly``)
    "set_locale": _set_locale,  # from the tapped payload value (``set_locale:es``), one of the flow's locales
    "note_preferences": _note_preferences,  # PREFERENCES_CHANGED for every granted purpose
}
