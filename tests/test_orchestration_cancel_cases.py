"""Cancellations inside the orchestration primitives: a retried call whose cleanup turned
the caller's cancellation into another error, and a caller of a shared breaker interrupted
as the loop ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest
from test_redis_state import redis_url

import llm_agent_runtime as ar


class _Connection:
    """A request whose cleanup fails once the request was cut (a reset connection)."""

    def __init__(self) -> None:
        self.broken = False

    async def request(self) -> str:
        try:
            await asyncio.sleep(1.0)
            return "reply"
        except asyncio.CancelledError:
            self.broken = True
            raise

    async def close(self) -> None:
        await asyncio.sleep(0)
        if self.broken:
            raise ConnectionError("connection reset by peer")


async def test_a_timeout_turned_into_another_error_by_a_cleanup_is_not_retried() -> None:
    # The policy retried the ConnectionError the cleanup raised: the caller's 0.1 s
    # timeout let the block run on and return the reply after 1.6 s.
    attempts = 0

    async def fetch() -> str:
        nonlocal attempts
        attempts += 1
        connection = _Connection()
        try:
            return await connection.request()
        finally:
            await connection.close()

    policy = ar.RetryPolicy(max_attempts=3, base_delay=0.5, jitter=False)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        async with asyncio.timeout(0.1):
            await policy.run(fetch)
    assert attempts == 1 and time.monotonic() - started < 0.5
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    attempts = 0
    task = asyncio.ensure_future(policy.run(fetch))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(ConnectionError):
        await task
    assert attempts == 1


async def test_a_cancelled_task_group_of_children_failing_as_they_stop_is_not_retried() -> None:
    # Before Python 3.12 the group raises its children's errors, not the cancellation.
    attempts = 0

    async def child() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            raise ConnectionError("child closing")

    async def fan_out() -> None:
        nonlocal attempts
        attempts += 1
        async with asyncio.TaskGroup() as group:
            group.create_task(child())
            await asyncio.sleep(10)

    policy = ar.RetryPolicy(max_attempts=5, base_delay=0.01, retry_on=lambda error: True)
    started = time.monotonic()
    with pytest.raises((TimeoutError, ExceptionGroup)):
        async with asyncio.timeout(0.1):
            await policy.run(fan_out)
    assert attempts == 1 and time.monotonic() - started < 1.0


async def test_a_calls_own_timeout_is_retried_though_the_task_holds_an_old_cancel_count() -> None:
    # Before Python 3.13 a handled TaskGroup failure (CPython gh-116720), like a cancel
    # swallowed without `uncancel`, leaves the count raised: the call's own timeout (whose
    # error follows a CancelledError) was taken for the caller's cancellation, not retried.
    async def failing() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("a fetch failed")

    task = asyncio.current_task()
    assert task is not None
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(failing())
    except* ConnectionError:
        pass
    task.cancel()  # and one swallowed: the count stays raised whatever the version
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0)
    attempts = 0

    async def times_out_twice() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            async with asyncio.timeout(0.01):  # the call's own timeout, not the caller's
                await asyncio.sleep(10)
        return "ok"

    policy = ar.RetryPolicy(max_attempts=3, base_delay=0.001)
    assert await policy.run(times_out_twice) == "ok" and attempts == 3
    while task.cancelling():
        task.uncancel()


async def test_an_error_after_a_cancellation_the_call_handled_itself_is_retried() -> None:
    # A future the call awaited was cancelled (not the caller): its error is the call's.
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            inner = asyncio.ensure_future(asyncio.sleep(10))
            await asyncio.sleep(0)
            inner.cancel()
            try:
                await inner
            except asyncio.CancelledError:
                raise ConnectionError("upstream went away") from None
        return "ok"

    policy = ar.RetryPolicy(max_attempts=3, base_delay=0.0)
    assert await policy.run(flaky) == "ok" and attempts == 3


def test_a_caller_cancelled_as_loop_ends_while_a_shared_breaker_admits_it_gives_the_slot_back() -> (
    None
):
    # Ctrl-C under `asyncio.run` cancels the main task, then every task left: the give-back
    # left to the admission's callback never came (the update was cancelled too), and the
    # trial slot stayed taken, refusing every worker's call until `trial_timeout`.
    url, prefix = redis_url(), f"test:cancel:{uuid.uuid4().hex}:"

    def breaker(backend: ar.RedisCircuitStateBackend) -> ar.CircuitBreaker:
        return ar.CircuitBreaker(
            "svc", failure_threshold=1, recovery_window=0.05, trial_timeout=30.0, backend=backend
        )

    async def open_it() -> None:
        backend = ar.RedisCircuitStateBackend(url, prefix=prefix)
        with pytest.raises(ZeroDivisionError):
            await breaker(backend).call(lambda: 1 / 0)
        await backend.close()

    async def interrupted() -> None:
        backend = ar.RedisCircuitStateBackend(url, prefix=prefix)
        await backend.get("svc")  # connected
        main = asyncio.current_task()
        assert main is not None
        swap = backend._swap  # type: ignore[attr-defined]

        async def swap_then_interrupt(*args: object, **kwargs: object) -> object:
            main.cancel()  # as Ctrl-C would, while the admission is on its way
            return await swap(*args, **kwargs)

        backend._swap = swap_then_interrupt  # type: ignore[attr-defined]
        await breaker(backend).call(lambda: "ok")

    async def after() -> tuple[str, int, str]:
        backend = ar.RedisCircuitStateBackend(url, prefix=prefix)
        try:
            state = await backend.get("svc")
            answer = await breaker(backend).call(lambda: "admitted")
            return state.status, state.trial_calls, answer
        finally:
            keys = await backend.client.keys(prefix + "*")
            if keys:
                await backend.client.delete(*keys)
            await backend.close()

    asyncio.run(open_it())
    time.sleep(0.1)  # past the recovery window: the next call is a trial
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(interrupted())
    assert asyncio.run(after()) == ("half_open", 0, "admitted")


class _NeverReplies:
    """A shared backend whose updates are made, and whose replies never come."""

    def __init__(self) -> None:
        self.inner = ar.InMemoryCircuitStateBackend()

    async def get(self, service: str) -> ar.CircuitState:
        return await self.inner.get(service)

    async def update(self, service: str, change: object) -> object:
        self.inner.update_now(service, change)  # type: ignore[arg-type]
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_cancelled_caller_of_a_backend_that_never_replies_ends_after_a_grace() -> None:
    # It waits to give its slot back, but not for ever: a cancelled call went on as long
    # as the backend took to reply, or hung with one that never did.
    breaker = ar.CircuitBreaker("svc", backend=_NeverReplies())
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await breaker.call(lambda: "never")
    assert 0.1 <= time.monotonic() - started < 1.6
