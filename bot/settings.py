"""Settings: the project file ``consentbot.yaml`` plus environment variables for secrets and endpoints.

:func:`load_settings` validates everything at once and raises :class:`bot.errors.ConfigError` naming the
first bad key and what is wrong with it. Secrets are wrapped in :class:`Secret`, whose ``repr``/``str``
never show the value, so they cannot leak into logs or error messages.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.core.project import Controller, Project, Purpose, Retention
from bot.errors import ConfigError

PROJECT_FILE = "consentbot.yaml"
SANDBOX_TOKEN = "sandbox-access-token"  # noqa: S105 - the offline sandbox's fixed, public token
SANDBOX_APP_SECRET = "sandbox-app-secret"  # noqa: S105
SANDBOX_VERIFY_TOKEN = "sandbox-verify-token"  # noqa: S105
SANDBOX_SECRET = "sandbox-deployment-secret"  # noqa: S105
DEFAULT_GRAPH_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v23.0"
_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_LOCALE_RE = re.compile(r"^[a-z]{2}(-[A-Z]{2})?$")
_API_VERSION_RE = re.compile(r"^v\d+\.\d+$")


class Secret:
    """A secret string that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class NumberSettings:
    """One WhatsApp business number served by this deployment and the flow it runs."""

    phone_number_id: str
    display_number: str
    flow: str
    rate_per_second: float = 80.0


# A dispatcher worker runs one conversation's turn, its sends included, so a process answers at most
# about workers / (Graph API latency) messages per second: 256 keeps up with 1,000/s if a send takes 250 ms.
DEFAULT_WORKERS = 256
# Of those, the turns doing database work at once: a slow database should serve the webhook's inbox
# writes first, and a turn gives its slot up while the Graph API answers.
DEFAULT_STORE_SLOTS = 16
MAX_WORKERS = 10_000


@dataclass(frozen=True, slots=True)
class Settings:
    project_dir: Path
    project: Project
    numbers: tuple[NumberSettings, ...]
    mongodb_uri: str | None  # None: start the embedded MongoDB-wire server
    database: str
    access_token: Secret
    app_secret: Secret
    verify_token: Secret
    deployment_secret: Secret  # keys the suppression HMAC and console sessions
    graph_url: str  # "" in sandbox mode: the app's own mounted simulator
    api_version: str
    sandbox: bool
    lease_seconds: float = 30.0  # how long a dead process's work stays claimed before another takes it
    workers: int = DEFAULT_WORKERS  # conversations one process runs at once (each waits for its sends)
    store_slots: int = DEFAULT_STORE_SLOTS  # of those, how many may do database work at once
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.project_dir / ".consentbot"

    def number(self, phone_number_id: str) -> NumberSettings | None:
        for n in self.numbers:
            if n.phone_number_id == phone_number_id:
                return n
        return None


