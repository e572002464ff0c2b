"""Requests that compatible servers refuse, found by an eleventh sweep, over loopback HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.providers.base import Message

from .conftest import make_provider, openai_reply, weather_loop
from .fake_server import FakeLlmServer, Reply

ONCE = ar.RetryPolicy(max_attempts=1)
JSON = {"content-type": "application/json"}
EVENTS = {"content-type": "text/event-stream"}
THOUGHT = "The user wants the weather: call get_weather for Paris."


def _deepseek_call(stream: bool) -> Reply:
    """A DeepSeek thinking-mode reply: its reasoning apart (`reasoning_content`), one call."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    if not stream:
        message = {
            "role": "assistant",
            "content": None,
            "reasoning_content": THOUGHT,
            "tool_calls": [call],
        }
        whole = {
            "id": "r1",
            "object": "chat.completion",
            "model": "deepseek-v4-flash",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": message}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20},
        }
        return Reply(body=json.dumps(whole).encode(), headers=JSON)
    base = {"id": "r1", "object": "chat.completion.chunk", "model": "deepseek-v4-flash"}
    half = len(THOUGHT) // 2
    deltas: list[dict[str, Any]] = [
        {"role": "assistant", "content": None, "reasoning_content": THOUGHT[:half]},
        {"content": None, "reasoning_content": THOUGHT[half:]},
        {"tool_calls": [{"index": 0, **call}]},
    ]
    chunks = [{**base, "choices": [{"index": 0, "delta": d}]} for d in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    frames = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
    return Reply(frames=[*frames, b"data: [DONE]\n\n"], headers=EVENTS)


def _answer(stream: bool = False) -> Reply:
    if stream:
        base = {"id": "r2", "object": "chat.completion.chunk", "model": "deepseek-v4-flash"}
        chunks = [
            {**base, "choices": [{"index": 0, "delta": {"reasoning_content": "ok"}}]},
            {**base, "choices": [{"index": 0, "delta": {"content": "Sunny"}}]},
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        frames = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
        return Reply(frames=[*frames, b"data: [DONE]\n\n"], headers=EVENTS)
    whole = {
        "id": "r2",
        "object": "chat.completion",
        "model": "deepseek-v4-flash",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Sunny", "reasoning_content": "ok"},
            }
        ],
    }
    return Reply(body=json.dumps(whole).encode(), headers=JSON)


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_deepseek_reasoning_of_a_tool_call_goes_back_with_it(
    server: FakeLlmServer, stream: bool
) -> None:
    # DeepSeek (thinking on by default) refuses with a 400 a history whose assistant message
    # with tool calls lacks its `reasoning_content`: it was read for progress, never kept,
    # so every tool loop failed at its second model call.
    reply = await openai_reply(server, stream, _deepseek_call(stream))
    assert list(reply.reasoning) == [{"type": "reasoning_content", "reasoning_content": THOUGHT}]
    assert reply.text == "" and [c.name for c in reply.tool_calls] == ["get_weather"]


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_a_tool_loop_sends_each_calls_reasoning_content_back(
    server: FakeLlmServer, stream: bool
) -> None:
    echoed = await weather_loop(server, stream, _deepseek_call(stream), _answer(stream))
    assert echoed == [
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": THOUGHT,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        }
    ]


async def test_reasoning_content_goes_only_where_it_is_asked_for(server: FakeLlmServer) -> None:
    # With a message of no tool call, DeepSeek ignores it: it is not sent. Anthropic takes
    # its own thinking blocks alone: one kept from an OpenAI-compatible reply is left out.
    kept = [{"type": "reasoning_content", "reasoning_content": THOUGHT}]
    history = [
        Message("user", "q"),
        Message("assistant", "a", reasoning=kept),
        Message("user", "again"),
    ]
    server.script(_answer())
    async with make_provider("openai", server, retry=ONCE) as llm:
        await llm.chat(history)
    assert server.requests[0].json["messages"][1] == {"role": "assistant", "content": "a"}
    server.reset()
    server.script(
        Reply(
            body=json.dumps(
                {
                    "id": "m",
                    "type": "message",
                    "role": "assistant",
                    "model": "m",
                    "content": [{"type": "text", "text": "ok"}],
                    "stop_reason": "end_turn",
                    "usage": {"input_tokens": 5, "output_tokens": 3},
                }
            ).encode(),
            headers=JSON,
        )
    )
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        await llm.chat(history)
    assert server.requests[0].json["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "a"}],
    }


