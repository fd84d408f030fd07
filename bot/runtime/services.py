"""The wired set of services one process runs, handed to the web layer and the CLI.

``bot.wiring`` builds it (it is the only module that names concrete adapters); everything else only
sees the ports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.runtime.metrics import Metrics
from bot.settings import Settings
from bot.store.base import Store

if TYPE_CHECKING:
    from aiohttp import web


@dataclass
class Services:
    settings: Settings
    store: Store
    metrics: Metrics = field(default_factory=Metrics)
    web_extensions: list[Callable[[web.Application], None]] = field(default_factory=list)
    components: dict[str, Any] = field(default_factory=dict)

    async def refresh_gauges(self) -> None:
        """Read gauges that need the database (inbox lag) just before ``/metrics`` renders."""
        try:
            self.metrics.inbox_lag.set(await self.store.inbox.count_pending())
        except Exception:
            self.metrics.inbox_lag.set(-1)
