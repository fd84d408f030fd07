"""Settings: every bad or missing value stops start-up with one clear line naming the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from bot.errors import ConfigError
from bot.settings import SANDBOX_APP_SECRET, load_project, load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "consentbot.yaml", tmp_path / "consentbot.yaml")
    return tmp_path


def edit(project: Path, change: dict[str, object] | None = None, drop: tuple[str, ...] = ()) -> None:
    path = project / "consentbot.yaml"
    data = yaml.safe_load(path.read_text())
    for dotted in drop:
        *parents, last = dotted.split(".")
        node = data
        for p in parents:
            node = node[p]
        del node[last]
    for dotted, value in (change or {}).items():
        *parents, last = dotted.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(yaml.safe_dump(data, allow_unicode=True))


def test_example_project_loads_in_sandbox_mode(project: Path) -> None:
    s = load_settings(project, env={})
    assert s.sandbox is True
    assert s.mongodb_uri is None
    assert s.app_secret.reveal() == SANDBOX_APP_SECRET
    assert [p.id for p in s.project.purposes] == ["offers", "news"]
    assert s.project.controller.name == "Café Aurora SL"
    assert s.numbers[0].phone_number_id == "100000000000001"
    assert s.project.min_age == 14
    assert s.data_dir == project.resolve() / ".consentbot"


def test_production_mode_needs_its_secrets(project: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(project, env={"WHATSAPP_ACCESS_TOKEN": "tok-123456"})
    assert err.value.key == "WHATSAPP_APP_SECRET"
    env = {"WHATSAPP_ACCESS_TOKEN": "tok-123456", "WHATSAPP_APP_SECRET": "s3cr3t-value", "WHATSAPP_VERIFY_TOKEN": "v"}
    with pytest.raises(ConfigError) as err:
        load_settings(project, env=env)
    assert err.value.key == "CONSENTBOT_SECRET"
    s = load_settings(project, env={**env, "CONSENTBOT_SECRET": "x" * 32})
    assert s.sandbox is False
    assert s.graph_url == "https://graph.facebook.com"


def test_secrets_never_print(project: Path) -> None:
    env = {
        "WHATSAPP_ACCESS_TOKEN": "EAAG-very-secret-token",
        "WHATSAPP_APP_SECRET": "app-secret-value",
        "WHATSAPP_VERIFY_TOKEN": "verify-value",
        "CONSENTBOT_SECRET": "deployment-secret-value-0123456789",
    }
    s = load_settings(project, env=env)
    text = repr(s) + str(s)
    for value in env.values():
        assert value not in text


@pytest.mark.parametrize(
    ("change", "drop", "key", "words"),
    [
        ({}, ("controller.name",), "controller.name", "missing"),
        ({"controller.privacy_policy_url": "ftp://x"}, (), "controller.privacy_policy_url", "http"),
        ({"purposes": []}, (), "purposes", "non-empty"),
        ({"purposes": [{"id": "Offers!", "title": "x"}]}, (), "purposes[0].id", "lowercase"),
        ({"locales": ["english"]}, (), "locales", "locale code"),
        ({"default_locale": "fr"}, (), "default_locale", "not one of"),
        ({"consent.min_age": 5}, (), "consent.min_age", "between"),
        ({"numbers": [{"phone_number_id": "abc", "flow": "consent"}]}, (), "numbers[0].phone_number_id", "numeric"),
        ({"numbers": [{"phone_number_id": "1", "flow": "consent", "rate_per_second": 5000}]}, (),
         "numbers[0].rate_per_second", "1000"),
    ],
)
def test_bad_project_values_name_the_key(
    project: Path, change: dict[str, object], drop: tuple[str, ...], key: str, words: str
) -> None:
    edit(project, change, drop)
    with pytest.raises(ConfigError) as err:
        load_settings(project, env={})
    assert err.value.key == key
    assert words in str(err.value)


def test_malformed_yaml_names_the_line(project: Path) -> None:
    (project / "consentbot.yaml").write_text("controller:\n  name: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_project(project)
    assert "malformed YAML at line" in str(err.value)


def test_missing_project_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path, env={})
    assert "project file not found" in str(err.value)


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"MONGODB_URI": "postgres://x"}, "MONGODB_URI"),
        ({"WHATSAPP_API_VERSION": "23"}, "WHATSAPP_API_VERSION"),
        ({"WHATSAPP_GRAPH_URL": "graph.local"}, "WHATSAPP_GRAPH_URL"),
        ({"WHATSAPP_PHONE_NUMBER_ID": "12ab"}, "WHATSAPP_PHONE_NUMBER_ID"),
        ({"CONSENTBOT_SECRET": "short"}, "CONSENTBOT_SECRET"),
        ({"CONSENTBOT_WORKERS": "0"}, "CONSENTBOT_WORKERS"),
        ({"CONSENTBOT_WORKERS": "many"}, "CONSENTBOT_WORKERS"),
        ({"CONSENTBOT_WORKERS": "20000"}, "CONSENTBOT_WORKERS"),
        ({"CONSENTBOT_STORE_SLOTS": "0"}, "CONSENTBOT_STORE_SLOTS"),
        ({"CONSENTBOT_STORE_SLOTS": "-3"}, "CONSENTBOT_STORE_SLOTS"),
    ],
)
def test_bad_environment_names_the_variable(project: Path, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(project, env=env)
    assert err.value.key == key


def test_dispatcher_workers_default_and_from_environment(project: Path) -> None:
    assert load_settings(project, env={}).workers == 256
    assert load_settings(project, env={"CONSENTBOT_WORKERS": " 32 "}).workers == 32
    assert load_settings(project, env={}).store_slots == 16
    assert load_settings(project, env={"CONSENTBOT_STORE_SLOTS": "64"}).store_slots == 64


def test_phone_number_from_environment_is_added(project: Path) -> None:
    s = load_settings(project, env={"WHATSAPP_PHONE_NUMBER_ID": "200000000000002"})
    assert s.number("200000000000002") is not None
    assert s.number("200000000000002").flow == "consent"  # type: ignore[union-attr]
