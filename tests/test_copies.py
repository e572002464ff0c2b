"""What copies (`copy.copy`, `copy.deepcopy`, pickling) of the stateful Python objects are.

A default shallow copy shared part of an object's state and not the rest: a guard of
capacity 1 let two callers in, a breaker's copy opened it, a copied event bus took
callbacks it never called, a deduplicator's copy broke its expiry heap. Objects with live
state now refuse every copy with a TypeError naming them; objects of plain state copy whole.
"""

from __future__ import annotations

import asyncio
import copy
import os
import pickle
import random
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import llm_agent_runtime as ar

NO_SERVER = "redis://127.0.0.1:9/0"

COPIES: list[tuple[str, Callable[[Any], Any]]] = [
    ("copy", copy.copy),
    ("deepcopy", copy.deepcopy),
    ("pickle", lambda value: pickle.loads(pickle.dumps(value))),
]

UNSHARED: list[tuple[str, Callable[[Path], Any]]] = [
    ("CircuitBreaker", lambda _: ar.CircuitBreaker("svc")),
    ("InMemoryCircuitStateBackend", lambda _: ar.InMemoryCircuitStateBackend()),
    ("BackpressureGuard", lambda _: ar.BackpressureGuard(1)),
    ("ResultCache", lambda _: ar.ResultCache(ttl=5.0)),
    ("InMemoryBackend", lambda _: ar.InMemoryBackend()),
    ("SqliteBackend", lambda tmp: ar.SqliteBackend(str(tmp / "c.db"))),
    ("PostgresBackend", lambda _: ar.PostgresBackend("postgresql://u@127.0.0.1:9/db")),
    ("RedisBackend", lambda _: ar.RedisBackend(NO_SERVER)),
    ("RedisCircuitStateBackend", lambda _: ar.RedisCircuitStateBackend(NO_SERVER)),
    ("RedisRateLimiter", lambda _: ar.RedisRateLimiter(NO_SERVER, rate=1.0, capacity=1.0)),
    ("RedisDeduplicator", lambda _: ar.RedisDeduplicator(NO_SERVER, ttl=5.0, namespace="n")),
    ("AgentRuntime", lambda _: ar.AgentRuntime()),
    ("EventBus", lambda _: ar.AgentRuntime().events),
    ("Subscription", lambda _: ar.AgentRuntime().events.subscribe()),
]


@pytest.mark.parametrize(("how", "twin"), COPIES, ids=[c[0] for c in COPIES])
@pytest.mark.parametrize(("name", "make"), UNSHARED, ids=[u[0] for u in UNSHARED])
def test_objects_with_live_state_refuse_every_copy_naming_themselves(
    tmp_path: Path, name: str, make: Callable[[Path], Any], how: str, twin: Callable[[Any], Any]
) -> None:
    # Deep copies and pickles failed on a lock deep inside ("cannot pickle '_thread.lock'
    # object", a local class of the Redis pool's); shallow copies shared part of the state.
    value = make(tmp_path)
    with pytest.raises(TypeError, match=f"^{name} objects cannot be copied or pickled"):
        twin(value)


async def test_a_copied_guard_cannot_let_a_second_caller_past_capacity() -> None:
    guard = ar.BackpressureGuard(1)
    with pytest.raises(TypeError, match="make a new BackpressureGuard"):
        copy.copy(guard)


async def test_an_event_bus_is_not_copied_into_one_that_never_calls_back() -> None:
    # The copy's `on` added to the original's callbacks but marked only the copy active: a
    # whole run delivered no event to the callback.
    runtime = ar.AgentRuntime()
    with pytest.raises(TypeError, match="EventBus objects cannot be copied"):
        copy.copy(runtime.events)
    seen: list[Any] = []
    runtime.events.on(seen.append)
    await runtime.run_agent("a", "q", ar.ScriptedProvider(["Action: FINAL_ANSWER 1"]).complete)
    assert type(seen[0]).__name__ == "RunStarted" and type(seen[-1]).__name__ == "RunFinished"


