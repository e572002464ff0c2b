"""Multi-turn sessions: what a turn returns, and what a session that runs turns holds."""

from __future__ import annotations

from typing import Any

import pytest

import llm_agent_runtime as ar


def answers(text: str, mode: str) -> Any:
    """A model that answers `text` at once: an async ReAct `infer`, or a tools-mode provider."""
    if mode == "tools":
        return ar.ScriptedProvider([text])

    async def infer(prompt: str) -> str:
        return f"Thought: t\nAction: FINAL_ANSWER {text}"

    return infer


@pytest.mark.parametrize("mode", ["react", "tools"])
async def test_a_turn_returns_its_own_answer_when_a_callback_ran_the_next_turn(mode: str) -> None:
    """The run waits for its callbacks once it let go of the session: one may run a turn."""
    rt = ar.AgentRuntime(ar.AgentConfig(mode=mode))
    session = rt.create_session("a")
    follow_ups: list[str | None] = []

    async def on_finished(event: ar.Event) -> None:
        if isinstance(event, ar.RunFinished) and event.final_answer == "first":
            follow_ups.append(await rt.run_turn(session, "and then?", answers("second", mode)))

    rt.events.on(on_finished)
    assert await rt.run_turn(session, "hi", answers("first", mode)) == "first"
    assert follow_ups == ["second"]
    assert [m["content"] for m in session.messages] == ["hi", "first", "and then?", "second"]
    assert session.final_answer == "second" and session.step_count == 2
