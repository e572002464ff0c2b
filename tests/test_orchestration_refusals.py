"""Orchestration primitives: bad arguments are refused where they are given, a call that
cannot even be made says nothing of a service's health, and a shared single-flight run that
asks for its own key is refused instead of waiting for itself."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest
from test_redis_state import redis_url

import llm_agent_runtime as ar


class Boom(Exception):
    pass


def test_a_retry_policy_refuses_an_rng_that_cannot_draw_delays() -> None:
    # Accepted before: the first retry failed with an AttributeError that replaced the
    # call's own error.
    with pytest.raises(TypeError, match="rng"):
        ar.RetryPolicy(rng="seed-42")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rng"):
        ar.RetryPolicy(rng=random.Random)  # type: ignore[arg-type]  # the class, not one
    # Anything with a callable uniform() draws delays: a Random, the random module itself.
    assert ar.RetryPolicy(rng=random.Random(1)).delay_for(1) <= 0.5
    assert ar.RetryPolicy(rng=random).delay_for(1) <= 0.5  # type: ignore[arg-type]


def test_a_breaker_refuses_a_backend_that_is_no_circuit_state_backend() -> None:
    # A URL passed where the backend goes was accepted: every call then failed with an
    # AttributeError ('str' object has no attribute 'update').
    with pytest.raises(TypeError, match="backend"):
        ar.CircuitBreaker("s", backend="redis://localhost:6379/0")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="backend"):
        ar.CircuitBreaker("s", backend=ar.InMemoryCircuitStateBackend)  # type: ignore[arg-type]
    # A dict has callable get() and update(): every call failed with a TypeError of its own.
    with pytest.raises(TypeError, match="backend"):
        ar.CircuitBreaker("s", backend={})  # type: ignore[arg-type]
    shared = ar.InMemoryCircuitStateBackend()
    assert ar.CircuitBreaker("s", backend=shared).state == "closed"


async def test_a_breaker_refuses_a_listener_that_cannot_be_called() -> None:
    # Accepted before: each state change then logged a TypeError from inside the breaker.
    breaker = ar.CircuitBreaker("s", failure_threshold=1)
    with pytest.raises(TypeError, match="listener"):
        breaker.add_listener(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="listener"):
        breaker.add_listener("on_change")  # type: ignore[arg-type]
    seen: list[str] = []
    breaker.add_listener(lambda change: seen.append(change.new))

    def failing() -> None:
        raise Boom

    with pytest.raises(Boom):
        breaker.call_sync(failing)
    assert seen == ["open"]


async def fetch(query: str) -> str:
    return query


@pytest.mark.parametrize("failures_first", [False, True])  # the fast path, and the other one
async def test_calling_a_breaker_with_no_callable_does_not_count_against_the_service(
    failures_first: bool,
) -> None:
    # `breaker.call(fetch(query))` (the coroutine, not the function) failed with Python's
    # TypeError, counted as the service's failure: the mistake opened the circuit.
    breaker = ar.CircuitBreaker("search", failure_threshold=2)
    if failures_first:

        def failing() -> None:
            raise Boom

        with pytest.raises(Boom):
            breaker.call_sync(failing)
    for _ in range(3):
        mistaken: Any = fetch("rust")
        with pytest.raises(TypeError, match="callable"):
            await breaker.call(mistaken)
        with pytest.raises(TypeError, match="callable"):
            breaker.call_sync(None)  # type: ignore[arg-type]
    assert breaker.state == "closed"
    assert await breaker.call(fetch, "rust") == "rust"


async def test_calling_a_half_open_breaker_with_no_callable_takes_no_trial_slot() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("search", failure_threshold=1, recovery_window=1.0, clock=clock)

    def failing() -> None:
        raise Boom

    with pytest.raises(Boom):
        breaker.call_sync(failing)
    clock.advance(1.0)  # recovery window over: the next call is a trial
    with pytest.raises(TypeError, match="callable"):
        await breaker.call(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        breaker.call_sync(42)  # type: ignore[arg-type]
    # The trial is still to be made, and a good one closes the circuit.
    assert await breaker.call(fetch, "ok") == "ok"
    assert breaker.state == "closed"


async def test_a_breaker_with_no_callable_closes_a_coroutine_given_instead() -> None:
    breaker = ar.CircuitBreaker("search")
    coroutine = fetch("x")
    with pytest.raises(TypeError, match="callable"):
        await breaker.call(coroutine)  # type: ignore[arg-type]
    # Closed: no "coroutine was never awaited" warning (an error under this suite's filters).
    assert coroutine.cr_frame is None
    await asyncio.sleep(0)


async def test_a_shared_run_that_asks_for_its_own_key_is_refused_instead_of_waiting() -> None:
    # It waited for its own lease (30 s), then ran the call again inside itself, and so on:
    # a hang. The in-process Deduplicator refuses it; so does the shared one now.
    dedup = ar.RedisDeduplicator(redis_url(), ttl=5.0, prefix=f"self:{os.getpid()}:", namespace="t")
    other = ar.RedisDeduplicator(redis_url(), ttl=5.0, prefix=f"self:{os.getpid()}:", namespace="t")
    runs = 0

    async def outer(through: ar.RedisDeduplicator) -> int:
        nonlocal runs
        runs += 1
        return int(await through.run("k", lambda: 1)) + 1

    for through in (dedup, other):  # the same key through another object shares the lease
        with pytest.raises(RuntimeError, match="its own"):
            async with asyncio.timeout(5):
                await dedup.run("k", outer, through)
        assert await dedup.client.exists(*dedup.redis_keys("k")) == 0  # lease given back
    assert runs == 2
    # Another key inside the run, and the key in a task of its own afterwards, are fine.
    assert await dedup.run("k", lambda: dedup.run("k2", lambda: 2)) == 2

    async def spawn() -> int:
        return 3

    assert await dedup.run("k3", spawn) == 3
    assert await asyncio.gather(dedup.run("k4", spawn), dedup.run("k4", spawn)) == [3, 3]
    await dedup.client.delete(*dedup.redis_keys("k"), *dedup.redis_keys("k2"))
    await dedup.client.delete(*dedup.redis_keys("k3"), *dedup.redis_keys("k4"))
    await dedup.close()
    await other.close()
