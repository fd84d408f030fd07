"""Microseconds per ``decide()`` on the shipped consent flow, rendering included.

Runs the full double opt-in path (first contact with the first-layer notice, age gate, two purposes,
frequency, confirmation request, confirming tap, an ordinary question, a HELP, STOP) over and over with
fresh conversations, timing every call. Prints the median and p99 per call, overall and per step.

    .venv/bin/python bench/decide.py [--rounds 3000]
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from bot.core.engine import decide
from bot.core.messages import Inbound, InboundKind
from bot.core.sample import SAMPLE_PROJECT
from bot.runtime.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[1]
STEPS: list[tuple[str, str | None, str | None]] = [
    ("first contact (notice)", "hola", None),
    ("tap yes", None, "consent_yes"),
    ("age gate", None, "age_yes"),
    ("purpose 1", None, "purpose_yes"),
    ("purpose 2", None, "purpose_yes"),
    ("frequency -> confirm request", None, "set_frequency:weekly"),
    ("confirming tap", None, "confirm_yes"),
    ("ordinary question", "¿abrís el domingo?", None),
    ("HELP", "ayuda", None),
    ("STOP", "Báj a!!", None),
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3000)
    args = parser.parse_args()
    family = load_catalog(ROOT, SAMPLE_PROJECT).family("consent")
    now = datetime(2025, 3, 3, 10, 0, tzinfo=UTC)
    per_step: dict[str, list[float]] = {name: [] for name, _, _ in STEPS}
    n = 0
    gc.collect()
    for r in range(args.rounds + 200):
        conv = None
        subject = f"346{r:08d}"
        for name, text, payload in STEPS:
            n += 1
            inbound = Inbound(
                id=f"wamid.{n}", phone_number_id="pn", subject=subject, timestamp=0,
                kind=InboundKind.BUTTON_REPLY if payload else InboundKind.TEXT, text=text, payload=payload,
            )
            t0 = time.perf_counter_ns()
            d = decide(conv, inbound, family, SAMPLE_PROJECT, now)
            t1 = time.perf_counter_ns()
            conv = d.conversation
            if r >= 200:  # warm-up rounds are not counted
                per_step[name].append((t1 - t0) / 1000)
        assert conv is not None and conv.state == "opted_out"
    every = [v for values in per_step.values() for v in values]
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.processor() or 'cpu'}), "
          f"{args.rounds} rounds x {len(STEPS)} steps = {len(every)} decide() calls")
    print(f"{'step':32} {'median µs':>10} {'p99 µs':>10}")
    for name, values in per_step.items():
        print(f"{name:32} {statistics.median(values):10.1f} {pct(values, 0.99):10.1f}")
    print(f"{'ALL':32} {statistics.median(every):10.1f} {pct(every, 0.99):10.1f}")

    # The machine alone: set the state on the one model and fire (design figure: ~16 µs).
    flow = family.newest
    from bot.core.turn import Turn

    turn = Turn(subject="s", project=SAMPLE_PROJECT, purposes=("offers", "news"), locales=("en", "es"),
                flow_id="consent", flow_version="1", now=now, slots={"age_ok": True}, consent={}, locale="es",
                window_open=True)
    fire = []
    for _ in range(20000):
        t0 = time.perf_counter_ns()
        flow.fire("notice", "consent_yes", turn)
        fire.append((time.perf_counter_ns() - t0) / 1000)
    print(f"{'machine.fire only':32} {statistics.median(fire):10.1f} {pct(fire, 0.99):10.1f}")


if __name__ == "__main__":
    main()
