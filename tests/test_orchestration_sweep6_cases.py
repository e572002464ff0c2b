"""Orchestration sweep: the limiter, cache and deduplicator against plain references, retry
delays from any real number, pipelines, and waiters cancelled mid-wait."""

from __future__ import annotations

import asyncio
import decimal
import fractions
import json
import math
import random
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
from hand_clock import HandClock
from hypothesis import example, given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

# -- RateLimiter: settings changed later apply from then on ---------------------------------


def test_a_raised_rate_does_not_refill_the_time_before_it() -> None:
    # The bucket refilled from its last store at the rate in force when read: raising the rate
    # 1 -> 100 after 1 s made 10 tokens out of the 1 refilled (a burst the old rate never gave).
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=1, capacity=10, clock=clock)
    assert limiter.try_acquire(tokens=10)
    clock.advance(1)
    limiter.rate = 100
    assert limiter.tokens() == 1.0
    assert limiter.try_acquire() and not limiter.try_acquire()
    clock.advance(0.01)  # from now on at the new rate
    assert limiter.tokens() == pytest.approx(1.0)


def test_a_lowered_rate_keeps_the_tokens_refilled_before_it() -> None:
    # Lowering the rate 10 -> 0.1 after 0.5 s took back 4.95 of the 5 tokens refilled.
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=10, capacity=10, clock=clock)
    assert limiter.try_acquire(tokens=10)
    clock.advance(0.5)
    limiter.rate = 0.1
    assert limiter.tokens() == 5.0
    assert limiter.try_acquire(tokens=5)


def test_a_raised_capacity_does_not_grant_what_the_old_one_dropped() -> None:
    # A bucket full at capacity 1 for 100 s held 50 tokens once the capacity was raised to
    # 50: a burst of 50 at once, where the bucket had 1 and refills from there.
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=1, capacity=1, clock=clock)
    assert limiter.try_acquire("k")
    clock.advance(100)
    limiter.capacity = 50
    assert limiter.tokens("k") == 1.0
    assert limiter.tokens("new") == 50.0  # a new key starts full, at the new capacity
    clock.advance(3)
    assert limiter.tokens("k") == 4.0


def test_a_setting_refused_leaves_every_bucket_as_it_was() -> None:
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=1, capacity=4, clock=clock)
    assert limiter.try_acquire("k", 4)
    clock.advance(1)
    for name, bad in [("rate", math.nan), ("rate", 0), ("capacity", math.inf), ("capacity", True)]:
        with pytest.raises(ValueError):
            setattr(limiter, name, bad)
    assert (limiter.rate, limiter.capacity, limiter.tokens("k")) == (1.0, 4.0, 1.0)


async def test_a_rate_raised_while_callers_wait_keeps_their_times() -> None:
    clock = HandClock()
    limiter = ar.RateLimiter(rate=1, capacity=1, clock=clock)
    assert limiter.try_acquire("k")
    waiter = asyncio.create_task(limiter.acquire("k"))
    await clock.advance(0.5)
    limiter.rate = 4  # the debt of 0.5 token left is paid at 4 a second from now: 0.125 s
    assert limiter.tokens("k") == -0.5
    await clock.advance(0.25)
    assert not waiter.done()  # it keeps the time it was given, t = 1
    assert limiter.tokens("k") == 0.5
    await clock.advance(0.25)
    assert waiter.done()
    assert limiter.tokens("k") == 1.0  # refilled at 4 a second since t = 0.625, capped at 1


async def test_a_waiter_leaving_after_the_capacity_was_lowered_gives_back_no_more_than_it() -> None:
    # The refund was added to the bucket uncapped: with 3 tokens left when a caller of 4
    # started waiting, and the capacity lowered to 2 meanwhile, its cancellation left 3
    # tokens, and 3 requests were granted at once, beyond the capacity of 2.
    clock = HandClock()
    limiter = ar.RateLimiter(rate=2, capacity=4, clock=clock)
    assert limiter.try_acquire("k", 1)  # 3 left
    waiter = asyncio.create_task(limiter.acquire("k", 4))  # 1 short: waits 0.5 s
    await clock.advance(0.0)
    limiter.capacity = 2
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.tokens("k") == 2.0
    assert [limiter.try_acquire("k", 1) for _ in range(3)] == [True, True, False]


