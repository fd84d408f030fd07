"""Binds the dispatcher's :class:`~bot.runtime.turn.Decider` to the compiled flows of a project.

Each business number runs the flow named in ``consentbot.yaml``; a conversation stays on the flow
version it started with (the engine picks it from the flow family).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from bot.core.conversation import Conversation, Timer
from bot.core.engine import Event as EngineEvent
from bot.core.engine import MetaSignal, TimerFired, decide
from bot.core.project import Project
from bot.runtime.catalog import Catalog
from bot.runtime.turn import Event, Signal, Turn

log = logging.getLogger("consentbot.flows")


class FlowDecider:
    """``decide`` for every number of the deployment (implements ``bot.runtime.turn.Decider``)."""

    def __init__(self, catalog: Catalog, project: Project, flows_by_number: Mapping[str, str]) -> None:
        self.catalog = catalog
        self.project = project
        self.flows_by_number = dict(flows_by_number)
        for number, flow_id in self.flows_by_number.items():
            catalog.family(flow_id)  # fail at start, not on the first message, when a flow is missing
            log.debug("number %s runs flow %s", number, flow_id)

    def __call__(
        self, conversation: Conversation | None, event: Event, phone_number_id: str, subject: str, now: datetime
    ) -> Turn | None:
        if conversation is not None:
            family = self.catalog.for_conversation(conversation)
        else:
            flow_id = self.flows_by_number.get(phone_number_id)
            if flow_id is None:
                return None
            if isinstance(event, Timer):
                return None
            family = self.catalog.family(flow_id)
        engine_event: EngineEvent
        if isinstance(event, Timer):
            engine_event = TimerFired(event.name)
        elif isinstance(event, Signal):
            ref = str(event.evidence.get("message_id") or event.evidence.get("webhook") or "")
            engine_event = MetaSignal(
                kind=event.kind,
                subject=subject,
                phone_number_id=phone_number_id,
                id=ref,
                detail=str(event.evidence.get("detail", "")),
            )
        else:
            engine_event = event
        decision = decide(conversation, engine_event, family, self.project, now)
        return Turn(
            conversation=decision.conversation,
            transitions=decision.transitions,
            outbox=decision.outbox,
            consent=decision.consent,
            notices=decision.notices,
            requests=decision.requests,
        )
