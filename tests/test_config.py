"""AgentConfig validation, and memory budgets it sets, end to end through the runtime."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

import llm_agent_runtime as ar
from llm_agent_runtime.config import MAX_COUNT, RUNTIME_PARAMS

INT_FIELDS = [
    "max_iterations",
    "max_memory_recalls",
    "max_memory_tokens",
    "loop_timeout_ms",
    "max_parallel_tool_calls",
    "max_observation_chars",
    "context_window_tokens",
]


def test_defaults_and_normal_values_are_accepted() -> None:
    config = ar.AgentConfig(
        max_iterations=7,
        model="gpt-4o-mini",
        system_prompt="",
        max_memory_recalls=0,
        max_memory_tokens=MAX_COUNT,
        stop_sequences=["\nObservation:", "<end>"],
        loop_timeout_ms=None,
        mode="tools",
        max_parallel_tool_calls=1,
        max_observation_chars=16,
        corrective_reprompt=True,
        error_recovery="stop",
        context_window_tokens=MAX_COUNT,
    )
    assert config.mode == "tools" and config.stop_sequences == ["\nObservation:", "<end>"]
    assert ar.AgentConfig(stop_sequences=("a",)).stop_sequences == ["a"]  # type: ignore[arg-type]
    assert ar.AgentConfig().model is None and ar.AgentConfig(model=None).model is None
    assert ar.AgentConfig(max_memory_tokens=None).max_memory_tokens is None
    back = ar.AgentConfig.model_validate_json(config.model_dump_json())
    assert back == config


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("value", [True, False, "7", 7.0, "x"])
def test_integer_settings_are_strict(field: str, value: Any) -> None:
    # A bool, a float or a numeric string used to be converted (`max_iterations=True` -> 1).
    with pytest.raises(pydantic.ValidationError, match=field):
        ar.AgentConfig(**{field: value})


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("value", [MAX_COUNT + 1, 2**64, 10**30])
def test_integer_settings_are_bounded(field: str, value: int) -> None:
    # max_memory_recalls=2**64 used to pass here and fail later with an OverflowError.
    with pytest.raises(pydantic.ValidationError, match="less than or equal to"):
        ar.AgentConfig(**{field: value})


@pytest.mark.parametrize("value", [1, "yes", "true", 1.0, None])
def test_bool_settings_are_strict(value: Any) -> None:
    with pytest.raises(pydantic.ValidationError, match="corrective_reprompt"):
        ar.AgentConfig(corrective_reprompt=value)


@pytest.mark.parametrize("model", ["", "   ", "\t\n"])
def test_a_blank_model_is_refused(model: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="model must not be blank"):
        ar.AgentConfig(model=model)


def test_the_model_name_is_stripped() -> None:
    assert ar.AgentConfig(model="  gpt-4o \n").model == "gpt-4o"


def test_model_params_are_kept_and_round_trip() -> None:
    assert ar.AgentConfig().model_params == {}
    params = {"temperature": 0, "max_completion_tokens": 2048, "reasoning_effort": "low"}
    config = ar.AgentConfig(model_params=params)
    assert config.model_params == params
    assert ar.AgentConfig.model_validate_json(config.model_dump_json()) == config


@pytest.mark.parametrize("key", sorted(RUNTIME_PARAMS))
def test_model_params_cannot_set_what_the_runtime_sets(key: str) -> None:
    assert {"messages", "tools", "model", "stop", "stream"} <= RUNTIME_PARAMS
    with pytest.raises(pydantic.ValidationError, match=f"model_params cannot set.*'{key}'"):
        ar.AgentConfig(model_params={"temperature": 0, key: "x"})


@pytest.mark.parametrize("value", [None, ["temperature"], "temperature=0", {1: 0}])
def test_model_params_must_be_a_dict_of_names(value: Any) -> None:
    with pytest.raises(pydantic.ValidationError, match="model_params"):
        ar.AgentConfig(model_params=value)


def _react_final(prompts: list[str]) -> Any:
    async def infer(prompt: str) -> str:
        prompts.append(prompt)
        return "Thought: done\nAction: FINAL_ANSWER ok"

    return infer


async def test_zero_memory_tokens_injects_no_memory() -> None:
    # max_memory_tokens=0 used to be refused (ge=1); it now means no memory in the prompt.
    memory = ar.EpisodicStore(clock=lambda: 0.0)
    memory.add_episode("a", "the user likes tea", 0.9)
    prompts: list[str] = []
    runtime = ar.AgentRuntime(ar.AgentConfig(max_memory_tokens=0), memory=memory)
    session = await runtime.run_agent("a", "q", _react_final(prompts))
    assert session.memory_hits == 0 and "tea" not in prompts[0]


async def test_an_oversized_top_memory_does_not_block_smaller_ones() -> None:
    # The 100-token top memory used to end the selection: no memory reached the prompt.
    memory = ar.EpisodicStore(clock=lambda: 0.0)
    memory.add_episode("a", "x" * 400, 0.9)
    memory.add_episode("a", "user likes tea", 0.8)
    prompts: list[str] = []
    config = ar.AgentConfig(max_memory_recalls=3, max_memory_tokens=20)
    session = await ar.AgentRuntime(config, memory=memory).run_agent(
        "a", "q", _react_final(prompts)
    )
    assert session.memory_hits == 1 and "user likes tea" in prompts[0]
    assert "x" * 400 not in prompts[0]


async def test_the_largest_recall_count_reaches_the_store() -> None:
    # max_memory_recalls above 2**63 - 1 is refused by the config; the largest allowed one
    # means "all" in EpisodicStore.recall instead of an OverflowError.
    memory = ar.EpisodicStore(clock=lambda: 0.0)
    memory.add_episode("a", "fact one", 0.5)
    prompts: list[str] = []
    runtime = ar.AgentRuntime(ar.AgentConfig(max_memory_recalls=MAX_COUNT), memory=memory)
    session = await runtime.run_agent("a", "q", _react_final(prompts))
    assert session.memory_hits == 1 and "fact one" in prompts[0]


@pytest.mark.parametrize(
    "setting",
    [
        {"system_prompt": "be \ud83d"},
        {"model": "m\ud83d"},
        {"model_params": {"user": "u\ud83d"}},
        {"model_params": {"metadata": {"k\udc00": 1}}},
        {"model_params": {"x\ud800": 1}},
        {"stop_sequences": ["\ud83d"]},
    ],
)
def test_text_that_is_not_valid_unicode_is_refused_at_construction(
    setting: dict[str, Any],
) -> None:
    # Accepted, it failed later: in the config's own JSON, and in every request body.
    with pytest.raises(pydantic.ValidationError):
        ar.AgentConfig(**setting)
    # Valid text outside ASCII stays, and the config makes its JSON round trip.
    config = ar.AgentConfig(system_prompt="soyez précis 🙂", model_params={"user": "zoë"})
    assert ar.AgentConfig.model_validate_json(config.model_dump_json()) == config


@pytest.mark.parametrize(
    "params",
    [
        {"logit_bias": {50256: -100, "50256": 100}},  # one of the two was dropped in the body
        {"logit_bias": {50256: -100}},
        {"extra_body": [{"nested": {None: 1}}]},
        {"metadata": {1.5: 1, "k": 2}},
    ],
)
def test_model_params_nested_keys_must_be_strings(params: dict[str, Any]) -> None:
    with pytest.raises(
        pydantic.ValidationError, match=r"model_params\[.*\] holds a key that is not a str"
    ):
        ar.AgentConfig(model_params=params)
    ar.AgentConfig(model_params={"logit_bias": {"50256": -100}, "deep": [[{"k": [1, {}]}]]})
