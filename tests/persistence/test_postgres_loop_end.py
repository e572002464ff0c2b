"""Failure paths of the server backends (PostgreSQL, Redis) and the Redis orchestration state."""

import asyncio
import gc
import sys
import time
import uuid
from typing import Any

import pytest

import llm_agent_runtime as ar

from .test_backends import _drop_table, server_address
from .test_durable import FINAL
from .test_pool_close_sweep7_cases import _named_dsn, _open_sessions_named, _sessions_named


@pytest.mark.timeout(20)
def test_a_postgres_call_made_as_its_loop_ends_fails_instead_of_spinning_forever() -> None:
    # The loop's pool, closed as the loop ends (`shutdown_asyncgens`, which asyncio.run calls
    # and during which another async generator's cleanup may still write), stayed the loop's:
    # the call looped on it without ever yielding, hanging the loop.
    dsn = server_address("postgres")
    table = f"kv_{uuid.uuid4().hex}"
    store = ar.PostgresBackend(dsn, table=table, timeout=3.0)

    async def ending() -> None:
        await store.save("k", b"v")
        await asyncio.get_running_loop().shutdown_asyncgens()  # as asyncio.run ends a loop
        with pytest.raises(ar.PersistenceError, match="closed as the loop ends"):
            await store.load("k")

    try:
        asyncio.run(ending())
        assert asyncio.run(store.load("k")) == b"v"  # the next loop opens a pool of its own
    finally:
        asyncio.run(_drop_table(dsn, table))


@pytest.mark.timeout(60)
def test_a_backend_dropped_unclosed_closes_its_pool_without_destroying_pending_tasks() -> None:
    # The task that closes a loop's pool was referenced only by the backend: dropped with it
    # (no `close`, the loop still running), the garbage collector destroyed it and the pool's
    # worker tasks while pending ("Task was destroyed but it is pending!", its `finally`
    # awaiting under GeneratorExit), and the pool was never closed its own way.
    base, name, dsn = _named_dsn("dropped")
    table = f"kv_{uuid.uuid4().hex}"
    messages: list[str] = []
    unraisable: list[object] = []

    async def use_and_drop() -> None:
        store = ar.PostgresBackend(dsn, table=table, min_size=2)
        await store.save("k", b"v")

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: messages.append(context["message"]))
        await use_and_drop()
        opened = await _open_sessions_named(base, name)
        gc.collect()  # the backend is garbage in a cycle: its pool's close is scheduled
        return opened, await _sessions_named(base, name)

    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        opened, left = asyncio.run(main())
    finally:
        sys.unraisablehook = previous_hook
        asyncio.run(_drop_table(base, table))
    assert opened >= 2 and left == 0
    assert not [m for m in messages if "destroyed but it is pending" in m]
    assert not unraisable


