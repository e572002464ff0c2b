"""Runtime sweep cases: settings replaced between runs."""

from __future__ import annotations

from typing import Any

import pytest

import llm_agent_runtime as ar


async def _answer_past_stop(prompt: str) -> str:
    return "Thought: t\nAction: FINAL_ANSWER one END two"


async def test_a_config_set_between_runs_brings_its_stop_sequences() -> None:
    # `runtime.config` is public and a run reads its settings from it, but the stop sequences
    # were copied once, at construction: a config set later had every setting honoured but
    # its stop sequences, and the reply ran on past them.
    runtime = ar.AgentRuntime(ar.AgentConfig())
    runtime.config = ar.AgentConfig(stop_sequences=[" END"])
    session = await runtime.run_agent("agent", "q", _answer_past_stop)
    assert session.final_answer == "one"
    runtime.config = ar.AgentConfig()  # and set back: no stop sequence is left behind
    session = await runtime.run_agent("agent", "q", _answer_past_stop)
    assert session.final_answer == "one END two"


async def test_a_config_set_between_runs_reaches_the_provider_with_its_stop_sequences() -> None:
    sent: list[Any] = []

    class Recording(ar.ScriptedProvider):
        async def chat(self, messages: Any, **params: Any) -> ar.ChatResponse:
            sent.append(params.get("stop"))
            return await super().chat(messages, **params)

    runtime = ar.AgentRuntime(ar.AgentConfig(mode="tools"))
    runtime.config = ar.AgentConfig(mode="tools", stop_sequences=["END"])
    await runtime.run_agent_with_provider("agent", "q", Recording(["done"]))
    assert sent == [["END"]]


@pytest.mark.parametrize("config", ["react", None, {"max_iterations": 3}])
async def test_a_config_that_is_not_an_agent_config_is_refused_when_set(config: Any) -> None:
    # It was taken, and the next run failed with a bare AttributeError.
    runtime = ar.AgentRuntime(ar.AgentConfig(max_iterations=2))
    with pytest.raises(ar.AgentRuntimeError, match="config must be an AgentConfig"):
        runtime.config = config
    assert runtime.config.max_iterations == 2  # the old one stays
    session = await runtime.run_agent("agent", "q", _answer_past_stop)
    assert session.final_answer == "one END two"


def test_a_config_made_invalid_is_refused_when_set() -> None:
    # `model_copy(update=...)` skips validation: the constructor refuses such a config, and
    # so does setting it.
    runtime = ar.AgentRuntime(ar.AgentConfig())
    bad = ar.AgentConfig().model_copy(update={"max_iterations": 0})
    with pytest.raises(ar.AgentRuntimeError, match="not a valid AgentConfig"):
        runtime.config = bad
    assert runtime.config.max_iterations == 10
