"""Orchestration primitives at their edges: async callables handed to sync paths, tables that
must not grow for ever, retry decisions that see through pipelines or fail themselves, keys
that must not collide, and a fake clock that refuses times no clock can show."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import threading
import types
import warnings
import weakref
from typing import Any
from unittest.mock import MagicMock

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.orchestration import (
    CircuitBreaker,
    Deduplicator,
    FakeClock,
    Pipeline,
    RateLimiter,
    ResultCache,
    RetryPolicy,
    canonical_key,
)


class AsyncService:
    """An object whose `__call__` is async (fails every time)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        raise ConnectionError("down")


async def test_a_breaker_decorating_an_async_callable_object_counts_its_failures() -> None:
    # It was wrapped as a sync function: each call "succeeded" with an un-awaited coroutine.
    breaker = CircuitBreaker("svc", failure_threshold=2, recovery_window=60)
    service = AsyncService()
    guarded = breaker(service)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await guarded()
    assert breaker.state == "open" and service.calls == 2
    with pytest.raises(ar.CircuitOpenError):
        await guarded()


@pytest.mark.parametrize("closed", [True, False], ids=["fast path", "half-open trial"])
def test_call_sync_refuses_an_async_callable(closed: bool) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("svc", failure_threshold=1, recovery_window=1, clock=clock)
    if not closed:
        with pytest.raises(ZeroDivisionError):
            breaker.call_sync(lambda: 1 / 0)
        clock.advance(2)  # the next call is a trial
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(TypeError, match=r"needs a sync callable.*coroutine"):
            breaker.call_sync(AsyncService())
        gc.collect()  # a coroutine left unclosed warns when collected
    assert not [w for w in seen if "never awaited" in str(w.message)]
    assert breaker.state == "open"  # a refused call is a failed one (the trial too)


class Pending:
    """An awaitable that is no coroutine, as a future or a task is."""

    def __await__(self) -> Any:
        yield
        return "done"


@types.coroutine
def generator_based_coroutine() -> Any:
    yield


def plain_generator() -> Any:
    yield 1


@pytest.mark.parametrize("closed", [True, False], ids=["fast path", "half-open trial"])
@pytest.mark.parametrize("make", [Pending, generator_based_coroutine])
def test_call_sync_refuses_any_awaitable_whatever_the_state(closed: bool, make: Any) -> None:
    # The fast path refused coroutines only: a future was a success there, a failure in trial.
    clock = FakeClock()
    breaker = CircuitBreaker("svc", failure_threshold=1, recovery_window=1, clock=clock)
    for _ in range(3):  # a plain generator is no awaitable
        assert list(breaker.call_sync(plain_generator)) == [1]
    if not closed:
        with pytest.raises(ZeroDivisionError):
            breaker.call_sync(lambda: 1 / 0)
        clock.advance(2)  # the next call is a trial
    with pytest.raises(TypeError, match="needs a sync callable"):
        breaker.call_sync(make)
    assert breaker.state == "open"  # a refused call is a failed one


def test_call_sync_keeps_no_type_of_its_results_alive() -> None:
    # A cache of the types found not awaitable (256 at most) held them for good: classes made
    # at run time, and MagicMocks (each has a class of its own, which references it).
    breaker = CircuitBreaker("svc", failure_threshold=10**9)
    refs: list[weakref.ref[Any]] = []
    for i in range(20):
        mock = MagicMock()
        model = type(f"Model{i}", (), {})
        refs += [weakref.ref(mock), weakref.ref(type(mock)), weakref.ref(model)]
        assert breaker.call_sync(lambda mock=mock: mock) is mock
        assert type(breaker.call_sync(model)) is model
    del mock, model
    gc.collect()
    assert [ref for ref in refs if ref() is not None] == []


