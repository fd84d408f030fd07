"""``consentbot broadcast``: consent-gated campaigns (create, run, status, cancel, report, list).

Templates are declared in ``<project>/whatsapp_templates.yaml`` (``--templates FILE`` to use another):
the approved WhatsApp templates a campaign may send, with their parameters and opt-out element (see
``docs/campaigns.md``). ``run`` needs the Graph API: in the sandbox the running service serves the fake
one at ``http://127.0.0.1:8080/sandbox/graph`` (``--graph-url`` to point elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import yaml

from bot import logs, wiring
from bot.core.audience import CampaignError, Segment, TemplateDeclaration, declarations_from, parse_params
from bot.errors import ConfigError
from bot.runtime.broadcast import (
    REPORT_FIELDS,
    CampaignNotFound,
    CampaignRunner,
    RunOptions,
    campaign_report,
    new_campaign,
    recipient_rows,
)
from bot.runtime.privacy import PrivacyService
from bot.settings import Settings, load_settings
from bot.store.base import Store
from bot.store.broadcasts import Broadcasts, Campaign, CampaignState

TEMPLATES_FILE = "whatsapp_templates.yaml"
SANDBOX_GRAPH = "http://127.0.0.1:8080/sandbox/graph"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("broadcast", help="consent-gated campaigns: create, run, status, cancel, report, list")
    group = p.add_subparsers(dest="broadcast_command", metavar="ACTION", title="actions")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--project", default=".", help="project folder with consentbot.yaml (default: .)")
        q.add_argument("--store", choices=("mongo", "memory"), default="mongo",
                       help="mongo (MONGODB_URI, or the embedded server) or memory (nothing persists)")

    c = group.add_parser("create", help="create a campaign (nothing is sent until `run`)")
    common(c)
    c.add_argument("--name", required=True, help="a name people recognise")
    c.add_argument("--template", required=True, help="approved template name (declared in whatsapp_templates.yaml)")
    c.add_argument("--language", required=True, help="the template's exact language code (en, en_US, es...)")
    c.add_argument("--purpose", required=True, help="the consent purpose it is sent under (e.g. offers)")
    c.add_argument("--segment", action="append", default=[], metavar="KEY=VALUE",
                   help="only customers whose preference KEY is VALUE (repeatable, e.g. freq=weekly)")
    c.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a template parameter; VALUE may use {{ profile_name }} or any slot (repeatable)")
    c.add_argument("--rate", type=float, default=None, help="messages per second (1..1000; default: the number's)")
    c.add_argument("--locale", default=None, help="customers' language (default: the template's, e.g. en)")
    c.add_argument("--number", default=None, help="phone_number_id to send from (default: the first configured)")
    c.add_argument("--templates", default=None,
                   help=f"template declarations file (default: <project>/{TEMPLATES_FILE})")
    c.add_argument("--id", default=None, help="campaign id (default: generated)")
    c.add_argument("--dry-run", action="store_true", help="only count the audience and the exclusions")
    c.set_defaults(func=cmd_create)

    r = group.add_parser("run", help="send (or resume) a campaign")
    common(r)
    r.add_argument("id")
    r.add_argument("--dry-run", action="store_true", help="only count the audience and the exclusions")
    r.add_argument("--graph-url", default=None, help=f"Graph API base URL (sandbox default: {SANDBOX_GRAPH})")
    r.add_argument("--wait", type=float, default=30.0,
                   help="seconds to wait for a previous run's lease to expire (default: 30)")
    r.add_argument("--receipt-wait", type=float, default=30.0,
                   help="seconds an in-doubt send waits for its status webhook before it is resent (default: 30)")
    r.add_argument("--lease", type=float, default=15.0, help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_run)

    for name, helptext, func in (("status", "progress and counts", cmd_status),
                                 ("cancel", "stop a campaign (`run` resumes it)", cmd_cancel)):
        q = group.add_parser(name, help=helptext)
        common(q)
        q.add_argument("id")
        q.set_defaults(func=func)

    rep = group.add_parser("report", help="sent, delivered, read, failed, opted out; CSV or JSON export")
    common(rep)
    rep.add_argument("id")
    rep.add_argument("--format", choices=("text", "csv", "json"), default="text",
                     help="text summary, csv (one row per recipient) or json (summary and recipients)")
    rep.add_argument("--output", default="-", help="file to write (default: stdout)")
    rep.set_defaults(func=cmd_report)

    ls = group.add_parser("list", help="campaigns, newest first")
    common(ls)
    ls.set_defaults(func=cmd_list)

    def usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)


# --- plumbing ------------------------------------------------------------------------------------
class Opened:
    def __init__(self, settings: Settings, store: Store, broadcasts: Broadcasts, privacy: PrivacyService) -> None:
        self.settings, self.store, self.broadcasts, self.privacy = settings, store, broadcasts, privacy


async def open_all(args: argparse.Namespace, stack: AsyncExitStack) -> Opened:
    settings = load_settings(args.project)
    store = await wiring.open_store(settings, stack, args.store)
    opener = getattr(wiring, "open_broadcasts", None)
    if opener is None:
        raise ConfigError("broadcast", "campaign storage is not wired in this build (bot.wiring.open_broadcasts)")
    broadcasts: Broadcasts = await opener(store)
    privacy_store = await wiring.open_privacy(settings, store, stack)
    privacy = PrivacyService(store, privacy_store, settings.project, settings.deployment_secret.reveal().encode())
    return Opened(settings, store, broadcasts, privacy)


def run_async(func: Callable[[argparse.Namespace, AsyncExitStack], Any], args: argparse.Namespace) -> int:
    async def main() -> int:
        async with AsyncExitStack() as stack:
            result: int = await func(args, stack)
            return result

    return asyncio.run(main())


def _runner(o: Opened, client: Any, options: RunOptions | None = None) -> CampaignRunner:
    return CampaignRunner(o.broadcasts, o.store, client, o.settings.project, is_suppressed=o.privacy.is_suppressed,
                          is_restricted=o.privacy.is_restricted, options=options)


async def _campaign(o: Opened, campaign_id: str) -> Campaign:
    c = await o.broadcasts.get(campaign_id)
    if c is None:
        raise CampaignNotFound(campaign_id)
    return c


def load_declarations(path: Path) -> list[TemplateDeclaration]:
    if not path.is_file():
        raise ConfigError("--templates", f"{path} not found: declare your approved templates there (docs/campaigns.md)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("--templates", f"cannot read {path.name}: {type(exc).__name__}") from None
    return declarations_from(data, path.name)


def print_dry_run(report: dict[str, Any], out: IO[str]) -> None:
    print(f"audience: {report['eligible']} of {report['candidates']} subscribers of the purpose", file=out)
    print(f"excluded: {report['excluded']}", file=out)
    for reason, n in report["reasons"].items():
        print(f"  {reason:<28} {n}", file=out)
    print("nothing was sent (dry run)", file=out)


# --- commands ------------------------------------------------------------------------------------
def cmd_create(args: argparse.Namespace) -> int:
    return run_async(_create, args)


async def _create(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    o = await open_all(args, stack)
    path = Path(args.templates) if args.templates else o.settings.project_dir / TEMPLATES_FILE
    decls = load_declarations(path)
    decl = next((d for d in decls if d.name == args.template and d.language == args.language), None)
    if decl is None:
        known = ", ".join(f"{d.name} ({d.language})" for d in decls) or "none"
        raise CampaignError(f"--template: {args.template} ({args.language}) is not declared in {path.name} "
                            f"(declared: {known})")
    pnid = args.number or o.settings.numbers[0].phone_number_id
    number = o.settings.number(pnid)
    if number is None:
        raise ConfigError("--number", f"{pnid} is not one of the configured numbers")
    campaign = new_campaign(
        name=args.name, decl=decl, purpose=args.purpose, project=o.settings.project, phone_number_id=pnid,
        now=datetime.now(UTC), segments=[Segment.parse(s) for s in args.segment], params=parse_params(args.param),
        rate=args.rate if args.rate is not None else number.rate_per_second, locale=args.locale,
        campaign_id=args.id,
    )
    if args.dry_run:
        print_dry_run(await _runner(o, None).dry_run(campaign), sys.stdout)
        return 0
    await o.broadcasts.create(campaign)
    print(f"created campaign {campaign.id}: {campaign.name} ({decl.name}, {decl.language}, purpose {campaign.purpose},"
          f" {campaign.rate:g} msg/s)")
    print(f"  consentbot broadcast run {campaign.id} --dry-run   # audience and exclusions")
    print(f"  consentbot broadcast run {campaign.id}             # send")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return run_async(_run, args)


async def _run(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    o = await open_all(args, stack)
    campaign = await _campaign(o, args.id)
    if args.dry_run:
        print_dry_run(await _runner(o, None).dry_run(campaign), sys.stdout)
        return 0
    from bot.whatsapp.client import GraphClient, make_session

    logs.configure("INFO")  # a run is a long job: its warnings and errors go to stderr (progress to stdout)
    session = make_session(limit=max(100, int(campaign.rate)))
    stack.push_async_callback(session.close)
    base = args.graph_url or o.settings.graph_url or SANDBOX_GRAPH
    client = GraphClient(session, base_url=base, api_version=o.settings.api_version,
                         access_token=o.settings.access_token.reveal(), rate_per_second=campaign.rate)
    options = RunOptions(receipt_wait=args.receipt_wait, lease_seconds=args.lease)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bar = ProgressBar(sys.stdout)
    result = await _runner(o, client, options).run(campaign.id, on_progress=bar.update, stop=stop, wait=args.wait)
    bar.done(result)
    return 0 if result["state"] in ("done", "cancelled") else 3


def cmd_status(args: argparse.Namespace) -> int:
    return run_async(_status, args)


async def _status(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    o = await open_all(args, stack)
    c = await _campaign(o, args.id)
    tally = await o.broadcasts.tally(c.id)
    running = bool(c.run_owner) and c.run_until is not None and c.run_until > datetime.now(UTC)
    print(f"{c.id}  {c.name}  [{c.state}{', a run is active' if running else ''}]")
    print(f"  template {c.template.name} ({c.template.language}), purpose {c.purpose}, {c.rate:g} msg/s"
          + (f", segments {' '.join(f'{k}={v}' for k, v in c.segments)}" if c.segments else ""))
    states = ", ".join(f"{k} {v}" for k, v in sorted(tally.states.items())) or "no recipients yet"
    print(f"  recipients: {tally.total} ({states}); audience scan {'done' if c.audience_done else 'not finished'}")
    if tally.reasons:
        print("  excluded: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.reasons.items())))
    if tally.delivery:
        print("  delivery: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.delivery.items())))
    if tally.errors:
        print("  errors: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.errors.items())))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    return run_async(_cancel, args)


async def _cancel(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    o = await open_all(args, stack)
    c = await _campaign(o, args.id)
    if c.state is CampaignState.DONE:
        print(f"campaign {c.id} is already done; nothing to cancel")
        return 0
    await o.broadcasts.set_state(c.id, CampaignState.CANCELLED, datetime.now(UTC))
    print(f"campaign {c.id} cancelled: a running run stops before its next message; `run {c.id}` resumes it")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    return run_async(_report, args)


async def _report(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    o = await open_all(args, stack)
    c = await _campaign(o, args.id)
    out: IO[str] = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115, ASYNC230
    try:
        if args.format == "csv":
            writer = csv.DictWriter(out, fieldnames=list(REPORT_FIELDS))
            writer.writeheader()
            async for row in recipient_rows(o.broadcasts, o.store, c):
                writer.writerow(row)
        elif args.format == "json":
            summary = await campaign_report(o.broadcasts, o.store, c.id)
            out.write('{"summary": ' + json.dumps(summary, ensure_ascii=False) + ', "recipients": [')
            first = True
            async for row in recipient_rows(o.broadcasts, o.store, c):
                out.write(("" if first else ",") + "\n  " + json.dumps(row, ensure_ascii=False))
                first = False
            out.write("\n]}\n")
        else:
            summary = await campaign_report(o.broadcasts, o.store, c.id)
            for key, value in summary.items():
                print(f"{key:<20} {value}", file=out)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    return run_async(_list, args)


async def _list(args: argparse.Namespace, stack: AsyncExitStack) -> int:
    o = await open_all(args, stack)
    campaigns = await o.broadcasts.recent()
    if not campaigns:
        print("no campaigns yet (consentbot broadcast create --help)")
    for c in campaigns:
        p = c.progress
        print(f"{c.id}  {c.state:<9}  {c.created_at:%Y-%m-%d %H:%M}  {c.name}  "
              f"[{c.template.name}/{c.template.language}, {c.purpose}]  sent {p.get('accepted', 0)}, "
              f"failed {p.get('failed', 0)}, excluded {p.get('excluded', 0)}")
    return 0


# --- the progress bar ----------------------------------------------------------------------------
class ProgressBar:
    """A live bar on a terminal (one line redrawn); plain lines (at most one per ``every`` seconds) when
    the output is not a terminal (logs, CI)."""

    def __init__(self, out: IO[str], width: int = 30, every: float = 5.0) -> None:
        self.out = out
        self.tty = out.isatty()
        self.width = width
        self.every = every
        self._last = 0.0

    @staticmethod
    def line(p: dict[str, Any], width: int) -> str:
        final = int(p["accepted"]) + int(p["failed"]) + int(p["excluded"])
        total = max(int(p["total"]), 1)
        frac = final / total if p.get("audience_done") else 0.0
        filled = int(frac * width)
        bar = "#" * filled + "-" * (width - filled)
        eta = p.get("eta_seconds")
        eta_text = "--:--" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))
        scan = "" if p.get("audience_done") else " (audience scan running)"
        return (f"[{bar}] {frac:4.0%}  sent {p['accepted']}  failed {p['failed']}  excluded {p['excluded']}"
                f"  of {p['total']}  {p['rate']:.0f}/s (cap {p['target_rate']:g})  ETA {eta_text}{scan}")

    def update(self, p: dict[str, Any]) -> None:
        text = self.line(p, self.width)
        if self.tty:
            self.out.write("\r\x1b[2K" + text)
            self.out.flush()
        elif time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            print(text, file=self.out, flush=True)

    def done(self, p: dict[str, Any]) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K")
        print(self.line(p, self.width), file=self.out)
        print(f"campaign {p['campaign']}: {p['state']}", file=self.out, flush=True)
