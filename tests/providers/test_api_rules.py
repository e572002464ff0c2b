"""Rules of the real APIs that requests used to break, and input the APIs bill at other prices.

Each test pins one rule: Anthropic refuses whitespace-only stop sequences, a prefill that
ends in whitespace, and (with extended thinking) a tool-use turn that lost its thinking
blocks; OpenAI takes at most 4 stop sequences, and its reasoning models no `stop` at all;
both bill cached input at their own prices. Request bodies are also checked against the
official SDKs' parameter types.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam
from pydantic import TypeAdapter

import llm_agent_runtime as ar
from llm_agent_runtime import CostBudget, RuntimeMetrics
from llm_agent_runtime.providers.base import ChatResponse, Message, StreamEnd, ToolCall

from .conftest import PROVIDERS, make_provider
from .fake_server import FakeLlmServer, Reply, Turn, anthropic_event

OPENAI_MESSAGES = TypeAdapter(list[ChatCompletionMessageParam])
ANTHROPIC_MESSAGES = TypeAdapter(list[MessageParam])

THINKING = {"type": "thinking", "thinking": "I should add 2 and 3.", "signature": "EqQBCgIYAh"}
REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}
THINK = {"type": "enabled", "budget_tokens": 2048}


def valid(kind: str, body: dict[str, Any]) -> None:
    """Checks a request's messages against the SDK's types (raises when they do not fit)."""
    (OPENAI_MESSAGES if kind == "openai" else ANTHROPIC_MESSAGES).validate_python(body["messages"])


async def reply(llm: Any, messages: list[Message], streamed: bool, **params: Any) -> ChatResponse:
    """The provider's response, through `chat` or assembled by `chat_stream`."""
    if not streamed:
        response: ChatResponse = await llm.chat(messages, **params)
        return response
    events = [event async for event in llm.chat_stream(messages, **params)]
    assert isinstance(events[-1], StreamEnd)
    return events[-1].response


# ---------------------------------------------------------------------- stop sequences
async def test_anthropic_sends_no_stop_sequence_of_whitespace_only(server: FakeLlmServer) -> None:
    # The API answers 400 "each stop sequence must contain non-whitespace".
    server.fallback = Turn("ok")
    async with make_provider("anthropic", server, stop=["\n", "END", " \t", ""]) as llm:
        await llm.chat([Message("user", "a")])
        await llm.chat([Message("user", "b")], stop="\n")
        await llm.chat([Message("user", "c")], stop=["\n\n", "Observation:"])
        await llm.chat([Message("user", "d")], stop=[])
    sent = [r.json.get("stop_sequences") for r in server.requests]
    assert sent == [["END"], None, ["Observation:"], None]


async def test_openai_sends_at_most_four_stop_sequences(server: FakeLlmServer) -> None:
    server.fallback = Turn("ok")
    async with make_provider("openai", server, stop=list("ABCDEF")) as llm:
        await llm.chat([Message("user", "a")])
        await llm.chat([Message("user", "b")], stop=["1", "2", "3", "4", "5"])
        await llm.chat([Message("user", "c")], stop="\n")
        await llm.chat([Message("user", "d")], stop=["x", "x", "y"])
    sent = [r.json.get("stop") for r in server.requests]
    assert sent == [list("ABCD"), ["1", "2", "3", "4"], "\n", ["x", "x", "y"]]


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_stop_string_given_to_the_provider_is_one_stop_sequence(
    kind: str, server: FakeLlmServer
) -> None:
    # `list("Observation:")` made it twelve sequences of one letter each, where a call's own
    # `stop="Observation:"` is one: replies stopped at their first "a", "e" or "s".
    server.fallback = Turn("ok")
    async with make_provider(kind, server, stop="Observation:") as llm:
        assert llm.stop == ["Observation:"]
        await llm.chat([Message("user", "a")])
        [event async for event in llm.chat_stream([Message("user", "b")])]
    field = "stop" if kind == "openai" else "stop_sequences"
    assert [r.json.get(field) for r in server.requests] == [["Observation:"]] * 2
    assert make_provider(kind, server, stop="").stop is None  # as an empty list: none


