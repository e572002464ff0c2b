import asyncio
import functools
import logging
import sys
import threading
import time
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

# -- Deduplicator ---------------------------------------------------------------------------


async def test_dedup_single_flight_for_1000_concurrent_callers() -> None:
    dedup = ar.Deduplicator(ttl=0)
    executions = 0
    gate = asyncio.Event()

    async def work(x: int) -> int:
        nonlocal executions
        executions += 1
        await gate.wait()
        return x * 2

    tasks = [asyncio.create_task(dedup.run(f"k{i % 10}", work, i % 10)) for i in range(1000)]
    await asyncio.sleep(0)
    assert dedup.in_flight == 10
    gate.set()
    results = await asyncio.gather(*tasks)
    assert executions == 10 and dedup.executions == 10
    assert results == [(i % 10) * 2 for i in range(1000)]
    assert dedup.in_flight == 0


async def test_dedup_serves_results_for_ttl_and_never_caches_failures() -> None:
    clock = ar.FakeClock()
    dedup = ar.Deduplicator(ttl=10, clock=clock)
    calls = []

    def work() -> int:
        calls.append(1)
        return len(calls)

    assert await dedup.run("k", work) == 1
    clock.advance(9.9)
    assert await dedup.run("k", work) == 1
    clock.advance(0.1)
    assert await dedup.run("k", work) == 2

    attempts = []

    async def fails() -> None:
        attempts.append(1)
        raise RuntimeError("nope")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            await dedup.run("bad", fails)
    assert len(attempts) == 2


async def test_dedup_caller_cancellation_does_not_cancel_shared_work() -> None:
    dedup = ar.Deduplicator(ttl=60)
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "shared"

    first = asyncio.create_task(dedup.run("k", work))
    second = asyncio.create_task(dedup.run("k", work))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert await second == "shared"
    assert dedup.in_flight == 0 and dedup.executions == 1


async def test_dedup_passes_arguments_named_key_and_fn_through() -> None:
    dedup = ar.Deduplicator(ttl=60)

    async def fetch(key: str, fn: str) -> str:
        return f"{fn} of {key}"

    assert await dedup.run("k", fetch, key="user:1", fn="name") == "name of user:1"
    assert await dedup.run("k", fetch, key="other", fn="other") == "name of user:1"  # cached
    assert dedup.executions == 1


def test_canonical_key_is_order_independent() -> None:
    assert ar.orchestration.canonical_key(a=1, b=[2]) == ar.orchestration.canonical_key(b=[2], a=1)
    with pytest.raises(TypeError):
        ar.orchestration.canonical_key(object())


# -- BackpressureGuard ------------------------------------------------------------------------


async def test_guard_sheds_at_once_with_depth_and_capacity() -> None:
    metrics = ar.RuntimeMetrics()
    guard = ar.BackpressureGuard(capacity=2, metrics=metrics)
    async with guard, guard:
        assert guard.depth == 2
        with pytest.raises(ar.BackpressureShedError) as info:
            async with guard:
                pass
        assert (info.value.depth, info.value.capacity) == (2, 2)
    assert guard.depth == 0
    assert metrics.snapshot().backpressure_shed_count == 1
    assert guard.shed_count == 1


async def test_guard_soft_limit_warns(caplog: pytest.LogCaptureFixture) -> None:
    guard = ar.BackpressureGuard(capacity=3, soft_limit=1)
    with caplog.at_level(logging.WARNING):
        async with guard, guard:
            pass
    assert any("soft limit 1" in r.getMessage() for r in caplog.records)


async def test_guard_depth_returns_to_zero_on_errors_and_cancellation() -> None:
    guard = ar.BackpressureGuard(capacity=1000)
    started = asyncio.Event()

    async def hold(i: int) -> None:
        async with guard:
            if i % 3 == 0:
                raise RuntimeError("boom")
            started.set()
            await asyncio.sleep(10)

    tasks = [asyncio.create_task(hold(i)) for i in range(1000)]
    await started.wait()
    await asyncio.sleep(0)
    assert guard.depth == 1000 - 334
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, RuntimeError) for r in results) == 334
    assert guard.depth == 0


