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
