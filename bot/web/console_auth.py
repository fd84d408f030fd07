"""Console authentication: Argon2 passwords, server-side sessions, CSRF tokens and login throttling.

- Passwords are hashed with Argon2id (``argon2-cffi``). Hashing and verifying run in a worker thread
  so the event loop never blocks on them; an unknown name still costs one verification (no timing
  oracle for which names exist).
- The session cookie holds a random 256-bit token; the store keeps only its SHA-256. The cookie is
  ``HttpOnly``, ``SameSite=Strict``, scoped to ``/console`` and ``Secure`` whenever the console is
  served over https. A session ends after :attr:`AuthPolicy.idle` without a request, at
  :attr:`AuthPolicy.absolute` after login, at logout, or when the account is disabled.
- Every form carries the session's CSRF token (``_csrf``); the login form, which has no session yet,
  uses a double-submit cookie. A POST without the right token gets 403.
- :class:`Throttle` counts failed logins per account and per client address; past the free attempts
  each further failure locks the key for a doubling delay (429 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from bot.store.accounts import Agent, Session

SESSION_COOKIE = "consentbot_console"
LOGIN_CSRF_COOKIE = "consentbot_login_csrf"
CSRF_FIELD = "_csrf"
CSRF_HEADER = "X-CSRF-Token"
COOKIE_PATH = "/console"

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("not-a-real-password-" + secrets.token_hex(8))


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """Session and throttling settings of the console."""

    idle: timedelta = timedelta(hours=8)
    absolute: timedelta = timedelta(hours=12)
    touch_every: timedelta = timedelta(minutes=5)  # write idle_until at most this often
    free_failures_account: int = 5
    free_failures_ip: int = 10
    lock_base_seconds: float = 30.0
    lock_max_seconds: float = 15 * 60.0
    forget_after_seconds: float = 3600.0
    secure_cookies: bool | None = None  # None: Secure when the request came over https


# --- passwords -----------------------------------------------------------------------------------
def hash_password(password: str) -> str:
    """An Argon2id hash string for ``password`` (blocking: call from a thread or the CLI)."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches (blocking; never raises for a bad or foreign hash)."""
    try:
        return bool(_hasher.verify(password_hash, password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    try:
        return bool(_hasher.check_needs_rehash(password_hash))
    except InvalidHashError:
        return False


async def check_login(agent: Agent | None, password: str) -> bool:
    """Verify off the event loop. A missing or disabled agent is verified against a dummy hash so
    the answer takes as long as for a real account, then refused."""
    target = agent.password_hash if agent is not None and not agent.disabled else _DUMMY_HASH
    ok = await asyncio.to_thread(verify_password, target, password)
    return ok and agent is not None and not agent.disabled


# --- tokens --------------------------------------------------------------------------------------
def new_token() -> str:
    return secrets.token_urlsafe(32)


def session_id(token: str) -> str:
    """What the store keeps for a cookie token (its SHA-256, hex)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_token(a: str, b: str) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def new_session(agent: Agent, now: datetime, policy: AuthPolicy, ip: str) -> tuple[str, Session]:
    """A fresh (token, session) pair for ``agent`` (the token goes to the cookie, the session to the store)."""
    token = new_token()
    session = Session(
        id=session_id(token),
        agent=agent.name,
        role=agent.role,
        csrf=new_token(),
        created_at=now,
        idle_until=now + policy.idle,
        expires_at=now + policy.absolute,
        ip=ip,
    )
    return token, session


def is_https(request: web.Request, policy: AuthPolicy) -> bool:
    if policy.secure_cookies is not None:
        return policy.secure_cookies
    return request.secure


def set_session_cookie(response: web.StreamResponse, request: web.Request, token: str, policy: AuthPolicy) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=is_https(request, policy),
    )


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)


def login_csrf_token(request: web.Request) -> tuple[str, bool]:
    """The login form's double-submit token: the cookie's, or a new one (``True``: set the cookie)."""
    token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if len(token) >= 32:
        return token, False
    return new_token(), True


def set_login_csrf_cookie(response: web.StreamResponse, request: web.Request, token: str, policy: AuthPolicy) -> None:
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        path=COOKIE_PATH + "/login",
        httponly=True,
        samesite="Strict",
        secure=is_https(request, policy),
    )


def client_ip(request: web.Request) -> str:
    """The peer address (a reverse proxy that should be trusted for ``X-Forwarded-For`` must be
    configured in aiohttp's ``web.run_app``/middleware, not guessed here)."""
    return request.remote or "unknown"


# --- throttling ----------------------------------------------------------------------------------
@dataclass(slots=True)
class _Failures:
    count: int = 0
    last: float = 0.0
    locked_until: float = 0.0


@dataclass
class Throttle:
    """Failed-login counters for one process (bounded: the oldest keys are forgotten first).

    ``free`` failures per key are allowed; each further failure locks the key for
    ``base * 2**(n - free)`` seconds, capped at ``cap``. A key with no failure for ``forget`` seconds
    starts afresh; a successful login clears the account key (not the address key)."""

    base: float = 30.0
    cap: float = 900.0
    forget: float = 3600.0
    max_keys: int = 50_000
    clock: Callable[[], float] = time.monotonic
    _keys: OrderedDict[str, _Failures] = field(default_factory=OrderedDict)

    def locked_for(self, key: str) -> float:
        """Seconds ``key`` stays locked (0: free)."""
        entry = self._keys.get(key)
        if entry is None:
            return 0.0
        return max(0.0, entry.locked_until - self.clock())

    def failed(self, key: str, free: int) -> float:
        """Count a failure; returns the lock it now carries (seconds, 0 while still free)."""
        now = self.clock()
        entry = self._keys.pop(key, None) or _Failures()
        if entry.last and now - entry.last > self.forget:
            entry = _Failures()
        entry.count += 1
        entry.last = now
        if entry.count >= free:
            delay = min(self.cap, self.base * 2 ** (entry.count - free))
            entry.locked_until = now + delay
        self._keys[key] = entry
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return max(0.0, entry.locked_until - now)

    def succeeded(self, key: str) -> None:
        self._keys.pop(key, None)


def now_utc() -> datetime:
    return datetime.now(UTC)
