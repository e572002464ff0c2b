"""Replies that are no answer (redirects, no content, undecodable error bodies) and replies
that never finish arriving, against both providers on the fake server."""

from __future__ import annotations

import time
from typing import Any

import pytest

from llm_agent_runtime import FakeClock, ProviderError, RetryPolicy
from llm_agent_runtime.providers.base import Message

from .conftest import PROVIDERS, make_provider
from .fake_server import FakeLlmServer, Reply, Turn, render_anthropic, render_openai

pytestmark = pytest.mark.parametrize("kind", PROVIDERS)

USER = [Message("user", "hi")]


async def attempt(llm: Any, stream: bool) -> ProviderError:
    """The error one call raises, streamed or not (the test fails if it raises none)."""
    with pytest.raises(ProviderError) as caught:
        if stream:
            [event async for event in llm.chat_stream(USER)]
        else:
            await llm.chat(USER)
    return caught.value


# ---------------------------------------------------------------------- no answer
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "location"),
    [
        (301, "https://example.com/v1/chat/completions"),
        (302, "/elsewhere"),
        (307, "/v2/chat/completions"),
        (308, "https://api.example.com/"),
        (304, None),
    ],
)
async def test_a_redirect_or_other_3xx_is_an_error_with_its_status_and_is_not_retried(
    kind: str,
    stream: bool,
    status: int,
    location: str | None,
    server: FakeLlmServer,
    retry: RetryPolicy,
    clock: FakeClock,
) -> None:
    headers = {"content-type": "text/html"}
    if location is not None:
        headers["location"] = location
    server.script(Reply(status, headers, b"<html>Moved</html>"), Turn("never asked"))
    async with make_provider(kind, server, retry=retry) as llm:
        error = await attempt(llm, stream)
    assert (error.status, error.retryable) == (status, False)
    if location is not None:  # where it points, and that it was not followed
        assert repr(location) in str(error)
        assert "redirects are not followed" in str(error)
    assert "malformed" not in str(error)
    assert len(server.requests) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "headers"),
    [(204, {}), (205, {}), (200, {"content-type": "text/event-stream"})],
)
async def test_a_success_without_a_body_is_malformed_and_not_retried(
    kind: str,
    stream: bool,
    status: int,
    headers: dict[str, str],
    server: FakeLlmServer,
    retry: RetryPolicy,
    clock: FakeClock,
) -> None:
    # The server says there is nothing (204, 205, content-length 0): another attempt gets
    # nothing again. The stream used to be retried ("stream ended before ...").
    server.script(*[Reply(status, headers, b"")] * 3)
    async with make_provider(kind, server, retry=retry) as llm:
        error = await attempt(llm, stream)
    assert (error.status, error.retryable) == (status, False)
    assert "without a body" in str(error)
    assert len(server.requests) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("status", "retryable"), [(400, False), (401, False), (503, True)])
async def test_an_error_body_that_does_not_decode_keeps_its_status(
    kind: str,
    stream: bool,
    status: int,
    retryable: bool,
    server: FakeLlmServer,
    retry: RetryPolicy,
    clock: FakeClock,
) -> None:
    # A gzip header on a plain body: the status still says what failed, and whether to retry.
    broken = Reply(status, {"content-encoding": "gzip"}, b"not gzip at all")
    server.script(broken, broken, broken)
    async with make_provider(kind, server, retry=retry) as llm:
        error = await attempt(llm, stream)
    assert (error.status, error.retryable) == (status, retryable)
    assert "could not be decoded" not in str(error)
    assert len(server.requests) == (3 if retryable else 1)
    assert clock.sleeps == ([1.0, 2.0] if retryable else [])


