"""A cycle of waits across keys of a deduplicator is refused, not left waiting for ever."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from test_redis_state import redis_url

import llm_agent_runtime as ar
from llm_agent_runtime.orchestration import redis_state

# Each test runs with the default task factory and, from Python 3.12, the eager one.
pytestmark = pytest.mark.usefixtures("task_factory")


# -- Deduplicator -------------------------------------------------------------------------------


def _assert_clean(dedup: ar.Deduplicator) -> None:
    # The wait-for graph holds only computations under way, and waits going on.
    assert dedup._waits == {}
    assert dedup._keys == {}
    assert dedup.in_flight == 0


@pytest.mark.timeout(10)
async def test_a_two_key_cycle_is_refused_and_the_other_execution_gets_its_result() -> None:
    # The execution of "a" asks for "b", whose execution asks for "a": both waited for ever.
    dedup = ar.Deduplicator(ttl=60)
    refused: list[RuntimeError] = []

    async def a() -> int:
        return int(await dedup.run("b", b)) + 1

    async def b() -> int:
        try:
            return int(await dedup.run("a", a)) + 1
        except RuntimeError as error:
            refused.append(error)
            return 10

    first = asyncio.ensure_future(dedup.run("a", a))
    outside = asyncio.ensure_future(dedup.run("b", b))  # a caller waiting on "b" meanwhile
    assert await first == 11
    assert await outside == 10
    [error] = refused
    assert str(error) == (
        "Deduplicator: the execution of key 'b' asked for key 'a', whose execution waits for "
        "this one: the cycle of waits 'b' -> 'a' -> 'b' would never end"
    )
    assert dedup.executions == 2
    assert await dedup.run("a", a) == 11  # cached
    _assert_clean(dedup)


@pytest.mark.timeout(10)
async def test_a_cycle_closed_by_a_wait_on_an_execution_already_running_is_refused() -> None:
    # "b" started on its own, before "a" asked for it.
    dedup = ar.Deduplicator(ttl=0)
    b_started, a_asking = asyncio.Event(), asyncio.Event()
    refused: list[RuntimeError] = []

    async def a() -> int:
        await b_started.wait()
        a_asking.set()
        return int(await dedup.run("b", b)) + 1

    async def b() -> int:
        b_started.set()
        await a_asking.wait()  # "a" now waits on this execution
        try:
            return int(await dedup.run("a", a)) + 1
        except RuntimeError as error:
            refused.append(error)
            return 10

    assert await asyncio.gather(dedup.run("a", a), dedup.run("b", b)) == [11, 10]
    [error] = refused
    assert "the cycle of waits 'b' -> 'a' -> 'b'" in str(error)
    _assert_clean(dedup)


@pytest.mark.timeout(10)
async def test_a_three_key_cycle_is_refused_naming_its_keys() -> None:
    dedup = ar.Deduplicator(ttl=0)
    refused: list[RuntimeError] = []

    async def a() -> int:
        return int(await dedup.run("b", b)) + 1

    async def b() -> int:
        return int(await dedup.run("c", c)) + 1

    async def c() -> int:
        await ready.wait()
        try:
            return int(await dedup.run("a", a)) + 1
        except RuntimeError as error:
            refused.append(error)
            return 100

    ready = asyncio.Event()
    a_run = asyncio.ensure_future(dedup.run("a", a))
    await asyncio.sleep(0.01)  # "a" waits on "b", which waits on "c"
    waiters = [asyncio.ensure_future(dedup.run(k, f)) for k, f in (("c", c), ("b", b))]
    ready.set()
    assert await a_run == 102
    assert await asyncio.gather(*waiters) == [100, 101]
    [error] = refused
    assert "key 'c' asked for key 'a'" in str(error)
    assert "the cycle of waits 'c' -> 'a' -> 'b' -> 'c' would never end" in str(error)
    assert dedup.executions == 3
    _assert_clean(dedup)


@pytest.mark.timeout(10)
async def test_an_unhandled_refusal_fails_the_cycle_instead_of_hanging_it() -> None:
    dedup = ar.Deduplicator(ttl=60)

    async def a() -> int:
        return int(await dedup.run("b", b)) + 1

    async def b() -> int:
        return int(await dedup.run("a", a)) + 1

    with pytest.raises(RuntimeError, match=re.escape("'b' -> 'a' -> 'b'")):
        await dedup.run("a", a)
    _assert_clean(dedup)
    # Nothing was cached, and the keys run again.
    assert await dedup.run("b", lambda: 5) == 5
    assert await dedup.run("a", a) == 6


@pytest.mark.timeout(10)
async def test_long_keys_are_cut_in_the_message_and_other_keys_work() -> None:
    dedup = ar.Deduplicator(ttl=0)
    long_a, b_key = ("a" * 500,), object()  # any hashable key

    async def a() -> int:
        return int(await dedup.run(b_key, b)) + 1

    async def b() -> int:
        return int(await dedup.run(long_a, a)) + 1

    with pytest.raises(RuntimeError, match="cycle of waits") as caught:
        await dedup.run(long_a, a)
    assert len(str(caught.value)) < 600
    _assert_clean(dedup)


async def _end_by_timeout(wait: Awaitable[Any]) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await wait


async def _end_by_cancel(wait: Awaitable[Any]) -> None:
    waiting = asyncio.current_task()
    assert waiting is not None
    asyncio.get_running_loop().call_later(0.05, waiting.cancel)
    try:
        await wait
    except asyncio.CancelledError:
        waiting.uncancel()  # handled: this execution goes on
    else:
        raise AssertionError("not cancelled")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("end", [_end_by_timeout, _end_by_cancel])
async def test_a_wait_ended_by_timeout_or_cancellation_leaves_no_edge_behind(
    end: Callable[[Awaitable[Any]], Awaitable[None]],
) -> None:
    # "a" waited on "b" and gave up; then "b" asks for "a": a wait that ends, not a cycle.
    dedup = ar.Deduplicator(ttl=0)
    a_gave_up, release_a = asyncio.Event(), asyncio.Event()

    async def a() -> int:
        await end(dedup.run("b", b))
        a_gave_up.set()
        await release_a.wait()
        return 1

    async def b() -> int:
        await a_gave_up.wait()
        asyncio.get_running_loop().call_later(0.05, release_a.set)
        return int(await dedup.run("a", a)) + 1  # "a" waits on nothing now

    a_run = asyncio.ensure_future(dedup.run("a", a))
    assert await dedup.run("b", b) == 2
    assert await a_run == 1
    _assert_clean(dedup)


@pytest.mark.timeout(10)
async def test_a_wait_ended_by_an_error_leaves_no_edge_behind() -> None:
    dedup = ar.Deduplicator(ttl=0)
    release_a = asyncio.Event()
    a_waited: list[bool] = []

    async def failing() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("b failed")

    async def a() -> int:
        with pytest.raises(ValueError, match="b failed"):
            await dedup.run("b", failing)
        a_waited.append(True)
        await release_a.wait()
        return 1

    async def b() -> int:
        return int(await dedup.run("a", a)) + 1  # "a" waits on nothing now

    a_run = asyncio.ensure_future(dedup.run("a", a))
    while not a_waited:
        await asyncio.sleep(0.005)
    b_run = asyncio.ensure_future(dedup.run("b", b))
    await asyncio.sleep(0.01)
    release_a.set()
    assert await asyncio.gather(a_run, b_run) == [1, 2]
    _assert_clean(dedup)


async def _chains(
    dedup: ar.Deduplicator | ar.RedisDeduplicator, order: str, pause: float
) -> list[int]:
    """Runs "a" and "c", both waiting on "b", which waits on "d", and plain callers of every
    key, started in `order`; "d" ends after `pause`. Returns each caller's result."""
    release = asyncio.Event()

    async def d() -> int:
        await release.wait()
        return 1

    async def b() -> int:
        return int(await dedup.run("d", d)) + 1

    async def a() -> int:
        return int(await dedup.run("b", b)) + 10

    async def c() -> int:
        return int(await dedup.run("b", b)) + 100

    calls = {"a": a, "b": b, "c": c, "d": d}
    runs = [asyncio.ensure_future(dedup.run(k, calls[k])) for k in order]
    await asyncio.sleep(pause)
    release.set()
    return list(await asyncio.gather(*runs))


