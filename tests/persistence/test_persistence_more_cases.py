"""More edge cases of the persistence backends: cancellation, threads, odd inputs."""

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.persistence.checkpoints import CheckpointStore


async def test_a_sqlite_write_cancelled_while_queued_behind_another_call_never_lands(
    tmp_path: Path,
) -> None:
    # The second save waited for the backend's own connection lock, held by a save that
    # waits for another process's write lock: cancelled, it still wrote once that lock was
    # free, seconds after the cancellation had reached its caller.
    path = tmp_path / "store.db"
    store = ar.SqliteBackend(path, busy_timeout=10)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process writing
        first = asyncio.ensure_future(store.save("first", b"1"))
        await asyncio.sleep(0.3)
        second = asyncio.ensure_future(store.save("second", b"stale"))
        await asyncio.sleep(0.3)
        second.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await second
        # It gave up its wait at once, not after the grace for a running statement.
        assert time.monotonic() - started < 0.5
        other.execute("COMMIT")
        await first
        await asyncio.sleep(0.3)  # time for a thread still queued to write
        assert await store.load("first") == b"1"
        assert await store.load("second") is None
    finally:
        other.close()
        store.close()


@pytest.mark.parametrize("kind", [ar.InMemoryBackend, ar.SqliteBackend, ar.FileBackend])
async def test_a_backend_class_rather_than_a_backend_is_refused_by_name(kind: type) -> None:
    # The class has every method the checkpoints call, as functions: it was taken, and the
    # first call failed with a bare TypeError about a missing argument.
    with pytest.raises(ar.PersistenceError, match=f"the class {kind.__name__}"):
        await ar.AgentSession.load_checkpoint(kind, "s")
    with pytest.raises(ar.PersistenceError, match=f"the class {kind.__name__}"):
        CheckpointStore(kind)