async def test_guard_exact_shed_count_under_1000_concurrent_tasks() -> None:
    guard = ar.BackpressureGuard(capacity=100)
    gate = asyncio.Event()

    async def hold() -> str:
        try:
            async with guard:
                await gate.wait()
                return "ran"
        except ar.BackpressureShedError:
            return "shed"

    tasks = [asyncio.create_task(hold()) for _ in range(1000)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert results.count("ran") == 100 and results.count("shed") == 900
    assert guard.depth == 0


def test_guard_validation_and_release_misuse() -> None:
    with pytest.raises(ValueError):
        ar.BackpressureGuard(0)
    with pytest.raises(ValueError):
        ar.BackpressureGuard(2, soft_limit=3)
    guard = ar.BackpressureGuard(1)
    assert guard.try_acquire() and not guard.try_acquire()
    guard.release()
    with pytest.raises(RuntimeError):
        guard.release()


async def test_guard_block_that_released_its_slot_gives_none_back_twice() -> None:
    guard = ar.BackpressureGuard(2)
    other = asyncio.Event()

    async def hold() -> str:
        async with guard:
            await other.wait()
        return "held"

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    async with guard:
        guard.release()  # this block's slot, given back early
    assert guard.depth == 1  # the other block still holds its own
    assert guard.try_acquire() and not guard.try_acquire()  # one free slot, not two
    guard.release()
    other.set()
    assert await holder == "held"  # its block ends without an error
    assert guard.depth == 0


async def test_an_acquire_and_release_inside_a_block_leave_the_blocks_slot_alone() -> None:
    # A release() inside a block gave back the block's slot even when it paired with an
    # acquire() made in the block: the block then gave none back, and the acquire's slot
    # was never returned (the runtime's own slot for a run inside a user's block).
    guard = ar.BackpressureGuard(4)
    runtime = ar.AgentRuntime(backpressure=guard)

    async def infer(prompt: str) -> str:
        return "Thought: done\nAction: FINAL_ANSWER ok"

    for _ in range(6):  # past the capacity: slots would have leaked one a run
        async with guard:
            guard.acquire()
            assert guard.depth == 2
            guard.release()
            session = await runtime.run_agent("a", "q", infer)
            assert session.final_answer == "ok" and guard.depth == 1
        assert guard.depth == 0
    async with guard:  # a release with no acquire of the block's task: the block's slot
        guard.release()
        assert guard.depth == 0
    assert guard.depth == 0


async def test_a_task_started_in_a_block_releases_its_own_slot_not_the_blocks() -> None:
    # A task copies its context, with the blocks open in it: its release() of a slot it
    # took itself gave back its parent's block's slot.
    guard = ar.BackpressureGuard(2)
    handed: list[asyncio.Task[None]] = []

    async def background() -> None:
        try:
            await asyncio.sleep(0)
        finally:
            guard.release()

    async with guard:
        assert guard.try_acquire()
        handed.append(asyncio.create_task(background()))
        await handed[0]
        assert guard.depth == 1  # the block's own slot, still held
    assert guard.depth == 0
    async with guard, guard:
        assert guard.depth == 2


async def test_blocks_of_two_guards_left_out_of_order_each_give_back_their_own_slot() -> None:
    # A block is usually the innermost one as it ends; one that is not (left by hand, out of
    # order) is found below the innermost, and each block still keeps its own bookkeeping.
    first, second = ar.BackpressureGuard(2), ar.BackpressureGuard(2)
    await first.__aenter__()
    await second.__aenter__()
    second.release()  # the second block's own slot, given back early
    await first.__aexit__(None, None, None)  # not the innermost block
    assert (first.depth, second.depth) == (0, 0)
    await second.__aexit__(None, None, None)  # gave its slot back already: none again
    assert (first.depth, second.depth) == (0, 0)
    assert second.try_acquire() and second.try_acquire() and not second.try_acquire()


def test_guard_refuses_metrics_that_cannot_count_a_shed() -> None:
    class PromCounter:
        def inc(self) -> None: ...

    with pytest.raises(TypeError, match="record_backpressure_shed"):
        ar.BackpressureGuard(1, metrics=PromCounter())  # type: ignore[arg-type]


# -- RateLimiter --------------------------------------------------------------------------------


async def test_limiter_try_acquire_and_refill_per_key() -> None:
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=2, capacity=3, clock=clock)
    assert [limiter.try_acquire("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.try_acquire("b")
    clock.advance(0.5)
    assert limiter.try_acquire("a") and not limiter.try_acquire("a")
    with pytest.raises(ValueError):
        limiter.try_acquire("a", tokens=4)


async def test_limiter_acquire_waits_exactly_for_refill() -> None:
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=4, capacity=1, clock=clock)
    await limiter.acquire("tool")
    await limiter.acquire("tool")
    assert clock.sleeps == [0.25]
    assert clock.now() == 0.25


async def test_limiter_1000_concurrent_tasks_rate_exact() -> None:
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=100, capacity=10, clock=clock)
    await asyncio.gather(*(limiter.acquire("k") for _ in range(1000)))
    # 10 from the full bucket, the other 990 at 100 per second.
    assert clock.now() == pytest.approx(9.9)


async def test_limiter_cancelled_waiter_takes_nothing() -> None:
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=1, capacity=1, clock=clock)
    assert limiter.try_acquire()
    task = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.tokens() == 0.0  # the reservation was given back
    clock.advance(1)
    assert limiter.try_acquire()


@pytest.mark.parametrize("scale", [1e-9, 1e-3, 1.0, 1e6])
async def test_requests_of_any_size_are_granted_only_from_tokens_the_bucket_has(
    scale: float,
) -> None:
    # The rounding slack is a share of the request: a fixed 1e-9 tokens used to grant every
    # request smaller than that from an empty bucket.
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=scale, capacity=scale, clock=clock)
    grants = sum(limiter.try_acquire("k", scale / 2) for _ in range(100))
    assert grants == 2
    for _ in range(2):  # acquire waits for its tokens too
        await limiter.acquire("k", scale / 2)
    assert clock.now() == pytest.approx(1.0)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 100),
    capacity=st.integers(1, 50),
    ops=st.lists(st.tuples(st.floats(0, 5), st.integers(1, 50)), max_size=40),
)
def test_bucket_never_exceeds_capacity_and_refills_exactly(
    rate: float, capacity: int, ops: list[tuple[float, int]]
) -> None:
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=rate, capacity=capacity, clock=clock)
    expected = float(capacity)
    for wait, want in ops:
        clock.advance(wait)
        expected = min(capacity, expected + wait * rate)
        want = min(want, capacity)
        granted = limiter.try_acquire("k", want)
        # A bucket short by float rounding alone (under a billionth of the request) grants.
        assert granted == (expected > want * (1 - 1e-9))
        if granted:
            expected = max(expected - want, 0.0)
        assert limiter.tokens("k") == pytest.approx(expected)
        assert 0 <= limiter.tokens("k") <= capacity