@pytest.mark.timeout(10)
async def test_chains_without_a_cycle_are_not_refused() -> None:
    dedup = ar.Deduplicator(ttl=0)
    assert await _chains(dedup, "acbdac", 0.01) == [12, 102, 2, 1, 12, 102]
    assert dedup.executions == 4
    _assert_clean(dedup)


@pytest.mark.timeout(10)
async def test_a_forgotten_execution_that_waits_is_told_apart_from_the_new_one() -> None:
    # "a" (forgotten, still running) waits on "b"; "b" asks for "a" and starts a new one.
    dedup = ar.Deduplicator(ttl=0)
    a_waiting = asyncio.Event()

    async def first_a() -> int:
        a_waiting.set()
        return int(await dedup.run("b", b)) + 1

    async def b() -> int:
        await a_waiting.wait()
        dedup.forget("a")
        return int(await dedup.run("a", lambda: 5)) + 1

    assert await dedup.run("a", first_a) == 7
    _assert_clean(dedup)


@pytest.mark.timeout(10)
async def test_an_execution_asking_for_its_own_key_at_once_is_refused() -> None:
    # Before its first suspension: under an eager factory, before `run` had its task.
    dedup = ar.Deduplicator(ttl=0)
    calls = 0

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        return int(await dedup.run("k", fetch))

    with pytest.raises(RuntimeError, match="asked for that key itself"):
        await dedup.run("k", fetch)
    assert (calls, dedup.executions) == (1, 1)
    _assert_clean(dedup)


