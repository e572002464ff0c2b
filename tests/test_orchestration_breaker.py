import asyncio
import contextlib
import itertools
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

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


class CountingBackend(ar.InMemoryCircuitStateBackend):
    """A state backend that is falsy while it holds no state (it has `__len__`)."""

    def __len__(self) -> int:
        return len(self._states)


@pytest.mark.parametrize("backend_type", [ar.InMemoryCircuitStateBackend, CountingBackend])
async def test_shared_backend_across_breakers(backend_type: type) -> None:
    # A falsy backend was replaced by a breaker's own: the breakers shared nothing.
    backend = backend_type()
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


# -- calls that outlive the state they were admitted in ----------------------------------------


class Gate:
    """An async call that runs until released (or cancelled), then returns or raises."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.error: BaseException | None = None

    async def __call__(self) -> str:
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return "late"


@pytest.mark.parametrize("failures_before", [0, 1])
async def test_stale_success_does_not_close_an_open_circuit(failures_before: int) -> None:
    # failures_before=0 admits the slow call on the fast path (closed, nothing counted), 1 on
    # the slow path: both must leave an open circuit open.
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", failure_threshold=2, recovery_window=10, clock=clock)
    for _ in range(failures_before):
        with pytest.raises(Boom):
            await breaker.call(failing)
    gate = Gate()
    slow = asyncio.create_task(breaker.call(gate))
    await asyncio.sleep(0)
    for _ in range(2 - failures_before):
        with pytest.raises(Boom):
            await breaker.call(failing)
    assert breaker.state == "open"
    gate.release.set()
    assert await slow == "late"
    assert breaker.state == "open"  # it was admitted before the circuit opened: no probe
    with pytest.raises(ar.CircuitOpenError):
        await breaker.call(ok)
    assert breaker.transitions == {"closed->open": 1}


async def test_only_a_trial_success_closes_a_half_open_circuit() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", failure_threshold=2, recovery_window=10, clock=clock)
    with pytest.raises(Boom):
        await breaker.call(failing)
    stale, trial = Gate(), Gate()
    stale_task = asyncio.create_task(breaker.call(stale))  # admitted while closed
    await asyncio.sleep(0)
    with pytest.raises(Boom):
        await breaker.call(failing)
    clock.advance(10)
    trial_task = asyncio.create_task(breaker.call(trial))  # the one trial call
    await asyncio.sleep(0)
    assert (await breaker.current_state()).trial_calls == 1
    stale.release.set()
    assert await stale_task == "late"
    assert breaker.state == "half_open"  # the stale success is no probe
    with pytest.raises(ar.CircuitOpenError):
        await breaker.call(ok)  # and the trial slot is still taken
    trial.release.set()
    assert await trial_task == "late"
    assert breaker.state == "closed"


@pytest.mark.parametrize("ending", ["cancelled", "not a failure"])
async def test_a_stale_call_frees_no_trial_slot(ending: str) -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker(
        "svc",
        failure_threshold=1,
        recovery_window=10,
        half_open_max_calls=1,
        clock=clock,
        is_failure=lambda e: not isinstance(e, KeyError),
    )
    stale, trial = Gate(), Gate()
    stale_task = asyncio.create_task(breaker.call(stale))  # admitted while closed
    await asyncio.sleep(0)
    with pytest.raises(Boom):
        await breaker.call(failing)
    clock.advance(10)
    trial_task = asyncio.create_task(breaker.call(trial))
    await asyncio.sleep(0)
    if ending == "cancelled":
        stale_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stale_task
    else:
        stale.error = KeyError("not the service's fault")
        stale.release.set()
        with pytest.raises(KeyError):
            await stale_task
    assert (await breaker.current_state()).trial_calls == 1
    extra = []
    with pytest.raises(ar.CircuitOpenError):
        await breaker.call(lambda: extra.append(1))
    assert extra == []
    trial.release.set()
    assert await trial_task == "late"
    assert breaker.state == "closed"


async def test_a_trial_of_an_earlier_half_open_period_frees_no_slot_of_this_one() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", 1, 10, half_open_max_calls=2, clock=clock)
    with pytest.raises(Boom):
        await breaker.call(failing)
    clock.advance(10)
    old_trial = Gate()
    old_task = asyncio.create_task(breaker.call(old_trial))  # trial of the first period
    await asyncio.sleep(0)
    with pytest.raises(Boom):
        await breaker.call(failing)  # the other trial fails: open again
    clock.advance(10)
    new_trials = [Gate(), Gate()]
    new_tasks = [asyncio.create_task(breaker.call(g)) for g in new_trials]
    await asyncio.sleep(0)
    assert (await breaker.current_state()).trial_calls == 2
    old_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await old_task
    assert (await breaker.current_state()).trial_calls == 2
    with pytest.raises(ar.CircuitOpenError):
        await breaker.call(ok)
    old_trial.release.set()
    for gate in new_trials:
        gate.release.set()
    assert await asyncio.gather(*new_tasks) == ["late", "late"]
    assert breaker.state == "closed"


async def test_context_manager_tracks_trial_slots_per_block() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", failure_threshold=1, recovery_window=10, clock=clock)
    entered = asyncio.Event()
    stay = asyncio.Event()

    async def stale_block() -> None:
        async with breaker:  # entered while closed
            entered.set()
            await stay.wait()

    stale_task = asyncio.create_task(stale_block())
    await entered.wait()
    with pytest.raises(Boom):
        async with breaker:
            raise Boom
    clock.advance(10)
    async with breaker:  # the trial
        assert breaker.state == "half_open"
        stale_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stale_task
        assert (await breaker.current_state()).trial_calls == 1  # its slot is still held
        with pytest.raises(ar.CircuitOpenError):
            async with breaker:
                pass
    assert breaker.state == "closed"  # the trial's success closed it


async def test_a_success_resets_failures_counted_while_it_ran() -> None:
    # The call starts on the fast path; a failure is counted while it runs; its success
    # ends the run of consecutive failures.
    breaker = ar.CircuitBreaker("svc", failure_threshold=2, clock=ar.FakeClock())
    gate = Gate()
    slow = asyncio.create_task(breaker.call(gate))
    await asyncio.sleep(0)
    with pytest.raises(Boom):
        await breaker.call(failing)
    gate.release.set()
    assert await slow == "late"
    assert (await breaker.current_state()).failures == 0
    with pytest.raises(Boom):
        await breaker.call(failing)
    assert breaker.state == "closed"


@pytest.mark.parametrize(
    "bad",
    [
        {"failure_threshold": float("nan")},
        {"failure_threshold": float("inf")},
        {"recovery_window": float("nan")},
        {"recovery_window": float("inf")},
        {"recovery_window": -1.0},
        {"half_open_max_calls": float("nan")},
        {"half_open_max_calls": float("inf")},
    ],
)
def test_nan_and_infinite_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ar.CircuitBreaker("s", **bad)  # type: ignore[arg-type]


# -- time is compared as the clock computes it --------------------------------------------------


@pytest.mark.parametrize(("opened_at", "window"), [(0.7, 0.1), (3.3, 0.3)])
async def test_a_trial_is_admitted_exactly_recovery_window_after_opening(
    opened_at: float, window: float
) -> None:
    clock = ar.FakeClock(opened_at)
    breaker = ar.CircuitBreaker("svc", failure_threshold=1, recovery_window=window, clock=clock)
    with pytest.raises(Boom):
        await breaker.call(failing)
    await clock.sleep(window)  # now is opened_at + window, whose difference rounds below window
    assert clock.now() - opened_at < window
    assert await breaker.call(ok) == "ok"  # the trial call, admitted
    assert breaker.state == "closed"


async def test_trial_slots_are_reclaimed_exactly_trial_timeout_after_the_last_trial() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker(
        "svc", failure_threshold=1, recovery_window=0.7, trial_timeout=0.1, clock=clock
    )
    with pytest.raises(Boom):
        await breaker.call(failing)
    await clock.sleep(0.7)
    async with breaker:  # the trial, admitted at 0.7, holds the only slot
        await clock.sleep(0.1)  # 0.7 + 0.1, whose difference with 0.7 rounds below 0.1
        assert clock.now() - 0.7 < 0.1
        assert await breaker.call(ok) == "ok"  # reclaims the slot: a new round of trials
        assert breaker.state == "closed"
    assert breaker.state == "closed"


async def test_an_argument_named_fn_is_passed_through() -> None:
    breaker = ar.CircuitBreaker("svc")

    def apply(fn: str) -> str:
        return f"applied {fn}"

    assert await breaker.call(apply, fn="x") == "applied x"
    assert breaker.call_sync(apply, fn="y") == "applied y"
    with pytest.raises(Boom):
        await breaker.call(failing)  # a failure counted: the calls below take the slow path
    assert await breaker.call(apply, fn="x") == "applied x"
    with pytest.raises(Boom):
        await breaker.call(failing)
    assert breaker.call_sync(apply, fn="y") == "applied y"


# -- a half-open circuit always recovers ------------------------------------------------------


@pytest.mark.parametrize("trial_timeout", [None, 3.0])
async def test_a_lost_trial_slot_is_reclaimed_after_trial_timeout(
    trial_timeout: float | None,
) -> None:
    # Two breakers share one state, as two worker processes would; the first is admitted as
    # the trial call and never reports back (its worker was killed).
    clock = ar.FakeClock()
    backend = ar.InMemoryCircuitStateBackend()
    settings: dict[str, Any] = {"backend": backend, "clock": clock}
    if trial_timeout is not None:
        settings["trial_timeout"] = trial_timeout
    dead = ar.CircuitBreaker("svc", failure_threshold=1, recovery_window=10, **settings)
    alive = ar.CircuitBreaker("svc", failure_threshold=1, recovery_window=10, **settings)
    timeout = 10.0 if trial_timeout is None else trial_timeout
    with pytest.raises(Boom):
        await alive.call(failing)
    clock.advance(10)
    await dead.__aenter__()  # the trial, lost
    assert (await alive.current_state()).trial_calls == 1
    clock.advance(timeout - 0.5)
    with pytest.raises(ar.CircuitOpenError):
        await alive.call(ok)  # the trial may still be running
    clock.advance(0.5)
    gate = Gate()
    probe = asyncio.create_task(alive.call(gate))  # reclaims the slot: a new round of trials
    await asyncio.sleep(0)
    assert not probe.done()  # admitted, not refused
    state = await alive.current_state()
    assert (state.status, state.trial_calls, state.trial_round) == ("half_open", 1, 1)
    await dead.__aexit__(None, None, None)  # the lost trial's verdict no longer counts
    assert await alive.current_state() == state
    gate.release.set()
    assert await probe == "late"
    assert alive.state == "closed"


async def test_a_trial_of_a_reclaimed_round_does_not_decide_by_failing() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", failure_threshold=1, recovery_window=10, clock=clock)
    with pytest.raises(Boom):
        await breaker.call(failing)
    clock.advance(10)
    lost, probe = Gate(), Gate()
    lost_task = asyncio.create_task(breaker.call(lost))  # the trial of round 0, very slow
    await asyncio.sleep(0)
    clock.advance(10)
    probe_task = asyncio.create_task(breaker.call(probe))  # reclaims: round 1
    await asyncio.sleep(0)
    lost.error = Boom("late")
    lost.release.set()
    with pytest.raises(Boom):
        await lost_task
    assert breaker.state == "half_open"  # the current round's trial decides
    probe.release.set()
    assert await probe_task == "late"
    assert breaker.state == "closed"


async def test_a_listener_that_raises_breaks_neither_admission_nor_the_state_machine(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", failure_threshold=1, recovery_window=5, clock=clock)
    seen: list[str] = []

    def flaky_alert(event: ar.CircuitStateChange) -> None:
        raise RuntimeError(f"alerting webhook down ({event.new})")

    breaker.add_listener(flaky_alert)
    breaker.add_listener(lambda event: seen.append(f"{event.old}->{event.new}"))
    with caplog.at_level(logging.ERROR, logger="llm_agent_runtime"):
        with pytest.raises(Boom):
            await breaker.call(failing)
        clock.advance(5)
        assert await breaker.call(ok) == "ok"  # the trial runs although a listener failed
        assert breaker.call_sync(ok) == "ok"
    assert breaker.state == "closed"
    assert seen == ["closed->open", "open->half_open", "half_open->closed"]
    logged = [
        str(r.exc_info[1])
        for r in caplog.records
        if "state-change listener" in r.getMessage() and r.exc_info
    ]
    assert logged == [f"alerting webhook down ({new})" for new in ("open", "half_open", "closed")]


class FlakyBackend:
    """An in-process state behind the generic (shared-backend) path; updates fail on demand."""

    def __init__(self) -> None:
        self.inner = ar.InMemoryCircuitStateBackend()
        self.fail_next = 0
        self.hold: asyncio.Event | None = None  # when set, updates wait for it...
        self.waiting = asyncio.Event()  # ...and say so here

    async def get(self, service: str) -> ar.CircuitState:
        return await self.inner.get(service)

    async def update(
        self, service: str, change: Callable[[ar.CircuitState], ar.CircuitState]
    ) -> tuple[ar.CircuitState, ar.CircuitState]:
        await asyncio.sleep(0)
        if self.hold is not None:
            self.waiting.set()
            await self.hold.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise ar.PersistenceError("Redis: Connection closed by server.")
        return await self.inner.update(service, change)


async def test_a_failed_outcome_update_changes_neither_the_result_nor_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ar.FakeClock()
    backend = FlakyBackend()
    breaker = ar.CircuitBreaker(
        "svc", failure_threshold=1, recovery_window=10, backend=backend, clock=clock
    )
    charged: list[str] = []

    async def charge_card() -> str:
        charged.append("charged")
        backend.fail_next = 1  # the store fails while the call runs
        return "receipt-123"

    async def card_declined() -> None:
        backend.fail_next = 1
        raise Boom("declined")

    with caplog.at_level(logging.WARNING, logger="llm_agent_runtime"):
        assert await breaker.call(charge_card) == "receipt-123"
        with pytest.raises(Boom, match="declined"):
            await breaker.call(card_declined)
        async with breaker:
            backend.fail_next = 1
        assert breaker.record_errors == 3
        assert sum("could not record" in r.getMessage() for r in caplog.records) == 3
        # A failed trial's outcome is lost too; its slot comes back after trial_timeout.
        with pytest.raises(Boom):
            await breaker.call(failing)
        clock.advance(10)
        assert await breaker.call(charge_card) == "receipt-123"  # the trial; not recorded
    assert (await breaker.current_state()).trial_calls == 1
    with pytest.raises(ar.CircuitOpenError):
        await breaker.call(ok)
    clock.advance(10)
    assert await breaker.call(ok) == "ok"
    assert (await breaker.current_state()).status == "closed"
    assert breaker.record_errors == 4


async def test_a_cancelled_caller_does_not_cancel_the_outcome_update() -> None:
    clock = ar.FakeClock()
    backend = FlakyBackend()
    breaker = ar.CircuitBreaker(
        "svc", failure_threshold=1, recovery_window=10, backend=backend, clock=clock
    )
    with pytest.raises(Boom):
        await breaker.call(failing)
    clock.advance(10)
    gate = Gate()
    trial = asyncio.create_task(breaker.call(gate))
    while (await breaker.current_state()).trial_calls == 0:
        await asyncio.sleep(0)
    backend.hold = asyncio.Event()
    gate.release.set()
    await backend.waiting.wait()  # the call has returned; the update closing the circuit waits
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    backend.hold.set()
    await asyncio.sleep(0.01)
    assert (await breaker.current_state()).status == "closed"
    assert breaker.transitions["half_open->closed"] == 1


def test_call_sync_resets_failures_counted_while_it_ran() -> None:
    # As `call` does (test_a_success_resets_failures_counted_while_it_ran), from threads.
    breaker = ar.CircuitBreaker("svc", failure_threshold=2, recovery_window=60)
    started, release = threading.Event(), threading.Event()

    def slow_ok() -> str:
        started.set()
        release.wait(10)
        return "ok"

    results: list[str] = []
    worker = threading.Thread(target=lambda: results.append(breaker.call_sync(slow_ok)))
    worker.start()
    assert started.wait(10)  # admitted on the fast path
    with pytest.raises(Boom):
        breaker.call_sync(failing)
    release.set()
    worker.join(10)
    assert results == ["ok"]
    assert breaker._local is not None and breaker._local.peek("svc").failures == 0
    with pytest.raises(Boom):
        breaker.call_sync(failing)
    assert breaker.state == "closed"  # one failure since the last success


async def test_a_stale_failure_does_not_decide_a_half_open_circuit() -> None:
    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", failure_threshold=2, recovery_window=10, clock=clock)
    stale, probe = Gate(), Gate()
    stale_task = asyncio.create_task(breaker.call(stale))  # admitted while closed
    await asyncio.sleep(0)
    for _ in range(2):
        with pytest.raises(Boom):
            await breaker.call(failing)
    clock.advance(10)
    probe_task = asyncio.create_task(breaker.call(probe))  # the trial
    await asyncio.sleep(0)
    stale.error = TimeoutError("a request admitted long ago timed out")
    stale.release.set()
    with pytest.raises(TimeoutError):
        await stale_task
    assert breaker.state == "half_open"  # not reopened: the probe decides
    assert (await breaker.current_state()).trial_calls == 1
    probe.release.set()
    assert await probe_task == "late"
    assert breaker.state == "closed"
    assert breaker.transitions == {"closed->open": 1, "open->half_open": 1, "half_open->closed": 1}


@pytest.mark.parametrize("failures_before", [0, 1])
async def test_a_call_from_before_an_outage_changes_nothing_once_recovered(
    failures_before: int,
) -> None:
    # A slow call admitted while closed ends after the circuit opened and closed again: its
    # failure must not reopen the recovered circuit, nor its success reset failures counted
    # since. failures_before=0 admits it on the fast path, 1 on the slow path.
    clock = ar.FakeClock()  # the outage opens at clock time 0.0, as a fresh state reads
    breaker = ar.CircuitBreaker("svc", failure_threshold=2, recovery_window=10, clock=clock)
    for _ in range(failures_before):
        with pytest.raises(Boom):
            await breaker.call(failing)
    failing_late, succeeding_late = Gate(), Gate()
    failing_late.error = Boom("failed before the outage")
    late = [asyncio.create_task(breaker.call(gate)) for gate in (failing_late, succeeding_late)]
    await asyncio.sleep(0)
    for _ in range(2 - failures_before):
        with pytest.raises(Boom):
            await breaker.call(failing)
    assert breaker.state == "open"
    clock.advance(10)
    assert await breaker.call(lambda: "probe") == "probe"
    assert breaker.state == "closed"
    with pytest.raises(Boom):
        await breaker.call(failing)  # one failure counted after the recovery
    failing_late.release.set()
    with pytest.raises(Boom):
        await late[0]
    assert breaker.state == "closed"
    assert (await breaker.current_state()).failures == 1
    succeeding_late.release.set()
    assert await late[1] == "late"
    assert (await breaker.current_state()).failures == 1  # not reset by a stale success
    assert breaker.transitions == {"closed->open": 1, "open->half_open": 1, "half_open->closed": 1}
    with pytest.raises(Boom):
        await breaker.call(failing)  # the second failure since the recovery opens it
    assert breaker.state == "open"


def test_threads_report_state_changes_in_the_order_they_happened() -> None:
    breaker = ar.CircuitBreaker("svc", failure_threshold=1, recovery_window=1e-4)
    seen: list[tuple[str, str]] = []
    breaker.add_listener(lambda change: seen.append((change.old, change.new)))

    def hammer(seed: int) -> None:
        for i in range(2000):
            with contextlib.suppress(Boom, ar.CircuitOpenError):
                breaker.call_sync(failing if (i + seed) % 3 else (lambda: None))

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: between a change and its report too
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert seen, "the breaker never changed state"
    # Each change starts where the one before ended, and the last ends on the state.
    assert all(before[1] == after[0] for before, after in itertools.pairwise(seen))
    assert seen[-1][1] == breaker.state


async def test_a_policy_refusal_inside_a_guarded_call_is_not_a_service_failure() -> None:
    breaker = ar.CircuitBreaker("svc", failure_threshold=1)

    def refused() -> None:
        raise ar.BudgetExceededError("token budget spent")

    def denied() -> None:
        raise ar.PolicyDeniedError("not allowed")

    for call in (refused, denied):
        with pytest.raises(ar.AgentRuntimeError):
            await breaker.call(call)
    assert breaker.state == "closed"
    with pytest.raises(Boom):
        await breaker.call(failing)
    assert breaker.state == "open"


async def test_a_policy_refusal_in_a_group_or_a_pipeline_stage_is_not_a_service_failure() -> None:
    # Only a refusal raised bare was told apart: sub-agents refused in a TaskGroup, or a
    # pipeline stage's refusal, opened the circuit of a healthy tool.
    breaker = ar.CircuitBreaker("svc", failure_threshold=1)

    async def sub_agents() -> None:
        async def refused() -> None:
            raise ar.BudgetExceededError("token budget spent")

        async with asyncio.TaskGroup() as group:
            group.create_task(refused())
            group.create_task(refused())

    def denied_stage(value: int) -> int:
        raise ar.PolicyDeniedError("not allowed")

    pipeline = ar.Pipeline(("check", denied_stage))

    async def staged_sub_agents() -> None:  # a stage's refusal inside a group
        async with asyncio.TaskGroup() as group:
            group.create_task(pipeline.run(1))

    with pytest.raises(ExceptionGroup):
        await breaker.call(sub_agents)
    with pytest.raises(ar.PipelineStageError):
        await breaker.call(pipeline.run, 1)
    with pytest.raises(ExceptionGroup):
        await breaker.call(staged_sub_agents)
    assert breaker.state == "closed"
    # A service's failure beside a refusal says something of its health: it counts.
    mixed = ExceptionGroup("mixed", [Boom(), ar.PolicyDeniedError("no")])
    with pytest.raises(ExceptionGroup):
        await breaker.call(_raiser(mixed))
    assert breaker.state == "open"
    # The same reading: a retry never repeats a refusal in a group.
    policy = ar.RetryPolicy(max_attempts=3, retry_on=lambda error: True)
    assert not policy.should_retry(mixed)
    assert policy.should_retry(ExceptionGroup("failed", [Boom()]))


def _raiser(error: BaseException) -> Callable[[], None]:
    def raise_it() -> None:
        raise error

    return raise_it


async def test_a_block_in_an_async_generator_closed_by_its_loop_closes_quietly() -> None:
    # The loop closes an async generator left open in a task of its own (another context):
    # its block's exit finds no admission there, and records nothing (it raised before).
    breaker = ar.CircuitBreaker("llm")
    errors: list[dict[str, Any]] = []

    async def stream() -> Any:
        async with breaker:
            yield "one"
            yield "two"

    async def read_one() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        pieces = stream()
        async for _ in pieces:
            break
        held.append(pieces)  # left open, to the loop's shutdown

    held: list[Any] = []
    await asyncio.to_thread(asyncio.run, read_one())
    assert errors == [] and breaker.state == "closed"


@pytest.mark.parametrize(
    "bad",
    [
        {"failure_threshold": 1.5},
        {"failure_threshold": 2.0},
        {"failure_threshold": True},
        {"failure_threshold": "3"},
        {"half_open_max_calls": 1.5},
        {"half_open_max_calls": True},
        {"trial_timeout": 0.0},
        {"trial_timeout": float("nan")},
        {"trial_timeout": float("inf")},
    ],
)
def test_non_integer_counts_and_bad_trial_timeouts_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ar.CircuitBreaker("s", **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("is_failure", ["ConnectionError", ConnectionError(), 1])
def test_an_is_failure_that_is_not_callable_is_refused_at_construction(is_failure: object) -> None:
    # Accepted, it failed at every error, so every error counted: `is_failure` did nothing.
    with pytest.raises(TypeError, match="is_failure must be callable"):
        ar.CircuitBreaker("s", is_failure=is_failure)  # type: ignore[arg-type]


async def test_a_broken_is_failure_predicate_does_not_replace_the_calls_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(error: BaseException) -> bool:
        raise RuntimeError("bug in the predicate")

    breaker = ar.CircuitBreaker("svc", failure_threshold=1, clock=ar.FakeClock(), is_failure=broken)
    with caplog.at_level(logging.ERROR, logger="llm_agent_runtime"), pytest.raises(Boom):
        await breaker.call(failing)
    assert breaker.state == "open"  # counted as a failure, as without a predicate
    assert any("is_failure raised" in r.getMessage() for r in caplog.records)


class _LoggingBackend(ar.InMemoryCircuitStateBackend):
    """An in-process backend of an application's own, logging each state change."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[tuple[str, str]] = []

    async def update(self, service: str, change: Callable[[Any], Any]) -> tuple[Any, Any]:
        old, new = await super().update(service, change)
        if new.status != old.status:
            self.changes.append((old.status, new.status))
        return old, new