# -- ResultCache --------------------------------------------------------------------------------


async def test_cache_canonical_keys_ttl_and_lru() -> None:
    clock = ar.FakeClock()
    cache = ar.ResultCache(ttl=5, max_entries=2, clock=clock)
    calls = []

    def search(q: str, n: int) -> str:
        calls.append((q, n))
        return f"{q}:{n}"

    assert await cache.get_or_call("search", {"q": "a", "n": 1}, search) == "a:1"
    assert await cache.get_or_call("search", {"n": 1, "q": "a"}, search) == "a:1"
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    cache.put("other", {"x": 1}, 1)
    cache.put("other", {"x": 2}, 2)  # evicts the search entry (least recently used)
    assert cache.get("search", {"q": "a", "n": 1}) == (False, None)
    clock.advance(5)
    assert cache.get("other", {"x": 2}) == (False, None)
    assert cache.invalidate() == 1


async def test_cache_does_not_store_failures() -> None:
    cache = ar.ResultCache(ttl=5)

    def boom() -> None:
        raise RuntimeError

    with pytest.raises(RuntimeError):
        await cache.get_or_call("t", {}, boom)
    assert len(cache) == 0


@pytest.mark.parametrize("everything", [False, True])
async def test_cache_does_not_store_a_result_invalidated_while_its_call_ran(
    everything: bool,
) -> None:
    cache = ar.ResultCache(ttl=300, clock=ar.FakeClock())
    db = {"price": 10, "stock": 5}
    started = asyncio.Event()
    release = asyncio.Event()

    async def read(item: str) -> int:
        value = db[item]
        started.set()
        await release.wait()
        return value

    price = asyncio.create_task(cache.get_or_call("price", {"item": "price"}, read))
    stock = asyncio.create_task(cache.get_or_call("stock", {"item": "stock"}, read))
    await started.wait()
    db["price"] = 99  # a write, then its invalidation, while the reads run
    cache.invalidate(None if everything else "price")
    release.set()
    assert (await price, await stock) == (10, 5)  # the callers still get their results
    assert cache.get("price", {"item": "price"}) == (False, None)  # not stored: may be stale
    # Another tool's call is stale only after an invalidation of every tool.
    assert cache.get("stock", {"item": "stock"}) == ((False, None) if everything else (True, 5))
    assert await cache.get_or_call("price", {"item": "price"}, read) == 99
    assert cache.get("price", {"item": "price"}) == (True, 99)  # later calls are stored


async def test_cache_does_not_store_a_result_over_a_put_made_while_its_call_ran() -> None:
    cache = ar.ResultCache(ttl=60)
    db = {"x": "v1"}
    started, release = asyncio.Event(), asyncio.Event()

    async def read(key: str) -> str:
        value = db[key]
        started.set()
        await release.wait()
        return value

    reader = asyncio.create_task(cache.get_or_call("read", {"key": "x"}, read))
    await started.wait()
    db["x"] = "v2"
    cache.put("read", {"key": "x"}, "v2")  # write-through of the new value
    cache.put("read", {"key": "y"}, "other")  # another key's put changes nothing for it
    release.set()
    assert await reader == "v1"  # the caller still gets its own result
    assert cache.get("read", {"key": "x"}) == (True, "v2")  # not the older one, for the ttl
    assert await cache.get_or_call("read", {"key": "z"}, lambda key: key) == "z"
    assert cache.get("read", {"key": "z"}) == (True, "z")  # later calls are stored
    with pytest.raises(KeyError):
        await cache.get_or_call("read", {"key": "w"}, read)
    assert cache._puts == {}  # kept only while calls run, whatever their end


async def test_cache_passes_an_argument_named_fn_to_the_tool() -> None:
    cache = ar.ResultCache(ttl=60)

    def apply(fn: str) -> str:
        return f"applied {fn}"

    assert await cache.get_or_call("apply", {"fn": "x"}, apply) == "applied x"
    assert cache.get("apply", {"fn": "x"}) == (True, "applied x")


class YieldingClock(ar.SystemClock):
    """The system clock, letting other threads run whenever it is read (as I/O would)."""

    def now(self) -> float:
        time.sleep(0)  # releases the GIL
        return super().now()


def test_cache_can_be_shared_between_threads() -> None:
    cache = ar.ResultCache(ttl=60, max_entries=2, clock=YieldingClock())
    errors: list[BaseException] = []
    sizes: list[int] = []
    rounds = 1_000

    def hammer(offset: int) -> None:
        try:
            for i in range(rounds):
                cache.put("t", {"q": (i + offset) % 3}, i)
                cache.get("t", {"q": (i + offset + 1) % 3})
                if i % 100 == 0:
                    sizes.append(len(cache))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, between any two steps
    try:
        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert max(sizes) <= 2 and len(cache) == 2
    assert cache.hits + cache.misses == 4 * rounds  # no lookup lost


