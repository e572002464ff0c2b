"""Wire rules the APIs enforce on whole conversations, and reply forms still in use.

Over loopback HTTP against the fake server: what each provider sends for conversations a
user builds by hand (same-role messages merged, reasoning kept), and what it reads of
OpenAI's legacy `function_call` replies.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_agent_runtime import RetryPolicy
from llm_agent_runtime.providers.base import Message, StreamEnd, ToolCall

from .conftest import make_provider
from .fake_server import FakeLlmServer, Reply, Turn, sse
from .test_api_rules import reply

ONCE = RetryPolicy(max_attempts=1)
THINKING = {"type": "thinking", "thinking": "Add them.", "signature": "EqQBCgIYAh"}
REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}
THINK = {"type": "enabled", "budget_tokens": 2048}


def types(message: dict[str, Any]) -> list[str]:
    return [block["type"] for block in message["content"]]


# ---------------------------------------------------------------------- Anthropic merging
async def test_anthropic_tool_results_come_before_text_merged_into_their_message(
    server: FakeLlmServer,
) -> None:
    # The API answers 400 "tool_use ids were found without tool_result blocks immediately
    # after" when text comes before the results in the user message that carries them.
    server.fallback = Turn("ok")
    calls = [ToolCall("t1", "add", {"a": 1}), ToolCall("t2", "add", {"a": 2})]
    conversation = [
        Message("user", "go"),
        Message("assistant", "", calls),
        Message("user", "also note this"),
        Message("tool", "1", tool_call_id="t1", name="add"),
        Message("user", "and this"),
        Message("tool", "2", tool_call_id="t2", name="add"),
    ]
    async with make_provider("anthropic", server) as llm:
        await llm.chat(conversation)
    sent = server.requests[0].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    results = sent[2]["content"]
    assert types(sent[2]) == ["tool_result", "tool_result", "text", "text"]
    assert [b.get("tool_use_id") for b in results[:2]] == ["t1", "t2"]
    assert [b.get("text") for b in results[2:]] == ["also note this", "and this"]
    # The caller's messages are untouched, and their first user message keeps its order.
    assert sent[0]["content"] == [{"type": "text", "text": "go"}]


@pytest.mark.parametrize(
    "first",
    [
        [Message("assistant", "Hi! I'm the support bot.")],  # a chat seeded with a greeting
        [Message("user", " \n"), Message("assistant", "Hello!")],  # a blank turn, left out
        [Message("system", "Be brief."), Message("assistant", "", [ToolCall("t0", "add", {})])],
    ],
)
async def test_anthropic_conversation_opens_with_a_user_message(
    first: list[Message], server: FakeLlmServer
) -> None:
    # The API answers 400 'messages: first message must use the "user" role'.
    server.fallback = Turn("ok")
    conversation = [*first]
    if first[-1].tool_calls:
        conversation.append(Message("tool", "0", tool_call_id="t0", name="add"))
    conversation.append(Message("user", "My order is late."))
    async with make_provider("anthropic", server) as llm:
        await llm.chat(conversation)
    sent = server.requests[0].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == [{"type": "text", "text": "(conversation start)"}]
    opening = sent[1]["content"][0]
    if first[-1].tool_calls:
        assert opening == {"type": "tool_use", "id": "t0", "name": "add", "input": {}}
    else:
        assert opening == {"type": "text", "text": first[-1].content}


async def test_anthropic_tool_use_ids_a_conversation_repeats_are_sent_apart(
    server: FakeLlmServer,
) -> None:
    # "tool_use ids must be unique" across the request: a compatible server that sends no
    # ids (named by position) or a history written by hand repeats them from turn to turn.
    server.fallback = Turn("ok")
    conversation = [Message("user", "go")]
    for n, text in enumerate(["a", "b", "c"]):
        calls = [ToolCall("call_0", "echo", {"text": text}), ToolCall("call_1", "echo", {})]
        conversation += [
            Message("assistant", "", calls),
            Message("tool", text, tool_call_id="call_0", name="echo"),
            Message("tool", str(n), tool_call_id="call_1", name="echo"),
        ]
    async with make_provider("anthropic", server) as llm:
        await llm.chat(conversation)
    sent = server.requests[0].json["messages"]
    uses = [[b["id"] for b in m["content"]] for m in sent if m["role"] == "assistant"]
    results = [[b["tool_use_id"] for b in m["content"]] for m in sent[2::2]]
    assert uses == results  # each result still answers its own call
    every = [call_id for ids in uses for call_id in ids]
    assert len(set(every)) == len(every) == 6
    assert uses[0] == ["call_0", "call_1"]  # the first use of an id keeps it
    assert [[b["content"] for b in m["content"]] for m in sent[2::2]] == [
        ["a", "0"],
        ["b", "1"],
        ["c", "2"],
    ]


async def test_anthropic_tool_use_ids_of_another_provider_are_sent_as_the_api_takes_them(
    server: FakeLlmServer,
) -> None:
    # A run begun on an OpenAI-compatible server (vLLM's Kimi ids: `functions.lookup:0`),
    # resumed on Anthropic: the API answers 400 for an id not matching ^[a-zA-Z0-9_-]+$.
    server.fallback = Turn("ok")
    calls = [ToolCall("functions.lookup:0", "lookup", {}), ToolCall("functions_lookup_0", "x", {})]
    conversation = [
        Message("user", "go"),
        Message("assistant", "", calls),
        Message("tool", "1", tool_call_id="functions.lookup:0", name="lookup"),
        Message("tool", "2", tool_call_id="functions_lookup_0", name="x"),
    ]
    async with make_provider("anthropic", server) as llm:
        await llm.chat(conversation)
    sent = server.requests[0].json["messages"]
    uses = [b["id"] for b in sent[1]["content"]]
    assert uses == ["functions_lookup_0", "functions_lookup_0_2"]  # apart, as the API takes
    assert [b["tool_use_id"] for b in sent[2]["content"]] == uses


async def test_anthropic_reasoning_stays_first_when_assistant_messages_merge(
    server: FakeLlmServer,
) -> None:
    # "If an assistant message contains any thinking blocks, the first block must be
    # thinking or redacted_thinking."
    server.fallback = Turn("ok")
    call = ToolCall("t1", "add", {"a": 1})
    conversation = [
        Message("user", "go"),
        Message("assistant", "Let me see."),
        Message("assistant", "Adding.", [call], reasoning=[THINKING, REDACTED]),
        Message("tool", "1", tool_call_id="t1", name="add"),
    ]
    async with make_provider("anthropic", server) as llm:
        await llm.chat(conversation, thinking=THINK)
    assistant = server.requests[0].json["messages"][1]
    assert assistant["role"] == "assistant"
    assert types(assistant) == ["thinking", "redacted_thinking", "text", "text", "tool_use"]
    assert assistant["content"][:2] == [THINKING, REDACTED]
    assert [b.get("text") for b in assistant["content"][2:4]] == ["Let me see.", "Adding."]


async def test_anthropic_reasoning_with_nothing_after_it_is_not_sent(
    server: FakeLlmServer,
) -> None:
    # A reply of thinking and an empty answer, kept in a hand-built history: the API refuses
    # "The final block in an assistant message cannot be `thinking`".
    server.script(Turn("", reasoning=[THINKING]), Turn("ok"))
    async with make_provider("anthropic", server) as llm:
        first = await llm.chat([Message("user", "hi")], thinking=THINK)
        history = [
            Message("user", "hi"),
            Message("assistant", first.text, first.tool_calls, reasoning=first.reasoning),
            Message("user", "say something"),
        ]
        assert (await llm.chat(history, thinking=THINK)).text == "ok"
    assert first.reasoning == [THINKING]
    sent = server.requests[1].json["messages"]
    for message in sent:
        if message["role"] == "assistant":
            assert message["content"][-1]["type"] not in ("thinking", "redacted_thinking")
    assert sent == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "say something"}],
        }
    ]


# ---------------------------------------------------------------------- OpenAI legacy calls
def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return sse({"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


@pytest.mark.parametrize("streamed", [False, True], ids=["chat", "stream"])
async def test_openai_legacy_function_call_is_a_tool_call(
    streamed: bool, server: FakeLlmServer
) -> None:
    # A request with `functions=` (or a server that still answers in that form) gets
    # `message.function_call` and finish reason `function_call`: it read as an empty answer.
    if streamed:
        frames = [
            _chunk({"role": "assistant", "content": None, "function_call": {"name": "add"}}),
            _chunk({"function_call": {"arguments": '{"a": '}}),
            _chunk({"function_call": {"arguments": "1}"}}),
            _chunk({}, "function_call"),
            sse(
                {"model": "m", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}
            ),
            b"data: [DONE]\n\n",
        ]
        server.script(Reply(frames=frames, headers={"content-type": "text/event-stream"}))
    else:
        message = {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "add", "arguments": '{"a": 1}'},
        }
        body = {
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "function_call"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4},
        }
        server.script(
            Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"})
        )
    functions = [{"name": "add", "parameters": {"type": "object", "properties": {}}}]
    async with make_provider("openai", server, retry=ONCE) as llm:
        response = await reply(llm, [Message("user", "1?")], streamed, functions=functions)
    assert response.stop_reason == "function_call"
    assert [(c.name, c.arguments) for c in response.tool_calls] == [("add", {"a": 1})]
    assert response.tool_calls[0].id == "call_0"
    assert response.text == ""
    assert (response.usage.input_tokens, response.usage.output_tokens) == (9, 4)


async def test_openai_streamed_legacy_function_call_gives_out_deltas(
    server: FakeLlmServer,
) -> None:
    frames = [
        _chunk({"role": "assistant", "function_call": {"name": "add", "arguments": ""}}),
        _chunk({"function_call": {"arguments": '{"a": 1}'}}),
        _chunk({}, "function_call"),
        b"data: [DONE]\n\n",
    ]
    server.script(Reply(frames=frames, headers={"content-type": "text/event-stream"}))
    async with make_provider("openai", server, retry=ONCE) as llm:
        events = [e async for e in llm.chat_stream([Message("user", "1?")])]
    deltas = [e for e in events if not isinstance(e, StreamEnd)]
    assert {d.index for d in deltas} == {0}  # type: ignore[union-attr]
    assert "".join(d.arguments_delta for d in deltas) == '{"a": 1}'  # type: ignore[union-attr]
    assert [d.name for d in deltas if d.name] == ["add"]  # type: ignore[union-attr]


# ---------------------------------------------------------------------- Anthropic system
@pytest.mark.parametrize("streamed", [False, True], ids=["chat", "stream"])
async def test_anthropic_system_prompt_as_blocks_can_carry_cache_control(
    streamed: bool, server: FakeLlmServer
) -> None:
    # Prompt caching marks the system prompt's blocks with `cache_control`: passing them was
    # a ValueError ("parameters set by the provider cannot be passed: ['system']").
    server.fallback = Turn("ok", cache_read_tokens=900)
    cached = {"type": "text", "text": "Long instructions.", "cache_control": {"type": "ephemeral"}}
    async with make_provider("anthropic", server) as llm:
        response = await reply(llm, [Message("user", "hi")], streamed, system=[cached])
        await reply(
            llm, [Message("system", "Be brief."), Message("user", "hi")], streamed, system=[cached]
        )
        await reply(
            llm, [Message("system", "Be brief."), Message("user", "hi")], streamed, system="Base."
        )
    assert response.usage.cached_input_tokens == 900
    alone, with_messages, as_text = (r.json["system"] for r in server.requests)
    assert alone == [cached]
    # The system messages' text follows the blocks passed, as a block of its own.
    assert with_messages == [cached, {"type": "text", "text": "Be brief."}]
    assert as_text == [{"type": "text", "text": "Base."}, {"type": "text", "text": "Be brief."}]
    assert cached == {
        "type": "text",
        "text": "Long instructions.",
        "cache_control": {"type": "ephemeral"},
    }


@pytest.mark.parametrize("system", [42, [42], ["text"]])
async def test_anthropic_system_of_another_type_is_a_type_error(
    system: Any, server: FakeLlmServer
) -> None:
    async with make_provider("anthropic", server) as llm:
        with pytest.raises(TypeError, match="system"):
            await llm.chat([Message("user", "hi")], system=system)
    assert server.requests == []
