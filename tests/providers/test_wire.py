"""What each provider sends and how it reads the answers, checked on the wire."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import pickle
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime import (
    AnthropicProvider,
    BudgetExceededError,
    CostBudget,
    OpenAIProvider,
    ProviderError,
    RetryPolicy,
    RuntimeMetrics,
)
from llm_agent_runtime.providers import provider_from_env
from llm_agent_runtime.providers.anthropic import DEFAULT_ANTHROPIC_BASE_URL
from llm_agent_runtime.providers.base import (
    LlmProvider,
    Message,
    StreamEnd,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
)
from llm_agent_runtime.providers.openai import DEFAULT_OPENAI_BASE_URL

from .conftest import API_KEY, PROVIDERS, make_provider
from .fake_server import FakeLlmServer, Reply, Turn, sse

ADD = ToolDefinition(
    name="add",
    description="Adds two integers.",
    parameters={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
)
CONVERSATION = [
    Message("system", "Be brief."),
    Message("user", "What is 2 + 3 and 4 + 5?"),
    Message(
        "assistant",
        "Adding.",
        [
            ToolCall(id="call_a", name="add", arguments={"a": 2, "b": 3}),
            ToolCall(id="call_b", name="add", arguments={"a": 4, "b": 5}),
        ],
    ),
    Message("tool", "5", tool_call_id="call_a", name="add"),
    Message("tool", "9", tool_call_id="call_b", name="add"),
]


# ---------------------------------------------------------------------- OpenAI
async def test_openai_request_shape(server: FakeLlmServer) -> None:
    server.script(Turn("5 and 9"))
    async with make_provider("openai", server, model="gpt-test", stop=["\nObservation:"]) as llm:
        response = await llm.chat(
            CONVERSATION,
            tools=[ADD],
            temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        )
    assert response.text == "5 and 9"
    request = server.requests[0]
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.json == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2 + 3 and 4 + 5?"},
            {
                "role": "assistant",
                "content": "Adding.",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 4, "b": 5}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "5"},
            {"role": "tool", "tool_call_id": "call_b", "content": "9"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "add",
                    "description": "Adds two integers.",
                    "parameters": ADD.parameters,
                },
            }
        ],
        "stop": ["\nObservation:"],
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
    }


async def test_openai_sends_tool_call_arguments_as_characters(server: FakeLlmServer) -> None:
    # They went as `\\uXXXX` escapes inside the arguments string, which the model reads as
    # written: six characters a CJK one, past what history trimming counted.
    server.script(Turn("ok"))
    place, half = "東京都新宿区", "\ud83d"  # and a lone surrogate: no UTF-8 has it
    history = [
        Message("user", "where?"),
        Message("assistant", "", [ToolCall("c1", "find", {"q": place, "odd": half})]),
        Message("tool", "found", tool_call_id="c1", name="find"),
    ]
    async with make_provider("openai", server) as llm:
        await llm.chat(history)
    arguments = server.requests[0].json["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert arguments == '{"q": "東京都新宿区", "odd": "\ufffd"}'
    assert json.loads(arguments) == {"q": place, "odd": "\ufffd"}


async def test_openai_stream_asks_for_usage_and_call_overrides_stop(server: FakeLlmServer) -> None:
    server.script(Turn("hi"))
    async with make_provider("openai", server, stop=["X"]) as llm:
        assert [e async for e in llm.stream("hello", model="m2")] == ["hi"]
        with pytest.raises(ValueError, match="stream"):
            await llm.chat([Message("user", "x")], stream=False)
    body = server.requests[0].json
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "m2"
    assert body["stop"] == ["X"]


async def test_openai_tool_calls_assembled_by_index(server: FakeLlmServer) -> None:
    """Deltas of two calls interleave; each call's fragments join in order of its index."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse(
            {"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        )

    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **fields}]}

    frames = [
        chunk({"role": "assistant", "content": None}),
        chunk(call(0, id="c0", type="function", function={"name": "add", "arguments": ""})),
        chunk(call(1, id="c1", type="function", function={"name": "mul", "arguments": '{"x"'})),
        chunk(call(0, function={"arguments": '{"a": 1,'})),
        chunk(call(1, function={"arguments": ": 3}"})),
        chunk(call(0, function={"arguments": ' "b": 2}'})),
        chunk({}, "tool_calls"),
        sse({"model": "m", "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 9}}),
        sse("[DONE]"),
    ]
    server.script(Reply(frames=frames))
    async with make_provider("openai", server) as llm:
        events = [e async for e in llm.chat_stream([Message("user", "go")], tools=[ADD])]
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [(d.index, d.id, d.name) for d in deltas[:2]] == [(0, "c0", "add"), (1, "c1", "mul")]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.response.tool_calls == [
        ToolCall(id="c0", name="add", arguments={"a": 1, "b": 2}),
        ToolCall(id="c1", name="mul", arguments={"x": 3}),
    ]
    assert end.response.stop_reason == "tool_calls"
    assert (end.response.usage.input_tokens, end.response.usage.output_tokens) == (20, 9)


def _openai_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return sse({"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def _openai_call_piece(
    call_id: str | None, name: str | None, arguments: str, index: int | None
) -> bytes:
    fields: dict[str, Any] = {"type": "function", "function": {"arguments": arguments}}
    if call_id is not None:
        fields["id"] = call_id
    if name is not None:
        fields["function"]["name"] = name
    if index is not None:
        fields["index"] = index
    return _openai_chunk({"tool_calls": [fields]})


async def _streamed_calls(server: FakeLlmServer, *pieces: bytes) -> list[Any]:
    """The events of an OpenAI stream of tool-call `pieces` (then its end)."""
    server.script(Reply(frames=[*pieces, _openai_chunk({}, "tool_calls"), sse("[DONE]")]))
    async with make_provider("openai", server) as llm:
        return [e async for e in llm.chat_stream([Message("user", "go")], tools=[ADD])]


@pytest.mark.parametrize("ids", [True, False], ids=["ids", "no ids"])
@pytest.mark.parametrize("form", ["all at index 0", "no index"])
async def test_openai_compatible_tool_call_streams_are_told_apart(
    form: str, ids: bool, server: FakeLlmServer
) -> None:
    """Some compatible servers send each call whole at index 0, or send no index at all,
    with or without ids."""
    index = 0 if form == "all at index 0" else None

    def piece(call_id: str | None, name: str | None, arguments: str) -> bytes:
        return _openai_call_piece(call_id if ids else None, name, arguments, index)

    events = await _streamed_calls(
        server,
        piece("c0", "add", '{"a": 1, "b": 2}'),
        piece("c1", "mul", '{"x": 3'),
        piece(None, None, "}") if form == "no index" else piece("c1", None, "}"),
    )
    end = events[-1]
    assert isinstance(end, StreamEnd)
    first, second = ("c0", "c1") if ids else ("call_0", "call_1")
    assert end.response.tool_calls == [
        ToolCall(id=first, name="add", arguments={"a": 1, "b": 2}),
        ToolCall(id=second, name="mul", arguments={"x": 3}),
    ]
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [d.index for d in deltas] == [0, 1, 1]


@pytest.mark.parametrize("index", [0, None])
async def test_openai_tool_name_repeated_in_every_piece_continues_the_call(
    index: int | None, server: FakeLlmServer
) -> None:
    """A server that names the tool in every piece of a call still sends one call, even
    with a named piece without arguments after them (not a call the model made)."""
    events = await _streamed_calls(
        server,
        _openai_call_piece(None, "add", '{"a": 1,', index),
        _openai_call_piece(None, "add", ' "b": 2}', index),
        _openai_call_piece(None, "add", "", index),
    )
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.response.tool_calls == [
        ToolCall(id="call_0", name="add", arguments={"a": 1, "b": 2})
    ]
    names = [event.name for event in events if isinstance(event, ToolCallDelta) and event.name]
    assert names == ["add"]  # the deltas' names join up to the name: it is given out once


@pytest.mark.parametrize("index", [0, None])
def test_openai_a_tool_named_in_every_piece_is_followed_without_parsing(
    index: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whether a call is whole was decided by parsing all its arguments at each named piece
    # that ended with '}': quadratic (seconds of blocked event loop for a tool writing code
    # full of braces). It is followed in one pass now, and never parsed.
    from llm_agent_runtime.providers import _http as http_module
    from llm_agent_runtime.providers import openai as openai_module

    def no_parse(text: str) -> Any:
        raise AssertionError("the assembly parsed the arguments")

    shim = type("Json", (), {"loads": staticmethod(no_parse), "dumps": json.dumps})
    for module in (openai_module, http_module):  # wherever the provider's code reads JSON
        monkeypatch.setattr(module, "json", shim, raising=False)
    arguments = json.dumps({"code": "a}}}" * 2000, "nested": {"a": [1, {"b": "}"}]}})
    assembly = openai_module._ToolCallAssembly()
    for i in range(0, len(arguments), 4):
        assembly.add(index, None, "write", arguments[i : i + 4])
    assembly.add(index, None, "write", "")  # named again, nothing after: no call
    assert len(assembly.calls) == 1
    assert json.loads("".join(assembly.calls[0].fragments)) == json.loads(arguments)


@pytest.mark.parametrize("index", [0, None])
def test_openai_an_id_less_call_named_first_and_given_arguments_after_is_a_new_call(
    index: int | None,
) -> None:
    # OpenAI's own form (the name in the first piece only), sent without ids after a whole
    # call: it was joined to the call before it.
    from llm_agent_runtime.providers.openai import _ToolCallAssembly

    assembly = _ToolCallAssembly()
    for name, fragment in [("add", '{"a": 1, "b": 2}'), ("mul", ""), (None, '{"x": 3}')]:
        assembly.add(index, None, name, fragment)
    assert [(c.name, "".join(c.fragments)) for c in assembly.calls] == [
        ("add", '{"a": 1, "b": 2}'),
        ("mul", '{"x": 3}'),
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab{}[]"\\ :,'),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet='ab{}"\\', max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    value=json_values,
    cut=st.integers(min_value=0, max_value=200),
    sizes=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=5),
    tail=st.sampled_from(["", " ", "}", "{}", "x"]),
)
def test_openai_whole_arguments_are_told_as_json_loads_tells_them(
    value: Any, cut: int, sizes: list[int], tail: str
) -> None:
    from llm_agent_runtime.providers.openai import _JsonDepth

    text = json.dumps(value)
    text = text[: len(text) - cut % (len(text) + 1)] + tail
    depth, at, size = _JsonDepth(), 0, itertools.cycle(sizes)
    while at < len(text):
        step = next(size)
        depth.feed(text[at : at + step])
        at += step
    try:
        want = isinstance(json.loads(text), dict)
    except ValueError:
        want = False
    # Every whole object is told whole; a text told whole is one object with its brackets
    # closed (its literals are not checked: `{"a": nul}` is whole, and fails when decoded).
    assert depth.whole >= want, text
    if depth.whole:
        assert text.strip()[:1] == "{" and text.strip()[-1:] == "}", text
    if cut == 0 and not tail.strip():
        assert depth.whole == isinstance(value, dict), text


async def test_openai_non_streamed_tool_calls(server: FakeLlmServer) -> None:
    server.script(Turn(tool_calls=[("call_1", "add", {"a": 2, "b": 3})]))
    async with make_provider("openai", server) as llm:
        response = await llm.chat([Message("user", "2+3")], tools=[ADD])
    assert response.tool_calls == [ToolCall(id="call_1", name="add", arguments={"a": 2, "b": 3})]
    assert (response.text, response.stop_reason, response.model) == ("", "tool_calls", "fake-model")


async def test_openai_bad_tool_arguments(server: FakeLlmServer) -> None:
    body = {
        "choices": [
            {
                "message": {
                    "content": None,
                    "tool_calls": [{"id": "c", "function": {"name": "add", "arguments": "{a:"}}],
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    server.script(Reply(body=json.dumps(body).encode()))
    async with make_provider("openai", server) as llm:
        with pytest.raises(ProviderError, match="not valid JSON"):
            await llm.chat([Message("user", "x")])


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_tool_arguments_beyond_the_float_range_are_refused(
    server: FakeLlmServer, stream: bool
) -> None:
    # Python's json read `1e999` as an infinity: the tool ran with it, and sending the call
    # back then failed with a bare ValueError.
    arguments = '{"x": 1e999}'
    if stream:
        call = {"index": 0, "id": "c", "type": "function"}
        call["function"] = {"name": "scale", "arguments": arguments}
        frames = [
            _openai_chunk({"role": "assistant", "tool_calls": [call]}),
            _openai_chunk({}, "tool_calls"),
            sse("[DONE]"),
        ]
        server.script(Reply(frames=frames))
    else:
        message = {
            "content": None,
            "tool_calls": [{"id": "c", "function": {"name": "scale", "arguments": arguments}}],
        }
        body = {"choices": [{"message": message, "finish_reason": "tool_calls"}]}
        server.script(Reply(body=json.dumps(body).encode()))
    async with make_provider("openai", server) as llm:
        with pytest.raises(ProviderError, match="a number beyond the float range") as caught:
            if stream:
                async for _ in llm.chat_stream([Message("user", "x")]):
                    pass
            else:
                await llm.chat([Message("user", "x")])
    assert caught.value.retryable is False


def test_openai_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ProviderError, match="OPENAI_API_KEY"):
        OpenAIProvider()
    local = OpenAIProvider(base_url="http://127.0.0.1:11434/v1/")  # keyless local server
    assert local.base_url == "http://127.0.0.1:11434/v1"
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:8000/v1")
    monkeypatch.setenv("OPENAI_MODEL", "qwen")
    llm = OpenAIProvider()
    assert (llm.base_url, llm.model) == ("http://localhost:8000/v1", "qwen")


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_model_name_is_sent_without_surrounding_blanks(
    kind: str, server: FakeLlmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An env file's `OPENAI_MODEL=qwen3 ` was sent as "qwen3 ": no such model (404).
    monkeypatch.setenv(f"{kind.upper()}_MODEL", "qwen3 \t")
    server.script(Turn("a"), Turn("b"), Turn("c"), Turn("d"))
    async with make_provider(kind, server) as llm:
        assert llm.model == "qwen3"
        await llm.chat([Message("user", "x")])
    async with make_provider(kind, server, model=" given\n") as llm:
        assert llm.model == "given"
        await llm.chat([Message("user", "x")])
        await llm.chat([Message("user", "x")], model=" per-call ")
        await llm.chat([Message("user", "x")], model="  ")  # blank: none given
    sent = [request.json["model"] for request in server.requests]
    assert sent == ["qwen3", "given", "per-call", "given"]


# ---------------------------------------------------------------------- Anthropic
async def test_anthropic_request_shape(server: FakeLlmServer) -> None:
    server.script(Turn("5 and 9"))
    async with make_provider("anthropic", server, model="claude-test", max_tokens=300) as llm:
        response = await llm.chat(CONVERSATION, tools=[ADD], stop=["END"], temperature=0.5)
    assert response.text == "5 and 9"
    assert response.stop_reason == "end_turn"
    request = server.requests[0]
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert request.json == {
        "model": "claude-test",
        "max_tokens": 300,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is 2 + 3 and 4 + 5?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Adding."},
                    {"type": "tool_use", "id": "call_a", "name": "add", "input": {"a": 2, "b": 3}},
                    {"type": "tool_use", "id": "call_b", "name": "add", "input": {"a": 4, "b": 5}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_a", "content": "5"},
                    {"type": "tool_result", "tool_use_id": "call_b", "content": "9"},
                ],
            },
        ],
        "tools": [
            {"name": "add", "description": "Adds two integers.", "input_schema": ADD.parameters}
        ],
        "stop_sequences": ["END"],
        "temperature": 0.5,
    }


async def test_anthropic_stream_events(server: FakeLlmServer) -> None:
    """Pings, thinking blocks and unknown events are skipped; usage is cumulative."""

    def event(name: str, **data: Any) -> bytes:
        return sse({"type": name, **data}, name)

    frames = [
        event(
            "message_start",
            message={
                "id": "m",
                "model": "claude-x",
                "content": [],
                "usage": {"input_tokens": 30, "cache_read_input_tokens": 5, "output_tokens": 1},
            },
        ),
        event("ping"),
        event("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
        event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "hm"}),
        event("content_block_stop", index=0),
        event("content_block_start", index=1, content_block={"type": "text", "text": ""}),
        event("content_block_delta", index=1, delta={"type": "text_delta", "text": "Let me "}),
        event("content_block_delta", index=1, delta={"type": "text_delta", "text": "add."}),
        event("content_block_stop", index=1),
        event(
            "content_block_start",
            index=2,
            content_block={"type": "tool_use", "id": "toolu_1", "name": "add", "input": {}},
        ),
        event(
            "content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": ""}
        ),
        event(
            "content_block_delta",
            index=2,
            delta={"type": "input_json_delta", "partial_json": '{"a": 2'},
        ),
        event(
            "content_block_delta",
            index=2,
            delta={"type": "input_json_delta", "partial_json": ', "b": 3}'},
        ),
        event("content_block_stop", index=2),
        event(
            "content_block_start",
            index=3,
            content_block={"type": "tool_use", "id": "toolu_2", "name": "noargs", "input": {}},
        ),
        event("content_block_stop", index=3),
        event("future_event", detail=1),
        event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 42}),
        event("message_stop"),
    ]
    server.script(Reply(frames=frames))
    async with make_provider("anthropic", server) as llm:
        events = [e async for e in llm.chat_stream([Message("user", "2+3")], tools=[ADD])]
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Let me ", "add."]
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[0] == ToolCallDelta(0, "toolu_1", "add", "")
    assert [d.arguments_delta for d in deltas if d.index == 0][1:] == ['{"a": 2', ', "b": 3}']
    assert deltas[-1] == ToolCallDelta(1, "toolu_2", "noargs", "")
    end = events[-1]
    assert isinstance(end, StreamEnd)
    response = end.response
    assert response.text == "Let me add."
    assert response.tool_calls == [
        ToolCall(id="toolu_1", name="add", arguments={"a": 2, "b": 3}),
        ToolCall(id="toolu_2", name="noargs", arguments={}),
    ]
    assert (response.usage.input_tokens, response.usage.output_tokens) == (35, 42)
    assert (response.stop_reason, response.model) == ("tool_use", "claude-x")


async def test_anthropic_non_streamed_tool_use(server: FakeLlmServer) -> None:
    server.script(Turn("Adding.", tool_calls=[("toolu_9", "add", {"a": 1, "b": 1})]))
    async with make_provider("anthropic", server) as llm:
        response = await llm.chat([Message("user", "1+1")], tools=[ADD])
    assert response.text == "Adding."
    assert response.tool_calls == [ToolCall(id="toolu_9", name="add", arguments={"a": 1, "b": 1})]
    assert response.stop_reason == "tool_use"


def test_anthropic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ProviderError, match="ANTHROPIC_API_KEY"):
        AnthropicProvider()
    with pytest.raises(ValueError, match="max_tokens"):
        AnthropicProvider(api_key="k", max_tokens=0)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_MODEL", "claude-y")
    llm = AnthropicProvider()
    assert (llm.base_url, llm.model) == ("https://api.anthropic.com", "claude-y")