# -- CostBudget and CapabilitySet -------------------------------------------------------------


def test_budget_tokens_and_money() -> None:
    budget = ar.CostBudget(max_tokens=100, max_cost_usd=1.0)
    budget.record(40, 10, cost_usd=0.5)
    assert (budget.remaining_tokens, budget.remaining_cost_usd) == (50, 0.5)
    budget.check()
    with pytest.raises(ar.BudgetExceededError, match="token budget exceeded"):
        budget.record(40, 20)
    with pytest.raises(ar.BudgetExceededError):
        budget.check()
    money = ar.CostBudget(max_cost_usd=0.01)
    with pytest.raises(ar.BudgetExceededError, match="cost budget"):
        money.record(1, 1, cost_usd=0.02)
    with pytest.raises(ValueError):
        money.record(-1, 0)
    assert ar.CostBudget().remaining_tokens is None


def test_capabilities() -> None:
    caps = ar.CapabilitySet(allowed_tools=["calc"], allowed_state_keys={"notes"}, max_actions=2)
    caps.check_tool("calc")
    with pytest.raises(ar.PolicyDeniedError, match="search"):
        caps.check_tool("search")
    caps.check_state_key("notes")
    with pytest.raises(ar.PolicyDeniedError):
        caps.check_state_key("secrets")
    caps.record_action()
    caps.record_action()
    with pytest.raises(ar.PolicyDeniedError, match="action limit"):
        caps.record_action()
    assert caps.actions_taken == 2
    assert ar.CapabilitySet().allows_tool("anything")


# -- Pipeline -----------------------------------------------------------------------------------


async def test_pipeline_runs_sync_and_async_stages_and_names_failures() -> None:
    async def double(x: int) -> int:
        return x * 2

    def explode(x: int) -> int:
        raise ValueError(f"bad {x}")

    pipeline = ar.Pipeline(lambda x: x + 1, ("double", double))
    assert await pipeline.run(1) == 4
    broken = pipeline | ar.Pipeline().then(explode)
    assert broken.stage_names == ["<lambda>", "double", "explode"]
    with pytest.raises(ar.PipelineStageError, match="stage 2 \\('explode'\\)") as info:
        await broken.run(1)
    assert info.value.stage == "explode"
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(TypeError):
        ar.Pipeline().then(3)  # type: ignore[arg-type]


def test_pipeline_refuses_bad_stages_and_names_objects_by_class() -> None:
    class Scale:
        def __call__(self, x: int) -> int:
            return x * 3

    assert ar.Pipeline(Scale()).stage_names == ["Scale"]  # no memory address in the name
    with pytest.raises(TypeError, match="unsupported operand"):
        ar.Pipeline() | (lambda x: x)  # type: ignore[operator]
    with pytest.raises(TypeError, match="a named stage is a"):
        ar.Pipeline(("only",))  # type: ignore[arg-type]


async def test_fake_clock_rejects_going_back() -> None:
    with pytest.raises(ValueError):
        ar.FakeClock().advance(-1)
    assert ar.SystemClock().now() > 0


# -- NaN, inf and negative settings -------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "make",
    [
        lambda: ar.RateLimiter(rate=NAN, capacity=1),
        lambda: ar.RateLimiter(rate=INF, capacity=1),
        lambda: ar.RateLimiter(rate=1, capacity=NAN),
        lambda: ar.RateLimiter(rate=1, capacity=INF),
        lambda: ar.CostBudget(max_tokens=NAN),  # type: ignore[arg-type]
        lambda: ar.CostBudget(max_cost_usd=NAN),
        lambda: ar.CostBudget(max_cost_usd=INF),
        lambda: ar.ResultCache(ttl=NAN),
        lambda: ar.ResultCache(ttl=1, max_entries=NAN),  # type: ignore[arg-type]
        lambda: ar.Deduplicator(ttl=NAN),
        lambda: ar.BackpressureGuard(NAN),  # type: ignore[arg-type]
        lambda: ar.BackpressureGuard(INF),  # type: ignore[arg-type]
        lambda: ar.BackpressureGuard(2, soft_limit=NAN),  # type: ignore[arg-type]
        lambda: ar.CapabilitySet(max_actions=NAN),  # type: ignore[arg-type]
    ],
)
def test_nan_and_infinite_settings_are_refused(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


async def test_an_infinite_ttl_keeps_entries_for_good() -> None:
    clock = ar.FakeClock()
    cache = ar.ResultCache(ttl=INF, clock=clock)
    dedup = ar.Deduplicator(ttl=INF, clock=clock)
    runs: list[int] = []

    async def work() -> int:
        runs.append(1)
        return 7

    cache.put("t", {"a": 1}, "kept")
    assert await dedup.run("k", work) == 7
    clock.advance(1e12)
    assert cache.get("t", {"a": 1}) == (True, "kept")
    assert await dedup.run("k", work) == 7 and len(runs) == 1


async def test_limiter_refuses_nan_tokens_and_stays_enforced() -> None:
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=1, capacity=1, clock=clock)
    with pytest.raises(ValueError):
        limiter.try_acquire(tokens=NAN)
    with pytest.raises(ValueError):
        await limiter.acquire(tokens=NAN)
    assert [limiter.try_acquire() for _ in range(3)] == [True, False, False]