async def test_openai_send_stop_false_sends_no_stop_at_all(server: FakeLlmServer) -> None:
    # o3, o4-mini and gpt-5 refuse `stop`: neither the provider's nor a call's is sent.
    server.fallback = Turn("ok")
    async with make_provider("openai", server, stop=["END"], send_stop=False) as llm:
        assert llm.send_stop is False
        await llm.chat([Message("user", "a")])
        await llm.chat([Message("user", "b")], stop=["\n"], max_completion_tokens=64)
        [e async for e in llm.chat_stream([Message("user", "c")], stop="\n")]
    assert all("stop" not in r.json for r in server.requests)
    assert server.requests[1].json["max_completion_tokens"] == 64


STOP_REFUSED = Reply(
    status=400,
    headers={"content-type": "application/json"},
    body=json.dumps(
        {
            "error": {
                "message": "Unsupported parameter: 'stop' is not supported with this model.",
                "type": "invalid_request_error",
                "param": "stop",
                "code": "unsupported_parameter",
            }
        }
    ).encode(),
)


@pytest.mark.parametrize("streamed", [False, True])
async def test_openai_a_model_that_refuses_stop_is_asked_again_without_it(
    streamed: bool, server: FakeLlmServer
) -> None:
    # The demo's (and an agent's) stop sequences failed every call of a reasoning model
    # (o3, o4-mini, gpt-5) with a 400, until `send_stop=False` was found in the docs.
    server.script(STOP_REFUSED, Turn("first"), Turn("second"))
    async with make_provider("openai", server, stop=["\nObservation:"], model="o4-mini") as llm:
        for expected in ("first", "second"):
            if streamed:
                events = [e async for e in llm.chat_stream([Message("user", "hi")])]
                assert isinstance(events[-1], StreamEnd)
                assert events[-1].response.text == expected
            else:
                assert (await llm.chat([Message("user", "hi")])).text == expected
    # Asked once with it; the model's calls after that go without it.
    assert ["stop" in r.json for r in server.requests] == [True, False, False]


async def test_openai_an_error_that_only_quotes_stop_is_no_refusal_of_it(
    server: FakeLlmServer,
) -> None:
    # A tool named `stop` whose schema the API refuses: the call was sent again without
    # `stop`, and the model was taken for one that refuses it, for good.
    schema_error = {
        "message": "Invalid schema for function 'stop': 'patternProperties' is not supported.",
        "type": "invalid_request_error",
        "param": "tools[0].function.parameters",
    }
    refused = Reply(
        status=400,
        headers={"content-type": "application/json"},
        body=json.dumps({"error": schema_error}).encode(),
    )
    server.script(refused, Turn("fine"))
    tool = ar.ToolDefinition(name="stop", description="Stops.", parameters={"type": "object"})
    async with make_provider("openai", server, stop=["END"], model="gpt-4o") as llm:
        with pytest.raises(ar.ProviderError, match="Invalid schema"):
            await llm.chat([Message("user", "hi")], tools=[tool])
        await llm.chat([Message("user", "hi")])
    assert ["stop" in r.json for r in server.requests] == [True, True]


async def test_openai_other_refused_parameters_and_models_keep_their_stop(
    server: FakeLlmServer,
) -> None:
    refused = Reply(
        status=400,
        headers={"content-type": "application/json"},
        body=b'{"error": {"message": "Unsupported parameter: \'temperature\'", "param": '
        b'"temperature", "type": "invalid_request_error"}}',
    )
    server.script(refused, STOP_REFUSED, Turn("ok"), Turn("other"))
    async with make_provider("openai", server, stop=["END"], model="o4-mini") as llm:
        with pytest.raises(ar.ProviderError, match="temperature"):
            await llm.chat([Message("user", "hi")], temperature=0.5)
        await llm.chat([Message("user", "hi")])
        await llm.chat([Message("user", "hi")], model="gpt-4o-mini")  # another model: sent
    assert ["stop" in r.json for r in server.requests] == [True, True, False, True]