# ---------------------------------------------------------------------- total time
def trickled_reply(kind: str, interval: float, pieces: int | None = None) -> Reply:
    """A whole (non-streamed) reply sent a few bytes every `interval` seconds.

    Without `pieces`, spaces (which JSON allows before a value) come first, for 4 s, as a
    server that never gets to the point; with it, the reply in that many pieces.
    """
    wire = render_openai if kind == "openai" else render_anthropic
    body = wire(Turn("slow but whole"), False).body
    if pieces is None:
        frames = [b" "] * int(4 / interval) + [body]
    else:
        size = -(-len(body) // pieces)
        frames = [body[i : i + size] for i in range(0, len(body), size)]
    return Reply(
        frames=frames, headers={"content-type": "application/json"}, frame_interval=interval
    )


@pytest.mark.timeout(30)
async def test_a_reply_trickled_past_total_timeout_is_cut_and_retried(
    kind: str, server: FakeLlmServer, clock: FakeClock
) -> None:
    # Each byte comes well within `timeout`: only the bound on the whole attempt ends it.
    server.script(trickled_reply(kind, 0.1), Turn("second attempt"))
    retry = RetryPolicy(max_attempts=2, base_delay=1.0, jitter=False, clock=clock)
    started = time.perf_counter()
    async with make_provider(kind, server, retry=retry, timeout=1.0, total_timeout=0.5) as llm:
        assert await llm.complete("hi") == "second attempt"
    assert time.perf_counter() - started < 2.0  # not the 4 s the first reply takes
    assert len(server.requests) == 2
    assert clock.sleeps == [1.0]

    # The error, when no attempt is left: a timeout, retryable, that names the bound.
    server.script(trickled_reply(kind, 0.1))
    async with make_provider(
        kind, server, retry=RetryPolicy(max_attempts=1), timeout=1.0, total_timeout=0.5
    ) as llm:
        error = await attempt(llm, False)
    assert (error.status, error.retryable) == (None, True)
    assert "timed out" in str(error) and "0.5 s" in str(error) and "total_timeout" in str(error)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("status", [503, 200], ids=["error-status", "not-a-stream"])
async def test_a_body_a_streamed_request_reads_whole_is_cut_at_total_timeout(
    kind: str, status: int, server: FakeLlmServer, clock: FakeClock
) -> None:
    # An error status's body, or a 200 reply that is no event stream, is read whole: trickled
    # a byte at a time, each well within `timeout`, it kept the stream waiting for as long
    # as the server went on (forever, for one that never stops). `chat` cut it; now so does
    # the stream, with the same error.
    body = b'{"error": {"type": "overloaded_error", "message": "busy"}}'
    trickled = Reply(
        status,
        {"content-type": "application/json"},
        frames=[b" "] * 40 + [body],  # 4 s of spaces before the error
        frame_interval=0.1,
    )
    server.script(trickled, Turn("second attempt"))
    retry = RetryPolicy(max_attempts=2, base_delay=1.0, jitter=False, clock=clock)
    started = time.perf_counter()
    async with make_provider(kind, server, retry=retry, timeout=1.0, total_timeout=0.5) as llm:
        assert "".join([piece async for piece in llm.stream("hi")]) == "second attempt"
    assert time.perf_counter() - started < 2.0  # not the 4 s the first body takes
    assert len(server.requests) == 2
    assert clock.sleeps == [1.0]

    # The error, when no attempt is left: the one `chat` raises (a retryable timeout).
    server.script(trickled)
    async with make_provider(
        kind, server, retry=RetryPolicy(max_attempts=1), timeout=1.0, total_timeout=0.5
    ) as llm:
        error = await attempt(llm, True)
    assert (error.status, error.retryable) == (None, True)
    assert "timed out" in str(error) and "0.5 s" in str(error) and "total_timeout" in str(error)


@pytest.mark.timeout(30)
async def test_a_stream_whose_answer_never_starts_is_cut_at_timeout_and_retried(
    kind: str, server: FakeLlmServer, clock: FakeClock
) -> None:
    # A proxy that keeps the request alive with interim `102 Processing` replies (each within
    # `timeout` of the last) and never answers kept the stream waiting for ever: only its
    # body was bounded. `chat` was cut at total_timeout.
    no_answer = Reply(interim_replies=40, frame_interval=0.1)  # 4 s of interim replies
    server.script(no_answer, Turn("second attempt"))
    retry = RetryPolicy(max_attempts=2, base_delay=1.0, jitter=False, clock=clock)
    started = time.perf_counter()
    async with make_provider(kind, server, retry=retry, timeout=0.5, total_timeout=30) as llm:
        assert "".join([piece async for piece in llm.stream("hi")]) == "second attempt"
    assert time.perf_counter() - started < 2.5  # not the 4 s the first reply takes
    assert len(server.requests) == 2
    assert clock.sleeps == [1.0]

    server.script(no_answer)
    async with make_provider(
        kind, server, retry=RetryPolicy(max_attempts=1), timeout=0.5, total_timeout=30
    ) as llm:
        error = await attempt(llm, True)
    assert (error.status, error.retryable) == (None, True)
    assert "timed out: no reply within 0.5 s of the request (timeout)" in str(error)


@pytest.mark.timeout(30)
async def test_a_stream_whose_headers_and_first_event_each_come_within_timeout_is_read(
    kind: str, server: FakeLlmServer
) -> None:
    # The wait for the headers is bounded on its own: it does not eat into the wait for the
    # first event (the two add up to more than `timeout` here).
    wire = render_openai if kind == "openai" else render_anthropic
    reply = wire(Turn("slow start"), True)
    reply.first_byte_delay = 0.35
    reply.frame_interval = 0.2  # a ping and the event after it: 0.4 s without content
    server.script(reply)
    async with make_provider(kind, server, retry=RetryPolicy(max_attempts=1), timeout=0.5) as llm:
        assert "".join([piece async for piece in llm.stream("hi")]) == "slow start"


@pytest.mark.timeout(30)
async def test_a_stream_over_a_transport_that_reports_nothing_is_cut_at_total_timeout(
    kind: str,
) -> None:
    # The wait for the headers began with httpx's report that the request was sent: over a
    # transport that never reports it (a mock, an ASGI app), the stream waited for ever.
    import asyncio

    import httpx

    async def never_answers(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    client = httpx.AsyncClient(transport=httpx.MockTransport(never_answers))
    server = type("Nowhere", (), {"url": "http://nowhere.invalid"})()
    options = {"timeout": 0.2, "connect_timeout": 0.2, "http_client": client}
    started = time.perf_counter()
    async with make_provider(kind, server, retry=RetryPolicy(max_attempts=1), **options) as llm:
        error = await attempt(llm, True)
    assert time.perf_counter() - started < 3  # total_timeout: 0.2 + 2 * 0.2 s
    assert (error.status, error.retryable) == (None, True)
    assert "no reply within 0.6 s in all (total_timeout)" in str(error)
    await client.aclose()


@pytest.mark.timeout(30)
async def test_the_default_total_timeout_is_two_timeouts_and_a_connect_timeout(
    kind: str, server: FakeLlmServer
) -> None:
    once = RetryPolicy(max_attempts=1)
    # Bounds wide apart, so that a loaded machine's delays change no outcome.
    options: dict[str, Any] = {"retry": once, "timeout": 1.0, "connect_timeout": 0.5}
    server.script(trickled_reply(kind, 0.1))
    started = time.perf_counter()
    async with make_provider(kind, server, **options) as llm:
        error = await attempt(llm, False)
    assert 2.4 <= time.perf_counter() - started < 6.0  # cut after 2.5 s (0.5 + 2 * 1.0)
    assert error.retryable is True
    assert "total_timeout" in str(error)
    # A reply that keeps coming and ends within the bound (here in ~0.6 s) is read whole.
    server.script(trickled_reply(kind, 0.1, pieces=6))
    async with make_provider(kind, server, **options) as llm:
        response = await llm.chat(USER)
    assert response.text == "slow but whole"


@pytest.mark.parametrize("total", [0.0, -1.0, float("nan")])
async def test_an_unusable_total_timeout_is_refused(
    kind: str, total: float, server: FakeLlmServer
) -> None:
    with pytest.raises(ValueError, match="timeouts must be > 0"):
        make_provider(kind, server, total_timeout=total)
