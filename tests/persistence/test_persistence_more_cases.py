"""More edge cases of the persistence backends: cancellation, threads, odd inputs."""

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


class _RacingDict(dict[str, bytes]):
    """A dict that, at its first read of `key`, lets another thread write through `rival`
    (waiting up to 0.3 s for it) before the read returns: the widest race a thread switch
    between a check and its write can open."""

    def __init__(self, key: str, rival: Callable[[], bool]) -> None:
        super().__init__()
        self.key = key
        self.rival = rival
        self.rival_results: list[bool] = []
        self.raced = False

    def _race(self, key: object) -> None:
        if key == self.key and not self.raced:
            self.raced = True
            thread = threading.Thread(target=lambda: self.rival_results.append(self.rival()))
            thread.start()
            thread.join(0.3)  # blocked by a lock held here: it goes on after this read

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        self._race(key)
        return found

    def get(self, key: str, default: Any = None) -> Any:
        value = super().get(key, default)
        self._race(key)
        return value


def test_in_memory_save_new_is_one_step_for_threads_sharing_the_backend() -> None:
    # Runtimes on two threads may share one backend: two claims of one key both won.
    backend = ar.InMemoryBackend()
    racing = _RacingDict("claim", lambda: asyncio.run(backend.save_new("claim", b"rival")))
    backend.data = racing
    mine = asyncio.run(backend.save_new("claim", b"mine"))
    deadline = time.monotonic() + 5
    while not racing.rival_results and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted([mine, *racing.rival_results]) == [False, True]
    assert racing["claim"] == (b"mine" if mine else b"rival")


def test_in_memory_guarded_batch_is_one_step_for_threads_sharing_the_backend() -> None:
    backend = ar.InMemoryBackend()
    asyncio.run(backend.save("lease", b"a"))

    def take_over() -> bool:  # the guard changes hands: the step must be written by then
        asyncio.run(backend.save("lease", b"b"))
        return "step" in dict(racing)

    racing = _RacingDict("lease", take_over)
    racing.update(backend.data)
    backend.data = racing
    wrote = asyncio.run(backend.batch_save_if("lease", b"a", {"step": b"1"}))
    deadline = time.monotonic() + 5
    while not racing.rival_results and time.monotonic() < deadline:
        time.sleep(0.01)
    # The guarded write checked and wrote in one step: the takeover came after it.
    assert wrote is True
    assert racing.rival_results == [True]
    assert dict(racing) == {"lease": b"b", "step": b"1"}