@pytest.mark.parametrize(
    ("kind", "options"),
    [("openai", {}), ("openai", {"send_stop": False}), ("anthropic", {})],
)
@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_the_runtime_cuts_at_the_stop_sequences_the_api_did_not_get(
    kind: str, options: dict[str, Any], mode: str, server: FakeLlmServer
) -> None:
    # The fifth stop sequence is past OpenAI's four, and whitespace that Anthropic refuses:
    # the server does not stop there, the runtime cuts the reply there itself.
    stops = ["<a>", "<b>", "<c>", "<d>", "\n\n"]
    text = "Thought: t\nAction: FINAL_ANSWER 5" if mode == "react" else "5"
    server.script(Turn(text + "\n\nObservation: invented"))
    config = ar.AgentConfig(mode=mode, stop_sequences=stops)  # type: ignore[arg-type]
    async with make_provider(kind, server, **options) as llm:
        session = await ar.AgentRuntime(config).run_agent_with_provider("a", "q", llm)
    assert session.final_answer == "5"
    body = server.requests[0].json
    if options:  # send_stop=False
        assert "stop" not in body
    else:
        assert body["stop" if kind == "openai" else "stop_sequences"] == stops[:4]


# ---------------------------------------------------------------------- cached input
@pytest.mark.parametrize("streamed", [False, True])
async def test_anthropic_prices_cache_reads_and_writes(
    streamed: bool, server: FakeLlmServer
) -> None:
    # A cache read is billed 0.1x the input price, a (5-minute) cache write 1.25x.
    turn = Turn("hi", input_tokens=50, cache_read_tokens=100_000, cache_write_tokens=2_000)
    server.script(turn, turn)
    budget, metrics = CostBudget(max_cost_usd=10.0), RuntimeMetrics()
    prices = {"input_cost_per_million": 3.0, "output_cost_per_million": 15.0}
    async with make_provider("anthropic", server, budget=budget, metrics=metrics, **prices) as llm:
        response = await reply(llm, [Message("user", "x")], streamed)
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens) == (102_050, 7)
    assert (usage.cached_input_tokens, usage.cache_write_tokens) == (100_000, 2_000)
    assert metrics.snapshot().input_tokens == 102_050  # every input token is counted
    assert budget.used_tokens == 102_057
    expected = (50 * 3.0 + 100_000 * 0.3 + 2_000 * 3.75 + 7 * 15.0) / 1e6
    assert budget.used_cost_usd == pytest.approx(expected)  # was $0.306, 8x this
    # Prices of one's own.
    budget = CostBudget(max_cost_usd=10.0)
    own = {"cached_input_cost_per_million": 0.5, "cache_write_cost_per_million": 6.0}
    async with make_provider("anthropic", server, budget=budget, **prices, **own) as llm:
        await reply(llm, [Message("user", "x")], streamed)
    expected = (50 * 3.0 + 100_000 * 0.5 + 2_000 * 6.0 + 7 * 15.0) / 1e6
    assert budget.used_cost_usd == pytest.approx(expected)


@pytest.mark.parametrize("streamed", [False, True])
async def test_anthropic_prices_writes_to_the_1_hour_cache_apart(
    streamed: bool, server: FakeLlmServer
) -> None:
    # Of 3,000 tokens written, 1,000 went to the 1-hour cache: billed 2x the input price,
    # the other 2,000 (5-minute) 1.25x. All were billed 1.25x before.
    turn = Turn("hi", input_tokens=50, cache_write_tokens=3_000, cache_write_1h_tokens=1_000)
    server.script(turn, turn)
    budget = CostBudget(max_cost_usd=10.0)
    prices = {"input_cost_per_million": 3.0, "output_cost_per_million": 15.0}
    async with make_provider("anthropic", server, budget=budget, **prices) as llm:
        response = await reply(llm, [Message("user", "x")], streamed)
    usage = response.usage
    assert (usage.input_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens) == (
        3_050,
        3_000,
        1_000,
    )
    expected = (50 * 3.0 + 2_000 * 3.75 + 1_000 * 6.0 + 7 * 15.0) / 1e6
    assert usage.cost_usd == pytest.approx(expected)
    assert budget.used_cost_usd == pytest.approx(expected)
    # A price of one's own for the 1-hour writes.
    budget = CostBudget(max_cost_usd=10.0)
    own = {"cache_write_1h_cost_per_million": 9.0}
    async with make_provider("anthropic", server, budget=budget, **prices, **own) as llm:
        await reply(llm, [Message("user", "x")], streamed)
    expected = (50 * 3.0 + 2_000 * 3.75 + 1_000 * 9.0 + 7 * 15.0) / 1e6
    assert budget.used_cost_usd == pytest.approx(expected)


