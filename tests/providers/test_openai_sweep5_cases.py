"""OpenAI provider faults found in the fifth sweep, each checked over real HTTP on loopback.

The streams are the wire shapes OpenAI-compatible servers send: the same call streamed
and replied whole must give the same `ChatResponse`.
"""

from __future__ import annotations

import json
from typing import Any

import llm_agent_runtime as ar
from llm_agent_runtime.providers.base import Message, StreamEnd, ToolCall, ToolCallDelta

from .conftest import make_provider
from .fake_server import FakeLlmServer, Reply, Turn, sse

ONCE = ar.RetryPolicy(max_attempts=1)
EVENTS = {"content-type": "text/event-stream"}
ASK = [Message("user", "weather in Paris?")]


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    return sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
    )


def _call(
    index: int, call_id: str | None = None, name: str | None = None, arguments: str = ""
) -> bytes:
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    part: dict[str, Any] = {"index": index, "type": "function", "function": function}
    if call_id is not None:
        part["id"] = call_id
    return _chunk({"tool_calls": [part]})


def _stream(*frames: bytes) -> Reply:
    return Reply(
        headers=EVENTS,
        frames=[*frames, _chunk({}, "tool_calls"), sse("[DONE]")],
    )


async def _both(server: FakeLlmServer, stream: Reply, whole: Turn) -> tuple[Any, list[Any]]:
    """The streamed response and its events, checked against the same reply sent whole."""
    server.script(stream, whole)
    async with make_provider("openai", server, retry=ONCE) as llm:
        events = [event async for event in llm.chat_stream(ASK)]
        replied = await llm.chat(ASK)
    assert isinstance(events[-1], StreamEnd)
    streamed = events[-1].response
    assert streamed.tool_calls == replied.tool_calls
    return streamed, [event for event in events if isinstance(event, ToolCallDelta)]


def _joined(deltas: list[ToolCallDelta], index: int) -> Any:
    """The arguments a consumer that joins the deltas' fragments reads for call `index`."""
    return json.loads("".join(d.arguments_delta for d in deltas if d.index == index))


# ------------------------------------------------------------ arguments sent again
async def test_arguments_resent_whole_after_streaming_are_not_doubled(
    server: FakeLlmServer,
) -> None:
    # Gateways that translate other APIs stream a call's arguments in pieces, then send a
    # consolidated chunk with the whole call again (re-serialized: other spacing). The
    # arguments became '{"city": "Paris"}{"city":"Paris"}' and the stream failed where the
    # unstreamed reply gave the call.
    stream = _stream(
        _call(0, "call_1", "get_weather"),
        _call(0, arguments='{"city": '),
        _call(0, arguments='"Paris"}'),
        _call(0, "call_1", "get_weather", '{"city":"Paris"}'),
    )
    whole = Turn(tool_calls=[("call_1", "get_weather", {"city": "Paris"})])
    streamed, deltas = await _both(server, stream, whole)
    assert streamed.tool_calls == [ToolCall("call_1", "get_weather", {"city": "Paris"})]
    assert _joined(deltas, 0) == {"city": "Paris"}


async def test_arguments_sent_whole_twice_are_one_call(server: FakeLlmServer) -> None:
    # A call sent whole in one chunk, then its arguments again in a chunk without id or name.
    stream = _stream(
        _call(0, "call_1", "get_weather", '{"city": "Paris"}'),
        _call(0, arguments='{"city": "Paris"}'),
    )
    whole = Turn(tool_calls=[("call_1", "get_weather", {"city": "Paris"})])
    streamed, deltas = await _both(server, stream, whole)
    assert streamed.tool_calls == [ToolCall("call_1", "get_weather", {"city": "Paris"})]
    assert _joined(deltas, 0) == {"city": "Paris"}


