"""Per-call overhead of the orchestration primitives against the libraries users pick today."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import llm_agent_runtime as ar

N_CALLS = 10_000


def plain() -> int:
    return 1


async def plain_async() -> int:
    return 1


def _sync_breakers() -> dict[str, Callable[[], Any]]:
    import pybreaker

    ours = ar.CircuitBreaker("bench", failure_threshold=5, recovery_window=30)
    theirs = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    return {
        "llm_agent_runtime": lambda: ours.call_sync(plain),
        "pybreaker": lambda: theirs.call(plain),
        "plain call (floor)": plain,
    }


@pytest.mark.parametrize("lib", ["llm_agent_runtime", "pybreaker", "plain call (floor)"])
def test_breaker_sync(benchmark: Any, lib: str) -> None:
    call = _sync_breakers()[lib]
    benchmark.group = f"breaker: {N_CALLS:,} sync calls through a closed breaker"

    def run() -> int:
        return sum(call() for _ in range(N_CALLS))

    total = benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)
    _record(benchmark, lib, total == N_CALLS)


def _loop_runner(
    loop: asyncio.AbstractEventLoop, make: Callable[[], Callable[[], Awaitable[Any]]]
) -> Callable[[], int]:
    call = make()

    async def many() -> int:
        done = 0
        for _ in range(N_CALLS):
            await call()
            done += 1
        return done

    return lambda: loop.run_until_complete(many())


def _async_cases() -> dict[str, dict[str, Callable[[], Callable[[], Awaitable[Any]]]]]:
    import aiolimiter
    import tenacity

    def breaker() -> Callable[[], Awaitable[Any]]:
        b = ar.CircuitBreaker("bench")
        return lambda: b.call(plain_async)

    def retry_ours() -> Callable[[], Awaitable[Any]]:
        policy = ar.RetryPolicy(max_attempts=3)
        return lambda: policy.run(plain_async)

    def retry_tenacity() -> Callable[[], Awaitable[Any]]:
        return tenacity.retry(stop=tenacity.stop_after_attempt(3))(plain_async)

    def limiter_ours() -> Callable[[], Awaitable[Any]]:
        limiter = ar.RateLimiter(rate=1e12, capacity=1e12)
        return limiter.acquire

    def limiter_aiolimiter() -> Callable[[], Awaitable[Any]]:
        limiter = aiolimiter.AsyncLimiter(max_rate=1e12, time_period=1)
        return limiter.acquire  # as ours: the bound coroutine function, no wrapper

    def guard_ours() -> Callable[[], Awaitable[Any]]:
        guard = ar.BackpressureGuard(capacity=1_000)

        async def go() -> int:
            async with guard:
                return 1

        return go

    def guard_semaphore() -> Callable[[], Awaitable[Any]]:
        semaphore = asyncio.Semaphore(1_000)

        async def go() -> int:
            async with semaphore:
                return 1

        return go

    floor = {"plain call (floor)": lambda: plain_async}
    return {
        "breaker: async calls through a closed breaker": {"llm_agent_runtime": breaker, **floor},
        "retry: async calls succeeding at the first try": {
            "llm_agent_runtime": retry_ours,
            "tenacity": retry_tenacity,
            **floor,
        },
        "rate limit: acquires that never wait": {
            "llm_agent_runtime": limiter_ours,
            "aiolimiter": limiter_aiolimiter,
            **floor,
        },
        "backpressure: guarded async calls": {
            "llm_agent_runtime": guard_ours,
            "asyncio.Semaphore": guard_semaphore,
            **floor,
        },
    }


async def _build(
    loop: asyncio.AbstractEventLoop, make: Callable[[], Callable[[], Awaitable[Any]]]
) -> Callable[[], int]:
    return _loop_runner(loop, make)


CASES = [(group, lib) for group, libs in _async_cases().items() for lib in libs]


@pytest.mark.parametrize(("group", "lib"), CASES)
def test_async_overhead(benchmark: Any, group: str, lib: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        # Primitives that bind to the running loop are built inside it.
        run = loop.run_until_complete(_build(loop, _async_cases()[group][lib]))
        benchmark.group = f"{group} ({N_CALLS:,})"
        done = benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)
    finally:
        loop.close()
    _record(benchmark, lib, done == N_CALLS)


def _record(benchmark: Any, lib: str, correct: bool) -> None:
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = correct
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["ns_per_call"] = round(benchmark.stats.stats.median / N_CALLS * 1e9, 1)