@pytest.mark.parametrize(
    ("breakdown", "hour"),
    [(None, 0), ([1], 0), ("x", 0), ({"ephemeral_1h_input_tokens": "9"}, 0), ({}, 0)]
    + [({"ephemeral_1h_input_tokens": n}, h) for n, h in [(-5, 0), (40, 40), (10**6, 100)]],
)
async def test_anthropic_odd_cache_breakdowns_lose_no_counts(
    breakdown: Any, hour: int, server: FakeLlmServer
) -> None:
    usage = {"input_tokens": 5, "output_tokens": 2, "cache_creation_input_tokens": 100}
    body = {
        "model": "m",
        "content": [{"type": "text", "text": "x"}],
        "stop_reason": "end_turn",
        "usage": {**usage, "cache_creation": breakdown},
    }
    server.script(Reply(body=json.dumps(body).encode()))
    async with make_provider("anthropic", server) as llm:
        got = (await llm.chat([Message("user", "x")])).usage
    assert (got.input_tokens, got.output_tokens, got.cache_write_tokens) == (105, 2, 100)
    assert got.cache_write_1h_tokens == hour  # never beyond the writes, never below 0


async def test_anthropic_stream_keeps_the_cache_counts_a_later_delta_leaves_out(
    server: FakeLlmServer,
) -> None:
    start_usage = {
        "input_tokens": 40,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 200,
        "output_tokens": 1,
    }
    message = {"id": "m", "type": "message", "role": "assistant", "model": "m", "content": []}
    frames = [
        anthropic_event("message_start", message={**message, "usage": start_usage}),
        anthropic_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        anthropic_event("content_block_delta", index=0, delta={"type": "text_delta", "text": "x"}),
        anthropic_event("content_block_stop", index=0),
        # Cumulative counts; the cache ones are left out here (null in the second stream).
        anthropic_event(
            "message_delta",
            delta={"stop_reason": "end_turn"},
            usage={"input_tokens": 45, "output_tokens": 9},
        ),
        anthropic_event("message_stop"),
    ]
    with_nulls = [
        *frames[:4],
        anthropic_event(
            "message_delta",
            delta={"stop_reason": "end_turn"},
            usage={
                "input_tokens": 45,
                "cache_read_input_tokens": None,
                "cache_creation_input_tokens": 300,
                "output_tokens": 9,
            },
        ),
        frames[-1],
    ]
    events = {"content-type": "text/event-stream"}
    server.script(Reply(frames=frames, headers=events), Reply(frames=with_nulls, headers=events))
    async with make_provider("anthropic", server) as llm:
        first = await reply(llm, [Message("user", "x")], streamed=True)
        second = await reply(llm, [Message("user", "x")], streamed=True)
    assert first.usage == ar.providers.base.Usage(1245, 9, 1000, 200)
    assert second.usage == ar.providers.base.Usage(1345, 9, 1000, 300)


@pytest.mark.parametrize("streamed", [False, True])
async def test_openai_charges_cached_input_the_full_price_unless_told(
    streamed: bool, server: FakeLlmServer
) -> None:
    # The discount differs by model: by default the budget is never under-charged.
    turn = Turn("hi", input_tokens=50, cache_read_tokens=100_000, output_tokens=10)
    server.script(turn, turn)
    prices = {"input_cost_per_million": 2.5, "output_cost_per_million": 10.0}
    budget = CostBudget(max_cost_usd=10.0)
    async with make_provider("openai", server, budget=budget, **prices) as llm:
        response = await reply(llm, [Message("user", "x")], streamed)
    assert (response.usage.input_tokens, response.usage.cached_input_tokens) == (100_050, 100_000)
    assert response.usage.cache_write_tokens == 0
    assert budget.used_cost_usd == pytest.approx((100_050 * 2.5 + 10 * 10.0) / 1e6)
    budget = CostBudget(max_cost_usd=10.0)
    cheaper = {**prices, "cached_input_cost_per_million": 1.25}
    async with make_provider("openai", server, budget=budget, **cheaper) as llm:
        await reply(llm, [Message("user", "x")], streamed)
    assert budget.used_cost_usd == pytest.approx((50 * 2.5 + 100_000 * 1.25 + 10 * 10.0) / 1e6)


