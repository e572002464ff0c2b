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


Case = tuple[Callable[[], Awaitable[int]], Callable[[], int] | None]
"""The call timed, and the count of its wrapped function's calls (None: it wraps none)."""


def _wrapped() -> tuple[Callable[[], Awaitable[int]], Callable[[], int]]:
    """The function a breaker or a retry wraps, returning 1, and the count of its calls."""
    calls = 0

    async def fn() -> int:
        nonlocal calls
        calls += 1
        return 1

    return fn, lambda: calls


def _loop_runner(
    loop: asyncio.AbstractEventLoop, call: Callable[[], Awaitable[int]]
) -> tuple[Callable[[], int], list[int]]:
    """A round of `N_CALLS` calls, and the sums of their results, one per round run."""
    sums: list[int] = []

    async def many() -> int:
        # The results summed: a primitive that skipped the work would not return its 1.
        total = 0
        for _ in range(N_CALLS):
            total += await call()
        return total

    def run() -> int:
        sums.append(loop.run_until_complete(many()))
        return sums[-1]

    return run, sums


def _async_cases() -> dict[str, dict[str, Callable[[], Case]]]:
    import aiolimiter
    import tenacity

    def breaker() -> Case:
        b = ar.CircuitBreaker("bench")
        fn, calls = _wrapped()
        return (lambda: b.call(fn)), calls

    def retry_ours() -> Case:
        policy = ar.RetryPolicy(max_attempts=3)
        fn, calls = _wrapped()
        return (lambda: policy.run(fn)), calls

    def retry_tenacity() -> Case:
        fn, calls = _wrapped()
        return tenacity.retry(stop=tenacity.stop_after_attempt(3))(fn), calls

    # The limiters and guards wrap no function: the call returns 1 once through them, the
    # same one frame for each library.
    def limiter_ours() -> Case:
        limiter = ar.RateLimiter(rate=1e12, capacity=1e12)

        async def go() -> int:
            await limiter.acquire()
            return 1

        return go, None

    def limiter_aiolimiter() -> Case:
        limiter = aiolimiter.AsyncLimiter(max_rate=1e12, time_period=1)

        async def go() -> int:
            await limiter.acquire()
            return 1

        return go, None

    def guard_ours() -> Case:
        guard = ar.BackpressureGuard(capacity=1_000)

        async def go() -> int:
            async with guard:
                return 1

        return go, None

    def guard_semaphore() -> Case:
        semaphore = asyncio.Semaphore(1_000)

        async def go() -> int:
            async with semaphore:
                return 1

        return go, None

    # The floor calls what the group's primitives wrap, directly.
    wrapped_floor = {"plain call (floor)": _wrapped}
    floor: dict[str, Callable[[], Case]] = {"plain call (floor)": lambda: (plain_async, None)}
    return {
        "breaker: async calls through a closed breaker": {
            "llm_agent_runtime": breaker,
            **wrapped_floor,
        },
        "retry: async calls succeeding at the first try": {
            "llm_agent_runtime": retry_ours,
            "tenacity": retry_tenacity,
            **wrapped_floor,
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


async def _build(make: Callable[[], Case]) -> Case:
    return make()


CASES = [(group, lib) for group, libs in _async_cases().items() for lib in libs]


@pytest.mark.parametrize(("group", "lib"), CASES)
def test_async_overhead(benchmark: Any, group: str, lib: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        # Primitives that bind to the running loop are built inside it.
        call, calls = loop.run_until_complete(_build(_async_cases()[group][lib]))
        run, sums = _loop_runner(loop, call)
        benchmark.group = f"{group} ({N_CALLS:,})"
        benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)
    finally:
        loop.close()
    # Every round run (the warm-up's too; one under --benchmark-disable) did all its calls.
    correct = bool(sums) and all(total == N_CALLS for total in sums)
    if calls is not None:
        correct = correct and calls() == N_CALLS * len(sums)
    _record(benchmark, lib, correct)


def _record(benchmark: Any, lib: str, correct: bool) -> None:
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = correct
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["ns_per_call"] = round(benchmark.stats.stats.median / N_CALLS * 1e9, 1)