class ReferenceLimiter:
    """A token bucket per key the plain way: waiters' dues moved up one by one by refunds.

    A setting changed applies from then on: each bucket is first brought up to now under the
    old settings (and capped at a lowered capacity); waiters keep their dues, and a waiter
    that leaves moves those behind it up by what its tokens took at the rate it reserved at.
    """

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.buckets: dict[str, tuple[float, float]] = {}
        # key -> name -> (tokens, due, the seconds its tokens took when it reserved them)
        self.waiting: dict[str, dict[str, tuple[float, float, float]]] = {}

    def tokens(self, key: str, now: float) -> float:
        level, last = self.buckets.get(key, (self.capacity, now))
        return level if now <= last else min(self.capacity, level + (now - last) * self.rate)

    def try_acquire(self, key: str, tokens: float, now: float) -> bool:
        level = self.tokens(key, now)
        granted = level >= tokens
        self.buckets[key] = (level - tokens if granted else level, now)
        return granted

    def acquire(self, key: str, name: str, tokens: float, now: float) -> bool:
        """Reserves `tokens`; whether they are granted at once."""
        level = self.tokens(key, now) - tokens
        self.buckets[key] = (max(level, 0.0), now)
        if level >= 0:
            return True
        self.buckets[key] = (level, now)
        self.waiting.setdefault(key, {})[name] = (
            tokens,
            now - level / self.rate,
            tokens / self.rate,
        )
        return False

    def serve(self, now: float) -> set[str]:
        served = set()
        for queue in self.waiting.values():
            for name, (_, due, _) in list(queue.items()):
                if due <= now:
                    served.add(name)
                    del queue[name]
        return served

    def leave(self, key: str, name: str, now: float) -> None:
        queue = self.waiting[key]
        names = list(queue)
        tokens, due, took = queue.pop(name)
        assert now < due
        level, last = self.buckets[key]
        self.buckets[key] = (min(level + tokens, self.capacity), last)
        for other in names[names.index(name) + 1 :]:
            other_tokens, other_due, other_took = queue[other]
            queue[other] = (other_tokens, other_due - took, other_took)

    def settle(self, now: float, capacity: float) -> None:
        self.buckets = {k: (min(self.tokens(k, now), capacity), now) for k in self.buckets}


_LIMITER_OP = st.one_of(
    st.tuples(st.just("acquire"), st.sampled_from("ab"), st.sampled_from([0.5, 1.0, 2.0])),
    st.tuples(st.just("try"), st.sampled_from("ab"), st.sampled_from([0.5, 1.0, 2.0])),
    st.tuples(st.just("leave"), st.integers(0, 30), st.just(0.0)),
    st.tuples(st.just("wait"), st.just(""), st.sampled_from([0.0, 0.125, 0.25, 0.5, 1.0, 3.0])),
    st.tuples(st.just("rate"), st.just(""), st.sampled_from([1.0, 2.0, 4.0, 0.5])),
    st.tuples(st.just("capacity"), st.just(""), st.sampled_from([1.0, 2.0, 4.0, 8.0])),
)


