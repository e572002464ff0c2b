"""Tool calls streamed in pieces as servers really cut them: an emoji split between two
deltas as lone surrogate escapes, in a call's name, id or arguments, comes out whole, and a
half alone as U+FFFD, so that no str the caller gets holds half a pair (nor does a whole
reply's call). Over loopback HTTP, against the fake server speaking each wire format."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from llm_agent_runtime import ProviderError, RetryPolicy
from llm_agent_runtime.providers._http import clean_json
from llm_agent_runtime.providers.base import (
    Message,
    StreamEnd,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
)

from .conftest import PROVIDERS, make_provider
from .fake_server import FakeLlmServer, Reply, Turn, anthropic_event, sse

USER = [Message("user", "hi")]
ONCE = RetryPolicy(max_attempts=1)
STREAM = {"content-type": "text/event-stream"}
HIGH, LOW = "\ud83d", "\ude00"
"""The two halves of U+1F600, as JSON escapes them (`\\ud83d\\ude00`)."""
EMOJI = "\U0001f600"


def strings(value: Any) -> list[str]:
    """Every str in a stream event or what it holds (fields, lists, dict keys and values)."""
    if isinstance(value, str):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    elif not isinstance(value, (list, tuple)):
        return []
    return [text for item in value for text in strings(item)]


def assert_writable(events: list[StreamEvent]) -> None:
    """No str in the events holds a lone surrogate: each has a UTF-8 form."""
    for text in strings(events):
        text.encode("utf-8")  # raises UnicodeEncodeError on half a pair


def joined(events: list[StreamEvent], index: int) -> tuple[str, str]:
    """A call's name and arguments, as its deltas give them out piece by piece."""
    deltas = [e for e in events if isinstance(e, ToolCallDelta) and e.index == index]
    return "".join(d.name or "" for d in deltas), "".join(d.arguments_delta for d in deltas)