def test_provider_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert provider_from_env() is None
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    assert isinstance(provider_from_env(), AnthropicProvider)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")
    chosen = provider_from_env(stop=["X"])
    assert isinstance(chosen, OpenAIProvider)
    assert chosen.stop == ["X"]
    assert isinstance(chosen, LlmProvider)
    assert ar.provider_from_env is provider_from_env


@pytest.mark.parametrize(
    ("env", "chosen"),
    [
        ({}, None),
        ({"ANTHROPIC_API_KEY": API_KEY}, AnthropicProvider),
        (
            {"ANTHROPIC_API_KEY": API_KEY, "OPENAI_BASE_URL": DEFAULT_OPENAI_BASE_URL},
            AnthropicProvider,
        ),
        (
            {"ANTHROPIC_API_KEY": API_KEY, "OPENAI_BASE_URL": "https://API.openai.com/v1/"},
            AnthropicProvider,
        ),
        ({"OPENAI_BASE_URL": DEFAULT_OPENAI_BASE_URL}, None),
        (
            {"ANTHROPIC_API_KEY": API_KEY, "OPENAI_BASE_URL": "http://localhost:8000/v1"},
            OpenAIProvider,
        ),
        ({"OPENAI_BASE_URL": "https://my-resource.openai.azure.com/openai/v1"}, OpenAIProvider),
        ({"ANTHROPIC_API_KEY": API_KEY, "OPENAI_API_KEY": API_KEY}, OpenAIProvider),
        (
            {
                "ANTHROPIC_API_KEY": API_KEY,
                "OPENAI_API_KEY": API_KEY,
                "OPENAI_BASE_URL": DEFAULT_OPENAI_BASE_URL,
            },
            OpenAIProvider,
        ),
        ({"ANTHROPIC_API_KEY": API_KEY, "OPENAI_API_KEY": ""}, AnthropicProvider),
        # Blank values (an `OPENAI_BASE_URL=` line in an env file) are unset.
        ({"ANTHROPIC_API_KEY": API_KEY, "OPENAI_BASE_URL": " "}, AnthropicProvider),
        ({"ANTHROPIC_API_KEY": API_KEY, "OPENAI_BASE_URL": "\n"}, AnthropicProvider),
        ({"ANTHROPIC_API_KEY": API_KEY, "OPENAI_API_KEY": "  "}, AnthropicProvider),
        ({"OPENAI_BASE_URL": " ", "ANTHROPIC_API_KEY": "\t"}, None),
    ],
)
def test_provider_from_env_chooses_openai_only_when_it_can_be_used(
    env: dict[str, str], chosen: type | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base URL naming OpenAI's own API is no OpenAI configuration without its key."""
    names = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    provider = provider_from_env()
    if chosen is None:
        assert provider is None
    else:
        assert type(provider) is chosen


# ---------------------------------------------------------------------- both
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_usage_feeds_budget_and_metrics(kind: str, server: FakeLlmServer) -> None:
    budget = CostBudget(max_tokens=40)
    metrics = RuntimeMetrics()
    server.script(
        Turn("a", input_tokens=10, output_tokens=5), Turn("b", input_tokens=12, output_tokens=8)
    )
    llm = make_provider(
        kind,
        server,
        budget=budget,
        metrics=metrics,
        input_cost_per_million=3.0,
        output_cost_per_million=15.0,
    )
    async with llm:
        await llm.chat([Message("user", "x")])
        events = [e async for e in llm.chat_stream([Message("user", "y")])]
        assert isinstance(events[-1], StreamEnd)
        snapshot = metrics.snapshot()
        assert (snapshot.input_tokens, snapshot.output_tokens) == (22, 13)
        assert budget.used_tokens == 35
        assert budget.used_cost_usd == pytest.approx((22 * 3.0 + 13 * 15.0) / 1e6)
        server.script(Turn("c", input_tokens=5, output_tokens=5))
        with pytest.raises(BudgetExceededError):
            await llm.chat([Message("user", "z")])  # 45 > 40 tokens: recorded, then refused
        with pytest.raises(BudgetExceededError):
            await llm.chat([Message("user", "again")])  # spent: refused before sending
        with pytest.raises(BudgetExceededError):
            [e async for e in llm.chat_stream([Message("user", "again")])]
    assert len(server.requests) == 3


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_api_key_never_leaks(
    kind: str, server: FakeLlmServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The key is in the auth header only: not in reprs, errors (even echoed ones) or logs."""
    caplog.set_level(logging.DEBUG)
    echo = json.dumps({"error": {"type": "authentication_error", "message": f"bad key {API_KEY}"}})
    server.script(
        Reply(401, body=echo.encode()),
        Reply(
            frames=[
                sse({"type": "error", "error": {"type": "x", "message": API_KEY}}, "error"),
                sse({"error": {"message": API_KEY}}),
            ]
        ),
        Reply(body=json.dumps({"choices": [{"message": API_KEY}], "content": API_KEY}).encode()),
    )
    llm = make_provider(kind, server, retry=RetryPolicy(max_attempts=1))
    errors: list[BaseException] = []
    async with llm:
        for call in range(3):
            try:
                if call == 1:
                    [e async for e in llm.chat_stream([Message("user", "x")])]
                else:
                    await llm.chat([Message("user", "x")])
            except ProviderError as error:
                errors.append(error)
    assert len(errors) == 3
    assert errors[0].status == 401 and "[redacted]" in str(errors[0])
    texts = [repr(llm), str(llm), repr(vars(llm)), caplog.text]
    for error in errors:
        cause: BaseException | None = error
        while cause is not None:  # the whole chain, as a traceback would print it
            texts += [str(cause), repr(cause)]
            cause = cause.__cause__ or cause.__context__
    assert [text for text in texts if API_KEY in text] == []
    with pytest.raises(TypeError):
        pickle.dumps(llm)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_one_pooled_connection_and_close(kind: str, server: FakeLlmServer) -> None:
    server.fallback = Turn("ok")
    llm = make_provider(kind, server)
    async with llm:
        for _ in range(3):
            assert await llm.complete("x") == "ok"
        assert [e async for e in llm.stream("x")] == ["ok"]
        await asyncio.gather(*(llm.complete("x") for _ in range(3)))
    assert server.connections <= 3  # sequential calls shared one kept-alive connection
    assert len(server.requests) == 7
    with pytest.raises(ProviderError, match="closed"):
        await llm.complete("x")


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_given_http_client_is_used_and_left_open(kind: str, server: FakeLlmServer) -> None:
    server.script(Turn("ok"))
    async with httpx.AsyncClient(headers={"x-extra": "1"}) as client:
        async with make_provider(kind, server, http_client=client) as llm:
            assert await llm.complete("x") == "ok"
        assert not client.is_closed
    assert server.requests[0].headers["x-extra"] == "1"


@pytest.mark.parametrize("kind", PROVIDERS)
def test_provider_survives_a_new_event_loop(kind: str, server: FakeLlmServer) -> None:
    server.fallback = Turn("ok")
    llm = make_provider(kind, server)

    async def second_run() -> str:
        async with llm:
            return str(await llm.complete("y"))

    # The first loop ends without aclose: its pool is closed as asyncio.run ends the loop,
    # so no socket is left for the garbage collector (and its ResourceWarning, an error here).
    assert asyncio.run(llm.complete("x")) == "ok"
    assert asyncio.run(second_run()) == "ok"  # a fresh pool on the new loop
    gc.collect()
    assert len(server.requests) == 2


def _eventually(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether `condition` holds within `seconds` (the server closes its side in its thread)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("streaming", [False, True])
def test_reuse_across_asyncio_run_leaves_no_connection_open(kind: str, streaming: bool) -> None:
    """Each `asyncio.run` used to leave its pooled connection open, out of `aclose`'s reach."""
    with FakeLlmServer() as server:  # its own: other tests' connections may still be closing
        server.fallback = Turn("ok")
        llm = make_provider(kind, server)

        async def call() -> str:
            if streaming:
                return "".join([piece async for piece in llm.stream("x")])
            return str(await llm.complete("x"))

        for _ in range(20):
            assert asyncio.run(call()) == "ok"
        assert _eventually(lambda: server.open_connections == 0), server.open_connections
        assert server.connections == 20  # one per loop: a pool cannot outlive its loop
        asyncio.run(llm.aclose())
        gc.collect()
        assert server.open_connections == 0


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_aclose_closes_the_pooled_connection(kind: str) -> None:
    with FakeLlmServer() as server:
        server.fallback = Turn("ok")
        llm = make_provider(kind, server)
        assert await llm.complete("x") == "ok"
        assert server.open_connections == 1  # kept alive in the pool
        await llm.aclose()
        assert await asyncio.to_thread(_eventually, lambda: server.open_connections == 0)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_base_urls_are_stripped_and_need_an_http_scheme(
    kind: str, server: FakeLlmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls: Any = OpenAIProvider if kind == "openai" else AnthropicProvider
    env = "OPENAI_BASE_URL" if kind == "openai" else "ANTHROPIC_BASE_URL"
    default = DEFAULT_OPENAI_BASE_URL if kind == "openai" else DEFAULT_ANTHROPIC_BASE_URL
    root = server.url + ("/v1" if kind == "openai" else "")
    monkeypatch.delenv(env, raising=False)
    # Whitespace around a URL (a line read from a file) is no part of it.
    server.script(Turn("ok"), Turn("ok"))
    async with cls(api_key=API_KEY, base_url=f"  {root}/\n") as llm:
        assert llm.base_url == root
        assert await llm.complete("x") == "ok"
    monkeypatch.setenv(env, f"\t{root}\n")
    async with cls(api_key=API_KEY) as llm:
        assert await llm.complete("x") == "ok"
    # Blank is unset, as an argument or a variable.
    monkeypatch.setenv(env, "  ")
    assert cls(api_key=API_KEY).base_url == default
    assert cls(api_key=API_KEY, base_url=" \n").base_url == default
    # A URL without its scheme is refused when the provider is made, not on the first call.
    for bad in [
        "127.0.0.1:8000/v1",
        "localhost:8000",
        "api.openai.com/v1",
        "ftp://h/v1",
        "http://",
    ]:
        with pytest.raises(ProviderError, match="is not an http:// or https:// URL") as caught:
            cls(api_key=API_KEY, base_url=bad)
        assert API_KEY not in str(caught.value)
        monkeypatch.setenv(env, bad)
        with pytest.raises(ProviderError, match="is not an http:// or https:// URL"):
            cls(api_key=API_KEY)
    monkeypatch.setenv(env, "localhost:8000/v1")
    if kind == "openai":  # provider_from_env applies the same rule
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        with pytest.raises(ProviderError, match="base URL 'localhost:8000/v1'"):
            provider_from_env()
    assert server.requests[0].path == (
        "/v1/chat/completions" if kind == "openai" else "/v1/messages"
    )


@pytest.mark.parametrize("kind", PROVIDERS)
def test_bad_settings(kind: str, server: FakeLlmServer) -> None:
    with pytest.raises(ValueError, match="timeouts"):
        make_provider(kind, server, timeout=0)
    with pytest.raises(ValueError, match="prices"):
        make_provider(kind, server, input_cost_per_million=-1.0)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_early_break_closes_the_stream(kind: str, server: FakeLlmServer) -> None:
    server.script(Turn("one two three four five six", text_chunks=["one ", "two ", "three"]))
    server.fallback = Turn("next")
    async with make_provider(kind, server) as llm:
        async for piece in llm.stream("x"):
            assert piece == "one "
            break
        assert await llm.complete("again") == "next"
