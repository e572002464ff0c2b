"""Every fault of the fake server, against both providers, with its exact outcome."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import math
import re
import socket
import time
import zlib
from types import SimpleNamespace
from typing import Any

import pytest

from llm_agent_runtime import FakeClock, ProviderError, RetryPolicy
from llm_agent_runtime.providers import _http
from llm_agent_runtime.providers.base import (
    Message,
    StreamEnd,
    TextDelta,
    UnreadableArgumentsError,
)

from .conftest import PROVIDERS, make_provider
from .fake_server import (
    FakeLlmServer,
    Reply,
    Turn,
    anthropic_error_event,
    anthropic_event,
    openai_error_event,
    render_anthropic,
    render_openai,
    sse,
)

pytestmark = pytest.mark.parametrize("kind", PROVIDERS)

HELLO = Turn("Hello there, how are you?", text_chunks=["Hello", " there,", " how are you?"])
# Index of the first frame after the first text delta, per wire format.
AFTER_FIRST_DELTA = {"openai": 2, "anthropic": 4}
ERROR_BODY = b'{"error": {"type": "server_error", "message": "try again"}}'


def streamed(kind: str, turn: Turn = HELLO) -> Reply:
    return render_openai(turn, True) if kind == "openai" else render_anthropic(turn, True)


def error_event(kind: str) -> bytes:
    if kind == "openai":
        return openai_error_event("upstream failed", "server_error")
    return anthropic_error_event("Overloaded", "overloaded_error")


async def collect(stream: Any) -> tuple[list[Any], ProviderError | None]:
    """Reads a stream to its end or its error, failing the test if it hangs."""
    events: list[Any] = []

    async def read() -> None:
        async for event in stream:
            events.append(event)

    try:
        await asyncio.wait_for(read(), timeout=10)
    except ProviderError as error:
        return events, error
    return events, None


def texts(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


USER = [Message("user", "hi")]


# ---------------------------------------------------------------------- status errors
@pytest.mark.parametrize("stream", [False, True])
async def test_429_waits_the_retry_after_seconds(
    kind: str, stream: bool, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    server.script(Reply(429, {"retry-after": "7"}, ERROR_BODY), Turn("ok"))
    async with make_provider(kind, server, retry=retry) as llm:
        if stream:
            assert [piece async for piece in llm.stream("hi")] == ["ok"]
        else:
            assert await llm.complete("hi") == "ok"
    assert [r.streamed for r in server.requests] == [stream, stream]
    assert clock.sleeps == [7.0]


async def test_retry_after_ms_and_http_date(
    kind: str, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    server.script(
        Reply(429, {"retry-after-ms": "1500"}, ERROR_BODY),
        Reply(503, {"retry-after": date}, ERROR_BODY),
        Turn("ok"),
    )
    async with make_provider(kind, server, retry=retry) as llm:
        assert await llm.complete("hi") == "ok"
    assert len(server.requests) == 3
    assert clock.sleeps[0] == 1.5
    assert 28.0 <= clock.sleeps[1] <= 30.0


async def test_5xx_backs_off_then_succeeds(
    kind: str, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    server.script(Reply(500, body=ERROR_BODY), Reply(529, body=ERROR_BODY), Turn("ok"))
    async with make_provider(kind, server, retry=retry) as llm:
        response = await llm.chat(USER)
    assert response.text == "ok"
    assert len(server.requests) == 3
    assert clock.sleeps == [1.0, 2.0]


async def test_529_until_attempts_run_out(
    kind: str, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    server.script(*[Reply(529, body=ERROR_BODY)] * 3)
    async with make_provider(kind, server, retry=retry) as llm:
        with pytest.raises(ProviderError) as caught:
            await llm.chat(USER)
    assert (caught.value.status, caught.value.retryable) == (529, True)
    assert "server_error: try again" in str(caught.value)
    assert len(server.requests) == 3
    assert clock.sleeps == [1.0, 2.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_client_errors_are_never_retried(
    kind: str, status: int, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    failure = Reply(status, {"retry-after": "1"}, ERROR_BODY)
    server.script(failure, failure, Turn("unused"))
    async with make_provider(kind, server, retry=retry) as llm:
        with pytest.raises(ProviderError) as caught:
            await llm.chat(USER)
        events, error = await collect(llm.chat_stream(USER))  # the stream, too
    assert (caught.value.status, caught.value.retryable) == (status, False)
    assert error is not None
    assert (error.status, error.retryable) == (status, False)
    assert events == []
    assert len(server.requests) == 2  # one per call: no retry
    assert clock.sleeps == []


@pytest.mark.parametrize("status", [408, 409])
async def test_408_and_409_are_retried(
    kind: str, status: int, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    server.script(Reply(status, body=ERROR_BODY), Turn("ok"))
    async with make_provider(kind, server, retry=retry) as llm:
        assert await llm.complete("hi") == "ok"
    assert len(server.requests) == 2
    assert clock.sleeps == [1.0]


# ---------------------------------------------------------------------- transport faults
@pytest.mark.parametrize("stream", [False, True])
async def test_slow_first_byte_times_out_and_is_retried(
    kind: str, stream: bool, server: FakeLlmServer, clock: FakeClock
) -> None:
    server.script(Reply(first_byte_delay=3.0), Reply(first_byte_delay=3.0))
    retry = RetryPolicy(max_attempts=2, base_delay=1.0, jitter=False, clock=clock)
    started = time.perf_counter()
    async with make_provider(kind, server, retry=retry, timeout=0.2) as llm:
        if stream:
            events, error = await collect(llm.chat_stream(USER))
            assert events == []
        else:
            with pytest.raises(ProviderError) as caught:
                await llm.chat(USER)
            error = caught.value
    assert error is not None
    assert (error.status, error.retryable) == (None, True)
    assert "timed out" in str(error)
    assert len(server.requests) == 2
    assert clock.sleeps == [1.0]
    assert time.perf_counter() - started < 2.5  # two 0.2 s timeouts, not the 3 s delays


async def test_connection_refused_is_retried(kind: str, clock: FakeClock) -> None:
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    retry = RetryPolicy(max_attempts=3, base_delay=1.0, jitter=False, clock=clock)
    nobody = SimpleNamespace(url=f"http://127.0.0.1:{port}")
    async with make_provider(kind, nobody, retry=retry) as llm:
        with pytest.raises(ProviderError) as caught:
            await llm.chat(USER)
    assert (caught.value.status, caught.value.retryable) == (None, True)
    assert "connection failed: ConnectError" in str(caught.value)
    assert clock.sleeps == [1.0, 2.0]


async def test_connection_dropped_mid_stream_raises_after_the_output(
    kind: str, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    reply = streamed(kind)
    reply.drop_after = AFTER_FIRST_DELTA[kind]
    server.script(reply, Turn("never replayed"))
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert texts(events) == ["Hello"]
    assert error is not None
    assert (error.status, error.retryable) == (None, True)
    assert "RemoteProtocolError" in str(error)
    assert len(server.requests) == 1  # output was already seen: no silent replay
    assert clock.sleeps == []


async def test_connection_dropped_before_any_output_is_retried(
    kind: str, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    reply = streamed(kind)
    reply.drop_after = 1  # role chunk / message_start only: nothing reached the caller
    server.script(reply, HELLO)
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert error is None
    assert "".join(texts(events)) == HELLO.text
    assert isinstance(events[-1], StreamEnd)
    assert len(server.requests) == 2
    assert clock.sleeps == [1.0]


async def test_stall_mid_stream_times_out(kind: str, server: FakeLlmServer) -> None:
    reply = streamed(kind)
    reply.pause_after, reply.pause = AFTER_FIRST_DELTA[kind], 3.0
    server.script(reply)
    async with make_provider(kind, server, timeout=0.2) as llm:
        events, error = await collect(llm.stream("hi"))
    assert events == ["Hello"]
    assert error is not None
    assert (error.status, error.retryable) == (None, True)
    assert "timed out (ReadTimeout)" in str(error)
    assert len(server.requests) == 1


def ping(kind: str) -> bytes:
    """A keep-alive: an SSE comment (OpenAI-compatible servers), a `ping` event (Anthropic)."""
    return b": ping\n\n" if kind == "openai" else sse({"type": "ping"}, "ping")


def trickled(frames: list[bytes]) -> Reply:
    """An event stream that sends a frame every 0.05 s."""
    return Reply(frames=frames, headers={"content-type": "text/event-stream"}, frame_interval=0.05)


def assert_stalled_after_output(
    events: list[Any], error: ProviderError | None, started: float
) -> None:
    """A stream that stalled after its first text: that text, then a retryable timeout of
    the 0.5 s idle limit, well within 3 s."""
    assert texts(events) == ["Hello"]
    assert error is not None
    assert (error.status, error.retryable) == (None, True)
    assert "no content for 0.5 s" in str(error)
    assert time.perf_counter() - started < 3.0


async def check_stalls_after_output(kind: str, server: FakeLlmServer, reply: Reply) -> None:
    """`reply`, a stream that stalls after its first text, read with a 0.5 s idle limit."""
    server.script(reply)
    started = time.perf_counter()
    async with make_provider(kind, server, timeout=0.5, retry=RetryPolicy(max_attempts=1)) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert_stalled_after_output(events, error, started)


async def test_keep_alive_pings_do_not_keep_a_stalled_stream_going(
    kind: str, server: FakeLlmServer, clock: FakeClock
) -> None:
    reply = streamed(kind)
    assert reply.frames is not None
    pings = [ping(kind)] * 100  # 5 s of pings, well beyond the 0.5 s timeout
    before_output = trickled(reply.frames[:1] + pings)
    after_output = trickled(reply.frames[: AFTER_FIRST_DELTA[kind]] + pings)
    server.script(before_output, HELLO, after_output)
    retry = RetryPolicy(max_attempts=2, base_delay=1.0, jitter=False, clock=clock)
    started = time.perf_counter()
    async with make_provider(kind, server, retry=retry, timeout=0.5) as llm:
        # Nothing had reached the caller: tried again, and the second attempt answers.
        events, error = await collect(llm.chat_stream(USER))
        assert error is None and "".join(texts(events)) == HELLO.text
        assert time.perf_counter() - started < 3.0
        # After output, the same stall raises (no silent replay).
        started = time.perf_counter()
        events, error = await collect(llm.chat_stream(USER))
    assert_stalled_after_output(events, error, started)
    assert len(server.requests) == 3


# A stream labelled with another type too: its opening was read before the check was set.
@pytest.mark.parametrize("content_type", ["text/event-stream", "text/plain"])
async def test_empty_compressed_flushes_do_not_keep_a_stalled_stream_going(
    kind: str, content_type: str, server: FakeLlmServer
) -> None:
    # A gzip middleware that flushes with nothing new sends an empty deflate block: bytes
    # that decode to nothing, which httpx never hands on, so the stream was never checked
    # and the call hung for good, whatever its timeout.
    reply = streamed(kind)
    assert reply.frames is not None
    gzip = zlib.compressobj(wbits=31)
    first = b"".join(reply.frames[: AFTER_FIRST_DELTA[kind]])
    frames = [gzip.compress(first) + gzip.flush(zlib.Z_SYNC_FLUSH)]
    empty_block = b"\x00\x00\x00\xff\xff"  # a stored block of no bytes, as a flush sends
    frames += [empty_block] * 100  # 5 s of them
    headers = {"content-type": content_type, "content-encoding": "gzip"}
    await check_stalls_after_output(
        kind, server, Reply(frames=frames, headers=headers, frame_interval=0.05)
    )


async def test_an_event_sent_again_and_again_does_not_keep_a_stalled_stream_going(
    kind: str, server: FakeLlmServer
) -> None:
    # Each copy of an event that moves a reply on (the usage, a stop reason) was counted as
    # progress: a server repeating one kept the call going until the reply size limit.
    reply = streamed(kind)
    assert reply.frames is not None
    if kind == "openai":
        again = sse({"model": "m", "choices": [], "usage": {"prompt_tokens": 5}})
    else:
        again = anthropic_event("message_delta", delta={"stop_reason": None}, usage={})
    frames = reply.frames[: AFTER_FIRST_DELTA[kind]] + [again] * 100  # 5 s of copies
    await check_stalls_after_output(kind, server, trickled(frames))


async def test_content_between_pings_keeps_a_slow_stream_going(
    kind: str, server: FakeLlmServer
) -> None:
    reply = streamed(kind)
    assert reply.frames is not None
    frames = [ping(kind)] * 6 + reply.frames[:-3] + [ping(kind)] * 6 + reply.frames[-3:]
    server.script(trickled(frames))
    async with make_provider(kind, server, timeout=1.0, retry=RetryPolicy(max_attempts=1)) as llm:
        events, error = await collect(llm.chat_stream(USER))  # > 1 s in all, 0.35 s at most silent
    assert error is None
    assert "".join(texts(events)) == HELLO.text


def empty_delta(kind: str) -> bytes:
    """A delta that adds nothing: an empty piece of text."""
    if kind == "openai":
        return sse({"object": "chat.completion.chunk", "choices": [{"delta": {"content": ""}}]})
    delta = {"type": "text_delta", "text": ""}
    return sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")


OPENAI_REASONING: dict[str, dict[str, Any]] = {
    "reasoning_content": {"reasoning_content": "hmm "},  # vLLM, DeepSeek
    "reasoning": {"reasoning": "hmm "},  # OpenRouter
    "reasoning_details": {"reasoning_details": [{"type": "reasoning.text", "text": "hmm "}]},
    "thinking parts": {  # Mistral's
        "content": [{"type": "thinking", "thinking": [{"type": "text", "text": "hmm "}]}]
    },
}


def reasoning(kind: str) -> list[bytes]:
    """Reasoning the model streams before its answer, 0.4 s of each form when trickled (for
    OpenAI's wire format, each of compatible servers' forms in turn)."""
    if kind == "openai":
        return [
            sse({"object": "chat.completion.chunk", "choices": [{"delta": delta}]})
            for delta in OPENAI_REASONING.values()
            for _ in range(8)
        ]
    block = {"type": "thinking", "thinking": ""}
    delta = {"type": "thinking_delta", "thinking": "hmm "}
    return [
        sse({"type": "content_block_start", "index": 9, "content_block": block}, "start"),
        *[sse({"type": "content_block_delta", "index": 9, "delta": delta}, "delta")] * 8,
        sse({"type": "content_block_stop", "index": 9}, "content_block_stop"),
    ]


async def test_empty_deltas_do_not_keep_a_stalled_stream_going(
    kind: str, server: FakeLlmServer
) -> None:
    reply = streamed(kind)
    assert reply.frames is not None
    empties = [empty_delta(kind)] * 100  # 5 s of them, well beyond the 0.5 s timeout
    server.script(trickled(reply.frames[: AFTER_FIRST_DELTA[kind]] + empties))
    started = time.perf_counter()
    async with make_provider(kind, server, timeout=0.5) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert_stalled_after_output(events, error, started)


async def test_reasoning_keeps_a_slow_stream_going(kind: str, server: FakeLlmServer) -> None:
    reply = streamed(kind)
    assert reply.frames is not None
    first = 1 if kind == "openai" else 2  # after the role chunk / message_start and its ping
    frames = reply.frames[:first] + reasoning(kind) + reply.frames[first:]
    server.script(trickled(frames))
    # Each form of reasoning alone goes on for longer than the timeout.
    async with make_provider(kind, server, timeout=0.3, retry=RetryPolicy(max_attempts=1)) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert error is None
    assert "".join(texts(events)) == HELLO.text


@pytest.mark.parametrize("fits", [False, True])
async def test_a_streamed_reply_past_the_size_limit_is_cut(
    kind: str, fits: bool, server: FakeLlmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reply = streamed(kind)
    assert reply.frames is not None
    # Its whole body (which its content and events cannot outgrow), or less than its text.
    limit = sum(map(len, reply.frames)) if fits else len(HELLO.text) - 1
    monkeypatch.setattr(_http, "MAX_REPLY_BYTES", limit)
    server.script(reply)
    async with make_provider(kind, server, retry=RetryPolicy(max_attempts=1)) as llm:
        events, error = await collect(llm.chat_stream(USER))
    if fits:
        assert error is None
        assert isinstance(events[-1], StreamEnd) and events[-1].response.text == HELLO.text
    else:
        assert error is not None and not error.retryable
        assert f"streamed reply is larger than {limit} characters" in str(error)
        assert HELLO.text.startswith("".join(texts(events)))
        assert not any(isinstance(event, StreamEnd) for event in events)


async def test_a_streamed_request_answered_without_a_stream_reports_the_servers_error(
    kind: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    body = {"error": {"type": "invalid_request_error", "message": "streaming is not supported"}}
    json_reply = Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"})
    server.script(json_reply, Turn("unused"))
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert events == []
    assert error is not None
    assert "invalid_request_error: streaming is not supported" in str(error)
    assert "'application/json', not an event stream" in str(error)
    assert error.retryable is False  # the same request gets the same answer
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "content_type", ["text/plain; charset=utf-8", "application/json", "application/octet-stream"]
)
async def test_a_stream_labelled_with_another_type_is_read_as_a_stream(
    kind: str, content_type: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # A proxy that labels the events `text/plain`, a server that says `application/json`:
    # the answer was thrown away, quoted as the error of a non-retryable ProviderError.
    reply = streamed(kind)
    assert reply.frames is not None
    # Its opening cut across chunks: a byte order mark, a blank line and a comment first.
    first = reply.frames[0]  # `data: ...` or `event: ...`, its name cut in two as well
    opening = [b"\xef", b"\xbb\xbf\r", b"\n", b": keep", b"-alive\n\n", first[:2], first[2:4]]
    frames = [*opening, first[4:], *reply.frames[1:]]
    server.script(Reply(frames=frames, headers={"content-type": content_type}))
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert error is None
    assert isinstance(events[-1], StreamEnd) and events[-1].response.text == HELLO.text
    assert "".join(texts(events)) == HELLO.text
    assert len(server.requests) == 1


@pytest.mark.parametrize("body", [b"", b"\n" * 300, b"hello: world\n\n", b"Bad gateway"])
async def test_a_body_of_another_type_opening_with_no_event_is_no_stream(
    kind: str, body: bytes, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    frames = [body[i : i + 7] for i in range(0, len(body), 7)] or [b""]
    server.script(Reply(frames=frames, headers={"content-type": "text/plain"}), Turn("unused"))
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert events == []
    assert error is not None and error.retryable is False
    assert "'text/plain', not an event stream" in str(error)
    assert body.strip().decode() in str(error)
    assert len(server.requests) == 1


async def test_a_body_of_another_type_read_slower_than_timeout_is_still_the_servers_error(
    kind: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # Its start is read whole, bounded by total_timeout: the stream's quiet check cut it
    # ("sent no content for 0.3 s", retryable) and each attempt failed so.
    body = json.dumps(_error_body(kind, "invalid_request_error", "streaming is off")).encode()
    frames = [body[i : i + 8] for i in range(0, len(body), 8)]  # 0.1 s apart: > 0.3 s in all
    assert len(frames) > 5
    reply = Reply(frames=frames, headers={"content-type": "application/json"}, frame_interval=0.1)
    server.script(reply, Turn("unused"))
    async with make_provider(kind, server, retry=retry, timeout=0.3) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert events == [] and error is not None
    assert "invalid_request_error: streaming is off" in str(error)
    assert error.retryable is False
    assert len(server.requests) == 1


async def test_a_body_of_another_type_is_read_within_one_total_timeout(
    kind: str, server: FakeLlmServer
) -> None:
    # Its opening and the rest of its start were each given total_timeout: twice in all.
    body = json.dumps(_error_body(kind, "invalid_request_error", "x" * 40)).encode()
    # 0.1 s apart: blanks for 0.6 s, then the body for 1.5 s more.
    frames = [b" "] * 6 + [body[i : i + 6] for i in range(0, len(body), 6)]
    reply = Reply(frames=frames, headers={"content-type": "application/json"}, frame_interval=0.1)
    server.script(reply)
    started = time.monotonic()
    async with make_provider(
        kind, server, retry=RetryPolicy(max_attempts=1), timeout=0.3, total_timeout=0.8
    ) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert events == [] and error is not None
    assert "(total_timeout)" in str(error)
    assert time.monotonic() - started < 1.2


async def test_a_stream_of_its_terminator_alone_is_retried_as_no_reply(
    kind: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # A bare `[DONE]` (a bare `message_stop`) read as a whole, empty reply: the agent loop
    # blamed the model ("replied with neither a tool call nor any text"), with no retry.
    bare = [b"data: [DONE]\n\n"] if kind == "openai" else [anthropic_event("message_stop")]
    server.script(Reply(frames=bare, headers={"content-type": "text/event-stream"}), HELLO)
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert error is None
    assert isinstance(events[-1], StreamEnd) and events[-1].response.text == HELLO.text
    assert len(server.requests) == 2
    server.script(*[Reply(frames=bare, headers={"content-type": "text/event-stream"})] * 3)
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert events == [] and error is not None and error.retryable
    assert "held no" in str(error)


async def test_a_whole_reply_labelled_an_event_stream_is_refused_once_and_quoted(
    kind: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # A server that ignores `"stream": true` answers with its whole JSON reply under the
    # event-stream type: it holds no event, so it was taken for a stream ended early, tried
    # again (each a reply billed) and reported as "ended before [DONE]".
    whole = render_openai(HELLO, False) if kind == "openai" else render_anthropic(HELLO, False)
    labelled = Reply(body=whole.body, headers={"content-type": "text/event-stream"})
    server.script(labelled, labelled, labelled)
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert events == []
    assert error is not None and error.retryable is False
    assert "a JSON body, not the events of a stream" in str(error)
    assert HELLO.text in str(error)  # the body, quoted
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("error_type", "retryable"), [("invalid_request_error", False), ("overloaded_error", True)]
)
async def test_an_error_sent_with_status_200_is_the_servers_error(
    kind: str,
    error_type: str,
    retryable: bool,
    server: FakeLlmServer,
    retry: RetryPolicy,
    clock: FakeClock,
) -> None:
    body: dict[str, Any] = {"error": {"type": error_type, "message": "model is loading"}}
    if kind == "anthropic":
        body["type"] = "error"
    failure = Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"})
    server.script(failure, failure, Turn("ok"))
    async with make_provider(kind, server, retry=retry) as llm:
        if retryable:  # retried like an error status, and the third attempt answers
            assert await llm.complete("hi") == "ok"
            assert clock.sleeps == [1.0, 2.0]
            return
        with pytest.raises(ProviderError) as caught:
            await llm.chat(USER)
    assert f"API error: {error_type}: model is loading" in str(caught.value)
    assert "malformed" not in str(caught.value)
    assert caught.value.retryable is False
    assert len(server.requests) == 1


@pytest.mark.parametrize("content_type", ["text/html", "text/html; charset=utf-8"])
async def test_a_page_sent_in_place_of_a_reply_is_quoted_with_its_type(
    kind: str, content_type: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # A proxy's login page under status 200: it was "malformed ... Invalid JSON", naming
    # neither the page nor its type (a streamed request's error already quoted both).
    page = b"<!doctype html><title>Proxy</title><p>Corporate proxy: please log in</p>"
    server.script(Reply(body=page, headers={"content-type": content_type}), Turn("unused"))
    async with make_provider(kind, server, retry=retry) as llm:
        with pytest.raises(ProviderError) as caught:
            await llm.chat(USER)
    assert "Corporate proxy: please log in" in str(caught.value)
    assert "(the request was answered with 'text/html', not JSON)" in str(caught.value)
    assert "malformed" not in str(caught.value)
    assert caught.value.retryable is False
    assert len(server.requests) == 1


async def test_a_reply_labelled_with_another_type_than_json_is_read_all_the_same(
    kind: str, server: FakeLlmServer
) -> None:
    whole = render_openai(HELLO, False) if kind == "openai" else render_anthropic(HELLO, False)
    server.script(Reply(body=b"\xef\xbb\xbf " + whole.body, headers={"content-type": "text/plain"}))
    async with make_provider(kind, server) as llm:
        assert (await llm.chat(USER)).text == HELLO.text


def _error_body(kind: str, error_type: str, message: str) -> dict[str, Any]:
    """An error object as `kind`'s API reports one; OpenAI's with a code that is a status."""
    if kind == "openai":
        code = "429" if error_type == "rate_limit_exceeded" else None
        return {"error": {"type": error_type, "message": message, "code": code}}
    return {"type": "error", "error": {"type": error_type, "message": message}}


RETRYABLE_TYPE = {"openai": "rate_limit_exceeded", "anthropic": "overloaded_error"}


@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream"])
async def test_a_retryable_error_sent_with_status_200_in_place_of_a_stream_is_retried(
    kind: str,
    content_type: str,
    server: FakeLlmServer,
    retry: RetryPolicy,
    clock: FakeClock,
) -> None:
    # A gateway's rate limit, sent with status 200 as JSON, or as JSON under the event-stream
    # type. Before, the stream failed at once (no status), or as a stream that ended early.
    body = json.dumps(_error_body(kind, RETRYABLE_TYPE[kind], "slow down")).encode()
    failure = Reply(body=body, headers={"content-type": content_type})
    server.script(failure, failure, streamed(kind))
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert error is None
    assert "".join(texts(events)) == HELLO.text
    assert clock.sleeps == [1.0, 2.0]
    assert len(server.requests) == 3


async def test_an_error_sent_as_an_event_stream_is_the_servers_error(
    kind: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    body = json.dumps(_error_body(kind, "authentication_error", "invalid api key")).encode()
    server.script(Reply(body=body, headers={"content-type": "text/event-stream"}), Turn("unused"))
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert events == []
    assert error is not None
    # Before: "stream ended before [DONE]" (or message_stop), retried, the server's words lost.
    assert "API error: authentication_error: invalid api key" in str(error)
    assert error.retryable is False
    assert len(server.requests) == 1


async def tried_once(kind: str, server: FakeLlmServer, stream: bool) -> ProviderError:
    """The error one call raises, streamed or not, tried once (fails the test if none)."""
    async with make_provider(kind, server, retry=RetryPolicy(max_attempts=1)) as llm:
        if stream:
            _, error = await collect(llm.chat_stream(USER))
        else:
            with pytest.raises(ProviderError) as caught:
                await llm.chat(USER)
            error = caught.value
    assert error is not None
    return error


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_arguments_holding_nan_or_infinity_are_refused(
    kind: str, stream: bool, server: FakeLlmServer
) -> None:
    # Python's json writes NaN and Infinity as bare words, as a model may: no JSON has them.
    server.script(Turn(tool_calls=[("c1", "measure", {"x": 1.0, "y": [math.nan, math.inf]})]))
    error = await tried_once(kind, server, stream)
    # Before, the tool got nan, and sending the call back failed with a bare ValueError.
    assert "tool call 'measure' arguments are not valid JSON" in str(error)
    assert error.retryable is False
    # The reply comes with the error, that call marked (an agent loop answers it).
    assert isinstance(error, UnreadableArgumentsError)
    [call] = error.response.tool_calls
    assert (call.id, call.name, call.arguments) == ("c1", "measure", {})
    assert call.arguments_error == str(error)
    assert error.response.usage.output_tokens == 7


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("arguments", ["[1, 2]", None], ids=["array", "null"])
async def test_tool_call_arguments_that_are_no_json_object_are_marked(
    kind: str, stream: bool, arguments: str | None, server: FakeLlmServer
) -> None:
    # The text `[1, 2]` (Anthropic's non-streamed `input` is then a JSON string), or `null`.
    server.script(Turn(tool_calls=[("c1", "measure", arguments), ("c2", "measure", {"x": 1})]))  # type: ignore[list-item]
    error = await tried_once(kind, server, stream)
    assert isinstance(error, UnreadableArgumentsError)
    assert "tool call 'measure' arguments are not a JSON object" in str(error)
    if arguments is None:  # quoted as the JSON it was
        assert str(error).endswith(": 'null'")
    wrong, right = error.response.tool_calls
    assert (wrong.arguments, wrong.arguments_error) == ({}, str(error))
    assert (right.arguments, right.arguments_error) == ({"x": 1}, None)


async def test_the_last_error_says_how_often_the_call_was_tried(
    kind: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    server.script(*[Reply(503, body=ERROR_BODY)] * 6, Reply(400, body=ERROR_BODY))
    async with make_provider(kind, server, retry=retry) as llm:
        with pytest.raises(ProviderError) as caught:
            await llm.chat(USER)
        events, streamed_error = await collect(llm.chat_stream(USER))
        with pytest.raises(ProviderError) as once:
            await llm.chat(USER)
    assert events == []
    for error in (caught.value, streamed_error):
        assert error is not None
        assert re.search(
            r"try again \(after 3 attempts over \d+\.\d s\) \(status 503\)$", str(error)
        )
        assert (error.status, error.retryable) == (503, True)
    assert "attempts" not in str(once.value)  # tried once: nothing to add
    assert len(server.requests) == 7


@pytest.mark.parametrize("position", ["first", "mid"])
async def test_malformed_json_event(
    kind: str, position: str, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    reply = streamed(kind)
    assert reply.frames is not None
    at = 0 if position == "first" else AFTER_FIRST_DELTA[kind]
    reply.frames.insert(at, b'event: content_block_delta\ndata: {"type": "content_bl\n\n')
    server.script(reply, Turn("unused"))
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert texts(events) == ([] if position == "first" else ["Hello"])
    assert error is not None
    assert (error.status, error.retryable) == (None, False)
    assert f"malformed {'OpenAI' if kind == 'openai' else 'Anthropic'} stream event" in str(error)
    assert len(server.requests) == 1
    assert clock.sleeps == []


async def test_error_event_mid_stream(
    kind: str, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    reply = streamed(kind)
    assert reply.frames is not None
    reply.frames.insert(AFTER_FIRST_DELTA[kind], error_event(kind))
    server.script(reply, Turn("unused"))
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert texts(events) == ["Hello"]
    assert error is not None
    if kind == "openai":
        assert (error.status, error.retryable) == (None, True)
        assert "server_error: upstream failed" in str(error)
    else:
        assert (error.status, error.retryable) == (529, True)
        assert "overloaded_error: Overloaded" in str(error)
    assert len(server.requests) == 1
    assert clock.sleeps == []


async def test_error_event_before_any_output_is_retried(
    kind: str, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    reply = streamed(kind)
    assert reply.frames is not None
    reply.frames.insert(1, error_event(kind))
    server.script(reply, HELLO)
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert error is None
    assert "".join(texts(events)) == HELLO.text
    assert len(server.requests) == 2
    assert clock.sleeps == [1.0]


async def test_non_retryable_error_event_is_not_retried(
    kind: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    if kind == "openai":
        frame = openai_error_event("bad request", "invalid_request_error")
    else:
        frame = anthropic_error_event("bad request", "invalid_request_error")
    server.script(Reply(frames=[frame]), HELLO)
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert events == []
    assert error is not None
    assert error.retryable is False
    assert error.status == (None if kind == "openai" else 400)
    assert len(server.requests) == 1


async def test_empty_stream(
    kind: str, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    server.script(*[Reply(frames=[], headers={"content-type": "text/event-stream"})] * 3)
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.stream("hi"))
    assert events == []
    assert error is not None
    assert (error.status, error.retryable) == (None, True)
    assert "stream ended before" in str(error)
    assert len(server.requests) == 3
    assert clock.sleeps == [1.0, 2.0]


async def test_stream_cut_after_output_without_terminator(
    kind: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    reply = streamed(kind)
    assert reply.frames is not None
    reply.frames = reply.frames[: AFTER_FIRST_DELTA[kind]]  # a clean end, but no [DONE]
    server.script(reply)
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert texts(events) == ["Hello"]
    assert error is not None
    assert error.retryable is True
    assert ("[DONE]" if kind == "openai" else "message_stop") in str(error)
    assert len(server.requests) == 1


@pytest.mark.parametrize("output", [False, True], ids=["before-output", "after-output"])
async def test_a_close_delimited_stream_cut_inside_a_line_ended_early(
    kind: str, output: bool, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    # A body that ends where the connection closes (no content-length, not chunked) shows no
    # cut: the last line, cut short, was read as an event, a malformed one (never retried),
    # where a cut at an event's end was a retryable "stream ended before [DONE]".
    reply = streamed(kind)
    assert reply.frames is not None
    frames = reply.frames[: AFTER_FIRST_DELTA[kind] + 1 if output else 1]
    frames[-1] = frames[-1][: len(frames[-1]) // 2]  # inside its JSON
    cut = Reply(frames=frames, headers={"content-type": "text/event-stream"}, close_delimited=True)
    server.script(cut, HELLO)
    async with make_provider(kind, server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    if not output:  # nothing reached the caller: tried again, and the second attempt answers
        assert error is None
        assert "".join(texts(events)) == HELLO.text
        assert len(server.requests) == 2
        assert clock.sleeps == [1.0]
        return
    assert texts(events) == ["Hello"]
    assert error is not None
    assert (error.status, error.retryable) == (None, True)
    assert "malformed" not in str(error)
    assert ("[DONE]" if kind == "openai" else "message_stop") in str(error)
    assert len(server.requests) == 1  # output was seen: never replayed


@pytest.mark.parametrize(
    "body", [b"{oops", b'{"choices": "many", "content": 3}', b"[]", b"<html>proxy</html>"]
)
async def test_malformed_body_is_a_provider_error(
    kind: str, body: bytes, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    server.script(Reply(body=body), Turn("unused"))
    async with make_provider(kind, server, retry=retry) as llm:
        with pytest.raises(ProviderError, match="malformed") as caught:
            await llm.chat(USER)
    assert (caught.value.status, caught.value.retryable) == (None, False)
    assert len(server.requests) == 1


async def test_a_flood_of_events_without_content_is_cut_at_timeout(kind: str) -> None:
    # Only the time spent waiting for bytes counted: a server sending empty events as fast
    # as they were read kept a stream going as long as it liked (3 s here, for a 0.5 s limit).
    noise = ping(kind) if kind == "anthropic" else sse({"choices": [{"delta": {"content": ""}}]})

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
            )
            writer.write(head)
            end = time.monotonic() + 3.0
            while time.monotonic() < end and not writer.is_closing():
                writer.write(noise * 100)
                await writer.drain()
        writer.close()

    listener = await asyncio.start_server(flood, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    where = SimpleNamespace(url=f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    try:
        async with make_provider(
            kind, where, timeout=0.5, retry=RetryPolicy(max_attempts=1)
        ) as llm:
            with pytest.raises(ProviderError, match=r"no content for 0\.5 s") as caught:
                await collect_text(llm)
    finally:
        listener.close()
    assert caught.value.retryable and time.perf_counter() - started < 2.5


async def collect_text(llm: Any) -> str:
    """The text of a streamed reply to `USER`."""
    return "".join([piece async for piece in llm.stream("hi")])
