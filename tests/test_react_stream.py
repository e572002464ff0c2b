"""ReAct text mode through a provider that streams: a listened run's reply comes through
`chat_stream`, its text going to `LlmTextDelta` listeners as it arrives, and the run handles
it as it handles a reply from `chat` (stop sequences, usage, stop reason, deadline)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.providers.base import ChatResponse, StreamEnd, TextDelta, Usage

FINAL = "Thought: done\nAction: FINAL_ANSWER 42"


class Pieces:
    """Streams each reply in pieces of `size` characters; records its calls and closes."""

    def __init__(self, *replies: str | ChatResponse, size: int = 4) -> None:
        self.replies = [
            r if isinstance(r, ChatResponse) else ChatResponse(text=r, stop_reason="stop")
            for r in replies
        ]
        self.size = size
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.closed = 0

    async def chat(self, messages: Any, tools: Any = None, **params: Any) -> ChatResponse:
        self.calls.append(("chat", params))
        return self.replies.pop(0)

    async def chat_stream(
        self, messages: Any, tools: Any = None, **params: Any
    ) -> AsyncIterator[Any]:
        self.calls.append(("chat_stream", params))
        response = self.replies.pop(0)
        text = response.text
        try:
            for start in range(0, len(text), self.size):
                yield TextDelta(text[start : start + self.size])
            yield StreamEnd(response)
        finally:
            self.closed += 1

    @property
    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]


class Whole(Pieces):
    """Can stream, but its replies exist whole: the runtime asks `chat`."""

    streams_text = False


class ChatOnly:
    async def chat(self, messages: Any, tools: Any = None, **params: Any) -> ChatResponse:
        return ChatResponse(text=FINAL)


class CompleteOnly:
    async def complete(self, prompt: str, model: str | None = None) -> str:
        return FINAL


class ListenerFailed(Exception):
    pass


def listened(runtime: ar.AgentRuntime) -> list[ar.Event]:
    """The events `runtime` emits from now on, in order."""
    seen: list[ar.Event] = []
    runtime.events.on(seen.append)
    return seen


def deltas(seen: list[ar.Event]) -> list[str]:
    return [event.text for event in seen if isinstance(event, ar.LlmTextDelta)]


@pytest.mark.parametrize("how", ["run", "turn"])
async def test_a_listened_react_reply_streams_its_text_in_pieces(how: str) -> None:
    runtime = ar.AgentRuntime()
    seen = listened(runtime)
    provider = Pieces(FINAL, size=5)
    if how == "run":
        session = await runtime.run_agent_with_provider("a", "q", provider)
    else:
        session = runtime.create_session("a")
        assert await runtime.run_turn(session, "q", provider) == "42"
    assert session.final_answer == "42"
    assert provider.methods == ["chat_stream"] and provider.closed == 1
    texts = deltas(seen)
    assert len(texts) > 1 and "".join(texts) == FINAL
    kinds = [type(event).__name__ for event in seen]
    # Every piece before the whole reply's event: none is sent again with it.
    assert kinds == ["RunStarted", *["LlmTextDelta"] * len(texts), "LlmResponse", "RunFinished"]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
async def test_a_react_stream_never_carries_text_past_a_stop_sequence_split_across_deltas(
    size: int,
) -> None:
    # A server that ignores `stop`: the runtime cuts the reply, and its deltas, there.
    step = 'Thought: t\nAction: add {"a": 1}'
    provider = Pieces(step + "\nObservation: made up", FINAL + "\nObservation: x", size=size)

    @ar.tool
    async def add(a: int) -> int:
        """Adds one."""
        return a + 1

    config = ar.AgentConfig(stop_sequences=["\nObservation:"])
    runtime = ar.AgentRuntime(config, tools=[add])
    seen = listened(runtime)
    session = await runtime.run_agent_with_provider("a", "q", provider)
    assert session.final_answer == "42" and session.steps[0].observation == "2"
    assert provider.methods == ["chat_stream"] * 2
    assert all(params["stop"] for _, params in provider.calls)
    texts = deltas(seen)
    assert all(texts) and not any("Obs" in text for text in texts)
    responses = [event.text for event in seen if isinstance(event, ar.LlmResponse)]
    assert responses == [step, FINAL]
    assert "".join(texts) == step + FINAL


async def test_a_streamed_react_reply_charges_the_usage_of_its_stream_end() -> None:
    reply = ChatResponse(text=FINAL, usage=Usage(1000, 500), stop_reason="stop")
    budget = ar.CostBudget(max_tokens=10_000)
    runtime = ar.AgentRuntime(budget=budget)
    seen = listened(runtime)
    provider = Pieces(reply)
    session = await runtime.run_agent_with_provider("a", "q", provider)
    assert provider.methods == ["chat_stream"] and len(deltas(seen)) > 1
    snapshot = runtime.metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (1000, 500)
    assert budget.used_tokens == 1500
    assert (session.steps[-1].input_tokens, session.steps[-1].output_tokens) == (1000, 500)


@pytest.mark.parametrize("stops", [[], ["END"]])
async def test_a_listener_failing_on_a_streamed_react_delta_fails_the_run_once_charged(
    stops: list[str],
) -> None:
    reply = ChatResponse(text=FINAL, usage=Usage(1000, 500), stop_reason="stop")
    budget = ar.CostBudget(max_tokens=10_000)
    runtime = ar.AgentRuntime(ar.AgentConfig(stop_sequences=stops), budget=budget)
    got: list[str] = []

    def listener(event: ar.Event) -> None:
        if isinstance(event, ar.LlmTextDelta):
            got.append(event.text)
            raise ListenerFailed

    runtime.events.on(listener)
    provider = Pieces(reply, size=3)
    with pytest.raises(ListenerFailed):
        await runtime.run_agent_with_provider("a", "q", provider)
    assert provider.methods == ["chat_stream"] and provider.closed == 1
    assert len(got) == 1  # the stream was read to its end, quietly, to charge the call
    snapshot = runtime.metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (1000, 500)
    assert budget.used_tokens == 1500


async def test_a_react_stream_refused_with_its_billed_usage_is_charged() -> None:
    class BreaksOff:
        async def chat(self, messages: Any, tools: Any = None, **params: Any) -> Any:
            raise AssertionError("a listened run streams")

        async def chat_stream(self, messages: Any, tools: Any = None, **params: Any) -> Any:
            yield TextDelta("Thought: ")
            error = ar.ProviderError("the stream broke off after its usage", retryable=True)
            error.usage = Usage(1000, 500)
            raise error

    budget = ar.CostBudget(max_tokens=10_000)
    runtime = ar.AgentRuntime(budget=budget)
    seen = listened(runtime)
    with pytest.raises(ar.ProviderError, match="broke off"):
        await runtime.run_agent_with_provider("a", "q", BreaksOff())
    assert deltas(seen) == ["Thought: "]
    snapshot = runtime.metrics.snapshot()
    assert (snapshot.input_tokens, snapshot.output_tokens) == (1000, 500)
    assert budget.used_tokens == 1500


@pytest.mark.parametrize("stop_reason", ["length", "content_filter", "refusal"])
async def test_a_streamed_react_reply_that_stopped_early_is_no_final_answer(
    stop_reason: str,
) -> None:
    reply = ChatResponse(text=FINAL, stop_reason=stop_reason)
    runtime = ar.AgentRuntime()
    seen = listened(runtime)
    provider = Pieces(reply)
    with pytest.raises(ar.AgentLoopError, match=stop_reason):
        await runtime.run_agent_with_provider("a", "q", provider)
    assert provider.methods == ["chat_stream"] and "".join(deltas(seen)) == FINAL


async def test_a_react_stream_is_asked_with_the_runs_model_stops_and_model_params() -> None:
    config = ar.AgentConfig(model="m1", stop_sequences=["END"], model_params={"temperature": 0})
    runtime = ar.AgentRuntime(config)
    listened(runtime)
    provider = Pieces(FINAL)
    await runtime.run_agent_with_provider("a", "q", provider)
    [(method, params)] = provider.calls
    assert method == "chat_stream"
    assert params["model"] == "m1" and params["temperature"] == 0
    assert list(params["stop"]) == ["END"]


async def test_an_unlistened_react_run_asks_chat_not_chat_stream() -> None:
    # The event log of a checkpoint backend is no listener: it keeps no delta.
    runtime = ar.AgentRuntime(checkpoint_backend=ar.InMemoryBackend())
    provider = Pieces(FINAL)
    session = await runtime.run_agent_with_provider("a", "q", provider)
    assert session.final_answer == "42" and provider.methods == ["chat"]


@pytest.mark.parametrize("model", ["streams_text False", "chat only", "complete only", "infer"])
async def test_a_react_model_that_does_not_stream_sends_its_reply_as_one_delta(
    model: str,
) -> None:
    async def infer(prompt: str) -> str:
        return FINAL

    runtime = ar.AgentRuntime()
    seen = listened(runtime)
    if model == "infer":
        session = await runtime.run_agent("a", "q", infer)
    else:
        chosen = {"streams_text False": Whole(FINAL), "chat only": ChatOnly()}
        provider = chosen.get(model, CompleteOnly())
        session = await runtime.run_agent_with_provider("a", "q", provider)  # type: ignore[arg-type]
        if isinstance(provider, Whole):
            assert provider.methods == ["chat"]
    assert session.final_answer == "42" and deltas(seen) == [FINAL]


async def test_a_resumed_react_step_does_not_stream_its_journaled_reply_again() -> None:
    started, gate = asyncio.Event(), asyncio.Event()

    @ar.tool
    async def pay(x: int, idempotency_key: str = "") -> int:
        """Pays, once let through."""
        started.set()
        await gate.wait()
        return x * 2

    backend = ar.InMemoryBackend()
    step = 'Thought: t\nAction: pay {"x": 1}'
    first = ar.AgentRuntime(tools=[pay], checkpoint_backend=backend)
    first_seen = listened(first)
    session = first.create_session("a")
    task = asyncio.create_task(
        first.run_agent_with_provider("a", "q", Pieces(step), session=session)
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "".join(deltas(first_seen)) == step
    gate.set()
    second = ar.AgentRuntime(tools=[pay], checkpoint_backend=backend)
    second_seen = listened(second)
    provider = Pieces(FINAL)
    resumed = await second.resume(session.session_id, provider)
    assert resumed.final_answer == "42" and resumed.steps[0].observation == "2"
    assert provider.methods == ["chat_stream"]  # the final reply alone: the step's is reused
    assert "".join(deltas(second_seen)) == FINAL


@pytest.mark.parametrize("how", ["never waits", "never ends"])
async def test_the_runs_deadline_stops_a_react_stream_that_never_ends(how: str) -> None:
    class Endless(Pieces):
        async def chat_stream(
            self, messages: Any, tools: Any = None, **params: Any
        ) -> AsyncIterator[Any]:
            self.calls.append(("chat_stream", params))
            try:
                yield TextDelta("Thought: ")
                while True:
                    if how == "never waits":  # a model computed in the event loop's thread
                        time.sleep(0.001)
                    else:
                        await asyncio.sleep(3600)
                    yield TextDelta("more ")
            finally:
                self.closed += 1

    runtime = ar.AgentRuntime(ar.AgentConfig(loop_timeout_ms=200))
    seen = listened(runtime)
    provider = Endless()
    began = time.perf_counter()
    with pytest.raises(ar.AgentLoopError, match="timed out"):
        await runtime.run_agent_with_provider("a", "q", provider)
    assert time.perf_counter() - began < 1.5
    assert provider.methods == ["chat_stream"] and provider.closed == 1
    assert deltas(seen)[0] == "Thought: "


async def test_a_cancelled_react_run_closes_its_stream() -> None:
    waiting = asyncio.Event()

    class Hangs(Pieces):
        async def chat_stream(
            self, messages: Any, tools: Any = None, **params: Any
        ) -> AsyncIterator[Any]:
            try:
                yield TextDelta("Thought: ")
                waiting.set()
                await asyncio.Event().wait()
                yield StreamEnd(ChatResponse(text=FINAL))
            finally:
                self.closed += 1

    runtime = ar.AgentRuntime()
    listened(runtime)
    provider = Hangs()
    task = asyncio.create_task(runtime.run_agent_with_provider("a", "q", provider))
    async with asyncio.timeout(5):  # the stream's first delta went out
        await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert provider.closed == 1
    assert runtime.metrics.snapshot().active_sessions == 0


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_reply_whole_past_the_deadline_is_taken_and_charged(mode: str) -> None:
    # Its StreamEnd, past the deadline, raised the timeout: the reply the model gave (and
    # billed) was dropped, uncharged, where the same reply from `chat` ended the run.
    usage = Usage(input_tokens=1000, output_tokens=500)
    reply = ChatResponse(text=FINAL if mode == "react" else "42", usage=usage)
    runtime = ar.AgentRuntime(ar.AgentConfig(mode=mode, loop_timeout_ms=200))

    def slow_listener(event: ar.Event) -> None:
        if isinstance(event, ar.LlmTextDelta) and event.text.endswith("2"):
            time.sleep(0.3)  # a listener on the last delta, past the deadline

    runtime.events.on(slow_listener)
    session = await runtime.run_agent_with_provider("a", "q", Pieces(reply, size=40))
    assert session.final_answer == "42"
    totals = runtime.metrics.snapshot()
    assert (totals.input_tokens, totals.output_tokens) == (1000, 500)


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_stream_with_its_text_in_its_stream_end_alone_sends_it_as_one_delta(
    mode: str,
) -> None:
    class EndOnly(Pieces):
        async def chat_stream(
            self, messages: Any, tools: Any = None, **params: Any
        ) -> AsyncIterator[Any]:
            self.calls.append(("chat_stream", params))
            yield StreamEnd(self.replies.pop(0))

    runtime = ar.AgentRuntime(ar.AgentConfig(mode=mode, stop_sequences=["STOP"]))
    seen = listened(runtime)
    text = (FINAL if mode == "react" else "42") + "STOP and more"
    session = await runtime.run_agent_with_provider("a", "q", EndOnly(text))
    assert session.final_answer == "42"
    assert deltas(seen) == [text.partition("STOP")[0]]