def test_budget_refuses_nan_usage_and_stays_enforced() -> None:
    budget = ar.CostBudget(max_tokens=10, max_cost_usd=1.0)
    for usage in [(0, 0, NAN), (0, 0, INF), (0, 0, -0.5), (NAN, 0, 0.0), (0, INF, 0.0)]:
        with pytest.raises(ValueError):
            budget.record(*usage)  # type: ignore[arg-type]
    assert (budget.used_tokens, budget.used_cost_usd) == (0, 0.0)  # nothing was recorded
    with pytest.raises(ar.BudgetExceededError, match="cost budget exceeded"):
        budget.record(0, 0, 5.0)
    with pytest.raises(ar.BudgetExceededError):
        budget.check()


async def test_a_refill_is_not_lost_to_float_rounding_of_the_clock() -> None:
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=10, capacity=1, clock=clock)
    clock.advance(4.0)
    assert limiter.try_acquire()
    clock.advance(0.1)  # 4.1 - 4.0 is 0.0999...96 seconds: the token is back all the same
    assert limiter.try_acquire()
    clock.advance(0.1)
    await asyncio.wait_for(limiter.acquire(), 1)  # no wait for a rounding error
    assert limiter.tokens() == 0.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: ar.RateLimiter(rate=True, capacity=1),
        lambda: ar.RateLimiter(rate=1, capacity=True),
        lambda: ar.RateLimiter(rate=1, capacity=1).try_acquire(tokens=True),
        lambda: ar.RateLimiter(rate="1", capacity=1),  # type: ignore[arg-type]
        lambda: ar.CircuitBreaker("s", recovery_window=True),
        lambda: ar.CircuitBreaker("s", trial_timeout=True),
        lambda: ar.ResultCache(ttl=True),
        lambda: ar.Deduplicator(ttl=True),
        lambda: ar.RetryPolicy(base_delay=True),
        lambda: ar.CostBudget(max_cost_usd=True),
        lambda: ar.CostBudget(max_cost_usd=1.0).record(0, 0, cost_usd=True),
    ],
)
def test_a_bool_is_no_number_as_it_is_no_count(make: object) -> None:
    # `True` read as 1 (one second, one token, one dollar), while counts refused it.
    with pytest.raises(ValueError, match="must be a number"):
        make()  # type: ignore[operator]


async def test_numbers_of_any_real_type_are_taken_as_floats() -> None:
    import numpy as np

    limiter = ar.RateLimiter(rate=np.float32(2), capacity=Fraction(3), clock=ar.FakeClock())
    assert (limiter.rate, limiter.capacity) == (2.0, 3.0)
    assert type(limiter.rate) is type(limiter.capacity) is float
    assert limiter.try_acquire(tokens=np.float32(1.5))
    await limiter.acquire(tokens=np.int64(1))
    with pytest.raises(ValueError, match="must be a number"):
        await limiter.acquire(tokens=True)
    assert type(ar.CircuitBreaker("s", recovery_window=np.int64(30)).recovery_window) is float
    # An int beyond the float range is infinite: refused, where every opening of the
    # circuit (and every backoff) failed with OverflowError.
    with pytest.raises(ValueError, match="finite"):
        ar.CircuitBreaker("s", recovery_window=10**400)
    with pytest.raises(ValueError):
        ar.RetryPolicy(base_delay=10**400)


async def test_int_tokens_take_the_rate_limiters_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # `check_real` (an ABC check) cost `try_acquire("k", 1)` 40% more than with 1.0.
    from llm_agent_runtime.orchestration import rate_limit

    limiter = ar.RateLimiter(rate=1.0, capacity=3.0, clock=ar.FakeClock())
    checked: list[object] = []
    check_real = rate_limit.check_real

    def counted(name: str, value: object) -> float:
        checked.append(value)
        return check_real(name, value)

    monkeypatch.setattr(rate_limit, "check_real", counted)
    assert limiter.try_acquire("k", 1) and limiter.try_acquire("k", 1.0)
    await limiter.acquire("k", 1)
    assert checked == []
    assert limiter.tokens("k") == 0.0
    for bad in (True, False, 0, -1, 4, 10**400, -(10**400)):
        with pytest.raises(
            ValueError, match="must be a number" if type(bad) is bool else "must be in"
        ):
            limiter.try_acquire("k", bad)
    assert checked == [True, False]  # a bool is no int on the fast path: it is checked


