"""More cases of the orchestration primitives: exact money, clock and breaker configuration,
rate-limiter exactness under cancellation, cache misses in flight."""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.orchestration import (
    CircuitBreaker,
    CostBudget,
    FakeClock,
    RateLimiter,
    ResultCache,
)

# -- CostBudget ---------------------------------------------------------------------------


def test_a_decimal_amount_is_counted_to_the_picodollar() -> None:
    # Read through a float, 20 significant digits came out as 17: the limit was
    # $12345678.12345679 and a charge a picodollar below it spent the budget.
    limit = Decimal("12345678.123456789012")
    budget = CostBudget(max_cost_usd=limit)
    budget.record(0, 0, cost_usd=limit - Decimal("0.000000000001"))
    budget.check()  # a picodollar is left
    budget.record(0, 0, cost_usd=Decimal("0.000000000001"))
    with pytest.raises(ar.BudgetExceededError):
        budget.check()


def test_an_int_amount_beyond_float_precision_is_counted_exactly() -> None:
    budget = CostBudget(max_cost_usd=2**53 + 1)
    budget.record(0, 0, cost_usd=2**53)
    budget.check()  # a dollar is left (as floats, both amounts were 2**53)
    with pytest.raises(ar.BudgetExceededError, match="exceeded"):
        budget.record(0, 0, cost_usd=2)


def test_a_sub_cent_budget_says_its_amounts_exactly() -> None:
    budget = CostBudget(max_cost_usd=0.00005)
    budget.record(1, 1, cost_usd=0.00003)
    with pytest.raises(ar.BudgetExceededError) as caught:
        budget.record(1, 1, cost_usd=0.00004)
    # Rounded to 4 places, this read "$0.0001 of $0.0001".
    assert str(caught.value) == "cost budget exceeded: $0.00007 of $0.00005"
    with pytest.raises(ar.BudgetExceededError, match=r"spent: \$0\.30 of \$0\.30$"):
        spent = CostBudget(max_cost_usd=Decimal("0.3"))
        for _ in range(3):
            spent.record(0, 0, cost_usd=Decimal("0.1"))
        spent.check()


# -- FakeClock ----------------------------------------------------------------------------


@pytest.mark.parametrize("start", [math.nan, math.inf, -math.inf, "1", None, True])
def test_a_fake_clock_refuses_a_start_that_is_no_finite_time(start: Any) -> None:
    # Accepted before: `now()` gave NaN (every deadline false) or a string (a TypeError
    # deep in the first primitive that read it).
    with pytest.raises(ValueError, match=r"start|finite"):
        FakeClock(start)


def test_a_fake_clock_starts_at_any_real_number() -> None:
    assert FakeClock(Decimal("2.5")).now() == 2.5
    assert FakeClock(-3).now() == -3.0  # monotonic time has no origin


# -- CircuitBreaker -----------------------------------------------------------------------


@pytest.mark.parametrize("service", [None, 123, b"svc", ["svc"]])
def test_a_breaker_refuses_a_service_that_is_no_name(service: Any) -> None:
    # Accepted before: it worked in process, and failed at the first call with Redis.
    with pytest.raises(TypeError, match="service must be a str"):
        CircuitBreaker(service)


async def test_a_listener_that_raises_changes_no_state_nor_later_events() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("svc", failure_threshold=1, recovery_window=5, clock=clock)
    seen: list[tuple[str, str]] = []

    def broken(event: ar.CircuitStateChange) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    breaker.add_listener(lambda event: seen.append((event.old, event.new)))

    async def fail() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await breaker.call(fail)
    assert "state='open'" in repr(breaker)
    await clock.sleep(5)
    assert await breaker.call(lambda: "ok") == "ok"
    assert breaker.state == "closed"
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


# -- RateLimiter --------------------------------------------------------------------------


async def test_many_waiters_with_cancellations_never_exceed_the_rate_in_any_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10, capacity=5, clock=clock)
    granted: list[tuple[float, int]] = []

    async def waiter(index: int) -> None:
        await limiter.acquire("k")
        granted.append((clock.now(), index))

    tasks = [asyncio.create_task(waiter(i)) for i in range(50)]
    await asyncio.sleep(0)  # all have reserved
    for index in (10, 20, 30):
        tasks[index].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    times = [at for at, _ in granted]
    assert [index for _, index in granted] == [i for i in range(50) if i not in (10, 20, 30)]
    # 5 at once, then 42 at 10 a second: the cancelled places went to those behind.
    assert times[-1] == pytest.approx(4.2)
    for first in range(len(times)):
        for last in range(first, len(times)):
            assert last - first + 1 <= 5 + 10 * (times[last] - times[first]) + 1e-9


# -- ResultCache --------------------------------------------------------------------------


async def test_concurrent_misses_of_one_key_each_call_and_one_result_is_kept() -> None:
    clock = FakeClock()
    cache = ResultCache(ttl=60, clock=clock)
    calls = 0

    async def load(x: int) -> int:
        nonlocal calls
        calls += 1
        mine = calls
        await clock.sleep(1)
        return x * mine

    results = await asyncio.gather(*(cache.get_or_call("t", {"x": 2}, load) for _ in range(3)))
    assert calls == 3 and sorted(results) == [2, 4, 6]  # as documented: no single flight
    hit, value = cache.get("t", {"x": 2})
    assert hit and value in results
    assert len(cache) == 1


@pytest.mark.parametrize("tool", [["search"], None, 3])
async def test_a_cache_refuses_a_tool_that_is_no_name(tool: Any) -> None:
    # A list failed later as "unhashable type"; None or a number made entries of their own.
    cache = ar.ResultCache(ttl=60)
    for call in (
        lambda: cache.get(tool, {}),
        lambda: cache.put(tool, {}, 1),
        lambda: cache.key(tool, {}),
    ):
        with pytest.raises(TypeError, match="tool must be a str"):
            call()
    with pytest.raises(TypeError, match="tool must be a str"):
        await cache.get_or_call(tool, {}, lambda: 1)
    if tool is not None:  # None invalidates every tool
        with pytest.raises(TypeError, match="tool must be a str"):
            cache.invalidate(tool)
    assert len(cache) == 0


@pytest.mark.parametrize("attempt", [0, -1, 1.0, True])
def test_a_retry_delay_is_asked_for_an_attempt_from_1(attempt: Any) -> None:
    # 0 gave a bound below base_delay (half of it), a negative attempt less still.
    with pytest.raises(ValueError, match="attempt"):
        ar.RetryPolicy(base_delay=1.0, jitter=False).delay_for(attempt)
    assert ar.RetryPolicy(base_delay=1.0, jitter=False).delay_for(1) == 1.0