@pytest.mark.parametrize(
    ("details", "count", "field", "total"),
    [
        ("prompt_tokens_details", "cached_tokens", "cached_input_tokens", 10),
        ("completion_tokens_details", "reasoning_tokens", "reasoning_tokens", 2),
    ],
)
async def test_openai_usage_details_of_odd_shapes_lose_no_counts(
    details: str, count: str, field: str, total: int, server: FakeLlmServer
) -> None:
    # Compatible servers send what they like in the details: the counts still stand.
    shapes: list[Any] = [None, [1], {"x": 1}, {count: 99}, {count: -3}]
    for shape in shapes:
        usage = {"prompt_tokens": 10, "completion_tokens": 2, details: shape}
        body = {
            "model": "m",
            "choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
            "usage": usage,
        }
        server.script(Reply(body=json.dumps(body).encode()))
    async with make_provider("openai", server) as llm:
        got = [(await llm.chat([Message("user", "x")])).usage for _ in shapes]
    assert [(u.input_tokens, u.output_tokens) for u in got] == [(10, 2)] * 5
    # Never beyond the count it is part of.
    assert [getattr(u, field) for u in got] == [0, 0, 0, total, 0]


@pytest.mark.parametrize("streamed", [False, True])
async def test_openai_reports_the_reasoning_part_of_the_output(
    streamed: bool, server: FakeLlmServer
) -> None:
    # o-series and other reasoning models bill their hidden reasoning as output tokens.
    server.script(Turn("hi", input_tokens=50, output_tokens=700, reasoning_tokens=640))
    budget = CostBudget(max_cost_usd=10.0)
    prices = {"input_cost_per_million": 2.5, "output_cost_per_million": 10.0}
    async with make_provider("openai", server, budget=budget, **prices) as llm:
        response = await reply(llm, [Message("user", "x")], streamed)
    assert (response.usage.output_tokens, response.usage.reasoning_tokens) == (700, 640)
    assert budget.used_cost_usd == pytest.approx((50 * 2.5 + 700 * 10.0) / 1e6)  # once


def test_usage_takes_the_reasoning_count_as_an_int() -> None:
    assert ar.providers.base.Usage(reasoning_tokens=np.int64(3)).reasoning_tokens == 3
    with pytest.raises(TypeError, match="reasoning_tokens must be an int"):
        ar.providers.base.Usage(reasoning_tokens=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "price"),
    [
        ("openai", "cached_input_cost_per_million"),
        ("anthropic", "cached_input_cost_per_million"),
        ("anthropic", "cache_write_cost_per_million"),  # OpenAI bills no cache writes
        ("anthropic", "cache_write_1h_cost_per_million"),
    ],
)
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_cache_prices_are_checked(kind: str, price: str, value: float, server: Any) -> None:
    with pytest.raises(ValueError, match="prices"):
        make_provider(kind, server, **{price: value})