async def test_numpy_arrays_of_one_number_and_decimals_are_numbers_numpy_bools_are_not() -> None:
    # Each worked before the checks of numbers came; a 0-d array is no `numbers.Real`.
    import numpy as np

    for two in (np.array(2.0), np.array(2), Decimal("2")):
        limiter = ar.RateLimiter(rate=two, capacity=two, clock=ar.FakeClock())  # type: ignore[arg-type]
        assert (limiter.rate, limiter.capacity) == (2.0, 2.0)
        assert type(limiter.rate) is type(limiter.capacity) is float
        assert limiter.try_acquire("k", two)  # type: ignore[arg-type]
        await limiter.acquire("j", two)  # type: ignore[arg-type]
        assert ar.CircuitBreaker("s", recovery_window=two).recovery_window == 2.0  # type: ignore[arg-type]
        assert ar.Deduplicator(ttl=two).ttl == 2.0  # type: ignore[arg-type]
        assert ar.ResultCache(ttl=two).ttl == 2.0  # type: ignore[arg-type]
        assert ar.RetryPolicy(base_delay=two, max_delay=two).base_delay == 2.0  # type: ignore[arg-type]
    for bad in (np.True_, np.array(True), np.array([2.0]), np.complex128(2), 2j, "2", None):
        with pytest.raises(ValueError, match="must be a number"):
            ar.RateLimiter(rate=bad, capacity=1.0)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="must be a number"):
            ar.Deduplicator(ttl=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # a NaN, signalling or not, fails the range check
        ar.ResultCache(ttl=Decimal("sNaN"))  # type: ignore[arg-type]


# -- money is counted exactly -------------------------------------------------------------------


def test_a_budget_spent_exactly_is_reached_not_exceeded() -> None:
    budget = ar.CostBudget(max_cost_usd=0.30)
    for _ in range(3):
        budget.check()
        budget.record(0, 0, cost_usd=0.10)  # the third spends the budget exactly: no error
    assert budget.used_cost_usd == 0.3
    assert budget.remaining_cost_usd == 0.0
    with pytest.raises(ar.BudgetExceededError, match="cost budget spent"):
        budget.check()  # reached: the next call is refused

    budget = ar.CostBudget(max_cost_usd=0.80)
    for _ in range(8):
        budget.check()
        budget.record(0, 0, cost_usd=0.10)
    with pytest.raises(ar.BudgetExceededError):
        budget.check()
    with pytest.raises(ar.BudgetExceededError, match="cost budget exceeded"):
        budget.record(0, 0, cost_usd=0.000001)  # past the limit by a millionth of a dollar


def test_numpy_float32_prices_count_as_the_decimals_they_print_as() -> None:
    # A float32 price (from a numpy price table) is 0.1 as it prints, not the float
    # 0.10000000149...: three of them spend a $0.30 budget exactly, as three floats do.
    import numpy as np

    budget = ar.CostBudget(max_cost_usd=np.float32(0.3))  # type: ignore[arg-type]
    assert budget.max_cost_usd == 0.3
    for price in (np.float32(0.1), np.array(0.1, dtype=np.float32), np.float16(0.1)):
        budget.check()
        budget.record(0, 0, cost_usd=price)  # type: ignore[arg-type]
    assert budget.used_cost_usd == 0.3
    with pytest.raises(ar.BudgetExceededError, match="cost budget spent"):
        budget.check()


def test_budget_money_sums_do_not_depend_on_the_decimal_context() -> None:
    import decimal

    with decimal.localcontext() as context:
        context.prec = 3
        budget = ar.CostBudget(max_cost_usd=2.0)
        for _ in range(1000):
            budget.record(0, 0, cost_usd=0.001234)  # 4 significant digits
    assert budget.used_cost_usd == 1.234
    # Per-token prices: 1e6 tokens at $0.15 per million, a thousand at a time.
    budget = ar.CostBudget(max_cost_usd=0.15)
    for _ in range(1000):
        budget.record(1000, 0, cost_usd=1000 * 0.15 / 1e6)
    assert budget.used_cost_usd == 0.15
    with pytest.raises(ar.BudgetExceededError):
        budget.check()


@pytest.mark.parametrize("usage", [(1.5, 0, 0.0), (0, 2.0, 0.0), (True, 0, 0.0)])
def test_budget_refuses_token_counts_that_are_not_ints(usage: tuple[object, ...]) -> None:
    budget = ar.CostBudget(max_tokens=10)
    with pytest.raises(ValueError, match="whole token counts"):
        budget.record(*usage)  # type: ignore[arg-type]
    assert budget.used_tokens == 0


@pytest.mark.parametrize(
    "amount",
    [
        pytest.param(10**400, id="10**400"),  # OverflowError, converting it to a float
        pytest.param(-(10**400), id="-10**400"),
        pytest.param(Fraction(10**400), id="Fraction(10**400)"),
        Decimal("NaN"),  # decimal.InvalidOperation, comparing it
        Decimal("sNaN"),
        Decimal("Infinity"),
        "0.5",  # TypeError, comparing it
    ],
)
def test_budget_refuses_unusable_amounts_with_a_value_error(amount: object) -> None:
    with pytest.raises(ValueError, match="max_cost_usd must be"):
        ar.CostBudget(max_cost_usd=amount)  # type: ignore[arg-type]
    budget = ar.CostBudget(max_tokens=10, max_cost_usd=1.0)
    with pytest.raises(ValueError, match="usage cost must be"):
        budget.record(1, 1, cost_usd=amount)  # type: ignore[arg-type]
    assert (budget.used_tokens, budget.used_cost_usd) == (0, 0.0)  # nothing was recorded
    budget.record(1, 1, cost_usd=Decimal("0.25"))  # a Decimal amount is still taken
    assert budget.used_cost_usd == 0.25


# -- soft limit: warn when the depth reaches it -------------------------------------------------


def test_guard_warns_when_depth_reaches_the_soft_limit(caplog: pytest.LogCaptureFixture) -> None:
    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "soft limit" in r.getMessage()]

    guard = ar.BackpressureGuard(100, soft_limit=75)
    with caplog.at_level(logging.WARNING, logger="llm_agent_runtime"):
        for _ in range(74):
            guard.acquire()
        assert warnings() == []
        guard.acquire()
        assert warnings() == ["backpressure: depth 75 reached soft limit 75 (capacity 100)"]
        caplog.clear()
        full = ar.BackpressureGuard(10, soft_limit=10)
        for _ in range(10):
            full.acquire()
        assert warnings() == ["backpressure: depth 10 reached soft limit 10 (capacity 10)"]