@settings(max_examples=300, deadline=None)
@example(  # a waiter leaving after a rate cut gives back the time its tokens took then
    ops=[
        ("acquire", "b", 2.0),
        ("acquire", "b", 2.0),
        ("acquire", "b", 2.0),
        ("acquire", "b", 2.0),
        ("rate", "", 1.0),
        ("leave", 2, 0.0),
        ("wait", "", 0.5),
    ]
)
@example(ops=[("try", "a", 2.0), ("wait", "", 1.0), ("rate", "", 4.0)])
@example(ops=[("try", "a", 2.0), ("wait", "", 3.0), ("capacity", "", 8.0)])
@example(
    ops=[
        ("acquire", "a", 2.0),
        ("acquire", "a", 2.0),
        ("acquire", "a", 1.0),
        ("acquire", "a", 1.0),
        ("rate", "", 4.0),
        ("leave", 2, 0.0),
        ("wait", "", 0.25),
        ("capacity", "", 2.0),
        ("leave", 3, 0.0),
        ("wait", "", 1.0),
    ]
)
@example(  # a refund capped at a capacity lowered while it waited
    ops=[
        ("try", "a", 2.0),
        ("try", "a", 0.5),
        ("acquire", "a", 2.0),
        ("capacity", "", 1.0),
        ("leave", 0, 0.0),
    ]
)
@given(ops=st.lists(_LIMITER_OP, max_size=30))
def test_the_limiter_is_a_plain_token_bucket_per_key(ops: list[tuple[str, Any, float]]) -> None:
    """Two keys; grants, waits, cancellations, time and settings changed, against the reference.

    Every amount is a sum of powers of two: no rounding, so times and levels match exactly.
    """

    async def run() -> None:
        clock = HandClock()
        limiter = ar.RateLimiter(rate=2.0, capacity=4.0, clock=clock)
        reference = ReferenceLimiter(2.0, 4.0)
        tasks: dict[str, tuple[str, asyncio.Task[None]]] = {}
        pending: set[str] = set()
        for kind, key, value in ops:
            now = clock.now()
            if kind in ("acquire", "try") and value > reference.capacity:
                with pytest.raises(ValueError, match="tokens must be in"):
                    limiter.try_acquire(key, value)
                with pytest.raises(ValueError, match="tokens must be in"):
                    await limiter.acquire(key, value)
                continue
            if kind == "acquire":
                name = f"w{len(tasks)}"
                tasks[name] = (key, asyncio.create_task(limiter.acquire(key, value)))
                if not reference.acquire(key, name, value, now):
                    pending.add(name)
                await clock.advance(0.0)
            elif kind == "try":
                assert limiter.try_acquire(key, value) == reference.try_acquire(key, value, now)
            elif kind == "leave":
                if not tasks:
                    continue
                name = list(tasks)[key % len(tasks)]
                task_key, task = tasks[name]
                if task.done():
                    continue
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                pending.discard(name)
                reference.leave(task_key, name, now)
                await clock.advance(0.0)  # those moved up to now are served
            elif kind == "wait":
                await clock.advance(value)
            elif kind == "rate":
                limiter.rate = value
                reference.settle(now, math.inf)
                reference.rate = value
            else:
                limiter.capacity = value
                reference.settle(now, value)
                reference.capacity = value
            pending -= reference.serve(clock.now())
            for name, (_, task) in tasks.items():
                assert task.done() == (name not in pending), name
                if task.done() and not task.cancelled():
                    task.result()
            for key in "ab":
                assert limiter.tokens(key) == reference.tokens(key, clock.now()), key
        await clock.advance(1000.0)
        assert all(task.done() for _, task in tasks.values())
        assert limiter._room.waiters == {}
        assert clock.sleeping() == 0

    asyncio.run(run())


# -- Deduplicator against a reference -------------------------------------------------------