@pytest.mark.parametrize("provider", [ar.OpenAIProvider, ar.AnthropicProvider])
def test_a_provider_copy_would_share_its_pool_and_is_refused(provider: Any) -> None:
    # `copy.copy(p).aclose()` closed the original's client.
    llm = provider(api_key="sk-test", base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(TypeError, match=f"{provider.__name__} objects cannot be copied"):
        copy.copy(llm)


# -- objects of plain state: whole, independent copies ------------------------------------


@pytest.mark.parametrize(("how", "twin"), COPIES, ids=[c[0] for c in COPIES])
def test_a_rate_limiter_copy_has_its_own_buckets(how: str, twin: Callable[[Any], Any]) -> None:
    clock = ar.FakeClock()
    limiter = ar.RateLimiter(rate=1.0, capacity=2.0, clock=clock)
    assert limiter.try_acquire("k")
    clone = twin(limiter)
    assert clone.try_acquire("k") and not clone.try_acquire("k")
    assert limiter.try_acquire("k")  # its own token, left by the copy's
    if how != "pickle":  # the clock is kept: both refill as it goes
        assert clone._clock is clock
        clock.advance(1.0)
        assert clone.try_acquire("k") and limiter.try_acquire("k")


async def test_a_rate_limiter_with_waiters_is_not_copied() -> None:
    limiter = ar.RateLimiter(rate=1.0, capacity=1.0, clock=ar.FakeClock())
    assert limiter.try_acquire()
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    for _, twin in COPIES:
        with pytest.raises(TypeError, match="a RateLimiter cannot be copied or pickled while"):
            twin(limiter)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert copy.copy(limiter).capacity == 1.0  # idle again


async def test_a_deduplicator_copy_keeps_its_own_results() -> None:
    # The copy shared the results and the expiry heap but not the heap's tie-breaking
    # count: equal (expiry, order) items made heapq compare the keys (a TypeError).
    dedup = ar.Deduplicator(ttl=60.0, clock=ar.FakeClock())
    calls: list[str] = []

    async def work(tag: str) -> str:
        calls.append(tag)
        return tag

    assert await dedup.run(("k", 1), work, "original") == "original"
    clone = copy.copy(dedup)
    assert await clone.run(("k", 1), work, "copy") == "original"  # its copy of the result
    assert await clone.run("other", work, "copy") == "copy"
    assert await dedup.run("other", work, "original") == "original"  # not the copy's
    assert calls == ["original", "copy", "original"]


async def test_a_deduplicator_running_a_call_is_not_copied() -> None:
    dedup = ar.Deduplicator(ttl=60.0)
    release = asyncio.Event()

    async def slow() -> int:
        await release.wait()
        return 1

    running = asyncio.ensure_future(dedup.run("k", slow))
    await asyncio.sleep(0)
    with pytest.raises(TypeError, match="a Deduplicator cannot be copied or pickled while"):
        copy.copy(dedup)
    release.set()
    assert await running == 1


async def test_a_fake_clock_copy_keeps_its_own_time_and_is_refused_while_tasks_sleep() -> None:
    clock = ar.FakeClock(5.0)
    clone = copy.copy(clock)
    clone.advance(10.0)
    assert (clock.now(), clone.now()) == (5.0, 15.0)
    sleeper = asyncio.ensure_future(clock.sleep(100.0))
    await asyncio.sleep(0)
    with pytest.raises(TypeError, match="a FakeClock cannot be copied or pickled while"):
        copy.copy(clock)
    sleeper.cancel()
    await asyncio.gather(sleeper, return_exceptions=True)


@ar.tool
def ping() -> str:
    """Pings."""
    return "pong"


@ar.tool
def pong() -> str:
    """Pongs."""
    return "ping"


def test_registry_and_pipeline_copies_add_apart() -> None:
    registry = ar.ToolRegistry([ping])
    clone = copy.copy(registry)
    clone.register(pong)
    assert (registry.names(), clone.names()) == (["ping"], ["ping", "pong"])
    assert clone.get("ping") is ping  # the tools themselves are shared
    pipeline = ar.Pipeline(str.upper)
    twin = copy.copy(pipeline).then(str.strip)
    assert (pipeline.stage_names, twin.stage_names) == (["upper"], ["upper", "strip"])


class _AuditedRegistry(ar.ToolRegistry):
    """A user's registry: runs calls its own way, with an attribute of its own."""

    def __init__(self) -> None:
        super().__init__([ping])
        self.owner = "team-a"


class _LabelledPipeline(ar.Pipeline):
    __slots__ = ()

    def __init__(self, label: str) -> None:
        super().__init__(str.upper)
        self.label = label


class _SlottedSpec(ar.ToolSpec):
    __slots__ = ("__secret", "audit")

    def set_secret(self, value: str) -> None:
        self.__secret = value

    def secret(self) -> str:
        return self.__secret


class _AuditedSpec(_SlottedSpec):
    """A slot of its base's (`audit`) and a `__dict__` (`note`)."""


@pytest.mark.parametrize(("how", "twin"), COPIES)
def test_copies_of_subclasses_are_of_the_subclass_with_its_attributes(
    how: str, twin: Callable[[Any], Any]
) -> None:
    # A copy of a registry or a pipeline was of the base class (the subclass's methods and
    # attributes lost); a spec's copy dropped the subclass's own attributes.
    registry = twin(_AuditedRegistry())
    assert type(registry) is _AuditedRegistry and registry.owner == "team-a"
    pipeline = twin(_LabelledPipeline("prod"))
    assert type(pipeline) is _LabelledPipeline and pipeline.label == "prod"
    if how == "pickle":
        return  # a spec pickles by its handler's name: a test's local one has none
    spec = _AuditedSpec("echo", "Echoes.", lambda args: args)
    spec.audit = ["made"]
    spec.note = "kept"
    spec.set_secret("s")
    clone = twin(spec)
    assert type(clone) is _AuditedSpec and (clone.audit, clone.note) == (["made"], "kept")
    assert clone.secret() == "s"  # a private slot, stored under its mangled name
    assert (clone.audit is spec.audit) == (how == "copy")


# -- retry jitter in forked workers --------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
def test_forked_workers_draw_their_own_retry_delays() -> None:
    # A policy's own generator was copied into every forked worker: each retried after the
    # same delays, in step. The `random` module's is seeded anew in each child.
    policy = ar.RetryPolicy(max_attempts=10, base_delay=1.0)
    drawn = []
    for _ in range(2):
        reader, writer = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads
            child = os.fork()
        if child == 0:
            try:
                delays = [policy.delay_for(n) for n in range(1, 9)]
                os.write(writer, repr(delays).encode())
            finally:
                os._exit(0)
        os.close(writer)
        with os.fdopen(reader, "rb") as pipe:
            drawn.append(pipe.read())
        os.waitpid(child, 0)
    assert drawn[0] and drawn[0] != drawn[1]


class _User:
    """A key that hashes by identity (a user or session object)."""


def test_a_limiter_copy_keeps_its_keys_and_a_deep_copy_leaves_the_clock_alone() -> None:
    # The copy was deep: a key hashing by identity was a new object in it, whose bucket
    # was full again. And a deep copy put the original clock in the caller's memo: copied
    # beside the limiter, the "copy" of the clock was the original.
    clock = ar.FakeClock()
    user = _User()
    limiter = ar.RateLimiter(rate=1.0, capacity=5.0, clock=clock)
    assert limiter.try_acquire(user, 5.0)
    clone = copy.copy(limiter)
    assert not clone.try_acquire(user) and not limiter.try_acquire(user)
    both = copy.deepcopy({"limiter": limiter, "clock": clock})
    assert both["clock"] is not clock and both["limiter"]._clock is clock
    both["clock"].advance(100.0)
    assert clock.now() == 0.0


@pytest.mark.parametrize("rng", [None, random.Random(7), random], ids=["none", "own", "module"])
async def test_a_retry_policy_copy_sleeps_by_the_same_clock(rng: Any) -> None:
    # A deep copy had a clock of its own: a test's FakeClock never saw the copy's backoff
    # (a rate limiter's copies keep theirs). The `random` module is shared, not copied.
    clock = ar.FakeClock()
    policy = ar.RetryPolicy(max_attempts=2, base_delay=1.0, jitter=False, clock=clock, rng=rng)

    def fails() -> None:
        raise ConnectionError("down")

    for n, clone in enumerate((copy.copy(policy), copy.deepcopy(policy)), 1):
        with pytest.raises(ConnectionError):
            await clone.run(fails)
        assert clock.now() == float(n)  # the one retry's 1 s backoff, slept on `clock`
        assert clone._rng is rng


async def test_a_retry_policy_copy_shares_the_users_classifier() -> None:
    # Copied deeply, a classifier holding a lock made every copy fail, and one that counts
    # what it sees was split from the user's.
    class Counting:
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.seen = 0

        def __call__(self, error: BaseException) -> bool:
            with self.lock:
                self.seen += 1
            return False

    counting = Counting()
    policy = ar.RetryPolicy(retry_on=counting)
    for clone in (copy.copy(policy), copy.deepcopy(policy)):
        clone.max_attempts = 5  # settings of its own
        assert clone.should_retry(ConnectionError()) is False
    assert counting.seen == 2 and policy.max_attempts == 3

    class Logging(ar.RetryPolicy):
        def __init__(self) -> None:
            super().__init__()
            self.failures: list[str] = []

    logging_policy = Logging()
    deep = copy.deepcopy(logging_policy)
    deep.failures.append("x")
    assert logging_policy.failures == []  # a subclass's own state: the deep copy's own


async def test_a_fake_clock_with_only_a_cancelled_sleep_left_copies() -> None:
    # A cancelled sleep (and a closed loop's jump) kept the clock "in use" for good: it,
    # and a limiter on it, could never be copied or pickled again.
    clock = ar.FakeClock()
    sleeper = asyncio.ensure_future(clock.sleep(10.0))
    await asyncio.sleep(0)
    sleeper.cancel()
    await asyncio.gather(sleeper, return_exceptions=True)
    for _, twin in COPIES:
        assert twin(clock).now() == 0.0
    assert pickle.loads(pickle.dumps(ar.RateLimiter(1.0, 1.0, clock=clock))).capacity == 1.0
