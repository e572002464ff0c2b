"""Values at the runtime's edges: reserved tool names, approval locks across event loops,
a provider's cost, non-finite floats in JSON, and who counts as listening to events."""

from __future__ import annotations

import asyncio
import json
import math
from decimal import Decimal
from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.events import EventBus
from llm_agent_runtime.providers.base import ChatResponse, Usage
from llm_agent_runtime.runtime import ApprovalDecision
from llm_agent_runtime.tools import _render

FINAL = "Thought: d\nAction: FINAL_ANSWER ok"


def _echo(arguments: dict[str, Any]) -> Any:
    return arguments


# ------------------------------------------------------------------ reserved tool names
@pytest.mark.parametrize("name", ["FINAL_ANSWER", "final_answer", "Final_Answer", "fINAL_aNSWER"])
def test_a_tool_may_not_be_named_final_answer_in_any_letter_case(name: str) -> None:
    with pytest.raises(ar.ToolError, match="reserved") as spec_error:
        ar.ToolSpec(name, "Records the answer.", _echo)
    assert spec_error.value.tool == name

    def answer(text: str) -> str:
        """Records the answer."""
        return text

    with pytest.raises(ar.ToolError, match="reserved"):
        ar.tool(answer, name=name)


def test_a_function_named_final_answer_needs_another_tool_name() -> None:
    def final_answer(answer: str) -> str:
        """Records the answer."""
        return answer

    with pytest.raises(ar.ToolError, match="reserved"):
        ar.tool(final_answer)
    assert ar.tool(final_answer, name="record_answer").name == "record_answer"
    assert ar.ToolSpec("final_answers", "d", _echo).name == "final_answers"


# ------------------------------------------------------------------ approvals
def test_remembered_approvals_serve_a_later_turn_on_another_event_loop() -> None:
    @ar.tool
    def a(x: int) -> int:
        """A."""
        return x

    @ar.tool
    def b(x: int) -> int:
        """B."""
        return x

    asked: list[str] = []

    async def handler(session: Any, name: str, arguments: Any) -> ApprovalDecision:
        asked.append(name)
        await asyncio.sleep(0.01)  # a person takes a moment: the second call of b waits
        return ApprovalDecision("approve", remember=name == "a")

    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[a, b], approval_handler=handler)
    session = rt.create_session("agent")

    def turn() -> Any:
        calls = [("a", {"x": 1}), ("b", {"x": 2}), ("b", {"x": 3})]
        provider = ar.ScriptedProvider([ar.ScriptedProvider.tool_call_reply(calls), "done"])
        return rt.run_turn(session, "go", provider)

    assert asyncio.run(turn()) == "done"
    assert asyncio.run(turn()) == "done"  # a new event loop
    assert asked == ["a", "b", "b", "b", "b"]  # a's approval was remembered
    assert rt._approval_locks == {} and list(rt._approvals) == [session.session_id]


# ------------------------------------------------------------------ a provider's cost
class Priced:
    """A provider whose price computation went wrong."""

    def __init__(self, cost: Any, reply: str = "done") -> None:
        self.cost = cost
        self.reply = reply

    async def chat(self, messages: Any, tools: Any = None, **params: Any) -> ChatResponse:
        return ChatResponse(self.reply, usage=Usage(5, 3, cost_usd=self.cost), stop_reason="stop")


@pytest.mark.parametrize("cost", [math.nan, -0.01, math.inf, "0.1", True, None])
@pytest.mark.parametrize("budget", [None, 1.0])
@pytest.mark.parametrize("mode", ["tools", "react"])
async def test_a_cost_that_is_no_amount_fails_the_run_typed_with_or_without_a_budget(
    cost: Any, budget: float | None, mode: str
) -> None:
    rt = ar.AgentRuntime(
        ar.AgentConfig(mode=mode),
        budget=None if budget is None else ar.CostBudget(max_cost_usd=budget),
    )
    with pytest.raises(ar.AgentRuntimeError, match=r"Usage\.cost_usd"):
        await rt.run_agent_with_provider("a", "q", Priced(cost, FINAL))


@pytest.mark.parametrize("cost", [0, 0.0, 0.25, Decimal("0.5")])
async def test_a_cost_that_is_an_amount_is_charged(cost: Any) -> None:
    budget = ar.CostBudget(max_cost_usd=1.0)
    rt = ar.AgentRuntime(ar.AgentConfig(mode="tools"), budget=budget)
    session = await rt.run_agent_with_provider("a", "q", Priced(cost))
    assert session.final_answer == "done" and budget.used_cost_usd == float(cost)


