"""A small Prometheus text-format registry: counters, gauges and histograms with labels.

Kept in-process and lock-free (the event loop is single-threaded); ``render()`` produces the
``/metrics`` body (text exposition format 0.0.4).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(labels: dict[str, str]) -> Labels:
    if len(labels) < 2:  # the hot path: no label or one (nothing to sort)
        return tuple(labels.items())
    return tuple(sorted(labels.items()))


def _fmt(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in items)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = _labels(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self.values.get(_labels(labels), 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for key, v in sorted(self.values.items()):
            yield f"{self.name}{_fmt(key)} {v:g}"


class Gauge:
    """A gauge whose value is read from a callback at render time (or set directly)."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float] | None = None) -> None:
        self.name, self.help, self.read = name, help_text, read
        self.current = 0.0

    def set(self, value: float) -> None:
        self.current = value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        value = self.read() if self.read is not None else self.current
        yield f"{self.name} {value:g}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = _labels(labels)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = ([0] * (len(self.buckets) + 1), [0.0])
        counts, total = series
        counts[bisect.bisect_left(self.buckets, value)] += 1
        total[0] += value

    def count(self, **labels: str) -> int:
        entry = self.series.get(_labels(labels))
        return sum(entry[0]) if entry else 0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for key, (counts, total) in sorted(self.series.items()):
            running = 0
            for bound, c in zip(self.buckets, counts, strict=False):
                running += c
                yield f"{self.name}_bucket{_fmt(key, (('le', f'{bound:g}'),))} {running}"
            running += counts[-1]
            yield f"{self.name}_bucket{_fmt(key, (('le', '+Inf'),))} {running}"
            yield f"{self.name}_sum{_fmt(key)} {total[0]:g}"
            yield f"{self.name}_count{_fmt(key)} {running}"


class Metrics:
    """Every metric the service exposes, in one place."""

    def __init__(self) -> None:
        self.webhooks = Counter("consentbot_webhooks_total", "Webhook POSTs by result.")
        self.inbound = Counter("consentbot_inbound_events_total", "Inbound events stored, by kind.")
        self.steps = Counter("consentbot_steps_total", "Conversation steps committed, by cause.")
        self.step_conflicts = Counter("consentbot_step_conflicts_total", "Steps retried after a version conflict.")
        self.sends = Counter("consentbot_sends_total", "Outbound messages by result.")
        self.gate_blocks = Counter("consentbot_gate_blocks_total", "Messages the send gate blocked, by reason.")
        self.graph_errors = Counter("consentbot_graph_errors_total", "Graph API errors by code.")
        self.inbox_lag = Gauge("consentbot_inbox_pending", "Inbound events waiting to be processed.")
        self.ack_latency = Histogram("consentbot_webhook_ack_seconds", "Time to acknowledge a webhook.")
        self.step_latency = Histogram("consentbot_step_seconds", "Time from inbox to committed step.")
        self.send_latency = Histogram("consentbot_send_seconds", "Graph API send call duration.")

    def all(self) -> tuple[Counter | Gauge | Histogram, ...]:
        return (
            self.webhooks, self.inbound, self.steps, self.step_conflicts, self.sends, self.gate_blocks,
            self.graph_errors, self.inbox_lag, self.ack_latency, self.step_latency, self.send_latency,
        )  # fmt: skip

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
