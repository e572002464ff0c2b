"""Review of the HTTP providers against what the two APIs really send, over loopback HTTP
against the fake server: a stream retried after its failed attempt spent the budget."""

from __future__ import annotations

import pytest

from llm_agent_runtime import BudgetExceededError, CostBudget, RetryPolicy
from llm_agent_runtime.providers.base import Message

from .conftest import PROVIDERS, make_provider
from .fake_server import FakeLlmServer, Reply, Turn, anthropic_error_event, anthropic_event, sse

USER = [Message("user", "hi")]


def _billed_then_failed(kind: str) -> Reply:
    """An attempt that reports 500 input tokens, then fails before any output (retryable)."""
    if kind == "openai":
        # The usage chunk came, then the body ended before [DONE].
        frames = [
            sse({"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
            sse({"model": "m", "choices": [], "usage": {"prompt_tokens": 500}}),
        ]
    else:
        # Anthropic reports the input tokens in message_start, then the model is overloaded.
        frames = [
            anthropic_event(
                "message_start",
                message={"model": "m", "content": [], "usage": {"input_tokens": 500}},
            ),
            anthropic_error_event("Overloaded"),
        ]
    return Reply(frames=frames, headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_stream_whose_failed_attempt_spent_the_budget_is_not_tried_again(
    kind: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # The failed attempt's usage is charged (it was billed). Once that spends the budget,
    # another attempt would be a request the budget no longer allows, billed again.
    server.script(_billed_then_failed(kind), Turn("answer"))
    budget = CostBudget(max_tokens=100)
    async with make_provider(kind, server, retry=retry, budget=budget) as llm:
        with pytest.raises(BudgetExceededError, match="token budget spent"):
            [event async for event in llm.chat_stream(USER)]
    assert len(server.requests) == 1
    assert budget.used_tokens == 500