@pytest.mark.timeout(10)
async def test_a_cycle_whose_first_wait_comes_at_once_is_refused() -> None:
    dedup = ar.Deduplicator(ttl=0)

    async def a() -> int:
        return int(await dedup.run("b", b)) + 1  # at once

    async def b() -> int:
        await asyncio.sleep(0.01)
        return int(await dedup.run("a", a)) + 1

    with pytest.raises(RuntimeError, match=re.escape("'b' -> 'a' -> 'b'")):
        await dedup.run("a", a)
    _assert_clean(dedup)
    assert await dedup.run("a", lambda: 5) == 5  # a later caller is not left waiting


@pytest.mark.timeout(10)
async def test_an_execution_that_ends_at_once_or_forgets_its_key_leaves_nothing_behind() -> None:
    dedup = ar.Deduplicator(ttl=60)
    assert await dedup.run("k", lambda: 1) == 1
    assert await dedup.run("k", lambda: 2) == 1  # cached

    async def forgetting() -> int:
        dedup.forget("f")
        return 3

    assert await dedup.run("f", forgetting) == 3
    assert await dedup.run("f", lambda: 4) == 4  # its result was not cached: forgotten
    _assert_clean(dedup)


# -- RedisDeduplicator --------------------------------------------------------------------------


def _redis_dedup(test: str) -> ar.RedisDeduplicator:
    return ar.RedisDeduplicator(
        redis_url(), ttl=5.0, poll_interval=0.005, prefix=f"cycle:{os.getpid()}:", namespace=test
    )


async def _redis_done(dedup: ar.RedisDeduplicator, keys: str) -> None:
    for key in keys:
        await dedup.client.delete(*dedup.redis_keys(key))
    await dedup.close()
    # This process's graph holds only runs under way, and waits going on.
    assert redis_state._RUNS == {}
    assert redis_state._RUNNERS == {}
    assert redis_state._WAITS == {}


