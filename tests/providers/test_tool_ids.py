"""Tool calls as compatible servers send them: calls without ids, named by their place among
the reply's calls, never take an id another call has, streamed or not; and an Anthropic
`tool_use` block whose whole input comes with its start streams that input as its argument
pieces. Over loopback HTTP, against the fake server speaking each wire format."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_agent_runtime import RetryPolicy
from llm_agent_runtime.providers.base import (
    ChatResponse,
    Message,
    StreamEnd,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
)

from .conftest import PROVIDERS, make_provider
from .fake_server import FakeLlmServer, Reply, anthropic_event, sse

USER = [Message("user", "hi")]
ONCE = RetryPolicy(max_attempts=1)
STREAM = {"content-type": "text/event-stream"}
JSON = {"content-type": "application/json"}
HIGH = "\ud83d"
"""The first half of U+1F600, as JSON escapes it (`\\ud83d`): alone, no UTF-8 can write it."""

Call = tuple[str | None, str, dict[str, Any]]
"""A call as the server sends it: its id (None: left out), its tool's name, its arguments."""


def openai_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return sse({"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def openai_piece(index: int, call_id: str | None, **function: Any) -> bytes:
    """A streamed piece of the call at `index`, its id left out when None."""
    call: dict[str, Any] = {"index": index, "type": "function", "function": function}
    if call_id is not None:
        call["id"] = call_id
    return openai_chunk({"tool_calls": [call]})


def openai_reply(calls: list[Call], stream: bool) -> Reply:
    """A Chat Completions reply with `calls`, as servers that leave ids out send it."""
    if stream:
        frames = [openai_chunk({"role": "assistant", "content": None})]
        for index, (call_id, name, arguments) in enumerate(calls):
            frames.append(openai_piece(index, call_id, name=name, arguments=""))
            frames.append(openai_piece(index, None, arguments=json.dumps(arguments)))
        frames += [openai_chunk({}, "tool_calls"), sse("[DONE]")]
        return Reply(frames=frames, headers=STREAM)
    wire_calls = []
    for call_id, name, arguments in calls:
        function = {"name": name, "arguments": json.dumps(arguments)}
        wire_call: dict[str, Any] = {"type": "function", "function": function}
        if call_id is not None:
            wire_call["id"] = call_id
        wire_calls.append(wire_call)
    message = {"role": "assistant", "content": None, "tool_calls": wire_calls}
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
    return Reply(body=json.dumps({"model": "m", "choices": [choice]}).encode(), headers=JSON)


def anthropic_tool_use(call_id: str | None, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_use", "name": name, "input": arguments}
    if call_id is not None:
        block["id"] = call_id
    return block


def anthropic_start() -> bytes:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m"}
    usage = {"input_tokens": 3, "output_tokens": 1}
    return anthropic_event("message_start", message={**message, "content": [], "usage": usage})


def anthropic_end() -> list[bytes]:
    delta = {"stop_reason": "tool_use", "stop_sequence": None}
    return [
        anthropic_event("message_delta", delta=delta, usage={"output_tokens": 5}),
        anthropic_event("message_stop"),
    ]


def anthropic_json(index: int, partial: str) -> bytes:
    delta = {"type": "input_json_delta", "partial_json": partial}
    return anthropic_event("content_block_delta", index=index, delta=delta)


def anthropic_reply(calls: list[Call], stream: bool) -> Reply:
    """A Messages API reply with `calls`, as servers that leave ids out send it."""
    if stream:
        frames = [anthropic_start()]
        for index, (call_id, name, arguments) in enumerate(calls):
            block = anthropic_tool_use(call_id, name, {})
            frames += [
                anthropic_event("content_block_start", index=index, content_block=block),
                anthropic_json(index, json.dumps(arguments)),
                anthropic_event("content_block_stop", index=index),
            ]
        return Reply(frames=frames + anthropic_end(), headers=STREAM)
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [anthropic_tool_use(*call) for call in calls],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 3, "output_tokens": 5},
    }
    return Reply(body=json.dumps(body).encode(), headers=JSON)


async def answer(llm: Any, stream: bool) -> tuple[list[StreamEvent], ChatResponse]:
    """The events of the reply (none when not streamed) and the reply itself."""
    if not stream:
        return [], await llm.chat(USER)
    events = [event async for event in llm.chat_stream(USER)]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    return events, end.response


def delta_ids(events: list[StreamEvent]) -> dict[int, set[str]]:
    """The ids the deltas gave out, by call position."""
    given: dict[int, set[str]] = {}
    for event in events:
        if isinstance(event, ToolCallDelta) and event.id:
            given.setdefault(event.index, set()).add(event.id)
    return given


def joined_arguments(events: list[StreamEvent], index: int) -> str:
    """The argument pieces the deltas of the call at `index` gave out, joined."""
    return "".join(
        e.arguments_delta for e in events if isinstance(e, ToolCallDelta) and e.index == index
    )


# ---------------------------------------------------------------------- ids without clashes
@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize(
    ("received", "given"),
    [
        # A call without an id was named `call_<position>`, another call's own id.
        (["call_1", None], ["call_1", "call_1_1"]),
        ([None, "call_0"], ["call_0_0", "call_0"]),
        # Suffixed as often as it takes, past an id another call brought already suffixed.
        ([None, "call_0", "call_0_0"], ["call_0_0_0", "call_0", "call_0_0"]),
        # Ordinary replies keep their ids: all missing, or all their own and distinct.
        ([None, None, None], ["call_0", "call_1", "call_2"]),
        (["call_a", "toolu_b"], ["call_a", "toolu_b"]),
    ],
    ids=["real-then-missing", "missing-then-real", "chain", "all-missing", "all-real"],
)
async def test_a_call_without_an_id_never_gets_another_calls_id(
    kind: str,
    stream: bool,
    received: list[str | None],
    given: list[str],
    server: FakeLlmServer,
) -> None:
    # Two calls shared an id: each tool's result went back under an id that named both, and
    # was matched to the wrong call. The same reply gives the same ids, streamed or not.
    calls: list[Call] = [(call_id, f"tool{n}", {"n": n}) for n, call_id in enumerate(received)]
    render = openai_reply if kind == "openai" else anthropic_reply
    server.script(render(calls, stream))
    async with make_provider(kind, server, retry=ONCE) as llm:
        events, response = await answer(llm, stream)
    assert response.tool_calls == [
        ToolCall(call_id, f"tool{n}", {"n": n}) for n, call_id in enumerate(given)
    ]
    if stream:  # an id a delta gave out is the call's id in the reply
        expected = {n: {given[n]} for n, call_id in enumerate(received) if call_id is not None}
        assert delta_ids(events) == expected


async def test_an_openai_id_that_arrives_late_is_not_given_to_a_call_without_one(
    server: FakeLlmServer,
) -> None:
    # The second call's id, `call_0`, came with its second piece, after both calls started,
    # and went out in that piece's delta; the first call, which never got an id, was named
    # `call_0` as well when the reply was built.
    frames = [
        openai_piece(0, None, name="add", arguments='{"a": 1}'),
        openai_piece(1, None, name="mul", arguments=""),
        openai_piece(1, "call_0", arguments='{"b": 2}'),
        openai_chunk({}, "tool_calls"),
        sse("[DONE]"),
    ]
    server.script(Reply(frames=frames, headers=STREAM))
    async with make_provider("openai", server, retry=ONCE) as llm:
        events, response = await answer(llm, stream=True)
    assert delta_ids(events) == {1: {"call_0"}}
    assert response.tool_calls == [
        ToolCall("call_0_0", "add", {"a": 1}),
        ToolCall("call_0", "mul", {"b": 2}),
    ]


# ---------------------------------------------------------------------- input sent whole
@pytest.mark.parametrize("block_stop", [True, False], ids=["block-stop", "no-block-stop"])
async def test_anthropic_input_sent_with_the_block_start_is_streamed_as_its_arguments(
    block_stop: bool, server: FakeLlmServer
) -> None:
    # Some compatible servers send a tool_use block's whole input with its start and no
    # input_json_delta: the reply held the arguments, but the deltas gave out none of them.
    # Where input_json_delta pieces follow a start's input all the same, the pieces win,
    # and the start's input is given out nowhere.
    whole = {"city": "Zürich \U0001f600", "days": [1, 2], "lone": HIGH}
    starts = [
        anthropic_tool_use("toolu_1", "forecast", whole),
        anthropic_tool_use("toolu_2", "add", {"stale": True}),
    ]
    pieces = [[], ['{"a": ', "1}"]]
    frames = [anthropic_start()]
    for index, (start, partials) in enumerate(zip(starts, pieces, strict=True)):
        frames.append(anthropic_event("content_block_start", index=index, content_block=start))
        frames += [anthropic_json(index, partial) for partial in partials]
        if block_stop:
            frames.append(anthropic_event("content_block_stop", index=index))
    server.script(Reply(frames=frames + anthropic_end(), headers=STREAM))
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        events, response = await answer(llm, stream=True)
    cleaned = {**whole, "lone": "\ufffd"}  # half a pair alone: U+FFFD, in deltas and reply
    assert response.tool_calls == [
        ToolCall("toolu_1", "forecast", cleaned),
        ToolCall("toolu_2", "add", {"a": 1}),
    ]
    for index, call in enumerate(response.tool_calls):
        assert json.loads(joined_arguments(events, index)) == call.arguments
    assert joined_arguments(events, 1) == '{"a": 1}'
    for event in events:
        if isinstance(event, ToolCallDelta):
            event.arguments_delta.encode()  # no lone half: UTF-8 can write every piece
    if block_stop:  # given out as its block stops, before the next call starts
        given = next(
            n
            for n, e in enumerate(events)
            if isinstance(e, ToolCallDelta) and e.index == 0 and e.arguments_delta
        )
        second_start = events.index(ToolCallDelta(1, "toolu_2", "add", ""))
        assert given < second_start
