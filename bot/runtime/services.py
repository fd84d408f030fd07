"""The wired set of services one process runs, handed to the web layer and the CLI.

``bot.wiring`` builds it (it is the only module that names concrete adapters); everything else only
sees the ports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bot.runtime.metrics import Metrics
from bot.settings import Settings
from bot.store.base import Store

if TYPE_CHECKING:
    from aiohttp import web


class Background(Protocol):
    """A long-running part of the process (dispatcher, poller, sandbox...)."""

    def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass
class Services:
    settings: Settings
    store: Store
    metrics: Metrics = field(default_factory=Metrics)
    web_extensions: list[Callable[[web.Application], None]] = field(default_factory=list)
    components: dict[str, Any] = field(default_factory=dict)
    background: list[Background] = field(default_factory=list)
    store_label: str = ""

    def start(self) -> None:
        for part in self.background:
            part.start()

    async def stop(self) -> None:
        """Stop in reverse order of start; each part drains its in-flight work first."""
        for part in reversed(self.background):
            await part.stop()

    async def refresh_gauges(self) -> None:
        """Read gauges that need the database (inbox lag) just before ``/metrics`` renders."""
        stats = self.components.get("webhook_stats")
        if stats is not None:
            for result, count in stats.as_dict().items():
                self.metrics.webhooks.values[(("result", result),)] = float(count)
        try:
            self.metrics.inbox_lag.set(await self.store.inbox.count_pending())
        except Exception:
            self.metrics.inbox_lag.set(-1)