# ---------------------------------------------------------------------- extended thinking
@pytest.mark.parametrize("streamed", [False, True])
async def test_anthropic_keeps_reasoning_blocks_as_received(
    streamed: bool, server: FakeLlmServer
) -> None:
    server.script(
        Turn(reasoning=[THINKING, REDACTED], tool_calls=[("toolu_1", "add", {"a": 2, "b": 3})])
    )
    async with make_provider("anthropic", server) as llm:
        response = await reply(llm, [Message("user", "2+3?")], streamed, thinking=THINK)
    assert response.reasoning == [THINKING, REDACTED]  # the signature assembled when streamed
    assert response.text == ""
    assert [c.name for c in response.tool_calls] == ["add"]
    assert server.requests[0].json["thinking"] == THINK


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_reasoning_goes_first_in_the_assistant_turn_it_came_with(
    kind: str, server: FakeLlmServer
) -> None:
    # Without it, the API refuses the next request: "a final assistant message must start
    # with a thinking block".
    server.fallback = Turn("5")
    call = ToolCall(id="toolu_1", name="add", arguments={"a": 2, "b": 3})
    conversation = [
        Message("user", "2+3?"),
        Message("assistant", "Adding.", [call], reasoning=[THINKING, REDACTED]),
        Message("tool", "5", tool_call_id="toolu_1", name="add"),
    ]
    async with make_provider(kind, server) as llm:
        await llm.chat(conversation)
        bare = Message("assistant", "Adding.", [call])
        await llm.chat([conversation[0], bare, conversation[2]])
    with_reasoning, without = (r.json for r in server.requests)
    valid(kind, with_reasoning)
    if kind == "openai":  # OpenAI has no such blocks: the field is ignored
        assert with_reasoning == without
        return
    assistant = with_reasoning["messages"][1]
    assert assistant["role"] == "assistant"
    assert [b["type"] for b in assistant["content"]] == [
        "thinking",
        "redacted_thinking",
        "text",
        "tool_use",
    ]
    assert assistant["content"][:2] == [THINKING, REDACTED]


# ---------------------------------------------------------------------- prefill, tool errors
async def test_anthropic_prefill_loses_its_trailing_whitespace(server: FakeLlmServer) -> None:
    # The API answers 400 "final assistant content cannot end with trailing whitespace".
    server.fallback = Turn("x")
    prefill = Message("assistant", "Sure, here it is:\n ")
    async with make_provider("anthropic", server) as llm:
        await llm.chat([Message("user", "hi"), prefill])
        await llm.chat([Message("user", "hi"), Message("assistant", "a \n"), Message("user", "b")])
    last = server.requests[0].json["messages"][-1]
    assert last == {"role": "assistant", "content": [{"type": "text", "text": "Sure, here it is:"}]}
    assert prefill.content == "Sure, here it is:\n "  # the caller's message is left as it was
    # Only the final assistant message is a prefill: an earlier one keeps its text.
    assert server.requests[1].json["messages"][1]["content"][0]["text"] == "a \n"
    for request in server.requests:
        valid("anthropic", request.json)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_failed_tool_result_is_marked_as_an_error(kind: str, server: FakeLlmServer) -> None:
    server.fallback = Turn("sorry")
    calls = [
        ToolCall(id="toolu_1", name="boom", arguments={}),
        ToolCall(id="toolu_2", name="quiet", arguments={}),
        ToolCall(id="toolu_3", name="add", arguments={"a": 1, "b": 2}),
    ]
    conversation = [
        Message("user", "go"),
        Message("assistant", "", calls),
        Message("tool", "error (permanent): kaput", tool_call_id="toolu_1", is_error=True),
        Message("tool", "", tool_call_id="toolu_2", is_error=True),  # a failure with no text
        Message("tool", "3", tool_call_id="toolu_3"),
    ]
    async with make_provider(kind, server) as llm:
        await llm.chat(conversation)
    body = server.requests[0].json
    valid(kind, body)
    if kind == "openai":  # no such flag on the wire: the text says it
        results = [m for m in body["messages"] if m["role"] == "tool"]
        assert all("is_error" not in m for m in results)
        assert [m["content"] for m in results] == ["error (permanent): kaput", "", "3"]
        return
    results = body["messages"][-1]["content"]
    assert [r.get("is_error") for r in results] == [True, True, None]
    assert results[0]["content"] == "error (permanent): kaput"
    assert results[1]["content"].strip()  # the API refuses an empty error result
    assert results[2]["content"] == "3"


# ---------------------------------------------------------------------- through the runtime
@ar.tool
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@ar.tool
def boom(x: str) -> str:
    """Fails."""
    raise RuntimeError("kaput")


