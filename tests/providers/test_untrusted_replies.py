"""What a server (or whatever answers in its place) may send that the providers must survive
without a raw exception or a leaked key: redirects to another host through a caller's client
that follows them, token counts out of range, JSON nested too deeply to decode, Retry-After
dates out of range, tool arguments that echo the key, a byte order mark opening a stream,
Anthropic error events in a proxy's forms, tool calls without ids; and NaN timeouts, refused
up front. Over loopback HTTP against the fake server, in both wire formats."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from llm_agent_runtime import CostBudget, FakeClock, ProviderError, RetryPolicy, RuntimeMetrics
from llm_agent_runtime.providers._http import (
    SseEvent,
    decode_arguments,
    error_in_body,
    error_message,
    iter_sse,
    parse_retry_after,
)
from llm_agent_runtime.providers.base import Message, StreamEnd, ToolCall

from .conftest import API_KEY, PROVIDERS, make_provider
from .fake_server import (
    FakeLlmServer,
    Reply,
    Turn,
    render_anthropic,
    render_openai,
    sse,
)
from .test_faults import HELLO, collect, texts
from .test_hardening import shown
from .test_replies import _anthropic_frames, _block, _json, _with_usage, text

USER = [Message("user", "hi")]
ONCE = RetryPolicy(max_attempts=1)
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}


async def reply(llm: Any, streaming: bool) -> tuple[list[Any], Any]:
    """The streamed events (none unstreamed) and the response of one call."""
    if not streaming:
        return [], await llm.chat(USER)
    events = [event async for event in llm.chat_stream(USER)]
    assert isinstance(events[-1], StreamEnd)
    return events, events[-1].response


async def failure(llm: Any, streaming: bool) -> ProviderError:
    """The error one call raises, streamed or not (the test fails if it raises none)."""
    with pytest.raises(ProviderError) as caught:
        await reply(llm, streaming)
    return caught.value


# ---------------------------------------------------------------------- redirects
@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("streaming", [False, True])
async def test_a_callers_client_that_follows_redirects_never_takes_the_key_elsewhere(
    kind: str, streaming: bool, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    # httpx drops `authorization` on the way to another host, not Anthropic's `x-api-key`:
    # the reply came from the other host, which had the key.
    with FakeLlmServer() as elsewhere:
        elsewhere.script(Turn("hello from elsewhere"))
        target = elsewhere.url + PATHS[kind]
        server.script(Reply(307, {"location": target}), Turn("never asked"))
        client = httpx.AsyncClient(follow_redirects=True)
        async with client, make_provider(kind, server, retry=retry, http_client=client) as llm:
            error = await failure(llm, streaming)
        assert elsewhere.requests == []
    assert (error.status, error.retryable) == (307, False)
    assert repr(target) in str(error) and "redirects are not followed" in str(error)
    assert len(server.requests) == 1
    assert clock.sleeps == []


# ---------------------------------------------------------------------- token counts
COUNT_NAMES = {
    "openai": ("prompt_tokens", "completion_tokens"),
    "anthropic": ("input_tokens", "output_tokens"),
}


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("bad", [-3, 2**63, 2**70], ids=["negative", "2**63", "2**70"])
@pytest.mark.parametrize("which", [0, 1], ids=["input", "output"])
async def test_a_token_count_out_of_range_is_zero_with_a_warning_and_keeps_the_reply(
    kind: str,
    streaming: bool,
    bad: int,
    which: int,
    server: FakeLlmServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # It used to fail the whole reply: a ValueError from the budget, an AgentRuntimeError
    # from the metrics, the StreamEnd lost; with neither, a negative Usage reached the caller.
    counts = [5, 7]
    counts[which] = bad
    server.script(_with_usage(kind, streaming, dict(zip(COUNT_NAMES[kind], counts, strict=True))))
    caplog.set_level(logging.WARNING, logger="llm_agent_runtime.providers")
    budget, metrics = CostBudget(max_tokens=1000), RuntimeMetrics()
    options: dict[str, Any] = {"budget": budget, "metrics": metrics, "retry": ONCE}
    async with make_provider(kind, server, input_cost_per_million=1.0, **options) as llm:
        _, response = await reply(llm, streaming)
    assert response.text == "Hello"
    expected = (0, 7) if which == 0 else (5, 0)
    assert (response.usage.input_tokens, response.usage.output_tokens) == expected
    snapshot = metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == expected
    assert budget.used_tokens == sum(expected)
    warnings = [r for r in caplog.records if "unreadable token usage" in r.getMessage()]
    # One per usage object: Anthropic's stream repeats it in message_start and message_delta.
    assert len(warnings) == (2 if kind == "anthropic" and streaming else 1)
    assert COUNT_NAMES[kind][which] in warnings[0].getMessage()
    assert "counted as 0 tokens" in warnings[0].getMessage()


@pytest.mark.parametrize("streaming", [False, True])
async def test_anthropic_input_counts_that_add_up_past_the_range_count_as_none(
    streaming: bool, server: FakeLlmServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Each count is in range; their sum (the whole input) is past 2**64 - 1, which the
    # metrics refuse.
    top = 2**63 - 1
    usage = {
        "input_tokens": top,
        "output_tokens": 7,
        "cache_read_input_tokens": top,
        "cache_creation_input_tokens": top,
    }
    server.script(_with_usage("anthropic", streaming, usage))
    caplog.set_level(logging.WARNING, logger="llm_agent_runtime.providers")
    metrics = RuntimeMetrics()
    async with make_provider("anthropic", server, retry=ONCE, metrics=metrics) as llm:
        _, response = await reply(llm, streaming)
    assert response.text == "Hello"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (0, 7)
    assert response.usage.cached_input_tokens == response.usage.cache_write_tokens == 0
    assert (metrics.snapshot().input_tokens, metrics.snapshot().output_tokens) == (0, 7)
    assert "add up past 2**63 - 1" in caplog.text


# ---------------------------------------------------------------------- deep JSON
DEEP = "[" * 20_000 + "]" * 20_000
"""Valid JSON nested far deeper than `json.loads` can follow (a RecursionError)."""


class _Error(BaseModel):
    message: str | None = None


def test_json_nested_too_deeply_is_read_as_unreadable_json() -> None:
    body = ('{"error": {"message": "x", "d": ' + DEEP + "}}").encode()
    assert error_message(body).startswith('{"error": {"message": "x", "d": [[[')
    assert error_in_body(body, _Error) is None
    with pytest.raises(ProviderError, match="arguments are nested too deeply") as caught:
        decode_arguments('{"a": ' + DEEP + "}", name="f")
    assert caught.value.retryable is False


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("streaming", [False, True])
async def test_an_error_body_nested_too_deeply_keeps_its_status_and_retry(
    kind: str, streaming: bool, server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    deep = Reply(529, {"content-type": "application/json"}, ('{"error": ' + DEEP + "}").encode())
    server.script(deep, Turn("ok"))
    async with make_provider(kind, server, retry=retry) as llm:
        _, response = await reply(llm, streaming)
    assert response.text == "ok"
    assert clock.sleeps == [1.0]
    server.script(Reply(400, {}, ('{"error": ' + DEEP + "}").encode()))
    async with make_provider(kind, server, retry=retry) as llm:
        error = await failure(llm, streaming)
    assert (error.status, error.retryable) == (400, False)
    assert len(server.requests) == 3


@pytest.mark.parametrize("streaming", [False, True])
async def test_an_error_reply_with_status_200_nested_too_deeply_is_a_provider_error(
    streaming: bool, server: FakeLlmServer
) -> None:
    body = ('{"error": {"message": "x", "d": ' + DEEP + "}}").encode()
    server.script(Reply(200, {"content-type": "application/json"}, body))
    async with make_provider("openai", server, retry=ONCE) as llm:
        await failure(llm, streaming)


# ---------------------------------------------------------------------- tool arguments
def tool_call_reply(kind: str, streaming: bool, name: str, arguments: str) -> Reply:
    """A reply with one tool call whose arguments are the JSON text `arguments` as sent."""
    if kind == "openai" and not streaming:
        call = {"id": "a", "type": "function", "function": {"name": name, "arguments": arguments}}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        body = {"model": "m", "choices": [{"index": 0, "message": message, "finish_reason": None}]}
        return Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"})
    if kind == "openai":

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return sse({"model": "m", "choices": [choice]})

        piece = {"index": 0, "id": "a", "function": {"name": name, "arguments": arguments}}
        frames = [chunk({"tool_calls": [piece]}), chunk({}, "tool_calls"), sse("[DONE]")]
        return Reply(frames=frames, headers={"content-type": "text/event-stream"})
    block = {"type": "tool_use", "id": "a", "name": name, "input": {}}
    frames = _anthropic_frames(_block(0, block, _json(arguments)), stop="tool_use")
    return Reply(frames=frames, headers={"content-type": "text/event-stream"})


BAD_ARGUMENTS = pytest.mark.parametrize(
    ("kind", "streaming"),
    [("openai", False), ("openai", True), ("anthropic", True)],
    ids=["openai", "openai-stream", "anthropic-stream"],
)


@BAD_ARGUMENTS
@pytest.mark.parametrize(
    "arguments",
    [
        '{"note": "key=' + API_KEY + '"',  # not closed
        "x" * 185 + API_KEY,  # a cut at 200 characters falls inside the key
        '{"k": "' + API_KEY + '", "a": ' + DEEP + "}",
    ],
    ids=["quoted", "cut-inside", "deep"],
)
async def test_broken_tool_arguments_are_quoted_without_the_key(
    kind: str, streaming: bool, arguments: str, server: FakeLlmServer
) -> None:
    server.script(tool_call_reply(kind, streaming, f"tool-{API_KEY}", arguments))
    async with make_provider(kind, server, retry=ONCE) as llm:
        error = await failure(llm, streaming)
    assert "arguments are" in str(error)
    assert "[redacted]" in str(error)
    assert "SECRET" not in shown(error) and API_KEY[:8] not in str(error)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_tool_name_with_the_key_is_redacted_under_a_truncation_stop(
    kind: str, server: FakeLlmServer
) -> None:
    stop = "length" if kind == "openai" else "max_tokens"
    turn = Turn(tool_calls=[("a", f"tool-{API_KEY}", {"a": 1})], stop_reason=stop, arguments_cut=3)
    server.script(render_openai(turn, True) if kind == "openai" else render_anthropic(turn, True))
    async with make_provider(kind, server, retry=ONCE) as llm:
        error = await failure(llm, True)
    assert "cut off by the token limit" in str(error) and "tool-[redacted]" in str(error)
    assert "SECRET" not in shown(error)


# ---------------------------------------------------------------------- Retry-After
OUT_OF_RANGE_DATES = ["Wed, 21 Oct 2015 07:28:00 +999999999999999", "0 Dec 24:00 99999999999 2000"]


@pytest.mark.parametrize("value", OUT_OF_RANGE_DATES)
def test_a_retry_after_date_out_of_range_is_unreadable(value: str) -> None:
    assert parse_retry_after(httpx.Headers({"Retry-After": value})) is None
    both = httpx.Headers({"retry-after-ms": "oops", "retry-after": value})
    assert parse_retry_after(both) is None


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("streaming", [False, True])
async def test_a_429_with_a_retry_after_date_out_of_range_is_a_retryable_429(
    kind: str, streaming: bool, server: FakeLlmServer
) -> None:
    headers = {"content-type": "application/json", "retry-after": OUT_OF_RANGE_DATES[0]}
    body = b'{"error": {"message": "slow down", "type": "rate_limit_error"}}'
    server.script(Reply(429, headers, body))
    async with make_provider(kind, server, retry=ONCE) as llm:
        error = await failure(llm, streaming)
    assert (error.status, error.retryable, error.retry_after) == (429, True, None)
    assert "slow down" in str(error)


# ---------------------------------------------------------------------- byte order mark
BOM = b"\xef\xbb\xbf"


async def _events(parts: list[bytes]) -> list[SseEvent]:
    async def chunks() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    return [event async for event in iter_sse(chunks())]


async def test_one_byte_order_mark_opening_a_stream_is_ignored_however_it_is_cut() -> None:
    body = BOM + b"data: first\n\nevent: e\ndata: second\n\n"
    expected = [SseEvent(None, b"first"), SseEvent("e", b"second")]
    for cut in range(len(body)):
        assert await _events([body[:cut], body[cut:]]) == expected, cut
    assert await _events([bytes([b]) for b in body]) == expected  # a byte at a time
    assert await _events([b"", BOM[:1], b"", BOM[1:], b"data: first\n\n"]) == expected[:1]
    # Only one, and only at the start: a second is part of the line (no field then).
    assert await _events([BOM + BOM + b"data: first\n\ndata: x\n\n"]) == [SseEvent(None, b"x")]
    assert await _events([b"data: a\n\n" + BOM + b"data: b\n\n"]) == [SseEvent(None, b"a")]
    # A stream that is only (part of) a BOM has no event; part of one is no BOM, but bytes
    # of the line it opens (which is then no field).
    assert await _events([BOM[:2]]) == []
    assert await _events([BOM[:2], b"data: x\n\ndata: y\n\n"]) == [SseEvent(None, b"y")]


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_stream_opened_by_a_byte_order_mark_loses_no_event(
    kind: str, server: FakeLlmServer
) -> None:
    turn = Turn("Hello world", text_chunks=["Hello", " world"], input_tokens=1000)
    stream = render_openai(turn, True) if kind == "openai" else render_anthropic(turn, True)
    assert stream.frames is not None
    if kind == "openai":
        stream.frames.pop(0)  # the role chunk: the stream opens with the first text
    else:  # message_start (the model, the input tokens) as a data line first
        stream.frames[0] = stream.frames[0].split(b"\n", 1)[1]
    stream.frames[0] = BOM + stream.frames[0]
    server.script(stream)
    async with make_provider(kind, server, retry=ONCE) as llm:
        events, response = await reply(llm, True)
    assert texts(events) == ["Hello", " world"]
    assert (response.text, response.model) == ("Hello world", "fake-model")
    assert response.usage.input_tokens == 1000


# ---------------------------------------------------------------------- Anthropic errors
ERROR_EVENTS = {
    "plain-text": (
        b"event: error\ndata: upstream overloaded, try again (" + API_KEY.encode() + b")\n\n",
        "api_error: upstream overloaded, try again",
        500,
    ),
    "null-message": (
        sse({"type": "error", "error": {"type": "overloaded_error", "message": None}}, "error"),
        "overloaded_error: no error message",
        529,
    ),
    "no-message": (
        sse({"type": "error", "error": {"type": "overloaded_error"}}, "error"),
        "overloaded_error: no error message",
        529,
    ),
    "string-error": (
        sse({"type": "error", "error": f"upstream gone ({API_KEY})"}, "error"),
        "api_error: upstream gone",
        500,
    ),
    "unnamed-null-message": (
        sse({"type": "error", "error": {"type": "overloaded_error", "message": None}}),
        "overloaded_error: no error message",
        529,
    ),
    "invalid-request": (
        sse({"type": "error", "error": {"type": "invalid_request_error", "message": None}}),
        "invalid_request_error: no error message",
        400,
    ),
    "error-member-without-a-type": (  # a gateway's: `{"error": {...}}` as OpenAI's are
        sse({"error": {"type": "rate_limit_error", "message": "slow down"}}),
        "rate_limit_error: slow down",
        429,
    ),
    "bare-error-object": (  # a proxy's: the error itself, its type kept (it was an api_error)
        sse({"type": "invalid_request_error", "message": "prompt is too long"}, "error"),
        "invalid_request_error: prompt is too long",
        400,
    ),
}


@pytest.mark.parametrize("form", ERROR_EVENTS.values(), ids=ERROR_EVENTS.keys())
async def test_anthropic_error_events_of_any_form_are_the_servers_error(
    form: tuple[bytes, str, int], server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    frame, said, status = form
    retryable = status != 400
    # Mid-stream, after output: raised as it is (never replayed).
    midway = render_anthropic(HELLO, True)
    assert midway.frames is not None
    midway.frames.insert(4, frame)
    server.script(midway)
    async with make_provider("anthropic", server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert texts(events) == ["Hello"]
    assert isinstance(error, ProviderError)
    assert f"Anthropic API error: {said}" in str(error)
    assert "malformed" not in str(error) and "SECRET" not in shown(error)
    assert (error.status, error.retryable) == (status, retryable)
    assert len(server.requests) == 1
    # Before any output: retried when its type says so (an overloaded error is).
    server.reset()
    first = render_anthropic(HELLO, True)
    assert first.frames is not None
    first.frames.insert(1, frame)
    server.script(first, HELLO)
    async with make_provider("anthropic", server, retry=retry) as llm:
        events, error = await collect(llm.chat_stream(USER))
    assert len(server.requests) == (2 if retryable else 1)
    assert (error is None) is retryable


@pytest.mark.parametrize("thinking", [5, True, ["hm"], {"text": "hm"}])
async def test_anthropic_thinking_that_is_not_text_is_a_malformed_reply(
    thinking: Any, server: FakeLlmServer
) -> None:
    # Streamed, the block's pieces were joined once the stream ended: a bare TypeError,
    # after its text had gone out. Unstreamed, it was sent back as it came.
    block = {"type": "thinking", "thinking": thinking, "signature": ""}
    streamed = _anthropic_frames(
        _block(0, block), _block(1, text(""), {"type": "text_delta", "text": "hi"})
    )
    server.script(Reply(frames=streamed), Turn("hi", reasoning=[block]))
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        events, error = await collect(llm.chat_stream(USER))
        assert isinstance(error, ProviderError) and events == []
        assert "malformed Anthropic stream event" in str(error)
        error = await failure(llm, False)
    assert "malformed Anthropic response: content.0.thinking" in str(error)


async def test_anthropic_error_reply_with_status_200_and_a_null_message_is_the_servers_error(
    server: FakeLlmServer, retry: RetryPolicy, clock: FakeClock
) -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": None}}
    busy = Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"})
    server.script(busy, Turn("ok"))
    async with make_provider("anthropic", server, retry=retry) as llm:
        assert await llm.complete("hi") == "ok"
    assert clock.sleeps == [1.0]


# ---------------------------------------------------------------------- tool call ids
@pytest.mark.parametrize("streaming", [False, True])
async def test_anthropic_tool_calls_without_ids_are_named_alike_streamed_or_not(
    streaming: bool, server: FakeLlmServer
) -> None:
    # Some compatible servers leave the id out: unstreamed, it was "", streamed "call_{n}".
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": "Adding."},
        {"type": "tool_use", "name": "add", "input": {"a": 1}},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
        {"type": "tool_use", "id": "toolu_2", "name": "add", "input": {"a": 2}},
        {"type": "tool_use", "id": "", "name": "add", "input": {"a": 3}},
    ]
    if streaming:
        frames = _anthropic_frames(
            *(
                _block(i, {**b, "input": {}}, _json(json.dumps(b["input"])))
                if "input" in b
                else _block(i, b)
                for i, b in enumerate(blocks)
            ),
            stop="tool_use",
        )
        server.script(Reply(frames=frames, headers={"content-type": "text/event-stream"}))
    else:
        body = {"model": "m", "content": blocks, "stop_reason": "tool_use", "usage": None}
        server.script(
            Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"})
        )
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        _, response = await reply(llm, streaming)
    assert response.tool_calls == [
        ToolCall("call_0", "add", {"a": 1}),
        ToolCall("toolu_2", "add", {"a": 2}),
        ToolCall("call_2", "add", {"a": 3}),
    ]


# ---------------------------------------------------------------------- timeouts
@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize(
    "options",
    [
        {"timeout": math.nan, "total_timeout": 10.0},
        {"connect_timeout": math.nan, "total_timeout": 10.0},
        {"timeout": math.nan},
        {"connect_timeout": math.nan},
        {"connect_timeout": -1.0, "total_timeout": 10.0},
    ],
    ids=["timeout", "connect_timeout", "timeout-alone", "connect_timeout-alone", "negative"],
)
def test_a_nan_timeout_is_refused_up_front_even_beside_a_total_timeout(
    kind: str, options: dict[str, float], server: FakeLlmServer
) -> None:
    # Accepted when total_timeout was given: every call then failed with a raw ValueError.
    with pytest.raises(ValueError, match="timeouts must be > 0"):
        make_provider(kind, server, **options)
    assert server.requests == []
