"""Memory stores given awkward user values: surrogates in values, clocks that return no
number, bools as capacities."""

from __future__ import annotations

from typing import Any

import pytest

import llm_agent_runtime as ar

CUT = "cut emoji \ud83d"  # text cut in the middle of a surrogate pair


class Shown:
    """A value whose str() is a str subclass holding a lone surrogate."""

    class Text(str):
        pass

    def __str__(self) -> str:
        return self.Text("shown \udc80")


def test_to_prompt_passes_surrogates_through_as_python_concatenation_would() -> None:
    wm = ar.WorkingMemory(4)
    wm.set("note", CUT)
    wm.set("n", 5)
    wm.set("shown", Shown())
    expected = "Working memory:"
    for key, value in wm.items():
        expected += "\n- " + key + ": " + str(value)
    prompt = wm.to_prompt()
    assert prompt == expected
    assert type(prompt) is str
    assert prompt.endswith("\n- note: " + CUT)
    assert ar.WorkingMemory(2).to_prompt() == ""


def test_to_prompt_still_raises_what_a_value_s_str_raises() -> None:
    class Broken:
        def __str__(self) -> str:
            raise ValueError("no text")

    wm = ar.WorkingMemory(2)
    wm.set("b", Broken())
    with pytest.raises(ValueError, match="no text"):
        wm.to_prompt()


async def test_an_agent_run_with_a_surrogate_in_working_memory_completes() -> None:
    wm = ar.WorkingMemory(4)
    wm.set("user", "prefers short answers \ud83d")
    prompts: list[str] = []

    async def infer(prompt: str) -> str:
        prompts.append(prompt)
        return "Thought: done\nAction: FINAL_ANSWER 5"

    runtime = ar.AgentRuntime(ar.AgentConfig(max_iterations=2), working_memory=wm)
    session = await runtime.run_agent("a", "hi", infer)
    assert session.final_answer == "5"
    assert "- user: prefers short answers \ud83d" in prompts[0]


@pytest.mark.parametrize("value", ["12:00", None, [1.0], b"1"])
def test_a_clock_that_returns_no_number_is_a_memory_store_error(value: Any) -> None:
    store = ar.EpisodicStore(clock=lambda: value)
    with pytest.raises(ar.MemoryStoreError, match=r"the clock returned a .*finite number"):
        store.add_episode("a", "x", 0.5)
    assert len(store) == 0
    with pytest.raises(ar.MemoryStoreError, match="the clock returned"):
        store.recall("a")


def test_a_clock_s_own_error_passes_through_and_numbers_still_work() -> None:
    def failing() -> float:
        raise RuntimeError("clock broke")

    with pytest.raises(RuntimeError, match="clock broke"):
        ar.EpisodicStore(clock=failing).add_episode("a", "x", 0.5)
    store = ar.EpisodicStore(clock=lambda: 12)  # an int is a number of seconds
    store.add_episode("a", "x", 0.5)
    assert store.episodes("a")[0].created_at == 12.0


@pytest.mark.parametrize(
    "make",
    [lambda: ar.WorkingMemory(True), lambda: ar.EpisodicStore(per_agent_capacity=True)],
)
def test_bools_are_no_capacities(make: Any) -> None:
    with pytest.raises(ar.MemoryStoreError, match="must be an int, got bool"):
        make()
