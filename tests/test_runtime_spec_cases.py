"""What the runtime's docstrings say, where the behaviour said otherwise."""

from __future__ import annotations

from typing import Any

import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.providers.base import ChatResponse, Message


async def test_a_config_set_unvalidated_is_kept_as_validation_makes_it() -> None:
    # `model`'s "surrounding whitespace is stripped": the setter validated a copy and kept
    # the original, so the provider was sent '  gpt-x  '.
    sent: list[Any] = []

    class Recording(ar.ScriptedProvider):
        async def chat(self, messages: list[Message], *args: Any, **kwargs: Any) -> ChatResponse:
            sent.append(kwargs.get("model"))
            return await super().chat(messages, *args, **kwargs)

    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
    runtime.config = ar.AgentConfig(mode="tools").model_copy(update={"model": "  gpt-x  "})
    assert runtime.config.model == "gpt-x"
    await runtime.run_agent_with_provider("a", "q", Recording(["done"]))
    assert sent == ["gpt-x"]
    valid = ar.AgentConfig(model="m")
    runtime.config = valid
    assert runtime.config is valid  # a valid config is kept as it is


@pytest.mark.parametrize("new_id", [0, False, [], 0.0, "\ud800"])
async def test_fork_refuses_a_new_id_create_session_refuses(new_id: Any) -> None:
    # A falsy non-str forked into a fresh random id, the caller's id ignored.
    runtime = ar.AgentRuntime(checkpoint_backend=ar.InMemoryBackend())
    session = await runtime.run_agent("a", "q", _answers)
    with pytest.raises(ar.PersistenceError, match=r"session id|not valid Unicode"):
        await runtime.fork(session.session_id, 0, new_id)
    with pytest.raises(ar.AgentRuntimeError, match="session_id"):
        runtime.create_session("a", new_id)
    assert (await runtime.fork(session.session_id, 0, "")) != session.session_id


@pytest.mark.parametrize(
    ("field", "value"),
    [("thought", None), ("input_tokens", "3"), ("model_ms", True), ("requested", 5)],
)
async def test_a_step_field_of_the_wrong_type_is_refused_before_the_run(
    field: str, value: Any
) -> None:
    # It ran (its JSON then refused by from_json), or, with checkpoints, was refused as a
    # PersistenceError after the hooks and the memory recall.
    for backend in (None, ar.InMemoryBackend()):
        runtime = ar.AgentRuntime(checkpoint_backend=backend)
        session = runtime.create_session("a")
        await runtime.run_turn(session, "q", _answers)
        setattr(session.steps[0], field, value)
        with pytest.raises(ar.AgentRuntimeError, match=f"session step 1: '{field}'"):
            await runtime.run_turn(session, "again", _answers)


async def _answers(prompt: str) -> str:
    return "Final Answer: 42"


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("tools", 5, ar.AgentRuntimeError),
        ("tools", [object()], ar.ToolError),
        ("working_memory", "notes", ar.AgentRuntimeError),
        ("graph", 5, ar.AgentRuntimeError),
        ("backpressure", object(), ar.AgentRuntimeError),
        ("metrics", None, ar.AgentRuntimeError),
    ],
)
async def test_a_component_set_later_is_checked_as_the_constructor_checks_it(
    name: str, value: Any, error: type[Exception]
) -> None:
    # Each was taken, and the next run failed with a bare AttributeError.
    runtime = ar.AgentRuntime()
    before = getattr(runtime, name)
    with pytest.raises(error):
        setattr(runtime, name, value)
    assert getattr(runtime, name) is before
    assert (await runtime.run_agent("a", "q", _answers)).final_answer == "42"


async def test_tools_set_as_a_list_become_a_registry_runs_call() -> None:
    @ar.tool
    async def double(n: int) -> int:
        """Doubles n."""
        return 2 * n

    runtime = ar.AgentRuntime()
    runtime.tools = [double]
    assert isinstance(runtime.tools, ar.ToolRegistry) and "double" in runtime.tools
    replies = iter(['Action: double {"n": 21}', "Final Answer: done"])

    async def infer(prompt: str) -> str:
        return next(replies)

    session = await runtime.run_agent("a", "q", infer)
    assert session.steps[0].observation == "42"
    metrics = ar.RuntimeMetrics()
    runtime.metrics = metrics
    await runtime.run_agent("a", "q", _answers)
    assert metrics.snapshot().total_sessions == 1


def test_the_checkpoint_backend_is_fixed_at_construction() -> None:
    # Set later, runs went on writing to the first backend while repr showed the new one.
    backend = ar.InMemoryBackend()
    runtime = ar.AgentRuntime(checkpoint_backend=backend)
    with pytest.raises(ar.AgentRuntimeError, match="fixed"):
        runtime.checkpoint_backend = ar.InMemoryBackend()
    assert runtime.checkpoint_backend is backend
