"""Orchestration edge cases: cancellation at await points, shared backends, clock edges."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import llm_agent_runtime as ar


class Boom(Exception):
    pass


def failing() -> None:
    raise Boom("down")


class SlowReplyBackend:
    """A shared backend whose updates are made at once, but whose replies wait on `reply`.

    As a Redis backend whose write went out while its caller was cancelled: the change is
    made, and no one reads the reply.
    """

    def __init__(self) -> None:
        self.inner = ar.InMemoryCircuitStateBackend()
        self.reply = asyncio.Event()
        self.reply.set()
        self.applied = asyncio.Event()

    async def get(self, service: str) -> ar.CircuitState:
        return await self.inner.get(service)

    async def update(
        self, service: str, change: Callable[[ar.CircuitState], ar.CircuitState]
    ) -> tuple[ar.CircuitState, ar.CircuitState]:
        outcome = self.inner.update_now(service, change)
        self.applied.set()
        await self.reply.wait()
        return outcome


@pytest.mark.parametrize("use", ["call", "async_with"])
async def test_a_probe_cancelled_while_a_shared_backend_admits_it_gives_its_slot_back(
    use: str,
) -> None:
    clock = ar.FakeClock()
    backend = SlowReplyBackend()
    breaker = ar.CircuitBreaker(
        "svc",
        failure_threshold=1,
        recovery_window=10,
        trial_timeout=1000,
        backend=backend,
        clock=clock,
    )
    with pytest.raises(Boom):
        await breaker.call(failing)
    assert (await breaker.current_state()).status == "open"
    clock.advance(10)

    calls: list[int] = []

    async def probe() -> None:
        if use == "call":
            await breaker.call(lambda: calls.append(1))
        else:
            async with breaker:
                calls.append(1)

    backend.reply.clear()
    backend.applied.clear()
    task = asyncio.ensure_future(probe())
    await backend.applied.wait()  # the trial slot is taken; the reply is on its way
    task.cancel()
    for _ in range(10):
        await asyncio.sleep(0)
    # It waits for the reply, to give the slot back before its cancellation goes on: left
    # to the background, the give-back was lost when the loop then ended (Ctrl-C).
    assert not task.done()
    backend.reply.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == []
    state = await breaker.current_state()
    assert (state.status, state.trial_calls) == ("half_open", 0)
    # The next probe is let through at once, not after trial_timeout.
    assert await breaker.call(lambda: "up") == "up"
    assert (await breaker.current_state()).status == "closed"
    assert breaker.transitions["open->half_open"] == 1


class SteppingClock:
    """A clock set by hand, which may step back (a wall clock corrected by NTP, say)."""

    def __init__(self, now: float) -> None:
        self.t = now
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += max(0.0, seconds)


def test_a_clock_stepping_back_neither_drains_a_bucket_nor_refills_it() -> None:
    clock = SteppingClock(100.0)
    limiter = ar.RateLimiter(rate=1.0, capacity=5.0, clock=clock)
    assert limiter.try_acquire("k")
    clock.t = 40.0  # a minute back
    # No time has passed for the bucket: it has its 4 tokens, not 4 - 60.
    assert limiter.tokens("k") == 4.0
    assert [limiter.try_acquire("k") for _ in range(5)] == [True] * 4 + [False]
    clock.t = 42.0  # two seconds on, from where the clock stands now
    assert limiter.tokens("k") == 2.0


async def test_a_clock_stepping_back_does_not_make_a_waiter_wait_for_the_step() -> None:
    clock = SteppingClock(100.0)
    limiter = ar.RateLimiter(rate=1.0, capacity=1.0, clock=clock)
    assert limiter.try_acquire("k")
    clock.t = 40.0
    await limiter.acquire("k")
    assert clock.sleeps == [1.0]


async def test_a_clock_stepping_back_keeps_a_breaker_open_one_window_not_the_step() -> None:
    clock = SteppingClock(1000.0)
    breaker = ar.CircuitBreaker("svc", failure_threshold=1, recovery_window=10, clock=clock)
    with pytest.raises(Boom):
        await breaker.call(failing)
    clock.t = 500.0  # the clock steps back 500 s while the circuit is open
    with pytest.raises(ar.CircuitOpenError):
        await breaker.call(lambda: "up")
    clock.t = 510.0  # a full window since the step was seen: probed, not refused till 1010
    assert await breaker.call(lambda: "up") == "up"
    assert breaker.state == "closed"


async def test_a_clock_stepping_back_does_not_hold_a_lost_trial_slot_for_the_step() -> None:
    clock = SteppingClock(1000.0)
    breaker = ar.CircuitBreaker(
        "svc", failure_threshold=1, recovery_window=10, trial_timeout=10, clock=clock
    )
    with pytest.raises(Boom):
        breaker.call_sync(failing)
    clock.t = 1010.0
    await breaker.__aenter__()  # a trial that never reports back (its worker was killed)
    assert breaker.state == "half_open"
    clock.t = 600.0
    with pytest.raises(ar.CircuitOpenError):
        breaker.call_sync(lambda: "up")
    clock.t = 610.0  # trial_timeout since the step was seen: its slot is reclaimed
    assert breaker.call_sync(lambda: "up") == "up"
    assert breaker.state == "closed"


async def test_a_shared_breaker_whose_clock_steps_back_reopens_to_probes_after_a_window() -> None:
    clock = SteppingClock(1000.0)
    backend = SlowReplyBackend()
    breaker = ar.CircuitBreaker(
        "svc", failure_threshold=1, recovery_window=10, backend=backend, clock=clock
    )
    with pytest.raises(Boom):
        await breaker.call(failing)
    clock.t = 500.0
    for _ in range(2):
        with pytest.raises(ar.CircuitOpenError):
            await breaker.call(lambda: "up")
    assert breaker.transitions == {"closed->open": 1}
    clock.t = 510.0
    assert await breaker.call(lambda: "up") == "up"
    assert (await breaker.current_state()).status == "closed"


def test_a_shared_breaker_refuses_to_decorate_a_sync_function_at_once() -> None:
    breaker = ar.CircuitBreaker("svc", backend=SlowReplyBackend())
    with pytest.raises(TypeError, match="async API"):

        @breaker
        def fetch() -> str:
            return "data"

    @breaker
    async def fetch_async() -> str:
        return "data"

    assert asyncio.run(fetch_async()) == "data"
