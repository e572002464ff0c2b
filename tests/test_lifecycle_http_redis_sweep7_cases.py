"""Lifecycles of the HTTP providers and the Redis-backed orchestration state.

Closing a provider while a call is in flight, and tasks of the Redis state cancelled by a
sweep of every task (a shutdown handler's) before their first step.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from providers.conftest import make_provider
from providers.fake_server import FakeLlmServer, Reply, Turn, render_anthropic, render_openai
from test_redis_state import redis_url

import llm_agent_runtime as ar
from llm_agent_runtime import FakeClock, Message, ProviderError, RetryPolicy

PROVIDERS = ["openai", "anthropic"]
USER = [Message("user", "hi")]


@pytest.fixture
def server() -> Iterator[FakeLlmServer]:
    """A server of the test's own: connections another test left closing do not count."""
    with FakeLlmServer() as own:
        yield own


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Waits until `condition()` holds (it settles in another thread or task)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def _cancel_every_other_task() -> None:
    """What a shutdown handler does: cancels every task of the loop but the running one."""
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()


# ---------------------------------------------------------------- a provider closed mid-call


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_call_in_flight_when_its_provider_is_closed_says_so_and_is_not_retried(
    kind: str, server: FakeLlmServer
) -> None:
    # It was retried after a backoff, and failed then as "closed (after 2 attempts ...)":
    # a shutdown waited out the backoff of every call in flight.
    clock = FakeClock()
    retry = RetryPolicy(max_attempts=3, base_delay=1.0, jitter=False, clock=clock)
    server.script(Reply(first_byte_delay=5.0, body=b"{}"))
    llm = make_provider(kind, server, retry=retry)
    call = asyncio.create_task(llm.chat(USER))
    await _until(lambda: len(server.requests) == 1)
    await llm.aclose()
    with pytest.raises(ProviderError, match="closed") as caught:
        await call
    assert not caught.value.retryable
    assert "attempts" not in str(caught.value)
    assert clock.sleeps == []  # no backoff before giving up


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_stream_in_flight_when_its_provider_is_closed_says_so_and_is_not_retryable(
    kind: str, server: FakeLlmServer
) -> None:
    # It failed as "connection failed: ReadError", retryable: a breaker or a retry around
    # it counted the provider's own shutdown as the service failing.
    wire = render_openai if kind == "openai" else render_anthropic
    reply = wire(Turn("one two", text_chunks=["one ", "two"]), True)
    assert reply.frames is not None
    reply.pause_after, reply.pause = len(reply.frames) - 1, 5.0
    server.script(reply)
    llm = make_provider(kind, server, retry=RetryPolicy(max_attempts=1))
    stream = llm.chat_stream(USER)
    try:
        first = await stream.__anext__()
        assert isinstance(first, ar.TextDelta)
        await llm.aclose()
        with pytest.raises(ProviderError, match="closed") as caught:
            async for _ in stream:
                pass
        assert not caught.value.retryable
    finally:
        await stream.aclose()


# ---------------------------------------------------------------- Redis state, swept tasks


@pytest.mark.timeout(60)
async def test_breaker_updates_go_on_after_a_sweep_cancelled_the_writer_before_it_started() -> None:
    # The task writing a service's updates, cancelled before its first step, never ran
    # the `finally` that forgets it: every later update of that service on the loop
    # waited for it, for ever (a breaker's calls hung).
    prefix = f"sweep7:{os.getpid()}:{time.time_ns()}:"
    backend = ar.RedisCircuitStateBackend(redis_url(), prefix=prefix)
    try:
        first = asyncio.create_task(backend.update("svc", lambda state: state))
        await asyncio.sleep(0)  # `first` queued its change and made the writer, not run yet
        _cancel_every_other_task()
        async with asyncio.timeout(10):
            old, new = await backend.update("svc", lambda state: state)
        assert old == new
        assert first.cancelled()
        assert backend._writers == {} and backend._pending == {}
    finally:
        await backend.client.delete(prefix + "svc")
        await backend.close()


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("task_factory")
async def test_an_update_made_after_a_sweep_cancelled_the_writer_as_it_wrote_is_written() -> None:
    # The writer, cancelled by a sweep of every task (a shutdown handler's) as it wrote,
    # cancelled the updates queued after its write too: the sweeping task's own, which no
    # one cancelled, ended in CancelledError.
    prefix = f"sweep7:{os.getpid()}:{time.time_ns()}:"
    backend = ar.RedisCircuitStateBackend(redis_url(), prefix=prefix)
    await backend.get("svc")  # a pooled connection, as in a running application
    try:
        first = asyncio.create_task(backend.update("svc", lambda state: state))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the writer has sent its read
        _cancel_every_other_task()
        async with asyncio.timeout(10):
            old, new = await backend.update("svc", lambda state: state)
        assert old == new
        assert first.cancelled()
        assert backend._writers == {} and backend._pending == {}
    finally:
        await backend.client.delete(prefix + "svc")
        await backend.close()


@pytest.mark.timeout(60)
async def test_a_run_swept_as_it_publishes_gives_its_lease_back() -> None:
    # The publishing command, cancelled with its runner (before its first step), left the
    # lease taken: every caller of the key waited it out.
    prefix = f"sweep7:{os.getpid()}:{time.time_ns()}:"
    dedup = ar.RedisDeduplicator(redis_url(), ttl=60, lease=60, prefix=prefix, namespace="n")
    loop = asyncio.get_running_loop()

    def compute() -> int:
        loop.call_soon(_cancel_every_other_task)  # runs before the publication's first step
        return 1

    try:
        runner = asyncio.create_task(dedup.run("key", compute))
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert await dedup.client.get(dedup.redis_keys("key")[1]) is None
        assert await dedup.run("key", lambda: 2) == 2  # at once: no lease to wait out
    finally:
        await dedup.client.delete(*dedup.redis_keys("key"))
        await dedup.close()


@pytest.mark.timeout(60)
async def test_a_claim_swept_in_flight_gives_back_the_lease_it_took() -> None:
    # The claim command, cancelled by the sweep while its reply was on the way, may have
    # taken the lease: it was kept, and every caller of the key waited it out.
    prefix = f"sweep7:{os.getpid()}:{time.time_ns()}:"
    dedup = ar.RedisDeduplicator(redis_url(), ttl=60, lease=60, prefix=prefix, namespace="n")
    sent = asyncio.Event()
    claim = dedup._claim

    async def slow_claim(**kwargs: Any) -> Any:
        reply = await claim(**kwargs)
        sent.set()
        await asyncio.sleep(10)  # the reply is on its way: the lease is taken
        return reply

    dedup._claim = slow_claim
    try:
        runner = asyncio.create_task(dedup.run("key", lambda: 1))
        await sent.wait()
        _cancel_every_other_task()
        with pytest.raises(asyncio.CancelledError):
            await runner
        dedup._claim = claim
        assert await dedup.client.get(dedup.redis_keys("key")[1]) is None
    finally:
        dedup._claim = claim
        await dedup.client.delete(*dedup.redis_keys("key"))
        await dedup.close()
