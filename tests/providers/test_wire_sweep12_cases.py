"""Gemini's thought signatures (`extra_content`) over an OpenAI-compatible API, over loopback
HTTP: kept from each reply and sent back where they came, as Gemini 3 requires."""

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
SIGNATURE = {"google": {"thought_signature": "c2lnLTE="}}
OWN = {"google": {"thought_signature": "bWVzc2FnZQ=="}}
"""The message's own `extra_content` (Gemini puts one on a reply's text)."""


def _calls() -> list[dict[str, Any]]:
    """Two parallel calls, as Gemini sends them: only the first carries the signature."""
    return [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            "extra_content": SIGNATURE,
        },
        {
            "id": "call_2",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        },
    ]


def _whole(message: dict[str, Any], finish_reason: str) -> Reply:
    """An unstreamed chat completion of `message`."""
    choice = {"index": 0, "finish_reason": finish_reason, "message": message}
    whole = {"id": "r", "object": "chat.completion", "model": "m", "choices": [choice]}
    return Reply(body=json.dumps(whole).encode(), headers=JSON)


def _frames(chunks: list[dict[str, Any]]) -> Reply:
    frames = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
    return Reply(frames=[*frames, b"data: [DONE]\n\n"], headers=EVENTS)


def _gemini_calls(stream: bool) -> Reply:
    """A Gemini 3 reply of two calls; streamed, the signature comes in the call's last piece."""
    base = {"id": "r1", "object": "chat.completion.chunk", "model": "gemini-3-flash-preview"}
    if not stream:
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": _calls(),
            "extra_content": OWN,
        }
        return _whole(message, "tool_calls")
    first, second = _calls()
    del first["extra_content"]
    first["function"]["arguments"] = '{"city": '
    rest = {"index": 0, "function": {"arguments": '"Paris"}'}, "extra_content": SIGNATURE}
    deltas: list[dict[str, Any]] = [
        {"role": "assistant", "content": None, "extra_content": OWN},
        {"tool_calls": [{"index": 0, **first}]},
        {"tool_calls": [rest]},
        {"tool_calls": [{"index": 1, **second}]},
    ]
    chunks = [{**base, "choices": [{"index": 0, "delta": d}]} for d in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    return _frames(chunks)


def _answer(stream: bool) -> Reply:
    if stream:
        base = {"id": "r2", "object": "chat.completion.chunk", "model": "m"}
        return _frames(
            [
                {**base, "choices": [{"index": 0, "delta": {"content": "Sunny"}}]},
                {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            ]
        )
    return _whole({"role": "assistant", "content": "Sunny"}, "stop")


ECHOED = {"role": "assistant", "content": None, "tool_calls": _calls(), "extra_content": OWN}
"""The reply's assistant message as the next request sends it back."""
KEPT = [
    {"type": "extra_content", "extra_content": OWN},
    {"type": "extra_content", "index": 0, "extra_content": SIGNATURE},
]


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_gemini_signatures_are_kept_with_the_reply(
    server: FakeLlmServer, stream: bool
) -> None:
    # Gemini 3 refuses with a 400 ("function call is missing a thought_signature") a
    # history whose tool calls lost the `extra_content` they came with: dropped as unknown
    # fields, every tool loop through its OpenAI-compatible API failed at its second call.
    reply = await openai_reply(server, stream, _gemini_calls(stream))
    assert list(reply.reasoning) == KEPT
    assert [c.arguments for c in reply.tool_calls] == [{"city": "Paris"}, {"city": "Oslo"}]


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_a_tool_loop_sends_each_signature_back_where_it_came(
    server: FakeLlmServer, stream: bool
) -> None:
    echoed = await weather_loop(server, stream, _gemini_calls(stream), _answer(stream))
    assert echoed == [ECHOED]


async def test_a_resumed_round_sends_the_signatures_back(server: FakeLlmServer) -> None:
    # The signatures are saved with the round: a run resumed after its second call failed
    # sends the round as the model wrote it.
    @ar.tool
    async def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    refused = Reply(status=400, body=b'{"error": {"message": "bad"}}', headers=JSON)
    server.script(_gemini_calls(False), refused, _answer(False))
    backend = ar.InMemoryBackend()
    config = ar.AgentConfig(mode="tools")
    runtime = ar.AgentRuntime(config, tools=[get_weather], checkpoint_backend=backend)
    session = runtime.create_session("a")
    async with make_provider("openai", server, retry=ONCE) as llm:
        with pytest.raises(ar.ProviderError):
            await runtime.run_agent_with_provider("a", "Weather?", llm, session=session)
        resumed = ar.AgentRuntime(config, tools=[get_weather], checkpoint_backend=backend)
        done = await resumed.resume(session.session_id, llm)
    assert done.final_answer == "Sunny"
    echoed = [m for m in server.requests[2].json["messages"] if m["role"] == "assistant"]
    assert echoed == [ECHOED]


async def test_signatures_go_only_where_they_came(server: FakeLlmServer) -> None:
    # A block naming no call, or a call past the message's, is sent nowhere but where it
    # belongs; a user message's blocks are no reply's; Anthropic takes none of them, nor
    # OpenRouter's `reasoning_details`.
    stray = {"type": "extra_content", "index": 5, "extra_content": SIGNATURE}
    history = [
        Message("user", "q", reasoning=KEPT),
        Message("assistant", "a", reasoning=[*KEPT, stray, OPENROUTER]),
        Message("user", "again"),
    ]
    server.script(_answer(False))
    async with make_provider("openai", server, retry=ONCE) as llm:
        await llm.chat(history)
    sent = server.requests[0].json["messages"]
    assert sent[:2] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "extra_content": OWN, "reasoning_details": DETAILS},
    ]
    server.reset()
    anthropic_reply = {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 3},
    }
    server.script(Reply(body=json.dumps(anthropic_reply).encode(), headers=JSON))
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        await llm.chat(history)
    assert server.requests[0].json["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "a"}],
    }