def _cyclic(
    dedup: ar.RedisDeduplicator, keys: str, refused: list[tuple[str, RuntimeError]]
) -> dict[str, Callable[[], Awaitable[int]]]:
    """One function per key, run in a task of its own: each asks for the next key once all
    have started; a refused one answers 0, the others the next key's answer plus one."""
    started = {key: asyncio.Event() for key in keys}
    fns: dict[str, Callable[[], Awaitable[int]]] = {}
    for index, key in enumerate(keys):
        following = keys[(index + 1) % len(keys)]

        async def fn(key: str = key, following: str = following) -> int:
            started[key].set()
            for event in started.values():
                await event.wait()
            try:
                return int(await dedup.run(following, fns[following])) + 1
            except RuntimeError as error:
                refused.append((key, error))
                return 0

        fns[key] = fn
    return fns


@pytest.mark.timeout(10)
@pytest.mark.parametrize("keys", ["ab", "abc"])
async def test_a_redis_cycle_in_one_process_is_refused_and_the_others_get_results(
    keys: str,
) -> None:
    dedup = _redis_dedup(f"cycle{len(keys)}")
    await dedup.client.delete(*(k for key in keys for k in dedup.redis_keys(key)))
    refused: list[tuple[str, RuntimeError]] = []
    fns = _cyclic(dedup, keys, refused)
    results = await asyncio.gather(*(dedup.run(key, fns[key]) for key in keys))
    [(key, error)] = refused  # the run whose wait would have closed the cycle
    start = keys.index(key)
    order = keys[start:] + keys[:start]
    cycle = " -> ".join(repr(k) for k in order + key)
    assert str(error) == (
        f"RedisDeduplicator: the run of key {key!r} asked for key {order[1]!r}, whose run "
        f"waits for this one: the cycle of waits {cycle} would never end"
    )
    # Each key's result is the next one's plus one, from 0 at the refused one.
    assert {k: results[keys.index(k)] for k in order} == {
        k: len(keys) - i if i else 0 for i, k in enumerate(order)
    }
    assert dedup.executions == len(keys)
    await _redis_done(dedup, keys)


@pytest.mark.timeout(10)
async def test_an_unhandled_redis_cycle_refusal_ends_every_run_of_the_cycle() -> None:
    dedup = _redis_dedup("unhandled")
    await dedup.client.delete(*dedup.redis_keys("a"), *dedup.redis_keys("b"))
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def fn(key: str, following: str) -> int:
        started[key].set()
        await started[following].wait()
        return int(await dedup.run(following, fn, following, key)) + 1

    outcome = await asyncio.gather(
        dedup.run("a", fn, "a", "b"), dedup.run("b", fn, "b", "a"), return_exceptions=True
    )
    assert all(isinstance(error, RuntimeError) for error in outcome), outcome
    # The refused run failed: the other took its key over, inside its own run, and that
    # asked for its own key.
    messages = sorted(str(error) for error in outcome)
    assert any("cycle of waits" in m for m in messages), messages
    await _redis_done(dedup, "ab")


@pytest.mark.timeout(10)
async def test_a_redis_wait_that_ended_by_timeout_leaves_no_edge_behind() -> None:
    dedup = _redis_dedup("timeout")
    await dedup.client.delete(*dedup.redis_keys("a"), *dedup.redis_keys("b"))
    b_started, a_gave_up, release_a = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def a() -> int:
        await b_started.wait()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await dedup.run("b", b)
        a_gave_up.set()
        await release_a.wait()
        return 1

    async def b() -> int:
        b_started.set()
        await a_gave_up.wait()
        asyncio.get_running_loop().call_later(0.05, release_a.set)
        return int(await dedup.run("a", a)) + 1  # "a" waits on nothing now

    assert await asyncio.gather(dedup.run("a", a), dedup.run("b", b)) == [1, 2]
    await _redis_done(dedup, "ab")


@pytest.mark.timeout(10)
async def test_redis_chains_without_a_cycle_and_plain_callers_are_not_refused() -> None:
    dedup = _redis_dedup("chains")
    await dedup.client.delete(*(k for key in "abcd" for k in dedup.redis_keys(key)))
    assert await _chains(dedup, "bacdac", 0.05) == [2, 12, 102, 1, 12, 102]
    assert dedup.executions == 4
    await _redis_done(dedup, "abcd")
