"""The ``consentbot`` command line.

Each command group lives in its own module with a ``register(subparsers)`` function that adds its
sub-command and sets ``func`` (an ``argparse.Namespace -> int`` callable) on its parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bot import __version__
from bot.errors import BotError

GROUPS: tuple[str, ...] = ("serve", "db", "sandbox", "chat", "flows", "consent", "erase", "dsr", "broadcast", "agents")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consentbot",
        description="Consent-first WhatsApp conversations: double opt-in, preferences, easy opt-out.",
    )
    parser.add_argument("--version", action="version", version=f"consentbot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    import importlib

    for name in GROUPS:
        try:
            module = importlib.import_module(f"bot.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bot.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        result: int = func(args)
    except BotError as exc:
        print(f"consentbot: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result