DETAILS = [
    {
        "type": "reasoning.text",
        "text": "The user wants the weather: call get_weather.",
        "signature": "EqQBCkgIARABGAIiQA==",
        "format": "anthropic-claude-v1",
        "index": 0,
    },
    {
        "type": "reasoning.encrypted",
        "data": "c2VjcmV0",
        "format": "anthropic-claude-v1",
        "index": 1,
    },
]
"""OpenRouter's `reasoning_details` of a reply: a signed text entry and an encrypted one."""
OPENROUTER = {"type": "reasoning_details", "reasoning_details": DETAILS}
"""The reasoning block they are kept as."""


def _openrouter_call(stream: bool) -> Reply:
    """An OpenRouter reply of a reasoning model and one call; streamed, the text entry comes in
    pieces (its signature in the last), as OpenRouter streams it."""
    call = _calls()[1]
    if not stream:
        message = {
            "role": "assistant",
            "content": "",
            "reasoning": DETAILS[0]["text"],
            "reasoning_details": DETAILS,
            "tool_calls": [call],
        }
        return _whole(message, "tool_calls")
    text, encrypted = DETAILS
    pieces = [
        {"type": "reasoning.text", "text": "The user wants ", "format": text["format"], "index": 0},
        {"type": "reasoning.text", "text": "the weather: call get_weather.", "index": 0},
        {"type": "reasoning.text", "text": "", "signature": text["signature"], "index": 0},
    ]
    base = {"id": "r1", "object": "chat.completion.chunk", "model": "anthropic/claude-sonnet-4.5"}
    deltas: list[dict[str, Any]] = [
        {"role": "assistant", "content": "", "reasoning": p["text"], "reasoning_details": [p]}
        for p in pieces
    ]
    deltas.append({"content": "", "reasoning_details": [encrypted]})
    deltas.append({"tool_calls": [{"index": 0, **call}]})
    chunks = [{**base, "choices": [{"index": 0, "delta": d}]} for d in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    return _frames(chunks)


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_openrouter_reasoning_details_go_back_whole_with_the_calls(
    server: FakeLlmServer, stream: bool
) -> None:
    # OpenRouter asks for a reasoning model's `reasoning_details` back with the assistant
    # message of a tool-calling turn (its signed and encrypted entries carry the model's
    # thinking): read for progress only, they were lost.
    echoed = await weather_loop(server, stream, _openrouter_call(stream), _answer(stream))
    assert echoed == [
        {
            "role": "assistant",
            "content": None,
            "reasoning_details": DETAILS,
            "tool_calls": [_calls()[1]],
        }
    ]


def test_reasoning_details_join_only_the_pieces_of_one_entry() -> None:
    from llm_agent_runtime.providers.openai import _ReasoningDetails

    details = _ReasoningDetails()
    details.add({"type": "reasoning.text"})  # no list: nothing
    details.add([{"type": "reasoning.summary", "summary": "a"}])  # no index: whole
    details.add([{"type": "reasoning.summary", "summary": "b"}])
    details.add([{"type": "reasoning.text", "text": "x", "index": 0}, "odd"])
    details.add([{"type": "reasoning.text", "text": "y", "index": 0}])  # after "odd": apart
    details.add([{"type": "reasoning.text", "text": "z", "index": 0, "signature": None}])
    details.add([{"type": "reasoning.encrypted", "data": "d", "index": 0}])  # another type
    details.add([{"type": "reasoning.encrypted", "data": "e", "index": 0, "id": "c1"}])
    details.add([{"type": "reasoning.encrypted", "data": "f", "index": 0, "id": "c2"}])
    assert details.build() == [
        {"type": "reasoning.summary", "summary": "a"},
        {"type": "reasoning.summary", "summary": "b"},
        {"type": "reasoning.text", "text": "x", "index": 0},
        "odd",
        {"type": "reasoning.text", "text": "yz", "index": 0},
        {"type": "reasoning.encrypted", "data": "de", "index": 0, "id": "c1"},
        {"type": "reasoning.encrypted", "data": "f", "index": 0, "id": "c2"},  # another id
    ]


THINKING = "The user wants the weather in Paris: call get_weather."


def _reasoning_call(stream: bool, fields: dict[str, str]) -> Reply:
    """A reply of one call whose thinking comes in `fields` (each the reasoning's name),
    halved in two pieces when streamed."""
    call = _calls()[1]
    base = {"id": "r1", "object": "chat.completion.chunk", "model": "qwen3"}
    if not stream:
        message = {"role": "assistant", "content": None, **fields, "tool_calls": [call]}
        return _whole(message, "tool_calls")
    deltas: list[dict[str, Any]] = [
        {name: text[: len(text) // 2] for name, text in fields.items()},
        {name: text[len(text) // 2 :] for name, text in fields.items()},
        {"tool_calls": [{"index": 0, **call}]},
    ]
    chunks = [{**base, "choices": [{"index": 0, "delta": d}]} for d in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    return _frames(chunks)


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize(
    ("fields", "sent"),
    [
        ({"reasoning": THINKING}, {"reasoning": THINKING}),  # vLLM >= 0.16, Ollama
        (  # vLLM 0.11 to 0.15: both names, one text, sent once
            {"reasoning_content": THINKING, "reasoning": THINKING},
            {"reasoning_content": THINKING},
        ),
    ],
    ids=["reasoning", "both"],
)
async def test_reasoning_goes_back_under_the_name_it_came(
    server: FakeLlmServer, stream: bool, fields: dict[str, str], sent: dict[str, str]
) -> None:
    # vLLM renamed `reasoning_content` to `reasoning` (and reads only that back), as Ollama
    # names it: such a reply's thinking was read for progress only, and every tool round
    # lost the model's chain of thought, silently.
    echoed = await weather_loop(server, stream, _reasoning_call(stream, fields), _answer(stream))
    assert echoed == [{"role": "assistant", "content": None, **sent, "tool_calls": [_calls()[1]]}]


SIGNED = [
    {"id": "call_1", "type": "reasoning.encrypted", "data": "U0lHQQ==", "index": 0},
    {"id": "call_2", "type": "reasoning.encrypted", "data": "U0lHQg==", "index": 0},
]
"""Gemini's signatures through OpenRouter: an entry per call, of one type and index."""


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_reasoning_details_alike_go_back_apart(server: FakeLlmServer, stream: bool) -> None:
    # Entries of one type and index were joined as the pieces of one: the two calls'
    # signatures went back as one entry, the first call's id lost, both signatures broken.
    calls = [{k: v for k, v in call.items() if k != "extra_content"} for call in _calls()]
    base = {"id": "r1", "object": "chat.completion.chunk", "model": "google/gemini-3-pro"}
    if stream:
        deltas: list[dict[str, Any]] = [
            {"role": "assistant", "content": "", "reasoning_details": [SIGNED[0]]},
            {"reasoning_details": [SIGNED[1]]},
            {"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]},
        ]
        chunks = [{**base, "choices": [{"index": 0, "delta": d}]} for d in deltas]
        end = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
        first = _frames([*chunks, {**base, "choices": [end]}])
    else:
        message = {"role": "assistant", "content": "", "reasoning_details": SIGNED}
        first = _whole({**message, "tool_calls": calls}, "tool_calls")
    echoed = await weather_loop(server, stream, first, _answer(stream))
    assert echoed == [
        {"role": "assistant", "content": None, "reasoning_details": SIGNED, "tool_calls": calls}
    ]