async def test_stream_usage_false_sends_no_stream_options(server: FakeLlmServer) -> None:
    # Mistral (422 extra_forbidden) and some gateways refuse `stream_options`, which every
    # streamed call sent and no setting removed: a runtime with a listener streams, so such
    # an agent failed at every call once an event listener was added.
    base = {"id": "r", "object": "chat.completion.chunk", "model": "m"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    frames = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
    server.script(Reply(frames=[*frames, b"data: [DONE]\n\n"], headers=EVENTS))
    async with make_provider("openai", server, retry=ONCE, stream_usage=False) as llm:
        assert llm.stream_usage is False
        events = [event async for event in llm.chat_stream([Message("user", "q")])]
    assert events[-1].response.text == "Hi"
    body = server.requests[0].json
    assert body["stream"] is True and "stream_options" not in body
    with pytest.raises(ValueError, match="stream_options"):
        async with make_provider("openai", server, retry=ONCE) as llm:
            await llm.chat([Message("user", "q")], stream_options=None)


def _recording_tool(ran: list[object]) -> ar.ToolSpec:
    """A tool `echo(order)` that records each order it is called with."""

    @ar.tool
    async def echo(order: dict[str, Any]) -> str:
        """Takes an order."""
        ran.append(order)
        return "ok"

    return echo


def _nested_value(depth: int, kind: Any = dict) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = kind(a=value)
    return value


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [150, 500])
async def test_tool_arguments_nested_past_the_limit_never_run(
    server: FakeLlmServer, depth: int
) -> None:
    # Arguments 500 levels deep were decoded (Python's parser goes to about 1,000) and the
    # tool ran; then the session could not be copied for its final checkpoint ("nests too
    # deeply"): the run failed after the tool's effect, and so did every resume.
    ran: list[object] = []
    echo = _recording_tool(ran)

    def reply(arguments: str | None) -> Reply:
        message: dict[str, Any] = {"role": "assistant", "content": "done"}
        if arguments is not None:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "echo", "arguments": arguments},
                    }
                ],
            }
        whole = {"id": "r", "object": "chat.completion", "model": "m", "choices": []}
        whole["choices"] = [{"index": 0, "finish_reason": "stop", "message": message}]
        return Reply(body=json.dumps(whole).encode(), headers=JSON)

    server.script(reply('{"order": ' + _nested(depth) + "}"), reply(None))
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools", max_iterations=3), tools=[echo], checkpoint_backend=backend
    )
    async with make_provider("openai", server, retry=ONCE) as llm:
        session = await runtime.run_agent_with_provider("a", "go", llm)
    assert session.final_answer == "done"
    saved = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert saved.step_count == session.step_count
    if depth <= 200:
        assert len(ran) == 1
    else:
        assert ran == []
        assert "nested too deeply" in str(session.steps[0].observation)


@pytest.mark.parametrize("depth", [150, 500])
async def test_a_react_input_nested_past_the_limit_stays_text(depth: int) -> None:
    ran: list[object] = []
    echo = _recording_tool(ran)

    replies = iter(
        [
            "Thought: t\nAction: echo " + '{"order": ' + _nested(depth) + "}",
            "Thought: t\nAction: FINAL_ANSWER done",
        ]
    )

    async def model(prompt: str) -> str:
        return next(replies)

    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(tools=[echo], checkpoint_backend=backend)
    session = await runtime.run_agent("a", "go", model)
    assert session.final_answer == "done"
    saved = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert saved.step_count == 2
    parsed = ar.parse_react_step("Action: echo " + _nested(depth))
    assert isinstance(parsed.action_input, dict if depth <= 200 else str)
    assert len(ran) == (1 if depth <= 200 else 0)


def test_anthropic_tool_input_nested_past_the_limit_is_refused() -> None:
    # A whole Anthropic reply's tool input comes decoded with the body: checked alike.
    from llm_agent_runtime.providers._http import check_finite_arguments

    deep = _nested_value(201)
    with pytest.raises(ar.ProviderError, match=r"nested too deeply \(over 200 levels"):
        check_finite_arguments(deep, "echo", None)
    assert check_finite_arguments(deep["a"], "echo", None) is deep["a"]


async def test_a_providers_decoded_arguments_nested_past_the_limit_never_run() -> None:
    # ScriptedProvider (or a user's provider) hands over arguments already decoded: they
    # were never checked, and a hook's rewrite neither.
    ran: list[object] = []
    echo = _recording_tool(ran)

    deep = _nested_value(300)
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[echo], checkpoint_backend=backend
    )
    model = ar.ScriptedProvider(
        [
            ar.ChatResponse(tool_calls=[ar.ToolCall("c1", "echo", {"order": deep})]),
            ar.ChatResponse(text="done"),
        ]
    )
    session = await runtime.run_agent_with_provider("a", "go", model)
    assert session.final_answer == "done" and ran == []
    assert "nested too deeply" in str(session.steps[0].observation)
    assert session.steps[0].error_kind == "permanent"
    saved = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert saved.step_count == 2

    class Deepening(ar.Middleware):
        def on_tool_call(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
            return tool, {"order": deep}

    rewriting = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[echo], middlewares=[Deepening()]
    )
    model = ar.ScriptedProvider(
        [ar.ChatResponse(tool_calls=[ar.ToolCall("c1", "echo", {"order": {}})])]
    )
    with pytest.raises(ar.AgentRuntimeError, match="on_tool_call returned arguments nested"):
        await rewriting.run_agent_with_provider("a", "go", model)
    assert ran == []


async def test_an_approval_edit_or_a_dict_subclass_nested_past_the_limit_never_runs() -> None:
    from collections import OrderedDict

    ran: list[object] = []
    echo = _recording_tool(ran)

    deep = _nested_value(300, OrderedDict)  # as json.loads(object_pairs_hook=OrderedDict)
    model = ar.ScriptedProvider(
        [
            ar.ChatResponse(tool_calls=[ar.ToolCall("c1", "echo", {"order": deep})]),
            ar.ChatResponse(text="done"),
        ]
    )
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[echo], checkpoint_backend=ar.InMemoryBackend()
    )
    session = await runtime.run_agent_with_provider("a", "go", model)
    assert session.final_answer == "done" and ran == []
    assert "nested too deeply" in str(session.steps[0].observation)

    def edit(session: ar.AgentSession, tool: str, arguments: Any) -> ar.ApprovalDecision:
        return ar.ApprovalDecision("edit", {"order": deep})

    editing = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[echo], approval_handler=edit)
    model = ar.ScriptedProvider(
        [ar.ChatResponse(tool_calls=[ar.ToolCall("c1", "echo", {"order": {}})])]
    )
    with pytest.raises(ar.AgentRuntimeError, match="approval handler's edit has arguments nest"):
        await editing.run_agent_with_provider("a", "go", model)
    assert ran == []
