"""Conversations and replies the providers must carry right, on the wire against the fake
server: empty messages (Anthropic), server-side tool blocks in a stream (Anthropic), refusals
and content-filter chunks (OpenAI), tool calls cut off by the token limit, and token usage
that is null or unreadable (both)."""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime import ProviderError, RetryPolicy
from llm_agent_runtime.providers.base import (
    ChatResponse,
    CutOffArgumentsError,
    Message,
    StreamEnd,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)

from .conftest import PROVIDERS, make_provider
from .fake_server import (
    FakeLlmServer,
    Reply,
    Turn,
    anthropic_event,
    render_anthropic,
    render_openai,
    sse,
)

ONCE = RetryPolicy(max_attempts=1)


async def chat(llm: Any, messages: list[Message], streaming: bool) -> tuple[ChatResponse, str]:
    """The response, and the text of the streamed `TextDelta`s (the response's, unstreamed)."""
    if not streaming:
        response = await llm.chat(messages)
        return response, response.text
    events = [e async for e in llm.chat_stream(messages)]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    return end.response, "".join(e.text for e in events if isinstance(e, TextDelta))


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


# ---------------------------------------------------------------------- empty messages
async def test_anthropic_leaves_out_empty_messages_and_merges_what_then_meets(
    server: FakeLlmServer,
) -> None:
    """The API refuses a message without content ("all messages must have non-empty content
    except for the optional final assistant message") and whitespace-only text blocks."""
    server.fallback = Turn("ok")
    conversations = {
        "the runtime's history after an empty answer": [
            Message("system", "sys"),
            Message("user", "first"),
            Message("assistant", ""),
            Message("user", "second"),
        ],
        "empty and blank messages of either role": [
            Message("user", "hi"),
            Message("assistant", "a"),
            Message("user", ""),
            Message("assistant", " \n"),
            Message("user", "next"),
        ],
        "an empty final assistant message (a prefill of nothing)": [
            Message("user", "hi"),
            Message("assistant", ""),
        ],
        "an empty user message after tool results": [
            Message("user", "go"),
            Message("assistant", "", [ToolCall("t1", "add", {"a": 1})]),
            Message("tool", "", tool_call_id="t1", name="add"),
            Message("user", ""),
        ],
    }
    async with make_provider("anthropic", server) as llm:
        for messages in conversations.values():
            assert (await llm.chat(messages)).text == "ok"
    sent = [request.json["messages"] for request in server.requests]
    assert sent == [
        [{"role": "user", "content": [text("first"), text("second")]}],
        [
            {"role": "user", "content": [text("hi")]},
            {"role": "assistant", "content": [text("a")]},
            {"role": "user", "content": [text("next")]},
        ],
        [{"role": "user", "content": [text("hi")]}],
        [
            {"role": "user", "content": [text("go")]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "add", "input": {"a": 1}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": ""}],
            },
        ],
    ]
    for messages in sent:
        assert all(message["content"] for message in messages)
        roles = [message["role"] for message in messages]
        assert all(a != b for a, b in itertools.pairwise(roles))


@pytest.mark.parametrize(
    "messages",
    [
        [Message("user", "")],
        [Message("user", "hi"), Message("assistant", "hello"), Message("user", "  ")],
    ],
    ids=["only an empty user message", "an empty last user message"],
)
async def test_anthropic_refuses_an_empty_last_user_message_without_a_request(
    messages: list[Message], server: FakeLlmServer
) -> None:
    """Left out, it would leave nothing to send, or turn the answer before it into a prefill."""
    async with make_provider("anthropic", server) as llm:
        with pytest.raises(ProviderError, match="last user message is empty") as error:
            await llm.chat(messages)
        with pytest.raises(ProviderError, match="last user message is empty"):
            llm.chat_stream(messages)  # at once, as for bad parameters
    assert error.value.retryable is False
    assert server.requests == []


