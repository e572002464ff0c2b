"""Text and JSON as servers really send them, and request bodies as JSON takes them: emoji
cut between two deltas, lone surrogate escapes, byte order marks, tool names streamed in
pieces, and NaN that must never be sent. Over loopback HTTP, against the fake server
speaking each wire format."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from llm_agent_runtime import AnthropicProvider, ProviderError, RetryPolicy
from llm_agent_runtime.providers.base import (
    Message,
    StreamEnd,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)

from .conftest import PROVIDERS, make_provider
from .fake_server import FakeLlmServer, Reply, Turn, anthropic_event, render, sse

USER = [Message("user", "hi")]
ONCE = RetryPolicy(max_attempts=1)
BOM = b"\xef\xbb\xbf"
HIGH, LOW = "\ud83d", "\ude00"
"""The two halves of U+1F600, as JSON escapes them (`\\ud83d\\ude00`)."""


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    """One OpenAI chat.completion.chunk frame."""
    return sse({"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


async def streamed(llm: Any) -> tuple[list[str], str]:
    """The text deltas of a stream, and its final text."""
    events = [event async for event in llm.chat_stream(USER)]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    return [event.text for event in events if isinstance(event, TextDelta)], end.response.text


# ---------------------------------------------------------------------- surrogates
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_an_emoji_cut_between_two_deltas_is_put_together(
    kind: str, server: FakeLlmServer
) -> None:
    # A gateway that cuts text by UTF-16 units sends each half of the pair as a JSON escape
    # ("\ud83d", then "\ude00"): valid JSON, read by Python's json and the official SDKs. The
    # whole stream failed as a malformed event (pydantic's parser refuses such escapes).
    server.script(Turn(f"hi {HIGH}{LOW}!", text_chunks=[f"hi {HIGH}", f"{LOW}!"]))
    async with make_provider(kind, server, retry=ONCE) as llm:
        deltas, text = await streamed(llm)
    assert deltas == ["hi ", "\U0001f600!"]
    assert text == "hi \U0001f600!"
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_half_a_pair_alone_becomes_the_replacement_character(
    kind: str, server: FakeLlmServer
) -> None:
    # Text no UTF-8 stream can write (printing a delta, saving a session) would fail later.
    chunks = [f"a{LOW}b{HIGH}", "c", f"d{HIGH}"]  # the last half waits for a piece that never comes
    server.script(Turn("".join(chunks), text_chunks=chunks))
    async with make_provider(kind, server, retry=ONCE) as llm:
        deltas, text = await streamed(llm)
    assert text == "a\ufffdb\ufffdcd\ufffd"
    assert "".join(deltas) == text
    assert deltas[-1] == "\ufffd"  # given out before the end, as the rest of the text


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_whole_reply_with_half_a_pair_is_read(kind: str, server: FakeLlmServer) -> None:
    server.script(Turn(f"ok {HIGH} {HIGH}{LOW}"))
    async with make_provider(kind, server, retry=ONCE) as llm:
        response = await llm.chat(USER)
    assert response.text == "ok \ufffd \U0001f600"


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("where", ["status", "event"])
async def test_an_error_message_with_half_a_pair_can_be_logged(
    kind: str, where: str, server: FakeLlmServer
) -> None:
    # The error's message held the lone surrogate: `str(error).encode()` failed, and so did
    # any log handler writing UTF-8 (a file, a terminal, a JSON log shipper).
    message = f"bad input near {HIGH}"
    if where == "status":
        error = {"type": "invalid_request_error", "message": message}
        body = json.dumps({"type": "error", "error": error}).encode()
        server.script(Reply(status=400, body=body, headers={"content-type": "application/json"}))
    elif kind == "openai":
        frames = [chunk({"content": "x"}), sse({"error": {"message": message, "type": "x"}})]
        server.script(Reply(frames=frames, headers={"content-type": "text/event-stream"}))
    else:
        error = {"type": "invalid_request_error", "message": message}
        frames = [anthropic_event("error", error=error)]
        server.script(Reply(frames=frames, headers={"content-type": "text/event-stream"}))
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ProviderError) as caught:
            await streamed(llm)
    text = str(caught.value)
    assert "bad input near \ufffd" in text
    text.encode("utf-8")


# ---------------------------------------------------------------------- byte order marks
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_whole_reply_opening_with_a_byte_order_mark_is_read(
    kind: str, server: FakeLlmServer
) -> None:
    # Some .NET gateways write one; httpx's `response.json()` (the official SDKs) reads it.
    def with_bom(request: Any) -> Reply:
        reply = render(Turn("ok"), request)
        return Reply(body=BOM + reply.body, headers=reply.headers)

    server.script(with_bom)
    async with make_provider(kind, server, retry=ONCE) as llm:
        assert (await llm.chat(USER)).text == "ok"


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_an_error_body_opening_with_a_byte_order_mark_keeps_its_message(
    kind: str, server: FakeLlmServer
) -> None:
    body = BOM + json.dumps({"error": {"type": "invalid_request_error", "message": "bad"}}).encode()
    server.script(Reply(status=400, body=body, headers={"content-type": "application/json"}))
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ProviderError) as caught:
            await llm.chat(USER)
    assert str(caught.value).endswith("API error: invalid_request_error: bad (status 400)")


# ---------------------------------------------------------------------- tool names
@pytest.mark.parametrize("index", [0, None], ids=["indexed", "no-index"])
async def test_a_tool_name_streamed_in_pieces_is_put_together(
    index: int | None, server: FakeLlmServer
) -> None:
    # OpenAI's SDK joins `function.name` pieces as it joins arguments; only "get_" was kept.
    def piece(**fields: Any) -> dict[str, Any]:
        return {"index": index, **fields} if index is not None else fields

    first = piece(id="call_1", type="function", function={"name": "get_", "arguments": ""})
    frames = [
        chunk({"role": "assistant", "tool_calls": [first]}),
        chunk({"tool_calls": [piece(function={"name": "weather"})]}),
        chunk({"tool_calls": [piece(function={"arguments": '{"city": '})]}),
        chunk({"tool_calls": [piece(function={"arguments": '"Paris"}'})]}),
        chunk({}, "tool_calls"),
        sse("[DONE]"),
    ]
    server.script(Reply(frames=frames, headers={"content-type": "text/event-stream"}))
    async with make_provider("openai", server, retry=ONCE) as llm:
        events = [event async for event in llm.chat_stream(USER)]
    assert events[-1].response.tool_calls == [
        ToolCall(id="call_1", name="get_weather", arguments={"city": "Paris"})
    ]
    names = [event.name for event in events if isinstance(event, ToolCallDelta) and event.name]
    assert names == ["get_", "weather"]


async def test_a_tool_name_repeated_in_every_piece_stays_whole(server: FakeLlmServer) -> None:
    # Each delta gave the whole name out again: joined, the deltas' names made
    # "get_weatherget_weatherget_weather", where `ToolCallDelta.name`'s pieces join up to it.
    function = {"name": "get_weather", "arguments": ""}
    first = {"index": 0, "id": "call_1", "type": "function", "function": function}
    frames = [chunk({"role": "assistant", "tool_calls": [first]})]
    for part in ['{"city": ', '"Paris"}']:
        repeated = {"index": 0, "function": {"name": "get_weather", "arguments": part}}
        frames.append(chunk({"tool_calls": [repeated]}))
    frames += [chunk({}, "tool_calls"), sse("[DONE]")]
    server.script(Reply(frames=frames, headers={"content-type": "text/event-stream"}))
    async with make_provider("openai", server, retry=ONCE) as llm:
        events = [event async for event in llm.chat_stream(USER)]
    assert events[-1].response.tool_calls == [
        ToolCall(id="call_1", name="get_weather", arguments={"city": "Paris"})
    ]
    names = [event.name for event in events if isinstance(event, ToolCallDelta) and event.name]
    assert names == ["get_weather"]  # given out once, on the call's first delta


# ---------------------------------------------------------------------- request bodies
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2.5, True, "100", 0, -3], ids=repr)
def test_anthropic_max_tokens_must_be_an_int_of_at_least_one(
    value: Any, server: FakeLlmServer
) -> None:
    # NaN was sent as the bare word NaN (no JSON), True as `true`, 2.5 as is; "100" raised a
    # raw TypeError.
    with pytest.raises(ValueError, match="max_tokens"):
        AnthropicProvider(base_url=server.url, api_key="x", max_tokens=value)


async def test_anthropic_max_tokens_takes_any_integer_type(server: FakeLlmServer) -> None:
    server.script(Turn("ok"))
    async with AnthropicProvider(
        base_url=server.url, api_key="x", max_tokens=np.int64(100), retry=ONCE
    ) as llm:
        await llm.chat(USER)
    assert server.requests[0].json["max_tokens"] == 100


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("number", [float("nan"), float("-inf")], ids=repr)
async def test_a_nan_in_a_request_is_refused_before_anything_is_sent(
    kind: str, stream: bool, number: float, server: FakeLlmServer
) -> None:
    # `temperature=nan` went out as `"temperature": NaN`, which no JSON parser takes.
    server.fallback = Turn("ok")
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ValueError, match=rf"holds {number!r} at temperature: JSON has no"):
            if stream:
                llm.chat_stream(USER, temperature=number)  # raised at once, as for `chat`
            else:
                await llm.chat(USER, temperature=number)
        if stream:  # with a stop sequence too (a model may refuse it: asked again without)
            with pytest.raises(ValueError, match="JSON has no"):
                llm.chat_stream(USER, temperature=number, stop=["END"])
        with pytest.raises(ValueError, match=r"at metadata\.scores\[1\]"):
            await llm.chat(USER, metadata={"scores": [1.0, number]})
    assert server.requests == []


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        ("openai", "the arguments object of tool call 'c1' holds nan at limits.x"),
        ("anthropic", "the request holds nan at messages[1].content[0].input.limits.x"),
    ],
)
async def test_a_nan_in_a_tool_calls_arguments_is_refused_before_anything_is_sent(
    kind: str, where: str, server: FakeLlmServer
) -> None:
    call = ToolCall(id="c1", name="f", arguments={"limits": {"x": float("nan")}})
    history = [
        Message("user", "hi"),
        Message("assistant", tool_calls=[call]),
        Message("tool", "done", tool_call_id="c1"),
    ]
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ValueError) as caught:
            await llm.chat(history)
    assert str(caught.value).startswith(where)
    assert server.requests == []
