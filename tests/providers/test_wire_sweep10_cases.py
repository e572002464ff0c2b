"""Replies that end in ways found by a tenth sweep, each over real HTTP on loopback."""

from __future__ import annotations

import json
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.providers.base import CutOffArgumentsError, Message

from .conftest import make_provider
from .fake_server import FakeLlmServer, Reply

ONCE = ar.RetryPolicy(max_attempts=1)
USER = [Message("user", "When was the treaty signed?")]
JSON = {"content-type": "application/json"}
EVENTS = {"content-type": "text/event-stream"}
UPSTREAM = {"code": 502, "message": "Upstream provider returned an error"}


def _failed_choice(error: Any) -> tuple[bytes, list[bytes]]:
    """A whole reply and a stream whose generation failed part way, as OpenRouter sends them."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": "error"}
    if error is not None:
        choice["error"] = error
    whole = {
        "id": "gen-1",
        "object": "chat.completion",
        "model": "some/model",
        "choices": [{**choice, "message": {"role": "assistant", "content": "It was in 18"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 7},
    }
    base = {"id": "gen-1", "object": "chat.completion.chunk", "model": "some/model"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"content": "It was in 18"}}]},
        {**base, "choices": [{**choice, "delta": {"content": ""}}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 7}},
    ]
    frames = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
    return json.dumps(whole).encode(), [*frames, b"data: [DONE]\n\n"]


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize(
    ("error", "message"),
    [
        (UPSTREAM, r"Upstream provider returned an error \(status 502\)"),
        (None, r"generation failed part way \(finish reason 'error'\)"),
    ],
    ids=["error-object", "finish-reason-alone"],
)
async def test_a_choice_whose_generation_failed_is_an_error_not_an_answer(
    server: FakeLlmServer, stream: bool, error: Any, message: str
) -> None:
    # Read as a whole reply, the half answer ("It was in 18") became the run's final
    # answer, and nothing kept the stop reason that said otherwise.
    whole, frames = _failed_choice(error)
    server.script(
        Reply(frames=frames, headers=EVENTS) if stream else Reply(body=whole, headers=JSON)
    )
    budget = ar.CostBudget(max_tokens=1_000)
    async with make_provider("openai", server, retry=ONCE, budget=budget) as llm:
        with pytest.raises(ar.ProviderError, match=message) as failed:
            if stream:
                [event async for event in llm.chat_stream(USER)]
            else:
                await llm.chat(USER)
    assert failed.value.usage == ar.Usage(input_tokens=10, output_tokens=7)
    assert budget.used_tokens == 17  # billed all the same


async def test_an_empty_error_object_in_a_good_choice_reports_nothing(
    server: FakeLlmServer,
) -> None:
    whole = {
        "id": "gen-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "error": {},
                "message": {"role": "assistant", "content": "1648"},
            }
        ],
    }
    server.script(Reply(body=json.dumps(whole).encode(), headers=JSON))
    async with make_provider("openai", server, retry=ONCE) as llm:
        assert (await llm.chat(USER)).text == "1648"


async def test_a_reply_the_context_window_cut_says_to_shorten_the_prompt(
    server: FakeLlmServer,
) -> None:
    # It said to raise max_tokens, which cannot help when the prompt fills the window.
    whole = {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"a": "x"}}],
        "stop_reason": "model_context_window_exceeded",
        "usage": {"input_tokens": 5, "output_tokens": 3},
    }
    server.script(Reply(body=json.dumps(whole).encode(), headers=JSON))
    async with make_provider("anthropic", server, retry=ONCE) as llm:
        with pytest.raises(CutOffArgumentsError, match="context window") as cut:
            await llm.chat(USER)
    assert "shorten the prompt or the history" in str(cut.value)
    assert "max_tokens" not in str(cut.value)
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
    model = ar.ScriptedProvider(
        [ar.ChatResponse(text="It was in", stop_reason="model_context_window_exceeded")]
    )
    with pytest.raises(ar.AgentLoopError, match="context window") as stopped:
        await runtime.run_agent_with_provider("a", "q", model)
    assert "shorten the prompt or the history" in str(stopped.value)


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_a_retryable_failed_choice_is_retried(server: FakeLlmServer, stream: bool) -> None:
    # A whole reply's failed choice was read after the request's retries were over. (A
    # stream is retried when it failed before any of its text went out.)
    whole, frames = _failed_choice(UPSTREAM)
    frames = frames[1:]
    good = {
        "id": "gen-2",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "1648"}}],
    }
    good_frames = [
        b"data: "
        + json.dumps({"choices": [{"index": 0, "delta": {"content": "1648"}}]}).encode()
        + b"\n\n",
        b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    if stream:
        server.script(
            Reply(frames=frames, headers=EVENTS), Reply(frames=good_frames, headers=EVENTS)
        )
    else:
        server.script(
            Reply(body=whole, headers=JSON), Reply(body=json.dumps(good).encode(), headers=JSON)
        )
    twice = ar.RetryPolicy(max_attempts=2, base_delay=0.001, jitter=False)
    async with make_provider("openai", server, retry=twice) as llm:
        if stream:
            events = [event async for event in llm.chat_stream(USER)]
            text = "".join(getattr(event, "text", "") for event in events)
        else:
            text = (await llm.chat(USER)).text
    assert text == "1648" and len(server.requests) == 2


@pytest.mark.parametrize(
    ("choice", "message", "retryable"),
    [
        # DeepSeek's generation cut short for lack of capacity.
        ({"finish_reason": "insufficient_system_resource"}, "generation failed part way", True),
        # An error given as its message alone, with or without the finish reason.
        ({"finish_reason": "error", "error": "Upstream gone"}, "Upstream gone", False),
        ({"finish_reason": None, "error": "Upstream gone"}, "Upstream gone", False),
        # A failed choice without a message at all.
        ({"finish_reason": "error", "error": UPSTREAM, "message": None}, "status 502", True),
    ],
    ids=["deepseek", "string", "string-no-finish", "no-message"],
)
async def test_other_forms_of_a_failed_choice(
    server: FakeLlmServer, choice: dict[str, Any], message: str, retryable: bool
) -> None:
    body = {
        "id": "gen-1",
        "model": "m",
        "choices": [{"index": 0, "message": {"content": "It was in 18"}, **choice}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 7},
    }
    server.script(Reply(body=json.dumps(body).encode(), headers=JSON))
    async with make_provider("openai", server, retry=ONCE) as llm:
        with pytest.raises(ar.ProviderError, match=message) as failed:
            await llm.chat(USER)
    assert failed.value.retryable is retryable
    assert failed.value.usage == ar.Usage(input_tokens=10, output_tokens=7)