# --- reading the project file --------------------------------------------------------------------
def _read_yaml(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise ConfigError(str(path), f"project file not found (create {PROJECT_FILE} or pass --project DIR)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(PROJECT_FILE, f"malformed YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(PROJECT_FILE, f"cannot read: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(PROJECT_FILE, "must be a mapping of settings at the top level")
    return data


def _section(data: Mapping[str, Any], key: str, required: bool = False) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(key, "is missing")
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, "must be a mapping")
    return value


def _text(section: Mapping[str, Any], key: str, path: str, required: bool = True) -> str:
    value = section.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ConfigError(path, "is missing or empty")
        return ""
    if not isinstance(value, str | int | float):
        raise ConfigError(path, f"must be text, got {type(value).__name__}")
    return str(value).strip()


def _int(section: Mapping[str, Any], key: str, path: str, default: int, low: int, high: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(path, f"must be between {low} and {high}, got {value}")
    return value


def _localised(value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"*": value}
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(path, "must be text or a mapping of locale to text")
    return {str(k): v for k, v in value.items()}


def _purposes(data: Mapping[str, Any]) -> tuple[Purpose, ...]:
    raw = data.get("purposes")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("purposes", "must be a non-empty list of purposes (id, title)")
    seen: set[str] = set()
    out: list[Purpose] = []
    for i, item in enumerate(raw):
        path = f"purposes[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(path, "must be a mapping with id and title")
        pid = _text(item, "id", f"{path}.id")
        if not _ID_RE.match(pid):
            raise ConfigError(f"{path}.id", f"{pid!r} must be lowercase letters, digits or _ (max 32)")
        if pid in seen:
            raise ConfigError(f"{path}.id", f"duplicate purpose {pid!r}")
        seen.add(pid)
        titles = _localised(item.get("title"), f"{path}.title")
        if not titles:
            raise ConfigError(f"{path}.title", "is missing")
        out.append(
            Purpose(
                id=pid,
                titles=titles,
                descriptions=_localised(item.get("description"), f"{path}.description"),
                frequency=_localised(item.get("frequency"), f"{path}.frequency"),
            )
        )
    return tuple(out)


def _numbers(data: Mapping[str, Any], env: Mapping[str, str]) -> tuple[NumberSettings, ...]:
    raw = data.get("numbers") or []
    if not isinstance(raw, list):
        raise ConfigError("numbers", "must be a list of phone numbers")
    out: list[NumberSettings] = []
    for i, item in enumerate(raw):
        path = f"numbers[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(path, "must be a mapping with phone_number_id and flow")
        pnid = _text(item, "phone_number_id", f"{path}.phone_number_id")
        if not pnid.isdigit():
            raise ConfigError(f"{path}.phone_number_id", "must be the numeric id Meta shows, as text")
        rate = item.get("rate_per_second", 80)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 1 <= rate <= 1000:
            raise ConfigError(f"{path}.rate_per_second", f"must be between 1 and 1000, got {rate!r}")
        out.append(
            NumberSettings(
                phone_number_id=pnid,
                display_number=_text(item, "display_number", f"{path}.display_number", required=False),
                flow=_text(item, "flow", f"{path}.flow"),
                rate_per_second=float(rate),
            )
        )
    env_id = env.get("WHATSAPP_PHONE_NUMBER_ID", "").strip()
    if env_id:
        if not env_id.isdigit():
            raise ConfigError("WHATSAPP_PHONE_NUMBER_ID", "must be the numeric id Meta shows")
        if not any(n.phone_number_id == env_id for n in out):
            flow = out[0].flow if out else "consent"
            out.insert(0, NumberSettings(phone_number_id=env_id, display_number="", flow=flow))
    if not out:
        raise ConfigError("numbers", "no phone number configured (add numbers: or set WHATSAPP_PHONE_NUMBER_ID)")
    ids = [n.phone_number_id for n in out]
    if len(set(ids)) != len(ids):
        raise ConfigError("numbers", "a phone_number_id is listed twice")
    return tuple(out)


def load_project(project_dir: Path) -> Project:
    """Read and validate ``consentbot.yaml`` in ``project_dir`` into a :class:`Project`."""
    data = _read_yaml(Path(project_dir) / PROJECT_FILE)
    c = _section(data, "controller", required=True)
    controller = Controller(
        name=_text(c, "name", "controller.name"),
        contact=_text(c, "contact", "controller.contact"),
        dpo_contact=_text(c, "dpo_contact", "controller.dpo_contact"),
        privacy_policy_url=_text(c, "privacy_policy_url", "controller.privacy_policy_url"),
        supervisory_authority=_text(c, "supervisory_authority", "controller.supervisory_authority"),
        support_contact=_text(c, "support_contact", "controller.support_contact", required=False),
    )
    if not controller.privacy_policy_url.startswith(("https://", "http://")):
        raise ConfigError("controller.privacy_policy_url", "must be an http(s) URL")
    locales_raw = data.get("locales", ["en"])
    if not isinstance(locales_raw, list) or not locales_raw or not all(isinstance(x, str) for x in locales_raw):
        raise ConfigError("locales", "must be a non-empty list such as [en, es]")
    for loc in locales_raw:
        if not _LOCALE_RE.match(loc):
            raise ConfigError("locales", f"{loc!r} is not a locale code such as 'en' or 'es'")
    default_locale = _text(data, "default_locale", "default_locale", required=False) or locales_raw[0]
    if default_locale not in locales_raw:
        raise ConfigError("default_locale", f"{default_locale!r} is not one of locales {locales_raw}")
    consent = _section(data, "consent")
    ret = _section(data, "retention")
    return Project(
        controller=controller,
        purposes=_purposes(data),
        locales=tuple(locales_raw),
        default_locale=default_locale,
        notice_version=_text(data, "notice_version", "notice_version", required=False) or "1.0",
        min_age=_int(consent, "min_age", "consent.min_age", 14, 13, 21),
        confirm_expiry_hours=_int(consent, "confirm_expiry_hours", "consent.confirm_expiry_hours", 24, 1, 720),
        decline_cooloff_days=_int(consent, "decline_cooloff_days", "consent.decline_cooloff_days", 30, 0, 3650),
        marketing_cap_per_week=_int(consent, "marketing_cap_per_week", "consent.marketing_cap_per_week", 3, 0, 100),
        retention=Retention(
            transcripts_days=_int(ret, "transcripts_days", "retention.transcripts_days", 180, 1, 3650),
            inbox_days=_int(ret, "inbox_days", "retention.inbox_days", 7, 1, 365),
            blocked_proof_days=_int(ret, "blocked_proof_days", "retention.blocked_proof_days", 1095, 1, 3650),
            consent_refresh_days=_int(
                ret, "consent_refresh_days", "retention.consent_refresh_days", 730, 30, 3650
            ),
            audit_days=_int(ret, "audit_days", "retention.audit_days", 730, 30, 3650),
        ),
    )


def _count(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, "").strip() or str(default)
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_WORKERS:
        raise ConfigError(key, f"must be a whole number from 1 to {MAX_WORKERS}, got {raw!r}")
    return int(raw)


def load_settings(project_dir: Path | str = ".", env: Mapping[str, str] | None = None) -> Settings:
    """Load ``consentbot.yaml`` from ``project_dir`` and the environment (``os.environ`` by default).

    With no ``WHATSAPP_ACCESS_TOKEN`` the deployment runs in sandbox mode: the fake Graph API mounted
    at ``/sandbox`` stands in for Meta, with fixed public sandbox secrets."""
    env = dict(os.environ if env is None else env)
    project_dir = Path(project_dir).resolve()
    if not project_dir.is_dir():
        raise ConfigError("--project", f"{project_dir} is not a folder")
    project = load_project(project_dir)
    data = _read_yaml(project_dir / PROJECT_FILE)
    numbers = _numbers(data, env)

    uri = env.get("MONGODB_URI", "").strip() or None
    if uri is not None and not uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError("MONGODB_URI", "must start with mongodb:// or mongodb+srv://")
    database = env.get("CONSENTBOT_DATABASE", "").strip() or "consentbot"

    token = env.get("WHATSAPP_ACCESS_TOKEN", "").strip()
    sandbox = not token
    app_secret = env.get("WHATSAPP_APP_SECRET", "").strip()
    verify_token = env.get("WHATSAPP_VERIFY_TOKEN", "").strip()
    if sandbox:
        token = token or SANDBOX_TOKEN
        app_secret = app_secret or SANDBOX_APP_SECRET
        verify_token = verify_token or SANDBOX_VERIFY_TOKEN
    else:
        if not app_secret:
            raise ConfigError("WHATSAPP_APP_SECRET", "is required when WHATSAPP_ACCESS_TOKEN is set")
        if not verify_token:
            raise ConfigError("WHATSAPP_VERIFY_TOKEN", "is required when WHATSAPP_ACCESS_TOKEN is set")
    deployment_secret = env.get("CONSENTBOT_SECRET", "").strip()
    if not deployment_secret:
        if not sandbox:
            raise ConfigError("CONSENTBOT_SECRET", "is required outside the sandbox (32+ random characters)")
        deployment_secret = SANDBOX_SECRET
    elif len(deployment_secret) < 16:
        raise ConfigError("CONSENTBOT_SECRET", "is too short: use at least 16 random characters")

    graph_url = env.get("WHATSAPP_GRAPH_URL", "").strip().rstrip("/")
    if graph_url and not graph_url.startswith(("https://", "http://")):
        raise ConfigError("WHATSAPP_GRAPH_URL", "must be an http(s) URL")
    if not graph_url and not sandbox:
        graph_url = DEFAULT_GRAPH_URL
    api_version = env.get("WHATSAPP_API_VERSION", "").strip() or DEFAULT_API_VERSION
    if not _API_VERSION_RE.match(api_version):
        raise ConfigError("WHATSAPP_API_VERSION", f"must look like v23.0, got {api_version!r}")
    lease_raw = env.get("CONSENTBOT_LEASE_SECONDS", "").strip() or "30"
    try:
        lease_seconds = float(lease_raw)
    except ValueError:
        raise ConfigError("CONSENTBOT_LEASE_SECONDS", f"must be a number of seconds, got {lease_raw!r}") from None
    if not 1 <= lease_seconds <= 3600:
        raise ConfigError("CONSENTBOT_LEASE_SECONDS", f"must be between 1 and 3600, got {lease_raw}")
    workers = _count(env, "CONSENTBOT_WORKERS", DEFAULT_WORKERS)
    store_slots = _count(env, "CONSENTBOT_STORE_SLOTS", DEFAULT_STORE_SLOTS)
    return Settings(
        lease_seconds=lease_seconds,
        workers=workers,
        store_slots=store_slots,
        project_dir=project_dir,
        project=project,
        numbers=numbers,
        mongodb_uri=uri,
        database=database,
        access_token=Secret(token),
        app_secret=Secret(app_secret),
        verify_token=Secret(verify_token),
        deployment_secret=Secret(deployment_secret),
        graph_url=graph_url,
        api_version=api_version,
        sandbox=sandbox,
        env=env,
    )