async def test_a_subclassed_in_memory_backend_is_called_through_its_own_methods() -> None:
    # The in-process fast path read and wrote the base class's dict directly: a subclass's
    # `update` (logging, say) was never called.
    backend = _LoggingBackend()
    breaker = ar.CircuitBreaker("svc", failure_threshold=1, backend=backend)

    async def fail() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await breaker.call(fail)
    assert backend.changes == [("closed", "open")]
    # A backend whose methods are the base class's keeps the fast path, sync calls included.
    plain = ar.CircuitBreaker("svc", backend=type("Named", (ar.InMemoryCircuitStateBackend,), {})())
    assert plain.call_sync(lambda: 7) == 7


async def test_a_decorated_sync_function_returning_an_awaitable_is_awaited_under_the_breaker() -> (
    None
):
    # Every call raised TypeError ("call_sync needs a sync callable") and counted as a
    # failure, opening the circuit for the service's other calls, while the work the
    # returned task started ran all the same.
    done: list[str] = []

    async def fetch(query: str) -> str:
        await asyncio.sleep(0)
        if query == "bad":
            raise ConnectionError("down")
        done.append(query)
        return f"results for {query}"

    clock = ar.FakeClock()
    breaker = ar.CircuitBreaker("svc", failure_threshold=2, recovery_window=10, clock=clock)
    as_task = breaker(lambda query: asyncio.ensure_future(fetch(query)))
    as_coroutine = breaker(lambda query: fetch(query))
    for call in (as_task, as_coroutine):
        assert await call("q") == "results for q"
        assert breaker.state == "closed"
    assert done == ["q", "q"]
    for _ in range(2):  # the awaited outcome is the call's
        with pytest.raises(ConnectionError):
            await as_coroutine("bad")
    assert breaker.state == "open"
    with pytest.raises(ar.CircuitOpenError):
        as_coroutine("q")  # refused before the function is called
    clock.advance(10)
    trial = as_coroutine("q")  # the half-open trial is decided when it is awaited
    assert breaker.state == "half_open"
    assert await trial == "results for q"
    assert breaker.state == "closed"
    # `call_sync` still refuses an awaitable, as its docs say.
    other = ar.CircuitBreaker("other")
    with pytest.raises(TypeError, match="call_sync needs a sync callable"):
        other.call_sync(lambda: fetch("q"))