# -- names and counts of the wrong type are refused ---------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: ar.CapabilitySet(allowed_tools="search"),  # type: ignore[arg-type]
        lambda: ar.CapabilitySet(allowed_state_keys="ab"),  # type: ignore[arg-type]
        lambda: ar.CapabilitySet(allowed_tools=b"search"),  # type: ignore[arg-type]
        lambda: ar.CapabilitySet(allowed_tools=["search", 3]),  # type: ignore[list-item]
        lambda: ar.CapabilitySet(allowed_tools=3),  # type: ignore[arg-type]
    ],
)
def test_capabilities_refuse_a_single_string_for_a_collection_of_names(make: object) -> None:
    with pytest.raises(TypeError):
        make()  # type: ignore[operator]


def test_capabilities_take_any_collection_of_names() -> None:
    caps = ar.CapabilitySet(allowed_tools=("search",), allowed_state_keys=iter(["ab"]))
    caps.check_tool("search")
    with pytest.raises(ar.PolicyDeniedError):
        caps.check_tool("s")
    with pytest.raises(ar.PolicyDeniedError):
        caps.check_state_key("a")
    assert ar.CapabilitySet(allowed_tools=[]).allows_tool("search") is False


@pytest.mark.parametrize(
    "make",
    [
        lambda: ar.CapabilitySet(max_actions=2.5),  # type: ignore[arg-type]
        lambda: ar.CapabilitySet(max_actions=2.0),  # type: ignore[arg-type]
        lambda: ar.CapabilitySet(max_actions=True),
        lambda: ar.BackpressureGuard(capacity=1.5),  # type: ignore[arg-type]
        lambda: ar.BackpressureGuard(capacity=True),
        lambda: ar.BackpressureGuard(capacity=4, soft_limit=2.5),  # type: ignore[arg-type]
        lambda: ar.ResultCache(ttl=1, max_entries=1.5),  # type: ignore[arg-type]
        lambda: ar.CostBudget(max_tokens=1.5),  # type: ignore[arg-type]
        lambda: ar.CostBudget(max_tokens=False),
        lambda: ar.CircuitBreaker("s", failure_threshold=1.5),  # type: ignore[arg-type]
        lambda: ar.RetryPolicy(max_attempts=1.5),  # type: ignore[arg-type]
    ],
)
def test_non_integer_counts_are_refused(make: object) -> None:
    with pytest.raises(ValueError, match="must be an int"):
        make()  # type: ignore[operator]


def test_integer_counts_of_other_integer_types_are_taken() -> None:
    import numpy as np

    guard = ar.BackpressureGuard(np.int64(2), soft_limit=np.int32(1))  # type: ignore[arg-type]
    assert (guard.capacity, guard.soft_limit) == (2, 1)
    assert type(guard.capacity) is int
    assert ar.CapabilitySet(max_actions=0).max_actions == 0


def test_capabilities_record_a_rounds_actions_all_or_none() -> None:
    caps = ar.CapabilitySet(max_actions=3)
    caps.record_actions(2)
    with pytest.raises(ar.PolicyDeniedError, match="2 actions would go past it"):
        caps.record_actions(2)
    assert caps.actions_taken == 2  # none of the refused two was counted
    caps.record_actions(1)
    with pytest.raises(ar.PolicyDeniedError, match=r"action limit reached \(3 actions\)"):
        caps.record_action()
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="count must be"):
            caps.record_actions(bad)  # type: ignore[arg-type]
    unlimited = ar.CapabilitySet()
    unlimited.record_actions(10**6)
    assert unlimited.actions_taken == 10**6


def test_capabilities_take_back_actions_that_did_not_run() -> None:
    caps = ar.CapabilitySet(max_actions=3)
    caps.record_actions(3)
    caps.release_actions(2)
    assert caps.actions_taken == 1
    caps.record_actions(2)  # the limit has room for them again
    caps.release_actions(10)
    assert caps.actions_taken == 0  # never below none
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="count must be"):
            caps.release_actions(bad)  # type: ignore[arg-type]


def test_a_subclass_recording_each_action_sees_a_rounds_actions() -> None:
    audit: list[int] = []

    class Audited(ar.CapabilitySet):
        def record_action(self) -> None:
            super().record_action()
            audit.append(self.actions_taken)

    caps = Audited(max_actions=3)
    caps.record_actions(2)
    assert audit == [1, 2]
    with pytest.raises(ar.PolicyDeniedError):
        caps.record_actions(2)
    assert audit == [1, 2] and caps.actions_taken == 2