def assistant_turns(body: dict[str, Any]) -> list[list[dict[str, Any]]]:
    return [m["content"] for m in body["messages"] if m["role"] == "assistant"]


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_tool_loop_with_thinking_sends_each_reply_back_whole(
    streaming: bool, server: FakeLlmServer
) -> None:
    server.script(
        Turn(
            "Let me see.",
            reasoning=[THINKING],
            tool_calls=[("toolu_1", "add", {"a": 2, "b": 3}), ("toolu_2", "boom", {"x": "y"})],
        ),
        Turn(reasoning=[REDACTED], tool_calls=[("toolu_3", "add", {"a": 5, "b": 1})]),
        Turn("6"),
    )
    config = ar.AgentConfig(mode="tools", model_params={"thinking": THINK})
    runtime = ar.AgentRuntime(config, tools=[add, boom])
    if streaming:  # a listener makes the runtime stream
        runtime.events.on(lambda event: None)
    async with make_provider("anthropic", server) as llm:
        session = await runtime.run_agent_with_provider("a", "2+3, then +1?", llm)
    assert session.final_answer == "6"
    assert all(r.streamed is streaming for r in server.requests)
    assert all(r.json["thinking"] == THINK for r in server.requests)
    last = server.requests[-1].json
    valid("anthropic", last)
    first_turn, second_turn = assistant_turns(last)
    assert first_turn[0] == THINKING and first_turn[1] == {"type": "text", "text": "Let me see."}
    assert second_turn[0] == REDACTED and second_turn[1]["type"] == "tool_use"
    results = [b for m in last["messages"] if m["role"] == "user" for b in m["content"]]
    results = [b for b in results if b["type"] == "tool_result"]
    assert [(r["tool_use_id"], r.get("is_error")) for r in results] == [
        ("toolu_1", None),
        ("toolu_2", True),
        ("toolu_3", None),
    ]
    assert "kaput" in results[1]["content"]


slow_add_calls: list[int] = []


@ar.tool(idempotent=True)
async def slow_add(a: int, b: int) -> int:
    """Adds two integers, the first time only after a long while."""
    if not slow_add_calls:
        slow_add_calls.append(1)
        await asyncio.sleep(30)
    return a + b


@pytest.mark.parametrize("where", ["after the round", "during the round"])
async def test_a_resumed_run_sends_the_reasoning_and_errors_it_had(
    where: str, server: FakeLlmServer
) -> None:
    """Resume rebuilds the conversation from the checkpoints: from the saved steps of a
    finished round, or from the journal of the round the interruption cut."""
    slow_add_calls.clear()
    first = Turn(
        "Computing.",
        reasoning=[THINKING],
        tool_calls=[
            ("toolu_1", "slow_add" if where == "during the round" else "add", {"a": 1, "b": 2}),
            ("toolu_2", "boom", {"x": "y"}),
        ],
    )
    if where == "after the round":
        server.script(first, Reply(500, body=b'{"error": {"message": "down"}}'), Turn("Done"))
        config = ar.AgentConfig(mode="tools", model_params={"thinking": THINK})
    else:  # the slow call outlasts the run's deadline
        server.script(first, Turn("Done"))
        config = ar.AgentConfig(mode="tools", model_params={"thinking": THINK}, loop_timeout_ms=300)
    backend = ar.InMemoryBackend()
    tools = [add, boom, slow_add]
    retry = ar.RetryPolicy(max_attempts=1)
    async with make_provider("anthropic", server, retry=retry) as llm:
        runtime = ar.AgentRuntime(config, tools=tools, checkpoint_backend=backend)
        session = runtime.create_session("a")
        with pytest.raises((ar.ProviderError, ar.AgentLoopError)):
            await runtime.run_agent_with_provider("a", "1+2?", llm, session=session)
        resumed = ar.AgentRuntime(config, tools=tools, checkpoint_backend=backend)
        done = await resumed.resume(session.session_id, llm)
    assert done.final_answer == "Done"
    last = server.requests[-1].json
    valid("anthropic", last)
    if where == "after the round":  # the failed request, sent again as it was
        assert last == server.requests[1].json
    assert assistant_turns(last)[0][0] == THINKING
    results = [b for b in last["messages"][-1]["content"] if b["type"] == "tool_result"]
    assert [(r["tool_use_id"], r.get("is_error")) for r in results] == [
        ("toolu_1", None),
        ("toolu_2", True),
    ]
