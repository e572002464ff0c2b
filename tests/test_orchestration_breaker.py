import asyncio

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import llm_agent_runtime as ar


class Boom(Exception):
    pass


def failing() -> None:
    raise Boom("down")


def ok() -> str:
    return "ok"


async def test_opens_after_threshold_and_refuses() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", failure_threshold=3, recovery_window=10, clock=clock)
    for _ in range(3):
        with pytest.raises(Boom):
            await breaker.call(failing)
    assert breaker.state == "open"
    calls = []
    with pytest.raises(ar.CircuitOpenError) as info:
        await breaker.call(lambda: calls.append(1))
    assert info.value.service == "svc"
    assert calls == []  # refused without calling


async def test_success_resets_consecutive_failures() -> None:
    breaker = ar.CircuitBreaker("svc", failure_threshold=2, clock=ar.FakeClock())
    with pytest.raises(Boom):
        await breaker.call(failing)
    assert await breaker.call(ok) == "ok"
    with pytest.raises(Boom):
        await breaker.call(failing)
    assert breaker.state == "closed"


async def test_half_open_probe_closes_or_reopens() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", failure_threshold=1, recovery_window=5, clock=clock)
    with pytest.raises(Boom):
        await breaker.call(failing)
    clock.advance(4.9)
    with pytest.raises(ar.CircuitOpenError):
        await breaker.call(ok)
    clock.advance(0.1)
    with pytest.raises(Boom):
        await breaker.call(failing)  # the probe fails: open again, window restarts
    assert breaker.state == "open"
    clock.advance(5)
    assert await breaker.call(ok) == "ok"
    assert breaker.state == "closed"
    assert breaker.transitions == {
        "closed->open": 1,
        "open->half_open": 2,
        "half_open->open": 1,
        "half_open->closed": 1,
    }


async def test_half_open_admits_limited_trials() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", 1, 1, half_open_max_calls=2, clock=clock)
    with pytest.raises(Boom):
        await breaker.call(failing)
    clock.advance(1)
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "done"

    t1 = asyncio.create_task(breaker.call(slow))
    t2 = asyncio.create_task(breaker.call(slow))
    await asyncio.sleep(0)
    with pytest.raises(ar.CircuitOpenError):
        await breaker.call(ok)
    release.set()
    assert await asyncio.gather(t1, t2) == ["done", "done"]
    assert breaker.state == "closed"


async def test_cancelled_trial_frees_its_slot() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", 1, 1, clock=clock)
    with pytest.raises(Boom):
        await breaker.call(failing)
    clock.advance(1)
    task = asyncio.create_task(breaker.call(asyncio.sleep, 100))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await breaker.current_state()).trial_calls == 0
    assert await breaker.call(ok) == "ok"


async def test_context_manager_decorator_and_events() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", 2, 1, clock=clock)
    events: list[ar.CircuitStateChange] = []
    breaker.add_listener(events.append)

    @breaker
    async def async_fail() -> None:
        raise Boom

    @breaker
    def sync_fail() -> None:
        raise Boom

    with pytest.raises(Boom):
        await async_fail()
    with pytest.raises(Boom):
        sync_fail()
    assert breaker.state == "open"
    with pytest.raises(ar.CircuitOpenError):
        async with breaker:
            pass
    assert [(e.old, e.new, e.service) for e in events] == [("closed", "open", "svc")]


async def test_is_failure_predicate_and_validation() -> None:
    breaker = ar.CircuitBreaker(
        "s", 1, clock=ar.FakeClock(), is_failure=lambda e: not isinstance(e, KeyError)
    )
    with pytest.raises(KeyError):
        await breaker.call(lambda: {}["x"])
    assert breaker.state == "closed"
    for bad in ({"failure_threshold": 0}, {"recovery_window": 0}, {"half_open_max_calls": 0}):
        with pytest.raises(ValueError):
            ar.CircuitBreaker("s", **bad)  # type: ignore[arg-type]


async def test_shared_backend_across_breakers() -> None:
    backend = ar.InMemoryCircuitStateBackend()
    clock = ar.FakeClock()
    a = ar.CircuitBreaker("svc", 2, 10, backend=backend, clock=clock)
    b = ar.CircuitBreaker("svc", 2, 10, backend=backend, clock=clock)
    with pytest.raises(Boom):
        await a.call(failing)
    with pytest.raises(Boom):
        await b.call(failing)
    with pytest.raises(ar.CircuitOpenError):
        await a.call(ok)


class BreakerModel(RuleBasedStateMachine):
    """The breaker against a straightforward reference of the same state machine."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = ar.FakeClock()
        self.breaker = ar.CircuitBreaker(
            "m", failure_threshold=3, recovery_window=5, clock=self.clock
        )
        self.status = "closed"
        self.failures = 0
        self.opened_at = 0.0

    def _admit(self) -> bool:
        if self.status == "open" and self.clock.now() - self.opened_at >= 5:
            self.status = "half_open"
            return True
        return self.status == "closed"

    @rule(succeed=st.booleans())
    def call(self, succeed: bool) -> None:
        admitted = self._admit()
        fn = ok if succeed else failing
        try:
            self.breaker.call_sync(fn)
            outcome = "ok"
        except ar.CircuitOpenError:
            outcome = "refused"
        except Boom:
            outcome = "boom"
        if not admitted:
            assert outcome == "refused"
            return
        assert outcome == ("ok" if succeed else "boom")
        if succeed:
            self.status, self.failures = "closed", 0
        elif self.status == "half_open":
            self.status, self.opened_at = "open", self.clock.now()
        else:
            self.failures += 1
            if self.failures >= 3:
                self.status, self.opened_at = "open", self.clock.now()

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 5.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def same_status(self) -> None:
        assert self.breaker.state == self.status


TestBreakerModel = BreakerModel.TestCase
TestBreakerModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
