"""Extension points given in a form that cannot work, and replaced between runs: refused
with `AgentRuntimeError` when given, not found out mid-run after the model was paid."""

from __future__ import annotations

from typing import Any

import pytest

import llm_agent_runtime as ar

tool_call_reply = ar.ScriptedProvider.tool_call_reply


@ar.tool
def add(a: int, b: int) -> int:
    """Adds two numbers."""
    return a + b


def _round_then_done() -> ar.ScriptedProvider:
    return ar.ScriptedProvider([tool_call_reply([("add", {"a": 1, "b": 2})]), "done"])


class Approver:
    """An approval handler written as a class with `__call__`: its instance is the handler."""

    def __call__(self, session: ar.AgentSession, tool: str, arguments: Any) -> Any:
        return ar.ApprovalDecision("approve")


def test_an_approval_handler_class_given_for_its_instance_is_refused_when_given() -> None:
    with pytest.raises(ar.AgentRuntimeError, match=r"instance.*Approver\(\)"):
        ar.AgentRuntime(approval_handler=Approver)  # type: ignore[arg-type]
    runtime = ar.AgentRuntime()
    with pytest.raises(ar.AgentRuntimeError, match=r"instance.*Approver\(\)"):
        runtime.approval_handler = Approver  # type: ignore[assignment]
    assert runtime.approval_handler is None


async def test_an_approval_handler_instance_with_call_still_works() -> None:
    runtime = ar.AgentRuntime(
        ar.AgentConfig(mode="tools"), tools=[add], approval_handler=Approver()
    )
    session = await runtime.run_agent_with_provider("a", "q", _round_then_done())
    assert [s.observation for s in session.steps] == ["3", ""]


def test_a_middleware_class_given_for_its_instance_is_named_as_such() -> None:
    class Quiet(ar.Middleware):
        pass

    with pytest.raises(ar.AgentRuntimeError, match=r"instance.*Quiet\(\)"):
        ar.AgentRuntime(middlewares=[Quiet])  # type: ignore[list-item]


async def test_a_budget_set_after_construction_is_checked_when_set() -> None:
    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"), tools=[add])
    with pytest.raises(ar.AgentRuntimeError, match="budget must provide"):
        runtime.budget = 5  # type: ignore[assignment]
    with pytest.raises(ar.AgentRuntimeError, match="budget must be an instance"):
        runtime.budget = ar.CostBudget  # type: ignore[assignment]
    assert runtime.budget is None
    budget = ar.CostBudget(max_tokens=10_000)
    runtime.budget = budget
    assert runtime.budget is budget
    session = await runtime.run_agent_with_provider("a", "q", _round_then_done())
    assert session.final_answer == "done"
    assert budget.used_tokens == sum(s.input_tokens + s.output_tokens for s in session.steps)
    runtime.budget = None  # cleared between runs
    await runtime.run_agent_with_provider("a", "q", _round_then_done())


async def test_a_run_charges_the_budget_it_checked_even_if_replaced_meanwhile() -> None:
    budget = ar.CostBudget(max_tokens=10_000)
    runtime = ar.AgentRuntime(budget=budget)

    async def infer(prompt: str) -> str:
        runtime.budget = None  # the next run's: this run's call is still this budget's
        return "Thought: t\nAction: FINAL_ANSWER 42"

    session = await runtime.run_agent("a", "q", infer)
    (step,) = session.steps
    assert budget.used_tokens == step.input_tokens + step.output_tokens > 0