async def test_cumulative_arguments_are_read_as_the_arguments_so_far(
    server: FakeLlmServer,
) -> None:
    # DeepSeek and Baidu Qianfan can stream in cumulative mode: each chunk carries the
    # arguments so far, not the next piece. Joined, they were broken JSON.
    stream = _stream(
        _call(0, "call_1", "get_weather", '{"city"'),
        _call(0, arguments='{"city": "Par'),
        _call(0, arguments='{"city": "Paris", "unit": "C"}'),
    )
    whole = Turn(tool_calls=[("call_1", "get_weather", {"city": "Paris", "unit": "C"})])
    streamed, deltas = await _both(server, stream, whole)
    assert streamed.tool_calls == [
        ToolCall("call_1", "get_weather", {"city": "Paris", "unit": "C"})
    ]
    assert _joined(deltas, 0) == {"city": "Paris", "unit": "C"}


async def test_nested_objects_streamed_in_pieces_are_kept(server: FakeLlmServer) -> None:
    # A genuine piece may open an object of its own: only a piece that repeats the
    # arguments so far is read as a resend.
    stream = _stream(
        _call(0, "call_1", "book", '{"trip": '),
        _call(0, arguments='{"from": "Paris"}'),
        _call(0, arguments=', "legs": [{"to": "Rome"}, '),
        _call(0, arguments='{"to": "Oslo"}]}'),
    )
    arguments = {"trip": {"from": "Paris"}, "legs": [{"to": "Rome"}, {"to": "Oslo"}]}
    whole = Turn(tool_calls=[("call_1", "book", arguments)])
    streamed, deltas = await _both(server, stream, whole)
    assert streamed.tool_calls == [ToolCall("call_1", "book", arguments)]
    assert _joined(deltas, 0) == arguments


async def test_a_nested_object_repeating_the_arguments_so_far_is_kept(
    server: FakeLlmServer,
) -> None:
    # `{"a": ` then `{"a": 1}}`: read as the arguments so far, its end `1}}` closed more
    # than was open, and the call failed as not JSON where the pieces join to valid JSON.
    stream = _stream(
        _call(0, "call_1", "f", '{"a": '),
        _call(0, arguments='{"a": 1}}'),
    )
    whole = Turn(tool_calls=[("call_1", "f", {"a": {"a": 1}})])
    streamed, deltas = await _both(server, stream, whole)
    assert streamed.tool_calls == [ToolCall("call_1", "f", {"a": {"a": 1}})]
    assert _joined(deltas, 0) == {"a": {"a": 1}}


# ------------------------------------------------------------ ids that change per chunk
async def test_a_call_whose_id_changes_between_chunks_stays_one_call(
    server: FakeLlmServer,
) -> None:
    # Some servers (Poolside's API, early vLLM gpt-oss streaming, mlx-openai-server) mint a
    # new id in every chunk of one call at the same index. Each new id started a new call
    # without a name, and the stream failed on the pieces of JSON ('{"city"').
    stream = _stream(
        _call(0, "call_a", "get_weather", ""),
        _call(0, "call_b", None, '{"city"'),
        _call(0, "call_c", None, ': "Paris"}'),
    )
    whole = Turn(tool_calls=[("call_a", "get_weather", {"city": "Paris"})])
    streamed, deltas = await _both(server, stream, whole)
    assert streamed.tool_calls == [ToolCall("call_a", "get_weather", {"city": "Paris"})]
    assert {d.index for d in deltas} == {0}
    assert {d.id for d in deltas if d.id} == {"call_a"}
    assert _joined(deltas, 0) == {"city": "Paris"}


async def test_calls_sent_whole_at_one_index_with_their_own_ids_stay_apart(
    server: FakeLlmServer,
) -> None:
    # Ollama's form: every call whole at index 0 with its own id, a call without
    # arguments ("") included.
    stream = _stream(
        _call(0, "call_1", "get_weather", '{"city": "Paris"}'),
        _call(0, "call_2", "get_time", ""),
        _call(0, "call_3", "get_date", ""),
        _call(0, "call_4", "get_weather", '{"city": "Paris"}'),
    )
    whole = Turn(
        tool_calls=[
            ("call_1", "get_weather", {"city": "Paris"}),
            ("call_2", "get_time", {}),
            ("call_3", "get_date", {}),
            ("call_4", "get_weather", {"city": "Paris"}),
        ]
    )
    streamed, _ = await _both(server, stream, whole)
    assert [call.id for call in streamed.tool_calls] == ["call_1", "call_2", "call_3", "call_4"]