# ------------------------------------------------------------------ non-finite floats
def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


async def test_a_session_with_a_nan_argument_is_written_as_strict_json() -> None:
    @ar.tool
    def f(x: float) -> float:
        """F."""
        return x

    rt = ar.AgentRuntime(tools=[f])
    session = await rt.run_agent_with_provider(
        "a", "q", ar.ScriptedProvider(['Thought: t\nAction: f {"x": NaN}', FINAL])
    )
    assert math.isnan(session.steps[0].action_input["x"])
    data = _strict_json(session.to_json())
    assert data["steps"][0]["action_input"] == {"x": "nan"}
    restored = ar.AgentSession.from_json(session.to_json())
    assert restored.steps[0].action_input == {"x": "nan"}  # the str it was written as
    weird = ar.AgentSession("s", "a", steps=[ar.Step("t", "f", [math.inf, (-math.inf,)])])
    assert _strict_json(weird.to_json())["steps"][0]["action_input"] == ["inf", ["-inf"]]


def test_a_tool_result_with_a_nan_is_shown_as_strict_json() -> None:
    assert _render({"x": math.nan, "y": [math.inf, 1.5]}) == '{"x": "nan", "y": ["inf", 1.5]}'
    assert _render(math.nan) == "nan"  # a float alone, as `repr` shows it
    assert _render({"x": 1.5}) == '{"x": 1.5}'


# ------------------------------------------------------------------ listeners
def test_a_recorder_is_active_but_not_listening() -> None:
    bus = EventBus()
    assert not bus.active and not bus.listening

    def recorder(event: Any) -> None:
        return None

    bus._add_recorder(recorder)
    assert bus.active and not bus.listening

    def listener(event: Any) -> None:
        return None

    bus.on(listener)
    assert bus.listening
    bus.off(listener)
    assert bus.active and not bus.listening
    subscription = bus.subscribe()
    assert bus.listening
    bus.close()
    assert not bus.listening
    del subscription
    bus.off(recorder)
    assert not bus.active and not bus.listening
    bus.on(listener)
    assert bus.listening


async def test_a_tool_registered_while_the_runtime_reads_the_registry_is_shown_next_run() -> None:
    # Another thread registering meanwhile: the run failed ("dictionary changed size during
    # iteration"), or the tool counted as seen though the model was never shown it.
    registry = ar.ToolRegistry()

    class Registering(ar.ToolSpec):
        def definition(self) -> dict[str, Any]:
            if "late" not in registry:  # as another thread would, while it is read
                registry.register(ar.ToolSpec("late", "Registered meanwhile.", _late))
            return super().definition()

    async def _late(args: dict[str, Any]) -> str:
        return "late"

    async def _first(args: dict[str, Any]) -> str:
        return "first"

    registry.register(Registering("first", "The first tool.", _first))
    runtime = ar.AgentRuntime(tools=registry)
    prompts: list[str] = []

    async def infer(prompt: str) -> str:
        prompts.append(prompt)
        return "Thought: t\nAction: FINAL_ANSWER done"

    await runtime.run_agent("a", "q", infer)
    await runtime.run_agent("a", "q", infer)
    assert "- late:" in prompts[1]


async def test_a_failing_cleanup_at_a_runs_end_still_gives_back_its_session_and_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The cleanup before them failed (approvals evicted while another thread's run changed
    # them): the session stayed marked running and the backpressure slot taken, for good.
    guard = ar.BackpressureGuard(capacity=1)

    @ar.tool
    async def add(a: int, b: int) -> int:
        """Adds."""
        return a + b

    async def decide(session: ar.AgentSession, name: str, arguments: Any) -> Any:
        return ApprovalDecision("approve", remember=True)

    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[add], backpressure=guard, approval_handler=decide
    )

    def failing(session_id: str) -> None:
        raise RuntimeError("dictionary changed size during iteration")

    monkeypatch.setattr(runtime, "_drop_unremembered_approvals", failing)
    session = runtime.create_session("a")
    call = ar.ScriptedProvider.tool_call_reply([("add", {"a": 1, "b": 2})])
    with pytest.raises(RuntimeError):
        await runtime.run_turn(session, "q", ar.ScriptedProvider([call, "done"]))
    assert guard.depth == 0
    monkeypatch.undo()
    assert await runtime.run_turn(session, "again", ar.ScriptedProvider(["fine"])) == "fine"