class ForwardingProxy:
    """Forwards what it lacks to the object it wraps, and poses as its class."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._target)


def test_call_sync_refuses_a_proxy_of_an_awaitable() -> None:
    breaker = CircuitBreaker("svc")
    with pytest.raises(TypeError, match="needs a sync callable"):
        breaker.call_sync(lambda: ForwardingProxy(Pending()))
    assert breaker.call_sync(lambda: ForwardingProxy(7)).__class__ is int  # no awaitable


def test_an_async_state_change_listener_is_refused() -> None:
    breaker = CircuitBreaker("svc")

    async def listener(change: Any) -> None:
        return None

    with pytest.raises(TypeError, match="listener must be sync"):
        breaker.add_listener(listener)
    breaker.add_listener(lambda change: None)


async def test_expired_dedup_results_are_dropped_as_new_ones_come() -> None:
    clock = FakeClock()
    dedup = Deduplicator(ttl=1.0, clock=clock)
    for i in range(5_000):
        await dedup.run(("user", i), lambda: "x")
        if i % 100 == 99:
            clock.advance(10.0)
    assert len(dedup._done) <= 100  # the results of the last second only
    await dedup.run("fresh", lambda: "x")
    assert await dedup.run("fresh", lambda: "other") == "x"  # a live result is still served


async def test_refilled_rate_limit_buckets_are_dropped() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10, capacity=10, clock=clock)
    for i in range(20_000):
        assert limiter.try_acquire(("user", i))
        if i % 100 == 99:
            clock.advance(10.0)
    assert len(limiter._buckets) <= 2_048
    # A dropped bucket is a full one, as a new key's: nothing about limiting changes.
    assert limiter.tokens(("user", 0)) == 10
    for _ in range(10):
        assert limiter.try_acquire("hot")
    assert not limiter.try_acquire("hot")


async def test_a_waiter_cancelled_after_its_bucket_was_dropped_refunds_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1, capacity=1, clock=clock)
    assert limiter.try_acquire("k")
    waiter = asyncio.ensure_future(limiter.acquire("k"))
    await asyncio.sleep(0)
    del limiter._buckets["k"]  # as a sweep does once the bucket has refilled
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.tokens("k") == 1


async def test_a_retry_predicate_that_raises_leaves_the_calls_own_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(error: BaseException) -> bool:
        raise KeyError("bug in the predicate")

    async def fails() -> None:
        raise ValueError("the real failure")

    policy = RetryPolicy(max_attempts=3, retry_on=broken, clock=FakeClock())
    with caplog.at_level(logging.ERROR), pytest.raises(ValueError, match="the real failure"):
        await policy.run(fails)
    assert "retry_on raised" in caplog.text


async def test_retry_judges_a_pipeline_failure_by_the_stages_own_error() -> None:
    attempts = 0

    async def flaky(value: str) -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ar.ProviderError("busy", status=503, retryable=True)
        return value + "!"

    policy = RetryPolicy(max_attempts=5, clock=FakeClock())
    assert await policy.run(Pipeline(flaky).run, "hi") == "hi!" and attempts == 3

    spent = 0

    def spend(value: int) -> int:
        nonlocal spent
        spent += 1
        raise ar.BudgetExceededError("spent")

    permissive = RetryPolicy(max_attempts=4, retry_on=lambda e: True, clock=FakeClock())
    with pytest.raises(ar.PipelineStageError):
        await permissive.run(Pipeline(spend).run, 1)
    assert spent == 1  # never retried, wrapped or not


async def test_a_sync_stage_raising_stop_iteration_keeps_it_as_the_cause() -> None:
    def first(items: list[int]) -> int:
        return next(iter(items))

    with pytest.raises(ar.PipelineStageError) as raised:
        await Pipeline(first).run([])
    assert type(raised.value.__cause__) is StopIteration


def test_canonical_keys_do_not_collide_across_key_types() -> None:
    with pytest.raises(TypeError, match="string dict keys"):
        canonical_key({1: "a"})
    with pytest.raises(TypeError, match="string dict keys"):
        canonical_key(filters=[{"nested": {2: "b"}}])
    cache = ResultCache(max_entries=10, ttl=60)
    cache.put("t", {"ids": {"1": "a"}}, ["1"])
    with pytest.raises(TypeError):
        cache.get("t", {"ids": {1: "a"}})  # was served ["1"], another call's result
    assert canonical_key((1, 2)) == canonical_key([1, 2])  # documented: JSON has arrays only


def test_canonical_key_refuses_self_containing_and_too_deep_arguments() -> None:
    looped: list[Any] = []
    looped.append(looped)
    mapping: dict[str, Any] = {}
    mapping["self"] = mapping
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    for bad in (looped, mapping, deep):  # each was a RecursionError
        with pytest.raises(TypeError, match="JSON-serializable"):
            canonical_key(bad)
        with pytest.raises(TypeError):
            ResultCache.key("t", {"filters": bad})  # as documented
    shared = [1]
    assert canonical_key([shared, shared]) == "[[[[1],[1]]],{}]"  # shared is not circular


def test_canonical_key_checks_each_value_in_a_few_lines() -> None:
    # A cache hit computes the key: a walk keeping a set of the containers seen (to stop at a
    # self-containing one) ran 6.3 lines of Python a value, 15-25% more time for a hit. The
    # count stands for the time, as a timing would not (it is the same on any machine).
    import sys

    from llm_agent_runtime.orchestration import dedup

    messages = [{"role": "user", "content": "hi", "meta": {"a": [1, 2, 3]}} for _ in range(20)]
    kwargs = {"messages": messages, "k": 5}  # 8 values a message
    values = 20 * 8 + 4  # with the messages, `k`, the kwargs and the args
    lines = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal lines
        if frame.f_code.co_filename != dedup.__file__:
            return None
        lines += event == "line"
        return trace

    sys.settrace(trace)
    try:
        key = canonical_key(**kwargs)
    finally:
        sys.settrace(None)
    assert key == json.dumps([(), kwargs], sort_keys=True, separators=(",", ":"))
    assert 0 < lines <= 5 * values, lines


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -1.0])
def test_a_fake_clock_moves_forward_by_finite_times_only(seconds: float) -> None:
    clock = FakeClock()
    with pytest.raises(ValueError):
        clock.advance(seconds)
    assert clock.now() == 0.0


async def test_a_fake_clock_jumps_only_once_no_other_work_is_ready() -> None:
    # A sleeper that registers a few turns of the loop late still wakes at its own deadline:
    # the clock used to jump after a fixed three turns, waking it at 10 + 1.
    clock = FakeClock()
    woken: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float, turns_late: int) -> None:
        for _ in range(turns_late):
            await asyncio.sleep(0)
        await clock.sleep(seconds)
        woken.append((name, clock.now()))

    await asyncio.gather(sleeper("a", 10, 0), sleeper("b", 1, 5), sleeper("c", 2, 50))
    assert woken == [("b", 1.0), ("c", 2.0), ("a", 10.0)]


async def test_a_task_yielding_for_ever_does_not_stop_a_fake_clock() -> None:
    clock = FakeClock()

    async def poll() -> None:  # waits for the clock, yielding to the loop all along
        while clock.now() < 3.0:
            await asyncio.sleep(0)

    poller = asyncio.ensure_future(poll())
    await clock.sleep(3.0)
    await asyncio.wait_for(poller, 1.0)


async def test_a_fake_clock_never_jumps_to_an_endless_sleep() -> None:
    clock = FakeClock()
    forever = asyncio.ensure_future(clock.sleep(math.inf))
    await clock.sleep(5.0)  # still woken: the endless one does not block the jump
    for _ in range(10):
        await asyncio.sleep(0)
    assert clock.now() == 5.0 and not forever.done()
    forever.cancel()


# -- a fake clock or a deduplicator used by one event loop, then another ------------------------


def _close_loop_leaving(start: Any) -> None:
    """Runs `start()` in a new event loop, closed then without cancelling what it left."""
    loop = asyncio.new_event_loop()
    loop.run_until_complete(start())
    loop.close()


def test_a_fake_clock_wakes_the_sleepers_of_the_next_event_loop() -> None:
    clock = FakeClock()

    async def leave_a_sleeper() -> None:
        asyncio.ensure_future(clock.sleep(5))  # noqa: RUF006 - cancelled as the loop ends
        await asyncio.sleep(0)

    asyncio.run(leave_a_sleeper())  # ends before the clock's jump ran

    async def sleep_one() -> float:
        await asyncio.wait_for(clock.sleep(1), 1)  # virtual time: no real second
        return clock.now()

    assert asyncio.run(sleep_one()) == 1.0


def test_a_fake_clock_drops_the_sleepers_of_a_closed_event_loop() -> None:
    clock = FakeClock()

    async def leave_a_sleeper() -> None:
        asyncio.ensure_future(clock.sleep(0.5))  # noqa: RUF006 - left with its loop
        await asyncio.sleep(0)

    _close_loop_leaving(leave_a_sleeper)

    async def sleep_one() -> float:
        await asyncio.wait_for(clock.sleep(1), 1)  # the jump passes the closed loop's sleeper
        return clock.now()

    assert asyncio.run(sleep_one()) == 1.0
    _close_loop_leaving(leave_a_sleeper)
    clock.advance(1)  # not "Event loop is closed"
    assert clock.now() == 2.0 and clock._sleepers == []
    gc.collect()  # the tasks left with the closed loops go without an error


def test_a_dedup_key_running_on_another_threads_loop_is_a_clear_error() -> None:
    dedup = Deduplicator(ttl=60)
    started, release = threading.Event(), threading.Event()

    async def slow() -> str:
        started.set()
        await asyncio.to_thread(release.wait)
        return "slow"

    results: list[str] = []
    other = threading.Thread(target=lambda: results.append(asyncio.run(dedup.run("k", slow))))
    other.start()
    try:
        assert started.wait(10)
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(dedup.run("k", lambda: "here"))
    finally:
        release.set()
        other.join(10)
    assert results == ["slow"] and dedup.executions == 1


def test_a_dedup_key_left_running_by_a_closed_event_loop_runs_again_in_the_next() -> None:
    dedup = Deduplicator(ttl=60)

    async def start_a_slow_run() -> None:
        asyncio.ensure_future(dedup.run("k", asyncio.sleep, 10, "slow"))  # noqa: RUF006
        await asyncio.sleep(0)

    _close_loop_leaving(start_a_slow_run)
    assert dedup.in_flight == 1  # the closed loop's run, which never finishes

    async def run_fast() -> str:
        return await asyncio.wait_for(dedup.run("k", lambda: "fast"), 1)

    assert asyncio.run(run_fast()) == "fast"  # not "attached to a different loop"
    assert asyncio.run(run_fast()) == "fast"  # the result is served
    assert dedup.executions == 2 and dedup.in_flight == 0
    gc.collect()
