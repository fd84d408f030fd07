"""``consentbot sandbox``: run the fake WhatsApp Cloud API and the phone page alone (no Meta account).

Point the bot at it with ``WHATSAPP_GRAPH_URL=http://HOST:PORT/graph`` and the same token and app
secret. Secrets come from ``WHATSAPP_APP_SECRET`` / ``WHATSAPP_ACCESS_TOKEN`` (sandbox defaults when
unset); the business number from ``WHATSAPP_PHONE_NUMBER_ID`` / ``WHATSAPP_DISPLAY_NUMBER`` or
``--number ID=DISPLAY`` (repeatable). The approved templates of ``--project`` (its
``whatsapp_templates.yaml``) show on the phone page with their text.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from aiohttp import web

from bot.core.audience import TemplateDeclaration
from bot.errors import ConfigError
from bot.runtime.catalog import approved_templates
from bot.settings import SANDBOX_APP_SECRET, SANDBOX_TOKEN
from bot.whatsapp.simulator import approved_texts, create_simulator_app

DEFAULT_PHONE_NUMBER_ID = "100000000000001"
DEFAULT_DISPLAY_NUMBER = "15550009999"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sandbox", help="run the fake WhatsApp Cloud API and the phone page alone")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8081, help="port to listen on (default: 8081)")
    p.add_argument(
        "--webhook-url",
        default="http://127.0.0.1:8080/webhook",
        help="the bot's webhook, where signed inbound and status webhooks go",
    )
    p.add_argument("--project", default=".", help="project folder whose whatsapp_templates.yaml to show (default: .)")
    p.add_argument(
        "--number",
        action="append",
        default=[],
        metavar="ID=DISPLAY",
        help="a business number: phone_number_id=display digits (repeatable)",
    )
    p.set_defaults(func=run)


def phone_numbers(values: list[str], env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """``--number`` values (or the environment, or the sandbox default) as phone_number_id -> display."""
    out: dict[str, str] = {}
    for value in values:
        pnid, sep, display = value.partition("=")
        pnid, display = pnid.strip(), display.strip().lstrip("+")
        if not sep or not pnid.isdigit() or not display.isdigit():
            raise ConfigError("--number", f"expected PHONE_NUMBER_ID=DISPLAY_DIGITS, got {value!r}")
        out[pnid] = display
    if not out:
        pnid = env.get("WHATSAPP_PHONE_NUMBER_ID", "").strip() or DEFAULT_PHONE_NUMBER_ID
        out[pnid] = env.get("WHATSAPP_DISPLAY_NUMBER", "").strip().lstrip("+") or DEFAULT_DISPLAY_NUMBER
    return out


def _declared(project_dir: Path) -> list[TemplateDeclaration]:
    """The project's declared templates; a broken file is reported and shown as names only."""
    declared, problems = approved_templates(project_dir)
    for problem in problems:
        print(f"consentbot: {problem.format()} (templates show by name)", file=sys.stderr)
    return declared


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigError("--port", f"must be between 1 and 65535, got {args.port}")
    if not args.webhook_url.startswith(("http://", "https://")):
        raise ConfigError("--webhook-url", "must be an http(s) URL")
    env = os.environ
    app = create_simulator_app(
        app_secret=env.get("WHATSAPP_APP_SECRET", "").strip() or SANDBOX_APP_SECRET,
        webhook_url=args.webhook_url,
        access_token=env.get("WHATSAPP_ACCESS_TOKEN", "").strip() or SANDBOX_TOKEN,
        phone_numbers=phone_numbers(args.number, env),
        templates=approved_texts(_declared(Path(args.project))),
    )
    base = f"http://{args.host}:{args.port}"
    print(f"sandbox phone page: {base}/")
    print(f"Graph API base URL: {base}/graph   (set WHATSAPP_GRAPH_URL to this)")
    print(f"webhooks go to:     {args.webhook_url}")
    web.run_app(app, host=args.host, port=args.port, print=None)
    return 0
