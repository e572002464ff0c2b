"""PostgresBackend against a private PostgreSQL server that is stopped, restarted or frozen.

The shared test server is never touched: each module runs its own cluster on a port of its
own, from the same PostgreSQL binaries `make test` installs (scripts/services.sh).
"""

import asyncio
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar

from .test_backends import SERVERS


def _postgres_bin() -> str | None:
    """The newest server's bin directory (a client-only package has no initdb)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if found:
        return str(Path(found[-1]).parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if bindir and Path(bindir, "initdb").exists():
            return bindir
    initdb = shutil.which("initdb")
    return str(Path(initdb).parent) if initdb else None


def _signal(pid: int, signum: signal.Signals) -> bool:
    """Sends `signum` to `pid`; False if the process has gone."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


class PrivateServer:
    """A PostgreSQL cluster of its own, on loopback, to stop, restart and freeze at will."""

    def __init__(self, bin_dir: str) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="llm-agent-runtime-pg-faults-", dir="/tmp"))
        # PostgreSQL refuses to run as root: the packaged `postgres` user runs it then.
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.run_as:
            shutil.chown(self.dir, "postgres")
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            self.port = free.getsockname()[1]
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run(
            "initdb",
            "-D",
            f"{self.dir}/data",
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "--no-locale",
            "-E",
            "UTF8",  # an environment's locale may not be generated
        )
        self.start()

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self.run_as, f"{self.bin}/{program}", *args], check=True, capture_output=True
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = f"{self.dir}/server.log"
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-l", log, "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-m", mode, "-w", "stop")

    def pids(self) -> list[int]:
        """The postmaster's and its children's."""
        postmaster = int(Path(self.dir, "data", "postmaster.pid").read_text().split()[0])
        children = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(Path(stat).parent.name))
        return [postmaster, *children]

    def freeze(self) -> list[int]:
        """Stops every process of the server (SIGSTOP): a hung host. A child that exits
        between listing and signalling (a backend whose client left) is skipped."""
        return [pid for pid in self.pids() if _signal(pid, signal.SIGSTOP)]

    @staticmethod
    def thaw(pids: list[int]) -> None:
        for pid in pids:
            _signal(pid, signal.SIGCONT)

    def running(self) -> bool:
        return Path(self.dir, "data", "postmaster.pid").exists()

    def remove(self) -> None:
        if self.running():
            self.thaw(self.pids())  # a frozen server cannot stop
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivateServer]:
    bin_dir = _postgres_bin()
    if bin_dir is None:
        if os.environ.get("LLM_AGENT_RUNTIME_REQUIRE_SERVICES"):
            pytest.fail("no PostgreSQL server binaries, but make test must run postgres")
        pytest.skip(f"no PostgreSQL server binaries: run `make test` ({SERVERS['postgres']})")
    server = PrivateServer(bin_dir)
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def server(private_server: PrivateServer) -> Iterator[PrivateServer]:
    """The private server, running at the start of a test and again after it (and never
    left frozen by a test that failed before thawing it)."""
    if not private_server.running():
        private_server.start()
    yield private_server
    if private_server.running():
        private_server.thaw(private_server.pids())
    else:
        private_server.start()