class ReferenceDedup:
    """Single flight and a TTL the plain way: what runs per key, what is served per key."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.running: dict[str, int] = {}  # key -> execution
        self.done: dict[str, tuple[float, int]] = {}  # key -> (expires, value)
        self.executions = 0

    def call(self, key: str, now: float) -> tuple[str, int]:
        """("hit", value) or ("wait", execution)."""
        entry = self.done.get(key)
        if entry is not None:
            if now < entry[0]:
                return "hit", entry[1]
            del self.done[key]
        if key not in self.running:
            self.executions += 1
            self.running[key] = self.executions
        return "wait", self.running[key]

    def finish(self, key: str, execution: int, value: int | None, now: float) -> None:
        if self.running.get(key) != execution:
            return  # forgotten
        del self.running[key]
        if value is not None and self.ttl > 0:
            self.done[key] = (now + self.ttl, value)
            self.done = {k: e for k, e in self.done.items() if e[0] > now}

    def forget(self, key: str) -> None:
        self.done.pop(key, None)
        self.running.pop(key, None)


_DEDUP_OP = st.one_of(
    st.tuples(st.just("call"), st.sampled_from("abc")),
    st.tuples(st.just("succeed"), st.integers(0, 20)),
    st.tuples(st.just("fail"), st.integers(0, 20)),
    st.tuples(st.just("cancel"), st.integers(0, 40)),
    st.tuples(st.just("forget"), st.sampled_from("abc")),
    st.tuples(st.just("wait"), st.sampled_from([0.25, 0.5, 1.0, 2.0])),
    st.tuples(st.just("purge"), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(ttl=st.sampled_from([0.0, 1.0, math.inf]), ops=st.lists(_DEDUP_OP, max_size=40))
def test_the_deduplicator_shares_runs_and_serves_results_as_the_reference(
    ttl: float, ops: list[tuple[str, Any]]
) -> None:
    """Callers arriving, executions succeeding or failing in any order, callers cancelled,
    keys forgotten, time passing: each caller gets its execution's outcome, the counts match,
    and nothing is left behind once all is done."""

    async def run() -> None:
        clock = HandClock()
        dedup = ar.Deduplicator(ttl=ttl, clock=clock)
        reference = ReferenceDedup(ttl)
        gates: dict[int, asyncio.Future[int]] = {}  # each execution's outcome, set by the test
        keys: dict[int, str] = {}
        callers: list[tuple[asyncio.Task[int], str, int]] = []  # (task, kind, execution/value)
        outcomes: dict[int, int | None] = {}  # execution -> value, None for a failure

        running: list[asyncio.Task[Any]] = []  # the tasks the executions run in

        def execute(key: str) -> Any:
            execution = dedup.executions  # counted before the execution starts
            task = asyncio.current_task()
            assert task is not None
            running.append(task)
            keys[execution] = key
            gates[execution] = asyncio.get_running_loop().create_future()
            return gates[execution]

        for kind, arg in ops:
            now = clock.now()
            if kind == "call":
                expected = reference.call(arg, now)
                task = asyncio.ensure_future(dedup.run(arg, execute, arg))
                callers.append((task, *expected))
            elif kind in ("succeed", "fail") and gates:
                execution = sorted(gates)[arg % len(gates)]
                if gates[execution].done():
                    continue
                value = None if kind == "fail" else 1000 + execution
                if value is None:
                    gates[execution].set_exception(ConnectionError(f"run {execution} failed"))
                else:
                    gates[execution].set_result(value)
                outcomes[execution] = value
                for _ in range(5):  # the execution ends, then its done callback runs
                    await asyncio.sleep(0)
                reference.finish(keys[execution], execution, value, clock.now())
            elif kind == "cancel" and callers:
                task = callers[arg % len(callers)][0]
                task.cancel()
            elif kind == "forget":
                dedup.forget(arg)
                reference.forget(arg)
            elif kind == "wait":
                clock.time += arg
            elif kind == "purge":
                expired = [k for k, e in reference.done.items() if e[0] <= now]
                assert dedup.purge_expired() == len(expired)
                for k in expired:
                    del reference.done[k]
            for _ in range(5):
                await asyncio.sleep(0)
            assert dedup.executions == reference.executions
            assert dedup.in_flight == len(reference.running)
            assert set(dedup._done) == set(reference.done)
            for task, how, what in callers:
                if how == "hit":
                    assert task.done()
                    if not task.cancelled():
                        assert task.result() == what
                elif task.done() and not task.cancelled():
                    error = task.exception()
                    got = None if isinstance(error, ConnectionError) else task.result()
                    assert outcomes.get(what, "missing") == got
                elif task.done():
                    pass  # cancelled: its execution goes on for the others
                else:
                    assert what not in outcomes  # waits only for a run not ended
        for gate in gates.values():
            if not gate.done():
                gate.set_result(0)
        results = await asyncio.gather(*(task for task, _, _ in callers), return_exceptions=True)
        # A cancelled caller is done before its execution: the execution's end (and its
        # done callback, registered first) comes before the gather of the executions ends.
        await asyncio.gather(*running, return_exceptions=True)
        for result, (_, _, what) in zip(results, callers, strict=True):
            if isinstance(result, ConnectionError):
                assert outcomes[what] is None
        assert dedup.in_flight == 0
        assert dedup._keys == {} and dedup._waits == {}

    asyncio.run(run())


async def test_callers_cancelled_mid_wait_leave_the_execution_to_the_others() -> None:
    # 200 callers of 10 keys, every third cancelled while it waits: each key runs once, the
    # others get its result, and nothing is left in flight or in the wait-for graph.
    dedup = ar.Deduplicator(ttl=0)
    gate = asyncio.Event()
    runs: list[int] = []

    async def work(n: int) -> int:
        runs.append(n)
        await gate.wait()
        return n * 10

    callers = [asyncio.ensure_future(dedup.run(i % 10, work, i % 10)) for i in range(200)]
    await asyncio.sleep(0)
    for caller in callers[::3]:
        caller.cancel()
    await asyncio.sleep(0)
    assert dedup.in_flight == 10
    gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, asyncio.CancelledError)
        else:
            assert result == (i % 10) * 10
    assert sorted(runs) == list(range(10)) and dedup.executions == 10
    assert dedup.in_flight == 0 and dedup._keys == {} and dedup._waits == {}


# -- ResultCache against a reference --------------------------------------------------------


_CACHE_OP = st.one_of(
    st.tuples(st.just("put"), st.sampled_from("tu"), st.sampled_from("abcde")),
    st.tuples(st.just("get"), st.sampled_from("tu"), st.sampled_from("abcde")),
    st.tuples(st.just("wait"), st.just(""), st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0])),
    st.tuples(st.just("ttl"), st.just(""), st.sampled_from([0.5, 1.0, 2.0, 5.0, math.inf])),
    st.tuples(st.just("max_entries"), st.just(""), st.integers(1, 5)),
    st.tuples(st.just("invalidate"), st.sampled_from(["t", "u", None]), st.just("")),
)


@settings(max_examples=400, deadline=None)
@given(ops=st.lists(_CACHE_OP, max_size=40))
def test_the_cache_is_an_lru_of_entries_that_expire(ops: list[tuple[str, Any, Any]]) -> None:
    """Against an OrderedDict: served until the entry's own expiry, expired entries dropped
    first when full, then the least recently used; counts of hits, misses and drops."""
    clock = ar.FakeClock()
    cache = ar.ResultCache(ttl=2.0, max_entries=3, clock=clock)
    ttl, most = 2.0, 3
    biggest = most
    entries: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
    hits = misses = 0

    def shrink(now: float) -> None:
        if len(entries) > most:
            for key in [k for k, (expires, _) in entries.items() if expires <= now]:
                del entries[key]
        while len(entries) > most:
            entries.popitem(last=False)

    for step, (kind, a, b) in enumerate(ops):
        now = clock.now()
        if kind == "put":
            cache.put(a, {"arg": b}, step)
            entries[(a, b)] = (now + ttl, step)
            entries.move_to_end((a, b))
            shrink(now)
        elif kind == "get":
            entry = entries.get((a, b))
            if entry is not None and now < entry[0]:
                entries.move_to_end((a, b))
                expected: tuple[bool, Any] = (True, entry[1])
                hits += 1
            else:
                entries.pop((a, b), None)
                expected = (False, None)
                misses += 1
            assert cache.get(a, {"arg": b}) == expected
        elif kind == "wait":
            clock.advance(b)
        elif kind == "ttl":
            cache.ttl = ttl = b
        elif kind == "max_entries":
            cache.max_entries = most = b
            shrink(now)
        else:
            doomed = [k for k in entries if a is None or k[0] == a]
            assert cache.invalidate(a) == len(doomed)
            for key in doomed:
                del entries[key]
        held = [(tool, json.loads(arguments)[1]["arg"]) for tool, arguments in cache._entries]
        assert held == list(entries) and len(cache) == len(entries)
        assert (cache.hits, cache.misses) == (hits, misses)
        biggest = max(biggest, most)
        assert len(cache._expiry) <= 2 * biggest + 1  # stale heap items are rebuilt away


def test_threads_sharing_a_cache_keep_exact_counts_and_its_bound() -> None:
    cache = ar.ResultCache(ttl=math.inf, max_entries=16)
    lookups = 2000
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        try:
            for _ in range(lookups):
                key = {"n": rng.randrange(40)}
                if rng.random() < 0.5:
                    cache.put("t", key, key["n"])
                hit, value = cache.get("t", key)
                assert not hit or value == key["n"]
                if rng.random() < 0.01:
                    cache.invalidate("t")
                if rng.random() < 0.01:
                    cache.max_entries = rng.choice([4, 16])
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cache.hits + cache.misses == 8 * lookups
    assert len(cache) <= cache.max_entries


async def test_a_cache_call_cancelled_mid_call_stores_nothing_and_leaves_nothing() -> None:
    cache = ar.ResultCache(ttl=60)
    started = asyncio.Event()
    calls = 0

    async def slow(n: int) -> int:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.sleep(3600)
        return n

    task = asyncio.create_task(cache.get_or_call("t", {"n": 1}, slow))
    await started.wait()
    assert len(cache._puts) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cache._puts == {} and len(cache) == 0

    async def quick(n: int) -> int:
        return n

    assert await cache.get_or_call("t", {"n": 1}, quick) == 1
    assert await cache.get_or_call("t", {"n": 1}, slow) == 1  # served: slow is not called
    assert calls == 1 and (cache.hits, cache.misses) == (1, 2)


# -- RetryPolicy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "retry_after",
    [np.int64(5), np.float32(5.0), np.float64(5.0), decimal.Decimal(5), fractions.Fraction(5)],
    ids=repr,
)
def test_a_server_delay_given_as_any_real_number_is_waited(retry_after: object) -> None:
    # Only an int or a float was read: a numpy integer, a numpy float32, a Decimal or a
    # Fraction was taken for a non-numeric value, and the backoff applied instead.
    policy = ar.RetryPolicy(base_delay=1.0, jitter=False)
    error = ar.ProviderError("slow down", 429, True, retry_after=retry_after)
    delay = policy.delay_for(1, error)
    assert delay == 5.0 and type(delay) is float
    stage = ar.PipelineStageError("stage 'call' failed", stage="call")
    stage.__cause__ = error
    assert policy.delay_for(3, stage) == 5.0


class _BadFloat:
    def __float__(self) -> float:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    "retry_after",
    [True, np.bool_(True), "5", -1, math.nan, math.inf, 10**400, np.array([5.0]), _BadFloat()],
    ids=repr,
)
def test_a_server_delay_that_is_no_real_duration_leaves_the_backoff(retry_after: object) -> None:
    policy = ar.RetryPolicy(base_delay=2.0, jitter=False)
    error = ar.ProviderError("slow down", 503, True, retry_after=retry_after)
    assert policy.delay_for(2, error) == 4.0


def test_a_delay_for_a_numpy_attempt_is_a_float() -> None:
    policy = ar.RetryPolicy(base_delay=1.0, jitter=False)
    delay = policy.delay_for(np.int64(3))
    assert delay == 4.0 and type(delay) is float


@settings(max_examples=200, deadline=None)
@given(
    attempts=st.integers(1, 8),
    base=st.sampled_from([0.0, 0.001, 0.5, 1.0, 7.0, 1e300]),
    most=st.sampled_from([0.0, 0.25, 3.0, 60.0, math.inf]),
    jitter=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_retry_sleeps_within_the_capped_exponential_bound_and_reraises_the_last_error(
    attempts: int, base: float, most: float, jitter: bool, seed: int
) -> None:
    clock = ar.FakeClock()
    policy = ar.RetryPolicy(
        max_attempts=attempts,
        base_delay=base,
        max_delay=most,
        jitter=jitter,
        clock=clock,
        rng=random.Random(seed),
    )
    raised: list[BaseException] = []

    def fail() -> None:
        raised.append(ConnectionError(f"attempt {len(raised) + 1}"))
        raise raised[-1]

    with pytest.raises(ConnectionError) as info:
        asyncio.run(policy.run(fail))
    assert len(raised) == attempts and info.value is raised[-1]
    assert info.value.__cause__ is None
    assert len(clock.sleeps) == attempts - 1
    for n, slept in enumerate(clock.sleeps, start=1):
        bound = min(most, 60.0, base * 2.0 ** (n - 1))
        assert 0.0 <= slept <= bound
        if not jitter:
            assert slept == bound


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ConnectionResetError("reset"), True),
        (TimeoutError("slow"), True),
        (ConnectionRefusedError("refused"), True),
        (ar.ProviderError("busy", 503, retryable=True), True),
        (ar.ProviderError("bad", 400, retryable=False), False),
        (ValueError("bug"), False),
        (ar.ToolError("broken"), False),
        (ExceptionGroup("many", [ConnectionError("a")]), False),
    ],
    ids=repr,
)
async def test_which_errors_the_default_policy_retries(error: Exception, retried: bool) -> None:
    clock = ar.FakeClock()
    policy = ar.RetryPolicy(max_attempts=3, clock=clock)
    calls = 0

    async def fail(_: object = None) -> None:
        nonlocal calls
        calls += 1
        raise error

    stage = ar.Pipeline(("call", fail))
    with pytest.raises(type(error)):
        await policy.run(fail)
    assert calls == (3 if retried else 1)
    calls = 0
    with pytest.raises(ar.PipelineStageError) as info:
        await policy.run(stage.run, None)  # judged by the stage's own error
    assert calls == (3 if retried else 1)
    assert info.value.__cause__ is error and info.value.stage == "call"


@pytest.mark.parametrize(
    "error",
    [
        ar.CircuitOpenError("llm"),
        ar.PolicyDeniedError("no"),
        ar.BudgetExceededError("spent"),
        ExceptionGroup("tools", [ConnectionError("a"), ar.PolicyDeniedError("no")]),
    ],
    ids=repr,
)
async def test_refusals_are_never_retried_even_when_retry_on_says_so(error: Exception) -> None:
    policy = ar.RetryPolicy(max_attempts=5, retry_on=lambda _: True, clock=ar.FakeClock())
    calls = 0

    def fail() -> None:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(type(error)):
        await policy.run(fail)
    assert calls == 1


async def test_a_retry_cancelled_mid_backoff_stops_there() -> None:
    clock = HandClock()
    policy = ar.RetryPolicy(max_attempts=5, base_delay=1.0, jitter=False, clock=clock)
    calls = 0

    def fail() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    task = asyncio.create_task(policy.run(fail))
    await clock.advance(1.5)  # the second attempt failed; it sleeps 2 s before the third
    assert calls == 2 and clock.sleeping() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await clock.advance(100)
    assert calls == 2 and clock.sleeping() == 0


# -- Pipeline -------------------------------------------------------------------------------


async def test_a_pipeline_runs_stages_in_order_and_names_the_one_that_failed() -> None:
    seen: list[str] = []

    def first(value: int) -> int:
        seen.append("first")
        return value + 1

    async def second(value: int) -> int:
        seen.append("second")
        await asyncio.sleep(0)
        return value * 10

    def third(value: int) -> int:
        seen.append("third")
        raise KeyError(value)

    def never(value: int) -> int:
        seen.append("never")
        return value

    pipeline = ar.Pipeline(first, ("times ten", second)).then(third).then(never)
    assert pipeline.stage_names == ["first", "times ten", "third", "never"]
    assert await ar.Pipeline(first, second).run(1) == 20
    seen.clear()
    with pytest.raises(ar.PipelineStageError) as info:
        await pipeline.run(4)
    assert seen == ["first", "second", "third"]
    assert info.value.stage == "third" and isinstance(info.value.__cause__, KeyError)
    assert str(info.value) == "pipeline stage 2 ('third') failed: 50"


async def test_concurrent_pipeline_runs_keep_their_own_values() -> None:
    async def slow_double(value: int) -> int:
        await asyncio.sleep(0.001 * (value % 7))
        return 2 * value

    pipeline = ar.Pipeline(slow_double, lambda v: v + 1, slow_double)
    results = await asyncio.gather(*(pipeline.run(v) for v in range(100)))
    assert results == [2 * (2 * v + 1) for v in range(100)]


# -- A coroutine passed in place of its function ----------------------------------------------


async def _fetch(query: str = "q") -> str:
    return query


async def test_a_dedup_given_a_coroutine_refuses_it_before_running_anything() -> None:
    # It became an execution (counted) failing with "'coroutine' object is not callable" for
    # every caller of the key, and the coroutine was left never awaited.
    dedup = ar.Deduplicator(ttl=60)
    call = _fetch()
    with pytest.raises(TypeError, match=r"Deduplicator.run .*coroutine _fetch\(\).*not its call"):
        await dedup.run("k", call)  # type: ignore[call-overload]
    assert call.cr_frame is None  # closed: no "never awaited" warning
    assert dedup.executions == 0 and dedup.in_flight == 0
    with pytest.raises(TypeError, match=r"Deduplicator\.run needs a callable, got int 5"):
        await dedup.run("k", 5)  # type: ignore[call-overload]
    assert await dedup.run("k", _fetch, "ok") == "ok"


async def test_a_cache_given_a_coroutine_refuses_it() -> None:
    cache = ar.ResultCache(ttl=60)
    call = _fetch()
    with pytest.raises(TypeError, match=r"ResultCache.get_or_call .*coroutine _fetch\(\)"):
        await cache.get_or_call("t", {}, call)  # type: ignore[arg-type]
    assert call.cr_frame is None
    assert (cache.hits, cache.misses, len(cache)) == (0, 0, 0)


def test_a_pipeline_given_a_coroutine_as_a_stage_refuses_and_closes_it() -> None:
    call = _fetch()
    with pytest.raises(TypeError, match=r"pipeline stage .*coroutine _fetch\(\)"):
        ar.Pipeline(call)  # type: ignore[arg-type]
    assert call.cr_frame is None
    call = _fetch()
    with pytest.raises(TypeError, match="coroutine"):
        ar.Pipeline().then(call)  # type: ignore[arg-type]
    assert call.cr_frame is None


class _ReprFails:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


async def test_an_uncallable_whose_repr_fails_is_still_refused_with_a_type_error() -> None:
    with pytest.raises(TypeError, match="got _ReprFails <_ReprFails>"):
        await ar.Deduplicator(ttl=0).run("k", _ReprFails())  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="pipeline stage needs a callable"):
        ar.Pipeline(_ReprFails())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"a named stage is a \(name, fn\) pair"):
        ar.Pipeline(("name", _ReprFails(), "extra"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a stage name must be a str, got <_ReprFails>"):
        ar.Pipeline().then(str, name=_ReprFails())  # type: ignore[arg-type]
