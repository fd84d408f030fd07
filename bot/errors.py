"""One root error and a subtree per layer.

Every error the framework raises on purpose is a :class:`BotError`. Driver and library errors are
translated at the boundary with ``raise ... from``, so callers only ever need to catch these.
"""

from __future__ import annotations


class BotError(Exception):
    """Root of every error ConsentBot raises on purpose."""


# --- configuration -------------------------------------------------------------------------------
class ConfigError(BotError):
    """A setting is missing or wrong. The message names the key and what is wrong, never a secret."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# --- core (pure) ---------------------------------------------------------------------------------
class CoreError(BotError):
    """Raised by the pure core."""


class FlowError(CoreError):
    """A flow file is broken. ``path`` points into the document, e.g. ``states.confirm.on[2]``."""

    def __init__(self, message: str, path: str = "", file: str = "", line: int | None = None) -> None:
        where = file + (f":{line}" if line is not None else "")
        prefix = f"{where}: " if where else ""
        at = f" (at {path})" if path else ""
        super().__init__(f"{prefix}{message}{at}")
        self.message = message
        self.path = path
        self.file = file
        self.line = line


class RenderError(CoreError):
    """A template could not be rendered (undefined variable, syntax error, limit exceeded)."""


class LimitError(CoreError):
    """A message breaks a WhatsApp length or count limit. Names the field and the limit."""

    def __init__(self, field: str, limit: str, actual: object) -> None:
        super().__init__(f"{field}: {limit} (got {actual})")
        self.field = field
        self.limit = limit
        self.actual = actual


# --- storage -------------------------------------------------------------------------------------
class StoreError(BotError):
    """The database failed or is unreachable."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now; the operation may be retried."""


class StaleVersion(StoreError):
    """An optimistic-concurrency check failed: someone else committed first. Reload and decide again."""


class NotFound(StoreError):
    """The record asked for does not exist."""


# --- WhatsApp channel ----------------------------------------------------------------------------
class ChannelError(BotError):
    """Anything about the WhatsApp wire format or the Graph API."""


class SignatureError(ChannelError):
    """A webhook's X-Hub-Signature-256 is missing or wrong."""


class PayloadError(ChannelError):
    """A webhook body is not JSON or not a WhatsApp notification."""


# --- runtime -------------------------------------------------------------------------------------
class RuntimeFailure(BotError):
    """The durable runtime could not complete a step."""


class Blocked(BotError):
    """The send gate refused a message. ``reason`` is a stable machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"blocked: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.detail = detail