def test_cache_calls_back_from_an_evicted_values_finalizer_do_not_deadlock() -> None:
    cache = ar.ResultCache(ttl=60, max_entries=1)
    invalidated: list[int] = []

    class Handle:
        def __del__(self) -> None:  # a resource that invalidates its tool when dropped
            invalidated.append(cache.invalidate("a"))

    def fill() -> None:
        cache.put("a", {}, Handle())
        cache.put("b", {}, 1)  # evicts the handle: its finalizer calls back into the cache

    worker = threading.Thread(target=fill, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive()
    assert invalidated == [0] and cache.get("b", {}) == (True, 1)


def test_cache_invalidation_re_entered_by_a_finalizer_counts_what_it_dropped() -> None:
    cache = ar.ResultCache(ttl=60, max_entries=10)
    inner: list[int] = []

    class Handle:
        def __del__(self) -> None:  # drops the rest of its tool's entries first
            inner.append(cache.invalidate("t"))

    cache.put("t", {"a": 1}, Handle())
    cache.put("t", {"a": 2}, 2)
    cache.put("u", {}, 3)
    assert cache.invalidate("t") + sum(inner) == 2  # each counts what it dropped itself
    assert cache.get("t", {"a": 2}) == (False, None)
    assert cache.get("u", {}) == (True, 3)


@pytest.mark.parametrize("clock", [time.monotonic, ar.FakeClock, object(), "fake"])
def test_every_primitive_refuses_a_clock_that_is_no_clock(clock: Any) -> None:
    # Taken as it was: a breaker given `time.monotonic` could not read the time when a call
    # failed (a backend failure it only logged) and never opened; the others failed at use.
    makers = [
        lambda: ar.CircuitBreaker("svc", clock=clock),
        lambda: ar.RetryPolicy(clock=clock),
        lambda: ar.RateLimiter(rate=1, capacity=1, clock=clock),
        lambda: ar.ResultCache(ttl=1, clock=clock),
        lambda: ar.Deduplicator(ttl=1, clock=clock),
    ]
    for make in makers:
        with pytest.raises(TypeError, match="clock must be a Clock"):
            make()


def test_a_clock_of_the_users_own_is_taken() -> None:
    class Steady:
        def now(self) -> float:
            return 0.0

        async def sleep(self, seconds: float) -> None:
            return None

    def traced(sleep: Any) -> Any:
        @functools.wraps(sleep)
        def wrapper(*args: Any) -> Any:  # a sync wrapper of an async sleep
            return sleep(*args)

        return wrapper

    class Traced(Steady):
        sleep = traced(Steady.sleep)

    class Delegating(Steady):
        def sleep(self, seconds: float) -> Any:  # returns the coroutine
            return asyncio.sleep(0)

    for clock in (Steady(), Traced(), Delegating()):
        assert ar.CircuitBreaker("svc", clock=clock).state == "closed"
    ar.RetryPolicy(clock=None)  # the system clock


def test_cache_evicts_expired_entries_before_live_ones() -> None:
    clock = ar.FakeClock()
    cache = ar.ResultCache(ttl=5, max_entries=2, clock=clock)
    cache.put("t", {"k": "a"}, "a")  # expires at 5
    clock.advance(3)
    cache.put("t", {"k": "b"}, "b")  # expires at 8
    clock.advance(1)
    assert cache.get("t", {"k": "a"}) == (True, "a")  # a is now the most recently used
    clock.advance(2)  # a has expired, b has not
    cache.put("t", {"k": "c"}, "c")
    # The full cache drops the dead entry, not b, the least recently used live one.
    assert cache.get("t", {"k": "b"}) == (True, "b")
    assert cache.get("t", {"k": "c"}) == (True, "c")
    assert len(cache) == 2


async def test_dedup_expiry_index_stays_bounded_when_keys_are_forgotten_and_run_again() -> None:
    # A result forgotten (a write invalidating it) left its heap item until its ttl passed:
    # a hot key run and forgotten again and again held one item a run.
    clock = ar.FakeClock()
    dedup = ar.Deduplicator(ttl=3600, clock=clock)

    async def value(i: int) -> int:
        return i

    for i in range(2000):
        assert await dedup.run(("k", i % 2), lambda i=i: value(i)) == i
        dedup.forget(("k", i % 2))
        clock.advance(0.001)
    await dedup.run("kept", lambda: value(-1))
    assert len(dedup._expiry) <= 2 * len(dedup._done) + 64
    assert await dedup.run("kept", lambda: value(0)) == -1  # still served from the cache
    clock.advance(3601)
    assert await dedup.run("kept", lambda: value(1)) == 1  # and expired on time


def test_cache_expiry_index_stays_bounded_under_repeated_puts() -> None:
    clock = ar.FakeClock()
    cache = ar.ResultCache(ttl=1000, max_entries=4, clock=clock)
    for i in range(5000):
        cache.put("t", {"k": i % 3}, i)
        clock.advance(0.001)
    assert len(cache) == 3
    assert len(cache._expiry) <= 2 * cache.max_entries + 2
    assert [cache.get("t", {"k": k})[1] for k in range(3)] == [4998, 4999, 4997]
