"""``consentbot consent``: prove consent.

- ``consent verify [SUBJECT | --all]``: recompute the hash chains; one line per subject; exit 1 and
  name the first broken link (seq, altered / removed / reordered / bad prev link) when anything is wrong.
- ``consent receipt SUBJECT``: the consent receipt (Kantara CR v1.1 / ISO/IEC TS 27560 fields) as JSON.
- ``consent export SUBJECT [--out FILE]``: the access / portability export (GDPR 15/20) as JSON; it is
  recorded as a data-subject request (opened and closed).
- ``consent reconsent [--dry-run]``: after a new major notice version, bring the consent-refresh
  question forward for every conversation whose consent was given under an earlier one
  (:mod:`bot.runtime.reconsent`); the running service's poller sends it.

The command logic lives in ``*_command`` coroutines that take an opened :class:`PrivacyService`;
:func:`open_service` opens one from the project's settings through ``bot.wiring``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from bot.errors import ConfigError
from bot.runtime.privacy import PrivacyService
from bot.store.privacy import RequestKind

ServiceCommand = Callable[[PrivacyService], Awaitable[int]]


@contextlib.asynccontextmanager
async def open_service(project: str) -> AsyncIterator[PrivacyService]:
    """A :class:`PrivacyService` on the project's database, closed on exit.

    Needs ``bot.wiring.open_privacy(settings, store, stack) -> PrivacyStore`` (the privacy adapter on
    the same database as the store, opened, retention indexes applied)."""
    from contextlib import AsyncExitStack

    from bot import wiring
    from bot.settings import load_settings

    settings = load_settings(Path(project))
    opener = getattr(wiring, "open_privacy", None)
    if opener is None:
        raise ConfigError("wiring", "open_privacy(settings, store, stack) is not available in bot.wiring")
    async with AsyncExitStack() as stack:
        store = await wiring.open_store(settings, stack)
        privacy = await opener(settings, store, stack)
        yield PrivacyService(store, privacy, settings.project, settings.deployment_secret.reveal().encode())


def run(project: str, command: ServiceCommand) -> int:
    """Open the service, run ``command`` on it, return its exit code."""

    async def main() -> int:
        async with open_service(project) as service:
            return await command(service)

    return asyncio.run(main())


def print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


# --- commands ------------------------------------------------------------------------------------
async def verify_command(service: PrivacyService, subject: str | None, out: TextIO | None = None) -> int:
    """Verify one subject's chain or all of them. Exit 0 when every chain is intact, 1 otherwise (the
    broken ones are listed first, each naming its first broken link)."""
    out = out if out is not None else sys.stdout
    checks = await service.verify(subject)
    broken = [c for c in checks if not c.ok]
    for check in broken + [c for c in checks if c.ok]:
        out.write(check.describe() + "\n")
    events = sum(c.records for c in checks)
    if broken:
        out.write(f"FAILED: {len(broken)} of {len(checks)} chain(s) broken ({events} events checked)\n")
        return 1
    out.write(f"ok: {len(checks)} chain(s), {events} events verified\n")
    return 0


async def receipt_command(service: PrivacyService, subject: str, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    receipt = await service.receipt(subject)
    print_json(receipt, out)
    return 0 if receipt["chain"]["verified"] else 1


async def export_command(
    service: PrivacyService, subject: str, out: TextIO | None = None, path: str | None = None, actor: str = "operator"
) -> int:
    out = out if out is not None else sys.stdout
    export = await service.export(subject, actor=actor, kind=RequestKind.ACCESS)
    if path:
        text = json.dumps(export, indent=2, ensure_ascii=False) + "\n"
        await asyncio.to_thread(Path(path).write_text, text, encoding="utf-8")
        out.write(f"export of {subject} written to {path}\n")
    else:
        print_json(export, out)
    return 0


async def reconsent_command(
    service: PrivacyService, project_dir: str, dry_run: bool = False, out: TextIO | None = None
) -> int:
    """Bring the refresh question forward (see :mod:`bot.runtime.reconsent`); prints what it did."""
    import os

    from bot.runtime.catalog import load_catalog
    from bot.runtime.reconsent import bring_refresh_forward

    out = out if out is not None else sys.stdout
    catalog = await asyncio.to_thread(load_catalog, Path(project_dir), service.project)
    report = await bring_refresh_forward(
        service.store, catalog, service.project, f"cli-reconsent-{os.getpid()}", dry_run=dry_run
    )
    prefix = "dry run: would bring forward" if dry_run else "brought forward"
    for key in report.brought_forward:
        out.write(f"{prefix}: {key}\n")
    for key in report.no_question:
        out.write(f"no refresh question in its state: {key}\n")
    for key in report.busy:
        out.write(f"busy, run again: {key}\n")
    out.write(report.summary() + "\n")
    return 1 if report.busy else 0


# --- argparse ------------------------------------------------------------------------------------
def _verify(args: argparse.Namespace) -> int:
    if args.all == bool(args.subject):
        print("consentbot consent verify: give a SUBJECT or --all (not both)", file=sys.stderr)
        return 2
    subject = None if args.all else args.subject
    return run(args.project, lambda s: verify_command(s, subject))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("consent", help="proof of consent: verify chains, receipts, exports")
    p.add_argument("--project", default=".", help="project folder with consentbot.yaml (default: .)")
    csub = p.add_subparsers(dest="consent_command", metavar="ACTION", required=True)
    verify = csub.add_parser("verify", help="verify consent hash chains (exit 1 on any broken link)")
    verify.add_argument("subject", nargs="?", default=None, help="subject (wa_id or BSUID)")
    verify.add_argument("--all", action="store_true", help="verify every subject in the ledger")
    verify.set_defaults(func=_verify)
    receipt = csub.add_parser("receipt", help="print a subject's consent receipt (JSON)")
    receipt.add_argument("subject")
    receipt.set_defaults(func=lambda a: run(a.project, lambda s: receipt_command(s, a.subject)))
    export = csub.add_parser("export", help="export a subject's data (GDPR 15/20, JSON)")
    export.add_argument("subject")
    export.add_argument("--out", default=None, help="write to this file instead of stdout")
    export.add_argument("--actor", default="operator", help="who handles the request (recorded)")
    export.set_defaults(func=lambda a: run(a.project, lambda s: export_command(s, a.subject, path=a.out,
                                                                               actor=a.actor)))
    reconsent = csub.add_parser(
        "reconsent", help="after a new major notice version: ask again now (brings the refresh question forward)"
    )
    reconsent.add_argument("--dry-run", action="store_true", help="only say what would be done")
    reconsent.set_defaults(func=lambda a: run(a.project, lambda s: reconsent_command(s, a.project, a.dry_run)))