@pytest.mark.timeout(60)
def test_the_pools_of_loops_closed_without_ending_them_are_closed_by_the_next_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A loop run by hand and closed (`run_until_complete`, then `close`, as a sync web handler
    # or a worker thread does) never cancels its tasks: the task that closes its pool waited
    # for good, kept alive with the pool and its connections, one more at every such loop.
    base, name, dsn = _named_dsn("hand_run")
    table = f"kv_{uuid.uuid4().hex}"
    store = ar.PostgresBackend(dsn, table=table, min_size=1)
    unraisable: list[object] = []
    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        for n in range(5):
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(store.save(f"k{n}", b"v"))
            finally:
                loop.close()
        # The next loop closes the last one's pool; its own is closed as it ends.
        assert asyncio.run(store.load("k4")) == b"v"
        assert asyncio.run(_sessions_named(base, name)) == 0
        gc.collect()  # nothing of the closed loops' pools fails as it is collected
        assert not unraisable
        # Not the pool's workers, nor its scheduler, nor its guard. (On Python 3.11 only, the
        # task `asyncio.wait_for` makes of the scheduler's `Event.wait` is still logged.)
        destroyed = [r.getMessage() for r in caplog.records if "destroyed but" in r.getMessage()]
        assert [m for m in destroyed if "Event.wait()" not in m] == []
    finally:
        sys.unraisablehook = previous_hook
        asyncio.run(_drop_table(base, table))


@pytest.mark.timeout(60)
def test_close_closes_the_pool_of_a_loop_closed_without_ending_it() -> None:
    # `close` dropped the entry of a loop closed by hand without closing its pool: its
    # connection stayed open for the life of the process.
    base, name, dsn = _named_dsn("close_after_hand_run")
    table = f"kv_{uuid.uuid4().hex}"
    store = ar.PostgresBackend(dsn, table=table, min_size=1)
    try:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(store.save("k", b"v"))
        finally:
            loop.close()
        assert asyncio.run(_open_sessions_named(base, name)) >= 1
        asyncio.run(store.close())
        assert asyncio.run(_sessions_named(base, name)) == 0
    finally:
        asyncio.run(_drop_table(base, table))


@pytest.mark.timeout(60)
def test_the_pools_of_backends_dropped_with_their_hand_run_loops_are_closed() -> None:
    # A backend made in a loop run by hand, used, then dropped with its loop: nothing used
    # the backend again, so its pool (kept alive by the task that closes it as the loop
    # ends, which never came) held a connection for the life of the process, one more at
    # every such loop. The next pool opened, whatever its backend, closes them.
    base, name, dsn = _named_dsn("dropped_hand_run")
    table = f"kv_{uuid.uuid4().hex}"
    try:
        for n in range(5):
            loop = asyncio.new_event_loop()
            try:
                store = ar.PostgresBackend(dsn, table=table, min_size=1)
                loop.run_until_complete(store.save(f"k{n}", b"v"))
            finally:
                loop.close()
            del store
        gc.collect()

        async def next_pool() -> int:
            store = ar.PostgresBackend(dsn, table=table, min_size=1)
            assert await store.load("k4") == b"v"
            await store.close()
            return await _sessions_named(base, name)

        assert asyncio.run(next_pool()) == 0
    finally:
        asyncio.run(_drop_table(base, table))


@pytest.mark.timeout(120)
def test_a_run_cut_off_by_the_loops_end_saves_its_end_before_the_pool_closes() -> None:
    # `asyncio.run` cancels every task at once as it ends: the run left in flight, and the
    # task that closes the loop's pool. When that task came first, the pool closed while the
    # run's cleanup wrote its end and events through it ("connection socket closed"): they
    # were lost. The order is the task set's: tried several times.
    dsn = server_address("postgres")
    table = f"kv_{uuid.uuid4().hex}"
    backend = ar.PostgresBackend(dsn, table=table)

    def cut_off() -> tuple[list[str], bytes | None]:
        started = asyncio.Event()

        @ar.tool(idempotent=True)
        async def wait(seconds: float) -> str:
            """Waits."""
            if seconds > 1:
                started.set()
            await asyncio.sleep(seconds)
            return "done"

        runtime = ar.AgentRuntime(tools=[wait], checkpoint_backend=backend)
        session = runtime.create_session("a")

        def model(seconds: float) -> Any:
            replies = iter([f'Thought: w\nAction: wait {{"seconds": {seconds}}}', FINAL])

            async def infer(prompt: str) -> str:
                return next(replies)

            return infer

        async def main() -> None:
            await runtime.run_agent("a", "turn 1", model(0.001), session=session)
            asyncio.get_running_loop().create_task(
                runtime.run_agent("a", "turn 2", model(30), session=session)
            )
            await started.wait()  # then returns: the loop's end cancels turn 2

        asyncio.run(main())
        events = asyncio.run(runtime.session_events(session.session_id))
        ended = asyncio.run(backend.load(f"session:{session.session_id}:ended"))
        return [e["type"] for e in events], ended

    try:
        for _ in range(8):
            logged, ended = cut_off()
            turn = ["RunStarted", "LlmResponse", "ToolCallStarted", "ToolCallFinished"]
            assert logged == [*turn, "LlmResponse", "RunFinished", *turn, "ErrorEvent"]
            assert ended is not None
    finally:
        asyncio.run(_drop_table(dsn, table))


@pytest.mark.timeout(60)
def test_a_pool_waits_only_for_the_tasks_the_loops_end_cancelled() -> None:
    # It waited for every task: one started by another as it was cancelled (a fire-and-
    # forget flush), which the loop never waits for, held the end of asyncio.run 10 s.
    dsn = server_address("postgres")
    table = f"kv_{uuid.uuid4().hex}"
    backend = ar.PostgresBackend(dsn, table=table)

    async def spawner() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            asyncio.get_running_loop().create_task(asyncio.sleep(3600))

    async def main() -> None:
        await backend.save("k", b"v")
        asyncio.get_running_loop().create_task(spawner())
        await asyncio.sleep(0.01)

    try:
        for _ in range(3):  # whichever of the guard and the spawner the loop's end runs first
            start = time.monotonic()
            asyncio.run(main())
            assert time.monotonic() - start < 5
    finally:
        asyncio.run(_drop_table(dsn, table))
