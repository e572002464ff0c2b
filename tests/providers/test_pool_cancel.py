"""Calls cancelled at any point of their request leave the connection pool usable, and their
cancellation goes on at once. Over loopback HTTP, against the fake server, with a pool of one
connection: httpcore's pool kept a slot taken for good by a request cancelled before it
started on a connection (queued for one, or as a new one opened), so that after
`max_connections` such cancellations every call failed with `PoolTimeout`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from llm_agent_runtime import RetryPolicy
from llm_agent_runtime.providers import _http

from .conftest import PROVIDERS, make_provider
from .fake_server import FakeLlmServer, RecordedRequest, Reply, Turn, render

STALL = 30.0
"""Seconds the server stalls each reply: far past the test, which never waits for one."""


def stalled_reply(where: str) -> Any:
    """A reply that stalls before its headers, or after part of its body."""

    def reply(request: RecordedRequest) -> Reply:
        if where == "headers":
            return Reply(first_byte_delay=STALL)
        whole = render(Turn("never read whole"), request)
        if whole.frames is None:  # a JSON body, sent in two chunks with the stall between
            whole.headers["content-type"] = "application/json"
            whole.frames, whole.body = [whole.body[:10], whole.body[10:]], b""
        whole.pause_after, whole.pause = 1, STALL
        return whole

    return reply


async def call(llm: Any, stream: bool) -> str:
    if stream:
        return "".join([piece async for piece in llm.stream("hi")])
    text: str = await llm.complete("hi")
    return text


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("where", ["headers", "body"])
@pytest.mark.parametrize("pool", ["own", "given"])
async def test_calls_cancelled_anywhere_in_their_request_leave_the_pool_usable(
    kind: str, stream: bool, where: str, pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = httpx.Limits(max_connections=1)  # one slot taken for good fails every call
    client = httpx.AsyncClient(limits=limits) if pool == "given" else None
    monkeypatch.setattr(_http, "DEFAULT_LIMITS_MAX_CONNECTIONS", 1)
    options: dict[str, Any] = {"retry": RetryPolicy(max_attempts=1), "timeout": 1.0}
    slowest = 0.0
    with FakeLlmServer() as server:  # its own: the stalled replies end with it
        server.fallback = stalled_reply(where)
        async with make_provider(kind, server, http_client=client, **options) as llm:
            # Cancelled after each number of event loop passes: as the request waits for a
            # connection, as one opens, as the request is sent, and as the reply stalls.
            for passes in [*range(40), *range(40)]:
                task = asyncio.create_task(call(llm, stream))
                for _ in range(passes):
                    await asyncio.sleep(0)
                task.cancel()
                started = time.perf_counter()
                with pytest.raises(asyncio.CancelledError):
                    await task
                slowest = max(slowest, time.perf_counter() - started)
            server.fallback = Turn("still answered")
            async with asyncio.timeout(5):
                assert await call(llm, stream) == "still answered"
        if client is not None:
            await client.aclose()
    assert slowest < 0.5  # never the stalled server's 30 s, nor the 1 s timeouts


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_calls_cancelled_as_they_wait_for_a_pooled_connection_leave_the_pool_usable(
    kind: str, stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three calls for the one connection, cancelled together: those queued for it too, one
    # of them maybe just given a new connection it has not started on yet.
    monkeypatch.setattr(_http, "DEFAULT_LIMITS_MAX_CONNECTIONS", 1)
    options: dict[str, Any] = {"retry": RetryPolicy(max_attempts=1), "timeout": 1.0}
    slowest = 0.0
    with FakeLlmServer() as server:
        server.fallback = stalled_reply("headers")
        async with make_provider(kind, server, **options) as llm:
            for passes in [*range(20), *range(20)]:
                tasks = [asyncio.create_task(call(llm, stream)) for _ in range(3)]
                for _ in range(passes):
                    await asyncio.sleep(0)
                for task in tasks:
                    task.cancel()
                started = time.perf_counter()
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
                slowest = max(slowest, time.perf_counter() - started)
                assert all(type(outcome) is asyncio.CancelledError for outcome in outcomes)
            server.fallback = Turn("still answered")
            async with asyncio.timeout(5):
                assert await call(llm, stream) == "still answered"
    assert slowest < 0.5
