"""``consentbot erase SUBJECT [--yes]``: erase a customer's data (GDPR 17).

Deletes conversations, history, transcripts and preferences; keeps the suppression entry and moves
the consent proof to the blocked store (destroyed after ``retention.blocked_proof_days``). Prints what
was deleted and what is kept and why (tell the customer exactly this). Without ``--yes`` it asks to
type the subject again; with no terminal to ask on, it refuses (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from bot.cli.consent import run
from bot.runtime.privacy import PrivacyService


async def erase_command(service: PrivacyService, subject: str, actor: str, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    report = await service.erase(subject, actor)
    out.write(report.summary() + "\n")
    out.write(json.dumps(report.to_doc(), indent=2, ensure_ascii=False) + "\n")
    return 0


def confirmed(subject: str, yes: bool, stdin: TextIO | None = None, err: TextIO | None = None) -> bool:
    """``--yes``, or the operator typed the subject again on a terminal."""
    if yes:
        return True
    stdin = stdin if stdin is not None else sys.stdin
    err = err if err is not None else sys.stderr
    if not stdin.isatty():
        err.write("consentbot erase: refusing without --yes (no terminal to confirm on)\n")
        return False
    err.write(f"Erase every conversation and message of {subject}? Type the subject again to confirm: ")
    err.flush()
    return stdin.readline().strip() == subject


def _erase(args: argparse.Namespace) -> int:
    if not confirmed(args.subject, args.yes):
        return 2
    return run(args.project, lambda s: erase_command(s, args.subject, args.actor))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("erase", help="erase a customer's data (keeps suppression and blocked consent proof)")
    p.add_argument("subject", help="subject (wa_id, BSUID) or phone number")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--actor", default="operator", help="who handles the request (recorded)")
    p.add_argument("--project", default=".", help="project folder with consentbot.yaml (default: .)")
    p.set_defaults(func=_erase)
