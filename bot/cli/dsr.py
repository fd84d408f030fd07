"""``consentbot dsr``: data-subject requests and their one-month deadline (GDPR 12(3)).

- ``dsr list``: open requests, the earliest deadline first, overdue ones marked.
- ``dsr restrict SUBJECT`` / ``dsr unrestrict SUBJECT``: restrict processing (GDPR 18) or lift it.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import TextIO

from bot.cli.consent import run
from bot.runtime.privacy import PrivacyService
from bot.store.privacy import DataRequest


def describe(request: DataRequest, now: datetime) -> str:
    days = (request.due_at - now).total_seconds() / 86400
    when = f"OVERDUE by {-days:.0f} d" if days < 0 else f"due in {days:.0f} d"
    return (
        f"{request.due_at:%Y-%m-%d}  {when:<16} {request.kind!s:<16} {request.subject}  "
        f"(received {request.received_at:%Y-%m-%d}, id {request.id}{', by ' + request.actor if request.actor else ''})"
    )


async def list_command(service: PrivacyService, out: TextIO | None = None, limit: int = 100) -> int:
    """Print open requests; exit 1 when any is overdue (so a cron job can alert)."""
    out = out if out is not None else sys.stdout
    requests = await service.open_requests(limit)
    now = service.clock()
    for request in requests:
        out.write(describe(request, now) + "\n")
    overdue = sum(1 for r in requests if r.due_at < now)
    out.write(f"{len(requests)} open request(s), {overdue} overdue\n")
    return 1 if overdue else 0


async def restrict_command(service: PrivacyService, subject: str, lift: bool, actor: str,
                           out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    request = await (service.unrestrict(subject, actor) if lift else service.restrict(subject, actor))
    what = "lifted for" if lift else "restricted:"
    out.write(f"processing {what} {subject} (request {request.id}, {len(request.result.get('conversations', []))} "
              "conversation(s))\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dsr", help="data-subject requests: list open ones, restrict processing")
    p.add_argument("--project", default=".", help="project folder with consentbot.yaml (default: .)")
    dsub = p.add_subparsers(dest="dsr_command", metavar="ACTION", required=True)
    lst = dsub.add_parser("list", help="open requests by deadline (exit 1 when any is overdue)")
    lst.add_argument("--limit", type=int, default=100)
    lst.set_defaults(func=lambda a: run(a.project, lambda s: list_command(s, limit=a.limit)))
    for name, lift in (("restrict", False), ("unrestrict", True)):
        r = dsub.add_parser(name, help=("lift the restriction of" if lift else "restrict processing of") + " SUBJECT")
        r.add_argument("subject")
        r.add_argument("--actor", default="operator", help="who handles the request (recorded)")
        r.set_defaults(func=lambda a, lift=lift: run(a.project, lambda s: restrict_command(s, a.subject, lift,
                                                                                              a.actor)))
