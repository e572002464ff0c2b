"""Edges of the two wire formats and of the calls that reach them: usage of a reply that
brings no answer, and a caller's arguments of the wrong type. Over loopback HTTP, against the
fake server speaking each wire format."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_agent_runtime import CostBudget, ProviderError, RetryPolicy, RuntimeMetrics
from llm_agent_runtime.providers.base import Message, ToolCall, ToolDefinition

from .conftest import PROVIDERS, make_provider
from .fake_server import FakeLlmServer, Reply, Turn

USER = [Message("user", "hi")]
ONCE = RetryPolicy(max_attempts=1)


async def _call(llm: Any, stream: bool, *args: Any, **kwargs: Any) -> Any:
    if stream:
        return [event async for event in llm.chat_stream(*args, **kwargs)]
    return await llm.chat(*args, **kwargs)


# ---------------------------------------------------------------------- usage
async def test_openai_a_reply_without_choices_is_still_charged_its_usage(
    server: FakeLlmServer,
) -> None:
    # A compatible server (a blocked prompt, say) answers with no choice but reports the
    # tokens it billed: the call fails, and the usage still reaches the budget and metrics,
    # as a streamed reply's does.
    body = {
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 3},
    }
    server.script(
        Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"})
    )
    budget, metrics = CostBudget(max_cost_usd=1.0), RuntimeMetrics()
    prices = {"input_cost_per_million": 10.0, "output_cost_per_million": 30.0}
    async with make_provider(
        "openai", server, budget=budget, metrics=metrics, retry=ONCE, **prices
    ) as llm:
        with pytest.raises(ProviderError, match="no choices"):
            await llm.chat(USER)
    snapshot = metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (1000, 3)
    assert budget.used_tokens == 1003
    assert budget.used_cost_usd == pytest.approx((1000 * 10.0 + 3 * 30.0) / 1e6)


# ---------------------------------------------------------------------- caller's types
_WRONG_CALLS: dict[str, tuple[tuple[Any, ...], dict[str, Any], str]] = {
    "messages as one str": (("hello",), {}, "messages must be"),
    "messages as dicts": (([{"role": "user", "content": "hi"}],), {}, r"messages\[0\]"),
    "tools as dicts": ((USER,), {"tools": [{"name": "f"}]}, r"tools\[0\]"),
    "one tool, not a list": ((USER,), {"tools": ToolDefinition(name="f")}, "tools must be"),
    "a tool call as a dict": (
        (
            [
                Message("user", "hi"),
                Message("assistant", "", tool_calls=[{"id": "a", "name": "f"}]),  # type: ignore[list-item]
            ],
        ),
        {},
        r"messages\[1\]\.tool_calls\[0\]",
    ),
    "arguments as JSON text": (
        (
            [
                Message("user", "hi"),
                Message("assistant", "", tool_calls=[ToolCall("a", "f", '{"x": 1}')]),  # type: ignore[arg-type]
                Message("tool", "done", tool_call_id="a"),
            ],
        ),
        {},
        r"messages\[1\]\.tool_calls\[0\]\.arguments",
    ),
}


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("case", list(_WRONG_CALLS))
async def test_arguments_of_the_wrong_type_are_a_type_error_before_anything_is_sent(
    kind: str, stream: bool, case: str, server: FakeLlmServer
) -> None:
    # They failed deep inside the request's making with a bare AttributeError ("'dict'
    # object has no attribute 'role'", "'tuple' object has no attribute 'name'" for one
    # ToolDefinition iterated as its fields), or, for arguments given as JSON text, were
    # sent JSON-encoded twice: the model saw a string where an object belongs.
    args, kwargs, where = _WRONG_CALLS[case]
    server.fallback = Turn("unexpected")
    async with make_provider(kind, server, retry=ONCE) as llm:
        with pytest.raises(TypeError, match=where):
            await _call(llm, stream, *args, **kwargs)
    assert server.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize(
    ("message", "where"),
    [
        (Message("user", 5), r"messages\[0\]\.content"),  # type: ignore[arg-type]
        (Message("user", [{"type": "text", "text": "hi"}]), r"messages\[0\]\.content"),  # type: ignore[arg-type]
    ],
    ids=["int", "list"],
)
async def test_anthropic_content_that_is_no_text_is_a_type_error(
    stream: bool, message: Message, where: str, server: FakeLlmServer
) -> None:
    # `content.isspace()` failed on it with a bare AttributeError.
    server.fallback = Turn("unexpected")
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        with pytest.raises(TypeError, match=where):
            await _call(llm, stream, [message])
    assert server.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_anthropic_reasoning_that_is_no_list_of_blocks_is_a_type_error(
    stream: bool, server: FakeLlmServer
) -> None:
    # A str was spread into the turn's content a character a block: a request the API
    # refuses, for a reason the caller could not see.
    history = [
        Message("user", "hi"),
        Message("assistant", "thought about it", reasoning="the signature"),  # type: ignore[arg-type]
        Message("user", "and?"),
    ]
    server.fallback = Turn("unexpected")
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        with pytest.raises(TypeError, match=r"messages\[1\]\.reasoning"):
            await _call(llm, stream, history)
    assert server.requests == []


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_well_typed_conversations_still_go_out_from_any_iterable(
    kind: str, server: FakeLlmServer
) -> None:
    # The checks take what worked before: a tuple or a generator of messages, tools as a
    # tuple, and (OpenAI) content parts in a list.
    server.script(Turn("one"), Turn("two"))
    tools = (ToolDefinition(name="f"),)
    async with make_provider(kind, server, retry=ONCE) as llm:
        reply = await llm.chat(tuple(USER), tools=tools)
        assert reply.text == "one"
        events = [e async for e in llm.chat_stream((m for m in USER), tools=tools)]
        assert events[-1].response.text == "two"
    sent = [r.json["messages"][-1]["content"] for r in server.requests]
    hi = "hi" if kind == "openai" else [{"type": "text", "text": "hi"}]
    assert sent == [hi, hi]
    assert all(len(r.json["tools"]) == 1 for r in server.requests)
    if kind == "openai":
        parts = [{"type": "text", "text": "hi"}]
        server.script(Turn("three"))
        async with make_provider(kind, server, retry=ONCE) as llm:
            assert (await llm.chat([Message("user", parts)])).text == "three"  # type: ignore[arg-type]
        assert server.requests[-1].json["messages"][0]["content"] == parts