async def test_anthropic_session_survives_an_empty_answer(server: FakeLlmServer) -> None:
    """The runtime keeps `{"role": "assistant", "content": ""}` in the session's history (an
    answer a hook redacted to nothing: an empty reply from the model fails its turn)."""

    class Redact(ar.Middleware):
        def on_post_llm(self, session: ar.AgentSession, text: str) -> str:
            return "" if text == "secret" else text

    server.script(Turn("secret"), Turn("ok"))
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools", system_prompt="sys"), middlewares=[Redact()]
    )
    session = runtime.create_session("a")
    async with make_provider("anthropic", server) as llm:
        assert await runtime.run_turn(session, "first", llm) == ""
        assert await runtime.run_turn(session, "second", llm) == "ok"
    second = server.requests[1].json["messages"]
    assert second == [{"role": "user", "content": [text("first"), text("second")]}]


# ---------------------------------------------------------------------- server-side tools
def _anthropic_frames(*blocks: list[bytes], stop: str = "end_turn") -> list[bytes]:
    start = anthropic_event(
        "message_start",
        message={
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 10, "output_tokens": 1},
        },
    )
    end = [
        anthropic_event(
            "message_delta",
            delta={"stop_reason": stop, "stop_sequence": None},
            usage={"output_tokens": 20, "server_tool_use": {"web_search_requests": 1}},
        ),
        anthropic_event("message_stop"),
    ]
    return [start, *(frame for block in blocks for frame in block), *end]


def _block(index: int, block: dict[str, Any], *deltas: dict[str, Any]) -> list[bytes]:
    return [
        anthropic_event("content_block_start", index=index, content_block=block),
        *(anthropic_event("content_block_delta", index=index, delta=d) for d in deltas),
        anthropic_event("content_block_stop", index=index),
    ]


def _json(partial: str) -> dict[str, str]:
    return {"type": "input_json_delta", "partial_json": partial}


async def test_anthropic_stream_skips_server_side_tool_blocks(server: FakeLlmServer) -> None:
    """Server tools (web search, MCP) stream their input too; they are no client tool calls."""
    result = [{"type": "web_search_result", "title": "t", "url": "u", "encrypted_content": "e"}]
    frames = _anthropic_frames(
        _block(0, text(""), {"type": "text_delta", "text": "Searching. "}),
        _block(
            1,
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
            _json(""),
            _json('{"query": '),
            _json('"weather"}'),
        ),
        _block(
            2, {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": result}
        ),
        _block(
            3,
            {
                "type": "mcp_tool_use",
                "id": "mcptoolu_1",
                "name": "lookup",
                "server_name": "s",
                "input": {},
            },
            _json('{"q": 1}'),
        ),
        _block(
            4,
            {
                "type": "mcp_tool_result",
                "tool_use_id": "mcptoolu_1",
                "is_error": False,
                "content": [text("r")],
            },
        ),
        _block(
            5,
            text(""),
            {"type": "text_delta", "text": "Sunny."},
            {
                "type": "citations_delta",
                "citation": {"type": "web_search_result_location", "url": "u", "cited_text": "c"},
            },
        ),
        _block(
            6,
            {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {}},
            _json('{"a": 1}'),
        ),
        stop="tool_use",
    )
    server.script(Reply(frames=frames))
    async with make_provider("anthropic", server) as llm:
        events = [e async for e in llm.chat_stream([Message("user", "weather?")])]
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Searching. ", "Sunny."]
    assert [e for e in events if isinstance(e, ToolCallDelta)] == [
        ToolCallDelta(0, "toolu_1", "add", ""),
        ToolCallDelta(0, None, None, '{"a": 1}'),
    ]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.response.text == "Searching. Sunny."
    assert end.response.tool_calls == [ToolCall("toolu_1", "add", {"a": 1})]
    assert end.response.stop_reason == "tool_use"


async def test_anthropic_input_json_for_a_block_never_started_is_still_malformed(
    server: FakeLlmServer,
) -> None:
    frames = _anthropic_frames([anthropic_event("content_block_delta", index=3, delta=_json("{"))])
    server.script(Reply(frames=frames))
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        with pytest.raises(ProviderError, match="not a tool_use block"):
            [e async for e in llm.chat_stream([Message("user", "x")])]


# ---------------------------------------------------------------------- OpenAI refusals
@pytest.mark.parametrize("streaming", [False, True])
async def test_openai_refusal_is_the_text_with_stop_reason_refusal(
    streaming: bool, server: FakeLlmServer
) -> None:
    refusal = "I'm sorry, I can't help with that."
    server.script(Turn(refusal=refusal))
    async with make_provider("openai", server) as llm:
        response, shown = await chat(llm, [Message("user", "x")], streaming)
    assert (response.text, response.stop_reason) == (refusal, "refusal")
    assert shown == refusal  # streamed as text deltas: listeners see it
    assert response.tool_calls == []


@pytest.mark.parametrize("streaming", [False, True])
async def test_openai_answer_without_refusal_keeps_its_finish_reason(
    streaming: bool, server: FakeLlmServer
) -> None:
    server.script(Turn("fine", refusal=None))
    async with make_provider("openai", server) as llm:
        response, _ = await chat(llm, [Message("user", "x")], streaming)
    assert (response.text, response.stop_reason) == ("fine", "stop")


async def test_openai_null_refusal_fields_are_no_refusal(server: FakeLlmServer) -> None:
    body = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi", "refusal": None},
                "finish_reason": "stop",
            }
        ]
    }
    frames = [
        sse({"choices": [{"index": 0, "delta": {"content": "hi", "refusal": None}}]}),
        sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        sse("[DONE]"),
    ]
    server.script(Reply(body=json.dumps(body).encode()), Reply(frames=frames))
    async with make_provider("openai", server) as llm:
        for streaming in (False, True):
            response, _ = await chat(llm, [Message("user", "x")], streaming)
            assert (response.text, response.stop_reason) == ("hi", "stop")