def openai_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return sse({"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def openai_call(index: int, **fields: Any) -> bytes:
    return openai_chunk({"tool_calls": [{"index": index, **fields}]})


async def test_openai_tool_call_names_ids_and_arguments_are_cleaned_piece_by_piece(
    server: FakeLlmServer,
) -> None:
    # The text deltas were repaired; a tool call's pieces went out as they came: an emoji
    # cut between two pieces of a name or of the arguments was two lone halves (in the
    # deltas, and in the call: `.encode()` of its name or arguments failed, in a checkpoint).
    frames = [
        openai_chunk({"role": "assistant", "content": None}),
        openai_call(0, id="call_a", type="function", function={"name": f"find_{HIGH}"}),
        openai_call(0, function={"name": f"{LOW}s"}),
        openai_call(0, function={"arguments": f'{{"q": "a{HIGH}'}),
        openai_call(0, function={"arguments": f'{LOW}b", "r": "{LOW}"}}'}),
        # A second call whose halves never find their pair: each becomes U+FFFD.
        openai_call(1, id=f"call_{HIGH}", type="function", function={"name": f"f{HIGH}"}),
        openai_call(1, function={"arguments": f'{{"x": "{HIGH}"}}'}),
        openai_chunk({}, "tool_calls"),
        sse("[DONE]"),
    ]
    server.script(Reply(frames=frames, headers=STREAM))
    async with make_provider("openai", server, retry=ONCE) as llm:
        events = [event async for event in llm.chat_stream(USER)]
    assert_writable(events)
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.response.tool_calls == [
        ToolCall("call_a", f"find_{EMOJI}s", {"q": f"a{EMOJI}b", "r": "\ufffd"}),
        ToolCall("call_\ufffd", "f\ufffd", {"x": "\ufffd"}),
    ]
    # The deltas give out the same, piece by piece (a half kept back goes out last).
    assert joined(events, 0) == (f"find_{EMOJI}s", f'{{"q": "a{EMOJI}b", "r": "\ufffd"}}')
    assert joined(events, 1) == ("f\ufffd", '{"x": "\ufffd"}')
    ids = [e.id for e in events if isinstance(e, ToolCallDelta) and e.id]
    assert ids == ["call_a", "call_\ufffd"]


async def test_anthropic_tool_call_ids_names_and_arguments_are_cleaned(
    server: FakeLlmServer,
) -> None:
    # `content_block_start` brings the id and the name whole, `input_json_delta` the
    # arguments in pieces: a pair escaped whole in one string (two code points once
    # decoded), a pair cut between two pieces and a lone half each reached the caller.
    def block_start(index: int, call_id: str, name: str) -> bytes:
        block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        return anthropic_event("content_block_start", index=index, content_block=block)

    def arguments(index: int, piece: str) -> bytes:
        delta = {"type": "input_json_delta", "partial_json": piece}
        return anthropic_event("content_block_delta", index=index, delta=delta)

    message = {"id": "m", "type": "message", "role": "assistant", "model": "m", "content": []}
    frames = [
        anthropic_event("message_start", message={**message, "usage": {"input_tokens": 3}}),
        block_start(0, f"toolu_{LOW}", f"find_{HIGH}{LOW}"),
        arguments(0, f'{{"q": "a{HIGH}'),
        arguments(0, f'{LOW}b", "r": "{HIGH}'),
        arguments(0, '"}'),
        anthropic_event("content_block_stop", index=0),
        block_start(1, "toolu_2", "g"),
        arguments(1, f'{{"x": "{LOW}"}}'),
        anthropic_event("content_block_stop", index=1),
        anthropic_event(
            "message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 5}
        ),
        anthropic_event("message_stop"),
    ]
    server.script(Reply(frames=frames, headers=STREAM))
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        events = [event async for event in llm.chat_stream(USER)]
    assert_writable(events)
    starts = [(e.id, e.name) for e in events if isinstance(e, ToolCallDelta) and e.id]
    assert starts == [("toolu_\ufffd", f"find_{EMOJI}"), ("toolu_2", "g")]
    assert joined(events, 0)[1] == f'{{"q": "a{EMOJI}b", "r": "\ufffd"}}'
    assert joined(events, 1)[1] == '{"x": "\ufffd"}'
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.response.tool_calls == [
        ToolCall("toolu_\ufffd", f"find_{EMOJI}", {"q": f"a{EMOJI}b", "r": "\ufffd"}),
        ToolCall("toolu_2", "g", {"x": "\ufffd"}),
    ]


async def test_openai_a_half_that_ends_a_streamed_name_goes_out_before_the_end(
    server: FakeLlmServer,
) -> None:
    # Kept back for its pair, a last half is given out when the stream ends (as U+FFFD),
    # so that the deltas add up to the call.
    frames = [
        openai_call(0, id="c", type="function", function={"name": f"f{HIGH}", "arguments": ""}),
        openai_call(0, function={"arguments": '{"a": 1}'}),
        openai_chunk({}, "tool_calls"),
        sse("[DONE]"),
    ]
    server.script(Reply(frames=frames, headers=STREAM))
    async with make_provider("openai", server, retry=ONCE) as llm:
        events = [event async for event in llm.chat_stream(USER)]
    assert_writable(events)
    assert events[-2] == ToolCallDelta(0, None, "\ufffd", "")
    assert joined(events, 0) == ("f\ufffd", '{"a": 1}')
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.response.tool_calls == [ToolCall("c", "f\ufffd", {"a": 1})]


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_arguments_whose_json_escapes_half_a_pair_are_cleaned(
    kind: str, stream: bool, server: FakeLlmServer
) -> None:
    # The arguments' own JSON text may escape half a pair (`"\ud83d"`): decoded, the call's
    # arguments held it alone, as did a name or an id a whole reply escaped so.
    arguments = {"q": HIGH, f"{LOW}k": [HIGH + LOW, {"deep": f"x{LOW}"}]}
    server.script(Turn(tool_calls=[(f"id_{HIGH}", f"n{LOW}", arguments)]))
    async with make_provider(kind, server, retry=ONCE) as llm:
        if stream:
            events = [event async for event in llm.chat_stream(USER)]
            assert_writable(events)
            end = events[-1]
            assert isinstance(end, StreamEnd)
            response = end.response
        else:
            response = await llm.chat(USER)
    assert response.tool_calls == [
        ToolCall("id_\ufffd", "n\ufffd", {"q": "\ufffd", "\ufffdk": [EMOJI, {"deep": "x\ufffd"}]})
    ]


def test_clean_json_cleans_every_str_in_place_however_deep() -> None:
    deep: list[Any] = [HIGH]
    for _ in range(100_000):  # far deeper than a recursive walk could go
        deep = [deep]
    value = {"a": deep, HIGH: {LOW: "ok"}, "n": 1}
    assert clean_json(value) is value
    assert list(value) == ["a", "\ufffd", "n"]
    assert value["\ufffd"] == {"\ufffd": "ok"}
    inner = value["a"]
    while isinstance(inner[0], list):
        inner = inner[0]
    assert inner == ["\ufffd"]
    assert clean_json(f"{HIGH}{LOW}") == EMOJI


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_two_calls_whose_ids_clean_alike_keep_ids_of_their_own(
    kind: str, stream: bool, server: FakeLlmServer
) -> None:
    # Ids that differ only in a lone half both cleaned to `call_\ufffd`: two calls given the
    # same id, so the result of one tool could not be told from the other's.
    calls = [(f"call_{HIGH}", "add", {"a": 1}), (f"call_{LOW}", "mul", {"b": 2})]
    server.script(Turn(tool_calls=calls))
    async with make_provider(kind, server, retry=ONCE) as llm:
        if stream:
            events = [event async for event in llm.chat_stream(USER)]
            assert_writable(events)
            ids = [(e.index, e.id) for e in events if isinstance(e, ToolCallDelta) and e.id]
            assert dict(ids) == {0: "call_\ufffd", 1: "call_\ufffd_1"}
            end = events[-1]
            assert isinstance(end, StreamEnd)
            response = end.response
        else:
            response = await llm.chat(USER)
    assert response.tool_calls == [
        ToolCall("call_\ufffd", "add", {"a": 1}),
        ToolCall("call_\ufffd_1", "mul", {"b": 2}),
    ]


def openai_unindexed(**fields: Any) -> bytes:
    """A piece of a tool call without its `index`, as some compatible servers send them."""
    return openai_chunk({"tool_calls": [{"type": "function", **fields}]})


async def test_openai_unindexed_calls_whose_ids_clean_alike_stay_two_calls(
    server: FakeLlmServer,
) -> None:
    # Told apart by their cleaned ids, the second call's piece continued the first: its
    # arguments were appended to the first call's, whose JSON then failed to decode.
    frames = [
        openai_unindexed(id=f"call_{HIGH}", function={"name": "add", "arguments": '{"a": 1}'}),
        openai_unindexed(id=f"call_{LOW}", function={"name": "mul", "arguments": '{"b": 2}'}),
        openai_chunk({}, "tool_calls"),
        sse("[DONE]"),
    ]
    server.script(Reply(frames=frames, headers=STREAM))
    async with make_provider("openai", server, retry=ONCE) as llm:
        events = [event async for event in llm.chat_stream(USER)]
    assert_writable(events)
    assert [e for e in events if isinstance(e, ToolCallDelta)] == [
        ToolCallDelta(0, "call_\ufffd", "add", '{"a": 1}'),
        ToolCallDelta(1, "call_\ufffd_1", "mul", '{"b": 2}'),
    ]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.response.tool_calls == [
        ToolCall("call_\ufffd", "add", {"a": 1}),
        ToolCall("call_\ufffd_1", "mul", {"b": 2}),
    ]


@pytest.mark.parametrize("index", [0, None], ids=["index-0", "no-index"])
async def test_openai_the_next_calls_name_goes_out_on_the_next_call(
    index: int | None, server: FakeLlmServer
) -> None:
    # Calls without ids (at index 0 each, or with none): after a whole call, a piece that
    # names the next call with its arguments to come gave the name out on the call before,
    # so the deltas named the calls `addmul` and nothing, where the reply said add and mul.
    def piece(**function: Any) -> bytes:
        call: dict[str, Any] = {"type": "function", "function": function}
        if index is not None:
            call["index"] = index
        return openai_chunk({"tool_calls": [call]})

    frames = [
        piece(name="add", arguments='{"a": 1, "b": 2}'),
        piece(name="mul", arguments=""),
        piece(arguments='{"x": 3}'),
        openai_chunk({}, "tool_calls"),
        sse("[DONE]"),
    ]
    server.script(Reply(frames=frames, headers=STREAM))
    async with make_provider("openai", server, retry=ONCE) as llm:
        events = [event async for event in llm.chat_stream(USER)]
    assert joined(events, 0) == ("add", '{"a": 1, "b": 2}')
    assert joined(events, 1) == ("mul", '{"x": 3}')
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.response.tool_calls == [
        ToolCall("call_0", "add", {"a": 1, "b": 2}),
        ToolCall("call_1", "mul", {"x": 3}),
    ]


async def test_anthropic_a_tool_use_block_started_twice_fails_the_stream(
    server: FakeLlmServer,
) -> None:
    # The second start replaced the first block: the call given out in deltas was missing
    # from the reply, with nothing to say so.
    def block_start(call_id: str, name: str) -> bytes:
        block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        return anthropic_event("content_block_start", index=1, content_block=block)

    def arguments(piece: str) -> bytes:
        delta = {"type": "input_json_delta", "partial_json": piece}
        return anthropic_event("content_block_delta", index=1, delta=delta)

    message = {"id": "m", "type": "message", "role": "assistant", "model": "m", "content": []}
    frames = [
        anthropic_event("message_start", message={**message, "usage": {"input_tokens": 3}}),
        block_start("t0", "add"),
        arguments('{"a": 1}'),
        block_start("t1", "mul"),
        arguments('{"b": 2}'),
        anthropic_event(
            "message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 5}
        ),
        anthropic_event("message_stop"),
    ]
    server.script(Reply(frames=frames, headers=STREAM))
    events: list[StreamEvent] = []
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        with pytest.raises(ProviderError, match="content block 1, a tool call's, started twice"):
            async for event in llm.chat_stream(USER):
                events.append(event)
    assert not any(isinstance(event, StreamEnd) for event in events)
    assert joined(events, 0) == ("add", '{"a": 1}')
