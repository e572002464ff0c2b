"""Provider faults found in the fourth sweep, each checked over real HTTP on loopback."""

from __future__ import annotations

import json
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.providers.base import (
    CutOffArgumentsError,
    Message,
    StreamEnd,
    ToolCall,
    ToolDefinition,
)

from .conftest import make_provider
from .fake_server import FakeLlmServer, Reply, Turn, anthropic_event

ONCE = ar.RetryPolicy(max_attempts=1)
EVENTS = {"content-type": "text/event-stream"}


async def _streamed(llm: Any, messages: list[Message], **params: Any) -> Any:
    events = [e async for e in llm.chat_stream(messages, **params)]
    assert isinstance(events[-1], StreamEnd)
    return events[-1].response


# ------------------------------------------------------------------ Anthropic: content None
async def test_anthropic_sends_messages_without_content_as_openai_does(
    server: FakeLlmServer,
) -> None:
    # `check_conversation` takes content None as no content, and OpenAIProvider sends it so.
    # AnthropicProvider failed on it with a bare TypeError (a system message) or
    # AttributeError (a failed tool's result), or sent a tool result of `"content": null`.
    messages = [
        Message("system", None),  # type: ignore[arg-type]
        Message("system", "  \n"),  # blank: no blank system text block either
        Message("user", "write it"),
        Message(
            "assistant", None, [ToolCall("toolu_1", "save", {}), ToolCall("toolu_2", "log", {})]
        ),  # type: ignore[arg-type]
        Message("tool", None, tool_call_id="toolu_1"),  # type: ignore[arg-type]
        Message("tool", None, tool_call_id="toolu_2", is_error=True),  # type: ignore[arg-type]
    ]
    server.script(Turn(text="done"), Turn(text="done"))
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        assert (await llm.chat(messages)).text == "done"
        assert (await llm.chat(messages, system=[{"type": "text", "text": "Be brief."}])).text == (
            "done"
        )
    first, second = (request.json for request in server.requests)
    assert "system" not in first
    assert second["system"] == [{"type": "text", "text": "Be brief."}]
    results = first["messages"][-1]["content"]
    assert results == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": ""},
        {
            "type": "tool_result",
            "tool_use_id": "toolu_2",
            "content": "the tool failed",
            "is_error": True,
        },
    ]


# ------------------------------------------------------------------ Anthropic: usage
async def test_anthropic_stream_keeps_the_input_a_delta_reports_as_zero(
    server: FakeLlmServer,
) -> None:
    # SGLang's Messages endpoint sends `"input_tokens": 0` in message_delta after the real
    # count in message_start: the streamed reply was counted as no input at all (or only
    # its cache reads), where the same reply unstreamed counts it all.
    start_usage = {
        "input_tokens": 8,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 0,
        "output_tokens": 1,
    }
    message = {"id": "m", "type": "message", "role": "assistant", "model": "m", "content": []}
    text = {"type": "text", "text": ""}
    frames = [
        anthropic_event("message_start", message={**message, "usage": start_usage}),
        anthropic_event("content_block_start", index=0, content_block=text),
        anthropic_event("content_block_delta", index=0, delta={"type": "text_delta", "text": "hi"}),
        anthropic_event("content_block_stop", index=0),
        anthropic_event(
            "message_delta",
            delta={"stop_reason": "end_turn", "stop_sequence": None},
            usage={"input_tokens": 0, "output_tokens": 16},
        ),
        anthropic_event("message_stop"),
    ]
    whole = {
        **message,
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {**start_usage, "output_tokens": 16},
    }
    server.script(Reply(frames=frames, headers=EVENTS), Reply(body=json.dumps(whole).encode()))
    metrics = ar.RuntimeMetrics()
    async with make_provider("anthropic", server, retry=ONCE, metrics=metrics) as llm:
        streamed = await _streamed(llm, [Message("user", "x")])
        unstreamed = await llm.chat([Message("user", "x")])
    assert streamed.usage == unstreamed.usage
    assert (streamed.usage.input_tokens, streamed.usage.cached_input_tokens) == (108, 100)
    assert streamed.usage.output_tokens == 16