# ---------------------------------------------------------------------- content filter chunks
async def test_openai_stream_ignores_choices_without_delta(server: FakeLlmServer) -> None:
    """Azure OpenAI sends prompt and (asynchronous) content-filter annotations as chunks."""
    filters = {"hate": {"filtered": False, "severity": "safe"}}
    frames = [
        sse({"choices": [], "prompt_filter_results": [{"prompt_index": 0}], "model": ""}),
        sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        sse({"model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}),
        sse(
            {
                "model": "",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": None,
                        "content_filter_offsets": {
                            "check_offset": 0,
                            "start_offset": 0,
                            "end_offset": 2,
                        },
                        "content_filter_results": filters,
                    }
                ],
            }
        ),
        sse({"choices": [{"index": 0, "delta": {"content": "!"}}]}),
        sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        sse({"choices": [{"index": 0, "finish_reason": None, "content_filter_results": {}}]}),
        sse("[DONE]"),
    ]
    server.script(Reply(frames=frames))
    async with make_provider("openai", server) as llm:
        response, shown = await chat(llm, [Message("user", "x")], streaming=True)
    assert (response.text, shown, response.stop_reason) == ("Hi!", "Hi!", "stop")
    assert response.model == "gpt-4o"


# ---------------------------------------------------------------------- token usage
def _with_usage(kind: str, streaming: bool, usage: Any) -> Reply:
    """The reply "Hello" with each of its usage objects replaced by `usage` (decoded JSON)."""
    turn = Turn("Hello", text_chunks=["Hel", "lo"])
    render = render_openai if kind == "openai" else render_anthropic
    reply = render(turn, streaming)
    if not streaming:
        body = json.loads(reply.body)
        body["usage"] = usage
        reply.body = json.dumps(body).encode()
        return reply
    assert reply.frames is not None
    if kind == "openai":  # the usage chunk, with the null `choices` some servers send
        chunk = {"id": "chatcmpl-1", "model": "fake-model", "choices": None, "usage": usage}
        reply.frames[-2] = sse(chunk)
        return reply
    for at, name in ((0, "message_start"), (-2, "message_delta")):
        event = json.loads(reply.frames[at].split(b"data: ", 1)[1])
        if name == "message_start":
            event["message"]["usage"] = usage
        else:
            event["usage"] = usage
        reply.frames[at] = sse(event, name)
    return reply


