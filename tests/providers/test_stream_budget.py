"""Review of the HTTP providers against what the two APIs really send, over loopback HTTP
against the fake server: attempts billed, then failed and retried, are paid for."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from llm_agent_runtime import (
    AgentConfig,
    AgentLoopError,
    AgentRuntime,
    BudgetExceededError,
    ChatResponse,
    CostBudget,
    LlmTextDelta,
    ProviderError,
    RetryPolicy,
    ScriptedProvider,
    StreamEnd,
    Usage,
)
from llm_agent_runtime.providers.base import _OPEN_CALLS, Message, bill_caller

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


def _failed_choice() -> Reply:
    """A whole OpenAI reply whose choice failed part way (OpenRouter's form), billed 100/10."""
    body = {
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "error",
                "error": {"code": 502, "message": "upstream died"},
                "message": {"role": "assistant", "content": "half"},
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10},
    }
    return Reply(body=json.dumps(body).encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_streamed_answer_counts_the_billed_attempts_retried_before_it(
    kind: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # The server billed the failed attempt (500 input tokens): the call's usage says so, and
    # the provider's own budget counted each attempt once.
    server.script(_billed_then_failed(kind), Turn("answer", input_tokens=20, output_tokens=3))
    budget = CostBudget()
    async with make_provider(
        kind, server, retry=retry, budget=budget, input_cost_per_million=1.0
    ) as llm:
        events = [event async for event in llm.chat_stream(USER)]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert len(server.requests) == 2
    assert (end.response.usage.input_tokens, end.response.usage.output_tokens) == (520, 3)
    assert end.response.usage.cost_usd == pytest.approx(520 / 1e6)
    assert (budget.used_tokens, budget.used_cost_usd) == (523, pytest.approx(520 / 1e6))


async def test_a_whole_answer_counts_the_billed_attempts_retried_before_it(
    server: FakeLlmServer, retry: RetryPolicy
) -> None:
    server.script(_failed_choice(), Turn("answer", input_tokens=20, output_tokens=3))
    async with make_provider("openai", server, retry=retry) as llm:
        response = await llm.chat(USER)
    assert (response.text, response.usage.input_tokens, response.usage.output_tokens) == (
        "answer",
        120,
        13,
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_a_call_whose_every_attempt_was_billed_and_failed_carries_them_all(
    stream: bool, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    server.script(*[_billed_then_failed("openai") if stream else _failed_choice()] * 3)
    async with make_provider("openai", server, retry=retry) as llm:
        with pytest.raises(ProviderError) as caught:
            if stream:
                [event async for event in llm.chat_stream(USER)]
            else:
                await llm.chat(USER)
    assert len(server.requests) == 3
    usage = caught.value.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == ((1500, 0) if stream else (300, 30))


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_runs_budget_and_metrics_count_the_billed_attempts_its_provider_retried(
    kind: str, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # As the docs say to, the provider has no budget of its own inside a runtime.
    server.script(_billed_then_failed(kind), Turn("answer", input_tokens=20, output_tokens=3))
    budget = CostBudget()
    runtime = AgentRuntime(AgentConfig(mode="tools"), budget=budget)
    runtime.events.on(lambda event: None)  # a listener: the runtime streams
    async with make_provider(kind, server, retry=retry) as llm:
        session = await runtime.run_agent_with_provider("a", "hi", llm)
    assert session.final_answer == "answer"
    assert (session.steps[0].input_tokens, session.steps[0].output_tokens) == (520, 3)
    snapshot = runtime.metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (520, 3)
    assert budget.used_tokens == 523


async def test_a_whole_reply_whose_failed_attempt_spent_the_budget_is_not_tried_again(
    server: FakeLlmServer, retry: RetryPolicy
) -> None:
    server.script(_failed_choice(), Turn("answer"))
    budget = CostBudget(max_tokens=110)  # spent to the last token: the limit is not passed
    async with make_provider("openai", server, retry=retry, budget=budget) as llm:
        with pytest.raises(BudgetExceededError, match="token budget spent"):
            await llm.chat(USER)
    assert len(server.requests) == 1
    assert budget.used_tokens == 110


async def test_a_streamed_reply_with_unreadable_arguments_counts_the_attempts_before_it(
    server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # The runtime reads the reply the error holds: it lacked the retried attempt's tokens.
    unreadable = Turn(tool_calls=[("c1", "echo", "{not json")], input_tokens=20, output_tokens=3)
    server.script(_billed_then_failed("openai"), unreadable, Turn("done"))
    budget = CostBudget()
    runtime = AgentRuntime(AgentConfig(mode="tools"), budget=budget)
    runtime.events.on(lambda event: None)  # a listener: the runtime streams
    async with make_provider("openai", server, retry=retry) as llm:
        session = await runtime.run_agent_with_provider("a", "hi", llm)
    assert session.steps[0].error_kind == "permanent"  # answered, for the model to mend
    assert (session.steps[0].input_tokens, session.steps[0].output_tokens) == (520, 3)


@pytest.mark.parametrize("retried", [False, True])
async def test_a_stream_its_provider_closes_holds_what_was_billed(
    retried: bool, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # The error that says the provider was closed held no usage, though the server billed
    # the reply it cut (and the provider's own budget counted it).
    started = [
        anthropic_event(
            "message_start", message={"model": "m", "content": [], "usage": {"input_tokens": 500}}
        ),
        anthropic_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        anthropic_event("content_block_delta", index=0, delta={"type": "text_delta", "text": "hi"}),
    ]
    stalled = Reply(
        frames=[*started, anthropic_event("message_stop")],
        headers={"content-type": "text/event-stream"},
        pause_after=3,
        pause=5.0,
    )
    server.script(*([_billed_then_failed("anthropic")] if retried else []), stalled)
    llm = make_provider("anthropic", server, retry=retry)
    read: list[object] = []

    async def consume() -> None:
        async for event in llm.chat_stream(USER):
            read.append(event)

    task = asyncio.ensure_future(consume())
    while not read:
        await asyncio.sleep(0.01)
    await llm.aclose()
    with pytest.raises(ProviderError, match="closed while the call was in flight") as caught:
        await task
    usage = caught.value.usage
    assert usage is not None and usage.input_tokens == (1000 if retried else 500)


def _stalled_after_usage(kind: str) -> Reply:
    """A stream that reports 500 input tokens and a first piece of text, then stalls (5 s)
    before its end: a run's deadline or a cancel cuts it after the usage came."""
    if kind == "openai":
        frames = [
            sse({"model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]}),
            sse({"model": "m", "choices": [], "usage": {"prompt_tokens": 500}}),
            sse({"model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            b"data: [DONE]\n\n",
        ]
    else:
        frames = [
            anthropic_event(
                "message_start",
                message={"model": "m", "content": [], "usage": {"input_tokens": 500}},
            ),
            anthropic_event(
                "content_block_start", index=0, content_block={"type": "text", "text": ""}
            ),
            anthropic_event(
                "content_block_delta", index=0, delta={"type": "text_delta", "text": "hi"}
            ),
            anthropic_event("message_stop"),
        ]
    return Reply(
        frames=frames,
        headers={"content-type": "text/event-stream"},
        pause_after=len(frames) - 1 if kind == "anthropic" else 2,
        pause=5.0,
    )


@pytest.mark.parametrize("retried", [False, True], ids=["first attempt", "retried"])
@pytest.mark.parametrize("cut", ["deadline", "cancel"])
@pytest.mark.parametrize("mode", ["tools", "react"])
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_runs_budget_counts_a_stream_it_cut_after_the_usage_came(
    kind: str, mode: str, cut: str, retried: bool, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # The provider charged it to its own metrics only: the run's budget, the one the docs
    # say to use in a runtime, never paid for the prompt the server billed.
    server.script(*([_billed_then_failed(kind)] if retried else []), _stalled_after_usage(kind))
    budget = CostBudget()
    timeout = {"loop_timeout_ms": 300} if cut == "deadline" else {}
    runtime = AgentRuntime(AgentConfig(mode=mode, **timeout), budget=budget)
    run: asyncio.Future[object] | None = None

    def on_event(event: object) -> None:
        if cut == "cancel" and isinstance(event, LlmTextDelta) and run is not None:
            run.cancel()

    runtime.events.on(on_event)  # a listener: the runtime streams
    async with make_provider(kind, server, retry=retry) as llm:
        run = asyncio.ensure_future(runtime.run_agent_with_provider("a", "hi", llm))
        with pytest.raises(asyncio.CancelledError if cut == "cancel" else AgentLoopError):
            await run
    billed = 1000 if retried else 500
    assert budget.used_tokens == billed
    assert runtime.metrics.snapshot().input_tokens == billed
    assert _OPEN_CALLS == {}  # the run's call is over, however it ended


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_runs_budget_counts_a_billed_attempt_its_deadline_cut_the_retry_of(
    stream: bool, server: FakeLlmServer
) -> None:
    # The run ends while its provider waits to try a billed, failed attempt again: no reply
    # and no error was left to bring the attempt's usage back to the run.
    server.script(_billed_then_failed("openai") if stream else _failed_choice(), Turn("answer"))
    budget = CostBudget()
    runtime = AgentRuntime(AgentConfig(mode="tools", loop_timeout_ms=300), budget=budget)
    if stream:
        runtime.events.on(lambda event: None)
    slow = RetryPolicy(max_attempts=2, base_delay=30.0, jitter=False)
    async with make_provider("openai", server, retry=slow) as llm:
        with pytest.raises(AgentLoopError):
            await runtime.run_agent_with_provider("a", "hi", llm)
    assert len(server.requests) == 1
    assert budget.used_tokens == (500 if stream else 110)
    assert runtime.metrics.snapshot().input_tokens == (500 if stream else 100)


async def test_a_stream_read_to_its_end_is_charged_once(
    server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # Closed by the run once its reply came: nothing is billed a second time.
    server.script(
        _billed_then_failed("anthropic"), Turn("Final Answer: 42", input_tokens=20, output_tokens=3)
    )
    budget = CostBudget()
    runtime = AgentRuntime(AgentConfig(mode="react"), budget=budget)
    runtime.events.on(lambda event: None)
    async with make_provider("anthropic", server, retry=retry) as llm:
        session = await runtime.run_agent_with_provider("a", "hi", llm)
    assert session.final_answer == "42"
    assert budget.used_tokens == 523


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_reply_that_spends_its_providers_budget_is_charged_to_the_run(
    kind: str, stream: bool, server: FakeLlmServer, retry: RetryPolicy
) -> None:
    # The provider raises BudgetExceededError in the reply's place: the run's budget counted
    # the failed attempt before it (streamed) or nothing (whole), though both were billed.
    if stream:
        server.script(_billed_then_failed(kind), Turn("answer", input_tokens=500, output_tokens=5))
        billed_before = 500
    elif kind == "openai":
        server.script(_failed_choice(), Turn("answer", input_tokens=500, output_tokens=5))
        billed_before = 110
    else:  # Anthropic bills no failed whole reply
        server.script(Turn("answer", input_tokens=500, output_tokens=5))
        billed_before = 0
    shared_cap = CostBudget(max_tokens=600 if billed_before else 400)  # the provider's own
    budget = CostBudget()
    runtime = AgentRuntime(AgentConfig(mode="tools"), budget=budget)
    if stream:
        runtime.events.on(lambda event: None)
    async with make_provider(kind, server, retry=retry, budget=shared_cap) as llm:
        with pytest.raises(BudgetExceededError):
            await runtime.run_agent_with_provider("a", "hi", llm)
    assert budget.used_tokens == shared_cap.used_tokens == billed_before + 505


async def test_a_listeners_task_does_not_bill_the_run_for_its_own_calls(
    server: FakeLlmServer,
) -> None:
    # An async listener runs in a task started during the run's model call, which copies
    # the call's context: its own provider's call, cut after a billed attempt, was charged
    # to the run (after the run had ended, to the budget its next run reuses).
    server.script(Turn("answer", input_tokens=20, output_tokens=3), _failed_choice())
    budget = CostBudget()
    # The run waits for its listeners until its deadline, then leaves them running.
    runtime = AgentRuntime(AgentConfig(mode="tools", loop_timeout_ms=300), budget=budget)
    slow = RetryPolicy(max_attempts=2, base_delay=30.0, jitter=False)
    listener_tasks: list[asyncio.Task[object]] = []
    async with make_provider("openai", server, retry=slow) as side:

        async def moderate(event: object) -> None:
            if isinstance(event, LlmTextDelta) and not listener_tasks:
                listener_tasks.append(asyncio.current_task())  # type: ignore[arg-type]
                await side.chat(USER)

        runtime.events.on(moderate)
        async with make_provider("openai", server) as llm:
            await runtime.run_agent_with_provider("a", "hi", llm)
        while len(server.requests) < 2:  # the listener's call: billed, waiting to retry
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        listener_tasks[0].cancel()
        await asyncio.gather(*listener_tasks, return_exceptions=True)
    assert budget.used_tokens == 23
    assert runtime.metrics.snapshot().input_tokens == 20


async def test_a_run_whose_model_runs_another_run_keeps_its_own_billing() -> None:
    # The inner run's call, in the same task, puts the outer call's sink back as it ends:
    # usage handed over after it is the outer run's.
    inner_budget, outer_budget = CostBudget(), CostBudget()
    inner = AgentRuntime(AgentConfig(mode="tools"), budget=inner_budget)

    class AgentAsModel(ScriptedProvider):
        async def chat(self, messages: Any, tools: Any = None, **params: Any) -> ChatResponse:
            scripted = ScriptedProvider([ChatResponse("inner", usage=Usage(3, 1))])
            await inner.run_agent_with_provider("inner", "hi", scripted)
            bill_caller(Usage(input_tokens=7))  # as a provider cut after its usage does
            return await super().chat(messages, tools, **params)

    outer = AgentRuntime(AgentConfig(mode="tools"), budget=outer_budget)
    model = AgentAsModel([ChatResponse("outer", usage=Usage(20, 2))])
    assert (await outer.run_agent_with_provider("outer", "hi", model)).final_answer == "outer"
    assert (inner_budget.used_tokens, outer_budget.used_tokens) == (4, 29)
    assert _OPEN_CALLS == {}