# ------------------------------------------------------------------ Anthropic: cut-off call
async def test_anthropic_whole_reply_cut_off_inside_a_tool_call_is_refused(
    server: FakeLlmServer,
) -> None:
    # The API closes the tool_use block the token limit cut with the input it had so far
    # (here without the file's `content`): the whole reply gave the call out as if it were
    # complete, to be run with arguments missing, where the streamed reply refuses it.
    whole = {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "stop_sequence": None,
        "content": [
            {"type": "text", "text": "Saving it."},
            {"type": "tool_use", "id": "toolu_1", "name": "write_file", "input": {"path": "a"}},
        ],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 5, "output_tokens": 64},
    }
    cut = Turn(
        text="Saving it.",
        tool_calls=[("toolu_1", "write_file", {"path": "a", "content": "a long text"})],
        stop_reason="max_tokens",
        arguments_cut=24,
        input_tokens=5,
        output_tokens=64,
    )
    schema = {
        "type": "object",
        "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        "required": ["path", "content"],
    }
    tools = [ToolDefinition(name="write_file", parameters=schema)]
    server.script(Reply(body=json.dumps(whole).encode()), cut)
    budget = ar.CostBudget(max_tokens=10_000)
    async with make_provider("anthropic", server, retry=ONCE, budget=budget) as llm:
        with pytest.raises(CutOffArgumentsError, match="write_file") as whole_error:
            await llm.chat([Message("user", "save it")], tools=tools)
        with pytest.raises(CutOffArgumentsError) as streamed_error:
            await _streamed(llm, [Message("user", "save it")], tools=tools)
    assert whole_error.value.stop_reason == streamed_error.value.stop_reason == "max_tokens"
    assert len(server.requests) == 2  # not retried
    assert budget.used_tokens == 2 * 69  # each billed reply charged all the same


async def test_anthropic_whole_reply_cut_off_refuses_its_last_call_whatever_it_holds(
    server: FakeLlmServer,
) -> None:
    # Only a call that is the reply's last block can be cut (text after it means it ended).
    # That one is refused even with every required argument given: the API holds each
    # argument back until it is whole, so a cut call lacks the ones still to come, which
    # the tool filled in with their defaults (`dry_run=False` for a `dry_run=True` asked).
    whole = {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": "x"}},
            {"type": "text", "text": "And then"},
        ],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 5, "output_tokens": 64},
    }
    last_whole = {**whole, "content": whole["content"][:1]}
    schema = {"type": "object", "properties": {"q": {}}, "required": ["q"]}
    tools = [ToolDefinition(name="look", parameters=schema)]
    server.script(Reply(body=json.dumps(whole).encode()))
    server.script(Reply(body=json.dumps(last_whole).encode()))
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        after_text = await llm.chat([Message("user", "x")], tools=[ToolDefinition(name="look")])
        with pytest.raises(CutOffArgumentsError, match="may lack arguments still to come"):
            await llm.chat([Message("user", "x")], tools=tools)
    assert [(c.id, c.arguments) for c in after_text.tool_calls] == [("toolu_1", {"q": "x"})]
    assert after_text.stop_reason == "max_tokens"


async def test_an_agent_run_stops_at_a_call_the_token_limit_cut_in_a_whole_reply(
    server: FakeLlmServer,
) -> None:
    # The run took the cut call for the model's own: the tool was "called" without its
    # content, and the model asked again under the same token limit, where a streamed
    # run stops with the token-limit error at once.
    ran: list[tuple[str, str]] = []

    @ar.tool
    def write_file(path: str, content: str) -> str:
        """Writes a file."""
        ran.append((path, content))
        return "written"

    whole = {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "write_file", "input": {"path": "a"}},
        ],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 5, "output_tokens": 64},
    }
    server.script(Reply(body=json.dumps(whole).encode()))
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[write_file])
    async with make_provider("anthropic", server, retry=ONCE) as llm:  # not streamed
        with pytest.raises(ar.AgentLoopError, match=r"token limit.*a tool call's input"):
            await runtime.run_agent_with_provider("a1", "save it", llm)
    assert ran == []
    assert len(server.requests) == 1


@pytest.mark.parametrize("cls", [ar.OpenAIProvider, ar.AnthropicProvider])
def test_a_base_url_holding_a_lone_surrogate_is_refused_when_made(cls: Any) -> None:
    # How Python reads a byte of OPENAI_BASE_URL that is not UTF-8: every request failed
    # with a bare UnicodeEncodeError from httpx.
    with pytest.raises(ar.ProviderError, match="lone surrogate at index 18"):
        cls(base_url="http://127.0.0.1/v\udcff", api_key="k")
    assert cls(base_url="http://127.0.0.1/vé", api_key="k").base_url == "http://127.0.0.1/vé"


@pytest.mark.parametrize("setting", ["send_stop", "stream_usage"])
def test_openai_flags_are_bools(setting: str) -> None:
    # "false" read from a config file was true: `stream_options` went to servers that
    # refuse it, and every streamed call failed.
    with pytest.raises(TypeError, match=f"{setting} must be a bool, got 'false'"):
        ar.OpenAIProvider(api_key="k", **{setting: "false"})
    assert getattr(ar.OpenAIProvider(api_key="k", **{setting: False}), setting) is False


def test_a_scripted_providers_loop_is_a_bool() -> None:
    with pytest.raises(TypeError, match="loop must be a bool, got 'false'"):
        ar.ScriptedProvider(["a"], loop="false")  # type: ignore[arg-type]
