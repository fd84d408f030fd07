"""Docker cannot run here; check that the files parse and promise what the docs say."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_names_services_ports_and_variables() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert set(compose["services"]) == {"bot", "mongo"}
    mongo = compose["services"]["mongo"]
    assert mongo["image"].startswith("mongo:8")
    assert "--replSet" in mongo["command"]
    assert "rs.initiate" in " ".join(mongo["healthcheck"]["test"])
    bot = compose["services"]["bot"]
    assert bot["ports"] == ["8080:8080"]
    assert "replicaSet=rs0" in bot["environment"]["MONGODB_URI"]
    assert bot["depends_on"]["mongo"]["condition"] == "service_healthy"
    env_example = (ROOT / "docker" / "consentbot.env.example").read_text()
    for var in ("WHATSAPP_ACCESS_TOKEN", "WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN",
                "WHATSAPP_PHONE_NUMBER_ID", "WHATSAPP_API_VERSION", "CONSENTBOT_SECRET"):
        assert f"{var}=" in env_example
    assert bot["env_file"] == ["consentbot.env"]


def test_dockerfile_is_slim_non_root_and_health_checked() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "python:3.11-slim" in text
    assert "USER consentbot" in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'CMD ["consentbot", "serve"' in text


def test_the_image_holds_every_project_file_the_service_loads() -> None:
    """The shipped flow falls back to an approved template: without whatsapp_templates.yaml the
    service refuses to start (flows check error), so the image must carry it with the rest."""
    from bot.runtime.catalog import APPROVED_TEMPLATES_FILE

    copied = [line.split()[-2] for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY --chown")]
    assert {"consentbot.yaml", "flows", "templates", APPROVED_TEMPLATES_FILE} <= set(copied)