NULL_COUNTS = {
    "openai": {"prompt_tokens": 3, "completion_tokens": None, "total_tokens": None},
    "anthropic": {"input_tokens": 3, "output_tokens": None, "cache_read_input_tokens": None},
}


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("whole", [False, True], ids=["null-counts", "null-usage"])
async def test_null_token_counts_are_zero_and_keep_the_answer(
    kind: str, streaming: bool, whole: bool, server: FakeLlmServer
) -> None:
    """Some compatible servers send `"completion_tokens": null`, or `"usage": null`."""
    server.script(_with_usage(kind, streaming, None if whole else NULL_COUNTS[kind]))
    metrics = ar.RuntimeMetrics()
    async with make_provider(kind, server, retry=ONCE, metrics=metrics) as llm:
        response, shown = await chat(llm, [Message("user", "x")], streaming)
    assert (response.text, shown) == ("Hello", "Hello")
    expected = (0, 0) if whole else (3, 0)
    assert (response.usage.input_tokens, response.usage.output_tokens) == expected
    snapshot = metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == expected


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("usage", ["lots", {"prompt_tokens": "many", "input_tokens": [1]}])
async def test_unreadable_usage_counts_as_none_with_a_warning(
    kind: str,
    streaming: bool,
    usage: Any,
    server: FakeLlmServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Usage is bookkeeping: usage that does not fit the format fails no finished answer."""
    server.script(_with_usage(kind, streaming, usage))
    caplog.set_level(logging.WARNING, logger="llm_agent_runtime.providers")
    async with make_provider(kind, server, retry=ONCE) as llm:
        response, shown = await chat(llm, [Message("user", "x")], streaming)
    assert (response.text, shown) == ("Hello", "Hello")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (0, 0)
    assert "unreadable token usage" in caplog.text and "counted as 0 tokens" in caplog.text


# ---------------------------------------------------------------------- truncated tool calls
TRUNCATED = {"openai": "length", "anthropic": "max_tokens"}
LONG_ARGS = {"body": "an essay " * 10}


# Anthropic's non-streamed tool input is an object the API decoded: no JSON to cut there.
CUT_ARGUMENTS = pytest.mark.parametrize(
    ("kind", "streaming"),
    [("openai", False), ("openai", True), ("anthropic", True)],
    ids=["openai", "openai-stream", "anthropic-stream"],
)


@CUT_ARGUMENTS
async def test_tool_call_cut_off_by_the_token_limit_says_so(
    kind: str, streaming: bool, server: FakeLlmServer
) -> None:
    server.script(
        Turn(
            tool_calls=[("call_1", "write", LONG_ARGS)],
            stop_reason=TRUNCATED[kind],
            arguments_cut=20,
        )
    )
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ProviderError) as error:
            await chat(llm, [Message("user", "write")], streaming)
    message = str(error.value)
    assert "cut off by the token limit" in message
    assert "max_tokens" in message
    assert "'write'" in message
    assert TRUNCATED[kind] in message
    assert error.value.retryable is False
    assert len(server.requests) == 1


@CUT_ARGUMENTS
async def test_bad_tool_arguments_without_truncation_name_the_tool(
    kind: str, streaming: bool, server: FakeLlmServer
) -> None:
    server.script(Turn(tool_calls=[("call_1", "write", LONG_ARGS)], arguments_cut=20))
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(ProviderError, match="not valid JSON") as error:
            await chat(llm, [Message("user", "write")], streaming)
    message = str(error.value)
    assert "'write'" in message
    assert "token limit" not in message
    assert error.value.retryable is False


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("streaming", [False, True])
async def test_whole_tool_call_under_a_truncation_stop_is_kept(
    kind: str, streaming: bool, server: FakeLlmServer
) -> None:
    """Arguments that parse are used whatever the stop reason says.

    But for the last call of a whole (not streamed) Anthropic reply: the API closes the
    input the token limit cut with the arguments it had, whole to look at (a stream's stays
    cut), so that call is refused.
    """
    server.script(Turn(tool_calls=[("call_1", "write", {"a": 1})], stop_reason=TRUNCATED[kind]))
    async with make_provider(kind, server) as llm:
        if kind == "anthropic" and not streaming:
            with pytest.raises(CutOffArgumentsError, match="'write'"):
                await chat(llm, [Message("user", "write")], streaming)
            return
        response, _ = await chat(llm, [Message("user", "write")], streaming)
    assert response.tool_calls == [ToolCall("call_1", "write", {"a": 1})]
    assert response.stop_reason == TRUNCATED[kind]