async def test_postgres_is_usable_as_soon_as_its_server_is_back_and_says_why_meanwhile(
    server: PrivateServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool waited out its reconnect backoff (1, 2, 4... s) after an outage: calls failed
    long after the server was back, saying only "couldn't get a connection"."""
    from psycopg_pool import base

    # A backoff as long as a long outage's: the pool's next attempt is far away.
    backoff = getattr(base, "AttemptWithBackoff", None) or base.ConnectionAttempt
    monkeypatch.setattr(backoff, "INITIAL_DELAY", 60.0)
    store = ar.PostgresBackend(server.dsn, table=f"kv_{uuid.uuid4().hex}", timeout=0.5)
    try:
        await store.save("k", b"v")
        server.stop("immediate")
        for _ in range(2):
            with pytest.raises(ar.PersistenceError) as info:
                await store.load("k")
            # What the server's address answered, not "couldn't get a connection".
            assert "Connection refused" in str(info.value), info.value
            assert "SECRET" not in str(info.value)
            assert info.value.key == "k"
        server.start()
        start = time.monotonic()
        assert await store.load("k") == b"v"
        assert time.monotonic() - start < 2.5  # the pool's wait, the probe, the retry
        await store.save("k", b"w")
        assert await store.load("k") == b"w"
    finally:
        await store.close()


async def test_postgres_drops_the_pooled_connections_a_server_restart_closed(
    server: PrivateServer,
) -> None:
    """Idle connections the server closed were handed out: AdminShutdown, one call each."""
    store = ar.PostgresBackend(server.dsn, table=f"kv_{uuid.uuid4().hex}", max_size=4, timeout=2)
    try:
        await asyncio.gather(*(store.save(f"k{i}", b"v") for i in range(20)))  # warm
        server.stop("fast")
        server.start()
        for i in range(8):
            await store.save(f"after{i}", b"v")
        assert await store.load("after7") == b"v"
        assert len(await store.list_keys()) == 28
    finally:
        await store.close()


@pytest.mark.parametrize("fault", ["stopped", "frozen"])
async def test_concurrent_first_calls_on_a_server_that_is_down_fail_together(
    server: PrivateServer, fault: str
) -> None:
    """Each waiting call ran its own failed open in turn: the k-th one waited k opens (on a
    frozen server, each open is the pool's timeout, its close's and the probe's)."""
    store = ar.PostgresBackend(server.dsn, table=f"kv_{uuid.uuid4().hex}", timeout=0.5)
    frozen = server.freeze() if fault == "frozen" else None
    if frozen is None:
        server.stop("fast")
    start = time.monotonic()

    async def one(i: int) -> tuple[float, str]:
        with pytest.raises(ar.PersistenceError) as info:
            await store.load(f"k{i}")
        return time.monotonic() - start, str(info.value)

    try:
        results = await asyncio.gather(*(one(i) for i in range(6)))
        for took, message in results:
            assert "cannot open PostgreSQL storage" in message, message
            if frozen is None:
                assert "Connection refused" in message, message
            else:  # the opener's error, shared: not "another call's open did not end"
                assert "no connection within 0.5 s" in message, message
            assert took < 3.0, results  # one open: the pool's timeout, then the probe's
    finally:
        if frozen is not None:
            server.thaw(frozen)
        else:
            server.start()
    try:
        assert await store.load("k") is None  # a later call opens again
    finally:
        await store.close()


async def test_a_call_its_caller_cancels_on_a_frozen_server_ends_within_a_grace(
    server: PrivateServer,
) -> None:
    """The cancellation took ~10 s (psycopg's own cancel request and wait), whatever the
    backend's timeout."""
    store = ar.PostgresBackend(server.dsn, table=f"kv_{uuid.uuid4().hex}", timeout=30)
    try:
        await store.save("k", b"v")
        pids = server.freeze()
        try:
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(store.load("k"), 0.3)
            assert time.monotonic() - start < 2.5  # the caller's 0.3 s, a grace of 1 s, slack
        finally:
            server.thaw(pids)
        assert await store.load("k") == b"v"  # the closed connection was not reused
    finally:
        await store.close()


async def test_a_cancellation_asked_just_before_a_call_on_a_frozen_server_is_kept(
    server: PrivateServer,
) -> None:
    """Asked before the call (Ctrl-C under `asyncio.run` cancels the task from inside it), it
    was counted as the task's past: no grace, and at the deadline the call failed with a
    `PersistenceError` (timed out), the cancellation lost."""
    store = ar.PostgresBackend(server.dsn, table=f"kv_{uuid.uuid4().hex}", timeout=3)
    try:
        await store.save("k", b"v")
        pids = server.freeze()
        try:
            task = asyncio.current_task()
            assert task is not None
            start = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await store.load("k")
            assert task.uncancel() == 0
            assert time.monotonic() - start < 2.5  # the grace of 1 s, slack; not the 3 s
        finally:
            server.thaw(pids)
        assert await store.load("k") == b"v"
    finally:
        await store.close()


async def test_a_busy_pool_is_not_taken_for_a_server_that_is_down(
    server: PrivateServer,
) -> None:
    """A call that got no connection from a pool whose connections were all busy was taken
    for an outage: the pool was replaced, failing every call queued on it (PoolClosed)."""
    store = ar.PostgresBackend(
        server.dsn, table=f"kv_{uuid.uuid4().hex}", min_size=1, max_size=2, timeout=0.3
    )
    renewals = 0
    renew = store._renew_pool

    async def counted(*args: Any) -> Any:
        nonlocal renewals
        renewals += 1
        return await renew(*args)

    store._renew_pool = counted  # type: ignore[method-assign]
    errors: list[str] = []

    async def one(i: int) -> None:
        await asyncio.sleep(random.random())
        try:  # a slow statement, through the path every call takes
            await store._execute(f"k{i}", "SELECT pg_sleep(0.03)", [])
        except ar.PersistenceError as error:
            errors.append(str(error))

    try:
        await store.open()
        await asyncio.gather(*(one(i) for i in range(150)))
        assert renewals == 0
        assert errors  # the pool was too small for them all: some timed out
        assert all("did not answer within the backend's timeout" in e for e in errors), errors
    finally:
        await store.close()
