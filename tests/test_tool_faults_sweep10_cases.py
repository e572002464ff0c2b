"""What tools can do to a run: errors whose repr or str raise, policy errors inside
exception groups, defaults with no JSON form inside untyped containers, hidden parameters
reached through `**kwargs`, and numpy's long doubles as results."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from typing import Any

import pytest

import llm_agent_runtime as ar


class QuotaDenied(ar.PolicyDeniedError):
    """A library's error whose repr reads an attribute its constructor may leave unset."""

    def __init__(self, message: str, quota: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.quota = quota

    def __repr__(self) -> str:
        assert self.quota is not None
        return f"QuotaDenied(limit={self.quota['limit']})"


async def test_a_failed_run_logs_its_events_when_its_errors_repr_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The event record writes the error as its repr: a repr that raised failed the write of
    # the run's end with every event since the last step save (all of them here). (The log
    # line's own failure, which `logging` reports and goes on from, is not this test's:
    # pytest's capture would raise it.)
    monkeypatch.setattr(logging.getLogger("llm_agent_runtime"), "disabled", True)

    def charge(arguments: dict[str, Any]) -> str:
        raise QuotaDenied("over quota")

    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(
        tools=[ar.ToolSpec("charge", "Charges.", charge)], checkpoint_backend=backend
    )
    emitted: list[str] = []
    runtime.events.on(lambda event: emitted.append(type(event).__name__))
    session = runtime.create_session("agent")
    model = ar.ScriptedProvider(["Thought: pay\nAction: charge {}", "Final Answer: done"])
    with pytest.raises(QuotaDenied):
        await runtime.run_agent_with_provider("agent", "pay", model, session=session)
    logged = await runtime.session_events(session.session_id)
    # (Text deltas are not logged: `LlmResponse` holds the whole text.)
    assert [event["type"] for event in logged] == [e for e in emitted if e != "LlmTextDelta"]
    assert emitted[-1] == "ErrorEvent" and logged[-1]["error"] == (
        "<QuotaDenied (its repr failed)>"
    )
    saved = await ar.AgentSession.load_checkpoint(backend, session.session_id)
    assert saved is not None and saved.duration_ms == session.duration_ms > 0
    assert runtime.metrics.snapshot().checkpoint_errors == 0


class WorkerAbort(BaseException):
    """A library's own BaseException (not an Exception)."""


async def test_a_policy_error_beside_another_base_exception_in_a_group_ends_the_run() -> None:
    # In a BaseExceptionGroup (a TaskGroup whose other child raised a BaseException that is
    # no Exception), the policy error became a `permanent` observation and the run went on.
    async def fan_out(arguments: dict[str, Any]) -> str:
        async def sub_agent() -> None:
            raise ar.BudgetExceededError("sub-agent spent the budget")

        async def worker() -> None:
            raise WorkerAbort("worker aborted")

        async with asyncio.TaskGroup() as group:
            group.create_task(sub_agent())
            group.create_task(worker())
        return "never"

    runtime = ar.AgentRuntime(tools=[ar.ToolSpec("fan_out", "Runs sub-agents.", fan_out)])
    model = ar.ScriptedProvider(["Thought: go\nAction: fan_out {}", "Final Answer: anyway"])
    with pytest.raises(ar.BudgetExceededError, match="sub-agent spent the budget") as raised:
        await runtime.run_agent_with_provider("agent", "go", model)
    assert isinstance(raised.value.__cause__, BaseExceptionGroup)


def _limits_and_weights(
    query: str,
    limits: dict = {"max_price": math.inf},  # type: ignore[type-arg]  # noqa: B006
    weights: list = [1.0, math.nan],  # type: ignore[type-arg]  # noqa: B006
    plain: dict = {"max_price": 5.0},  # type: ignore[type-arg]  # noqa: B006
) -> str:
    """Searches."""
    return f"{limits} {weights} {plain}"


def test_a_default_holding_inf_or_nan_in_an_untyped_container_is_left_out() -> None:
    # pydantic wrote them as null there: a model passing the default it was shown got None.
    spec = ar.tool(_limits_and_weights)
    properties = spec.parameters["properties"]
    assert "default" not in properties["limits"] and "default" not in properties["weights"]
    assert properties["plain"]["default"] == {"max_price": 5.0}
    assert "limits" not in spec.parameters.get("required", [])


class Catalogue:
    def search(self, query: str, **filters: str) -> str:
        """Searches the catalogue."""
        return f"query={query} filters={filters}"


def _lookup(region: str, query: str, **filters: str) -> str:
    """Looks up."""
    return f"region={region} query={query} filters={filters}"


@pytest.mark.parametrize(
    ("make", "hidden"),
    [
        (lambda: ar.tool(Catalogue().search), "self"),
        (lambda: ar.tool(functools.partial(_lookup, "eu"), name="lookup"), "region"),
    ],
    ids=["bound-method-self", "partial-positional"],
)
async def test_a_parameter_the_signature_hides_is_not_taken_through_kwargs(
    make: Any, hidden: str
) -> None:
    # Taken as one of **kwargs, it passed validation and the call then failed with Python's
    # "got multiple values" TypeError: a call (and a breaker failure) the tool never made.
    spec = make()
    registry = ar.ToolRegistry([spec])
    refused = await registry.call(spec.name, {"query": "lamp", hidden: "x"})
    assert refused == (
        f"error: invalid arguments: {hidden}: unexpected argument (the tool sets it)",
        "permanent",
    )
    passed = await registry.call(spec.name, {"query": "lamp", "colour": "red"})
    assert passed.error_kind is None and "filters={'colour': 'red'}" in passed.content
